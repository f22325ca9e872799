"""The allowed-imports matrix of DESIGN.md, enforced by walking every module's imports.

A row names which project packages and which third-party modules a package
may import. Stdlib modules are allowed except where a row forbids them
(``mpc`` must not touch sockets, clocks, SQLite, trio or global randomness).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("mpc", "net", "kms", "sim")
STDLIB = set(sys.stdlib_module_names)
BLS_BACKENDS = {"pyblst", "py_arkworks_bls12381", "chia_rs"}
CLOCK_AND_IO = {
    "time",
    "random",
    "socket",
    "sqlite3",
    "trio",
    "libp2p",
    "asyncio",
    "datetime",
    "os",
    "secrets",
}


@dataclass(frozen=True)
class Rule:
    project: tuple[str, ...]  # allowed project prefixes
    third_party: frozenset[str]  # allowed third-party top-level modules
    never: frozenset[str]  # forbidden (stdlib or third party) top-level modules


CORE_ATTEST = Rule(
    ("mpc", "kms.attest", "kms.policy", "kms.protocol"),
    frozenset({"cryptography", "dcap_qvl", "pydantic", "msgpack"}),
    frozenset(CLOCK_AND_IO),
)
SHELL = Rule(
    (
        "mpc",
        "net",
        "kms.attest",
        "kms.policy",
        "kms.protocol",
        "kms.store",
        "kms.node",
        "kms.client",
    ),
    frozenset({"trio", "hypercorn", "httpx", "cryptography", "msgpack", "pydantic", "dcap_qvl"}),
    frozenset(),
)

# Most specific prefix first.
MATRIX: list[tuple[str, Rule]] = [
    (
        "mpc.errors",
        Rule(
            ("mpc.errors", "mpc.ids", "mpc.math"), frozenset(BLS_BACKENDS), frozenset(CLOCK_AND_IO)
        ),
    ),
    (
        "mpc.ids",
        Rule(
            ("mpc.errors", "mpc.ids", "mpc.math"), frozenset(BLS_BACKENDS), frozenset(CLOCK_AND_IO)
        ),
    ),
    (
        "mpc.math",
        Rule(
            ("mpc.errors", "mpc.ids", "mpc.math"), frozenset(BLS_BACKENDS), frozenset(CLOCK_AND_IO)
        ),
    ),
    (
        "mpc",
        Rule(
            ("mpc",), frozenset(BLS_BACKENDS | {"cryptography", "msgpack"}), frozenset(CLOCK_AND_IO)
        ),
    ),
    ("kms.attest.pccs", SHELL),
    ("kms.attest", CORE_ATTEST),
    ("kms.policy", CORE_ATTEST),
    ("kms.protocol", CORE_ATTEST),
    (
        "kms.node.core",
        Rule(
            ("mpc", "kms.attest", "kms.policy", "kms.protocol", "kms.node.limits"),
            CORE_ATTEST.third_party,
            CORE_ATTEST.never,
        ),
    ),
    ("kms.node.limits", Rule((), frozenset(), frozenset(CLOCK_AND_IO))),
    (
        "kms.node.admission",
        Rule(
            ("mpc", "kms.attest", "kms.policy", "kms.protocol", "kms.node.core"),
            CORE_ATTEST.third_party,
            CORE_ATTEST.never,
        ),
    ),
    ("kms.node.release", CORE_ATTEST),
    ("kms.client.core", CORE_ATTEST),
    ("kms.node.service", SHELL),
    (
        "kms.node.metrics",
        Rule(("kms.node.core", "kms.node.release"), frozenset({"prometheus_client"}), frozenset()),
    ),
    ("kms.node.logs", Rule((), frozenset(), frozenset())),
    ("kms.node.policies", SHELL),
    ("kms.node.config", SHELL),
    ("kms.client.http", SHELL),
    (
        "kms.store",
        Rule(
            ("mpc", "kms.policy", "kms.store"),
            frozenset({"sqlite3", "cryptography", "msgpack"}),
            frozenset({"trio", "libp2p"}),
        ),
    ),
    (
        "net.libp2p",
        Rule(
            ("mpc", "net"),
            frozenset({"trio", "msgpack", "pydantic", "libp2p", "multiaddr"}),
            frozenset(),
        ),
    ),
    (
        "net",
        Rule(("mpc", "net"), frozenset({"trio", "msgpack", "pydantic"}), frozenset({"libp2p"})),
    ),
    (
        "sim",
        Rule(
            ("mpc", "kms", "net", "sim"),
            frozenset(
                {
                    "trio",
                    "matplotlib",
                    "rich",
                    "dask",
                    "distributed",
                    "msgpack",
                    "pydantic",
                    "cryptography",
                }
            )
            | BLS_BACKENDS,
            frozenset({"libp2p", "time", "datetime"}),
        ),
    ),
]
SIM_FORBIDDEN_PROJECT = ("kms.cli", "kms.api", "net.libp2p")
# kms.api, kms.cli and the demo may import everything (and so may the in-process test
# committee, which drives the HTTP app).
UNRESTRICTED = (
    "kms.api",
    "kms.cli",
    "kms.demo",
    "kms.devnet",
    "kms.node.setup",
    "kms.node.testing",
    "kms.attest.cli",
)


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append(mod)
            # ``from mpc import bls`` imports mpc.bls
            for a in node.names:
                found.append(f"{mod}.{a.name}")
    return found


def within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def rule_for(name: str) -> Rule | None:
    if any(within(name, p) for p in UNRESTRICTED):
        return None
    for prefix, rule in MATRIX:
        if within(name, prefix):
            return rule
    return None


def project_modules() -> set[str]:
    mods = set()
    for pkg in PROJECT:
        for path in (ROOT / pkg).rglob("*.py"):
            mods.add(module_name(path))
    return mods


def violations(name: str, path: Path, known: set[str]) -> list[str]:
    rule = rule_for(name)
    if rule is None:
        return []
    out: list[str] = []
    for mod in imports_of(path, name):
        top = mod.split(".")[0]
        if top in PROJECT:
            # ``from mpc import bls`` yields "mpc" and "mpc.bls"; judge the most specific real module.
            if mod not in known and mod.rpartition(".")[0] in known:
                continue
            if name.startswith("sim") and any(within(mod, p) for p in SIM_FORBIDDEN_PROJECT):
                out.append(f"{name} imports {mod}")
            elif not any(within(mod, p) for p in rule.project) and not within(mod, name):
                out.append(f"{name} imports {mod}")
        elif top in rule.never:
            out.append(f"{name} imports {mod} (forbidden)")
        elif top == "__future__" or (top in STDLIB and top not in rule.never):
            continue
        elif top not in rule.third_party:
            out.append(f"{name} imports third-party {mod}")
    return out


ALL = sorted((module_name(p), p) for pkg in PROJECT for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize(("name", "path"), ALL, ids=[n for n, _ in ALL])
def test_module_respects_the_import_matrix(name: str, path: Path) -> None:
    assert violations(name, path, project_modules()) == []


def test_matrix_flags_each_kind_of_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mod.py"
    fake.write_text("import socket\nimport libp2p\nfrom kms.cli import main\nimport requests\n")
    got = violations("mpc.dkg.fake", fake, {"kms.cli"})
    assert any("socket" in v for v in got)
    assert any("libp2p" in v for v in got)
    assert any("kms.cli" in v for v in got)
    assert any("requests" in v for v in got)
    fake.write_text("from net.libp2p import host\n")
    assert violations("sim.world", fake, {"net.libp2p"}) != []
    fake.write_text("import libp2p\n")
    assert violations("net.memory", fake, set()) != []
    assert violations("net.libp2p.host", fake, set()) == []
