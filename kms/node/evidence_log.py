"""The evidence role of a node: third-party-checkable evidence of misbehaviour, kept once each.

Evidence comes from the node's own protocol runs (``MisbehaviourObserved``
events) and from CVMs that disclose a node's signed wrong partial
(``POST /v1/evidence``), checked with ``kms.evidence.verify_wrong_partial``
against this node's verified chain at the epoch the answer names. Results are
typed (:data:`EvidenceResult`); ``kms.api`` chooses the HTTP status codes.
Ports: the store's meta entries, a view of the node's chain, and the clock.
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


class EvidenceRefusal(enum.Enum):
    """Why disclosed evidence was not kept."""

    NOT_SERVING = "not-serving"
    MALFORMED = "malformed"
    STALE_EPOCH = "stale-epoch"
    UNKNOWN_EPOCH = "unknown-epoch"
    DOES_NOT_VERIFY = "does-not-verify"


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

    def keep(self, culprit: int, reason: str, raw: bytes) -> str:
        """Keep third-party-checkable evidence of misbehaviour (once per distinct evidence)."""
        eid = hashlib.sha256(raw).hexdigest()
        index = json.loads(self._store.get_meta(EVIDENCE_INDEX) or b"[]")
        if any(e["id"] == eid for e in index):
            return eid
        self._store.set_meta("evidence/" + eid, raw)
        index.append(
            {
                "id": eid,
                "culprit": culprit,
                "reason": reason,
                "epoch": self._current_epoch(),
                "time": round(self._clock.now(), 3),
            }
        )
        self._store.set_meta(EVIDENCE_INDEX, json.dumps(index).encode())
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
