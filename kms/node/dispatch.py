"""Dispatching an authenticated peer's message to the part of the node it is for.

``Dispatch`` routes each message: chain requests (answered from any member or
recently removed member, rate limited per peer: ``CHAIN_REQUEST_BURST``, then
one every ``CHAIN_REQUEST_REFILL_DELTAS`` Δ), genesis endorsements, chain
updates (``ChainSync``), acknowledgements, deals requests and answers
(``ShareRecovery``), and the messages of a sharing run or decision window (to
the session whose id they name; kept within the member's quota in
``EarlyMessages`` when that run or window has not started here yet, and
replayed when it does). A local error a message triggers fails that run or
window alone. It holds the per-peer chain request budget; it reads the node
through ``DispatchPort``, which ``kms.node.core.NodeCore`` provides.
"""

from __future__ import annotations

from typing import Protocol

from kms.node.adoption import Adoption
from kms.node.ballots import Ballots
from kms.node.chain_sync import ChainSync
from kms.node.early import EarlyMessages
from kms.node.genesis_trust import GenesisTrust
from kms.node.limits import early_messages, peer_queue_bytes
from kms.node.model import (
    InputRejected,
    NodeEvent,
    NodeView,
)
from kms.node.recovery import ShareRecovery
from kms.node.retention import ShareHolders
from kms.node.sharing_runs import SharingRuns
from mpc.broadcast import BroadcastPayload, DigestRelay, Outbound, PullRequest
from mpc.cert import EpochCertificate
from mpc.codec import Message
from mpc.dkg import (
    Phase,
    SharingSession,
)
from mpc.dkg.messages import CertificatePartial, DealsAnswer, DealsRequest, Participant
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.membership import (
    AddMember,
    ChainState,
    DecisionWindow,
)
from mpc.membership.messages import (
    ChainRequest,
    ChainUpdate,
    GenesisEndorsement,
    GenesisEndorsements,
    OutcomePartial,
    ProposalNotice,
)
from mpc.reshare import Acknowledgement

CHAIN_REQUEST_BURST = 4
CHAIN_REQUEST_REFILL_DELTAS = 5
"""Chain requests answered per peer: a burst of 4, then one more every this many Δ (an
honest node asks on start and then at most every ``CHAIN_RETRY_DELTAS`` Δ)."""

RECENTLY_REMOVED = 16
"""Members removed from the committee whose chain requests are still answered (the most
recent ones): a removed member learns of its removal. Nothing else of theirs is taken."""


def members_of(state: ChainState) -> set[ParticipantIndex]:
    """The committee of ``state`` and the members a certified change is adding."""
    out = set(state.committee.indices)
    change = state.pending.outcome.proposal.change if state.pending is not None else None
    if isinstance(change, AddMember):
        out.add(ParticipantIndex(change.participant.index))
    return out


class DispatchPort(NodeView, Protocol):
    """What ``Dispatch`` reads of the node (``NodeCore``) and hands messages to."""

    @property
    def _now(self) -> float: ...
    @property
    def _participants(self) -> dict[ParticipantIndex, Participant]: ...
    @property
    def _events(self) -> list[NodeEvent]: ...
    @property
    def _outbox(self) -> list[Outbound]: ...
    @property
    def early(self) -> EarlyMessages: ...
    @property
    def holders(self) -> ShareHolders: ...
    @property
    def trust(self) -> GenesisTrust: ...
    @property
    def recovery(self) -> ShareRecovery: ...
    @property
    def sharing(self) -> SharingRuns: ...
    @property
    def ballots(self) -> Ballots: ...
    @property
    def adoption(self) -> Adoption: ...
    @property
    def sync(self) -> ChainSync: ...
    def _sessions(self) -> list[SharingSession | DecisionWindow]: ...
    def _session_broke(self, session: SharingSession | DecisionWindow, exc: Exception) -> None: ...
    def _send_chain(self, peer: ParticipantIndex, have: int) -> None: ...
    def _genesis(self) -> EpochCertificate | None: ...


