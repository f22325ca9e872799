"""Same scenario and seed: byte-identical report.json; the seed does change the run."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from kms.cli import app
from sim import report
from sim.run import simulate
from sim.scenario import SCENARIO_DIR, Scenario


def _busy() -> Scenario:
    """Faults, adversaries, load and a membership change at once, small."""
    sc = Scenario.load_file(SCENARIO_DIR / "crash-mid-reshare.toml")
    raw = dict(sc.raw)
    raw["network"] = {
        "latency": {"kind": "exponential", "low": 0.005, "mean": 0.03, "cap": 0.3},
        "duplicate": 0.05,
        "reorder": 0.2,
    }
    raw["adversaries"] = [
        {"nodes": [5], "behaviour": "wrong-partials"},
        {"nodes": [5], "behaviour": "bad-shares", "to": [1], "justify": "honest"},
    ]
    raw["duration"] = 70.0
    return Scenario.from_dict(raw)


def test_same_seed_same_bytes(sim_seed: int) -> None:
    sc = _busy()
    first = report.dumps(simulate(sc, sim_seed))
    second = report.dumps(simulate(sc, sim_seed))
    assert first == second
    other = report.dumps(simulate(sc, sim_seed + 1))
    assert other != first


def test_kms_sim_run_writes_report_plots_and_summary(tmp_path: Path, sim_seed: int) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "sim",
            "run",
            str(SCENARIO_DIR / "corrupt-t.toml"),
            "--seed",
            str(sim_seed),
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    for name in ("report.json", "availability.png", "durations.png", "messages.png"):
        data = (out / name).read_bytes()
        assert len(data) > 100, name
    assert (out / "availability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "secret exposed" in res.output
    assert "expectations of the scenario hold" in res.output
    again = tmp_path / "again"
    CliRunner().invoke(
        app,
        ["sim", "run", "corrupt-t", "--seed", str(sim_seed), "--out", str(again)],
    )
    assert (again / "report.json").read_bytes() == (out / "report.json").read_bytes()


def test_a_bad_scenario_is_refused_with_a_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("n = 3\nthreshold = 5\n")
    res = CliRunner().invoke(app, ["sim", "run", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert "threshold" in res.output


def test_same_bytes_across_processes_with_different_hash_seeds(tmp_path: Path) -> None:
    """Nothing in a report may depend on set or dict order under hash randomisation."""
    import os
    import subprocess
    import sys

    outs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"h{hash_seed}"
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kms.cli",
                "sim",
                "run",
                "malicious-partials-under-load",
                "--seed",
                "3",
                "--out",
                str(out),
            ],
            check=True,
            env=env,
            capture_output=True,
            timeout=300,
        )
        outs.append((out / "report.json").read_bytes())
    assert outs[0] == outs[1]
