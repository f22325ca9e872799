"""The simulator's world and node mode move frames and keep time; nothing else.

They hold no dispatch over the node's event types (``sim.observe`` maps events to
observations) and no store logic (``sim.nodes`` and ``kms.node.persist`` do): an ast
scan of both files for ``isinstance``/``match`` over ``kms.node.model`` classes and for
calls of ``NodeStore``/``SimStore`` methods on a store.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from kms.node import model
from kms.store import NodeStore
from sim.nodes import SimStore

ROOT = Path(__file__).resolve().parents[2]
FILES = ("sim/world.py", "sim/node_mode.py")

MODEL_CLASSES = frozenset(
    name
    for name, obj in vars(model).items()
    if inspect.isclass(obj) and obj.__module__ == model.__name__
)
STORE_CLASSES = frozenset({"NodeStore", "SimStore"})
STORE_METHODS = frozenset(
    name
    for cls in (NodeStore, SimStore)
    for name, _ in inspect.getmembers(cls, callable)
    if not name.startswith("_")
)


def _names(node: ast.AST) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.Attribute):
            out.add(n.attr)
    return out


def violations(source: str) -> list[str]:
    found = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "isinstance":
            hit = _names(n.args[1]) & MODEL_CLASSES if len(n.args) == 2 else set()
            if hit:
                found.append(f"line {n.lineno}: isinstance over {sorted(hit)}")
        if isinstance(n, ast.MatchClass):
            hit = _names(n.cls) & MODEL_CLASSES
            if hit:
                found.append(f"line {n.lineno}: match over {sorted(hit)}")
        if isinstance(n, ast.Name) and n.id in STORE_CLASSES:
            found.append(f"line {n.lineno}: uses {n.id}")
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr in STORE_METHODS
            and "store" in ast.unparse(n.func.value).lower()
        ):
            found.append(f"line {n.lineno}: store call {ast.unparse(n.func)}")
    return found


@pytest.mark.parametrize("path", FILES)
def test_no_event_dispatch_and_no_store_logic(path: str) -> None:
    assert violations((ROOT / path).read_text()) == []


def test_the_scan_sees_what_it_forbids() -> None:
    bad = """
def f(node, step):
    for ev in step.events:
        if isinstance(ev, (EpochSwitched, int)):
            pass
        match ev:
            case model.RunFailed(reason=r):
                pass
    node.store.retained()
    with NodeStore(path, sealer) as store:
        store.save_identity(a, b)
"""
    found = violations(bad)
    assert len(found) == 5, found
    assert violations("def f(x):\n    isinstance(x, int)\n    x.restored()\n") == []
