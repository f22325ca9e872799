"""The protocol pages stay true to the code: diagrams, message tables and tags.

- The state diagrams in ``docs/protocols/`` are what
  ``scripts/make_state_diagrams.py`` generates from the transition tables.
- Every registered wire message ``TYPE`` appears in the first column of a
  message table (a Markdown table whose first header cell is ``TYPE``) of
  some ``docs/protocols/*.md``.
- Every signing context (``CTX_*``) and hash-to-curve tag (``DST_*``) is
  named, with its exact bytes, in ``docs/crypto.md`` or a protocol page.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest


def mpc_message_types() -> dict[str, type]:
    """The wire types of the ``mpc`` protocols (``kms`` registers its own, tested apart)."""
    from mpc.codec import message_types

    return {k: v for k, v in message_types().items() if v.__module__.startswith("mpc.")}


ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_state_diagrams.py"
PROTOCOL_DOCS = sorted((ROOT / "docs" / "protocols").glob("*.md"))
MESSAGE_MODULES = (
    "mpc.broadcast",
    "mpc.dkg.messages",
    "mpc.dkg.evidence",
    "mpc.cert",
    "mpc.reshare.retention",
    "mpc.membership.messages",
)
CODE_SPAN = re.compile(r"`([^`]+)`")


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_state_diagrams", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def table_rows(text: str) -> list[list[list[str]]]:
    """Every Markdown table of ``text`` as rows of cells (separator rows dropped)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def documented_types() -> dict[str, list[str]]:
    """Message TYPEs named in the first column of a message table, by page."""
    found: dict[str, list[str]] = {}
    for path in PROTOCOL_DOCS:
        for table in table_rows(path.read_text(encoding="utf-8")):
            if not table or table[0][0] != "TYPE":
                continue
            for row in table[1:]:
                for name in CODE_SPAN.findall(row[0]):
                    found.setdefault(name, []).append(path.name)
    return found


def test_there_are_protocol_pages() -> None:
    names = {p.name for p in PROTOCOL_DOCS}
    assert {"broadcast.md", "sharing.md", "membership.md", "key-derivation.md"} <= names


def test_state_diagrams_are_up_to_date() -> None:
    script = load_script()
    stale = script.outdated()
    assert stale == [], (
        f"out of date: {[str(p.relative_to(ROOT)) for p in stale]}; "
        "run: python scripts/make_state_diagrams.py"
    )


def test_diagrams_follow_the_transition_tables() -> None:
    """The generated blocks hold every edge of each table and nothing else."""
    from mpc.dkg.session import TRANSITIONS

    script = load_script()
    by_doc = {d.doc: d for d in script.diagrams()}
    sharing = by_doc["sharing.md"]
    assert set(sharing.transitions) == {
        (a.name, b.name) for a, bs in TRANSITIONS.items() for b in bs
    }
    text = (ROOT / "docs" / "protocols" / "sharing.md").read_text(encoding="utf-8")
    block = text.split(script.BEGIN, 1)[1].split(script.END, 1)[0]
    edges = set(re.findall(r"^\s+(\w+) --> (\w+)$", block, re.MULTILINE))
    assert edges == set(sharing.transitions)


def test_node_lifecycle_diagram_follows_the_phase_table() -> None:
    from kms.node.phase import TERMINAL_NODE_PHASES, TRANSITIONS, NodePhase

    script = load_script()
    lifecycle = {d.doc: d for d in script.diagrams()}["node-lifecycle.md"]
    assert set(lifecycle.states) == {p.name for p in NodePhase}
    assert set(lifecycle.transitions) == {
        (a.name, b.name) for a, bs in TRANSITIONS.items() for b in bs
    }
    assert lifecycle.terminal == {p.name for p in TERMINAL_NODE_PHASES}
    text = (ROOT / "docs" / "protocols" / "node-lifecycle.md").read_text(encoding="utf-8")
    block = text.split(script.BEGIN, 1)[1].split(script.END, 1)[0]
    edges = set(re.findall(r"^\s+(\w+) --> (\w+)$", block, re.MULTILINE))
    assert edges == set(lifecycle.transitions)


def test_window_table_matches_the_window_phases() -> None:
    from mpc.membership.window import TERMINAL_WINDOW_PHASES, WindowPhase

    script = load_script()
    assert set(script.WINDOW_TRANSITIONS) == {p.name for p in WindowPhase}
    assert {k for k, v in script.WINDOW_TRANSITIONS.items() if not v} == {
        p.name for p in TERMINAL_WINDOW_PHASES
    }


def test_check_mode_reports_a_stale_page(tmp_path: Path) -> None:
    script = load_script()
    for path in PROTOCOL_DOCS:
        (tmp_path / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    assert script.outdated(tmp_path) == []
    page = tmp_path / "sharing.md"
    page.write_text(
        page.read_text(encoding="utf-8").replace("WAITING --> DEALING", "WAITING --> DONE"),
        encoding="utf-8",
    )
    assert script.outdated(tmp_path) == [page]
    assert script.write(tmp_path) == [page]
    assert script.outdated(tmp_path) == []


def test_every_message_type_is_in_a_message_table() -> None:
    for name in MESSAGE_MODULES:
        importlib.import_module(name)

    documented = documented_types()
    missing = sorted(t for t in mpc_message_types() if t not in documented)
    assert missing == [], f"message types in no docs/protocols/*.md message table: {missing}"


@pytest.mark.parametrize(
    "name",
    sorted(
        [
            *importlib.import_module("mpc.sig").CONTEXTS,
            "DST_DERIVE",
            "DST_CERT",
        ]
    ),
)
def test_every_tag_is_named_in_the_docs(name: str) -> None:
    import mpc.cert
    import mpc.sig
    import mpc.tkd

    value: bytes = {
        **mpc.sig.CONTEXTS,
        "DST_DERIVE": mpc.tkd.DST_DERIVE,
        "DST_CERT": mpc.cert.DST_CERT,
    }[name]
    pages = [ROOT / "docs" / "crypto.md", *PROTOCOL_DOCS]
    texts = {p.name: p.read_text(encoding="utf-8") for p in pages}
    assert any(re.search(rf"\b{name}\b", t) for t in texts.values()), f"{name} is named nowhere"
    assert any(value.decode() in t for t in texts.values()), f"{name}'s bytes appear nowhere"
