"""``kms encrypt`` and ``kms decrypt``: identity-based encryption to an app's inbox."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from kms.app import cvm, devnet, owner
from kms.cli import key
from kms.cli.tee import die
from kms.client import http as client
from kms.client.core import KeyReleaseError
from kms.secretfile import write_secret
from mpc import ibe
from mpc.errors import DecryptionError, InvalidEncoding


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
        try:
            state = devnet.read_state(devnet_dir)
            app_id = devnet.app_id_of(state, app_name)
        except (OSError, ValueError) as exc:
            die(f"{devnet_dir}: {exc}")
        mpk_hex = mpk_hex or state.get("master_public_key")
    else:
        try:
            app_id = bytes.fromhex(app_name)
        except ValueError:
            app_id = b""
        if not app_id:
            die("without --devnet, --app must be an app id in hex (aliases need --devnet)")
    if not mpk_hex:
        die("give --mpk HEX (the committee's master public key) or --devnet DIR")
    mpk = key.pinned(mpk_hex)
    try:
        key_id = ibe.inbox_key_id(app_id, inbox, version)
    except ValueError as exc:
        die(f"--inbox: {exc}")
    try:
        data = in_file.read_bytes()
    except OSError as exc:
        die(f"cannot read {in_file}: {exc.strerror or exc}")
    sealed = ibe.encrypt(mpk, key_id, data, rng=os.urandom)
    try:
        out_file.write_bytes(sealed)
    except OSError as exc:
        die(f"cannot write {out_file}: {exc.strerror or exc}")
    sys.stdout.write(
        f"encrypted {len(data)} bytes to app {app_id.hex()} inbox {key_id.purpose} "
        f"version {version} into {out_file}\n"
    )


def decrypt_cmd(
    in_file: Annotated[Path, typer.Argument(metavar="IN")],
    out_file: Annotated[Path, typer.Argument(metavar="OUT")],
    app_name: Annotated[
        str | None,
        typer.Option("--app", help="The app id (hex; an alias with --devnet); checked."),
    ] = None,
    urls: key.UrlsOpt = None,
    mpk_hex: key.MpkOpt = None,
    simulated_tee: key.TeeOpt = None,
    measurement: key.MeasurementOpt = None,
    event_log: key.EventLogOpt = None,
    devnet_dir: key.DevnetOpt = None,
) -> None:
    """Decrypt as a CVM: fetch the point for the ciphertext's key id, open it.

    The key id (app, purpose, version) is read from the ciphertext's header:
    an inbox (purpose ibe.NAME), or an ordinary purpose for ciphertexts made
    before inboxes existed. The app's policy must list that purpose. Nodes and
    quotes are given as for ``kms key get``.
    """
    try:
        sealed = in_file.read_bytes()
        key_id = ibe.read_header(sealed).key_id
    except (OSError, InvalidEncoding) as exc:
        die(f"cannot read {in_file}: {exc}")
    # Without --app, the app is the one the ciphertext names.
    app_id = None if app_name is not None else key_id.app_id
    t = key.target(
        cvm.Options(urls, mpk_hex, app_name, app_id, simulated_tee, measurement, event_log)
        if devnet_dir is None
        else cvm.Options(
            urls, mpk_hex, app_name, app_id, simulated_tee, measurement, event_log, devnet_dir
        )
    )
    if key_id.app_id != t.app_id:
        die(f"the ciphertext is for app {key_id.app_id.hex()}, not {t.app_id.hex()}", 1)
    try:
        plain = client.open_sealed(
            t.urls, t.mpk, sealed, t.quote, event_log=t.event_log, transport=owner.HTTP_TRANSPORT
        )
    except KeyReleaseError as exc:
        key.refused(exc, False, t.left_out)
    except DecryptionError as exc:
        die(f"cannot decrypt {in_file}: {exc}", 1)
    try:
        write_secret(out_file, plain)
    except OSError as exc:
        die(f"cannot write {out_file}: {exc.strerror or exc}")
    sys.stdout.write(f"decrypted {len(plain)} bytes into {out_file} (mode 0600)\n")
