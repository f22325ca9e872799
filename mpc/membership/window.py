"""A membership decision window, sans-I/O.

Each member broadcasts one ``Ballot`` per window (new proposals and its
approvals) through the broadcast with agreement. At the window's end every
honest member holds the same ballots and applies one deterministic rule over
everything decided so far in the epoch: the first valid proposal, ordered
operator changes before refresh and then by id, with at least ``t``
approvals, wins. Members sign the outcome with their shares under the
certificate tag; ``t`` signatures make the membership certificate. Honest
members sign one outcome per window and corrupt ones are fewer than ``t``, so
at most one outcome is certified. Nothing winning means the epoch continues
and the next window decides; approvals carry over, so nothing is stuck.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mpc.broadcast import (
    BroadcastConfig,
    BroadcastPayload,
    BroadcastRound,
    DigestRelay,
    Outbound,
    PullRequest,
    SlotStatus,
    session_id,
)
from mpc.cert import combine_partials, sign_partial, verify_cert_signature
from mpc.codec import Message, MessageDecodeError
from mpc.dkg.session import Persist
from mpc.errors import InvalidEncoding, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G1
from mpc.membership.chain import ChainState, apply_change
from mpc.membership.messages import (
    Ballot,
    MembershipCertificate,
    MembershipOutcome,
    OutcomePartial,
    Proposal,
)
from mpc.secret import SecretShare
from mpc.sig import SigningKey


class WindowPhase(enum.Enum):
    COLLECTING = "collecting"
    SIGNING = "signing"
    DECIDED = "decided"
    NO_DECISION = "no-decision"
    FAILED = "failed"


TERMINAL_WINDOW_PHASES = frozenset(
    {WindowPhase.DECIDED, WindowPhase.NO_DECISION, WindowPhase.FAILED}
)


@dataclass(frozen=True)
class WindowSchedule:
    start: float
    window: float
    delta: float
    sign_window: float
    reshare_delay: float

    @property
    def cutoff(self) -> float:
        return self.start + self.window

    def end(self, f: int) -> float:
        return self.cutoff + (f + 1) * self.delta

    def sign_end(self, f: int) -> float:
        return self.end(f) + self.sign_window


@dataclass
class Tally:
    """Proposals and approvals seen so far in one epoch (identical at honest members)."""

    proposals: dict[bytes, Proposal] = field(default_factory=dict)
    approvals: dict[bytes, set[ParticipantIndex]] = field(default_factory=dict)

    def copy(self) -> Tally:
        return Tally(dict(self.proposals), {k: set(v) for k, v in self.approvals.items()})


@dataclass(frozen=True)
class OutcomeDecided:
    outcome: MembershipOutcome


@dataclass(frozen=True)
class MembershipCertified:
    certificate: MembershipCertificate


@dataclass(frozen=True)
class WindowClosed:
    """No proposal had ``t`` approvals: the epoch continues."""

    window: int
    pending: tuple[bytes, ...]


@dataclass(frozen=True)
class WindowFailed:
    reason: str


WindowEvent = Persist | OutcomeDecided | MembershipCertified | WindowClosed | WindowFailed


def decide(tally: Tally, state: ChainState) -> Proposal | None:
    """The deterministic rule over a tally, for the epoch of ``state``."""
    candidates = []
    for pid, p in tally.proposals.items():
        if p.epoch != state.epoch or p.certificate_hash != state.head_hash:
            continue
        if apply_change(state.committee, p.change) is None:
            continue
        if len(tally.approvals.get(pid, set())) >= state.threshold:
            candidates.append(p)
    return min(candidates, key=lambda p: p.order_key()) if candidates else None


class DecisionWindow:
    """One member's view of one decision window of one epoch."""

    def __init__(
        self,
        state: ChainState,
        window: int,
        schedule: WindowSchedule,
        me: ParticipantIndex,
        identity_key: SigningKey,
        share: SecretShare | None,
        *,
        tally: Tally | None = None,
        proposals: Sequence[Proposal] = (),
        approvals: Sequence[bytes] = (),
        persisted: Mapping[str, bytes] | None = None,
    ) -> None:
        if state.pending is not None:
            raise LocalProtocolError("a change is already certified in this epoch")
        self.state = state
        self.window = window
        self.schedule = schedule
        self.me = me
        self.tally = tally.copy() if tally else Tally()
        self._share = share
        self._persisted = dict(persisted or {})
        members = {ParticipantIndex(p.index): p.verify_key() for p in state.committee.members}
        if me not in members:
            raise LocalProtocolError("only members take part in decision windows")
        self._f = state.threshold - 1
        cfg = BroadcastConfig(
            session=session_id(b"membership", state.head_hash, window.to_bytes(8, "big")),
            senders=members,
            relayers=members,
            me=me,
            f=self._f,
            delta=schedule.delta,
            cutoff=schedule.cutoff,
        )
        self._round = BroadcastRound(cfg, identity_key)
        self._key = identity_key
        self._outbox: list[Outbound] = []
        self._events: list[WindowEvent] = []
        self._phase = WindowPhase.COLLECTING
        self._now = float("-inf")
        self._sent = False
        self._my_proposals = tuple(sorted(proposals, key=lambda p: p.id()))
        self._my_approvals = tuple(sorted(set(approvals)))
        self._outcome: MembershipOutcome | None = None
        self._partials: dict[ParticipantIndex, G1] = {}
        self._early: dict[ParticipantIndex, OutcomePartial] = {}
        """Partials that arrived before this member decided: the first from each member, so
        that one member's flood cannot crowd out the others' (at most n kept)."""
        self.certificate: MembershipCertificate | None = None

    @property
    def phase(self) -> WindowPhase:
        return self._phase

    @property
    def outcome(self) -> MembershipOutcome | None:
        return self._outcome

    def session_ids(self) -> frozenset[bytes]:
        return frozenset({self._round.config.session})

    def messages_to_send(self) -> list[Outbound]:
        self._outbox.extend(self._round.messages_to_send())
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[WindowEvent]:
        out, self._events = self._events, []
        return out

    def receive(self, peer: ParticipantIndex, message: Message, now: float) -> None:
        self.advance_time(now)
        if self._phase in TERMINAL_WINDOW_PHASES:
            return
        if isinstance(message, OutcomePartial):
            self._receive_partial(peer, message)
        elif isinstance(message, BroadcastPayload | DigestRelay | PullRequest):
            self._round.receive(peer, message, now)
        else:
            raise RemoteProtocolError(f"unexpected message {type(message).__name__}", [peer])

    def advance_time(self, now: float) -> None:
        if now < self._now:
            return
        self._now = now
        self._round.advance_time(now)
        s = self.schedule
        if not self._sent and s.start <= now <= s.cutoff:
            self._send_ballot()
        if self._phase is WindowPhase.COLLECTING and now >= s.end(self._f):
            self._decide()
        if self._phase is WindowPhase.SIGNING and now >= s.sign_end(self._f):
            self._phase = WindowPhase.FAILED
            self._events.append(WindowFailed("too few signatures on the outcome by the deadline"))

    def _send_ballot(self) -> None:
        self._sent = True
        saved = self._persisted.get("ballot")
        if saved is not None:
            payload = BroadcastPayload.decode(saved)
        else:
            ballot = Ballot(
                self.state.epoch, self.window, int(self.me), self._my_proposals, self._my_approvals
            )
            payload = self._round.make_payload(ballot.encode())
            self._events.append(Persist("ballot", payload.encode()))
        self._round.send(payload, self._now)

    def _decide(self) -> None:
        for member, outcome in self._round.outcome().items():
            if outcome.status is not SlotStatus.DELIVERED:
                continue  # a missing or equivocated ballot counts for nothing
            try:
                ballot = Ballot.decode(outcome.payload or b"")
                if (
                    ballot.member != member
                    or ballot.epoch != self.state.epoch
                    or ballot.window != self.window
                ):
                    raise MessageDecodeError("ballot for another member, epoch or window")
            except InvalidEncoding:
                continue
            for p in ballot.proposals:
                if p.proposer == member:
                    self.tally.proposals.setdefault(p.id(), p)
            for pid in ballot.approvals:
                self.tally.approvals.setdefault(pid, set()).add(member)
        winner = decide(self.tally, self.state)
        if winner is None:
            pending = tuple(sorted(self.tally.proposals))
            self._phase = WindowPhase.NO_DECISION
            self._events.append(WindowClosed(self.window, pending))
            return
        start = int(self.schedule.sign_end(self._f) + self.schedule.reshare_delay)
        self._outcome = MembershipOutcome(
            self.state.epoch, self.window, self.state.head_hash, winner, start
        )
        self._events.append(OutcomeDecided(self._outcome))
        self._phase = WindowPhase.SIGNING
        if self._share is not None:
            saved = self._persisted.get("outcome-partial")
            if saved is not None:
                partial = OutcomePartial.decode(saved)
            else:
                sig = sign_partial(self._share, self._outcome.encode())
                partial = OutcomePartial(int(self.me), self._outcome.fingerprint(), sig.to_bytes())
                self._events.append(Persist("outcome-partial", partial.encode()))
            self._partials[self.me] = G1.from_bytes(partial.signature)
            for i in self.state.committee.indices:
                if i != self.me:
                    self._outbox.append(Outbound(i, partial))
        for peer, msg in sorted(self._early.items()):
            try:
                self._receive_partial(peer, msg)
            except RemoteProtocolError:
                pass
        self._early.clear()
        self._try_certify()

    def _receive_partial(self, peer: ParticipantIndex, msg: OutcomePartial) -> None:
        if msg.signer != peer or peer not in self.state.public_shares:
            raise RemoteProtocolError("outcome partial from a non-member", [peer])
        if self._outcome is None:
            self._early.setdefault(peer, msg)
            return
        if msg.outcome_hash != self._outcome.fingerprint():
            raise RemoteProtocolError("partial signature over another outcome", [peer])
        if peer in self._partials:
            return
        try:
            sig = G1.from_bytes(msg.signature)
        except InvalidEncoding as exc:
            raise RemoteProtocolError("malformed outcome partial", [peer]) from exc
        if not verify_cert_signature(self._outcome.encode(), sig, self.state.public_shares[peer]):
            raise RemoteProtocolError("outcome partial does not verify", [peer])
        self._partials[peer] = sig
        self._try_certify()

    def _try_certify(self) -> None:
        if self._outcome is None or self._phase is not WindowPhase.SIGNING:
            return
        if len(self._partials) < self.state.threshold:
            return
        sig = combine_partials(
            self._outcome.encode(),
            self._partials,
            self.state.public_shares,
            self.state.threshold,
            self.state.mpk,
        )
        self.certificate = MembershipCertificate(self._outcome, sig.to_bytes())
        self._events.append(MembershipCertified(self.certificate))
        self._phase = WindowPhase.DECIDED
