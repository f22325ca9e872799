#!/usr/bin/env python3
"""The import fences of ``mpc``, ``net``, ``kms`` and ``sim``: the one matrix and its checks.

``ROWS`` is the only copy of the allowed-imports matrix. ``tests/test_import_matrix.py``
enforces it and ``docs/design.md`` shows it: the table between the markers

    <!-- BEGIN GENERATED IMPORT MATRIX -->
    <!-- END GENERATED IMPORT MATRIX -->

is generated from ``ROWS`` (``tests/docs/test_import_table.py`` fails when it differs).

Usage::

    python tests/import_matrix.py          # rewrite the table in docs/design.md
    python tests/import_matrix.py --check  # exit 1 if it is out of date

How modules and imports are read (statically, with ``ast``; nothing is imported):

* Every ``.py`` file under ``mpc/``, ``net/``, ``kms/`` and ``sim/`` is a module
  (``pkg/__init__.py`` is ``pkg``). **Default deny**: a module that no row matches
  is an error, so a new module needs a row (or a package row that covers it).
* A row key ``a.b`` matches ``a.b`` and every module under it; ``=a.b`` matches
  ``a.b`` only (used for package ``__init__`` modules, so that a row for a package
  module does not cover the modules under it). The longest matching key wins.
* Every import statement counts, wherever it is: at module level, inside a
  function (a lazy import), and under ``if TYPE_CHECKING:`` (type-only).
* ``from pkg import name`` is an import of ``pkg.name`` when that is a module; when
  ``name`` is re-exported by ``pkg/__init__.py`` from one of its modules
  (``from pkg.sub import name`` or ``from .sub import name`` there), it is an
  import of that module; otherwise of ``pkg``. So a fence on ``kms.policy.registry``
  also stops ``from kms.policy import AppRegistry``.

The import graph (module → project modules it imports, lazy and type-only imports
included) must have no cycle. Type-only imports count here too: they never execute,
but a cycle through one still ties two modules' designs together; where a module
needs to name a type of a module above it, it declares the part it uses as a
``Protocol`` instead (``sim.load.LoadWorld``).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("mpc", "net", "kms", "sim")
STDLIB = frozenset(sys.stdlib_module_names)
DESIGN = ROOT / "docs" / "design.md"
BEGIN = "<!-- BEGIN GENERATED IMPORT MATRIX -->"
END = "<!-- END GENERATED IMPORT MATRIX -->"

BLS_BACKENDS = frozenset({"pyblst", "py_arkworks_bls12381", "chia_rs"})
CLOCK_AND_IO = frozenset(
    {
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
)
GROUPS = {"BLS backends": BLS_BACKENDS, "clock and I/O": CLOCK_AND_IO}
"""Named sets, written by name in the generated table."""


@dataclass(frozen=True)
class Rule:
    project: tuple[str, ...]
    """Project prefixes the module may import (its own package's modules need listing too)."""
    third_party: frozenset[str] = frozenset()
    """Third-party top-level modules it may import (the standard library is allowed)."""
    never: frozenset[str] = frozenset()
    """Top-level modules (standard library or third party) it must not import."""
    not_project: tuple[str, ...] = ()
    """Project prefixes refused even where ``project`` would allow them (fences)."""
    any_third_party: bool = False
    """May import any third-party module (entry points: the CLI, the HTTP API, the devnet)."""
    note: str = ""
    """Why the row is as it is (shown in the generated table)."""


CORE_PROJECT = ("mpc", "kms.attest", "kms.policy", "kms.protocol")
CORE_THIRD_PARTY = frozenset({"cryptography", "dcap_qvl", "pydantic", "msgpack"})
CORE = Rule(CORE_PROJECT, CORE_THIRD_PARTY, CLOCK_AND_IO, ("kms.attest.pccs",))
SHELL = Rule(
    (*CORE_PROJECT, "net", "kms.store", "kms.node", "kms.client", "kms.evidence"),
    frozenset({"trio", "hypercorn", "httpx", "cryptography", "msgpack", "pydantic", "dcap_qvl"}),
    not_project=("kms.app", "kms.app.testing"),
)
NODE_SHELL = Rule(
    tuple(p for p in SHELL.project if p != "kms.client"),
    SHELL.third_party,
    not_project=(*SHELL.not_project, "kms.client"),
)
"""The node's trio shell: a shell that does not import the client (evidence is in kms.evidence)."""
MPC_BASE = Rule(("mpc.errors", "mpc.ids", "mpc.math"), BLS_BACKENDS, CLOCK_AND_IO)
ENTRY = Rule(("mpc", "net", "kms", "sim"), any_third_party=True)
NOTHING = Rule((), never=CLOCK_AND_IO)
NODE_CORE_PARTS = (
    "kms.node.phase",
    "kms.node.liveness",
    "kms.node.governance",
    "kms.node.recovery",
    "kms.node.genesis_trust",
    "kms.node.chain_follow",
    "kms.node.early",
    "kms.node.retention",
    "kms.node.runs",
)
"""The modules ``kms.node.core`` delegates parts of its state to."""
NODE_CORE_PART = Rule(("mpc", "kms.node.limits", "kms.node.model"), frozenset(), CLOCK_AND_IO)
NODE_CORE_STEPS = (
    "kms.node.sharing_runs",
    "kms.node.ballots",
    "kms.node.adoption",
    "kms.node.chain_sync",
    "kms.node.dispatch",
)
"""The core's steps that drive its parts through a ``Protocol`` port of the core."""
NODE_CORE_STEP = Rule(
    ("mpc", "kms.node.limits", "kms.node.model", *NODE_CORE_PARTS, *NODE_CORE_STEPS),
    frozenset(),
    CLOCK_AND_IO,
    note="sans-I/O; the core only as a Protocol port",
)
RELEASE_FENCE = ("kms.store", "kms.policy.registry", "kms.node.policies", "kms.attest.pccs")
"""What the key-release module must not import: the store, the policy index, the PCCS client."""

ROWS: dict[str, Rule] = {
    # --- mpc: sans-I/O; the math at the bottom imports only itself.
    "mpc.errors": MPC_BASE,
    "mpc.ids": MPC_BASE,
    "mpc.math": MPC_BASE,
    "mpc": Rule(("mpc",), BLS_BACKENDS | {"cryptography", "msgpack"}, CLOCK_AND_IO),
    # --- net: transports; libp2p only in net.libp2p.
    "net.libp2p": Rule(
        ("mpc", "net"), frozenset({"trio", "msgpack", "pydantic", "libp2p", "multiaddr"})
    ),
    "net": Rule(
        ("mpc", "net"),
        frozenset({"trio", "msgpack", "pydantic"}),
        frozenset({"libp2p"}),
        ("net.libp2p",),
    ),
    # --- kms: sans-I/O cores.
    "=kms": NOTHING,
    "kms.protocol": CORE,
    "kms.attest": CORE,
    "kms.policy": CORE,
    "kms.evidence": CORE,
    "kms.dstack": Rule(
        ("mpc", "kms.dstack"),
        frozenset({"coincurve", "Crypto", "cryptography"}),
        CLOCK_AND_IO,
        note="dstack's key derivations and chain; pure",
    ),
    "kms.dstack.tls": Rule(
        ("mpc", "kms.dstack"),
        frozenset({"coincurve", "Crypto", "cryptography", "msgpack"}),
        CLOCK_AND_IO - {"datetime"},
        note="certificates; pure, datetime only to write the caller's times into them",
    ),
    "=kms.client": NOTHING,
    "kms.client.core": Rule(
        (*CORE_PROJECT, "kms.evidence"), CORE_THIRD_PARTY, CLOCK_AND_IO, ("kms.attest.pccs",)
    ),
    "kms.client.appcert": Rule(CORE_PROJECT, CORE_THIRD_PARTY, CLOCK_AND_IO, ("kms.attest.pccs",)),
    "=kms.node": NOTHING,
    "kms.node.limits": NOTHING,
    "kms.node.model": Rule(
        CORE_PROJECT,
        CORE_THIRD_PARTY,
        CLOCK_AND_IO,
        ("kms.attest.pccs",),
        note="the node's vocabulary: config, events, status",
    ),
    "kms.node.core": Rule(
        (*CORE_PROJECT, "kms.node.limits", "kms.node.model", *NODE_CORE_PARTS, *NODE_CORE_STEPS),
        CORE_THIRD_PARTY,
        CLOCK_AND_IO,
        ("kms.attest.pccs",),
    ),
    "kms.node.persist": Rule(
        (*CORE_PROJECT, "kms.node.model"),
        CORE_THIRD_PARTY,
        CLOCK_AND_IO,
        ("kms.attest.pccs", "kms.store"),
        note="events to store operations; the store only as a Protocol",
    ),
    "kms.node.driver": Rule(
        (
            *CORE_PROJECT,
            "kms.node.core",
            "kms.node.model",
            "kms.node.persist",
            "net.codec",
            "net.peerid",
        ),
        CORE_THIRD_PARTY,
        CLOCK_AND_IO,
        ("kms.attest.pccs", "kms.store"),
        note="frames in, ordered steps out; sans-I/O",
    ),
    # The core's collaborators (lifecycle, liveness, ...): sans-I/O, below the core.
    **dict.fromkeys(NODE_CORE_PARTS, NODE_CORE_PART),
    # The core's steps (sharing runs, ballots, adoption, chain sync, dispatch): above the parts.
    **dict.fromkeys(NODE_CORE_STEPS, NODE_CORE_STEP),
    "kms.node.admission": Rule(
        (*CORE_PROJECT, "kms.node.core", "kms.node.model"),
        CORE_THIRD_PARTY,
        CLOCK_AND_IO,
        ("kms.attest.pccs",),
    ),
    "kms.node.release": Rule(
        CORE_PROJECT,
        CORE_THIRD_PARTY,
        CLOCK_AND_IO,
        RELEASE_FENCE,
        note="fenced: not the store, the policy index or the PCCS client",
    ),
    "kms.node.appcert": Rule(
        (*CORE_PROJECT, "kms.node.release"),
        CORE_THIRD_PARTY,
        CLOCK_AND_IO,
        RELEASE_FENCE,
        note="app-key certification on the release steps; fenced like kms.node.release",
    ),
    # --- kms: storage and local files.
    "kms.store": Rule(
        ("mpc", "kms.policy", "kms.store"),
        frozenset({"cryptography", "msgpack"}),
        frozenset({"trio", "libp2p"}),
    ),
    "kms.secretfile": Rule((), never=frozenset({"trio", "libp2p", "socket", "sqlite3"})),
    # --- kms: trio shells.
    "kms.attest.pccs": SHELL,
    "kms.node.service": NODE_SHELL,
    "kms.node.policies": NODE_SHELL,
    # The node's roles (``NodeService`` wires them): the release shell around the fenced
    # pipeline (it may import the store), policies and gossip, evidence, audit, status.
    "kms.node.keyrelease": NODE_SHELL,
    "kms.node.commit": NODE_SHELL,
    "kms.node.policy_sync": NODE_SHELL,
    "kms.node.evidence_log": NODE_SHELL,
    "kms.node.audit_log": NODE_SHELL,
    "kms.node.node_status": NODE_SHELL,
    "kms.client.http": SHELL,
    # --- kms.agent: the process inside a dstack CVM that serves dstack's guest API.
    "kms.agent": SHELL,
    # The boot-time (CCEL) event log parser: bytes in, events out.
    "kms.agent.ccel": Rule((), never=CLOCK_AND_IO, note="a bounded parser"),
    # Where the agent's TEE facts come from: quotes (configfs-tsm, dstack's agent, the
    # simulated TEE), the event log and the compose file, checked against one quote.
    "kms.agent.tee": Rule(
        ("kms.attest", "kms.policy", "kms.agent.ccel", "kms.app.simtee"),
        frozenset({"httpx"}),
        note="the simulated TEE (devnet) is its only kms.app module",
    ),
    # The agent's configuration, read only from the measured compose file.
    "kms.agent.config": Rule(("kms.agent.tee",), frozenset({"yaml"})),
    # The guest API server (Starlette, served by hypercorn) over the agent's keys and TEE.
    "kms.agent.api": Rule(
        ("mpc", "kms.dstack", "kms.agent.tee"),
        frozenset({"starlette", "anyio", "cryptography"}),
        note="a shell: dstack's guest API",
    ),
    # ``kms agent run``'s boot (the TEE view, the policy, sigma, the certificate) and its
    # server process; devnet mode reads a devnet's directory, the CVM side is `kms key get`'s.
    "kms.agent.runtime": Rule(
        (
            "mpc",
            "kms.agent",
            "kms.dstack",
            "kms.policy",
            "kms.client",
            "kms.app.cvm",
            "kms.app.devnet",
            "kms.secretfile",
            "kms.api.http",
        ),
        frozenset({"httpx", "trio", "hypercorn"}),
        note="the boot and the serving process; devnet mode reads a devnet's directory",
    ),
    # The node's metrics (prometheus_client over the core's and release's vocabulary),
    # its log formatting, and its process lifecycle (signals, parent death, exit).
    "kms.node.metrics": Rule(
        ("kms.node.core", "kms.node.model", "kms.node.release", "net.codec"),
        frozenset({"prometheus_client"}),
    ),
    "kms.node.logs": Rule((), frozenset()),
    "kms.node.lifecycle": Rule((), frozenset()),
    "kms.node.clock": Rule(
        (), frozenset({"trio"}), note="the wall clock and trio's, for the shell"
    ),
    "kms.node.reporting": Rule(
        ("mpc", "kms.node.metrics", "kms.node.model"),
        frozenset(),
        CLOCK_AND_IO,
        note="log lines and metrics of the core's events",
    ),
    # --- entry points and composition roots. Each may import any third-party module (web
    # frameworks, typer, rich, yaml, tomli_w: what serving HTTP, a CLI or a devnet needs)
    # and any project module below it, but none beside or above it: no sim (only the CLI's
    # `kms sim` commands run simulations), no kms.cli; the node's composition root neither
    # the devnet nor the demo. No kms.node module imports kms.app, kms.api or kms.cli.
    # The HTTP apps (starlette, hypercorn, the public port on httptools) over the node and the
    # PCCS proxy.
    "kms.api": Rule(
        ("mpc", "net", "kms"), any_third_party=True, not_project=("kms.cli", "kms.app")
    ),
    # ``kms attest``: quote verification from the command line (typer).
    "kms.attest.cli": Rule(("mpc", "kms.attest"), any_third_party=True),
    # kms.app: the composition roots. The node file config is a shell (no HTTP server, no
    # libp2p); the node's assembly builds on it; the devnet on the assembly; the demo on both.
    "=kms.app": NOTHING,
    "kms.app.config": NODE_SHELL,
    # ``kms committee``: the committee file, from records to each node's node.toml.
    "kms.app.committee": Rule(
        ("mpc", "net", "kms"),
        any_third_party=True,
        not_project=("kms.cli", "kms.app.devnet", "kms.app.demo", "kms.app.testing"),
        note="builds on the node's file config and `kms node init`'s writer",
    ),
    # What an operator asks of a node over the admin channel (``kms member``, ``kms audit``).
    "kms.app.operator": Rule(
        ("mpc", "net", "kms"),
        any_third_party=True,
        not_project=("kms.cli", "kms.app.setup", "kms.app.devnet", "kms.app.demo"),
    ),
    # ``kms audit``: a node's audit log checked against its identity in the verified chain.
    "kms.app.audit": Rule(
        ("mpc", "net", "kms"),
        any_third_party=True,
        not_project=("kms.cli", "kms.app.setup", "kms.app.devnet", "kms.app.demo"),
    ),
    # ``kms node rotate-admin-token`` and ``kms node passphrase``: one node's files.
    "kms.app.maintenance": Rule(
        ("mpc", "net", "kms"),
        any_third_party=True,
        not_project=("kms.cli", "kms.app.setup", "kms.app.devnet", "kms.app.demo"),
    ),
    "kms.app.setup": Rule(
        ("mpc", "net", "kms"),
        any_third_party=True,
        not_project=("kms.cli", "kms.app.devnet", "kms.app.demo", "kms.app.testing"),
        note="`kms node` composition root; the CLI and the devnet build on it",
    ),
    # The in-process test committee (tests and bench): node services on net.memory with
    # their HTTP apps; nothing a running node uses.
    "kms.app.testing": Rule(
        ("mpc", "net", "kms"),
        any_third_party=True,
        not_project=("kms.cli", "kms.app.devnet", "kms.app.demo"),
        note="the in-process test committee, which drives the HTTP app",
    ),
    # A simulated TDX platform in a directory (``kms tee``); app owners' keys, policies and
    # pushes (``kms app``); a CVM on the command line (``kms key get``). The devnet builds
    # on them.
    "kms.app.simtee": Rule(
        ("mpc", "kms.attest", "kms.policy", "kms.secretfile"),
        any_third_party=True,
        note="the simulated TEE of `kms tee init`",
    ),
    "kms.app.owner": Rule(
        ("mpc", "kms.policy", "kms.secretfile", "kms.app.simtee", "kms.app.config"),
        any_third_party=True,
        note="`kms app`: owner keys, policy files, pushes",
    ),
    "kms.app.cvm": Rule(
        (
            "mpc",
            "kms.policy",
            "kms.app.owner",
            "kms.app.simtee",
            "kms.app.setup",
            "kms.app.devnet",
            "kms.client.core",
        ),
        any_third_party=True,
        note="`kms key get`: node URLs and quotes (devnet defaults); every claimant of an index",
    ),
    # ``kms devnet``: local committees of node processes.
    "kms.app.devnet": Rule(
        ("mpc", "net", "kms"), any_third_party=True, not_project=("kms.cli", "kms.app.demo")
    ),
    # ``kms agent run`` as a child process and the dstack SDK's scripts against it (demo,
    # bench, tests).
    "kms.app.agentproc": Rule((), any_third_party=True, note="processes only"),
    # ``make demo``: a committee and a CVM, end to end.
    "kms.app.demo": Rule(("mpc", "net", "kms"), any_third_party=True, not_project=("kms.cli",)),
    # ``kms chaos``: the fault lab. Runs the real node and client programs on hosts of their
    # own; its byzantine members bend a real node with the simulator's adversary hooks.
    "kms.chaos": Rule(
        ("mpc", "net", "kms", "sim.adversary"),
        any_third_party=True,
        not_project=("kms.cli", "kms.app.demo"),
        note="the fault lab: network hosts, nemesis, workload, checker",
    ),
    # ``kms``: the command line, one module per command group; only ``kms sim`` imports sim.
    "kms.cli": ENTRY,
    # --- sim: drives the cores; no real network, no wall clock.
    "sim": Rule(
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
        ("kms.cli", "kms.api", "kms.app", "net.libp2p"),
    ),
}

KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()
"""Imports the matrix refuses but that exist today, as ``(module, imported module)``.

The test asserts this is exactly the set of violations, so it can only shrink: an
entry that is fixed must be removed, and no new violation can be added silently.
Empty: ``kms.node.release`` imports none of ``RELEASE_FENCE`` (the store, the policy
index, the PCCS client), no ``kms.node`` module imports ``kms.api``, ``kms.app`` or
``kms.cli``, and every other module keeps to its row.
"""


def within(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def row_for(name: str) -> str | None:
    """The key of the row that governs module ``name`` (longest match), or ``None``."""
    best: str | None = None
    for key in ROWS:
        matches = name == key[1:] if key.startswith("=") else within(name, key)
        if matches and (best is None or len(key.lstrip("=")) > len(best.lstrip("="))):
            best = key
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def project_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PROJECT for p in sorted((ROOT / pkg).rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    target: str
    """The imported module: a project module (resolved as the module docstring says) or a
    top-level name outside the project."""
    line: int
    type_only: bool
    lazy: bool
    """Inside a function."""


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = (name if is_package else name.rpartition(".")[0]).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _statements(
    tree: ast.AST, type_only: bool = False, lazy: bool = False
) -> Iterable[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, type_only, lazy
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), True, lazy)
            for stmt in child.orelse:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), type_only, lazy)
        else:
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _statements(child, type_only, inner)


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


