"""``kms evidence verify``: a third party checks a CVM's evidence (``kms.evidence``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kms.app import devnet
from kms.cli.common import emit, fail
from kms.client.http import chain_epochs_from_bytes, fetch_chain_epochs
from kms.evidence import judge_wrong_partial
from kms.protocol import WrongPartialEvidence
from mpc.cert import check_mpk
from mpc.math import G2
from mpc.membership import ChainError

evidence_app = typer.Typer(help="Third-party evidence of misbehaviour.", no_args_is_help=True)


@evidence_app.command("verify")
def evidence_verify(
    file: Annotated[Path, typer.Argument(metavar="FILE")],
    devnet_dir: Annotated[Path | None, typer.Option("--devnet")] = None,
    mpk_hex: Annotated[
        str | None, typer.Option("--mpk", help="Pinned master public key (hex).")
    ] = None,
    url: Annotated[
        list[str] | None, typer.Option("--url", help="Node URL to fetch the chain from.")
    ] = None,
    chain_file: Annotated[
        Path | None,
        typer.Option("--chain", help="A saved chain (GET /v1/chain body) instead of --url."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a CVM's evidence of a wrong partial against the chain verified from the pinned key.

    Exit 0 when it proves that the named node signed a wrong or undecryptable
    partial, 1 when it proves nothing, 2 on bad usage.
    """
    urls = list(url or [])
    if devnet_dir is not None:
        state = devnet.read_state(devnet_dir)
        mpk_hex = mpk_hex or state.get("master_public_key")
        urls = urls or [n["http_url"] for n in state["nodes"]]
    if not mpk_hex or not (urls or chain_file):
        fail("give --devnet, or --mpk with --url or --chain", 2)
    try:
        ev = WrongPartialEvidence.decode(file.read_bytes())
        mpk = G2.from_bytes(bytes.fromhex(mpk_hex))
        check_mpk(mpk)
        if chain_file is not None:
            epochs = chain_epochs_from_bytes(chain_file.read_bytes(), mpk)
        else:
            epochs, _ = fetch_chain_epochs(urls, mpk)
        doc = judge_wrong_partial(ev, epochs)
    except OSError as exc:
        fail(f"cannot read {exc.filename or file}: {exc.strerror or exc}", 2)
    except (ValueError, ChainError) as exc:
        fail(f"the evidence cannot be judged: {exc}", 2)
    emit(doc, json_out)
    raise typer.Exit(0 if doc["ok"] else 1)
