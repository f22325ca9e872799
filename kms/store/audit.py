"""The audit log's record encoding and hash chain (pure functions).

Every entry of the log is a flat record of strings and integers (who asked,
which app, which measurement, when, which epoch) and never key material. An
entry's bytes are the record's canonical JSON: keys sorted, no whitespace,
UTF-8, integers in decimal. Entries are chained::

    hash_0 = SHA-256(ZERO_HASH ‖ json_0)
    hash_k = SHA-256(hash_{k-1} ‖ json_k)

so the head hash commits to every entry and its order. The store keeps each
entry's ``prev_hash`` and ``hash`` beside it and a sealed copy of the head;
nodes sign the head across the committee so that a rewrite is detectable even
by someone who holds this node's sealing key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

__all__ = [
    "FORBIDDEN_KEY_PARTS",
    "ZERO_HASH",
    "AuditRecord",
    "canonical_record",
    "chain_hash",
]

ZERO_HASH = bytes(32)
"""The ``prev_hash`` of the first entry."""

FORBIDDEN_KEY_PARTS = ("share", "secret", "key_material", "private")
"""A record key containing any of these (case-insensitive, ``-`` read as ``_``) is refused."""

AuditRecord = Mapping[str, str | int]


def canonical_record(record: AuditRecord) -> bytes:
    """The canonical JSON encoding of ``record``.

    Raises ``ValueError`` for a key that looks like key material, an empty or
    non-string key, a value that is neither ``str`` nor ``int`` (``bool`` is
    refused: ``True`` and ``1`` must not collide in meaning), or text that is
    not valid Unicode.
    """
    if not isinstance(record, Mapping):
        raise TypeError("an audit record is a mapping of str to str | int")
    for key, value in record.items():
        if not isinstance(key, str) or not key:
            raise ValueError("audit record keys must be non-empty strings")
        folded = key.lower().replace("-", "_")
        for part in FORBIDDEN_KEY_PARTS:
            if part in folded:
                raise ValueError(
                    f"audit record key {key!r} looks like key material ({part!r}): "
                    "the audit log never holds secrets"
                )
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"audit record value of {key!r} must be str or int")
    try:
        return json.dumps(
            dict(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("audit record text is not valid Unicode") from exc


def chain_hash(prev_hash: bytes, entry: bytes) -> bytes:
    """``SHA-256(prev_hash ‖ entry)``."""
    return hashlib.sha256(prev_hash + entry).digest()
