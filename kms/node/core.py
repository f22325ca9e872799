"""The sans-I/O KMS node: epochs, which protocol runs, what to send and what to persist.

``NodeCore`` holds one member's view of the committee. Time and messages go
in (``advance_time``, ``receive``, and the operator's ``propose`` /
``approve``); messages (``messages_to_send``) and events (``events``) come
out. It never touches a socket, a clock or a disk: ``kms.node.service`` does,
and must store every ``StoreRecord`` and ``EpochSwitched`` event before it
sends the messages produced in the same step.

Lifecycle:

* **Genesis**: members of the configured genesis committee run the DKG at
  the configured start time; a failed attempt is followed by the next one at
  the deadline the failed one fixes.
* **Decision windows** every ``window_period`` seconds on a grid anchored at
  genesis: members broadcast ballots (the operator's proposals and
  approvals, plus automatic ones below); a certified outcome starts a reshare
  at the time it names; one reshare per epoch.
* **Refresh**: scheduled every ``refresh_interval`` (0: never), proposed by
  the member at position ``window mod n`` and approved by every member in
  the same window; a member that lacks a share for the current epoch
  proposes a refresh itself (prompt refresh); members approve any refresh.
* **Old shares** are retained until ``min(n', 2t'-1)`` new members have
  acknowledged the new epoch, then ``RetainedShareDeletable`` is emitted.
* **Run records** are erased (``EraseRecords``): a run's key seed as soon as
  the run ends, done or failed; everything else a run recorded (deals,
  dealt polynomial, new share) once an epoch certificate for that epoch or a
  later one is adopted (and, for this node's own run, its share stored).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from mpc import hpke
from mpc.broadcast import BroadcastPayload, DigestRelay, Outbound, PullRequest
from mpc.cert import ZERO_HASH, EpochCertificate
from mpc.codec import Message, MessageDecodeError
from mpc.dkg import (
    CertificateCompleted,
    DealerExcluded,
    Persist,
    Phase,
    ResponderEquivocated,
    Schedule,
    SharingConfig,
    SharingFailed,
    SharingSession,
)
from mpc.dkg.messages import CertificatePartial, Participant
from mpc.dkg.session import RUN_KEY_RECORD
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import (
    AddMember,
    ChainError,
    ChainState,
    ChangeAdmissionPolicy,
    DecisionWindow,
    MembershipCertificate,
    MembershipCertified,
    Proposal,
    Refresh,
    Tally,
    WindowPhase,
    WindowSchedule,
    apply_change,
    extend,
    genesis_state,
    verify_chain_epochs,
)
from mpc.membership.messages import ChainRequest, ChainUpdate, Change, OutcomePartial
from mpc.reshare import Acknowledgement, RetentionTracker
from mpc.secret import RNG, SecretShare
from mpc.sig import SigningKey

MAX_EARLY_MESSAGES = 4096
MAX_RESHARE_RUNS = 16
"""Reshare configurations kept for judging evidence (the most recent runs)."""
CHAIN_RETRY_DELTAS = 20
"""A node without a chain asks for it again every this many Δ."""
MAX_RUN_RECORDS = 64
"""Runs this process started whose records are still to be erased (the oldest erased first)."""


def run_key_records(run: bytes) -> bytes:
    """The store run under which a sharing run's key seed is kept, so that it can be
    erased alone, when the run ends, while the run's other records wait for the epoch."""
    return b"run-key/" + run


Link = EpochCertificate | MembershipCertificate


# --- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    """What every member must configure identically, plus this node's index."""

    index: ParticipantIndex
    genesis: tuple[Participant, ...]
    threshold: int
    genesis_start: float
    delta: float
    window_period: float = 60.0
    window_length: float = 5.0
    refresh_interval: float = 0.0
    admission_policy_hash: bytes = ZERO_HASH
    admission_policy: bytes = b""
    """The genesis node admission policy (its SHA-256 is ``admission_policy_hash``)."""

    def __post_init__(self) -> None:
        if self.window_length <= 0 or self.window_period <= 0:
            raise LocalProtocolError("window length and period must be positive")

    def genesis_schedule(self, attempt: int) -> Schedule:
        s = Schedule.default(
            self.genesis_start, len(self.genesis), self.threshold, delta=self.delta
        )
        for _ in range(attempt):
            s = s.next_attempt()
        return s

    def reshare_schedule(self, start: float, n: int, t: int, attempt: int) -> Schedule:
        s = Schedule.default(start, n, t, delta=self.delta)
        for _ in range(attempt):
            s = s.next_attempt()
        return s

    def window_schedule(self, window: int, reshare_delay: float) -> WindowSchedule:
        return WindowSchedule(
            start=self.genesis_start + window * self.window_period,
            window=self.window_length,
            delta=self.delta,
            sign_window=3 * self.delta,
            reshare_delay=reshare_delay,
        )


# --- checking operator changes ---------------------------------------------------