@cache
def _parsed(path: Path) -> ast.Module:
    """A project file, parsed once per run."""
    return _parse(path)


@cache
def reexports(package: str) -> dict[str, str]:
    """Names a package module imports from its own modules: name → defining module."""
    files = project_files()
    path = files.get(package)
    if path is None or path.name != "__init__.py":
        return {}
    out: dict[str, str] = {}
    for node in _parsed(path).body:
        if isinstance(node, ast.ImportFrom):
            mod = _absolute(node, package, True)
            if within(mod, package) and mod != package and mod in files:
                for a in node.names:
                    out[a.asname or a.name] = resolve_name(mod, a.name)
    return out


def resolve_name(module: str, name: str) -> str:
    """The project module that ``from module import name`` imports."""
    files = project_files()
    if f"{module}.{name}" in files:
        return f"{module}.{name}"
    return reexports(module).get(name, module)


def _known(mod: str) -> str:
    files = project_files()
    while mod and mod not in files:
        mod = mod.rpartition(".")[0]
    return mod


def imports_of(name: str, path: Path | None = None) -> list[Import]:
    """Every import of module ``name`` (read from ``path``, by default its own file)."""
    if path is None:
        return _project_imports(name)
    return _imports(name, path, _parse(path))


@cache
def _project_imports(name: str) -> list[Import]:
    path = project_files()[name]
    return _imports(name, path, _parsed(path))


