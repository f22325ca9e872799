"""A membership decision window, sans-I/O.

Each member broadcasts one ``Ballot`` per window (its standing proposals and
approvals, and its lock if it has one) through the broadcast with agreement.
A window is self-contained: its outcome is a deterministic function of the
chain head and of the ballots this window's broadcast delivered, nothing else
(no tally is carried from window to window; members re-send their standing
intent instead).

At the window's end a member that was live through the window applies one
rule to the delivered ballots:

* if it already holds a lock (it signed an outcome earlier in this epoch), it
  re-sends that same partial and signs nothing else;
* otherwise, if the delivered ballots report exactly one locked outcome with a
  valid lock report (the reporter's partial verifies and ``t`` signed ballots
  of the outcome's window approve its proposal), it joins that outcome;
* if they report two or more, it abstains;
* if they report none, the first valid proposal with at least ``t`` approvals
  in this window's ballots, ordered operator changes before refresh and then
  by id, wins, and it signs it.

Signing is locking: an honest member signs at most one outcome per epoch
(``docs/protocols/membership.md``, "At most one outcome per epoch").
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
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
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G1
from mpc.membership.chain import ChainState
from mpc.membership.messages import (
    Ballot,
    LockReport,
    MembershipCertificate,
    MembershipOutcome,
    OutcomePartial,
    Proposal,
)
from mpc.secret import SecretShare
from mpc.sig import CTX_BROADCAST_DIGEST, SigningKey, VerifyKey

LIVE_GAP_FRACTION = 0.5
"""A member is live through a window when its process ran since before the window
started and its clock advanced in steps of at most this fraction of Δ until the
window's decision time. A member that was not live sends its ballot and re-sends a
lock it holds, but decides and signs nothing new in that window."""


class WindowPhase(enum.Enum):
    COLLECTING = "collecting"
    SIGNING = "signing"
    DECIDED = "decided"
    NO_DECISION = "no-decision"
    ABSTAINED = "abstained"
    FAILED = "failed"


TERMINAL_WINDOW_PHASES = frozenset(
    {WindowPhase.DECIDED, WindowPhase.NO_DECISION, WindowPhase.ABSTAINED, WindowPhase.FAILED}
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
    """Proposals and approvals delivered in one window (identical at live honest members).

    Built from one window's ballots only: it is never carried into the next window.
    """

    proposals: dict[bytes, Proposal] = field(default_factory=dict)
    approvals: dict[bytes, set[ParticipantIndex]] = field(default_factory=dict)

    def copy(self) -> Tally:
        return Tally(dict(self.proposals), {k: set(v) for k, v in self.approvals.items()})


@dataclass(frozen=True)
class OutcomeDecided:
    outcome: MembershipOutcome


@dataclass(frozen=True)
class OutcomeLocked:
    """This member signed ``report.outcome``: persist the lock before sending the partial.

    It is the one outcome this member signs in this epoch."""

    report: LockReport


@dataclass(frozen=True)
class MembershipCertified:
    certificate: MembershipCertificate


@dataclass(frozen=True)
class WindowClosed:
    """No proposal had ``t`` approvals (or this member abstained): the epoch continues."""

    window: int
    pending: tuple[bytes, ...]
    reason: str = "no proposal with t approvals"


@dataclass(frozen=True)
class WindowFailed:
    reason: str


WindowEvent = (
    Persist | OutcomeDecided | OutcomeLocked | MembershipCertified | WindowClosed | WindowFailed
)


def decide(tally: Tally, state: ChainState) -> Proposal | None:
    """The deterministic rule over one window's tally, for the epoch of ``state``."""
    candidates = []
    for pid, p in tally.proposals.items():
        if p.epoch != state.epoch or p.certificate_hash != state.head_hash:
            continue
        if state.apply(p.change) is None:
            continue
        if len(tally.approvals.get(pid, set())) >= state.threshold:
            candidates.append(p)
    return min(candidates, key=lambda p: p.order_key()) if candidates else None


def window_session(state: ChainState, window: int) -> bytes:
    """The broadcast session of ``window`` in the epoch whose chain head is ``state``'s."""
    return session_id(b"membership", state.head_hash, window.to_bytes(8, "big"))


