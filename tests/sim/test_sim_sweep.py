"""Sweeps: the grid, the confidence bands, and the same results on a process pool and on Dask."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kms.cli import app
from sim import sweep
from sim.scenario import SCENARIO_DIR, Scenario

PARAM = "random_crashes.probability=0.0:0.4:0.2"


def _scenario() -> Scenario:
    sc = Scenario.load_file(SCENARIO_DIR / "independent-crashes.toml")
    return sc.with_param("duration", 50.0)


def test_param_grid_includes_stop() -> None:
    assert sweep.parse_param("n=4:10:3") == ("n", [4.0, 7.0, 10.0])
    assert sweep.parse_param("x=0:0.3:0.1")[1] == [0.0, 0.1, 0.2, 0.3]
    jobs = sweep.grid([("a", [1.0, 2.0]), ("b", [5.0])], 3)
    assert len(jobs) == 6 and jobs[0] == ((("a", 1.0), ("b", 5.0)), 0)
    with pytest.raises(ValueError, match="START:STOP:STEP"):
        sweep.parse_param("n=4")


def test_confidence_bands() -> None:
    mean, lo, hi = sweep.confidence([1.0] * 10, binary=True)
    assert mean == 1.0 and lo < 1.0 and hi == pytest.approx(1.0)
    mean, lo, hi = sweep.confidence([1.0, 2.0, 3.0], binary=False)
    assert lo < mean == 2.0 < hi


def test_process_pool_and_dask_give_identical_results() -> None:
    from distributed import LocalCluster

    sc = _scenario()
    params = [sweep.parse_param(PARAM)]
    local = sweep.run_grid(sc, params, 2, workers=2)
    with LocalCluster(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        remote = sweep.run_grid(sc, params, 2, dask=cluster.scheduler_address)
    assert local == remote
    assert len(local) == 6
    by_p = {r["point"][0][1]: r for r in local if r["seed"] == 0}
    assert by_p[0.0]["availability"] == 1.0
    assert by_p[0.4]["availability"] < 1.0


def test_kms_sim_sweep_writes_results_and_plots(tmp_path: Path) -> None:
    scenario = tmp_path / "short.toml"
    import tomli_w

    scenario.write_bytes(tomli_w.dumps(dict(_scenario().raw)).encode())
    out = tmp_path / "sweep"
    res = CliRunner().invoke(
        app,
        [
            "sim",
            "sweep",
            str(scenario),
            "--param",
            PARAM,
            "--seeds",
            "2",
            "--out",
            str(out),
            "--workers",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "sweep.json").read_text())
    assert data["params"] == {"random_crashes.probability": [0.0, 0.2, 0.4]}
    agg = data["aggregates"]["random_crashes.probability"]
    assert len(agg["availability"]) == 3 and agg["availability"][0][0] == 1.0
    assert (out / "sweep-random_crashes.probability.png").read_bytes()[:4] == b"\x89PNG"
