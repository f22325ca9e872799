"""Node mode: the trio node service over net.memory on MockClock reaches protocol mode's outcome."""

from __future__ import annotations

import pytest

from sim.node_mode import Outcome, run_node_mode
from sim.run import simulate
from sim.scenario import SCENARIO_DIR, Scenario


def _equivocation_small() -> Scenario:
    sc = Scenario.load_file(SCENARIO_DIR / "dealer-equivocation.toml")
    raw = dict(sc.raw)
    raw.update(
        n=7,
        threshold=5,
        duration=25.0,
        adversaries=[{"nodes": [6, 7], "behaviour": "equivocate"}],
    )
    raw.pop("load", None)
    raw.pop("expect", None)
    return Scenario.from_dict(raw)


def test_node_mode_reaches_the_protocol_mode_outcome(sim_seed: int) -> None:
    sc = _equivocation_small()
    node = run_node_mode(sc, sim_seed)
    protocol = Outcome.of_report(simulate(sc, sim_seed))
    assert node == protocol, sim_seed
    assert node.genesis_certified and node.mpk_stable
    assert node.disqualified == (
        (0, 6, "evidence/equivocation"),
        (0, 7, "evidence/equivocation"),
    )


@pytest.mark.parametrize(
    ("name", "duration"),
    [("partition-during-dkg", 40.0), ("crash-mid-reshare", 60.0)],
)
def test_node_mode_with_partitions_crashes_and_membership(
    name: str, duration: float, sim_seed: int
) -> None:
    sc = Scenario.load_file(SCENARIO_DIR / f"{name}.toml").with_param("duration", duration)
    node = run_node_mode(sc, sim_seed)
    protocol = Outcome.of_report(simulate(sc, sim_seed))
    assert node == protocol, (name, sim_seed)
    assert node.genesis_certified and node.mpk_stable
