"""``kms key get``: an app key for the devnet's simulated CVM (``kms.client.http``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kms.app import devnet
from kms.cli.common import console, devnet_app, fail, out, pinned_mpk, print_json
from kms.client import http as client
from kms.client.core import KeyReleaseError, Rejected
from kms.secretfile import write_secret

key_app = typer.Typer(
    help="Keys for a CVM (talks to a devnet with its simulated TEE).", no_args_is_help=True
)


@key_app.command("get")
def key_get(
    devnet_dir: Annotated[Path, typer.Option("--devnet", help="The devnet directory.")],
    app_name: Annotated[
        str, typer.Option("--app", help="App alias from devnet.json or app id hex.")
    ],
    purpose: Annotated[str, typer.Option("--purpose")] = "app",
    version: Annotated[int, typer.Option("--version")] = 1,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the secret key material here (mode 0600).")
    ] = None,
    evidence_dir: Annotated[
        Path | None, typer.Option("--evidence-dir", help="Write evidence of wrong partials here.")
    ] = None,
    rogue: Annotated[
        bool,
        typer.Option(
            "--rogue-measurement", help="Present a measurement the policy does not admit."
        ),
    ] = False,
    report: Annotated[
        bool,
        typer.Option(
            "--report-evidence/--keep-evidence",
            help="Disclose evidence of wrong partials to the other nodes (default).",
        ),
    ] = True,
    bundle_file: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="The app's signed policy bundle (encoded), sent with the request: nodes that "
            "have not admitted the app admit it when its policy admits this CVM and the "
            "CVM's RTMR3 event log carries the app id (the devnet's simulated CVM sends no "
            "log, so there the operator admits new apps).",
        ),
    ] = None,
) -> None:
    """Fetch an app key as the devnet's simulated CVM, verified against the pinned master key."""
    state, app_id = devnet_app(devnet_dir, app_name)
    if not state.get("master_public_key"):
        fail("the devnet has no master public key yet", 2)
    mpk = pinned_mpk(state["master_public_key"])
    urls, quote_for = devnet.simulated_cvm(devnet_dir, state, rogue=rogue)
    bundle = bundle_file.read_bytes() if bundle_file is not None else b""
    try:
        res = client.get_app_key(
            urls, mpk, app_id, purpose, version, quote_for, bundle=bundle, report=report
        )
    except KeyReleaseError as exc:
        if json_out:
            print_json({"ok": False, "error": str(exc)})
        else:
            console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from None
    save_evidence(res.rejected, evidence_dir)
    if out_file is not None:
        try:
            write_secret(out_file, json.dumps(res.secret))
        except OSError as exc:
            fail(f"cannot write {out_file}: {exc}", 2)
    if json_out:
        print_json(res.public)
    else:
        for k, v in res.public.items():
            out.print(f"{k:18} {v}")


def save_evidence(rejected: tuple[Rejected, ...], directory: Path | None) -> None:
    """Each wrong partial's evidence as a file: what ``kms evidence verify`` checks."""
    for n, r in enumerate(rejected):
        if r.evidence is None:
            continue
        console.print(f"[yellow]node {int(r.index)} sent a bad partial:[/yellow] {r.reason}")
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"wrong-partial-node{int(r.index)}-{n}.msgpack").write_bytes(
                r.evidence.encode()
            )
