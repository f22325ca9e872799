"""``kms chaos``: the fault lab (``kms.chaos``; ``docs/chaos.md``). Runs need root."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kms.cli.common import console, fail, out, say

if TYPE_CHECKING:
    from kms.chaos.scenario import Scenario

# kms.chaos is imported inside the commands: pydantic models and matplotlib would slow
# every other command's start.

chaos_app = typer.Typer(help="The fault lab: real nodes under a nemesis.", no_args_is_help=True)

SAFETY_VIOLATED = 3
"""``kms chaos run`` exits with this code when a safety figure is not 0."""

ScenarioArg = Annotated[str, typer.Argument(help="A shipped scenario name or a TOML file.")]
Seed = Annotated[int, typer.Option("--seed")]


@contextmanager
def _progress_bar(title: str) -> Iterator[Callable[[float, float, str], None]]:
    """A rich progress bar; yields the ``progress(done, total, what)`` callback."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task(title, total=1.0)

        def progress(done: float, total: float, what: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{title}: {what}")

        yield progress


def _scenario(name: str, **overrides: Any) -> Scenario:
    from kms.chaos.scenario import ScenarioError, load

    try:
        return load(name, **overrides)
    except ScenarioError as exc:
        fail(str(exc), 2)


def _run(scenario: Scenario, seed: int, out_dir: Path) -> dict[str, Any]:
    """One run through ``kms.chaos.runner`` (imported only now: it needs the lab's tools)."""
    from kms.chaos import report

    try:
        runner = importlib.import_module("kms.chaos.runner")
    except ModuleNotFoundError as exc:
        if exc.name != "kms.chaos.runner":
            raise
        fail("this build has no fault-lab runner (kms.chaos.runner)", 2)
    with _progress_bar(f"{scenario.name} seed {seed}") as progress:
        runner.run(scenario, seed=seed, out=out_dir, progress=progress)
    return report.load(out_dir)


@chaos_app.command("run")
def chaos_run(
    scenario: ScenarioArg,
    seed: Seed = 0,
    out_dir: Annotated[Path, typer.Option("--out")] = Path("chaos-out"),
    nodes: Annotated[int | None, typer.Option("--nodes")] = None,
    threshold: Annotated[int | None, typer.Option("--threshold")] = None,
    duration: Annotated[float | None, typer.Option("--duration")] = None,
) -> None:
    """Run SCENARIO from SEED: report.json, plots and a summary table in OUT; exit 3 when a
    safety figure is not 0."""
    from kms.chaos import report

    chosen = _scenario(scenario, nodes=nodes, threshold=threshold, duration=duration)
    doc = _run(chosen, seed, out_dir)
    out.print(report.summary(doc))
    if not report.safety_ok(doc):
        fail(f"safety violated; see {out_dir / 'report.json'}", SAFETY_VIOLATED)


@chaos_app.command("validate")
def chaos_validate(
    out_dir: Annotated[Path, typer.Option("--out")] = Path("chaos-validate"),
    seed: Seed = 0,
) -> None:
    """Run the three broken builds; succeed only if the checker catches each one."""
    from kms.chaos import report

    table = Table(title="checker validation")
    for column in ("scenario", "broken build", "figure", "value", "caught"):
        table.add_column(column)
    caught = []
    for name in report.VALIDATION_SCENARIOS:
        doc = _run(_scenario(name), seed, out_dir / name)
        figure, ok = report.exposed(doc)
        caught.append(ok)
        table.add_row(name, str(doc["broken"]), figure, str(doc[figure]), "yes" if ok else "NO")
    out.print(table)
    if not all(caught):
        fail("the checker missed a broken build", 1)


@chaos_app.command("scenarios")
def chaos_scenarios() -> None:
    """List the shipped scenarios."""
    from kms.chaos.scenario import shipped

    for name in shipped():
        say(f"{name}\t{' '.join(_scenario(name).description.split())}")


@chaos_app.command("schedule")
def chaos_schedule(
    scenario: ScenarioArg,
    seed: Seed = 0,
    nodes: Annotated[int | None, typer.Option("--nodes")] = None,
    threshold: Annotated[int | None, typer.Option("--threshold")] = None,
    duration: Annotated[float | None, typer.Option("--duration")] = None,
) -> None:
    """Print the fault schedule SCENARIO gets from SEED (no lab needed), one JSON per line."""
    from kms.chaos import schedule
    from kms.chaos.scenario import ScenarioError

    chosen = _scenario(scenario, nodes=nodes, threshold=threshold, duration=duration)
    try:
        events = schedule.build(chosen, seed)
    except ScenarioError as exc:
        fail(str(exc), 2)
    for event in events:
        say(json.dumps(event.to_json(), sort_keys=True))
