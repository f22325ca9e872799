"""Adopting what the node's runs and windows produce, and what the chain proves.

``Adoption`` turns a sharing run's or decision window's events into the node's
(records to store, misbehaviour, failed runs), adopts a certified link (a
membership certificate: the pending change and its reshare attempt; an epoch
certificate: the epoch switch, with this node's new share if it has one that
matches), takes acknowledgements (``ShareHolders``) and sends its own, adopts
a share that finalized after its certificate arrived, and restores the shares
and acknowledgements of a restart. It holds no state of its own: it changes the
node's view (chain state, share) through ``AdoptionPort``, which
``kms.node.core.NodeCore`` provides. That port is wide on purpose: adopting a
link is the node's view changing, and it touches most of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kms.node.ballots import Ballots
from kms.node.chain_follow import ChainFollower
from kms.node.genesis_trust import GenesisNotTrusted, GenesisTrust
from kms.node.governance import LOCK_RUN, Governance, RefreshRules
from kms.node.model import (
    DealerLeftOut,
    EpochSwitched,
    InputRejected,
    Link,
    LinkCertified,
    MisbehaviourObserved,
    NodeConfig,
    NodeEvent,
    RunFailed,
    ShareRefused,
    SignatureWithheld,
    StoreRecord,
    polynomial_records,
    run_key_records,
)
from kms.node.recovery import ShareRecovery
from kms.node.retention import ShareHolders, ack_run
from kms.node.sharing_runs import MAX_KEPT_SHARES, SharingRuns
from mpc.broadcast import Outbound
from mpc.cert import EpochCertificate, RunKind
from mpc.codec import MessageDecodeError
from mpc.dkg import (
    CertificateCompleted,
    DealerExcluded,
    Persist,
    ResponderEquivocated,
    SharingFailed,
    SharingFinalized,
    SharingSession,
    SigningWithheld,
)
from mpc.dkg.messages import Participant
from mpc.dkg.session import POLYNOMIAL_RECORD, RUN_KEY_RECORD
from mpc.errors import RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import (
    AddMember,
    ChainError,
    ChainState,
    DecisionWindow,
    MembershipCertificate,
    MembershipCertified,
    OutcomeLocked,
    extend,
    genesis_state,
)
from mpc.membership.messages import (
    ChainRequest,
    ChainUpdate,
)
from mpc.reshare import Acknowledgement
from mpc.secret import SecretShare
from mpc.sig import SigningKey


class AdoptionPort(Protocol):
    """What ``Adoption`` reads and changes of the node (``NodeCore``)."""

    state: ChainState | None
    share: SecretShare | None
    share_error: str | None
    last_refresh: float | None
    _participants: dict[ParticipantIndex, Participant]
    _epoch_ready_at: float | None

    @property
    def addresses(self) -> dict[ParticipantIndex, tuple[str, ...]]: ...

    @property
    def me(self) -> ParticipantIndex: ...
    @property
    def config(self) -> NodeConfig: ...
    @property
    def chain(self) -> list[Link]: ...
    @property
    def _now(self) -> float: ...
    @property
    def _key(self) -> SigningKey: ...
    @property
    def _epoch_states(self) -> dict[int, ChainState]: ...
    @property
    def _events(self) -> list[NodeEvent]: ...
    @property
    def _outbox(self) -> list[Outbound]: ...
    @property
    def sharing(self) -> SharingRuns: ...
    @property
    def ballots(self) -> Ballots: ...
    @property
    def holders(self) -> ShareHolders: ...
    @property
    def trust(self) -> GenesisTrust: ...
    @property
    def recovery(self) -> ShareRecovery: ...
    @property
    def rules(self) -> RefreshRules: ...
    @property
    def governance(self) -> Governance: ...
    @property
    def follower(self) -> ChainFollower: ...
    def _records(self, run: bytes) -> Mapping[str, bytes]: ...
    def epoch_state(self, epoch: int) -> ChainState | None: ...
    def head_position(self) -> int: ...
    def chain_update(self, have: int = 0) -> ChainUpdate: ...
    def _trim(self) -> None: ...
    def _note_removed(self, before: ChainState, after: ChainState) -> None: ...
    def _send_chain(self, peer: ParticipantIndex, have: int) -> None: ...
    def _mpk_of(self, cert: EpochCertificate) -> G2: ...
    def _check_genesis(self, cert: EpochCertificate) -> None: ...
    def _trust_genesis(self, cert: EpochCertificate) -> None: ...
    def _genesis(self) -> EpochCertificate | None: ...
    def _genesis_adopted(self) -> None: ...
    def _epoch_certificate(self, epoch: int) -> EpochCertificate | None: ...
    def _incoming_members(self, state: ChainState) -> list[ParticipantIndex]: ...


class Adoption:
    """Adopting results and links into the node's view (no state of its own)."""

    def __init__(self, port: AdoptionPort) -> None:
        self._c = port

    def collect(self, session: SharingSession | DecisionWindow) -> None:
        if isinstance(session, SharingSession):
            run_id = session.run_id
            for ev in session.events():
                if isinstance(ev, SharingFinalized):
                    self._c.recovery.keep_deals(session, ev)
                if isinstance(ev, Persist):
                    if ev.key == RUN_KEY_RECORD:
                        self._c.recovery.seeds[run_id] = ev.data
                    where = run_id
                    if ev.key == RUN_KEY_RECORD:
                        where = run_key_records(run_id)
                    elif ev.key == POLYNOMIAL_RECORD:
                        where = polynomial_records(run_id)
                    self._c._events.append(StoreRecord(where, ev.key, ev.data, ev.secret))
                elif isinstance(ev, SharingFinalized) and session.config.kind == RunKind.DKG:
                    self._c.trust.own.append(ev.result.transcript.hash())
                    self._c.trust.maybe_endorse(self._c._genesis(), list(self._c._participants))
                elif isinstance(ev, SigningWithheld):
                    cfg = session.config
                    self._c._events.append(
                        SignatureWithheld(cfg.kind, cfg.epoch, cfg.attempt, ev.reason)
                    )
                elif isinstance(ev, DealerExcluded) and not ev.attributable:
                    self._c._events.append(DealerLeftOut(ev.dealer, ev.reason))
                elif isinstance(ev, DealerExcluded):
                    self._c._events.append(MisbehaviourObserved(ev.dealer, ev.reason, ev.evidence))
                elif isinstance(ev, ResponderEquivocated):
                    self._c._events.append(
                        MisbehaviourObserved(ev.responder, "equivocated responses", ev.evidence)
                    )
                elif isinstance(ev, CertificateCompleted):
                    self.adopt_epoch(ev.certificate, session)
                elif isinstance(ev, SharingFailed):
                    cfg = session.config
                    self._c._events.append(RunFailed(cfg.kind, cfg.epoch, cfg.attempt, ev.reason))
                    self._c.sharing.end_run(session)
                    self.keep_finalized(session)
                    if cfg.kind == RunKind.DKG and self._c.state is None:
                        # Only while there is no chain: a node that caught up through
                        # the chain gets its share from a prompt refresh instead.
                        self._c.sharing.start_genesis(cfg.attempt + 1)
                    else:
                        self._c.sharing.attempt = cfg.attempt + 1
        else:
            wid = self._c.ballots.run_id(session.window)
            for wev in session.events():
                if isinstance(wev, Persist):
                    self._c._events.append(StoreRecord(wid, wev.key, wev.data, wev.secret))
                elif isinstance(wev, OutcomeLocked):
                    # The one outcome this member signs in this epoch: stored before the
                    # partial goes out (the store refuses a second, different lock).
                    head = session.state.head_hash
                    self._c._events.append(
                        StoreRecord(LOCK_RUN + head, "lock", wev.report.encode(), False)
                    )
                    if self._c.state is not None and self._c.state.head_hash == head:
                        self._c.governance.lock = wev.report
                elif isinstance(wev, MembershipCertified):
                    self.adopt_link(wev.certificate, state_after=None)

    def keep_finalized(self, session: SharingSession) -> None:
        """A run that finalized (this node computed its share and may have signed) but failed
        locally may still be certified by the others: keep its share (it is persisted too) and
        use it if its certificate is already, or later, this node's head."""
        res = session.result
        if res is None or res.share is None:
            return
        self._c.sharing.kept[session.run_id] = (session.config.epoch, res.share)
        while len(self._c.sharing.kept) > MAX_KEPT_SHARES:
            del self._c.sharing.kept[next(iter(self._c.sharing.kept))]
        st = self._c.state
        if st is not None and st.certificate.transcript.hash() == res.transcript.hash():
            self.late_share(st.certificate, res.share)

    def adopt_epoch(self, cert: EpochCertificate, session: SharingSession) -> None:
        res = session.result
        share = res.share if res is not None else None
        self.adopt_link(cert, state_after=None, new_share=share)

    def adopt_link(
        self, link: Link, *, state_after: ChainState | None, new_share: SecretShare | None = None
    ) -> None:
        fp = link.fingerprint()
        if any(x.fingerprint() == fp for x in self._c.chain):
            self.late_share(link, new_share)
            return
        if self._c.state is None:
            if not isinstance(link, EpochCertificate):
                return
            try:
                self._c._check_genesis(link)
                self._c._trust_genesis(link)
                state = genesis_state(self._c._mpk_of(link), link)
            except ChainError:
                return
        else:
            try:
                state = state_after or extend(self._c.state, link)
            except ChainError:
                return
        self._c.chain.append(link)
        old_state = self._c.state
        if isinstance(link, MembershipCertificate):
            self._c.follower.note_policy(link)
            self._c._epoch_states[state.epoch] = state
            self.set_state(state)
            self._c._events.append(LinkCertified(link))
            new = state.apply(link.outcome.proposal.change)
            self._c.sharing.attempt = (
                self._c.rules.first_reshare_attempt(
                    link.outcome.window,
                    link.outcome.reshare_start,
                    len(new.members),
                    new.threshold,
                    self._c.state.threshold
                    if self._c.state is not None
                    else self._c.config.threshold,
                    self._c._now,
                )
                if new is not None
                else 0
            )
            self._c.governance.clear()
            # Make sure every participant of the coming reshare knows the decision.
            members = set(state.committee.indices)
            for i in sorted(members | set(self._c._incoming_members(state))):
                if i != self._c.me:
                    # Incoming members have no chain yet: they get genesis and the tail.
                    have = self._c.head_position() if i in members else 0
                    self._c._send_chain(i, have)
            return
        # An epoch certificate: switch epochs.
        if (
            new_share is not None
            and new_share.value.value * G2.generator() != state.public_shares.get(new_share.index)
        ):
            new_share = None
        in_committee = self._c.me in state.committee.indices
        if new_share is None and in_committee:
            # The certificate reached us through the chain: if this node finalized the
            # certified run (it may have signed), its persisted share is that epoch's share.
            new_share = self._c.sharing.persisted_share(link, old_state)
        previous_share = self._c.share
        self._c._epoch_states[state.epoch] = state
        self.set_state(state)
        self._c._trim()
        self._c.share = new_share if in_committee else None
        if self._c.share is not None:
            self._c.share_error = None
        self._c.holders.holders = {}
        self._c.holders.since = None
        # Kept shares of this epoch (or older) are decided: used above, or another outcome won.
        # (Shares of this epoch's higher attempts stay: the highest certified attempt wins.)
        self._c.sharing.kept = {
            r: k for r, k in self._c.sharing.kept.items() if k[0] >= state.epoch
        }
        run = self._c.sharing.run
        if (
            run is not None
            and run.config.epoch <= state.epoch
            and (run.config.epoch, run.config.attempt) != (state.epoch, link.transcript.attempt)
        ):
            # Another attempt of a decided epoch: this node signs no second outcome for it.
            cfg = run.config
            self._c._events.append(
                RunFailed(cfg.kind, cfg.epoch, cfg.attempt, "another attempt is certified")
            )
            self._c.sharing.end_run(run)
        if link.transcript.kind == RunKind.RESHARE and old_state is not None:
            if previous_share is not None:
                self._c.holders.retain(old_state.epoch, previous_share, link, self._c._participants)
            if link.transcript.committee == old_state.committee.members:
                self._c.last_refresh = self._c._now
        self._c._events.append(
            EpochSwitched(state.epoch, link, self._c.share, state, self._c.sharing.keep_runs())
        )
        self._c.sharing.erase_runs_up_to(state.epoch)
        if old_state is None:
            self._c._genesis_adopted()
        self._c.governance.clear()
        self._c.sharing.attempt = 0
        self._c.holders.previous_members = set(old_state.committee.indices) if old_state else set()
        self.acknowledge(link)
        self.take_early_acks(state)

    def take_early_acks(self, state: ChainState) -> None:
        for peer, early_ack in self._c.holders.early_due(state):
            try:
                self.take_ack(peer, early_ack)
            except RemoteProtocolError as exc:
                self._c._events.append(InputRejected(peer, str(exc)))

    def take_ack(
        self, peer: ParticipantIndex, ack: Acknowledgement, *, persist: bool = True
    ) -> None:
        """An acknowledgement (``ShareHolders.take``), persisted when it names a new holder
        so a restart keeps it."""
        st = self._c.state
        if st is None:
            return
        if self._c.holders.take(peer, ack, st) and persist:
            idx = int(ack.index)
            self._c._events.append(
                StoreRecord(ack_run(st.certificate), f"ack/{idx}", ack.encode(), False)
            )

    def acknowledge(self, link: EpochCertificate) -> None:
        """Tell old and new members that this node holds a share of the new epoch."""
        state = self._c.state
        if self._c.share is None or state is None:
            return
        ack = Acknowledgement.create(link, self._c.share, self._c._key)
        everyone = set(state.committee.indices) | self._c.holders.previous_members
        for i in sorted(everyone - {self._c.me}):
            self._c._outbox.append(Outbound(i, ack))
            self._c._outbox.append(Outbound(i, self._c.chain_update(self._c.head_position())))
        try:
            self.take_ack(self._c.me, ack)
        except RemoteProtocolError:  # pragma: no cover - our own, checked when created
            pass

    def late_share(self, link: Link, share: SecretShare | None) -> None:
        """Our own run finished after the certificate reached us through the chain."""
        state = self._c.state
        if share is None or self._c.share is not None or state is None:
            return
        if (
            not isinstance(link, EpochCertificate)
            or state.certificate.fingerprint() != link.fingerprint()
        ):
            return
        if share.value.value * G2.generator() != state.public_shares.get(share.index):
            return
        self._c.share = share
        self._c.share_error = None
        self._c._events.append(
            EpochSwitched(state.epoch, link, share, state, self._c.sharing.keep_runs())
        )
        self._c.sharing.erase_runs_up_to(state.epoch)
        self.acknowledge(link)

    def restore_shares(self, before: ChainState | None) -> None:
        """Check the restored shares against the chain; adopt a persisted share of the head's
        run if this node has none (it finalized the run but the certificate reached it late);
        rebuild what it knows about share holders and the retention trackers."""
        st = self._c.state
        if st is None:
            return
        if self._c.share is not None:
            pk = st.public_shares.get(self._c.me)
            if (
                self._c.share.index != self._c.me
                or pk is None
                or self._c.share.value.value * G2.generator() != pk
            ):
                reason = (
                    f"the stored share of epoch {st.epoch} does not match the chain's public "
                    f"share for index {int(self._c.me)}: it is not used, and this node serves no "
                    "keys until it gets a new share"
                )
                self._c.share_error = reason
                self._c._events.append(ShareRefused(st.epoch, reason))
                self._c.share = None
        for e, old in sorted(self._c.holders.retained.items()):
            old_state = self._c.epoch_state(e)
            pk = old_state.public_shares.get(self._c.me) if old_state is not None else None
            if old.index != self._c.me or pk is None or old.value.value * G2.generator() != pk:
                reason = f"the retained share of epoch {e} does not match that epoch's public share"
                self._c._events.append(ShareRefused(e, reason))
                del self._c.holders.retained[e]
        for raw in self._c._records(ack_run(st.certificate)).values():
            self.restore_ack(raw)
        for e in sorted(self._c.holders.retained):
            cert = self._c._epoch_certificate(e + 1)
            if cert is None:
                continue
            self._c.holders.track(e, cert, self._c._participants)
            for raw in self._c._records(ack_run(cert)).values():
                self.restore_ack(raw)
        if self._c.share is None:
            # Its own stored acknowledgement proves nothing once the share is not used.
            self._c.holders.holders.pop(self._c.me, None)
        if self._c.share is None and self._c.me in st.committee.indices:
            share = self._c.sharing.persisted_share(st.certificate, before)
            if share is not None:
                self._c.share = share
                self._c.share_error = None
                self._c._events.append(
                    EpochSwitched(st.epoch, st.certificate, share, st, self._c.sharing.keep_runs())
                )
                self.acknowledge(st.certificate)

    def restore_ack(self, raw: bytes) -> None:
        try:
            ack = Acknowledgement.decode(raw)
            self.take_ack(ParticipantIndex(ack.index), ack, persist=False)
        except (MessageDecodeError, RemoteProtocolError):
            pass  # an unreadable record proves nothing: the acknowledgement counts as missing

    def set_state(self, state: ChainState) -> None:
        """Make ``state`` the node's view: its peers, admitted addresses, epoch readiness."""
        if self._c.state is not None:
            self._c._note_removed(self._c.state, state)
        self._c.state = state
        self._c.recovery.check = True
        # The peers: this epoch's members and, while a change is pending, those of the
        # next; a removed member is dropped once the epoch without it is certified.
        self._c._participants = {ParticipantIndex(p.index): p for p in state.committee.members}
        change = state.pending.outcome.proposal.change if state.pending is not None else None
        if isinstance(change, AddMember):
            self._c._participants[ParticipantIndex(change.participant.index)] = change.participant
            if change.addresses:
                self._c.addresses[ParticipantIndex(change.participant.index)] = change.addresses
        self._c._epoch_ready_at = self._c.rules.ready_time(state, self._c.chain, self._c._now)

    def try_candidates(self) -> None:
        """Adopt the first genesis candidate that is now trusted, and ask for its chain."""
        for peer, genesis in list(self._c.trust.candidates.items()):
            try:
                self._c._trust_genesis(genesis)
            except GenesisNotTrusted:
                continue
            self.adopt_link(genesis, state_after=None)
            if self._c.state is not None:
                self._c._outbox.append(Outbound(peer, ChainRequest(len(self._c.chain))))
            break
