"""Errors of the node store.

Every failure raises; nothing returns a status flag (STYLE.md, "Errors"). The
node service catches :class:`StoreError` (and so its subclasses) to report a
storage fault; it never retries a refused write with other bytes.
"""

from __future__ import annotations


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
