"""Durable node state: sealed shares, epochs and the chain, protocol records, audit log.

One SQLite file per node (DESIGN.md, "Storage and failures"). Secrets are
sealed by a pluggable :class:`Sealer` (a passphrase through scrypt, or a key
from the TEE); every write is one fsynced transaction, so a node killed at any
point reopens consistent and resends exactly what it had signed.

Typical use in the node service::

    sealer = PassphraseSealer.from_file("/etc/kms/passphrase")
    with NodeStore("/var/lib/kms/node.db", sealer) as store:
        store.put_records(run, persist_events)   # before sending the step's messages
        session = SharingSession(..., persisted=store.records(run))
"""

from __future__ import annotations

from kms.store.audit import FORBIDDEN_KEY_PARTS, ZERO_HASH, AuditRecord, canonical_record
from kms.store.errors import (
    AuditChainBroken,
    SealError,
    StorageFull,
    StoreError,
    is_storage_full,
)
from kms.store.keystore import KeyStore
from kms.store.sealer import PassphraseSealer, Sealer, TEESealer
from kms.store.store import (
    LINK_KINDS,
    MIGRATIONS,
    SCHEMA_VERSION,
    AuditEntry,
    EpochRecord,
    NodeStore,
    RecordLike,
    ReleaseWrite,
)

__all__ = [
    "FORBIDDEN_KEY_PARTS",
    "LINK_KINDS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ZERO_HASH",
    "AuditChainBroken",
    "AuditEntry",
    "AuditRecord",
    "EpochRecord",
    "KeyStore",
    "NodeStore",
    "PassphraseSealer",
    "RecordLike",
    "ReleaseWrite",
    "SealError",
    "Sealer",
    "StorageFull",
    "StoreError",
    "TEESealer",
    "canonical_record",
    "is_storage_full",
]
