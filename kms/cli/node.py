"""``kms node``: set up a node's directory, check its configuration, run a node, build a
node admission policy, write its join request."""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import trio
import typer

from kms.app.config import ConfigError, load
from kms.app.devnet import quote_source
from kms.app.setup import StartupError, init_node, join_request, run_node
from kms.app.simtee import load_measurement, registers
from kms.cli import node_ops
from kms.cli.common import fail, print_json
from kms.node import lifecycle
from kms.store import StoreError

node_app = typer.Typer(help="Run and set up a KMS node.", no_args_is_help=True)


def config_error(msg: str, code: int = 2) -> NoReturn:
    """One plain line ``error: …`` on stderr (no markup, never wrapped), then exit ``code``."""
    sys.stderr.write(f"error: {msg}\n")
    raise typer.Exit(code)


@node_app.command("init")
def node_init(
    dir: Annotated[Path, typer.Option("--dir", help="Directory for the node's files.")],
    index: Annotated[int, typer.Option(help="Participant index (1-based, never reused).")] = 1,
    listen: Annotated[str, typer.Option(help="libp2p listen multiaddr.")] = "/ip4/127.0.0.1/tcp/0",
    http: Annotated[str, typer.Option(help="HTTP listen address host:port.")] = "127.0.0.1:0",
    announce: Annotated[
        list[str] | None,
        typer.Option(
            "--announce",
            help="A multiaddr other members dial (repeatable; default: --listen unless it "
            "listens on 0.0.0.0 or ::).",
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            help="The HTTP URL clients use (default: http://HOST:PORT of --http unless its "
            "host is 0.0.0.0 or ::).",
        ),
    ] = None,
    simulated_tee: Annotated[
        Path | None,
        typer.Option(
            "--simulated-tee",
            help="A simulated TEE directory (kms tee init): accept its quotes and quote the "
            "join request with it. Development only.",
        ),
    ] = None,
    pccs_url: Annotated[
        str | None, typer.Option("--pccs-url", help="PCCS base URL for quote collateral.")
    ] = None,
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
        config_error("give --passphrase-file or --passphrase-env, not both")
    if index < 1:
        config_error(f"--index {index}: a participant index is 1 or more")
    try:
        record = init_node(
            dir,
            index=index,
            listen=listen,
            http=http,
            passphrase_file=passphrase_file,
            passphrase_env=passphrase_env,
            announce=announce,
            public_url=public_url,
            simulated_tee=simulated_tee,
            pccs_url=pccs_url,
        )
    except ConfigError as exc:
        key = str(exc).split(":")[0].split(" ")[0]
        options = ("listen", "http", "announce", "public_url", "pccs_url")
        rest = str(exc)[len(key) :]
        config_error(f"--{key.replace('_', '-')}{rest}" if key in options else str(exc))
    except (FileExistsError, StoreError, OSError) as exc:
        config_error(str(exc))
    if json_out:
        print_json(record)
        return
    lines = [
        f"node {index} initialised in {dir}",
        f"peer id   {record['peer_id']}",
        f"addresses {' '.join(record['addresses']) or '(none: give --announce)'}",
        f"url       {record['url'] or '(none: give --public-url)'}",
        "participant record (give it to the operator who runs `kms committee assemble`; "
        "`--json` prints it as a file):",
        json.dumps({k: record[k] for k in RECORD_KEYS}),
    ]
    sys.stdout.write("\n".join(lines) + "\n")


RECORD_KEYS = ("index", "identity", "dkg_key", "dkg_key_signature", "peer_id", "addresses", "url")


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
    except (ConfigError, StartupError) as exc:
        config_error(str(exc))
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
    measurement: Annotated[
        Path | None,
        typer.Option(
            "--measurement",
            help="With [node] simulated_tee: the measurement file (mr_td, rtmr0-3, hex) the "
            "simulated TEE quotes (default: the TEE directory's node.measurement.toml).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write this node's join request: participant record, addresses ([node] announce, else
    listen), HTTP URL ([node] public_url, else http), the committee's current chain head and
    a TDX quote binding them."""
    try:
        meas = registers(load_measurement(measurement)) if measurement is not None else None
        doc = join_request(config, committee_url=committee_url, quote=quote_source(config, meas))
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        if json_out:
            print_json({"ok": False, "error": str(exc)})
            raise typer.Exit(2) from None
        fail(str(exc), 2)
    out_file.write_text(json.dumps(doc, indent=2) + "\n")
    if json_out:
        print_json(
            {
                "ok": True,
                "file": str(out_file),
                "index": doc["index"],
                "peer_id": doc["peer_id"],
                "addresses": doc["addresses"],
                "url": doc["url"],
            }
        )
    else:
        print(f"join request of node {doc['index']} written to {out_file}")
        print(f"addresses {' '.join(doc['addresses'])}")
        print(f"url       {doc['url']}")


@node_app.command("check-config")
def node_check_config(
    config: Annotated[Path, typer.Option("--config", help="Path of node.toml.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check node.toml as `kms node run` does: prints `ok` and the committee digest, which
    every member's file must share; an error is one line naming the key and line (exit 2)."""
    try:
        cfg = load(config)
    except ConfigError as exc:
        config_error(str(exc))
    admits = _admits_nodes(cfg.protocol.admission_policy)
    if json_out:
        print_json(
            {
                "ok": True,
                "index": int(cfg.index),
                "committee_digest": cfg.committee_digest.hex(),
                "admission_policy_admits_nodes": admits,
            }
        )
        return
    sys.stdout.write(f"ok\ncommittee digest: {cfg.committee_digest.hex()}\n")
    if not admits:
        sys.stderr.write(
            "warning: [committee] admission_policy is not a node admission policy: no node "
            "can join until an admission-policy change (`kms node admission-policy`)\n"
        )


def _admits_nodes(policy: bytes) -> bool:
    from kms.policy import NodeAdmissionPolicy
    from mpc.errors import InvalidEncoding

    try:
        NodeAdmissionPolicy.decode(policy)
    except (InvalidEncoding, ValueError):
        return False
    return True


@node_app.command("admission-policy")
def node_admission_policy(
    measurement: Annotated[
        list[Path],
        typer.Option(
            "--measurement", help="A measurement file of an admitted node image (repeatable)."
        ),
    ],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the encoding.")],
    tcb_status: Annotated[
        list[str] | None,
        typer.Option("--tcb-status", help="An admitted TCB status (repeatable; default UpToDate)."),
    ] = None,
) -> None:
    """Build a node admission policy: writes its encoding to --out and prints its hex (for
    [committee] admission_policy, `kms committee assemble --admission-policy` or
    `kms member propose admission-policy`)."""
    from kms.app.simtee import TEEError, load_measurement
    from kms.policy import NodeAdmissionPolicy, PolicyError

    try:
        measurements = [load_measurement(m) for m in measurement]
        policy = NodeAdmissionPolicy.build(measurements, tcb_status or ("UpToDate",))
    except TEEError as exc:
        config_error(str(exc))
    except (PolicyError, ValueError) as exc:
        config_error(f"not a valid node admission policy: {exc}")
    encoding = policy.encode()
    try:
        out_file.write_bytes(encoding)
    except OSError as exc:
        config_error(f"cannot write {out_file}: {exc.strerror}")
    sys.stdout.write(encoding.hex() + "\n")


# Operations on a node's files (kms.cli.node_ops): token rotation, passphrase change.
node_app.command("rotate-admin-token")(node_ops.node_rotate_admin_token)
node_app.command("passphrase")(node_ops.node_passphrase)
