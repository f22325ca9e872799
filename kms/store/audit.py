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
from collections.abc import Mapping, Sequence
from typing import Any

from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.sig import VerifyKey

__all__ = [
    "AUDIT_HEAD_CONTEXT",
    "FORBIDDEN_KEY_PARTS",
    "ZERO_HASH",
    "AuditRecord",
    "canonical_record",
    "chain_hash",
    "chain_problems",
    "head_problems",
    "head_statement",
]

AUDIT_HEAD_CONTEXT = b"quorum-kms/v1/kms/audit-head"
"""The signing context of a node's audit head (``head_statement``, signed by its identity)."""

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


def head_statement(count: int, head: bytes) -> bytes:
    """What a node signs for its audit head: ``u64be count ‖ head hash (32)``."""
    return count.to_bytes(8, "big") + head


def head_problems(doc: Mapping[str, Any]) -> list[str]:
    """Problems with a signed audit head (``count``, ``head``, ``identity``, ``signature``
    in hex, as ``GET /v1/audit/head`` serves it): empty when the identity signed it."""
    try:
        key = VerifyKey.from_bytes(bytes.fromhex(doc["identity"]))
        key.verify(
            AUDIT_HEAD_CONTEXT,
            head_statement(int(doc["count"]), bytes.fromhex(doc["head"])),
            bytes.fromhex(doc["signature"]),
        )
    except (InvalidSignature, InvalidEncoding, ValueError, KeyError, TypeError, OverflowError):
        return ["the head is not signed by the node's identity"]
    return []


def chain_problems(
    entries: Sequence[str], doc: Mapping[str, Any], public: Mapping[str, Any] | None = None
) -> list[str]:
    """Problems with a node's exported audit log: its ``entries`` (canonical JSON, in
    order) against the signed head ``doc`` that came with them (and the node's own
    check, ``node_check``), and, when given, a ``public`` head that must be signed by
    the same identity and be a head of that chain."""
    head = ZERO_HASH
    at_public = head if public is not None and int(public["count"]) == 0 else None
    for n, e in enumerate(entries, start=1):
        head = chain_hash(head, e.encode())
        if public is not None and n == int(public["count"]):
            at_public = head
    problems: list[str] = []
    if len(entries) != doc["count"]:
        problems.append(f"{len(entries)} entries for a head over {doc['count']}")
    if head.hex() != doc["head"]:
        problems.append(
            "the entries do not hash to the signed head (a record was edited, removed or reordered)"
        )
    problems += head_problems(doc)
    if doc.get("node_check") != "ok":
        problems.append(f"the node's own check: {doc.get('node_check')}")
    if public is not None:
        if public["identity"] != doc["identity"]:
            problems.append("the public head is signed by another identity")
        elif at_public is None or at_public.hex() != public["head"]:
            problems.append("the public head is not a head of the chain")
    return problems
