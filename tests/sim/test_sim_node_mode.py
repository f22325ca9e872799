"""Node mode: the trio node service over net.memory on MockClock reaches protocol mode's outcome."""

from __future__ import annotations

from pathlib import Path

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


def test_kms_sim_run_node_mode_compares_the_modes(tmp_path: Path, sim_seed: int) -> None:
    import tomli_w
    from typer.testing import CliRunner

    from kms.cli import app

    scenario = tmp_path / "small.toml"
    scenario.write_bytes(tomli_w.dumps(dict(_equivocation_small().raw)).encode())
    res = CliRunner().invoke(
        app,
        [
            "sim",
            "run",
            str(scenario),
            "--seed",
            str(sim_seed),
            "--out",
            str(tmp_path / "o"),
            "--node-mode",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "node mode reached the same outcome as protocol mode" in res.output
