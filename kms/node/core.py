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
  proposes a refresh itself (prompt refresh). Members approve a refresh only
  when the schedule makes it due, or a prompt refresh when the committee's
  cap allows one (``prompt_refresh_allowed``), never because it was proposed.
* **Intent and lock**: a member's own proposals and approvals are persisted
  (run records) and re-sent in every window of the epoch; the one outcome it
  signs in an epoch is persisted as its lock before the partial goes out.
* **Old shares** are retained until ``min(n', 2t'-1)`` new members have
  acknowledged the new epoch, then ``RetainedShareDeletable`` is emitted.
* **Run records** are erased (``EraseRecords``): a run's key seed as soon as
  the run ends, done or failed (a recipient left without a share it signed with
  keeps it, bounded, to recover its share from the certified deals); everything else a run recorded (deals,
  dealt polynomial, new share) once an epoch certificate for that epoch or a
  later one is adopted (and, for this node's own run, its share stored).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import replace

from kms.node.adoption import Adoption
from kms.node.ballots import Ballots
from kms.node.chain_follow import ChainFollower
from kms.node.chain_sync import ChainSync
from kms.node.dispatch import CHAIN_REQUEST_BURST as CHAIN_REQUEST_BURST
from kms.node.dispatch import CHAIN_REQUEST_REFILL_DELTAS as CHAIN_REQUEST_REFILL_DELTAS
from kms.node.dispatch import RECENTLY_REMOVED as RECENTLY_REMOVED
from kms.node.dispatch import Dispatch, members_of
from kms.node.early import EarlyMessages
from kms.node.genesis_trust import GenesisNotTrusted as GenesisNotTrusted
from kms.node.genesis_trust import GenesisTrust
from kms.node.governance import INTENT_RUN as INTENT_RUN
from kms.node.governance import LOCK_RUN as LOCK_RUN
from kms.node.governance import PROMPT_NONCE as PROMPT_NONCE
from kms.node.governance import Governance, RefreshRules
from kms.node.liveness import Liveness
from kms.node.model import (
    GENESIS_ENDORSEMENTS_RUN,
    ChainTrimmed,
    ChangeCheck,
    ChangeContext,
    EraseRecords,
    InputRejected,
    Link,
    NodeConfig,
    NodeEvent,
    NodeStatus,
    Restored,
    RetainedShareDeletable,
    RunFailed,
    RunProgress,
    SessionFactory,
    ShareHoldersBelowThreshold,
    StoreRecord,
    run_key_records,
)
from kms.node.model import ApprovalRefused as ApprovalRefused
from kms.node.model import ChainReplaced as ChainReplaced
from kms.node.model import ChangeRefused as ChangeRefused
from kms.node.model import DealerLeftOut as DealerLeftOut
from kms.node.model import EpochSwitched as EpochSwitched
from kms.node.model import LinkCertified as LinkCertified
from kms.node.model import MisbehaviourObserved as MisbehaviourObserved
from kms.node.model import ShareRefused as ShareRefused
from kms.node.model import SignatureWithheld as SignatureWithheld
from kms.node.model import polynomial_records as polynomial_records
from kms.node.phase import NodePhase, check_transition, phase_of
from kms.node.recovery import ShareRecovery
from kms.node.retention import ShareHolders
from kms.node.runs import SharingConfigs
from kms.node.sharing_runs import HIGHER_ATTEMPTS_KEPT as HIGHER_ATTEMPTS_KEPT
from kms.node.sharing_runs import MAX_KEPT_SHARES as MAX_KEPT_SHARES
from kms.node.sharing_runs import MAX_RESHARE_RUNS as MAX_RESHARE_RUNS
from kms.node.sharing_runs import MAX_RUN_RECORDS as MAX_RUN_RECORDS
from kms.node.sharing_runs import SharingRuns
from mpc import hpke
from mpc.broadcast import Outbound
from mpc.cert import EpochCertificate, RunKind
from mpc.codec import Message
from mpc.dkg import (
    Phase,
    SharingConfig,
    SharingSession,
)
from mpc.dkg.messages import Participant
from mpc.dkg.session import RUN_KEY_RECORD
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import (
    ChainError,
    ChainState,
    DecisionWindow,
    Proposal,
    RemoveMember,
    link_position,
)
from mpc.membership.messages import (
    ChainRequest,
    ChainUpdate,
    Change,
    GenesisEndorsement,
    GenesisEndorsements,
)
from mpc.reshare import Acknowledgement
from mpc.secret import RNG, SecretShare
from mpc.sig import SigningKey

CHAIN_RETRY_DELTAS = 20
"""A node without a chain asks for it again every this many Δ."""
MAX_CHAIN_ANSWER_LINKS = 64
"""Links in one ``ChainUpdate`` answer, at most (besides genesis)."""
MAX_CHAIN_ANSWER_BYTES = 1 << 20
"""Encoded links in one ``ChainUpdate`` answer, at most (well under the 4 MiB frame)."""


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
        session_factory: SessionFactory = SharingSession,
    ) -> None:
        self.config = config
        self._check = check
        self.governance = Governance()
        """This member's intent, approvals and lock in the current epoch."""
        self.rules = RefreshRules(config)
        self.me = config.index
        self._key = identity_key
        self._dkg_key = dkg_key
        self._rng = rng
        restored = restored or Restored()
        self._records = restored.records
        self._now = float("-inf")
        self.phase = NodePhase.RESTORING
        """Where this node is in its lifecycle (``kms.node.phase``); changed only by
        ``_enter``, which checks the transition table."""
        self._was_member = False
        self._phase_inputs: tuple[ChainState | None, SharingSession | None] | None = None
        """The chain state and run ``_sync_phase`` last computed the phase from."""
        self.liveness = Liveness(config.delta)
        """Since when this process has ticked without a pause: a restarted node is a new
        ``NodeCore`` and starts counting at its first time."""
        self._outbox: list[Outbound] = []
        self._events: list[NodeEvent] = []
        self.early = EarlyMessages()
        """Messages for a run or window not started yet, per member (own quota each)."""
        self.follower = ChainFollower(restored.admission_policy)
        """The chain this node follows: genesis and the retained tail, and what they prove."""
        self.state: ChainState | None = None
        self.share: SecretShare | None = restored.share
        self.holders = ShareHolders(restored.retained)
        """Who holds a share of this epoch; old shares retained until it is safe."""
        self._asked_chain = False
        self._asked_chain_at = float("-inf")
        self.addresses: dict[ParticipantIndex, tuple[str, ...]] = {}
        """Addresses of members admitted by certified changes (for the transport)."""
        self._epoch_ready_at: float | None = None
        self.last_refresh: float | None = None
        self._participants: dict[ParticipantIndex, Participant] = {
            ParticipantIndex(p.index): p for p in config.genesis
        }
        self._port = _CorePort(self)
        self.sharing = SharingRuns(self, session_factory)
        """The sharing run going on, and the records of runs started here."""
        self.ballots = Ballots(self)
        """The decision window going on, and what this member puts in it."""
        self.adoption = Adoption(self)
        """Adopting the runs' and windows' results and certified links."""
        self.sync = ChainSync(self)
        """Which verified chain this node follows (a peer's, when it ranks higher)."""
        self.dispatch = Dispatch(self)
        """Where each message goes; the per-peer chain request budget."""
        self.recovery = ShareRecovery(self.me, config.delta, self._port)
        """Serving the head's certified deals; recovering this member's share from them."""
        self.share_error: str | None = None
        self.configs = SharingConfigs(config, 2 * HIGHER_ATTEMPTS_KEPT)
        """The configurations of the genesis and reshare attempts."""
        self.trust = GenesisTrust(
            self.me,
            identity_key,
            config.genesis,
            config.threshold,
            config.genesis_mpk,
            self._port,
        )
        """Which genesis this node may adopt; the endorsements of its genesis."""
        for raw in restored.records(GENESIS_ENDORSEMENTS_RUN).values():
            try:
                self.trust.pend(GenesisEndorsement.decode(raw))
            except InvalidEncoding:
                continue
        if restored.chain:
            before = self.sync.restore(list(restored.chain))
            head = self.state.epoch if self.state is not None else 0
            self.sharing.ran_epochs |= {head, head + 1}
            self.adoption.restore_shares(before)
            self.ballots.restore_intent()
        self._sync_phase()

    @property
    def chain(self) -> list[Link]:
        """Genesis, then a contiguous recent tail (the last ``chain_retention`` epochs)."""
        return self.follower.links

    @chain.setter
    def chain(self, links: list[Link]) -> None:
        self.follower.links = links

    @property
    def _run(self) -> SharingSession | None:
        return self.sharing.run

    @property
    def _reshare_runs(self) -> dict[bytes, SharingConfig]:
        return self.sharing.reshare_runs

    @property
    def _epoch_states(self) -> dict[int, ChainState]:
        return self.follower.states

    @_epoch_states.setter
    def _epoch_states(self, states: dict[int, ChainState]) -> None:
        self.follower.states = states

    @property
    def _retained(self) -> dict[int, SecretShare]:
        return self.holders.retained

    @property
    def _early_acks(self) -> deque[tuple[ParticipantIndex, Acknowledgement]]:
        return self.holders.early

    @property
    def _endorsements(self) -> dict[int, GenesisEndorsement]:
        return self.trust.endorsements

    @property
    def _seeds(self) -> dict[bytes, bytes]:
        return self.recovery.seeds

    @property
    def _my_proposals(self) -> dict[bytes, Proposal]:
        return self.governance.proposals

    @property
    def _my_approvals(self) -> set[bytes]:
        return self.governance.approvals

    @property
    def live_since(self) -> float | None:
        """Since when this process has ticked without a stall (``SharingSession.live``)."""
        return self.liveness.sharing_since

    def _enter(self, phase: NodePhase) -> None:
        """Move to ``phase``: the one place the phase changes (``TRANSITIONS`` checked)."""
        if phase is self.phase:
            return
        check_transition(self.phase, phase)
        self.phase = phase

    def _sync_phase(self) -> None:
        """Enter the phase the current view puts this node in (``phase_of``).

        ``phase_of`` depends only on the chain state and the sharing run (both replaced,
        never changed in place), so nothing is recomputed while neither was replaced."""
        st = self.state
        run = self.sharing.run
        last = self._phase_inputs
        if last is not None and last[0] is st and last[1] is run:
            return
        if st is not None and not self._was_member:
            self._was_member = int(self.me) in st.used_indices or self.me in self._genesis_indices()
        self._enter(
            phase_of(
                self.me,
                has_chain=st is not None,
                genesis_running=run is not None and run.config.kind == RunKind.DKG,
                committee=st.committee.indices if st is not None else (),
                incoming=members_of(st) if st is not None else (),
                pending=st is not None and st.pending is not None,
                was_member=self._was_member,
            )
        )
        self._phase_inputs = (st, run)  # after the transition: a refused one is tried again

    def _epoch_certificate(self, epoch: int) -> EpochCertificate | None:
        return self.follower.epoch_certificate(epoch)

    # --- restoring -------------------------------------------------------------

    def _mpk_of(self, cert: EpochCertificate) -> G2:
        return G2.from_bytes(cert.transcript.mpk)

    def _check_genesis(self, cert: EpochCertificate) -> None:
        tr = cert.transcript
        if tr.committee != self.config.genesis or tr.threshold != self.config.threshold:
            raise ChainError("genesis certificate is not for the configured genesis committee")

    # --- genesis trust (``kms.node.genesis_trust``) ------------------------------------

    def _trust_genesis(self, cert: EpochCertificate) -> None:
        """Raise ``GenesisNotTrusted`` unless this node may adopt ``cert`` as its genesis."""
        reason = self.trust.untrusted(cert)
        if reason is not None:
            raise GenesisNotTrusted(reason)

    def _genesis(self) -> EpochCertificate | None:
        """The genesis link, once this node holds a chain."""
        first = self.chain[0] if self.chain and self.state is not None else None
        return first if isinstance(first, EpochCertificate) else None

    def _genesis_adopted(self) -> None:
        genesis = self._genesis()
        if genesis is not None:
            self.trust.adopted(genesis, list(self._participants))

    def _note_removed(self, before: ChainState, after: ChainState) -> None:
        self.dispatch.note_removed(before, after)

    def allowed_peers(self) -> frozenset[ParticipantIndex]:
        """Who this node takes protocol messages from (``Dispatch.allowed_peers``)."""
        return self.dispatch.allowed_peers()

    def recently_removed(self) -> tuple[ParticipantIndex, ...]:
        """Removed members (at most ``RECENTLY_REMOVED``, oldest first) whose chain requests
        are still answered, metered; nothing else of theirs is taken."""
        return tuple(self.dispatch.removed)

    def removed_participants(self) -> Mapping[ParticipantIndex, Participant]:
        """The participant records of the recently removed members this node knows (their
        identity keys authenticate their chain requests)."""
        return {i: p for i, p in self.dispatch.removed.items() if p is not None}

    # --- the contract ------------------------------------------------------------

    def messages_to_send(self) -> list[Outbound]:
        for s in self._sessions():
            self._outbox.extend(s.messages_to_send())
            self.adoption.collect(s)
        self._sync_phase()
        out, self._outbox = self._outbox, []
        return out

    def events(self) -> list[NodeEvent]:
        for s in self._sessions():
            self.adoption.collect(s)
        self._sync_phase()
        # Erasures go last: what they erase (a new share) is stored by the events before.
        self._events.extend(EraseRecords(run) for run in self.sharing.erase)
        self.sharing.erase.clear()
        out, self._events = self._events, []
        return out

    def _replay_early(self) -> None:
        self.dispatch.replay_early()

    def _sessions(self) -> list[SharingSession | DecisionWindow]:
        out: list[SharingSession | DecisionWindow] = []
        if self.sharing.run is not None:
            out.append(self.sharing.run)
        if self.ballots.window is not None:
            out.append(self.ballots.window)
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
            self.dispatch.receive(peer, message, now)
        except RemoteProtocolError as exc:
            self._events.append(InputRejected(peer, str(exc)))
        except (InvalidEncoding, InvalidSignature) as exc:
            self._events.append(InputRejected(peer, f"{type(exc).__name__}: {exc}"))
        self._pump()

    def epoch_state(self, epoch: int) -> ChainState | None:
        """What this node's chain proves about ``epoch`` (its committee and public shares),
        or None if the chain does not reach it or the epoch is older than the retained
        links (``is_stale``). Each state was verified when its link was adopted."""
        if self.state is None:
            return None
        return self._epoch_states.get(epoch)

    def is_stale(self, epoch: int) -> bool:
        """``epoch`` is before the oldest retained one: evidence about it is refused."""
        return self.follower.is_stale(epoch)

    def head_position(self) -> int:
        """Position of this node's last link in the full chain (-1 without a chain)."""
        return self.follower.head_position()

    def observe_epoch(self, peer: ParticipantIndex, epoch: int, now: float) -> None:
        """An authenticated member says it is at ``epoch``. If that is ahead of us, ask it
        for the chain (at most every ``CHAIN_RETRY_DELTAS`` Δ): a member that was down
        while the committee moved on catches up even if its requests at start were lost."""
        st = self.state
        if peer == self.me or peer not in self.allowed_peers():
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
        self._outbox.append(Outbound(peer, ChainRequest(self.head_position() + 1)))
        self._pump()

    def advance_time(self, now: float) -> None:
        if now < self._now:
            return
        if self.sharing.first_tick is None:
            self.sharing.first_tick = now
        self.liveness.observe(now)
        self._now = now
        self._tick()
        self._pump()

    # --- operator actions --------------------------------------------------------------

    def propose(self, change: Change) -> bytes:
        """Propose a change in the next window; returns the proposal id.

        Raises ``ChangeRefused`` when this node's checks (the join request's
        quote against the admission policy, a removal's evidence) refuse it. The
        proposal is also sent to every other member at once (``ProposalNotice``), so
        approvals given before the next window go out in that window.
        """
        state = self._require_member()
        if isinstance(change, RemoveMember) and not change.identity:
            # Name the identity removed: the change then applies to that node only.
            holder = next((m for m in state.committee.members if m.index == change.index), None)
            if holder is not None:
                change = replace(change, identity=holder.identity)
        if state.apply(change) is None:
            raise LocalProtocolError(
                f"the change is not valid for the committee of epoch {state.epoch}: "
                f"{state.why_invalid(change)}"
            )
        self._check_change(change)
        p = Proposal.of(state.epoch, state.head_hash, int(self.me), self._rng(16), change)
        self.governance.proposals[p.id()] = p
        self.governance.approvals.add(p.id())
        self.ballots.persist_intent()
        self.ballots.announce(p)
        return p.id()

    def approve(self, proposal_id: bytes) -> bool:
        """Approve a proposal; returns False when it is not known yet.

        With a change check configured, a proposal is checked before this node
        approves it (``ChangeRefused`` if it fails). One not seen yet is
        remembered and checked when it shows up: sent by its proposer, or in a
        decided window.
        """
        self._require_member()
        if len(proposal_id) != 32:
            raise LocalProtocolError("a proposal id is 32 bytes")
        if self._check is None:
            self.governance.approvals.add(proposal_id)
            self.ballots.persist_intent()
            return True
        p = self.governance.known(proposal_id)
        if p is None:
            self.governance.deferred.add(proposal_id)
            self.ballots.persist_intent()
            return False
        self._check_change(p.change)
        self.governance.refused.pop(proposal_id, None)
        self.governance.approvals.add(proposal_id)
        self.ballots.persist_intent()
        return True

    def prompt_refresh_allowed(self) -> bool:
        """Whether this member approves prompt refreshes in the current window
        (``Ballots.prompt_refresh_allowed``: the committee-wide cap)."""
        return self.ballots.prompt_refresh_allowed()

    def _check_change(self, change: Change) -> None:
        if self._check is None or self.state is None:
            return
        ctx = ChangeContext(
            self.state,
            tuple(self.chain),
            self._now,
            self.admission_policy(),
            dict(self.sharing.reshare_runs),
        )
        self._check(ctx, change)

    def admission_policy(self) -> bytes | None:
        """The bytes of the committee-certified node admission policy, if known here.

        The committee names only its hash; the bytes come from the certified
        ``admission-policy`` change that set it, or from the genesis configuration.
        """
        st = self.state
        if st is None:
            return None
        return self.follower.admission_policy(st, self.config.admission_policy)

    def _require_member(self) -> ChainState:
        if self.state is None or self.me not in self.state.committee.indices:
            raise LocalProtocolError("this node is not a member of the current epoch")
        return self.state

    @property
    def participants(self) -> Mapping[ParticipantIndex, Participant]:
        """Everyone this node may talk to: members of the chain and admitted newcomers."""
        return dict(self._participants)

    # --- status --------------------------------------------------------------------------

    def run_progress(self) -> RunProgress | None:
        """The current sharing run and its phase, or ``None`` (cheap: read after every step
        for the phase-duration metrics)."""
        run = self.sharing.run
        if run is None:
            return None
        c = run.config
        return RunProgress(c.kind, c.epoch, c.attempt, run.phase.value)

    def status(self) -> NodeStatus:
        st = self.state
        gov = self.governance
        pending = gov.pending() if st is not None else ()
        running = (
            self.sharing.run.config.kind
            if self.sharing.run and self.sharing.run.phase not in (Phase.DONE, Phase.FAILED)
            else None
        )
        return NodeStatus(
            epoch=st.epoch if st else None,
            threshold=st.threshold if st else None,
            committee=tuple(st.committee.indices) if st else (),
            mpk=st.mpk.to_bytes() if st else None,
            has_share=self.share is not None,
            running=running,
            pending=pending,
            retained=self.holders.missing(),
            last_refresh=self.last_refresh,
            refused=tuple((pid.hex(), r) for pid, (r, _) in sorted(gov.refused.items())),
            waiting=tuple(pid.hex() for pid in sorted(gov.deferred)),
            share_holders=tuple(sorted(self.holders.holders)),
            share_holders_below_threshold=(
                st is not None and self._holders_due() and len(self.holders.holders) < st.threshold
            ),
            share_error=self.share_error,
            locked=gov.lock.outcome.proposal.id().hex() if gov.lock is not None else None,
            phase=self.phase.value,
        )

    def chain_update(self, have: int = 0) -> ChainUpdate:
        """The answer to ``ChainRequest(have)``: what a peer holding the chain up to
        position ``have`` needs, bounded by ``MAX_CHAIN_ANSWER_LINKS`` and
        ``MAX_CHAIN_ANSWER_BYTES``.

        A peer a few links behind gets the links after ``have``; one further
        behind (or asking from 0) gets genesis and the recent tail from the
        epoch certificate before the head, which it verifies from the head
        (``verify_recent``). Nothing for a peer at or past our head.
        """
        return _chain_answer(self.chain, self.head_position(), have)

    def chain_page(self, start: int, limit: int, max_bytes: int) -> tuple[int, int, ChainUpdate]:
        """Retained links from position ``start`` (genesis is position 0), at most ``limit``
        links and ``max_bytes`` encoded bytes (at least one link when any is left);
        returns the position of the first link given and the position to ask for next
        (``GET /v1/chain`` paging)."""
        return _chain_page(self.chain, self.head_position(), start, limit, max_bytes)

    def _reshare_config(self, st: ChainState, attempt: int) -> SharingConfig | None:
        return self.sharing.reshare_config(st, attempt)

    def _send_chain(self, peer: ParticipantIndex, have: int) -> None:
        """Send ``peer`` the chain after ``have`` links; from genesis, the genesis
        endorsements this node holds go first."""
        if have == 0 and self.chain and self.trust.endorsements:
            self._outbox.append(Outbound(peer, GenesisEndorsements(self.trust.bundle())))
        self._outbox.append(Outbound(peer, self.chain_update(have)))

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
            have = self.head_position() + 1
            for i in sorted(self._participants):
                if i != self.me:
                    self._outbox.append(Outbound(i, ChainRequest(have)))
        if self.state is None and self.sharing.run is None and self.me in self._genesis_indices():
            self.sharing.start_genesis(self.sharing.attempt)
        if self.sharing.run is not None and self.sharing.run.phase in (Phase.DONE, Phase.FAILED):
            self.sharing.end_run(self.sharing.run)
        if self.sharing.run is not None:
            try:
                self.sharing.run.advance_time(now)
            except (LocalProtocolError, InvalidSignature, InvalidEncoding) as exc:
                self._session_broke(self.sharing.run, exc)
            else:
                self.adoption.collect(self.sharing.run)
        if self.state is not None and self.state.pending is not None and self.sharing.run is None:
            self.sharing.start_reshare(self.sharing.attempt)
        self.ballots.step()

    def _session_broke(self, session: SharingSession | DecisionWindow, exc: Exception) -> None:
        """A run or window that breaks locally fails alone; the node and its epoch go on."""
        if isinstance(session, SharingSession):
            self.adoption.collect(session)
            cfg = session.config
            self._events.append(RunFailed(cfg.kind, cfg.epoch, cfg.attempt, f"local error: {exc}"))
            if self.sharing.run is session:
                self.sharing.end_run(session)
                if cfg.kind == RunKind.RESHARE:
                    self.sharing.attempt = cfg.attempt + 1
            else:
                self.sharing.end_run(session)
        else:
            self.adoption.collect(session)
            epoch = self.state.epoch if self.state is not None else 0
            self._events.append(RunFailed("window", epoch, session.window, f"local error: {exc}"))
            if self.ballots.window is session:
                self.ballots.window = None

    def _genesis_indices(self) -> list[ParticipantIndex]:
        return [ParticipantIndex(p.index) for p in self.config.genesis]

    def _trim(self) -> None:
        """Keep genesis and the links of the last ``chain_retention`` epochs."""
        first = self.follower.trim(self.config.chain_retention)
        if first is not None:
            self._events.append(ChainTrimmed(first))

    def _incoming_members(self, state: ChainState) -> list[ParticipantIndex]:
        if state.pending is None:
            return []
        new = state.apply(state.pending.outcome.proposal.change)
        return new.indices if new else []

    def _holders_due(self) -> bool:
        """Whether the grace period for learning who holds shares of this epoch is over."""
        st = self.state
        if st is None or self.me not in st.committee.indices or self._epoch_ready_at is None:
            return False
        if self._now == float("-inf"):
            return False
        return self.holders.due(self._now, self._epoch_ready_at, self.config.delta)

    def _pump(self) -> None:
        self.recovery.serve_head(self.state)
        self.recovery.step(self.state, self.share, self.sharing.run, self._now)
        st = self.state
        held = self.holders
        if st is not None and held.reported != st.epoch and self._holders_due():
            held.reported = st.epoch
            if len(held.holders) < st.threshold:
                self._events.append(
                    ShareHoldersBelowThreshold(st.epoch, tuple(sorted(held.holders)), st.threshold)
                )
        for epoch in held.deletable():
            self._events.append(RetainedShareDeletable(epoch))
        self._sync_phase()

    @property
    def retained_epochs(self) -> list[int]:
        return sorted(self.holders.retained)


