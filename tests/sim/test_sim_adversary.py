"""Adversary behaviours: the registry, a new behaviour written as in docs/simulator.md, scenario errors."""

from __future__ import annotations

from typing import Any

import pytest

from mpc.dkg import SharingConfig
from sim.adversary import BEHAVIOURS, Behaviour, register
from sim.run import simulate
from sim.scenario import Scenario, ScenarioError


# --- the example of docs/simulator.md ("Writing a new adversary") ---------------------
@register
class BadShareNoAnswer(Behaviour):
    """Deal a wrong share to node 1, then never answer the complaint."""

    name = "bad-share-no-answer"

    def share_offset(self, config: SharingConfig, recipient: int) -> int:
        return 1 if recipient == 1 else 0

    def justification(self, config: SharingConfig) -> str:
        return "none"


# ---------------------------------------------------------------------------------------


def _base(**extra: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "n": 5,
        "threshold": 3,
        "duration": 20.0,
        "network": {"latency": {"kind": "uniform", "low": 0.01, "high": 0.1}},
        **extra,
    }


def test_a_new_behaviour_is_one_small_class(sim_seed: int) -> None:
    sc = Scenario.from_dict(_base(adversaries=[{"nodes": [4], "behaviour": "bad-share-no-answer"}]))
    rep = simulate(sc, sim_seed)
    # A missing justification is not provable to a third party: excluded, without evidence.
    assert [(d["index"], d["evidence"], d["reason"]) for d in rep["disqualified"]] == [
        (4, None, "no justification")
    ]
    assert rep["epochs"][0]["certified_at"] is not None and rep["mpk_stable"]


def test_honest_justification_keeps_the_dealer(sim_seed: int) -> None:
    sc = Scenario.from_dict(
        _base(
            adversaries=[
                {"nodes": [4], "behaviour": "bad-shares", "to": [1, 2], "justify": "honest"}
            ]
        )
    )
    rep = simulate(sc, sim_seed)
    assert rep["disqualified"] == []  # a correctly answered complaint is not misbehaviour


def test_reshare_dealer_with_a_wrong_constant_is_excluded_with_evidence(sim_seed: int) -> None:
    sc = Scenario.from_dict(
        _base(
            duration=70.0,
            window_period=20.0,
            refresh_interval=20.0,
            adversaries=[{"nodes": [5], "behaviour": "wrong-constant"}],
        )
    )
    rep = simulate(sc, sim_seed)
    assert any(
        d["epoch"] == 1 and d["index"] == 5 and d["evidence"] == "evidence/reshare-constant"
        for d in rep["disqualified"]
    ), rep["disqualified"]
    assert rep["mpk_stable"]


def test_withholding_deals_excludes_the_dealer_without_evidence(sim_seed: int) -> None:
    sc = Scenario.from_dict(
        _base(adversaries=[{"nodes": [2], "behaviour": "withhold", "messages": ["bcast/payload"]}])
    )
    rep = simulate(sc, sim_seed)
    assert [(d["index"], d["evidence"]) for d in rep["disqualified"]] == [(2, None)]


def test_registry_names() -> None:
    for name in (
        "bad-shares",
        "equivocate",
        "false-complaints",
        "withhold",
        "wrong-partials",
        "replay",
    ):
        assert name in BEHAVIOURS
    with pytest.raises(ValueError, match="taken"):
        register(BadShareNoAnswer)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 9}, "threshold"),
        ({"crashes": [{"node": 42, "at": 1.0}]}, "never exist"),
        ({"network": {"loss": 1.5}}, "probability"),
        ({"membership": [{"at": 1.0, "action": "explode"}]}, "membership action"),
        ({"colour": "blue"}, "unknown scenario fields"),
        ({"adversaries": [{"nodes": [1], "behaviour": "nope"}]}, "unknown behaviour"),
    ],
    ids=[
        "threshold above n",
        "unknown node",
        "loss above one",
        "bad action",
        "unknown field",
        "unknown behaviour",
    ],
)
def test_bad_scenarios_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises((ScenarioError, ValueError), match=message):
        sc = Scenario.from_dict(_base(**change))
        simulate(sc, 0)
