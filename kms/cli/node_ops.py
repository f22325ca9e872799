"""``kms node rotate-admin-token`` and ``kms node passphrase`` (``kms.app.maintenance``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kms.app.maintenance import MaintenanceError, change_passphrase, rotate_admin_token
from kms.cli.common import fail, out, print_json


def node_rotate_admin_token(
    config: Annotated[Path, typer.Option("--config", help="Path of node.toml.")],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Write a new random admin token (atomically, mode 0600); a running node takes it at its
    next admin request and refuses the old one from then on."""
    try:
        path = rotate_admin_token(config)
    except MaintenanceError as exc:
        fail(str(exc), 2)
    if json_out:
        print_json({"ok": True, "admin_token_file": str(path)})
    else:
        out.print(f"new admin token written to {path}", soft_wrap=True, markup=False)


def node_passphrase(
    config: Annotated[Path, typer.Option("--config", help="Path of node.toml (the node stopped).")],
    new_passphrase_file: Annotated[
        Path,
        typer.Option("--new-passphrase-file", help="The new passphrase (a file of mode 0600)."),
    ],
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Reseal the node's store under a new passphrase (the node must be stopped) and point
    node.toml's passphrase_file at the new file; the old passphrase no longer opens it."""
    try:
        done = change_passphrase(config, new_passphrase_file)
    except MaintenanceError as exc:
        fail(str(exc), 2)
    if json_out:
        print_json(
            {
                "ok": True,
                "store": str(done.store),
                "resealed": done.resealed,
                "config_updated": done.config_updated,
                "note": done.note,
            }
        )
        return
    out.print(
        f"store {done.store} resealed under the new passphrase ({done.resealed} sealed values)"
        if done.resealed
        else f"store {done.store} already opens with the new passphrase",
        soft_wrap=True,
        markup=False,
    )
    out.print(
        done.note or f"node.toml now names {new_passphrase_file}", soft_wrap=True, markup=False
    )