class Dispatch:
    """Where each authenticated message goes; the per-peer chain request budget."""

    def __init__(self, port: DispatchPort) -> None:
        self._c = port
        self.chain_budget: dict[ParticipantIndex, tuple[float, float]] = {}
        """Chain requests per peer: (tokens, last refill time)."""
        self.removed: dict[ParticipantIndex, Participant | None] = {}
        """Recently removed members, oldest first (at most ``RECENTLY_REMOVED``), with their
        participant records (their identity keys authenticate their chain requests)."""
        self._allowed: tuple[ChainState, frozenset[ParticipantIndex]] | None = None
        # Before any chain: the configured participants, as of that dict and its size (the
        # core replaces the dict when its view changes; only ``set_state`` adds to it).
        self._configured: tuple[object, int, frozenset[ParticipantIndex]] | None = None
        """``allowed_peers`` of the last chain state it was asked for (states are frozen)."""

    def note_removed(self, before: ChainState, after: ChainState) -> None:
        """Remember who ``after`` removed (for their chain requests); forget the rest's
        budgets and early messages."""
        now_members = members_of(after)
        records = {ParticipantIndex(p.index): p for p in before.committee.members}
        change = before.pending.outcome.proposal.change if before.pending is not None else None
        if isinstance(change, AddMember):
            records.setdefault(ParticipantIndex(change.participant.index), change.participant)
        for i in sorted(members_of(before) - now_members):
            self.removed.pop(i, None)
            self.removed[i] = records.get(i)
        for i in now_members:
            self.removed.pop(i, None)
        while len(self.removed) > RECENTLY_REMOVED:
            del self.removed[next(iter(self.removed))]
        keep = now_members | set(self.removed)
        for table in (self.chain_budget, self._c.recovery.deals_budget):
            for i in [i for i in table if i not in keep]:
                del table[i]
        self._c.early.forget(keep)

    def allowed_peers(self) -> frozenset[ParticipantIndex]:
        """Who this node takes protocol messages from: the current committee and the
        members a certified change is adding (before any chain: the configured
        participants). Everyone else is refused."""
        state = self._c.state
        if state is None:
            configured = self._c._participants
            pre = self._configured
            if pre is not None and pre[0] is configured and pre[1] == len(configured):
                return pre[2]
            peers = frozenset(configured)
            self._configured = (configured, len(configured), peers)
            return peers
        cached = self._allowed
        if cached is not None and cached[0] is state:
            return cached[1]
        peers = frozenset(members_of(state))
        self._allowed = (state, peers)
        return peers

    def receive(self, peer: ParticipantIndex, message: Message, now: float) -> None:
        """Hand an authenticated message to its part (``RemoteProtocolError`` if refused)."""
        allowed = peer in self.allowed_peers()
        if isinstance(message, ChainRequest):
            if message.have < 0:
                raise RemoteProtocolError("negative chain position", [peer])
            if not allowed and peer not in self.removed:
                raise RemoteProtocolError("message from a peer that is not a member", [peer])
            if not self.take_chain_budget(peer, now):
                raise RemoteProtocolError("chain requests rate limited", [peer])
            self._c._send_chain(peer, message.have)
            own = self._c.holders.holders.get(self._c.me)
            if own is not None:
                # A member catching up (or restarted) learns who holds shares from these.
                self._c._outbox.append(Outbound(peer, own))
            return
        if isinstance(message, GenesisEndorsements):
            # Like a chain: before this node holds one it does not know the current members
            # yet, so it takes them from any peer it hears; after, from members only. Each
            # bundle is metered like a chain request, and every endorsement is checked.
            if not allowed and self._c.state is not None:
                raise RemoteProtocolError("message from a peer that is not a member", [peer])
            if not self.take_chain_budget(peer, now):
                raise RemoteProtocolError("genesis endorsements rate limited", [peer])
            if self._c.trust.receive_relayed(peer, message.endorsements, self._c._genesis()):
                self._c.adoption.try_candidates()
            return
        if not allowed:
            raise RemoteProtocolError("message from a peer that is not a member", [peer])
        if isinstance(message, GenesisEndorsement):
            if self._c.trust.receive(peer, message, self._c._genesis()):
                self._c.adoption.try_candidates()
            return
        if isinstance(message, ChainUpdate):
            self._c.sync.receive(peer, message)
            return
        if isinstance(message, Acknowledgement):
            if self._c.state is None or message.epoch > self._c.state.epoch:
                # The new epoch may not be certified here yet: keep a few for later.
                self._c.holders.keep_early(peer, message, self._c.state)
                return
            self._c.adoption.take_ack(peer, message)
            return
        if isinstance(message, DealsRequest):
            self._c.recovery.answer(peer, message, now, self._c.state)
            return
        if isinstance(message, DealsAnswer):
            self._c.recovery.receive(peer, message, self._c.state)
            return
        if isinstance(message, ProposalNotice):
            self._c.ballots.take_notice(peer, message)
            return
        target = self.route(message)
        if target is None:
            # For a run or window that has not started here yet: keep it for later.
            self.keep_early(peer, message)
            return
        self.deliver(target, peer, message, now)

    def take_chain_budget(self, peer: ParticipantIndex, now: float) -> bool:
        rate = 1.0 / (CHAIN_REQUEST_REFILL_DELTAS * self._c.config.delta)
        tokens, last = self.chain_budget.get(peer, (float(CHAIN_REQUEST_BURST), now))
        tokens = min(float(CHAIN_REQUEST_BURST), tokens + max(0.0, now - last) * rate)
        if tokens < 1.0:
            self.chain_budget[peer] = (tokens, now)
            return False
        self.chain_budget[peer] = (tokens - 1.0, now)
        return True

    def early_quota(self) -> tuple[int, int]:
        st = self._c.state
        n = len(st.committee.members) if st is not None else len(self._c.config.genesis)
        t = st.threshold if st is not None else self._c.config.threshold
        # A reshare to a larger committee: count its recipients too.
        n = max(n, len(self.allowed_peers()))
        return early_messages(n), peer_queue_bytes(n, t)

    def keep_early(self, peer: ParticipantIndex, message: Message) -> None:
        count, limit = self.early_quota()
        dropped = self._c.early.keep(peer, message, count, limit)
        if dropped:
            self._c._events.append(
                InputRejected(peer, f"early messages over the member's quota: {dropped} dropped")
            )

    def route(self, message: Message) -> SharingSession | DecisionWindow | None:
        if isinstance(message, BroadcastPayload | DigestRelay):
            sid = message.header.session
        elif isinstance(message, PullRequest):
            sid = message.session
        elif isinstance(message, CertificatePartial):
            return (
                self._c.sharing.run
                if self._c.sharing.run is not None and self._c.sharing.run.phase is not Phase.FAILED
                else None
            )
        elif isinstance(message, OutcomePartial):
            return self._c.ballots.window
        else:
            raise RemoteProtocolError(f"unexpected message {type(message).__name__}", [])
        for s in self._c._sessions():
            if sid in s.session_ids():
                return s
        return None

    def replay_early(self) -> None:
        for seq, peer, msg, size in self._c.early.take_all():
            try:
                target = self.route(msg)
            except RemoteProtocolError:
                continue
            if target is None:
                self._c.early.put_back(seq, peer, msg, size)
                continue
            try:
                self.deliver(target, peer, msg, self._c._now)
            except RemoteProtocolError as exc:
                self._c._events.append(InputRejected(peer, str(exc)))
            except (InvalidEncoding, InvalidSignature) as exc:
                self._c._events.append(InputRejected(peer, f"{type(exc).__name__}: {exc}"))

    def deliver(
        self,
        target: SharingSession | DecisionWindow,
        peer: ParticipantIndex,
        message: Message,
        now: float,
    ) -> None:
        """Hand a message to a run or window. Remote faults propagate as
        ``RemoteProtocolError``; a local error the input triggers fails that run only."""
        try:
            target.receive(peer, message, now)
        except LocalProtocolError as exc:
            self._c._session_broke(target, exc)
