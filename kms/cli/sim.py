"""``kms sim``: the deterministic network simulator (``sim.run``, ``sim.sweep``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kms.cli.common import fail, out
from sim.scenario import ScenarioError

sim_app = typer.Typer(help="The deterministic network simulator.", no_args_is_help=True)


@sim_app.command("run")
def sim_run(
    scenario: Annotated[
        str, typer.Argument(help="A scenario TOML file, or a name in sim/scenarios.")
    ],
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out_dir: Annotated[Path, typer.Option("--out")] = Path("sim-out"),
    node_mode: Annotated[
        bool, typer.Option("--node-mode", help="Also run it on the trio node service and compare.")
    ] = False,
) -> None:
    """Run one scenario from one seed: report.json, plots and a summary table in OUT."""
    # Lazy: sim.run imports matplotlib, which would slow every other command's start.
    from sim.run import main as sim_main

    try:
        code = sim_main(scenario, seed, out_dir, console=out, node_mode=node_mode)
    except ScenarioError as exc:
        fail(str(exc), 2)
    raise typer.Exit(code)


@sim_app.command("sweep")
def sim_sweep(
    scenario: Annotated[
        str, typer.Argument(help="A scenario TOML file, or a name in sim/scenarios.")
    ],
    param: Annotated[
        list[str], typer.Option("--param", help="NAME=START:STOP:STEP (STOP included)")
    ],
    seeds: Annotated[int, typer.Option("--seeds")] = 3,
    out_dir: Annotated[Path, typer.Option("--out")] = Path("sim-sweep"),
    dask: Annotated[str | None, typer.Option("--dask", help="Dask scheduler address")] = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
) -> None:
    """Run the grid of PARAM values for seeds 0..N-1 and plot each outcome against it."""
    # Lazy: sim.sweep imports matplotlib (and dask when asked), too slow for every start.
    from sim.sweep import main as sweep_main

    try:
        code = sweep_main(scenario, param, seeds, out_dir, dask=dask, workers=workers, console=out)
    except (ScenarioError, ValueError) as exc:
        fail(str(exc), 2)
    raise typer.Exit(code)
