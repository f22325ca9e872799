"""``kms env encrypt``: seal a dstack app's env file to its ``ibe.env`` inbox."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kms.cli.ibe import encrypt_cmd

env_app = typer.Typer(help="Encrypted env files for dstack apps served by kms agent.")

ENV_INBOX = "env"
"""The inbox ``kms agent`` opens at boot (purpose ``ibe.env``, version 1)."""


@env_app.command("encrypt")
def env_encrypt(
    in_file: Annotated[Path, typer.Argument(metavar="IN")],
    out_file: Annotated[Path, typer.Argument(metavar="OUT")],
    mpk_hex: Annotated[str, typer.Option("--mpk", help="The committee's master public key (hex).")],
    app: Annotated[str, typer.Option("--app", help="The app id (hex).")],
) -> None:
    """Encrypt IN to the app's env inbox with the master public key alone (no KMS round
    trip). ``kms agent`` decrypts it at boot, once the committee admits the CVM.

    A host can hand the agent an older ciphertext: put a version inside the plaintext.
    """
    encrypt_cmd(in_file, out_file, app_name=app, mpk_hex=mpk_hex, inbox=ENV_INBOX, version=1)
