"""Who holds a share of the current epoch, and the old shares kept until it is safe.

Every member that gets a share of a new epoch says so to the old and new
members with a signed ``Acknowledgement``. ``ShareHolders`` keeps:

* the verified acknowledgements of the current epoch (the *share holders*,
  persisted under ``ACK_RUN_LABEL`` + the certificate hash): a certified epoch
  in which this member knows fewer than ``t`` holders ``HOLDERS_GRACE_DELTAS`` Δ
  after it became ready is reported once;
* old shares retained after a reshare, each with a ``RetentionTracker``: a
  retained share may be deleted once ``min(n', 2t'-1)`` new members have
  acknowledged the new epoch (``RetainedShareDeletable``);
* acknowledgements of the next epoch that arrive before it is certified here
  (a few per member, ``EARLY_ACKS_PER_MEMBER``), taken once it is;
* the members of the epoch before (they are told of this member's share too).

The node core decides when the epoch switches and persists what this module
says is new.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from mpc.cert import EpochCertificate
from mpc.dkg.messages import Participant
from mpc.errors import InvalidSignature, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.membership import ChainState
from mpc.reshare import Acknowledgement, RetentionTracker
from mpc.secret import SecretShare

HOLDERS_GRACE_DELTAS = 10
"""A certified epoch in which this node knows fewer than ``t`` share holders this many Δ
after it became ready here is reported (``NodeStatus.share_holders_below_threshold``)."""
EARLY_ACKS_PER_MEMBER = 4
"""Acknowledgements of an epoch not certified here yet, kept per member."""
ACK_RUN_LABEL = b"acks"
"""Run id prefix of the acknowledgements this node received for one epoch certificate."""


def ack_run(cert: EpochCertificate) -> bytes:
    """The store run of the acknowledgements of ``cert``'s epoch."""
    return ACK_RUN_LABEL + cert.hash()


class ShareHolders:
    """Acknowledgements of the current epoch, retained old shares and their trackers."""

    def __init__(self, retained: Mapping[int, SecretShare]) -> None:
        self.retained: dict[int, SecretShare] = dict(retained)
        """Old shares kept after a reshare, by epoch."""
        self.trackers: dict[int, RetentionTracker] = {}
        """What each retained share waits for (by the retained share's epoch)."""
        self.early: deque[tuple[ParticipantIndex, Acknowledgement]] = deque(maxlen=1024)
        """Acknowledgements of an epoch not certified here yet."""
        self.previous_members: set[ParticipantIndex] = set()
        self.holders: dict[ParticipantIndex, Acknowledgement] = {}
        """Members known to hold a share of the current epoch (verified acknowledgements)."""
        self.since: float | None = None
        self.reported = -1
        """The last epoch whose holders were checked against the threshold."""

    def new_epoch(self, previous_members: set[ParticipantIndex]) -> None:
        """The head's epoch changed: its holders are learned anew."""
        self.holders = {}
        self.since = None
        self.previous_members = previous_members

    def retain(
        self,
        epoch: int,
        share: SecretShare,
        cert: EpochCertificate,
        participants: Mapping[ParticipantIndex, Participant],
    ) -> None:
        """Keep the share of ``epoch`` until enough members acknowledge ``cert`` (the next)."""
        self.retained[epoch] = share
        self.track(epoch, cert, participants)

    def track(
        self,
        epoch: int,
        cert: EpochCertificate,
        participants: Mapping[ParticipantIndex, Participant],
    ) -> None:
        self.trackers[epoch] = RetentionTracker(
            cert, {i: p.verify_key() for i, p in participants.items()}
        )

    def drop(self, epoch: int) -> None:
        self.retained.pop(epoch, None)
        self.trackers.pop(epoch, None)

    def keep_early(
        self, peer: ParticipantIndex, ack: Acknowledgement, st: ChainState | None
    ) -> None:
        """An acknowledgement of an epoch not certified here yet: keep a few for later, a
        handful per member and only for the next epoch, so that one member cannot push the
        others' out."""
        if st is not None and ack.epoch > st.epoch + 1:
            raise RemoteProtocolError("acknowledgement for an epoch too far ahead", [peer])
        if sum(1 for p, _ in self.early if p == peer) >= EARLY_ACKS_PER_MEMBER:
            raise RemoteProtocolError("too many early acknowledgements", [peer])
        self.early.append((peer, ack))

    def early_due(self, state: ChainState) -> list[tuple[ParticipantIndex, Acknowledgement]]:
        """The early acknowledgements ``state``'s epoch makes current (the rest stay)."""
        early, self.early = list(self.early), deque(maxlen=1024)
        due = []
        for peer, ack in early:
            if ack.epoch > state.epoch:
                self.early.append((peer, ack))
                continue
            due.append((peer, ack))
        return due

    def take(self, peer: ParticipantIndex, ack: Acknowledgement, st: ChainState) -> bool:
        """An acknowledgement: who holds a share of ``st``'s epoch, and what a retained old
        share waits for. Returns whether it names a new holder (to persist)."""
        idx = ParticipantIndex(ack.index)
        new = False
        if ack.epoch == st.epoch and idx not in self.holders:
            member = next((p for p in st.committee.members if p.index == ack.index), None)
            if member is None or ack.certificate_hash != st.certificate.hash():
                raise RemoteProtocolError(
                    "acknowledgement for another certificate or from a non-member", [peer]
                )
            try:
                ack.verify(member.verify_key())
            except InvalidSignature as exc:
                raise RemoteProtocolError("bad acknowledgement signature", [peer]) from exc
            self.holders[idx] = ack
            new = True
        tracker = self.trackers.get(ack.epoch - 1)
        if tracker is not None:
            tracker.add(ack, peer)
        return new

    def due(self, now: float, ready_at: float, delta: float) -> bool:
        """Whether the grace period for learning who holds shares of this epoch is over
        (``ready_at``: when the epoch became ready here)."""
        if self.since is None:
            self.since = now
        start = max(ready_at, self.since)
        return now >= start + HOLDERS_GRACE_DELTAS * delta

    def deletable(self) -> list[int]:
        """Retained shares whose new epoch enough members acknowledged: dropped here."""
        out = []
        for epoch, tracker in list(self.trackers.items()):
            if tracker.status().deletable and epoch in self.retained:
                del self.retained[epoch]
                del self.trackers[epoch]
                out.append(epoch)
        return out

    def missing(self) -> tuple[tuple[int, tuple[ParticipantIndex, ...]], ...]:
        """Status: (epoch, indices whose acknowledgement is missing) per retained share."""
        return tuple(
            (e, self.trackers[e].status().missing if e in self.trackers else ())
            for e in sorted(self.retained)
        )
