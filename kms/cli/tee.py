"""``kms tee``: a simulated TDX platform for development (``kms.app.simtee``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from kms.app import simtee
from kms.cli.common import out, print_json

tee_app = typer.Typer(help="A simulated TDX platform (development only).", no_args_is_help=True)


def die(msg: str, code: int = 2) -> NoReturn:
    """One line ``error: …`` on stderr and exit ``code`` (no markup is interpreted)."""
    sys.stderr.write(f"error: {' '.join(str(msg).split())}\n")
    raise typer.Exit(code)


@tee_app.command("init")
def tee_init(
    directory: Annotated[Path, typer.Option("--dir", help="The TEE directory to create.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a simulated TEE: seed (0600), root certificate, 30-day collateral, and random
    node and app measurement files. Whoever reads the seed can mint quotes it vouches for."""
    try:
        made = simtee.init(directory)
    except simtee.TEEError as exc:
        die(str(exc))
    if json_out:
        print_json(made)
        return
    out.print(f"simulated TEE in {made['dir']}", highlight=False)
    for key in ("root_ca", "collateral", "node_measurement", "app_measurement"):
        out.print(f"{key:17} {made[key]}", highlight=False, soft_wrap=True)
