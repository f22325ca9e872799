"""The import fences, enforced by walking every module's imports (``tests/import_matrix.py``).

Default deny: every module of ``mpc``, ``net``, ``kms`` and ``sim`` must match a
row of ``ROWS`` and import only what its row allows. The module import graph has
no cycle, counting lazy and type-only imports.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_matrix import (
    KNOWN_VIOLATIONS,
    RELEASE_FENCE,
    ROWS,
    cycles,
    graph,
    imports_of,
    project_files,
    row_for,
    violations,
)

ALL = sorted(project_files())


def refused(name: str, path: Path | None = None) -> list[str]:
    return [
        f"{n} imports {m or '?'}: {why}"
        for n, m, why in violations(name, path)
        if (n, m) not in KNOWN_VIOLATIONS
    ]


@pytest.mark.parametrize("name", ALL)
def test_module_respects_the_import_matrix(name: str) -> None:
    assert refused(name) == []


def test_every_module_has_a_row() -> None:
    assert [n for n in ALL if row_for(n) is None] == []


def test_known_violations_are_exactly_the_current_ones() -> None:
    """``KNOWN_VIOLATIONS`` can only shrink: a fixed entry must be removed from it."""
    current = {(n, m) for name in ALL for n, m, _ in violations(name)}
    assert current == set(KNOWN_VIOLATIONS)


def test_there_is_no_import_cycle() -> None:
    found = cycles(graph())
    assert found == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_a_module_without_a_row_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "mod.py"
    fake.write_text("import json\n")
    for name in ("kms.newthing", "kms.node.newthing", "kms.client.newthing", "bench.x"):
        got = violations(name, fake)
        assert len(got) == 1 and "no row" in got[0][2], (name, got)
    # A package row covers new modules of the package.
    assert violations("mpc.newthing", fake) == []
    # A row for a package module alone covers neither its modules nor what it may import.
    fake.write_text("from kms import cli\n")
    assert [m for _, m, _ in violations("kms", fake)] == ["kms.cli"]


def test_matrix_flags_each_kind_of_violation(tmp_path: Path) -> None:
    fake = tmp_path / "mod.py"
    fake.write_text("import socket\nimport libp2p\nfrom kms.cli import main\nimport requests\n")
    got = [f"{m} {why}" for _, m, why in violations("mpc.dkg.fake", fake)]
    assert any("socket" in v for v in got)
    assert any("libp2p" in v for v in got)
    assert any("kms.cli" in v for v in got)
    assert any("requests" in v for v in got)
    fake.write_text("from net.libp2p import host\n")
    assert violations("sim.world", fake) != []
    fake.write_text("import libp2p\n")
    assert violations("net.memory", fake) != []
    assert violations("net.libp2p.host", fake) == []


def test_lazy_and_type_only_imports_are_read(tmp_path: Path) -> None:
    fake = tmp_path / "mod.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from kms.cli import main\n"
        "def f():\n"
        "    import trio\n"
    )
    imps = {i.target: i for i in imports_of("mpc.dkg.fake", fake)}
    assert imps["kms.cli"].type_only and not imps["kms.cli"].lazy
    assert imps["trio"].lazy and not imps["trio"].type_only
    # Both count for the matrix.
    assert {m for _, m, _ in violations("mpc.dkg.fake", fake)} == {"kms.cli", "trio"}


def test_the_graph_holds_lazy_imports() -> None:
    assert "kms.api.openapi" in graph()["kms.api.http"]  # imported inside a function


def test_names_reexported_by_a_package_resolve_to_their_module(tmp_path: Path) -> None:
    fake = tmp_path / "mod.py"
    fake.write_text("from kms.attest import Verifier\nfrom kms import store\n")
    assert {i.target for i in imports_of("kms.fake", fake)} == {"kms.attest.verify", "kms.store"}


@pytest.mark.parametrize(
    "line",
    [
        "from kms.store import NodeStore",
        "from kms.store.store import NodeStore",
        "from kms.policy.registry import AppRegistry",
        "from kms.node.policies import NodePolicies",
        "from kms.attest.pccs import PCCSClient",
        "import kms.attest.pccs",
    ],
)
def test_the_release_module_is_fenced(tmp_path: Path, line: str) -> None:
    fake = tmp_path / "release.py"
    fake.write_text(line + "\n")
    got = violations("kms.node.release", fake)
    assert got and all("fenced off" in why for _, _, why in got), got
    assert row_for("kms.node.release") == "kms.node.release"
    assert set(RELEASE_FENCE) <= set(ROWS["kms.node.release"].not_project)


def test_cycles_are_found_and_printed() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
