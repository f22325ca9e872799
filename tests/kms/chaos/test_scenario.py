"""Scenario files (strict: unknown keys refused with their path), the shipped scenarios, the
report's shape and plots, and the ``kms chaos`` commands' exit codes around a runner."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kms.chaos import checker, report, schedule
from kms.chaos.scenario import Scenario, ScenarioError, load, parse, shipped
from kms.cli import app

BASE: dict[str, Any] = {"name": "x", "nodes": 5, "threshold": 3, "duration": 60}


def test_every_shipped_scenario_loads_and_schedules() -> None:
    names = shipped()
    for family in (
        "partitions",
        "links",
        "processes",
        "clocks",
        "disks",
        "byzantine",
        "mixed",
        "smoke",
    ):
        assert family in names
    for name in names:
        scenario = load(name)
        assert scenario.name == name
        assert scenario.description
        schedule.build(scenario, 0)


@pytest.mark.parametrize(
    ("name", "broken", "figure"),
    [
        ("validate-sigma", "skip-sigma-check", "wrong_keys_accepted"),
        ("validate-policy", "skip-policy-check", "unauthorized_releases"),
        ("validate-tally", "window-tally", "conflicting_certificates"),
    ],
)
def test_validation_scenarios_select_their_broken_build(
    name: str, broken: str, figure: str
) -> None:
    scenario = load(name)
    assert scenario.broken == broken
    assert report.BROKEN_FIGURE[broken] == figure
    assert name in report.VALIDATION_SCENARIOS
    if broken == "skip-policy-check":
        assert scenario.workload.rogue
    elif broken == "window-tally":
        # The fork needs no byzantine member: n = 4, t = 2, a refresh due in every window,
        # and faults placed on the decision-window grid.
        assert not scenario.byzantine
        assert (scenario.nodes, scenario.threshold) == (4, 2)
        assert scenario.committee.refresh_interval > 0
        assert all(f.window for f in scenario.faults)
    else:
        assert scenario.byzantine


def test_no_other_shipped_scenario_runs_a_broken_build() -> None:
    for name in shipped():
        assert (load(name).broken is not None) == name.startswith("validate-")


def test_smoke_fits_its_time_budget() -> None:
    smoke = load("smoke")
    assert (smoke.nodes, smoke.threshold) == (5, 3)
    assert 45 <= smoke.duration <= 100 and smoke.duration + smoke.quiet <= 120


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({**BASE, "nodez": 5}, "nodez: unknown key"),
        ({**BASE, "workload": {"client": 2}}, "workload.client: unknown key"),
        ({**BASE, "committee": {"delta": 2, "period": 1}}, "committee.period: unknown key"),
        (
            {**BASE, "faults": [{"kind": "kill", "count": 1, "duraton": [1, 2]}]},
            "faults.0.duraton: unknown key",
        ),
        (
            {**BASE, "faults": [{"kind": "delay", "count": 1, "params": {"delay": 5}}]},
            "faults.0.params.delay: unknown key",
        ),
        ({**BASE, "testing": {"broken": "everything"}}, "testing.broken"),
        ({**BASE, "faults": [{"kind": "flood", "count": 1}]}, "faults.0.kind"),
        ({**BASE, "byzantine": [{"nodes": 1, "strategies": ["lie"]}]}, "byzantine.0.strategies.0"),
    ],
)
def test_unknown_or_misspelt_keys_are_refused_with_their_path(
    doc: dict[str, Any], where: str
) -> None:
    with pytest.raises(ScenarioError, match=where.replace(".", r"\.")):
        parse(doc)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({**BASE, "threshold": 6}, "exceeds nodes"),
        (
            {**BASE, "byzantine": [{"nodes": 3, "strategies": ["stale-chain"]}]},
            "at most threshold - 1",
        ),
        ({**BASE, "faults": [{"kind": "kill", "count": 1, "every": 3}]}, "exactly one of"),
        ({**BASE, "faults": [{"kind": "kill"}]}, "exactly one of"),
        ({**BASE, "faults": [{"kind": "pause", "count": 1, "targets": "client"}]}, "target nodes"),
        ({**BASE, "faults": [{"kind": "delay", "count": 1}]}, "delay_ms"),
        ({**BASE, "faults": [{"kind": "skew", "count": 1}]}, "skew_s"),
        ({**BASE, "faults": [{"kind": "kill", "count": 1, "duration": [5, 1]}]}, "lo <= hi"),
        (
            {
                **BASE,
                "byzantine": [{"nodes": [5], "strategies": ["stale-chain"]}],
                "faults": [{"kind": "kill", "at": [1.0], "nodes": [5]}],
            },
            "never victims",
        ),
        ({**BASE, "operator": {"every": 10}}, "ops is empty"),
        ({**BASE, "nodes": True}, "nodes: Input should be a valid integer"),
        ({**BASE, "duration": "60"}, "duration: Input should be a valid number"),
        ({**BASE, "workload": {"rogue": "yes"}}, "workload.rogue: Input should be a valid boolean"),
    ],
)
def test_inconsistent_scenarios_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse(doc)


def test_overrides_replace_the_files_values_before_checking(tmp_path: Path) -> None:
    smoke = load("smoke", nodes=7, threshold=4, duration=30)
    assert (smoke.nodes, smoke.threshold, smoke.duration) == (7, 4, 30)
    with pytest.raises(ScenarioError, match="exceeds nodes"):
        load("smoke", threshold=9)
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nnodes = 4\nthreshold = 3\nduration = 10\n')
    assert load(path).nodes == 4
    with pytest.raises(ScenarioError, match="no shipped scenario"):
        load("no-such-scenario")
    path.write_text("name = [")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(path)


# --- the report ---------------------------------------------------------------


def _observations(
    out: Path, *, wrong_key: bool = False, rogue: bool = False, fork: bool = False
) -> None:
    """The observations a tiny run could have written."""
    obs: list[dict[str, Any]] = [
        {
            "kind": "fault",
            "id": 1,
            "fault": "pause",
            "t0": 12.0,
            "t1": 13.0,
            "targets": ["n1"],
            "params": {},
            "inside_model": True,
        },
    ]
    for k in range(20):
        for client in ("c1", "c2"):
            key = "bad" if wrong_key and k == 5 and client == "c2" else "good"
            obs.append(
                {
                    "kind": "fetch",
                    "client": client,
                    "rogue": False,
                    "app": "a",
                    "t0": 10.0 + k,
                    "t1": 10.2 + k,
                    "ok": True,
                    "keys": {"disk/1": key},
                    "epoch": 0,
                    "error": None,
                    "partials_decrypted": 3,
                }
            )
    obs.append(
        {
            "kind": "fetch",
            "client": "rogue",
            "rogue": True,
            "app": "a",
            "t0": 11.0,
            "t1": 11.5,
            "ok": False,
            "keys": {},
            "epoch": None,
            "error": "denied",
            "partials_decrypted": int(rogue),
        }
    )
    for node in (1, 2, 3):
        link = "forked" if fork and node == 3 else "h0"
        obs.append(
            {
                "kind": "chain",
                "t": 30.0,
                "node": node,
                "byzantine": False,
                "links": [{"epoch": 0, "kind": "epoch", "hash": link, "outcome": "o0"}],
            }
        )
        obs.append(
            {
                "kind": "status",
                "t": 31.0,
                "node": node,
                "byzantine": False,
                "up": True,
                "reachable": True,
                "epoch": 0,
                "mpk": "m",
                "member": True,
                "serving": True,
            }
        )
    obs.append({"kind": "heal", "t": 30.5})
    (out / "observations").mkdir(parents=True, exist_ok=True)
    (out / "observations" / "run.jsonl").write_text("".join(json.dumps(o) + "\n" for o in obs))


def test_report_json_has_the_figures_first_in_order_then_the_sections(tmp_path: Path) -> None:
    _observations(tmp_path)
    scenario = load("smoke")
    events = schedule.build(scenario, 1)
    figs = checker.check(tmp_path / "observations")
    doc = report.write(
        tmp_path, scenario, 1, events, figs, {"timings": {"setup": 3.0}, "proxy_cpu": 0.1}
    )
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == doc
    keys = list(saved)
    assert keys[: len(checker.FIGURE_ORDER)] == list(checker.FIGURE_ORDER)
    assert keys[len(checker.FIGURE_ORDER) : len(checker.FIGURE_ORDER) + 5] == [
        "schedule",
        "per_fault_kind",
        "model",
        "proxy_cpu",
        "timings",
    ]
    assert saved["recovery_seconds"] == pytest.approx(0.5)
    assert saved["model"]["delta"] == scenario.committee.delta
    assert len(saved["schedule"]) == len(events)
    assert saved["safety_ok"] is True
    for png in ("availability.png", "latency.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


# --- the commands ---------------------------------------------------------------


def _fake_runner(monkeypatch: pytest.MonkeyPatch, calls: list[Any], **breakage: bool) -> None:
    """Stands in for the lab (which needs root and minutes): writes observations like a run
    would, then the report through ``kms.chaos.report`` as the runner does."""

    def run(scenario: Scenario, *, seed: int, out: Path, progress: Any) -> None:
        calls.append((scenario.name, seed, scenario.nodes, scenario.duration))
        progress(0.5, 1.0, "running")
        broken = {
            "skip-sigma-check": {"wrong_key": True},
            "skip-policy-check": {"rogue": True},
            "window-tally": {"fork": True},
        }.get(scenario.broken or "", breakage)
        if scenario.broken and breakage.get("miss") and scenario.broken == "window-tally":
            broken = {}
        _observations(out, **{k: v for k, v in broken.items() if k != "miss"})
        report.write(
            out,
            scenario,
            seed,
            schedule.build(scenario, seed),
            checker.check(out / "observations"),
            plots=False,
        )

    monkeypatch.setitem(sys.modules, "kms.chaos.runner", types.SimpleNamespace(run=run))


def test_chaos_run_exits_0_when_safe_and_3_when_a_safety_figure_is_not_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    _fake_runner(monkeypatch, calls)
    ok = CliRunner().invoke(
        app,
        [
            "chaos",
            "run",
            "smoke",
            "--seed",
            "4",
            "--out",
            str(tmp_path / "a"),
            "--nodes",
            "7",
            "--threshold",
            "4",
            "--duration",
            "20",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert calls == [("smoke", 4, 7, 20.0)]
    assert "wrong_keys_accepted" in ok.output
    _fake_runner(monkeypatch, calls, wrong_key=True)
    bad = CliRunner().invoke(app, ["chaos", "run", "smoke", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 3
    assert json.loads((tmp_path / "b" / "report.json").read_text())["wrong_keys_accepted"] == 1


def test_chaos_run_refuses_a_bad_scenario_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["chaos", "run", "smoke", "--threshold", "9", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "exceeds nodes" in result.output


def test_chaos_validate_succeeds_only_if_every_broken_build_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    _fake_runner(monkeypatch, calls)
    good = CliRunner().invoke(
        app, ["chaos", "validate", "--out", str(tmp_path / "v1"), "--seed", "2"]
    )
    assert good.exit_code == 0, good.output
    assert [c[0] for c in calls] == list(report.VALIDATION_SCENARIOS)
    _fake_runner(monkeypatch, calls, miss=True)
    missed = CliRunner().invoke(app, ["chaos", "validate", "--out", str(tmp_path / "v2")])
    assert missed.exit_code == 1
    assert "missed" in missed.output


def test_chaos_scenarios_and_schedule_commands() -> None:
    listed = CliRunner().invoke(app, ["chaos", "scenarios"])
    assert listed.exit_code == 0
    assert {line.split("\t")[0] for line in listed.output.splitlines()} == set(shipped())
    printed = CliRunner().invoke(app, ["chaos", "schedule", "smoke", "--seed", "5"])
    assert printed.exit_code == 0
    events = [json.loads(line) for line in printed.output.splitlines()]
    assert events == [e.to_json() for e in schedule.build(load("smoke"), 5)]
