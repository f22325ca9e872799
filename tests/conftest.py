"""Shared test setup: make ``tests/`` (``mesh``) and the devnet harness importable from every
test directory."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The in-process devnet harness (``service_devnet``, ``devnet_helpers``), for every test directory.
sys.path.insert(0, str(Path(__file__).resolve().parent / "kms" / "devnet"))


def pytest_addoption(parser):  # type: ignore[no-untyped-def]
    parser.addoption(
        "--sim-seed",
        type=int,
        default=None,
        help="run the simulator scenario tests with this seed (replays a reported failure)",
    )


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """The long in-process tests (marked ``parallel``) go first, so that two workers end
    together instead of one running them alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("parallel") is None)
