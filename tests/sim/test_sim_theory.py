"""The simulator against theory: independent crashes give binomial availability."""

from __future__ import annotations

import pytest

from sim import expect
from sim.run import simulate
from sim.scenario import SCENARIO_DIR, Scenario


def test_binomial_at_least() -> None:
    # 10·0.7³·0.3² + 5·0.7⁴·0.3 + 0.7⁵
    assert expect.binomial_at_least(5, 3, 0.7) == pytest.approx(0.83692)
    assert expect.binomial_at_least(4, 0, 0.2) == pytest.approx(1.0)


def test_availability_under_independent_crashes_matches_the_binomial(sim_seed: int) -> None:
    sc = Scenario.load_file(SCENARIO_DIR / "independent-crashes.toml")
    rep = simulate(sc, sim_seed)
    assert rep["key_requests"] >= 150
    theory, lo, hi = expect.binomial_check(rep, sc)
    assert lo <= theory <= hi, (sim_seed, theory, lo, hi, rep["availability"])
    # No fault but crashes: whatever was served was the right key.
    assert rep["wrong_keys_accepted"] == 0
    assert rep["mpk_stable"]


def test_a_different_crash_probability_moves_availability_with_theory(sim_seed: int) -> None:
    sc = Scenario.load_file(SCENARIO_DIR / "independent-crashes.toml")
    sc = sc.with_param("random_crashes.probability", 0.1).with_param("duration", 220.0)
    rep = simulate(sc, sim_seed)
    theory, lo, hi = expect.binomial_check(rep, sc)
    assert theory > 0.99
    assert lo <= theory <= hi, (sim_seed, theory, lo, hi)
