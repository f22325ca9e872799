"""Fixtures for the node-store tests: stores that are always closed at teardown.

``tests/conftest.py`` puts ``tests/`` first on ``sys.path``, and ``tests/kms/``
has no ``__init__.py``: without the repository root on ``sys.path`` too,
``import kms`` would find ``tests/kms`` as a namespace package before the
editable install's finder is asked, and ``kms.store`` would be this directory.
A regular package anywhere on ``sys.path`` wins over namespace portions, so
adding the root is enough.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from store_helpers import StoreFactory, tee_sealer  # noqa: E402

from kms.store import NodeStore, Sealer  # noqa: E402


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


@pytest.fixture
def open_store(store_path: Path) -> Iterator[StoreFactory]:
    """``open_store(sealer=None, path=None)`` opens a store that is closed at teardown."""
    opened: list[NodeStore] = []

    def factory(sealer: Sealer | None = None, path: Path | None = None) -> NodeStore:
        store = NodeStore(path or store_path, sealer or tee_sealer())
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: StoreFactory) -> NodeStore:
    return open_store()
