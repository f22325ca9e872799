#!/usr/bin/env python3
"""Write the state diagrams of docs/protocols/ from the protocols' transition tables.

In the spirit of h11's ``make-state-diagrams.py``: the one table of allowed
transitions per protocol is the source, and the diagram in the protocol's
page is generated from it, never drawn by hand. Each page holds one Mermaid
``stateDiagram-v2`` block between the markers

    <!-- BEGIN GENERATED STATE DIAGRAM -->
    <!-- END GENERATED STATE DIAGRAM -->

Usage::

    python scripts/make_state_diagrams.py          # rewrite the blocks
    python scripts/make_state_diagrams.py --check  # exit 1 if a page is out of date

Sources:

* the sharing session (DKG and reshare): ``mpc.dkg.session.TRANSITIONS``,
  ``Phase`` and ``TERMINAL_PHASES``;
* the membership decision window: ``mpc.membership.window`` has the phases
  (``WindowPhase``, ``TERMINAL_WINDOW_PHASES``) but no transition table, so
  the table below (``WINDOW_TRANSITIONS``) transcribes what
  ``DecisionWindow`` does. It is checked against ``WindowPhase`` on every
  run: a phase added to the enum and missing here is an error;
* the node lifecycle (``docs/protocols/node-lifecycle.md``):
  ``kms.node.phase.TRANSITIONS``, ``NodePhase`` and ``TERMINAL_NODE_PHASES``.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- BEGIN GENERATED STATE DIAGRAM -->"
END = "<!-- END GENERATED STATE DIAGRAM -->"

WINDOW_TRANSITIONS: dict[str, tuple[str, ...]] = {
    # DecisionWindow.advance_time at the window's end: a winner (or the lock this member
    # holds, or the one lock the ballots report), none, or abstaining (not live through the
    # window, or ballots reporting different locks).
    "COLLECTING": ("SIGNING", "NO_DECISION", "ABSTAINED"),
    # t outcome partials combined, or too few by the signing deadline.
    "SIGNING": ("DECIDED", "FAILED"),
    "DECIDED": (),
    "NO_DECISION": (),
    "ABSTAINED": (),
    "FAILED": (),
}
"""The decision window's transitions by ``WindowPhase`` name (not in mpc: transcribed here)."""


@dataclass(frozen=True)
class Diagram:
    doc: str
    """Page under ``docs/protocols/``."""
    source: str
    """Where the table comes from (written into the generated block)."""
    initial: str
    states: tuple[str, ...]
    transitions: tuple[tuple[str, str], ...]
    terminal: frozenset[str]


def _table_diagram(
    doc: str,
    source: str,
    phases: type[enum.Enum],
    table: Mapping[enum.Enum, Sequence[enum.Enum]],
    terminal: frozenset[enum.Enum],
) -> Diagram:
    states = tuple(p.name for p in phases)
    missing = [p.name for p in phases if p not in table]
    if missing:
        raise SystemExit(f"{source}: no row for {', '.join(missing)}")
    edges = tuple((a.name, b.name) for a in phases for b in table[a])
    return Diagram(
        doc=doc,
        source=source,
        initial=states[0],
        states=states,
        transitions=edges,
        terminal=frozenset(p.name for p in terminal),
    )


def diagrams() -> list[Diagram]:
    """Every generated diagram, from the tables as they are in ``mpc`` now."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    session = importlib.import_module("mpc.dkg.session")
    window = importlib.import_module("mpc.membership.window")
    node_phase = importlib.import_module("kms.node.phase")

    phase_names = [p.name for p in window.WindowPhase]
    if sorted(phase_names) != sorted(WINDOW_TRANSITIONS):
        raise SystemExit(
            "WINDOW_TRANSITIONS does not cover exactly the members of WindowPhase: "
            f"{sorted(phase_names)} vs {sorted(WINDOW_TRANSITIONS)}"
        )
    for targets in WINDOW_TRANSITIONS.values():
        for name in targets:
            if name not in phase_names:
                raise SystemExit(f"WINDOW_TRANSITIONS names an unknown phase {name}")
    window_terminal = {p.name for p in window.TERMINAL_WINDOW_PHASES}
    ends = {name for name, targets in WINDOW_TRANSITIONS.items() if not targets}
    if ends != window_terminal:
        raise SystemExit("WINDOW_TRANSITIONS' dead ends are not TERMINAL_WINDOW_PHASES")
    window_table = {
        window.WindowPhase[a]: tuple(window.WindowPhase[b] for b in bs)
        for a, bs in WINDOW_TRANSITIONS.items()
    }

    return [
        _table_diagram(
            "sharing.md",
            "mpc.dkg.session.TRANSITIONS",
            session.Phase,
            session.TRANSITIONS,
            session.TERMINAL_PHASES,
        ),
        _table_diagram(
            "membership.md",
            "scripts/make_state_diagrams.py WINDOW_TRANSITIONS (phases: mpc.membership.window.WindowPhase)",
            window.WindowPhase,
            window_table,
            window.TERMINAL_WINDOW_PHASES,
        ),
        _table_diagram(
            "node-lifecycle.md",
            "kms.node.phase.TRANSITIONS",
            node_phase.NodePhase,
            node_phase.TRANSITIONS,
            node_phase.TERMINAL_NODE_PHASES,
        ),
    ]


def render(diagram: Diagram) -> str:
    """The generated block, markers included."""
    lines = [
        BEGIN,
        f"<!-- Generated by scripts/make_state_diagrams.py from {diagram.source}; do not edit. -->",
        "",
        "```mermaid",
        "stateDiagram-v2",
        f"    [*] --> {diagram.initial}",
    ]
    lines += [f"    {a} --> {b}" for a, b in diagram.transitions]
    lines += [f"    {s} --> [*]" for s in diagram.states if s in diagram.terminal]
    lines += ["```", "", END]
    return "\n".join(lines)


def replace_block(text: str, block: str, where: str) -> str:
    """``text`` with its one generated block replaced by ``block``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{where}: expected exactly one {BEGIN} … {END} pair")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + block + tail


def outdated(docs_dir: Path | None = None) -> list[Path]:
    """The protocol pages whose generated block differs from the tables (check mode)."""
    base = docs_dir if docs_dir is not None else ROOT / "docs" / "protocols"
    stale = []
    for d in diagrams():
        path = base / d.doc
        if not path.exists():
            stale.append(path)
            continue
        text = path.read_text(encoding="utf-8")
        if replace_block(text, render(d), str(path)) != text:
            stale.append(path)
    return stale


def write(docs_dir: Path | None = None) -> list[Path]:
    """Rewrite every out-of-date block; returns the pages changed."""
    base = docs_dir if docs_dir is not None else ROOT / "docs" / "protocols"
    changed = []
    for d in diagrams():
        path = base / d.doc
        text = path.read_text(encoding="utf-8")
        new = replace_block(text, render(d), str(path))
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a page is out of date; write nothing"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = outdated()
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        if stale:
            print("run: python scripts/make_state_diagrams.py", file=sys.stderr)
            return 1
        return 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
