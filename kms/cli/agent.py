"""``kms agent run``: dstack's guest API inside a CVM, with keys from the committee."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kms.cli.tee import die

agent_app = typer.Typer(
    help="The dstack guest agent of a CVM whose app keys come from quorum-kms.",
    no_args_is_help=True,
)


@agent_app.command("run")
def run_cmd(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The agent's config (agent.toml). It must be byte for byte the content of "
            "a configs: entry of the measured app compose, else the agent refuses to start.",
        ),
    ] = None,
    devnet_dir: Annotated[
        Path | None,
        typer.Option(
            "--devnet",
            help="DEVELOPMENT ONLY: serve a devnet's dstack app on the simulated TEE, with "
            "the devnet's node URLs and master public key read from its directory "
            "(not measured).",
        ),
    ] = None,
    app_name: Annotated[
        str | None, typer.Option("--app", help="With --devnet: the devnet's dstack app.")
    ] = None,
    socket: Annotated[
        Path | None,
        typer.Option("--socket", help="With --devnet: the Unix socket to serve the API on."),
    ] = None,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            help="Also serve the API over TCP at 127.0.0.1:PORT (loopback addresses only).",
        ),
    ] = None,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="With --devnet: an env file encrypted with `kms env encrypt` (the measured "
            "config's env_file otherwise).",
        ),
    ] = None,
    env_out: Annotated[
        Path | None,
        typer.Option("--env-out", help="With --env-file: where to write it decrypted (0600)."),
    ] = None,
    rogue: Annotated[
        bool,
        typer.Option(
            "--rogue-measurement",
            help="With --devnet: run a CVM image no policy admits (it must get no key).",
        ),
    ] = False,
) -> None:
    """Obtain the app root key by attested requests, then serve dstack's guest API.

    The app id is the one the CVM measured (RTMR3 boot prefix). Once the key is held and
    certified the socket appears and one line ``serving on PATH`` is printed. A CVM the
    app's policy does not admit gets no key: one ``error: …`` line, exit 1, no socket.
    """
    from kms.agent.runtime import (
        AgentError,
        AgentSetup,
        config_setup,
        devnet_setup,
        lock_socket,
        loopback,
        run,
    )

    try:
        if socket is not None:  # one agent per socket, before anything else (run takes it too)
            lock_socket(socket)
        address = loopback(http) if http is not None else None
        if (config is None) == (devnet_dir is None):
            raise AgentError("give either --config agent.toml or --devnet DIR --app NAME")
        if devnet_dir is not None:
            if app_name is None or socket is None:
                raise AgentError("--devnet needs --app NAME and --socket PATH")
            setup = devnet_setup(
                devnet_dir, app_name, socket, rogue=rogue, env_file=env_file, env_out=env_out
            )
        else:
            if app_name is not None or rogue or env_file or env_out:
                raise AgentError("--app, --env-file and --rogue-measurement go with --devnet")
            setup = config_setup(Path(str(config)), socket)
        if address is not None:
            setup = AgentSetup(
                setup.source,
                setup.mpk,
                setup.urls,
                setup.socket,
                address,
                setup.env_file,
                setup.env_out,
            )
        run(setup)
    except AgentError as exc:
        die(str(exc), 1)
