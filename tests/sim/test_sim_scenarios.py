"""Every shipped scenario runs at a small size and its outcome is asserted.

Each scenario file states its expected outcome in ``[expect]``; the tests
check those and, for the failure classes that matter most, assert the
outcome directly as well. A failing test names its seed; ``--sim-seed S``
replays it.
"""

from __future__ import annotations

from typing import Any

import pytest

from sim import expect
from sim.run import simulate
from sim.scenario import SCENARIO_DIR, Scenario

SCALE_DOWN: dict[str, dict[str, Any]] = {
    "clean-dkg-at-scale": {"n": 10, "threshold": 7, "duration": 40.0},
    "malicious-dealers-at-scale": {
        "n": 10,
        "threshold": 7,
        "duration": 40.0,
        "adversaries": [
            {"nodes": [8, 9, 10], "behaviour": "bad-shares", "to": 3, "justify": "wrong"}
        ],
        "expect": {
            "genesis_certified": True,
            "mpk_stable": True,
            "disqualified_with_evidence": [8, 9, 10],
            "evidence": "evidence/invalid-justification",
        },
    },
}
ALL = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def small(name: str) -> Scenario:
    sc = Scenario.load_file(SCENARIO_DIR / f"{name}.toml")
    return Scenario.from_dict({**sc.raw, **SCALE_DOWN.get(name, {})})


def test_at_least_ten_scenarios_ship() -> None:
    assert len(ALL) >= 10


@pytest.mark.parametrize("name", ALL)
def test_scenario_outcome(name: str, sim_seed: int) -> None:
    sc = small(name)
    rep = simulate(sc, sim_seed)
    assert sc.expect, f"{name} states no expected outcome"
    failed = expect.check(rep, sc)
    assert failed == [], f"{name}, seed {sim_seed}: {failed}"


def test_equivocating_dealers_are_excluded_with_evidence(sim_seed: int) -> None:
    rep = simulate(small("dealer-equivocation"), sim_seed)
    excluded = {d["index"]: d["evidence"] for d in rep["disqualified"]}
    assert excluded == {
        8: "evidence/equivocation",
        9: "evidence/equivocation",
        10: "evidence/equivocation",
    }, sim_seed
    assert rep["mpk_stable"] and rep["epochs"][0]["certified_at"] is not None


def test_t_minus_one_corrupt_nodes_get_no_wrong_key_accepted(sim_seed: int) -> None:
    sc = small("corrupt-t-minus-one")
    assert len(sc.corrupt_nodes()) == sc.threshold - 1
    rep = simulate(sc, sim_seed)
    assert rep["wrong_keys_accepted"] == 0, sim_seed
    assert rep["wrong_partials_detected"] > 0, sim_seed
    assert not rep["secret_exposed"], sim_seed
    assert rep["availability"] == 1.0, sim_seed


def test_t_corrupt_nodes_expose_the_secret(sim_seed: int) -> None:
    sc = small("corrupt-t")
    assert len(sc.corrupt_nodes()) == sc.threshold
    rep = simulate(sc, sim_seed)
    assert rep["secret_exposed"] and rep["secret_reconstructed"], sim_seed


def test_mpk_is_stable_through_churn(sim_seed: int) -> None:
    rep = simulate(small("long-churn"), sim_seed)
    certified = [e for e in rep["epochs"] if e["certified_at"] is not None]
    assert len(certified) >= 5, sim_seed
    committees = {tuple(e["committee"]) for e in certified}
    assert len(committees) >= 3, "joins and leaves changed the committee"
    assert rep["mpk_stable"], sim_seed
    # The mobile adversary held t-1 shares of early epochs and t-1 of late ones, never t.
    assert not rep["secret_exposed"], sim_seed
    assert rep["exposure"] and all(
        len(r["corrupt_holders"]) < r["threshold"] for r in rep["exposure"]
    )
