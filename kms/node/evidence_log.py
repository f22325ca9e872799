"""The evidence role of a node: third-party-checkable evidence of misbehaviour, kept once each.

Evidence comes from the node's own protocol runs (``MisbehaviourObserved``
events) and from CVMs that disclose a node's signed wrong partial
(``POST /v1/evidence``), checked with ``kms.evidence.verify_wrong_partial``
against this node's verified chain at the epoch the answer names. Results are
typed (:data:`EvidenceResult`); ``kms.api`` chooses the HTTP status codes.
Ports: the store's meta entries, a view of the node's chain, and the clock.

**Bounded.** One proof convicts, and anyone holding a member's signature may
mint many distinct proofs of one misbehaviour (a corrupt member signs wrong
answers to requests it made up, each up to the body limit), so what is kept is
bounded: at most :data:`EVIDENCE_PER_KIND` pieces per (accused member, kind of
misbehaviour) (the reason up to its first ``:``; a further one is answered with
the id of one kept and not stored), at most :data:`EVIDENCE_CULPRIT_BYTES` per
accused member, and at most :data:`EVIDENCE_MAX_ENTRIES` pieces and
:data:`EVIDENCE_MAX_BYTES` in all; evidence beyond a byte or entry bound is
refused (``evidence-log-full``) and counted (``evidence: log full``). A piece
and the index naming it are written in one transaction.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kms.evidence import verify_wrong_partial
from kms.protocol import WrongPartialEvidence
from kms.store import NodeStore
from mpc.codec import decode
from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.membership import ChainState

log = logging.getLogger("quorum_kms.node")

EVIDENCE_INDEX = "evidence/index"
EVIDENCE_PER_KIND = 2
"""Pieces kept per (accused member, kind of misbehaviour): one proof convicts."""
EVIDENCE_CULPRIT_BYTES = 2 * 1024 * 1024
"""Bytes of evidence kept per accused member (two disclosed proofs at the body limit fit)."""
EVIDENCE_MAX_ENTRIES = 1024
"""Pieces of evidence kept in all."""
EVIDENCE_MAX_BYTES = 64 * 1024 * 1024
"""Bytes of evidence kept in all."""


class EvidenceRefusal(enum.Enum):
    """Why disclosed evidence was not kept."""

    NOT_SERVING = "not-serving"
    MALFORMED = "malformed"
    STALE_EPOCH = "stale-epoch"
    UNKNOWN_EPOCH = "unknown-epoch"
    DOES_NOT_VERIFY = "does-not-verify"
    LOG_FULL = "evidence-log-full"


@dataclass(frozen=True)
class EvidenceRefused:
    reason: EvidenceRefusal
    detail: str


@dataclass(frozen=True)
class EvidenceKept:
    id: str
    node: int
    epoch: int
    proves: str


EvidenceResult = EvidenceKept | EvidenceRefused


class Clock(Protocol):
    def now(self) -> float: ...


class Chain(Protocol):
    """What the evidence role reads of the node's verified chain (``NodeCore``)."""

    def epoch_state(self, epoch: int) -> ChainState | None: ...

    def is_stale(self, epoch: int) -> bool: ...