def check_lock_report(
    state: ChainState,
    report: LockReport,
    *,
    reshare_start_of: Callable[[int], int] | None = None,
    before: int | None = None,
) -> None:
    """Check a lock report against the chain head alone; raises ``RemoteProtocolError``.

    Valid when the outcome is for this epoch and head and its change is valid, the
    reporter's partial verifies under its public share, and ``t`` distinct members'
    ballots of the outcome's window, signed through the broadcast digest and carrying
    no lock themselves, approve the outcome's proposal.
    """
    out = report.outcome
    signer = ParticipantIndex(report.signer)
    if out.epoch != state.epoch or out.proposal.epoch != state.epoch:
        raise RemoteProtocolError("lock report for another epoch", [signer])
    if (
        out.previous_certificate_hash != state.head_hash
        or out.proposal.certificate_hash != state.head_hash
    ):
        raise RemoteProtocolError("lock report for another chain head", [signer])
    if before is not None and out.window >= before:
        raise RemoteProtocolError("lock report from a later window", [signer])
    if reshare_start_of is not None and out.reshare_start != reshare_start_of(out.window):
        raise RemoteProtocolError("lock report names another reshare start", [signer])
    if state.apply(out.proposal.change) is None:
        raise RemoteProtocolError("locked change is invalid for the committee", [signer])
    public = state.public_shares.get(signer)
    try:
        sig = G1.from_bytes(report.signature)
    except InvalidEncoding as exc:
        raise RemoteProtocolError("malformed partial in a lock report", [signer]) from exc
    if public is None or not verify_cert_signature(out.encode(), sig, public):
        raise RemoteProtocolError("lock report partial does not verify", [signer])
    keys: dict[ParticipantIndex, VerifyKey] = {
        ParticipantIndex(p.index): p.verify_key() for p in state.committee.members
    }
    session = window_session(state, out.window)
    pid = out.proposal.id()
    approvers: set[int] = set()
    for payload in report.proof:
        h = payload.header
        sender = ParticipantIndex(h.sender)
        key = keys.get(sender)
        if key is None or h.session != session or sender in approvers:
            raise RemoteProtocolError("lock proof: ballot of another window or member", [signer])
        if hashlib.sha256(payload.payload).digest() != h.digest:
            raise RemoteProtocolError("lock proof: payload does not match its digest", [signer])
        try:
            key.verify(CTX_BROADCAST_DIGEST, h.statement(), h.signature)
            ballot = Ballot.decode(payload.payload)
        except (InvalidSignature, InvalidEncoding) as exc:
            raise RemoteProtocolError(f"lock proof: bad ballot: {exc}", [signer]) from exc
        if (
            ballot.member != sender
            or ballot.epoch != state.epoch
            or ballot.window != out.window
            or ballot.lock is not None
            or pid not in ballot.approvals
        ):
            raise RemoteProtocolError("lock proof: ballot does not approve the outcome", [signer])
        approvers.add(sender)
    if len(approvers) < state.threshold:
        raise RemoteProtocolError("lock proof: fewer than t approvals", [signer])


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
        proposals: Sequence[Proposal] = (),
        approvals: Sequence[bytes] = (),
        persisted: Mapping[str, bytes] | None = None,
        lock: LockReport | None = None,
        live_since: float = float("-inf"),
        reshare_start_of: Callable[[int], int] | None = None,
    ) -> None:
        if state.pending is not None:
            raise LocalProtocolError("a change is already certified in this epoch")
        self.state = state
        self.window = window
        self.schedule = schedule
        self.me = me
        self.tally = Tally()
        self._share = share
        self._persisted = dict(persisted or {})
        members = {ParticipantIndex(p.index): p.verify_key() for p in state.committee.members}
        if me not in members:
            raise LocalProtocolError("only members take part in decision windows")
        self._f = state.threshold - 1
        cfg = BroadcastConfig(
            session=window_session(state, window),
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
        if lock is not None and (
            lock.signer != int(me)
            or lock.outcome.epoch != state.epoch
            or lock.outcome.previous_certificate_hash != state.head_hash
        ):
            raise LocalProtocolError("the lock is not this member's lock for this epoch")
        self.lock = lock
        self._live = live_since <= schedule.start
        self._gap = LIVE_GAP_FRACTION * schedule.delta
        self._reshare_start_of = reshare_start_of
        self._outcome: MembershipOutcome | None = None
        self._partials: dict[ParticipantIndex, G1] = {}
        self._early: dict[ParticipantIndex, OutcomePartial] = {}
        """Partials that arrived before this member decided: the first from each member, so
        that one member's flood cannot crowd out the others' (at most n kept)."""
        self.certificate: MembershipCertificate | None = None
        self.reports: dict[ParticipantIndex, LockReport] = {}
        """Valid lock reports delivered in this window, by reporter."""

    @property
    def phase(self) -> WindowPhase:
        return self._phase

    @property
    def outcome(self) -> MembershipOutcome | None:
        return self._outcome

    @property
    def live(self) -> bool:
        """Whether this member has been live through the window so far."""
        return self._live

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
        s = self.schedule
        if self._now == float("-inf") and now > s.start + self._gap:
            self._live = False  # this process started after the window began
        if (
            self._now > float("-inf")
            and now - self._now > self._gap
            and now > s.start
            and self._now < s.end(self._f)
        ):
            self._live = False  # a gap in this member's clock inside the window: a pause
        self._now = now
        self._round.advance_time(now)
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
                self.state.epoch,
                self.window,
                int(self.me),
                self._my_proposals,
                self._my_approvals,
                self.lock,
            )
            payload = self._round.make_payload(ballot.encode())
            self._events.append(Persist("ballot", payload.encode()))
        self._round.send(payload, self._now)

    def _delivered(self) -> dict[ParticipantIndex, tuple[Ballot, BroadcastPayload]]:
        out: dict[ParticipantIndex, tuple[Ballot, BroadcastPayload]] = {}
        for member, slot in self._round.outcome().items():
            if slot.status is not SlotStatus.DELIVERED or slot.header is None:
                continue  # a missing or equivocated ballot counts for nothing
            try:
                ballot = Ballot.decode(slot.payload or b"")
                if (
                    ballot.member != member
                    or ballot.epoch != self.state.epoch
                    or ballot.window != self.window
                ):
                    raise MessageDecodeError("ballot for another member, epoch or window")
            except InvalidEncoding:
                continue
            if ballot.lock is not None:
                if ballot.lock.signer != int(member):
                    continue  # a lock report is the sender's own: anything else counts for nothing
                try:
                    check_lock_report(
                        self.state,
                        ballot.lock,
                        reshare_start_of=self._reshare_start_of,
                        before=self.window,
                    )
                except RemoteProtocolError:
                    continue  # an invalid report (only corrupt members send one): the ballot is void
                self.reports[member] = ballot.lock
            out[member] = (ballot, BroadcastPayload(slot.header, slot.payload or b""))
        return out

    def _decide(self) -> None:
        delivered = self._delivered()
        for member, (ballot, _) in sorted(delivered.items()):
            for p in ballot.proposals:
                if p.proposer == member:
                    self.tally.proposals.setdefault(p.id(), p)
            for pid in ballot.approvals:
                self.tally.approvals.setdefault(pid, set()).add(member)
        locked = {r.outcome for r in self.reports.values()}
        proof: tuple[BroadcastPayload, ...] = ()
        if self.lock is not None:
            # Locked: the same outcome and the same partial, whatever this window says.
            outcome = self.lock.outcome
        elif not self._live:
            self._close(WindowPhase.ABSTAINED, "not live through the window: nothing signed")
            return
        elif len(locked) > 1:
            self._close(WindowPhase.ABSTAINED, "ballots report different locked outcomes")
            return
        elif len(locked) == 1:
            report = next(iter(self.reports.values()))
            outcome, proof = report.outcome, report.proof
        else:
            winner = decide(self.tally, self.state)
            if winner is None:
                self._close(WindowPhase.NO_DECISION, "no proposal with t approvals")
                return
            start = int(self.schedule.sign_end(self._f) + self.schedule.reshare_delay)
            outcome = MembershipOutcome(
                self.state.epoch, self.window, self.state.head_hash, winner, start
            )
            wid = winner.id()
            proof = tuple(
                payload
                for member, (ballot, payload) in sorted(delivered.items())
                if wid in ballot.approvals
            )[: self.state.threshold]
        self._outcome = outcome
        self._events.append(OutcomeDecided(outcome))
        self._phase = WindowPhase.SIGNING
        if self._share is not None:
            if self.lock is None:
                sig = sign_partial(self._share, outcome.encode())
                self.lock = LockReport(outcome, int(self.me), sig.to_bytes(), proof)
                self._events.append(OutcomeLocked(self.lock))
            partial = OutcomePartial(int(self.me), outcome.fingerprint(), self.lock.signature)
            self._partials[self.me] = G1.from_bytes(partial.signature)
            for i in self.state.committee.indices:
                if i != self.me:
                    self._outbox.append(Outbound(i, partial))
        fp = outcome.fingerprint()
        for reporter, r in self.reports.items():
            if r.outcome.fingerprint() == fp:
                self._partials.setdefault(reporter, G1.from_bytes(r.signature))
        for peer, msg in sorted(self._early.items()):
            try:
                self._receive_partial(peer, msg)
            except RemoteProtocolError:
                pass
        self._early.clear()
        self._try_certify()

    def _close(self, phase: WindowPhase, reason: str) -> None:
        self._phase = phase
        self._events.append(WindowClosed(self.window, tuple(sorted(self.tally.proposals)), reason))

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
