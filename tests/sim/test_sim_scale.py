"""The full-size scale scenario: n = 64, t = 43 with 21 malicious dealers (slow: about two minutes)."""

from __future__ import annotations

import time

import pytest

from sim import expect
from sim.run import simulate
from sim.scenario import SCENARIO_DIR, Scenario


@pytest.mark.slow
@pytest.mark.long  # `make test` runs it beside the other lanes, at the lowest CPU priority
@pytest.mark.parallel  # a virtual clock: nothing here waits on the wall clock
def test_n64_with_21_malicious_dealers(sim_seed: int) -> None:
    sc = Scenario.load_file(SCENARIO_DIR / "malicious-dealers-at-scale.toml")
    assert (sc.n, sc.threshold, len(sc.corrupt_nodes())) == (64, 43, 21)
    start = time.perf_counter()
    rep = simulate(sc, sim_seed)
    wall = time.perf_counter() - start
    assert expect.check(rep, sc) == [], (sim_seed, wall)
    assert len([d for d in rep["disqualified"] if d["evidence"]]) == 21
    print(f"n = 64, t = 43, 21 malicious dealers: {wall:.1f} s wall")