class ChangeRefused(LocalProtocolError):
    """This node will not propose or approve a change; ``reason`` is a stable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ChangeContext:
    """What a change is judged against: the verified chain and this node's clock."""

    state: ChainState
    chain: tuple[EpochCertificate | MembershipCertificate, ...]
    now: float
    admission_policy: bytes | None
    """The committee-certified node admission policy, when this node knows its bytes."""
    reshare_runs: Mapping[bytes, SharingConfig] = field(default_factory=dict)
    """The configurations of the reshare runs this node took part in, by run id: what
    evidence of a dealer's wrong constant term is judged against."""


ChangeCheck = Callable[[ChangeContext, Change], None]
"""Raises ``ChangeRefused`` for a change this node must not propose or approve."""


# --- events -------------------------------------------------------------------


@dataclass(frozen=True)
class StoreRecord:
    """Persist before sending: ``data`` under ``(run, key)``, sealed when ``secret``."""

    run: bytes
    key: str
    data: bytes = field(repr=False)
    secret: bool


@dataclass(frozen=True)
class EraseRecords:
    """Delete, and overwrite, every record stored under ``run``: after this nothing the
    run recorded (its key seed, deals, dealt polynomial or new share) is left."""

    run: bytes


@dataclass(frozen=True)
class EpochSwitched:
    """A new epoch is certified: store it (one transaction), then serve it."""

    epoch: int
    certificate: EpochCertificate
    share: SecretShare | None
    state: ChainState


@dataclass(frozen=True)
class LinkCertified:
    """A membership certificate joined the chain: store it."""

    certificate: MembershipCertificate


@dataclass(frozen=True)
class RetainedShareDeletable:
    epoch: int


@dataclass(frozen=True)
class MisbehaviourObserved:
    culprit: ParticipantIndex
    reason: str
    evidence: Message | None = None


@dataclass(frozen=True)
class InputRejected:
    peer: ParticipantIndex
    reason: str


@dataclass(frozen=True)
class ApprovalRefused:
    """A proposal the operator approved failed this node's checks: no approval is sent."""

    proposal_id: bytes
    reason: str
    detail: str


@dataclass(frozen=True)
class RunFailed:
    kind: str
    epoch: int
    attempt: int
    reason: str


NodeEvent = (
    StoreRecord
    | EraseRecords
    | EpochSwitched
    | LinkCertified
    | RetainedShareDeletable
    | MisbehaviourObserved
    | InputRejected
    | ApprovalRefused
    | RunFailed
)


@dataclass(frozen=True)
class Restored:
    """What a node had on disk: its chain, its current share, retained shares and run records."""

    chain: tuple[Link, ...] = ()
    share: SecretShare | None = None
    retained: Mapping[int, SecretShare] = field(default_factory=dict)
    records: Callable[[bytes], Mapping[str, bytes]] = lambda run: {}


@dataclass(frozen=True)
class NodeStatus:
    epoch: int | None
    threshold: int | None
    committee: tuple[ParticipantIndex, ...]
    mpk: bytes | None
    has_share: bool
    running: str | None
    """``"dkg"``, ``"reshare"`` or ``None``."""
    pending: tuple[tuple[str, str, int], ...]
    """Pending proposals: (id hex, kind, approvals)."""
    retained: tuple[tuple[int, tuple[ParticipantIndex, ...]], ...]
    """Retained old shares: (epoch, indices whose acknowledgement is missing)."""
    last_refresh: float | None
    refused: tuple[tuple[str, str], ...] = ()
    """Approvals this node refused after checking the proposal: (id hex, reason)."""
    waiting: tuple[str, ...] = ()
    """Approved proposal ids not seen yet (checked and sent once they are)."""


# --- the node -----------------------------------------------------------------


