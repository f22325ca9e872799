"""The systemd unit shipped in contrib/systemd: it parses, its ExecStart is a command line
``kms`` accepts, and its restart rules follow the node's exit codes
(``kms.node.lifecycle``)."""

from __future__ import annotations

import configparser
import importlib
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kms.cli import app as cli
from kms.node import lifecycle

# The click that typer's command classes are built on (typer vendors its own).
_CLICK = type(typer.main.get_command(cli)).__mro__[1].__module__.rsplit(".", 1)[0]
UsageError: type[Exception] = importlib.import_module(_CLICK + ".exceptions").UsageError
UNIT = Path(__file__).resolve().parents[2] / "contrib" / "systemd" / "quorum-kms@.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def parse_command_line(argv: list[str]) -> Any:
    """Parse ``argv`` as the ``kms`` command line down to the leaf command, running nothing
    (``make_context`` checks every option and argument; typer's click groups)."""
    command: Any = typer.main.get_command(cli)
    ctx = command.make_context("kms", list(argv))
    while hasattr(command, "resolve_command"):
        protected = getattr(ctx, "protected_args", None)
        if protected is None:
            protected = ctx._protected_args
        name, sub, rest = command.resolve_command(ctx, [*protected, *ctx.args])
        assert sub is not None and name is not None
        command, ctx = sub, sub.make_context(name, rest, parent=ctx)
    return ctx


def test_the_unit_parses_and_has_its_sections() -> None:
    u = unit()
    assert set(u.sections()) == {"Unit", "Service", "Install"}
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_execstart_is_a_command_line_kms_accepts() -> None:
    argv = shlex.split(unit()["Service"]["ExecStart"])
    assert PurePosixPath(argv[0]).is_absolute() and PurePosixPath(argv[0]).name == "kms"
    ctx = parse_command_line(argv[1:])
    assert ctx.command_path == "kms node run"
    assert ctx.params["config"] == Path("/var/lib/qkms/%i/node.toml")


def test_the_check_catches_an_unknown_option() -> None:
    """The ExecStart check can fail: an option ``kms node run`` does not have is refused."""
    with pytest.raises(UsageError, match="No such option"):
        parse_command_line(["node", "run", "--config", "x.toml", "--no-such-option"])
    with pytest.raises(UsageError, match="No such command"):
        parse_command_line(["node", "walk", "--config", "x.toml"])


def test_restart_rules_follow_the_nodes_exit_codes() -> None:
    s = unit()["Service"]
    assert s["Restart"] == "on-failure"  # a clean stop (EXIT_OK) is not restarted
    assert lifecycle.EXIT_OK == 0
    prevent = {int(x) for x in s["RestartPreventExitStatus"].split()}
    assert prevent == {lifecycle.EXIT_CONFIG}
    # EXIT_PARENT_GONE only happens when KMS_DIE_WITH_PARENT is set (a devnet): not here.
    assert lifecycle.DIE_WITH_PARENT_ENV not in s.get("Environment", "")
    assert s["KillSignal"] == "SIGTERM"
    assert int(s["TimeoutStopSec"]) >= 10


def test_a_configuration_error_exits_with_the_code_the_unit_does_not_restart(
    tmp_path: Path,
) -> None:
    r = CliRunner().invoke(cli, ["node", "run", "--config", str(tmp_path / "missing.toml")])
    assert r.exit_code == lifecycle.EXIT_CONFIG
    assert " ".join(r.output.split()).startswith("error: no configuration at")


def test_the_unit_is_hardened_and_writes_only_the_node_directory() -> None:
    s = unit()["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "UMask": "0077",
    }.items():
        assert s[key] == value, key
    config = Path(shlex.split(s["ExecStart"])[-1])
    assert s["ReadWritePaths"].split() == [str(config.parent)]
    assert s["CapabilityBoundingSet"] == ""
