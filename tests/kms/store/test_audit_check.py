"""The audit log check a reader runs on what a node exports (``kms.store.audit``): the head
must be signed by the node's identity under the audit-head context, the entries must hash to
it, and a public head must be a head of the same chain under the same identity."""

from __future__ import annotations

from typing import Any

from kms.store.audit import (
    AUDIT_HEAD_CONTEXT,
    ZERO_HASH,
    canonical_record,
    chain_hash,
    chain_problems,
    head_problems,
    head_statement,
)
from mpc.sig import CTX_KEY_RESPONSE, SigningKey

KEY = SigningKey.from_seed(bytes(range(32)))
ENTRIES = [canonical_record({"op": "release", "n": n}).decode() for n in range(3)]


def head(entries: list[str], key: SigningKey = KEY, context: bytes = AUDIT_HEAD_CONTEXT) -> Any:
    h = ZERO_HASH
    for e in entries:
        h = chain_hash(h, e.encode())
    return {
        "count": len(entries),
        "head": h.hex(),
        "identity": key.verify_key().to_bytes().hex(),
        "signature": key.sign(context, head_statement(len(entries), h)).hex(),
        "node_check": "ok",
    }


def test_an_honest_export_has_no_problem() -> None:
    doc = head(ENTRIES)
    assert head_problems(doc) == []
    assert chain_problems(ENTRIES, doc, head(ENTRIES[:2])) == []
    assert chain_problems(ENTRIES, doc, head([])) == []


def test_a_head_signed_under_another_context_is_refused() -> None:
    forged = head(ENTRIES, context=CTX_KEY_RESPONSE)
    assert head_problems(forged) == ["the head is not signed by the node's identity"]
    assert head_problems({**head(ENTRIES), "count": -1}) != []


def test_an_edited_entry_or_a_foreign_public_head_is_found() -> None:
    doc = head(ENTRIES)
    edited = [ENTRIES[0], canonical_record({"op": "release", "n": 9}).decode(), ENTRIES[2]]
    assert any("do not hash" in p for p in chain_problems(edited, doc))
    other = head(ENTRIES[:2], key=SigningKey.from_seed(bytes(32)))
    assert chain_problems(ENTRIES, doc, other) == ["the public head is signed by another identity"]
    fork = head([ENTRIES[0], edited[1]])
    assert chain_problems(ENTRIES, doc, fork) == ["the public head is not a head of the chain"]
