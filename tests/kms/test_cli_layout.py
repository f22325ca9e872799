"""The ``kms`` command line's shape: every command group is listed by ``kms --help`` (through
the installed ``kms`` entry point's module), and each command module only parses options and
prints: no function in ``kms/cli/`` runs longer than ``MAX_LOGIC_LINES`` lines of code (its
signature and docstring not counted), so logic has to live in the module that owns it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kms.cli import app

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "kms" / "cli"
GROUPS = (
    "node",
    "devnet",
    "member",
    "attest",
    "key",
    "evidence",
    "audit",
    "app",
    "sim",
    "env",
    "agent",
    "chaos",
)
COMMANDS = ("status", "encrypt", "decrypt", "demo")
MAX_LOGIC_LINES = 40


def _listed(help_text: str) -> set[str]:
    words = set()
    for line in help_text.splitlines():
        parts = line.strip("│ ").split()
        if parts:
            words.add(parts[0])
    return words


def test_kms_help_lists_every_command_group() -> None:
    listed = _listed(CliRunner().invoke(app, ["--help"]).output)
    assert set(GROUPS + COMMANDS) <= listed


def test_python_m_kms_cli_runs_the_same_app() -> None:
    """The devnet starts its nodes with ``python -m kms.cli``."""
    r = subprocess.run(
        [sys.executable, "-m", "kms.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert set(GROUPS + COMMANDS) <= _listed(r.stdout)


def _logic_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        body = body[1:]
    if not body:
        return 0
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_no_command_module_holds_a_long_function(path: Path) -> None:
    long = {f.name: n for f in _functions(path) if (n := _logic_lines(f)) > MAX_LOGIC_LINES}
    assert long == {}


def test_the_length_check_can_fail(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LOGIC_LINES + 1))
    f = tmp_path / "m.py"
    f.write_text(f'def f() -> None:\n    """Doc."""\n{body}')
    assert [_logic_lines(fn) for fn in _functions(f)] == [MAX_LOGIC_LINES + 1]