class EvidenceLog:
    """Keeps and lists the evidence a node collected (in the store's meta entries)."""

    def __init__(
        self,
        store: NodeStore,
        clock: Clock,
        chain: Callable[[], Chain],
        current_epoch: Callable[[], int | None],
        count_rejected: Callable[[str], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._chain = chain
        self._current_epoch = current_epoch
        self._count_rejected = count_rejected
        self.per_kind = EVIDENCE_PER_KIND
        self.culprit_bytes = EVIDENCE_CULPRIT_BYTES
        self.max_entries = EVIDENCE_MAX_ENTRIES
        self.max_bytes = EVIDENCE_MAX_BYTES

    def keep(self, culprit: int, reason: str, raw: bytes) -> str:
        """Keep third-party-checkable evidence of misbehaviour (once per distinct evidence,
        within the bounds above). Returns its id, the id of a piece kept that proves the
        same (the per-kind bound), or ``""`` when a byte or entry bound refuses it."""
        eid = hashlib.sha256(raw).hexdigest()
        index = json.loads(self._store.get_meta(EVIDENCE_INDEX) or b"[]")
        if any(e["id"] == eid for e in index):
            return eid
        kind = _kind(reason)
        same = [e for e in index if e["culprit"] == culprit and _kind(e["reason"]) == kind]
        if len(same) >= self.per_kind:
            self._count_rejected("evidence: already kept")
            return str(same[0]["id"])
        theirs = sum(int(e.get("bytes", 0)) for e in index if e["culprit"] == culprit)
        total = sum(int(e.get("bytes", 0)) for e in index)
        if (
            len(index) >= self.max_entries
            or total + len(raw) > self.max_bytes
            or theirs + len(raw) > self.culprit_bytes
        ):
            self._count_rejected("evidence: log full")
            log.warning(
                "evidence not kept: the evidence log is at its bound",
                extra={"fields": {"culprit": culprit, "reason": kind, "bytes": len(raw)}},
            )
            return ""
        index.append(
            {
                "id": eid,
                "culprit": culprit,
                "reason": reason,
                "epoch": self._current_epoch(),
                "time": round(self._clock.now(), 3),
                "bytes": len(raw),
            }
        )
        # The piece and the index naming it: one transaction (both or neither).
        self._store.set_metas(
            [("evidence/" + eid, raw), (EVIDENCE_INDEX, json.dumps(index).encode())]
        )
        return eid

    def offer(self, raw: bytes) -> EvidenceResult:
        """Evidence a CVM discloses (``POST /v1/evidence``): a node's signed wrong partial.

        Checked against this node's verified chain at the epoch the answer
        names (``kms.evidence.verify_wrong_partial``); kept (once) when it
        proves something, so an operator can attach it to a removal.
        """
        if self._current_epoch() is None:
            return EvidenceRefused(EvidenceRefusal.NOT_SERVING, "no chain yet")
        try:
            ev = WrongPartialEvidence.decode(raw)
        except InvalidEncoding as exc:
            self._count_rejected("evidence: malformed")
            return EvidenceRefused(EvidenceRefusal.MALFORMED, str(exc))
        chain = self._chain()
        state = chain.epoch_state(ev.response.epoch)
        if state is None and chain.is_stale(ev.response.epoch):
            self._count_rejected("evidence: stale epoch")
            return EvidenceRefused(
                EvidenceRefusal.STALE_EPOCH,
                f"epoch {ev.response.epoch} is older than the chain this node keeps",
            )
        if state is None:
            self._count_rejected("evidence: unknown epoch")
            return EvidenceRefused(
                EvidenceRefusal.UNKNOWN_EPOCH,
                f"epoch {ev.response.epoch} is not in this node's chain",
            )
        try:
            proves = verify_wrong_partial(ev, state)
        except (InvalidSignature, InvalidEncoding) as exc:
            self._count_rejected("evidence: does not verify")
            return EvidenceRefused(EvidenceRefusal.DOES_NOT_VERIFY, str(exc))
        node = int(ev.response.index)
        eid = self.keep(node, f"wrong partial disclosed by a CVM: {proves}", raw)
        if not eid:
            return EvidenceRefused(
                EvidenceRefusal.LOG_FULL,
                "this node keeps no more evidence (its evidence log is at its bound)",
            )
        log.warning(
            "misbehaviour",
            extra={"fields": {"culprit": node, "reason": "wrong partial", "evidence": eid}},
        )
        return EvidenceKept(eid, node, state.epoch, proves)

    def entries(self) -> list[dict[str, Any]]:
        """Evidence this node collected: id, culprit, kind, reason, epoch, time and the bytes (hex)."""
        out = []
        for e in json.loads(self._store.get_meta(EVIDENCE_INDEX) or b"[]"):
            raw = self._store.get_meta("evidence/" + e["id"]) or b""
            try:
                kind = decode(raw).TYPE.removeprefix("evidence/")
            except ValueError:
                kind = "unreadable"
            out.append({**e, "kind": kind, "evidence": raw.hex()})
        return out


def _kind(reason: str) -> str:
    """The kind of misbehaviour a reason names: its text up to the first ``:``."""
    return reason.split(":", 1)[0][:80]
