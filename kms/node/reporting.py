"""What a node reports about the events its core emits: log lines and metrics; and
(``ProgressLog``) the starts and ends of its decision windows and sharing runs.

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
    DealerLeftOut,
    EpochSwitched,
    InputRejected,
    LinkCertified,
    MisbehaviourObserved,
    RetainedShareDeletable,
    RunFailed,
    ShareHoldersBelowThreshold,
    ShareRefused,
    SignatureWithheld,
)
from mpc.dkg import Phase, SharingSession
from mpc.ids import ParticipantIndex
from mpc.membership.window import TERMINAL_WINDOW_PHASES, DecisionWindow

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
        elif isinstance(ev, DealerLeftOut):
            log.info(
                "dealer left out", extra={"fields": {"dealer": int(ev.dealer), "reason": ev.reason}}
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
        elif isinstance(ev, SignatureWithheld):
            self._metrics.signature_withheld(ev.kind)
            log.warning(
                "certificate signature withheld",
                extra={
                    "fields": {
                        "kind": ev.kind,
                        "epoch": ev.epoch,
                        "attempt": ev.attempt,
                        "reason": ev.reason,
                    }
                },
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


class ProgressLog:
    """One log line when a decision window or a sharing run (DKG, reshare) starts here and
    one when it ends, seen after each of the node's steps.

    The node's core holds at most one window and one run; ``observe`` is given them after
    every step and compares them with the ones it saw last (it keeps a reference to an
    ended one only until the next step, to read how it ended).
    """

    def __init__(self) -> None:
        self._window: DecisionWindow | None = None
        self._run: SharingSession | None = None

    def observe(self, window: DecisionWindow | None, run: SharingSession | None) -> None:
        seen = self._window
        if seen is not None and (window is not seen or seen.phase in TERMINAL_WINDOW_PHASES):
            self._window_ended(seen)
            seen = None
        if window is not None and window is not seen and window.phase not in TERMINAL_WINDOW_PHASES:
            self._window_started(window)
            seen = window
        self._window = seen
        last = self._run
        if last is not None and (run is not last or last.phase in (Phase.DONE, Phase.FAILED)):
            self._run_ended(last)
            last = None
        if run is not None and run is not last and run.phase not in (Phase.DONE, Phase.FAILED):
            self._run_started(run)
            last = run
        self._run = last

    def stopped(self) -> dict[str, object]:
        """What was going on when the node stopped (for its ``node service stopped`` line)."""
        out: dict[str, object] = {}
        if self._window is not None:
            out["window"] = self._window.window
        if self._run is not None:
            c = self._run.config
            out["interrupted_run"] = f"{c.kind}:{c.epoch}:{c.attempt}"
        return out

    @staticmethod
    def _window_started(w: DecisionWindow) -> None:
        log.info(
            "decision window started",
            extra={
                "fields": {
                    "window": w.window,
                    "epoch": w.state.epoch,
                    "starts_at": w.schedule.start,
                }
            },
        )

    @staticmethod
    def _window_ended(w: DecisionWindow) -> None:
        fields: dict[str, object] = {
            "window": w.window,
            "epoch": w.state.epoch,
            "outcome": w.phase.value if w.phase in TERMINAL_WINDOW_PHASES else "abandoned",
        }
        o = w.outcome
        if o is not None:
            fields["proposal"] = o.proposal.id().hex()
            fields["kind"] = str(o.proposal.kind)
            fields["reshare_start"] = o.reshare_start
        log.info("decision window ended", extra={"fields": fields})

    @staticmethod
    def _run_started(run: SharingSession) -> None:
        c = run.config
        log.info(
            "sharing run started",
            extra={
                "fields": {
                    "kind": str(c.kind),
                    "epoch": c.epoch,
                    "attempt": c.attempt,
                    "starts_at": c.schedule.start,
                    "phase": run.phase.value,
                }
            },
        )

    @staticmethod
    def _run_ended(run: SharingSession) -> None:
        c = run.config
        outcome = {Phase.DONE: "done", Phase.FAILED: "failed"}.get(run.phase, "abandoned")
        log.log(
            logging.INFO if outcome == "done" else logging.WARNING,
            "sharing run ended",
            extra={
                "fields": {
                    "kind": str(c.kind),
                    "epoch": c.epoch,
                    "attempt": c.attempt,
                    "outcome": outcome,
                }
            },
        )
