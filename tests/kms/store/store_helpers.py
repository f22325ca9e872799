"""Helpers for the node-store tests: a cheap sealer, raw SQLite access, the files on disk."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from kms.store import NodeStore, TEESealer

TEE_KEY = bytes(range(32))


def tee_sealer(key: bytes = TEE_KEY) -> TEESealer:
    """A cheap sealer for tests that are not about sealing (no scrypt)."""
    return TEESealer(lambda: key)


@contextmanager
def raw_db(path: Path, *, drop_triggers: bool = False) -> Iterator[sqlite3.Connection]:
    """The store's file opened directly with sqlite3, as an attacker editing it would."""
    with closing(sqlite3.connect(path)) as db:
        if drop_triggers:
            names = [
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
            ]
            for name in names:
                db.execute(f"DROP TRIGGER {name}")
        with db:
            yield db


def file_bytes(path: Path) -> bytes:
    """Everything SQLite keeps on disk for the store (database, WAL, shared memory)."""
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(str(path) + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


StoreFactory = Callable[..., NodeStore]
