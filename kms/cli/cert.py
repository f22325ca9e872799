"""``kms cert verify``: check a dstack app root key's committee certificate (link 1).

The check itself is ``kms.dstack.chain.verify_app_key_cert``; this module parses and
prints. Exit 0 and ``valid`` only for a certificate that verifies; 1 and one line
``invalid: <why>`` otherwise; 2 and ``error: …`` for malformed input (bad hex, wrong
lengths, a master public key that is not a valid G2 point).
"""

from __future__ import annotations

from typing import Annotated

import typer

from kms.cli.common import fail, pinned_mpk, say
from kms.dstack.chain import ChainError, verify_app_key_cert
from mpc.appcert import MAX_APP_ID, ROOT_PUBLIC_LENGTH

cert_app = typer.Typer(
    help="dstack app-key certificates: the committee's link 1 of a dstack key chain.",
    no_args_is_help=True,
)

SIGNATURE_LENGTH = 48


def _hex(name: str, value: str, lengths: range) -> bytes:
    text = value[2:] if value[:2].lower() == "0x" else value
    try:
        data = bytes.fromhex(text)
    except ValueError:
        fail(f"--{name} is not hex", 2)
    if len(data) not in lengths:
        want = str(lengths.start) if len(lengths) == 1 else f"{lengths.start}-{lengths.stop - 1}"
        fail(f"--{name} is {len(data)} bytes, expected {want}", 2)
    return data


@cert_app.command("verify")
def verify_cmd(
    mpk_hex: Annotated[str, typer.Option("--mpk", help="The committee's master public key.")],
    app_id_hex: Annotated[str, typer.Option("--app-id", help="The app id (hex).")],
    pubkey_hex: Annotated[
        str, typer.Option("--pubkey", help="The app root public key, 33-byte SEC1 compressed.")
    ],
    signature_hex: Annotated[
        str, typer.Option("--signature", help="Link 1: the 48-byte certificate signature.")
    ],
    version: Annotated[
        int | None, typer.Option("--version", min=0, max=2**32 - 1, help="Root version.")
    ] = None,
    epoch: Annotated[
        int | None, typer.Option("--epoch", min=0, max=2**64 - 1, help="Issuing epoch.")
    ] = None,
    qkms_hex: Annotated[
        str | None,
        typer.Option(
            "--qkms-signature", help="The quorum-kms certificate (binds version and epoch)."
        ),
    ] = None,
) -> None:
    """Print ``valid`` (exit 0) only if the committee certified the key for this app."""
    mpk = pinned_mpk(mpk_hex[2:] if mpk_hex[:2].lower() == "0x" else mpk_hex)
    app_id = _hex("app-id", app_id_hex, range(1, MAX_APP_ID + 1))
    pubkey = _hex("pubkey", pubkey_hex, range(ROOT_PUBLIC_LENGTH, ROOT_PUBLIC_LENGTH + 1))
    if pubkey[0] not in (2, 3):
        fail("--pubkey is not a SEC1 compressed key (02 or 03 prefix)", 2)
    signature = _hex("signature", signature_hex, range(SIGNATURE_LENGTH, SIGNATURE_LENGTH + 1))
    qkms = None
    if qkms_hex is not None:
        qkms = _hex("qkms-signature", qkms_hex, range(SIGNATURE_LENGTH, SIGNATURE_LENGTH + 1))
    if (version is not None or epoch is not None) != (qkms is not None) or (
        qkms is not None and (version is None or epoch is None)
    ):
        fail("--version, --epoch and --qkms-signature go together", 2)
    try:
        verify_app_key_cert(
            mpk, app_id, pubkey, signature, version=version, epoch=epoch, qkms_signature=qkms
        )
    except ChainError as exc:
        say("invalid: " + " ".join(str(exc).split()))
        raise typer.Exit(1) from None
    say("valid")


__all__ = ["cert_app"]
