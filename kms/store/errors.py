"""Errors of the node store.

Every failure raises; nothing returns a status flag (STYLE.md, "Errors"). The
node service catches :class:`StoreError` (and so its subclasses) to report a
storage fault; it never retries a refused write with other bytes.
"""

from __future__ import annotations

import errno
import sqlite3


class StoreError(Exception):
    """The store refused an operation, or the database cannot be used.

    Refusals that protect the protocol are ``StoreError`` too: a second,
    different value for a persisted protocol record (that would sign twice),
    a second identity, a chain link out of order or forking the chain.
    """


class SealError(StoreError):
    """A sealed value does not open, or a sealer cannot be built.

    Raised when a blob was tampered with, moved to another row, or sealed under
    another key (a wrong passphrase is reported when the store opens), and when
    a passphrase source is unusable (empty, missing, readable by others).
    """


class AuditChainBroken(StoreError):
    """The audit log was edited, truncated or reordered.

    ``position`` is the 0-based position of the first entry that can no longer
    be trusted: the entries before it still hash into a correct chain.
    """

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"audit log broken at position {position}: {reason}")
        self.position = position
        self.reason = reason


class StorageFull(StoreError):
    """The disk holding the store is full: nothing of the call was written.

    Raised for SQLite's ``SQLITE_FULL`` ("database or disk is full"; SQLite reports
    a write cut short by ``ENOSPC`` that way), and for ``ENOSPC`` / ``EDQUOT`` where
    the store touches files itself (creating the store file). A quota hit inside a
    SQLite write is reported by SQLite as an I/O error: a plain :class:`StoreError`.
    The call's transaction is rolled back, so the store is left as it was before
    the call (SQLite's guarantee for a failed write); the same call may be made
    again once space returns. The node service holds the step whose records it
    could not write and refuses work until a retry succeeds
    (docs/operator-guide.md, "The disk is full").
    """


STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""File-system errors that mean "no space left" (the disk, or the user's quota)."""


def is_storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the store's disk is full: ``SQLITE_FULL`` (by its primary
    result code; SQLite reports ``ENOSPC`` on a write that way), or an ``OSError`` with
    ``ENOSPC`` / ``EDQUOT``."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL
    if isinstance(exc, OSError):
        return exc.errno in STORAGE_FULL_ERRNOS
    return False
