"""Simulator tests: the seed every scenario runs with, replayable with ``--sim-seed``."""

from __future__ import annotations

import pytest

DEFAULT_SEED = 1


@pytest.fixture(scope="session")
def sim_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--sim-seed")
    return DEFAULT_SEED if seed is None else int(seed)