class _CorePort:
    """What the collaborators ask of the core (``kms.node.recovery.RecoveryPort``,
    ``kms.node.genesis_trust.TrustPort``)."""

    def __init__(self, core: NodeCore) -> None:
        self._core = core

    def send(self, to: ParticipantIndex, message: Message) -> None:
        self._core._outbox.append(Outbound(to, message))

    def store_public(self, run: bytes, key: str, data: bytes) -> None:
        self._core._events.append(StoreRecord(run, key, data, False))

    def records(self, run: bytes) -> Mapping[str, bytes]:
        return self._core._records(run)

    def seed_record(self, run: bytes) -> bytes | None:
        return self._core._records(run_key_records(run)).get(RUN_KEY_RECORD)

    def erase_seed(self, run: bytes) -> None:
        self._core.sharing.erase.append(run_key_records(run))

    def certified_config(self, st: ChainState) -> SharingConfig | None:
        return self._core.sharing.certified_config(st)

    def late_share(self, cert: EpochCertificate, share: SecretShare) -> None:
        self._core.adoption.late_share(cert, share)

    def finalized_genesis(self, cert: EpochCertificate) -> bool:
        return self._core.sharing.persisted_share(cert, None) is not None


def _chain_answer(chain: list[Link], head: int, have: int) -> ChainUpdate:
    """``NodeCore.chain_update`` over ``chain``, whose last link is at position ``head``."""
    if not chain or have > head:
        return _update([])
    have = max(have, 0)
    after = [x for x in chain[1:] if link_position(x) >= have]
    if have == 0:
        after = [chain[0], *after]
    contiguous = bool(after) and link_position(after[0]) == have
    if (
        contiguous
        and len(after) <= MAX_CHAIN_ANSWER_LINKS
        and _size(after) <= MAX_CHAIN_ANSWER_BYTES
    ):
        return _update(after)
    head_epoch = head // 2
    lo = 2 * (head_epoch - 1) if head_epoch >= 2 else 1
    tail = [x for x in chain[1:] if link_position(x) >= lo]
    return _update(_within_bytes([chain[0], *tail]))


