"""Operator maintenance of one node's files: a new admin token (node running), a new store
passphrase (node stopped). ``kms node rotate-admin-token`` and ``kms node passphrase``."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from kms.api import admin
from kms.app.config import ConfigError, NodeFileConfig, load
from kms.secretfile import write_secret
from kms.store import NodeStore, PassphraseSealer, SealError, StoreError
from kms.store import lock as store_lock
from kms.store.lock import StoreInUse

__all__ = [
    "MaintenanceError",
    "PassphraseChange",
    "change_passphrase",
    "node_answers",
    "rotate_admin_token",
]


class MaintenanceError(Exception):
    """The operation cannot be done as asked (the message says what to do)."""


def rotate_admin_token(config: Path) -> Path:
    """Write a new random admin token to the node's ``admin_token_file`` (atomically, mode
    0600); a running node takes it at its next admin request. Returns the file."""
    try:
        cfg = load(config)
    except ConfigError as exc:
        raise MaintenanceError(str(exc)) from exc
    try:
        write_secret(cfg.admin_token_file, secrets.token_hex(32) + "\n")
    except OSError as exc:
        raise MaintenanceError(
            f"cannot write the admin token file {cfg.admin_token_file}: {exc.strerror}"
        ) from exc
    return cfg.admin_token_file


def node_answers(cfg: NodeFileConfig, timeout: float = 2.0) -> bool:
    """Whether something answers on the node's admin socket (the node is running)."""
    if not cfg.admin_socket.exists():
        return False

    async def ask() -> bool:
        with trio.move_on_after(timeout):
            try:
                await admin.call(cfg.admin_socket, {"op": "status"})
            except (OSError, ValueError, admin.AdminError):
                return False
            return True
        return True  # connected and kept silent: something is there

    return trio.run(ask)


@dataclass(frozen=True)
class PassphraseChange:
    """What ``change_passphrase`` did."""

    store: Path
    resealed: int
    """Sealed values written again (0 if the store already opened with the new one)."""
    config_updated: bool
    """node.toml's ``passphrase_file`` now names the new file."""
    note: str
    """What the operator still has to do (empty when nothing)."""


_PASSPHRASE_LINE = re.compile(r"^(\s*passphrase_file\s*=\s*)(\"[^\"\n]*\"|'[^'\n]*')(\s*(#.*)?)$")


def _point_config_at(config: Path, new_file: Path) -> bool:
    """Replace ``[node] passphrase_file`` in node.toml, keeping every other line (and its
    comments); False when node.toml does not name it in the plain form this edits."""
    text = config.read_text()
    lines = text.splitlines(keepends=True)
    section = None
    for n, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.split("#", 1)[0].strip()
        body = line.rstrip("\r\n")
        m = _PASSPHRASE_LINE.match(body)
        if section == "[node]" and m:
            try:
                value = str(new_file.resolve().relative_to(config.resolve().parent))
            except ValueError:
                value = str(new_file.resolve())
            quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines[n] = m.group(1) + quoted + m.group(3) + line[len(body) :]
            write_secret(config, "".join(lines))  # node.toml names secrets' files: 0600
            return True
    return False


def change_passphrase(
    config: Path,
    new_passphrase_file: Path,
    *,
    between: Callable[[str], None] | None = None,
) -> PassphraseChange:
    """Reseal the node's store under the passphrase in ``new_passphrase_file`` (the node must
    be stopped), then point node.toml's ``passphrase_file`` at that file.

    Order: (1) refuse while the admin socket answers; (2) take the store's lock
    (``kms.store.lock``: refused while a node runs on the store, even one whose
    admin socket is not up yet) and open the store with the current passphrase; (3) reseal everything in one transaction
    (``NodeStore.reseal``): until it commits the old passphrase opens the store,
    after it only the new one; (4) update node.toml. A crash between (3) and (4)
    leaves the store sealed with the new passphrase and node.toml naming the old
    file: running the command again finds the store already resealed and does (4).
    ``between`` is called after each step (fault injection in tests).
    """
    step = between or (lambda name: None)
    try:
        cfg = load(config)
    except ConfigError as exc:
        raise MaintenanceError(str(exc)) from exc
    if node_answers(cfg):
        raise MaintenanceError(
            f"the node is running (its admin socket {cfg.admin_socket} answers): stop it "
            "first, e.g. `systemctl stop quorum-kms@NAME`, then run this again"
        )
    try:
        new = PassphraseSealer.from_file(new_passphrase_file)
    except SealError as exc:
        raise MaintenanceError(f"the new passphrase: {exc}") from exc
    if cfg.passphrase_file is None and cfg.passphrase_env is None:
        raise MaintenanceError("node.toml sets neither passphrase_file nor passphrase_env")
    old_name = str(cfg.passphrase_file) if cfg.passphrase_file else f"${cfg.passphrase_env}"
    resealed = 0
    try:
        if cfg.passphrase_file is not None:
            old = PassphraseSealer.from_file(cfg.passphrase_file)
        else:
            old = PassphraseSealer.from_env(str(cfg.passphrase_env))
        with (
            store_lock.exclusive(Path(cfg.store)),
            NodeStore(cfg.store, old, create=False) as store,
        ):
            step("opened")
            resealed = store.reseal(new, between=between)
    except SealError as exc:
        # Already resealed by an earlier run that stopped before node.toml was updated?
        try:
            with NodeStore(
                cfg.store, PassphraseSealer.from_file(new_passphrase_file), create=False
            ):
                pass
        except (SealError, StoreError):
            raise MaintenanceError(
                f"the current passphrase ({old_name}) does not open the store at {cfg.store} "
                f"({exc}), nor does the new one"
            ) from None
    except StoreInUse as exc:
        raise MaintenanceError(str(exc)) from None
    except StoreError as exc:
        raise MaintenanceError(f"the store at {cfg.store}: {exc}") from exc
    step("resealed")
    same = cfg.passphrase_file is not None and (
        cfg.passphrase_file.resolve() == new_passphrase_file.resolve()
    )
    if same:
        return PassphraseChange(cfg.store, resealed, True, "")
    if cfg.passphrase_file is None:
        return PassphraseChange(
            cfg.store,
            resealed,
            False,
            f"node.toml takes the passphrase from ${cfg.passphrase_env}: set it to the new "
            f"passphrase (or set passphrase_file = {str(new_passphrase_file)!r}) before the "
            "node starts again",
        )
    try:
        updated = _point_config_at(cfg.path, new_passphrase_file)
    except OSError:
        updated = False
    if not updated:
        return PassphraseChange(
            cfg.store,
            resealed,
            False,
            f"set [node] passphrase_file = {str(new_passphrase_file.resolve())!r} in "
            f"{cfg.path} before the node starts again (the old passphrase no longer opens "
            "the store)",
        )
    return PassphraseChange(cfg.store, resealed, True, "")
