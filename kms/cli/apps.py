"""``kms app``: apps and their owners' signed policies on a devnet (``kms.app.devnet``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kms.app import devnet
from kms.cli.common import devnet_app, emit, fail

app_app = typer.Typer(help="Apps and their owners' signed policies (devnet).", no_args_is_help=True)
policy_app = typer.Typer(help="An app's policy.", no_args_is_help=True)
app_app.add_typer(policy_app, name="policy")


@app_app.command("create")
def app_create(
    devnet_dir: Annotated[Path, typer.Option("--devnet")],
    name: Annotated[str, typer.Option("--name", help="Alias for the app in devnet.json.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an app: a new owner key (its id is derived from it) and a first policy, admitted by
    the devnet's operator at every node (policies directory and a reload)."""
    try:
        emit(devnet.create_app(devnet_dir, name), json_out)
    except devnet.DevnetError as exc:
        fail(str(exc), 2)


@policy_app.command("show")
def app_policy_show(
    devnet_dir: Annotated[Path, typer.Option("--devnet")],
    app_name: Annotated[str, typer.Option("--app")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The policy version each node holds for an app."""
    state, app_id = devnet_app(devnet_dir, app_name)
    emit(devnet.policies_held(state, app_id), json_out)


@policy_app.command("push")
def app_policy_push(
    devnet_dir: Annotated[Path, typer.Option("--devnet")],
    app_name: Annotated[str, typer.Option("--app")],
    lifetime: Annotated[
        int, typer.Option("--lifetime", help="Seconds until the new policy expires.")
    ] = 7 * 86400,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Sign the next version (renewing its expiry) and push it to every node.

    Reports the change effective everywhere only once all nodes acknowledge it,
    and otherwise names the nodes that lag.
    """
    state, app_id = devnet_app(devnet_dir, app_name)
    try:
        report = devnet.push_next_policy(devnet_dir, state, app_id, app_name, lifetime)
    except devnet.DevnetError as exc:
        fail(str(exc), 2)
    emit(report, json_out)
    raise typer.Exit(0 if report["effective_everywhere"] else 1)
