"""What a node reports about the events its core emits: log lines and metrics.

Storing an event is ``kms.node.persist``'s; this module only logs and counts, and hands
evidence of misbehaviour to the evidence role. Ports: the node's metrics, the evidence
role's ``keep`` and the shell's per-peer rejection log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kms.node.metrics import NodeMetrics
from kms.node.model import (
    ApprovalRefused,
    ChainReplaced,
    EpochSwitched,
    InputRejected,
    LinkCertified,
    MisbehaviourObserved,
    RetainedShareDeletable,
    RunFailed,
    ShareHoldersBelowThreshold,
    ShareRefused,
)
from mpc.ids import ParticipantIndex

log = logging.getLogger("quorum_kms.node")


class EventReporter:
    """Logs and counts node events (one line per event, the metric it moves)."""

    def __init__(
        self,
        metrics: NodeMetrics,
        keep_evidence: Callable[[int, str, bytes], object],
        reject_from: Callable[[ParticipantIndex, str], None],
    ) -> None:
        self._metrics = metrics
        self._keep_evidence = keep_evidence
        self._reject_from = reject_from

    def report(self, ev: object) -> None:
        """Log and count one event the node emitted (storing it is ``kms.node.persist``'s)."""
        if isinstance(ev, EpochSwitched):
            self._metrics.epoch_switched()
            log.info(
                "epoch certified",
                extra={
                    "fields": {
                        "epoch": ev.epoch,
                        "threshold": ev.state.threshold,
                        "has_share": ev.share is not None,
                    }
                },
            )
        elif isinstance(ev, LinkCertified):
            log.info(
                "membership change certified",
                extra={"fields": {"kind": ev.certificate.outcome.proposal.kind}},
            )
        elif isinstance(ev, ChainReplaced):
            log.info("chain replaced", extra={"fields": {"links": len(ev.links)}})
        elif isinstance(ev, RetainedShareDeletable):
            log.info("old share deleted", extra={"fields": {"epoch": ev.epoch}})
        elif isinstance(ev, MisbehaviourObserved):
            self._metrics.misbehaved(ev.reason.split(":")[0])
            if ev.evidence is not None:
                self._keep_evidence(int(ev.culprit), ev.reason, ev.evidence.encode())
            log.warning(
                "misbehaviour", extra={"fields": {"culprit": int(ev.culprit), "reason": ev.reason}}
            )
        elif isinstance(ev, InputRejected):
            self._reject_from(ev.peer, ev.reason)
        elif isinstance(ev, ApprovalRefused):
            self._metrics.rejected_input("approval: " + ev.reason)
            log.warning(
                "approval refused",
                extra={
                    "fields": {
                        "proposal": ev.proposal_id.hex(),
                        "reason": ev.reason,
                        "detail": ev.detail,
                    }
                },
            )
        elif isinstance(ev, ShareHoldersBelowThreshold):
            log.warning(
                "too few share holders known for the current epoch: the master key may be"
                " unrecoverable (see the operator guide)",
                extra={
                    "fields": {
                        "epoch": ev.epoch,
                        "known_holders": [int(i) for i in ev.known],
                        "threshold": ev.threshold,
                    }
                },
            )
        elif isinstance(ev, ShareRefused):
            log.error(
                "stored share refused: it does not match the chain",
                extra={"fields": {"epoch": ev.epoch, "reason": ev.reason}},
            )
        elif isinstance(ev, RunFailed):
            self._metrics.run_failed(ev.kind)
            log.warning(
                "run failed",
                extra={
                    "fields": {
                        "kind": ev.kind,
                        "epoch": ev.epoch,
                        "attempt": ev.attempt,
                        "reason": ev.reason,
                    }
                },
            )