class NodeCore:
    """One KMS node's protocol state."""

    def __init__(
        self,
        config: NodeConfig,
        identity_key: SigningKey,
        dkg_key: hpke.PrivateKey,
        *,
        rng: RNG,
        restored: Restored | None = None,
        check: ChangeCheck | None = None,
    ) -> None:
        self.config = config
        self._check = check
        self._deferred: set[bytes] = set()
        self._refused: dict[bytes, tuple[str, str]] = {}
        self.me = config.index
        self._key = identity_key
        self._dkg_key = dkg_key
        self._rng = rng
        restored = restored or Restored()
        self._records = restored.records
        self._now = float("-inf")
        self._outbox: list[Outbound] = []
        self._events: list[NodeEvent] = []
        self._early: deque[tuple[ParticipantIndex, Message]] = deque(maxlen=MAX_EARLY_MESSAGES)
        self.chain: list[Link] = []
        self._reshare_runs: dict[bytes, SharingConfig] = {}
        self._epoch_states: tuple[int, dict[int, ChainState]] = (0, {})
        self.state: ChainState | None = None
        self.share: SecretShare | None = restored.share
        self._retained: dict[int, SecretShare] = dict(restored.retained)
        self._trackers: dict[int, RetentionTracker] = {}
        self._early_acks: deque[tuple[ParticipantIndex, Acknowledgement]] = deque(maxlen=1024)
        self._previous_members: set[ParticipantIndex] = set()
        self._asked_chain = False
        self._asked_chain_at = float("-inf")
        self.addresses: dict[ParticipantIndex, tuple[str, ...]] = {}
        """Addresses of members admitted by certified changes (for the transport)."""
        self._run: SharingSession | None = None
        self._runs: dict[bytes, int] = {}
        """Sharing runs started here whose records are not erased yet: run id → epoch."""
        self._erase: list[bytes] = []
        self._run_attempt = 0
        self._window: DecisionWindow | None = None
        self._window_index = -1
        self._tally = Tally()
        self._my_proposals: dict[bytes, Proposal] = {}
        self._my_approvals: set[bytes] = set()
        self._epoch_ready_at: float | None = None
        self.last_refresh: float | None = None
        self._participants: dict[ParticipantIndex, Participant] = {
            ParticipantIndex(p.index): p for p in config.genesis
        }
        if restored.chain:
            self._restore_chain(list(restored.chain))

    # --- restoring -------------------------------------------------------------

    def _restore_chain(self, links: list[Link]) -> None:
        first = links[0]
        if not isinstance(first, EpochCertificate):
            raise LocalProtocolError("stored chain does not start with the genesis certificate")
        self._check_genesis(first)
        state = genesis_state(self._mpk_of(first), first)
        for link in links[1:]:
            state = extend(state, link)
        self.chain = links
        self._set_state(state)

    def _mpk_of(self, cert: EpochCertificate) -> G2:
        return G2.from_bytes(cert.transcript.mpk)

    def _check_genesis(self, cert: EpochCertificate) -> None:
        tr = cert.transcript
        if tr.committee != self.config.genesis or tr.threshold != self.config.threshold:
            raise ChainError("genesis certificate is not for the configured genesis committee")

    def _set_state(self, state: ChainState) -> None:
        self.state = state
        for p in state.committee.members:
            self._participants[ParticipantIndex(p.index)] = p
        change = state.pending.outcome.proposal.change if state.pending is not None else None
        if isinstance(change, AddMember):
            self._participants[ParticipantIndex(change.participant.index)] = change.participant
            if change.addresses:
                self.addresses[ParticipantIndex(change.participant.index)] = change.addresses
        self._epoch_ready_at = self._ready_time(state)

    def _ready_time(self, state: ChainState) -> float:
        tr = state.certificate.transcript
        if tr.kind == "dkg":
            return self.config.genesis_schedule(tr.attempt).end
        prev = self._membership_before(state.epoch)
        if prev is None:
            return self._now
        return self.config.reshare_schedule(
            prev.outcome.reshare_start, len(tr.committee), tr.threshold, tr.attempt
        ).end

    def _membership_before(self, epoch: int) -> MembershipCertificate | None:
        for link in self.chain:
            if isinstance(link, MembershipCertificate) and link.outcome.epoch == epoch - 1:
                return link
        return None

    # --- the contract ------------------------------------------------------------

    def messages_to_send(self) -> list[Outbound]:
        for s in self._sessions():
            self._outbox.extend(s.messages_to_send())
            self._collect(s)
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[NodeEvent]:
        for s in self._sessions():
            self._collect(s)
        # Erasures go last: what they erase (a new share) is stored by the events before.
        self._events.extend(EraseRecords(run) for run in self._erase)
        self._erase.clear()
        out, self._events = self._events, []
        return out

    def _sessions(self) -> list[SharingSession | DecisionWindow]:
        out: list[SharingSession | DecisionWindow] = []
        if self._run is not None:
            out.append(self._run)
        if self._window is not None:
            out.append(self._window)
        return out

    def receive(
        self,
        peer: ParticipantIndex,
        message: Message,
        now: float,
        *,
        sender_epoch: int | None = None,
    ) -> None:
        """Handle a message from authenticated ``peer``. Never raises for bad input:
        a rejection becomes an ``InputRejected`` event and changes nothing.

        ``sender_epoch`` is the epoch the sender's envelope names. A message
        from two or more epochs back is dropped (no run of that epoch is still
        open here, and answering it would only let a replayer make work), but
        for a ``ChainRequest``: that is how a member that missed epochs catches up.
        """
        self.advance_time(now)
        if sender_epoch is not None:
            self.observe_epoch(peer, sender_epoch, now)
        st = self.state
        if (
            sender_epoch is not None
            and st is not None
            and sender_epoch + 1 < st.epoch
            and not isinstance(message, ChainRequest)
        ):
            self._events.append(InputRejected(peer, "message for an old epoch"))
            return
        try:
            self._dispatch(peer, message, now)
        except RemoteProtocolError as exc:
            self._events.append(InputRejected(peer, str(exc)))
        except (InvalidEncoding, InvalidSignature) as exc:
            self._events.append(InputRejected(peer, f"{type(exc).__name__}: {exc}"))
        self._pump()

    def epoch_state(self, epoch: int) -> ChainState | None:
        """What this node's chain proves about ``epoch`` (its committee and public shares),
        or None if the chain does not reach it. Verified once per chain length."""
        if self.state is None:
            return None
        if self._epoch_states[0] != len(self.chain):
            self._epoch_states = (
                len(self.chain),
                {st.epoch: st for st in verify_chain_epochs(self.chain, mpk=self.state.mpk)},
            )
        return self._epoch_states[1].get(epoch)

    def observe_epoch(self, peer: ParticipantIndex, epoch: int, now: float) -> None:
        """An authenticated member says it is at ``epoch``. If that is ahead of us, ask it
        for the chain (at most every ``CHAIN_RETRY_DELTAS`` Δ): a member that was down
        while the committee moved on catches up even if its requests at start were lost."""
        st = self.state
        if peer == self.me or peer not in self._participants:
            return
        if st is not None and epoch <= st.epoch:
            return
        if (
            self._asked_chain
            and now - self._asked_chain_at < CHAIN_RETRY_DELTAS * self.config.delta
        ):
            return
        self._asked_chain = True
        self._asked_chain_at = now
        self._outbox.append(Outbound(peer, ChainRequest(len(self.chain))))
        self._pump()

    def advance_time(self, now: float) -> None:
        if now < self._now:
            return
        self._now = now
        self._tick()
        self._pump()

    # --- operator actions --------------------------------------------------------------

    def propose(self, change: Change) -> bytes:
        """Propose a change in the next window; returns the proposal id.

        Raises ``ChangeRefused`` when this node's checks (the join request's
        quote against the admission policy, a removal's evidence) refuse it.
        """
        state = self._require_member()
        if apply_change(state.committee, change) is None:
            raise LocalProtocolError("the change is not valid for the current committee")
        self._check_change(change)
        p = Proposal.of(state.epoch, state.head_hash, int(self.me), self._rng(16), change)
        self._my_proposals[p.id()] = p
        self._my_approvals.add(p.id())
        return p.id()

    def approve(self, proposal_id: bytes) -> bool:
        """Approve a proposal; returns False when it is not known yet.

        With a change check configured, a proposal is checked before this node
        approves it (``ChangeRefused`` if it fails). One not seen yet is
        remembered and checked when it shows up in a decided window.
        """
        self._require_member()
        if len(proposal_id) != 32:
            raise LocalProtocolError("a proposal id is 32 bytes")
        if self._check is None:
            self._my_approvals.add(proposal_id)
            return True
        p = self._tally.proposals.get(proposal_id) or self._my_proposals.get(proposal_id)
        if p is None:
            self._deferred.add(proposal_id)
            return False
        self._check_change(p.change)
        self._refused.pop(proposal_id, None)
        self._my_approvals.add(proposal_id)
        return True

    def _check_change(self, change: Change) -> None:
        if self._check is None or self.state is None:
            return
        ctx = ChangeContext(
            self.state,
            tuple(self.chain),
            self._now,
            self.admission_policy(),
            dict(self._reshare_runs),
        )
        self._check(ctx, change)

    def _approve_deferred(self) -> None:
        for pid in sorted(self._deferred):
            p = self._tally.proposals.get(pid)
            if p is None:
                continue
            self._deferred.discard(pid)
            try:
                self._check_change(p.change)
            except ChangeRefused as exc:
                self._refused[pid] = (exc.reason, exc.detail)
                self._events.append(ApprovalRefused(pid, exc.reason, exc.detail))
                continue
            self._my_approvals.add(pid)

    def admission_policy(self) -> bytes | None:
        """The bytes of the committee-certified node admission policy, if known here.

        The committee names only its hash; the bytes come from the certified
        ``admission-policy`` change that set it, or from the genesis configuration.
        """
        st = self.state
        if st is None:
            return None
        want = st.committee.admission_policy_hash
        for link in reversed(self.chain):
            if isinstance(link, MembershipCertificate):
                change = link.outcome.proposal.change
                if isinstance(change, ChangeAdmissionPolicy) and change.policy_hash() == want:
                    return change.policy
        if hashlib.sha256(self.config.admission_policy).digest() == want:
            return self.config.admission_policy
        return None

    def _require_member(self) -> ChainState:
        if self.state is None or self.me not in self.state.committee.indices:
            raise LocalProtocolError("this node is not a member of the current epoch")
        return self.state

    @property
    def participants(self) -> Mapping[ParticipantIndex, Participant]:
        """Everyone this node may talk to: members of the chain and admitted newcomers."""
        return dict(self._participants)

    # --- status --------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        st = self.state
        pending = []
        if st is not None:
            for pid, p in sorted(self._tally.proposals.items()):
                pending.append((pid.hex(), p.kind, len(self._tally.approvals.get(pid, set()))))
            for pid, p in sorted(self._my_proposals.items()):
                if pid not in self._tally.proposals:
                    pending.append((pid.hex(), p.kind, 0))
        running = (
            self._run.config.kind
            if self._run and self._run.phase not in (Phase.DONE, Phase.FAILED)
            else None
        )
        retained = tuple(
            (e, self._trackers[e].status().missing if e in self._trackers else ())
            for e in sorted(self._retained)
        )
        return NodeStatus(
            epoch=st.epoch if st else None,
            threshold=st.threshold if st else None,
            committee=tuple(st.committee.indices) if st else (),
            mpk=st.mpk.to_bytes() if st else None,
            has_share=self.share is not None,
            running=running,
            pending=tuple(pending),
            retained=retained,
            last_refresh=self.last_refresh,
            refused=tuple((pid.hex(), r) for pid, (r, _) in sorted(self._refused.items())),
            waiting=tuple(pid.hex() for pid in sorted(self._deferred)),
        )

    def chain_update(self, have: int = 0) -> ChainUpdate:
        links = self.chain[have:]
        kinds = tuple("epoch" if isinstance(x, EpochCertificate) else "membership" for x in links)
        return ChainUpdate(kinds, tuple(x.encode() for x in links))

    # --- dispatch ------------------------------------------------------------------------

    def _dispatch(self, peer: ParticipantIndex, message: Message, now: float) -> None:
        if isinstance(message, ChainUpdate):
            self._receive_chain(peer, message)
            return
        if isinstance(message, ChainRequest):
            if message.have < 0:
                raise RemoteProtocolError("negative chain position", [peer])
            self._outbox.append(Outbound(peer, self.chain_update(message.have)))
            return
        if isinstance(message, Acknowledgement):
            tracker = self._trackers.get(message.epoch - 1)
            if tracker is None:
                # The new epoch may not be certified here yet: keep a few for later.
                if self.state is None or message.epoch > self.state.epoch:
                    self._early_acks.append((peer, message))
                return
            tracker.add(message, peer)
            return
        if peer not in self._participants:
            raise RemoteProtocolError("message from a peer that is not a participant", [peer])
        target = self._route(message)
        if target is None:
            # For a run or window that has not started here yet: keep it for later.
            self._early.append((peer, message))
            return
        target.receive(peer, message, now)

    def _route(self, message: Message) -> SharingSession | DecisionWindow | None:
        if isinstance(message, BroadcastPayload | DigestRelay):
            sid = message.header.session
        elif isinstance(message, PullRequest):
            sid = message.session
        elif isinstance(message, CertificatePartial):
            return (
                self._run if self._run is not None and self._run.phase is not Phase.FAILED else None
            )
        elif isinstance(message, OutcomePartial):
            return self._window
        else:
            raise RemoteProtocolError(f"unexpected message {type(message).__name__}", [])
        for s in self._sessions():
            if sid in s.session_ids():
                return s
        return None

    def _replay_early(self) -> None:
        pending = list(self._early)
        self._early.clear()
        for peer, msg in pending:
            try:
                target = self._route(msg)
            except RemoteProtocolError:
                continue
            if target is None:
                self._early.append((peer, msg))
                continue
            try:
                target.receive(peer, msg, self._now)
            except RemoteProtocolError as exc:
                self._events.append(InputRejected(peer, str(exc)))

    # --- chain sync ------------------------------------------------------------------------

    def _receive_chain(self, peer: ParticipantIndex, update: ChainUpdate) -> None:
        links: list[Link] = []
        for kind, raw in zip(update.kinds, update.links, strict=True):
            try:
                links.append(
                    EpochCertificate.decode(raw)
                    if kind == "epoch"
                    else MembershipCertificate.decode(raw)
                )
            except MessageDecodeError as exc:
                raise RemoteProtocolError(f"malformed chain link: {exc}", [peer]) from exc
        if not links:
            return
        try:
            if self.state is None:
                first = links[0]
                if not isinstance(first, EpochCertificate):
                    raise ChainError("chain must start at genesis")
                self._check_genesis(first)
                state = genesis_state(self._mpk_of(first), first)
                new_links: list[Link] = [first]
                rest = links[1:]
            else:
                state = self.state
                new_links = []
                known = {x.fingerprint() for x in self.chain}
                rest = [x for x in links if x.fingerprint() not in known]
            for link in rest:
                state = extend(state, link)
                new_links.append(link)
        except ChainError as exc:
            raise RemoteProtocolError(f"chain link refused: {exc}", [peer]) from exc
        for link in new_links:
            self._adopt_link(link, state_after=None)

    # --- time-driven steps -----------------------------------------------------------------

    def _tick(self) -> None:
        now = self._now
        ask_again = (
            self.state is None
            and now - self._asked_chain_at >= CHAIN_RETRY_DELTAS * self.config.delta
        )
        if not self._asked_chain or ask_again:
            # On start (and, while it has no chain, every few Δ), ask everyone we know
            # for the chain: a node that was down during genesis or a change catches
            # up from the members.
            self._asked_chain = True
            self._asked_chain_at = now
            have = len(self.chain)
            for i in sorted(self._participants):
                if i != self.me:
                    self._outbox.append(Outbound(i, ChainRequest(have)))
        if self.state is None and self._run is None and self.me in self._genesis_indices():
            self._start_genesis(self._run_attempt)
        if self._run is not None and self._run.phase in (Phase.DONE, Phase.FAILED):
            self._end_run(self._run)
        if self._run is not None:
            try:
                self._run.advance_time(now)
            except (LocalProtocolError, InvalidSignature, InvalidEncoding) as exc:
                # A run that breaks locally fails alone; the node and the old epoch go on.
                cfg = self._run.config
                self._events.append(
                    RunFailed(cfg.kind, cfg.epoch, cfg.attempt, f"local error: {exc}")
                )
                self._end_run(self._run)
                if cfg.kind == "reshare":
                    self._run_attempt = cfg.attempt + 1
            else:
                self._collect(self._run)
        if self.state is not None and self.state.pending is not None and self._run is None:
            self._start_reshare(self._run_attempt)
        self._windows()

    def _genesis_indices(self) -> list[ParticipantIndex]:
        return [ParticipantIndex(p.index) for p in self.config.genesis]

    def _start_genesis(self, attempt: int) -> None:
        # Attempts whose deadlines have all passed are over for everyone: skip them.
        while self._now >= self.config.genesis_schedule(attempt).end:
            attempt += 1
        cfg = SharingConfig(
            kind="dkg",
            epoch=0,
            attempt=attempt,
            dealers=self.config.genesis,
            recipients=self.config.genesis,
            threshold=self.config.threshold,
            schedule=self.config.genesis_schedule(attempt),
            admission_policy_hash=self.config.admission_policy_hash,
        )
        self._run_attempt = attempt
        self._run = self._sharing_session(cfg, None)
        self._run.advance_time(self._now)
        self._replay_early()

    def _sharing_session(self, cfg: SharingConfig, share: SecretShare | None) -> SharingSession:
        """The session for one run. The simulator overrides this to plug in adversaries."""
        return SharingSession(
            cfg,
            self.me,
            self._key,
            self._dkg_key,
            rng=self._rng,
            share=share,
            persisted=self._persisted(cfg),
        )

    def _persisted(self, cfg: SharingConfig) -> dict[str, bytes]:
        """A run's records: its own, and its key seed (kept under a run of its own)."""
        run = cfg.run_id()
        self._runs[run] = cfg.epoch
        while len(self._runs) > MAX_RUN_RECORDS:
            self._erase_run(next(iter(self._runs)))
        return {**self._records(run), **self._records(run_key_records(run))}

    def _end_run(self, session: SharingSession) -> None:
        """The run is over here, done or failed: its key seed goes at once. Nothing it
        encrypted to that key opens any more, whoever recorded the deals."""
        if self._run is session:
            self._run = None
        self._erase.append(run_key_records(session.run_id))
        if self.state is not None and self.state.epoch >= session.config.epoch:
            # An outcome for its epoch is already certified: nothing of it is needed.
            self._erase_run(session.run_id)

    def _erase_run(self, run: bytes) -> None:
        self._runs.pop(run, None)
        self._erase.extend((run, run_key_records(run)))

    def _erase_runs_up_to(self, epoch: int) -> None:
        """An epoch certificate for ``epoch`` is adopted (and this node's share of it, if
        any, stored by the events before): the records of every run for that epoch or an
        earlier one are of no further use. A run still going here keeps its own."""
        live = (
            self._run.run_id
            if self._run is not None
            and self._run.phase
            not in (
                Phase.DONE,
                Phase.FAILED,
            )
            else None
        )
        for run, e in list(self._runs.items()):
            if e <= epoch and run != live:
                self._erase_run(run)

    def _start_reshare(self, attempt: int) -> None:
        st = self.state
        if st is None or st.pending is None:
            return
        outcome = st.pending.outcome
        new = apply_change(st.committee, outcome.proposal.change)
        if new is None:  # pragma: no cover - extend() checked it
            return
        if self.me not in st.committee.indices and self.me not in new.indices:
            return
        sched = self.config.reshare_schedule(
            outcome.reshare_start, len(new.members), new.threshold, attempt
        )
        if self._now >= sched.end:
            # This attempt is already over (we were away): move on to the next one.
            self._run_attempt = attempt + 1
            return
        cfg = SharingConfig(
            kind="reshare",
            epoch=st.epoch + 1,
            attempt=attempt,
            dealers=st.committee.members,
            recipients=new.members,
            threshold=new.threshold,
            schedule=sched,
            admission_policy_hash=new.admission_policy_hash,
            previous_certificate_hash=st.head_hash,
            old_threshold=st.threshold,
            old_public_polynomial=tuple(self._public_polynomial(st)),
        )
        # Without a share for this epoch (a missed reshare) the node takes part as a
        # recipient only; its dealer slot stays empty and it is left out of QUAL.
        dealer_share = self.share if self.me in st.committee.indices else None
        self._run_attempt = attempt
        self._reshare_runs[cfg.run_id()] = cfg
        while len(self._reshare_runs) > MAX_RESHARE_RUNS:
            del self._reshare_runs[next(iter(self._reshare_runs))]
        self._run = self._sharing_session(cfg, dealer_share)
        self._run.advance_time(self._now)
        self._replay_early()

    def _public_polynomial(self, st: ChainState) -> list[G2]:
        return [G2.from_bytes(b) for b in st.certificate.public_polynomial]

    def _windows(self) -> None:
        st = self.state
        if st is None or self._epoch_ready_at is None:
            return
        if self._window is not None:
            self._window.advance_time(self._now)
            self._collect(self._window)
            if self._window.phase in (
                WindowPhase.DECIDED,
                WindowPhase.NO_DECISION,
                WindowPhase.FAILED,
            ):
                self._tally = self._window.tally.copy()
                self._window = None
        if self._window is not None or st.pending is not None or self._run is not None:
            return
        if self.me not in st.committee.indices:
            return
        w = int((self._now - self.config.genesis_start) // self.config.window_period)
        if w <= self._window_index:
            return
        sched = self.config.window_schedule(w, reshare_delay=2 * self.config.delta)
        if sched.start < self._epoch_ready_at or self._now > sched.cutoff:
            return
        self._window_index = w
        self._approve_deferred()
        proposals = [
            p
            for p in self._my_proposals.values()
            if p.epoch == st.epoch and p.certificate_hash == st.head_hash
        ]
        approvals = set(self._my_approvals)
        # Automatic refresh: scheduled, or prompt when this member lacks its share.
        members = st.committee.indices
        due = (
            self.config.refresh_interval > 0
            and self._now - self._epoch_ready_at >= self.config.refresh_interval
        )
        scheduled = Proposal.of(
            st.epoch, st.head_hash, int(members[w % len(members)]), w.to_bytes(16, "big"), Refresh()
        )
        if due:
            approvals.add(scheduled.id())
            if members[w % len(members)] == self.me:
                proposals.append(scheduled)
        if self.share is None:
            prompt = Proposal.of(
                st.epoch, st.head_hash, int(self.me), b"prompt-refresh\x00\x00", Refresh()
            )
            proposals.append(prompt)
            approvals.add(prompt.id())
        # Refresh proposals (a member's prompt refresh) are approved automatically,
        # but not sooner than two windows into an epoch, so that no member can
        # keep the committee resharing.
        if self._now - self._epoch_ready_at >= 2 * self.config.window_period:
            for pid, p in self._tally.proposals.items():
                if p.kind == "refresh" and p.epoch == st.epoch:
                    approvals.add(pid)
        records = self._records(self._window_run_id(w))
        self._window = DecisionWindow(
            st,
            w,
            sched,
            self.me,
            self._key,
            self.share,
            tally=self._tally,
            proposals=sorted(proposals, key=lambda p: p.id()),
            approvals=sorted(approvals),
            persisted=records,
        )
        self._window.advance_time(self._now)
        self._replay_early()

    def _window_run_id(self, w: int) -> bytes:
        st = self.state
        head = st.head_hash if st else ZERO_HASH
        return b"window" + head + w.to_bytes(8, "big")

    # --- results of the running protocols ------------------------------------------------------

    def _collect(self, session: SharingSession | DecisionWindow) -> None:
        if isinstance(session, SharingSession):
            run_id = session.run_id
            for ev in session.events():
                if isinstance(ev, Persist):
                    where = run_key_records(run_id) if ev.key == RUN_KEY_RECORD else run_id
                    self._events.append(StoreRecord(where, ev.key, ev.data, ev.secret))
                elif isinstance(ev, DealerExcluded):
                    self._events.append(MisbehaviourObserved(ev.dealer, ev.reason, ev.evidence))
                elif isinstance(ev, ResponderEquivocated):
                    self._events.append(
                        MisbehaviourObserved(ev.responder, "equivocated responses", ev.evidence)
                    )
                elif isinstance(ev, CertificateCompleted):
                    self._adopt_epoch(ev.certificate, session)
                elif isinstance(ev, SharingFailed):
                    cfg = session.config
                    self._events.append(RunFailed(cfg.kind, cfg.epoch, cfg.attempt, ev.reason))
                    self._end_run(session)
                    if cfg.kind == "dkg" and self.state is None:
                        # Only while there is no chain: a node that caught up through
                        # the chain gets its share from a prompt refresh instead.
                        self._start_genesis(cfg.attempt + 1)
                    else:
                        self._run_attempt = cfg.attempt + 1
        else:
            wid = self._window_run_id(session.window)
            for wev in session.events():
                if isinstance(wev, Persist):
                    self._events.append(StoreRecord(wid, wev.key, wev.data, wev.secret))
                elif isinstance(wev, MembershipCertified):
                    self._adopt_link(wev.certificate, state_after=None)

    def _adopt_epoch(self, cert: EpochCertificate, session: SharingSession) -> None:
        res = session.result
        share = res.share if res is not None else None
        self._adopt_link(cert, state_after=None, new_share=share)

    def _adopt_link(
        self, link: Link, *, state_after: ChainState | None, new_share: SecretShare | None = None
    ) -> None:
        fp = link.fingerprint()
        if any(x.fingerprint() == fp for x in self.chain):
            self._late_share(link, new_share)
            return
        if self.state is None:
            if not isinstance(link, EpochCertificate):
                return
            state = genesis_state(self._mpk_of(link), link)
        else:
            try:
                state = state_after or extend(self.state, link)
            except ChainError:
                return
        self.chain.append(link)
        old_state = self.state
        if isinstance(link, MembershipCertificate):
            self._set_state(state)
            self._events.append(LinkCertified(link))
            self._run_attempt = 0
            self._my_proposals.clear()
            self._my_approvals.clear()
            self._deferred.clear()
            self._refused.clear()
            self._tally = Tally()
            # Make sure every participant of the coming reshare knows the decision.
            members = set(state.committee.indices)
            for i in sorted(members | set(self._incoming_members(state))):
                if i != self.me:
                    # Incoming members have no chain yet: they get it from genesis.
                    have = len(self.chain) - 1 if i in members else 0
                    self._outbox.append(Outbound(i, self.chain_update(have)))
            return
        # An epoch certificate: switch epochs.
        if (
            new_share is not None
            and new_share.value.value * G2.generator() != state.public_shares.get(new_share.index)
        ):
            new_share = None
        previous_share = self.share
        self._set_state(state)
        in_committee = self.me in state.committee.indices
        self.share = new_share if in_committee else None
        if link.transcript.kind == "reshare" and old_state is not None:
            if previous_share is not None:
                self._retained[old_state.epoch] = previous_share
                self._trackers[old_state.epoch] = RetentionTracker(
                    link, {i: p.verify_key() for i, p in self._participants.items()}
                )
            if link.transcript.committee == old_state.committee.members:
                self.last_refresh = self._now
        self._events.append(EpochSwitched(state.epoch, link, self.share, state))
        self._erase_runs_up_to(state.epoch)
        self._my_proposals.clear()
        self._my_approvals.clear()
        self._deferred.clear()
        self._refused.clear()
        self._tally = Tally()
        self._run_attempt = 0
        self._previous_members = set(old_state.committee.indices) if old_state else set()
        self._acknowledge(link)
        early, self._early_acks = list(self._early_acks), deque(maxlen=1024)
        for peer, early_ack in early:
            tracker = self._trackers.get(early_ack.epoch - 1)
            if tracker is None:
                if early_ack.epoch > state.epoch:
                    self._early_acks.append((peer, early_ack))
                continue
            try:
                tracker.add(early_ack, peer)
            except RemoteProtocolError as exc:
                self._events.append(InputRejected(peer, str(exc)))

    def _acknowledge(self, link: EpochCertificate) -> None:
        """Tell old and new members that this node holds a share of the new epoch."""
        state = self.state
        if self.share is None or state is None:
            return
        ack = Acknowledgement.create(link, self.share, self._key)
        everyone = set(state.committee.indices) | self._previous_members
        for i in sorted(everyone - {self.me}):
            self._outbox.append(Outbound(i, ack))
            self._outbox.append(Outbound(i, self.chain_update(len(self.chain) - 1)))
        for tracker in self._trackers.values():
            try:
                tracker.add(ack, self.me)
            except RemoteProtocolError:
                pass

    def _late_share(self, link: Link, share: SecretShare | None) -> None:
        """Our own run finished after the certificate reached us through the chain."""
        state = self.state
        if share is None or self.share is not None or state is None:
            return
        if (
            not isinstance(link, EpochCertificate)
            or state.certificate.fingerprint() != link.fingerprint()
        ):
            return
        if share.value.value * G2.generator() != state.public_shares.get(share.index):
            return
        self.share = share
        self._events.append(EpochSwitched(state.epoch, link, share, state))
        self._erase_runs_up_to(state.epoch)
        self._acknowledge(link)

    def _incoming_members(self, state: ChainState) -> list[ParticipantIndex]:
        if state.pending is None:
            return []
        new = apply_change(state.committee, state.pending.outcome.proposal.change)
        return new.indices if new else []

    def _pump(self) -> None:
        for epoch, tracker in list(self._trackers.items()):
            if tracker.status().deletable and epoch in self._retained:
                del self._retained[epoch]
                del self._trackers[epoch]
                self._events.append(RetainedShareDeletable(epoch))

    @property
    def retained_epochs(self) -> list[int]:
        return sorted(self._retained)
