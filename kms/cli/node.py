"""``kms node``: set up a node's directory, run a node, write its join request."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import httpx
import trio
import typer

from kms.app.config import ConfigError
from kms.app.devnet import quote_source
from kms.app.setup import init_node, join_request, run_node
from kms.cli import node_ops
from kms.cli.common import fail, out, print_json
from kms.node import lifecycle
from kms.store import StoreError

node_app = typer.Typer(help="Run and set up a KMS node.", no_args_is_help=True)


@node_app.command("init")
def node_init(
    dir: Annotated[Path, typer.Option("--dir", help="Directory for the node's files.")],
    index: Annotated[int, typer.Option(help="Participant index (1-based, never reused).")] = 1,
    listen: Annotated[str, typer.Option(help="libp2p listen multiaddr.")] = "/ip4/127.0.0.1/tcp/0",
    http: Annotated[str, typer.Option(help="HTTP listen address host:port.")] = "127.0.0.1:0",
    json_out: Annotated[bool, typer.Option("--json")] = False,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the store's new passphrase (default: <dir>.passphrase, "
            "outside the data directory)."
        ),
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            help="Read the store's passphrase from this environment variable instead "
            "(no passphrase file is written; set it whenever the node runs)."
        ),
    ] = None,
) -> None:
    """Create identity and DKG keys, a passphrase, an admin token, the store and node.toml."""
    if passphrase_file is not None and passphrase_env is not None:
        fail("give --passphrase-file or --passphrase-env, not both", 2)
    try:
        record = init_node(
            dir,
            index=index,
            listen=listen,
            http=http,
            passphrase_file=passphrase_file,
            passphrase_env=passphrase_env,
        )
    except (FileExistsError, StoreError) as exc:
        fail(str(exc), 2)
    if json_out:
        print_json(record)
    else:
        out.print(f"node {index} initialised in {dir}")
        out.print(f"peer id   {record['peer_id']}")
        out.print("participant record (give it to the other operators for \\[committee.genesis]):")
        out.print_json(
            json.dumps(
                {k: record[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")}
            )
        )


class LogFormat(enum.StrEnum):
    """``kms node run --log-format``: one JSON object per line, or text."""

    json = "json"
    text = "text"


class LogLevel(enum.StrEnum):
    """``kms node run --log-level``: the lowest level logged."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@node_app.command("run")
def node_run(
    config: Annotated[Path, typer.Option("--config", help="Path of node.toml.")],
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            "--log-format", help="Log lines as JSON objects or text (default: node.toml's)."
        ),
    ] = None,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            help="Lowest level logged (default: node.toml's log_level, else info).",
        ),
    ] = None,
) -> None:
    """Run a node until SIGINT or SIGTERM (then exit 0 once the store and transport are closed)."""
    try:
        lifecycle.die_with_parent_from_env()
    except lifecycle.ParentGone as exc:
        fail(str(exc), lifecycle.EXIT_PARENT_GONE)
    try:
        trio.run(
            run_node,
            config,
            log_format.value if log_format is not None else None,
            log_level.value if log_level is not None else None,
        )
    except ConfigError as exc:
        fail(str(exc), 2)
    # A clean stop: everything is saved; skip the interpreter's slow finalisation.
    lifecycle.exit_now(lifecycle.EXIT_OK)


@node_app.command("join-request")
def node_join_request(
    config: Annotated[Path, typer.Option("--config")],
    out_file: Annotated[Path, typer.Option("--out")],
    committee_url: Annotated[
        str,
        typer.Option(
            "--committee-url",
            help="HTTP URL of a member: the request is bound to its current chain head.",
        ),
    ],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write this node's join request: participant record, addresses, the committee's current
    chain head and a TDX quote binding them."""
    try:
        doc = join_request(config, committee_url=committee_url, quote=quote_source(config))
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        if json_out:
            print_json({"ok": False, "error": str(exc)})
            raise typer.Exit(2) from None
        fail(str(exc), 2)
    out_file.write_text(json.dumps(doc, indent=2) + "\n")
    if json_out:
        print_json(
            {"ok": True, "file": str(out_file), "index": doc["index"], "peer_id": doc["peer_id"]}
        )


# Operations on a node's files (kms.cli.node_ops): token rotation, passphrase change.
node_app.command("rotate-admin-token")(node_ops.node_rotate_admin_token)
node_app.command("passphrase")(node_ops.node_passphrase)
