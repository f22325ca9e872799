"""``bench.scale``'s output: the JSON shape its readers rely on and the table, from made-up
runs (the real runs are benchmarks, never tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bench import scale

REQUIRED = {
    "n",
    "t",
    "certified",
    "members_with_share",
    "seconds_to_certified",
    "schedule_bound_seconds",
    "cpu_seconds_per_node",
    "rss_mib_per_node",
    "bytes_sent_per_node",
    "delta_seconds",
    "key_fetch_ok",
    "reshare_seconds",
    "reshare_members_with_share",
}


def made_up(n: int, ok: bool) -> scale.ScaleRun:
    t = scale.threshold_for(n)
    run = scale.ScaleRun(n, t, scale.delta_for(n), 12.5)
    run.certified = ok
    run.members_with_share = n if ok else t
    run.seconds_to_certified = 14.0 if ok else None
    run.cpu_seconds_per_node = 3.0
    run.rss_mib_per_node = 120.0
    run.bytes_sent_per_node = 2.5e6
    return run


def test_the_json_has_every_field_of_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = {16: made_up(16, True), 32: made_up(32, False)}
    runs[32].key_fetch_ok = False
    runs[32].errors.append("join: timed out")
    monkeypatch.setattr(scale, "measure", lambda n, **_: runs[n])
    monkeypatch.setattr(scale, "shim_cost_per_frame", lambda: 1e-6)
    out = tmp_path / "scale.json"
    assert scale.main(["--sizes", "16,32", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert list(doc) == ["runs"]
    assert [r["n"] for r in doc["runs"]] == [16, 32]
    for r in doc["runs"]:
        assert REQUIRED <= set(r)
    assert doc["runs"][0]["t"] == 11 and doc["runs"][1]["t"] == 22
    assert doc["runs"][1]["key_fetch_ok"] is False
    assert scale.largest_certified(list(runs.values())) == 16


def test_the_table_prints_failed_and_missing_figures() -> None:
    console = Console(width=250, record=True)
    console.print(scale.table([made_up(16, True), scale.ScaleRun(64, 43, 1.0, 200.0)]))
    text = console.export_text()
    assert "16/16" in text and "0/64" in text and "n/a" in text


def test_sizes_thresholds_and_deltas() -> None:
    assert [scale.threshold_for(n) for n in scale.FULL_SIZES] == [11, 22, 43]
    assert scale.QUICK_SIZES == (16,)
    assert [scale.delta_for(n) for n in (16, 32, 64)] == pytest.approx([2.32, 2.64, 3.28])
