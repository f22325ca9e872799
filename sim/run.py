"""``kms sim run``: one scenario from one seed to ``report.json``, plots and a summary table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from sim import expect, plots, report
from sim.scenario import Scenario
from sim.world import run_world


def simulate(
    scenario: Scenario, seed: int, progress: Callable[[float, float], None] | None = None
) -> dict[str, Any]:
    """Run ``scenario`` from ``seed`` in protocol mode and return the report."""
    return report.build(run_world(scenario, seed, progress))


def write(rep: dict[str, Any], out: Path, *, with_plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(report.dumps(rep))
    return [path, *(plots.all_for_run(rep, out) if with_plots else [])]


def summary(rep: dict[str, Any]) -> Table:
    """The outcomes a reader checks first, one per row."""
    tbl = Table(
        title=f"{rep['scenario']} · seed {rep['seed']} · n = {rep['n']}, t = {rep['threshold']}"
    )
    tbl.add_column("outcome")
    tbl.add_column("value", justify="right")
    certified = [e for e in rep["epochs"] if e["certified_at"] is not None]
    genesis = rep["epochs"][0]["certified_at"]
    rows = [
        ("master public key stable", "yes" if rep["mpk_stable"] else "NO"),
        (
            "secret exposed (corrupt coalition held t shares)",
            "YES" if rep["secret_exposed"] else "no",
        ),
        ("genesis certified at", "never" if genesis is None else f"{genesis:.2f} s"),
        ("epochs certified", str(len(certified))),
        ("failed runs (DKG/reshare attempts)", str(len(rep["run_failures"]))),
        (
            "dealers disqualified (with evidence)",
            f"{len(rep['disqualified'])} ({sum(1 for d in rep['disqualified'] if d['evidence'])})",
        ),
        (
            "availability",
            "no requests" if rep["availability"] is None else f"{rep['availability']:.3f}",
        ),
        (
            "key requests (served correctly)",
            f"{rep['key_requests']} ({rep['key_requests_served']})",
        ),
        ("wrong keys accepted", str(rep["wrong_keys_accepted"])),
        ("wrong partials detected", str(rep["wrong_partials_detected"])),
        ("messages / bytes", f"{rep['messages']:,} / {rep['bytes']:,}"),
    ]
    for k, v in rows:
        tbl.add_row(k, v)
    return tbl


def main(
    scenario_path: str,
    seed: int,
    out: Path,
    *,
    console: Console | None = None,
    node_mode: bool = False,
) -> int:
    """The command: run with a progress bar, write the files, print the summary.

    With ``node_mode``, the scenario also runs on the real trio node service
    (``sim.node_mode``) and the command fails unless both modes reach the same
    outcome."""
    console = console or Console()
    scenario = Scenario.load_file(scenario_path)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} virtual s"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(scenario.name, total=scenario.duration)
        rep = simulate(scenario, seed, lambda now, total: bar.update(task, completed=now))
    paths = write(rep, out)
    console.print(summary(rep))
    if scenario.expect:
        failed = expect.check(rep, scenario)
        for line in failed:
            console.print(f"[red]expectation not met:[/red] {line}")
        if not failed:
            console.print(f"all {len(scenario.expect)} expectations of the scenario hold")
    for p in paths:
        console.print(f"wrote {p}")
    if node_mode:
        from sim.node_mode import Outcome, run_node_mode

        console.print("node mode: the trio node service over net.memory on MockClock …")
        node = run_node_mode(scenario, seed)
        protocol = Outcome.of_report(rep)
        if node != protocol:
            console.print(f"[red]node mode differs:[/red] {node} vs protocol mode {protocol}")
            return 1
        console.print("node mode reached the same outcome as protocol mode")
    return 0