def _chain_page(
    chain: list[Link], head: int, start: int, limit: int, max_bytes: int
) -> tuple[int, int, ChainUpdate]:
    """``NodeCore.chain_page`` over ``chain``, whose last link is at position ``head``."""
    links = [x for x in chain if link_position(x) >= max(start, 0)]
    out: list[Link] = []
    size = 0
    for x in links[: max(limit, 1)]:
        n = len(x.encode())
        if out and size + n > max_bytes:
            break
        out.append(x)
        size += n
    first = link_position(out[0]) if out else head + 1
    following = link_position(out[-1]) + 1 if out else first
    return first, following, _update(out)


def _update(links: list[Link]) -> ChainUpdate:
    return ChainUpdate.of(links)


def _size(links: list[Link]) -> int:
    return sum(len(x.encode()) for x in links)


def _within_bytes(links: list[Link]) -> list[Link]:
    """Genesis and a tail, without its oldest links until they fit ``MAX_CHAIN_ANSWER_BYTES``.

    The newest epoch certificate and what follows it are always kept, and the
    kept tail starts at an epoch certificate (it is verified from there).
    """
    if len(links) <= 1:
        return links
    last_epoch = max(i for i, x in enumerate(links) if isinstance(x, EpochCertificate))
    start = 1
    while start < last_epoch and (
        not isinstance(links[start], EpochCertificate)
        or _size([links[0], *links[start:]]) > MAX_CHAIN_ANSWER_BYTES
    ):
        start += 1
    return [links[0], *links[start:]]
