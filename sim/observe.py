"""What a simulated run observed, and how each node event maps to an observation.

``World`` hands every driver step of every node to ``Observations.record``; this
module is the one place that looks at the node's event types (epoch switches,
certified membership links, misbehaviour seen, rejected input, failed runs) and
at what a corrupt node's store retains (the shares it could leak). The world
itself only moves frames and keeps time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kms.node.driver import Step
from kms.node.model import (
    EpochSwitched,
    InputRejected,
    LinkCertified,
    MisbehaviourObserved,
    RunFailed,
)
from mpc.secret import SecretShare
from sim.load import KeyRequestRecord
from sim.nodes import SimNode


@dataclass
class Observations:
    certified_at: dict[int, float] = field(default_factory=dict)
    epoch_info: dict[int, tuple[tuple[int, ...], int, str]] = field(default_factory=dict)
    run_failures: list[tuple[float, str, int, int, int, str]] = field(default_factory=list)
    membership_at: dict[int, float] = field(default_factory=dict)
    membership_certs: dict[int, set[bytes]] = field(default_factory=dict)
    """Distinct membership certificates honest nodes adopted, by epoch (one expected)."""
    corrupt_shares: dict[int, dict[int, SecretShare]] = field(default_factory=dict)
    requests: list[KeyRequestRecord] = field(default_factory=list)
    faults: list[tuple[str, float, float | None, str]] = field(default_factory=list)
    misbehaviour: int = 0
    rejected_inputs: int = 0
    rejected_from: dict[int, int] = field(default_factory=dict)
    """``rejected_inputs`` by the node that sent the rejected message."""
    dropped_down: int = 0
    undecodable: int = 0
    unencodable: int = 0
    """Messages a node could not put in an envelope (oversized): dropped at the sender."""
    messages: int = 0
    total_bytes: int = 0
    proposals_refused: int = 0
    mpks: set[bytes] = field(default_factory=set)
    link_burst: int = 0
    """The most bytes (each message with ``ENVELOPE_OVERHEAD``) one honest node sent to one
    other node within two consecutive Δ-aligned intervals, an upper bound on any Δ-long
    window: what a receiver's per-peer queue must hold (``kms.node.limits``)."""
    link_burst_at: tuple[float, int, int] | None = None
    """When and on which link (time, sender, receiver) ``link_burst`` was reached."""

    def record(self, node: SimNode, step: Step, now: float) -> list[bytes]:
        """What the world records of one driver step of ``node`` at ``now`` (its store has
        the step's records already). Returns the master public keys of the epochs the
        node switched to in this step, in order (the world pins the first it sees)."""
        mpks: list[bytes] = []
        for ev in step.records:
            if isinstance(ev, EpochSwitched):
                mpks.append(self._epoch(node, ev, now))
            elif isinstance(ev, LinkCertified) and not node.corrupt:
                epoch = ev.certificate.outcome.epoch
                self.membership_at.setdefault(epoch, now)
                self.membership_certs.setdefault(epoch, set()).add(ev.certificate.fingerprint())
        for other in step.events:
            if isinstance(other, MisbehaviourObserved):
                self.misbehaviour += 1
            elif isinstance(other, InputRejected):
                self.count_rejected(node, int(other.peer))
            elif isinstance(other, RunFailed):
                if not node.corrupt:
                    self.run_failures.append(
                        (now, other.kind, other.epoch, other.attempt, node.index, other.reason)
                    )
        return mpks

    def count_rejected(self, node: SimNode, sender: int) -> None:
        """``node`` refused a message from ``sender``."""
        node.rejected += 1
        self.rejected_inputs += 1
        self.rejected_from[sender] = self.rejected_from.get(sender, 0) + 1

    def _epoch(self, node: SimNode, ev: EpochSwitched, now: float) -> bytes:
        tr = ev.certificate.transcript
        committee = tuple(p.index for p in tr.committee)
        if not node.corrupt_in(ev.epoch):  # observed by a node honest in that epoch
            self.certified_at.setdefault(ev.epoch, now)
            self.epoch_info.setdefault(ev.epoch, (committee, tr.threshold, tr.kind))
            self.mpks.add(tr.mpk)
        if node.corrupt_in(ev.epoch):
            holders = self.corrupt_shares
            if ev.share is not None:
                holders.setdefault(ev.epoch, {})[node.index] = ev.share
            for e, share in sorted(node.store.retained().items()):
                holders.setdefault(e, {})[node.index] = share
        return tr.mpk