def _imports(name: str, path: Path, tree: ast.Module) -> list[Import]:
    is_package = path.name == "__init__.py"
    out: list[Import] = []
    for node, type_only, lazy in _statements(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                targets.append(_known(a.name) or a.name if top in PROJECT else top)
        else:
            mod = _absolute(node, name, is_package)
            top = mod.split(".")[0]
            if top in PROJECT:
                base = _known(mod) or mod
                targets.extend(
                    resolve_name(base, a.name) if base == mod else base for a in node.names
                )
            else:
                targets.append(top)
        for t in dict.fromkeys(targets):
            out.append(Import(t, node.lineno, type_only, lazy))
    return out


def violations(name: str, path: Path | None = None) -> list[tuple[str, str, str]]:
    """``(name, imported, why)`` for each import of ``name`` its row refuses."""
    key = row_for(name)
    if key is None:
        return [(name, "", "no row of ROWS matches this module (default deny): add one")]
    rule = ROWS[key]
    out: list[tuple[str, str, str]] = []
    for imp in imports_of(name, path):
        mod, top = imp.target, imp.target.split(".")[0]
        where = f"line {imp.line}" + (" (type-only)" if imp.type_only else "")
        if top in PROJECT:
            if any(within(mod, p) for p in rule.not_project):
                out.append((name, mod, f"{where}: fenced off by row `{key}`"))
            elif not any(within(mod, p) for p in rule.project) and mod != name:
                out.append((name, mod, f"{where}: not allowed by row `{key}`"))
        elif top in rule.never:
            out.append((name, top, f"{where}: forbidden by row `{key}`"))
        elif top == "__future__" or top in STDLIB or rule.any_third_party:
            continue
        elif top not in rule.third_party:
            out.append((name, top, f"{where}: third party, not allowed by row `{key}`"))
    return out


def graph(*, type_only: bool = True) -> dict[str, set[str]]:
    """Module → the project modules it imports (type-only imports too, unless told not to)."""
    files = project_files()
    return {
        name: {
            i.target
            for i in imports_of(name)
            if i.target in files and i.target != name and (type_only or not i.type_only)
        }
        for name in files
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module, as one cycle through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                found.append(_cycle_in(sorted(comp)[0], comp, edges))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _cycle_in(start: str, comp: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from ``start`` back to itself inside one component (breadth first)."""
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v] & comp):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return [start, start]


# --- the generated table -----------------------------------------------------------------------


def _names(items: Iterable[str], groups: bool) -> list[str]:
    left = set(items)
    out: list[str] = []
    if groups:
        for label, members in GROUPS.items():
            if members <= left:
                out.append(label)
                left -= members
    return out + [f"`{m}`" for m in sorted(left)]


def _row_label(key: str) -> str:
    if key.startswith("="):
        return f"`{key[1:]}` (the package module only)"
    return f"`{key}`"


def table() -> str:
    """The Markdown table of ``ROWS`` (sorted by key) that docs/design.md shows."""
    lines = [
        "| module | may import (project) | but not (project) | may import (third party) | never |",
        "|---|---|---|---|---|",
    ]
    for key in sorted(ROWS, key=lambda k: (k.lstrip("="), not k.startswith("="))):
        rule = ROWS[key]
        project = ", ".join(_names(rule.project, False)) or "nothing"
        third = (
            "anything"
            if rule.any_third_party
            else ", ".join(_names(rule.third_party, True)) or "nothing"
        )
        fenced = ", ".join(_names(rule.not_project, False)) or "—"
        never = ", ".join(_names(rule.never, True)) or "—"
        label = _row_label(key) + (f": {rule.note}" if rule.note else "")
        lines.append(f"| {label} | {project} | {fenced} | {third} | {never} |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` (docs/design.md) with the generated block replaced by ``table()``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"the markers {BEGIN} and {END} are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}{END}{tail}"


def outdated(path: Path = DESIGN) -> bool:
    text = path.read_text(encoding="utf-8")
    return render(text) != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    args = parser.parse_args(argv)
    if args.check:
        if outdated():
            print(f"{DESIGN.relative_to(ROOT)}: import matrix out of date", file=sys.stderr)
            return 1
        return 0
    text = DESIGN.read_text(encoding="utf-8")
    DESIGN.write_text(render(text), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
