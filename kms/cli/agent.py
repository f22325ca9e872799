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
            "a configs: entry of the measured app compose, else the agent refuses to start. "
            "Needs --tee: the config never names the TEE source.",
        ),
    ] = None,
    tee: Annotated[
        str | None,
        typer.Option(
            "--tee",
            help="With --config: the TEE source, 'dstack' (dstack's guest agent through "
            "--dstack-socket) or 'tdx' (configfs-tsm, the ACPI CCEL, dstack's RTMR3 log and "
            "app-compose.json). Chosen here, in the measured command line, never in the config.",
        ),
    ] = None,
    dstack_socket: Annotated[
        Path | None,
        typer.Option("--dstack-socket", help="With --tee dstack: dstack's guest agent socket."),
    ] = None,
    tsm_dir: Annotated[
        Path | None,
        typer.Option(
            "--tsm-dir", help="With --tee tdx: the configfs-tsm report directory (default: real)."
        ),
    ] = None,
    ccel: Annotated[
        Path | None,
        typer.Option("--ccel", help="With --tee tdx: the ACPI CCEL log area (default: real)."),
    ] = None,
    runtime_log: Annotated[
        Path | None,
        typer.Option(
            "--runtime-log", help="With --tee tdx: dstack's RTMR3 event log (default: real)."
        ),
    ] = None,
    app_compose: Annotated[
        Path | None,
        typer.Option(
            "--app-compose", help="With --tee tdx: dstack's app-compose.json (default: real)."
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

    With ``--config``, the TEE source is the command line's (``--tee``), which the compose
    fixes: the config file cannot choose it. The app id is the one the CVM measured
    (RTMR3 boot prefix). Once the key is held and
    certified the socket appears and one line ``serving on PATH`` is printed. A CVM the
    app's policy does not admit gets no key: one ``error: …`` line, exit 1, no socket.
    """
    from kms.agent.runtime import AgentError, CommandLine, lock_socket, run, setup_from

    tee_paths = {
        "dstack_socket": dstack_socket,
        "tsm_dir": tsm_dir,
        "ccel": ccel,
        "runtime_log": runtime_log,
        "app_compose": app_compose,
    }
    options = CommandLine(
        config=Path(str(config)) if config is not None else None,
        devnet=devnet_dir,
        app=app_name,
        socket=socket,
        http=http,
        rogue=rogue,
        env_file=env_file,
        env_out=env_out,
        tee=tee,
        tee_paths=tee_paths,
    )
    try:
        if socket is not None:  # one agent per socket, before anything else (run takes it too)
            lock_socket(socket)
        run(setup_from(options))
    except AgentError as exc:
        die(str(exc), 1)
