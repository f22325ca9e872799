"""``kms encrypt`` and ``kms decrypt``: identity-based encryption to an app's inbox."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from kms.app import devnet
from kms.cli.common import devnet_app, fail, pinned_mpk
from kms.client import http as client
from kms.client.core import KeyReleaseError
from kms.secretfile import write_secret
from mpc import ibe
from mpc.errors import DecryptionError, InvalidEncoding
from mpc.math import G2


def encrypt_cmd(
    in_file: Annotated[Path, typer.Argument(metavar="IN")],
    out_file: Annotated[Path, typer.Argument(metavar="OUT")],
    app_name: Annotated[
        str, typer.Option("--app", help="App alias (needs --devnet) or app id hex.")
    ],
    devnet_dir: Annotated[Path | None, typer.Option("--devnet")] = None,
    mpk_hex: Annotated[
        str | None, typer.Option("--mpk", help="Master public key (hex), instead of a devnet.")
    ] = None,
    inbox: Annotated[
        str,
        typer.Option(
            "--inbox",
            help="The app's inbox: readable only by CVMs whose policy lists purpose ibe.INBOX.",
        ),
    ] = "app",
    version: Annotated[int, typer.Option("--version")] = 1,
) -> None:
    """Encrypt a file to an app's inbox with the master public key alone (no KMS round trip).

    Randomness comes from the operating system (os.urandom).
    """
    if devnet_dir is not None:
        state, app_id = devnet_app(devnet_dir, app_name)
        mpk_hex = mpk_hex or state.get("master_public_key")
    else:
        try:
            app_id = bytes.fromhex(app_name)
        except ValueError:
            fail("without --devnet, --app must be an app id in hex (aliases need --devnet)", 2)
    if not mpk_hex:
        fail("give --mpk or --devnet", 2)
    try:
        mpk = G2.from_bytes(bytes.fromhex(mpk_hex))
        key_id = ibe.inbox_key_id(app_id, inbox, version)
        data = in_file.read_bytes()
    except (ValueError, OSError) as exc:
        fail(str(exc), 2)
    out_file.write_bytes(ibe.encrypt(mpk, key_id, data, rng=os.urandom))


def decrypt_cmd(
    in_file: Annotated[Path, typer.Argument(metavar="IN")],
    out_file: Annotated[Path, typer.Argument(metavar="OUT")],
    devnet_dir: Annotated[Path, typer.Option("--devnet")],
    app_name: Annotated[str, typer.Option("--app")],
) -> None:
    """Decrypt as the devnet's simulated CVM: fetch the point for the ciphertext's key id, open it.

    The key id (app, purpose, version) is read from the ciphertext's header:
    an inbox (purpose ibe.NAME), or an ordinary purpose for ciphertexts made
    before inboxes existed. The app's policy must list that purpose.
    """
    state, app_id = devnet_app(devnet_dir, app_name)
    mpk = pinned_mpk(state["master_public_key"])
    try:
        sealed = in_file.read_bytes()
        key_id = ibe.read_header(sealed).key_id
    except (OSError, InvalidEncoding) as exc:
        fail(f"cannot read {in_file}: {exc}", 2)
    if key_id.app_id != app_id:
        fail(f"the ciphertext is for app {key_id.app_id.hex()}, not {app_id.hex()}", 1)
    urls, quote_for = devnet.simulated_cvm(devnet_dir, state)
    try:
        plain = client.open_sealed(urls, mpk, sealed, quote_for)
    except (KeyReleaseError, DecryptionError) as exc:
        fail(str(exc), 1)
    try:
        write_secret(out_file, plain)
    except OSError as exc:
        fail(f"cannot write {out_file}: {exc}", 2)
