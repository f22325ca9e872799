"""HTTP status codes and bodies for the node's typed results: the only place they are chosen.

The node answers with typed values (``kms.node.keyrelease.ReleaseResult``,
``kms.node.policies.PolicyOfferResult``, ``kms.node.evidence_log.EvidenceResult``);
these tables map each result type and reason to a status. Every
``KeyRefusalReason`` has an entry (``tests/kms/api/test_status_mapping.py``).
"""

from __future__ import annotations

from typing import Any

from kms.node.evidence_log import EvidenceKept, EvidenceRefusal, EvidenceResult
from kms.node.keyrelease import KeysNotServed, ReleaseResult
from kms.node.policies import PoliciesUnavailable, PolicyOfferResult, offer_reply
from kms.node.release import KeyRefusalReason, Released
from kms.policy import PolicyFailure
from mpc.codec import Message

KEY_REFUSAL_STATUS: dict[KeyRefusalReason, int] = {
    KeyRefusalReason.MALFORMED: 400,
    KeyRefusalReason.NOT_SERVING: 403,
    KeyRefusalReason.NO_KEY_FOR_INDEX: 403,
    KeyRefusalReason.STALE: 403,
    KeyRefusalReason.BINDING: 403,
    KeyRefusalReason.REPLAY: 403,
    KeyRefusalReason.QUOTE: 403,
    KeyRefusalReason.NO_POLICY: 403,
    KeyRefusalReason.POLICY: 403,
    KeyRefusalReason.FROZEN: 403,
    KeyRefusalReason.BUNDLE: 403,
    KeyRefusalReason.RETRY: 403,
}
"""A refused key request: 400 for a body that is not a key request, 403 otherwise
(``not-serving`` here is a node without a share of the current epoch; a node that
releases no keys at all answers 503)."""

KEYS_NOT_SERVED_STATUS = 503

POLICY_FAILURE_STATUS: dict[PolicyFailure, int] = {
    PolicyFailure.MALFORMED: 400,
    PolicyFailure.UNKNOWN_APP: 202,
    PolicyFailure.APP_FROZEN: 423,
}
"""A refused policy offer: these reasons, else 409."""

EVIDENCE_REFUSAL_STATUS: dict[EvidenceRefusal, int] = {
    EvidenceRefusal.NOT_SERVING: 503,
    EvidenceRefusal.MALFORMED: 400,
    EvidenceRefusal.STALE_EPOCH: 409,
    EvidenceRefusal.UNKNOWN_EPOCH: 409,
    EvidenceRefusal.DOES_NOT_VERIFY: 409,
}


def key_answer(result: ReleaseResult) -> tuple[int, Message]:
    """(status, message) answering a key request."""
    if isinstance(result, Released):
        return 200, result.response
    if isinstance(result, KeysNotServed):
        return KEYS_NOT_SERVED_STATUS, result.refusal
    return KEY_REFUSAL_STATUS[result.reason], result.refusal


def policy_answer(result: PolicyOfferResult) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) answering an offered policy bundle."""
    body = offer_reply(result)
    if isinstance(result, PoliciesUnavailable):
        return 503, body
    if result.accepted or result.duplicate:
        return 200, body
    if result.reason is None:
        return 409, body
    return POLICY_FAILURE_STATUS.get(result.reason, 409), body


def evidence_answer(result: EvidenceResult) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) answering disclosed evidence."""
    if isinstance(result, EvidenceKept):
        return 200, result.body()
    return EVIDENCE_REFUSAL_STATUS[result.reason], result.body()
