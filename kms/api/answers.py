"""HTTP status codes and JSON bodies for the node's typed results: the only place they are chosen.

The node answers with typed values (``kms.node.keyrelease.ReleaseResult``,
``kms.node.policies.PolicyOfferResult``, ``kms.node.evidence_log.EvidenceResult``);
these tables map each result type and reason to a status. Every
``KeyRefusalReason`` has an entry (``tests/kms/api/test_status_mapping.py``).
"""

from __future__ import annotations

from typing import Any

from kms.node.appcert import Certified
from kms.node.evidence_log import EvidenceKept, EvidenceRefusal, EvidenceResult
from kms.node.keyrelease import CertResult, KeysNotServed, ReleaseResult
from kms.node.policies import PoliciesUnavailable, PolicyOfferResult
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
    KeyRefusalReason.NOT_CURRENT_ROOT: 403,
    KeyRefusalReason.KEY_CONFLICT: 403,
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
    EvidenceRefusal.LOG_FULL: 503,
}


def policy_reply(result: PolicyOfferResult) -> dict[str, Any]:
    """The JSON body answering an offered bundle (``PolicyOffer`` in the OpenAPI document)."""
    if isinstance(result, PoliciesUnavailable):
        return {"accepted": False, "reason": "not-serving", "detail": result.detail}
    out = result
    if out.reason is PolicyFailure.MALFORMED and out.app_id is None:
        return {"accepted": False, "reason": "malformed", "detail": out.detail}
    app = out.app_id.hex() if out.app_id is not None else ""
    if out.accepted:
        return {"accepted": True, "version": out.version, "app_id": app}
    if out.duplicate:
        return {"accepted": True, "version": out.version, "app_id": app, "duplicate": True}
    reply: dict[str, Any] = {
        "accepted": False,
        "reason": out.reason.value if out.reason is not None else "refused",
        "detail": out.detail[:500],
        "app_id": app,
        "held_version": out.version,
    }
    if out.cached:
        reply["cached"] = True
    return reply


def evidence_reply(result: EvidenceResult) -> dict[str, Any]:
    """The JSON body answering disclosed evidence."""
    if isinstance(result, EvidenceKept):
        return {
            "accepted": True,
            "id": result.id,
            "node": result.node,
            "epoch": result.epoch,
            "proves": result.proves,
        }
    return {"accepted": False, "reason": result.reason.value, "detail": result.detail[:500]}


def key_answer(result: ReleaseResult) -> tuple[int, Message]:
    """(status, message) answering a key request."""
    if isinstance(result, Released):
        return 200, result.response
    if isinstance(result, KeysNotServed):
        return KEYS_NOT_SERVED_STATUS, result.refusal
    return KEY_REFUSAL_STATUS[result.reason], result.refusal


def cert_answer(result: CertResult) -> tuple[int, Message]:
    """(status, message) answering an app-key certificate request: the share, or a
    refusal with the status a key request's refusal of the same reason gets."""
    if isinstance(result, Certified):
        return 200, result.share
    if isinstance(result, KeysNotServed):
        return KEYS_NOT_SERVED_STATUS, result.refusal
    return KEY_REFUSAL_STATUS[result.reason], result.refusal


def policy_answer(result: PolicyOfferResult) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) answering an offered policy bundle."""
    body = policy_reply(result)
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
        return 200, evidence_reply(result)
    return EVIDENCE_REFUSAL_STATUS[result.reason], evidence_reply(result)
