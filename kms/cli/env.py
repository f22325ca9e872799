"""``kms env encrypt``: seal a dstack app's env file to its ``ibe.env`` inbox, signed by
the app's owner key."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from kms.cli.tee import die

env_app = typer.Typer(help="Encrypted env files for dstack apps served by kms agent.")

ENV_INBOX = "env"
"""The inbox ``kms agent`` opens at boot (purpose ``ibe.env``, version 1)."""


@env_app.command("encrypt")
def env_encrypt(
    in_file: Annotated[Path, typer.Argument(metavar="IN")],
    out_file: Annotated[Path, typer.Argument(metavar="OUT")],
    mpk_hex: Annotated[str, typer.Option("--mpk", help="The committee's master public key (hex).")],
    app: Annotated[str, typer.Option("--app", help="The app id (hex, 20 bytes).")],
    owner_key: Annotated[
        Path,
        typer.Option(
            "--owner-key",
            help="The app's CURRENT owner key file: it signs the sealed file, and the agent "
            "opens only a file its app's current owner signed.",
        ),
    ],
) -> None:
    """Encrypt IN to the app's env inbox with the master public key alone (no KMS round
    trip) and sign the result with the app's owner key. ``kms agent`` checks the signature
    against the current owner key of the app's policy and decrypts the file at boot, once
    the committee admits the CVM.

    A host can hand the agent an older file the owner signed: put a version inside the
    plaintext.
    """
    from kms.agent.envfile import APP_ID_LENGTH, SignedEnv
    from kms.app.owner import OwnerError, signing_owner
    from kms.cli import key
    from mpc import ibe

    try:
        app_id = bytes.fromhex(app)
    except ValueError:
        app_id = b""
    if len(app_id) != APP_ID_LENGTH:
        die(f"--app must be an app id: {APP_ID_LENGTH} bytes in hex")
    mpk = key.pinned(mpk_hex)
    try:
        owner = signing_owner(owner_key)
    except OwnerError as exc:
        die(str(exc))
    if owner.app_id != app_id:
        die(f"{owner_key} is the owner key of app {owner.app_id.hex()}, not {app_id.hex()}")
    try:
        data = in_file.read_bytes()
    except OSError as exc:
        die(f"cannot read {in_file}: {exc.strerror or exc}")
    key_id = ibe.inbox_key_id(app_id, ENV_INBOX, 1)
    sealed = ibe.encrypt(mpk, key_id, data, rng=os.urandom)
    signed = SignedEnv.sign(owner.key, app_id, sealed)
    try:
        out_file.write_bytes(signed.encode())
    except OSError as exc:
        die(f"cannot write {out_file}: {exc.strerror or exc}")
    sys.stdout.write(
        f"encrypted {len(data)} bytes to app {app_id.hex()} inbox {key_id.purpose} "
        f"version 1, signed by owner key {owner.key.public_bytes().hex()}, into {out_file}\n"
    )
