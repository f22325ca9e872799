"""``kms sim sweep``: a grid of parameter values × seeds, on local cores or a Dask cluster.

Each job is ``(grid point, seed)`` and runs in protocol mode, which is
deterministic; results are collected and sorted by job before anything is
aggregated, so the output is the same whichever executor ran the jobs and in
whatever order they finished.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sim import plots
from sim.run import simulate
from sim.scenario import Scenario, ScenarioError

OUTCOMES = (
    "availability",
    "mpk_stable",
    "secret_exposed",
    "wrong_keys_accepted",
    "genesis_seconds",
    "disqualified",
    "messages",
)
BINARY = frozenset({"mpk_stable", "secret_exposed"})
Job = tuple[tuple[tuple[str, float], ...], int]


def parse_param(spec: str) -> tuple[str, list[float]]:
    """``NAME=START:STOP:STEP`` → (NAME, [START, START+STEP, …, STOP]) with STOP included."""
    try:
        name, rng = spec.split("=", 1)
        start, stop, step = (float(x) for x in rng.split(":"))
    except ValueError as exc:
        raise ScenarioError(f"--param {spec!r} is not NAME=START:STOP:STEP") from exc
    if step <= 0 or stop < start:
        raise ScenarioError(f"--param {spec!r}: need STEP > 0 and STOP ≥ START")
    count = math.floor((stop - start) / step + 1e-9) + 1
    return name.strip(), [round(start + k * step, 12) for k in range(count)]


def grid(params: Sequence[tuple[str, list[float]]], seeds: int) -> list[Job]:
    names = [n for n, _ in params]
    jobs: list[Job] = []
    for values in itertools.product(*(v for _, v in params)):
        point = tuple(zip(names, values, strict=True))
        jobs.extend((point, seed) for seed in range(seeds))
    return jobs


def outcomes(rep: Mapping[str, Any]) -> dict[str, float | None]:
    genesis = rep["epochs"][0]["certified_at"]
    return {
        "availability": rep["availability"],
        "mpk_stable": float(rep["mpk_stable"]),
        "secret_exposed": float(rep["secret_exposed"]),
        "wrong_keys_accepted": float(rep["wrong_keys_accepted"]),
        "genesis_seconds": genesis,
        "disqualified": float(len(rep["disqualified"])),
        "messages": float(rep["messages"]),
    }


def run_job(raw: Mapping[str, Any], job: Job) -> dict[str, Any]:
    """One grid point and seed (a top-level function, so process pools and Dask can ship it)."""
    point, seed = job
    scenario = Scenario.from_dict(raw)
    for name, value in point:
        scenario = scenario.with_param(name, value)
    return {"point": [list(p) for p in point], "seed": seed, **outcomes(simulate(scenario, seed))}


def _pool(raw: Mapping[str, Any], jobs: list[Job], workers: int | None) -> list[dict[str, Any]]:
    count = workers or os.cpu_count() or 1
    if count <= 1:
        return [run_job(raw, j) for j in jobs]
    with ProcessPoolExecutor(max_workers=count) as ex:
        return list(ex.map(run_job, [raw] * len(jobs), jobs))


def _dask(raw: Mapping[str, Any], jobs: list[Job], address: str) -> list[dict[str, Any]]:
    from distributed import Client

    with Client(address) as client:  # type: ignore[no-untyped-call]
        futures = client.map(run_job, [raw] * len(jobs), jobs, pure=False)
        return list(client.gather(futures))


def run_grid(
    scenario: Scenario,
    params: Sequence[tuple[str, list[float]]],
    seeds: int,
    *,
    dask: str | None = None,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Every job's outcomes, sorted by (grid point, seed)."""
    jobs = grid(params, seeds)
    for name, values in params:
        scenario.with_param(name, values[0])  # fail early on a bad name
    raw = dict(scenario.raw)
    rows = _dask(raw, jobs, dask) if dask else _pool(raw, jobs, workers)
    return sorted(rows, key=lambda r: (r["point"], r["seed"]))


def confidence(values: Sequence[float], binary: bool) -> tuple[float, float, float]:
    """Mean with a 95 % interval: Wilson for 0/1 outcomes, normal approximation otherwise."""
    k = len(values)
    if k == 0:
        return (math.nan, math.nan, math.nan)
    mean = sum(values) / k
    z = 1.96
    if binary:
        centre = (mean + z * z / (2 * k)) / (1 + z * z / k)
        half = z * math.sqrt(mean * (1 - mean) / k + z * z / (4 * k * k)) / (1 + z * z / k)
        return (mean, centre - half, centre + half)
    if k == 1:
        return (mean, mean, mean)
    var = sum((v - mean) ** 2 for v in values) / (k - 1)
    half = z * math.sqrt(var / k)
    return (mean, mean - half, mean + half)


def aggregate(
    rows: Sequence[Mapping[str, Any]], param: str
) -> tuple[list[float], dict[str, list[tuple[float, float, float]]]]:
    """Per value of ``param`` (averaging over seeds and any other parameters)."""
    by_x: dict[float, list[Mapping[str, Any]]] = {}
    for r in rows:
        x = dict((n, v) for n, v in r["point"])[param]
        by_x.setdefault(x, []).append(r)
    xs = sorted(by_x)
    series: dict[str, list[tuple[float, float, float]]] = {}
    for name in OUTCOMES:
        pts = []
        for x in xs:
            vals = [float(r[name]) for r in by_x[x] if r[name] is not None]
            pts.append(confidence(vals, name in BINARY))
        series[name] = pts
    return xs, series


def main(
    scenario_path: str,
    param_specs: Sequence[str],
    seeds: int,
    out: Path,
    *,
    dask: str | None = None,
    workers: int | None = None,
    console: Console | None = None,
    progress: Callable[[str], None] | None = None,
) -> int:
    console = console or Console()
    if not param_specs:
        raise ScenarioError("give at least one --param NAME=START:STOP:STEP")
    if seeds < 1:
        raise ScenarioError("--seeds must be at least 1")
    scenario = Scenario.load_file(scenario_path)
    params = [parse_param(p) for p in param_specs]
    where = f"Dask at {dask}" if dask else f"{workers or os.cpu_count()} local processes"
    console.print(f"{scenario.name}: {len(grid(params, seeds))} runs on {where}")
    rows = run_grid(scenario, params, seeds, dask=dask, workers=workers)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "seeds": seeds,
        "params": {n: v for n, v in params},
        "runs": rows,
        "aggregates": {},
    }
    tbl = Table(title=f"sweep of {scenario.name} ({seeds} seeds per point)")
    tbl.add_column("parameter")
    tbl.add_column("value", justify="right")
    for name in ("availability", "mpk_stable", "secret_exposed", "genesis_seconds"):
        tbl.add_column(name, justify="right")
    for name, _ in params:
        xs, series = aggregate(rows, name)
        result["aggregates"][name] = {
            "values": xs,
            **{k: [list(p) for p in v] for k, v in sorted(series.items())},
        }
        plots.sweep(name, xs, series, out / f"sweep-{name}.png", f"{scenario.name}: {name}")
        for k, x in enumerate(xs):
            tbl.add_row(
                name,
                f"{x:g}",
                *(
                    _fmt(series[o][k][0])
                    for o in ("availability", "mpk_stable", "secret_exposed", "genesis_seconds")
                ),
            )
    (out / "sweep.json").write_text(json.dumps(result, sort_keys=True, indent=2) + "\n")
    console.print(tbl)
    console.print(f"wrote {out / 'sweep.json'} and {len(params)} plot(s)")
    return 0


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"
