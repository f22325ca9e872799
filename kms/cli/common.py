"""What every command group of ``kms`` shares: the consoles, JSON output, failing with an
exit code, the pinned master key, the admin channel and the devnet's apps."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from kms.app import devnet
from kms.app.operator import AdminRefused, AdminUnreachable, admin_request
from mpc.cert import check_mpk
from mpc.math import G2

console = Console(stderr=True)
out = Console()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n")


def fail(msg: str, code: int = 1) -> NoReturn:
    """``error: <msg>`` as one line on stderr (never wrapped), then exit with ``code``."""
    sys.stderr.write("error: " + " ".join(msg.split()) + "\n")
    raise typer.Exit(code)


def say(text: str) -> None:
    """One line on stdout as it is (not wrapped at the terminal's width, no markup): keys,
    ids and hashes stay whole."""
    sys.stdout.write(text + "\n")


def emit(doc: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(doc)
    else:
        out.print_json(json.dumps(doc))


def pinned_mpk(mpk_hex: str) -> G2:
    """The pinned master public key from hex; exits on a malformed key or the identity point."""
    try:
        mpk = G2.from_bytes(bytes.fromhex(mpk_hex))
        check_mpk(mpk)
    except ValueError as exc:
        fail(f"master public key refused: {exc}", 2)
    return mpk


def admin(config: Path, request: dict[str, Any], json_out: bool = False) -> dict[str, Any]:
    """One admin-channel request to the node of ``config``; exits as ``admin_failed`` says."""
    try:
        return admin_request(config, request)
    except (AdminUnreachable, AdminRefused) as exc:
        admin_failed(exc, json_out)


def admin_failed(exc: AdminUnreachable | AdminRefused, json_out: bool) -> NoReturn:
    """Exit 2 when an admin request could not be sent, 1 with the reason when the node
    refused it (one JSON line with ``--json``)."""
    if isinstance(exc, AdminUnreachable):
        if json_out:
            print_json({"ok": False, "error": str(exc)})
            raise typer.Exit(2) from None
        fail(str(exc), 2)
    if json_out:
        print_json({"ok": False, "error": exc.error, "reason": exc.reason})
        raise typer.Exit(1) from None
    fail(exc.error, 1)


def devnet_app(directory: Path, name_or_id: str) -> tuple[dict[str, Any], bytes]:
    """A devnet's state and the id of one of its apps (alias or hex); exits 2 if unknown."""
    state = devnet.read_state(directory)
    try:
        return state, devnet.app_id_of(state, name_or_id)
    except devnet.DevnetError as exc:
        fail(str(exc), 2)
