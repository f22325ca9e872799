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

import hashlib
import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from kms.node.limits import deals_answer_bytes, early_messages, peer_queue_bytes
from kms.node.model import (
    GENESIS_ENDORSEMENTS_RUN,
    ApprovalRefused,
    ChainReplaced,
    ChainTrimmed,
    ChangeCheck,
    ChangeContext,
    ChangeRefused,
    EpochSwitched,
    EraseRecords,
    InputRejected,
    Link,
    LinkCertified,
    MisbehaviourObserved,
    NodeConfig,
    NodeEvent,
    NodeStatus,
    Restored,
    RetainedShareDeletable,
    RunFailed,
    RunProgress,
    SessionFactory,
    ShareHoldersBelowThreshold,
    ShareRefused,
    StoreRecord,
    polynomial_records,
    run_key_records,
)
from mpc import hpke
from mpc.broadcast import BroadcastPayload, DigestRelay, Outbound, PullRequest
from mpc.cert import ZERO_HASH, EpochCertificate, RunKind
from mpc.codec import MAX_MESSAGE_SIZE, Message, MessageDecodeError
from mpc.dkg import (
    CertificateCompleted,
    DealerExcluded,
    Persist,
    Phase,
    ResponderEquivocated,
    SharingConfig,
    SharingFailed,
    SharingFinalized,
    SharingSession,
)
from mpc.dkg.messages import CertificatePartial, DealsAnswer, DealsRequest, Participant
from mpc.dkg.recovery import DealerShareInvalid, ShareNotDealt, recover_share
from mpc.dkg.session import POLYNOMIAL_RECORD, RUN_KEY_RECORD, STALL_FRACTION
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.math.fields import scalar_from_bytes
from mpc.membership import (
    AddMember,
    ChainError,
    ChainState,
    ChangeAdmissionPolicy,
    DecisionWindow,
    LockReport,
    MembershipCertificate,
    MembershipCertified,
    MembershipIntent,
    OutcomeLocked,
    Proposal,
    Refresh,
    RemoveMember,
    WindowPhase,
    extend,
    genesis_state,
    link_position,
    rank,
    verify_recent,
)
from mpc.membership.messages import (
    ChainRequest,
    ChainUpdate,
    Change,
    GenesisEndorsement,
    GenesisEndorsements,
    OutcomePartial,
    decode_link,
    endorsing_members,
)
from mpc.membership.window import LIVE_GAP_FRACTION
from mpc.reshare import Acknowledgement, RetentionTracker
from mpc.secret import RNG, SecretScalar, SecretShare
from mpc.sig import SigningKey

RECENTLY_REMOVED = 16
"""Members removed from the committee whose chain requests are still answered (the most
recent ones): a removed member learns of its removal. Nothing else of theirs is taken."""
CHAIN_REQUEST_BURST = 4
CHAIN_REQUEST_REFILL_DELTAS = 5
"""Chain requests answered per peer: a burst of 4, then one more every this many Δ (an
honest node asks on start and then at most every ``CHAIN_RETRY_DELTAS`` Δ)."""
MAX_RESHARE_RUNS = 16
"""Reshare configurations kept for judging evidence (the most recent runs)."""
CHAIN_RETRY_DELTAS = 20
"""A node without a chain asks for it again every this many Δ."""
MAX_RUN_RECORDS = 64
"""Runs this process started whose records are still to be erased (the oldest erased first)."""
HOLDERS_GRACE_DELTAS = 10
"""A certified epoch in which this node knows fewer than ``t`` share holders this many Δ
after it became ready here is reported (``NodeStatus.share_holders_below_threshold``)."""
MAX_KEPT_SHARES = 8
"""Shares of finalized runs that failed locally, kept in memory in case their
certificate arrives late (they are persisted as run records too)."""
HIGHER_ATTEMPTS_KEPT = 8
EARLY_ACKS_PER_MEMBER = 4
"""Acknowledgements of an epoch not certified here yet, kept per member."""
"""Attempts after the certified one of the head's epoch whose records a node keeps."""
ACK_RUN_LABEL = b"acks"
"""Run id prefix of the acknowledgements this node received for one epoch certificate."""
MAX_CHAIN_ANSWER_LINKS = 64
"""Links in one ``ChainUpdate`` answer, at most (besides genesis)."""
MAX_CHAIN_ANSWER_BYTES = 1 << 20
"""Encoded links in one ``ChainUpdate`` answer, at most (well under the 4 MiB frame)."""
PROMPT_REFRESH_WINDOWS = 10
"""With ``refresh_interval = 0``, the committee approves at most one prompt refresh per
this many window periods (with a schedule, at most one per ``refresh_interval``)."""
PROMPT_NONCE = b"prompt-refresh\x00\x00"
"""The nonce of a member's prompt refresh proposal: its id is known to every member."""
INTENT_RUN = b"membership-intent"
DEALS_RUN_LABEL = b"deals/"
"""Store run prefix (before the certified transcript's hash) of the head's certified deals
this node keeps for members recovering their share (``DealsRequest``)."""
RECOVERY_SEED_DELTAS = 40
"""A recipient that ends a run without a share it signed with keeps the run key's seed at
most this many Δ after the run's scheduled end (less when the run is decided, below)."""
RECOVERY_WAIT_DELTAS = 4
"""How long the members asked for the deals have to answer before the next are asked."""
DEALS_REQUEST_BURST = 2
DEALS_REQUEST_REFILL_DELTAS = 10
"""Deal requests answered per peer: a burst of 2, then one more every this many Δ."""
LOCK_RUN = b"membership-lock"


MAX_PENDING_ENDORSEMENTS = 4
"""Endorsements kept per genesis member while this node has no chain yet."""
MAX_GENESIS_OFFERS = 64
"""Peers whose unendorsed chain (and relayed endorsements) a node without a chain keeps."""


class GenesisNotTrusted(ChainError):
    """A genesis certificate this node may not adopt: fewer than ``t`` genesis members
    endorsed it, or it is not for the pinned MPK."""


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
        self._session_factory = session_factory
        """Builds each run's sharing session (``kms.node.model.SessionFactory``)."""
        self._deferred: set[bytes] = set()
        self._refused: dict[bytes, tuple[str, str]] = {}
        self.me = config.index
        self._key = identity_key
        self._dkg_key = dkg_key
        self._rng = rng
        restored = restored or Restored()
        self._records = restored.records
        self._now = float("-inf")
        self.live_since: float | None = None
        """Since when this process has ticked without a stall (``SharingSession.live``):
        a restarted node is a new ``NodeCore`` and starts counting at its first time."""
        self._outbox: list[Outbound] = []
        self._events: list[NodeEvent] = []
        self._early: dict[ParticipantIndex, deque[tuple[int, Message, int]]] = {}
        """Messages for a run or window not started yet, per member (sequence, message, size):
        each member has its own quota (``early_messages``, ``peer_queue_bytes``)."""
        self._early_bytes: dict[ParticipantIndex, int] = {}
        self._early_seq = 0
        self._removed: dict[ParticipantIndex, None] = {}
        self._chain_budget: dict[ParticipantIndex, tuple[float, float]] = {}
        self.chain: list[Link] = []
        """Genesis, then a contiguous recent tail (the last ``chain_retention`` epochs)."""
        self._reshare_runs: dict[bytes, SharingConfig] = {}
        self._epoch_states: dict[int, ChainState] = {}
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
        self._seen: dict[bytes, Proposal] = {}
        """Proposals seen in delivered ballots this epoch: for checking deferred approvals
        and for status only; decisions never use them."""
        self._counts: dict[bytes, int] = {}
        """Approvals each proposal had in the last window (status only)."""
        self._lock: LockReport | None = None
        self._intent_seq = 0
        self._live_since = float("inf")
        self._my_proposals: dict[bytes, Proposal] = {}
        self._my_approvals: set[bytes] = set()
        self._epoch_ready_at: float | None = None
        self.last_refresh: float | None = None
        self._participants: dict[ParticipantIndex, Participant] = {
            ParticipantIndex(p.index): p for p in config.genesis
        }
        self._kept: dict[bytes, tuple[int, SecretShare]] = {}
        self._seeds: dict[bytes, bytes] = {}
        """Run key seeds of the runs going on here (as persisted), by run id."""
        self._recovery_seeds: dict[bytes, tuple[int, int, bytes, float]] = {}
        """Seeds kept past their run for recovering a share: run → (epoch, attempt, seed,
        erase by)."""
        self._recovery: _Recovery | None = None
        self._last_recovery: _Recovery | None = None
        self._recovery_check = True
        self._recovery_ended: deque[bytes] = deque(maxlen=16)
        """Certificates (fingerprints) whose share recovery ended here (done or given up)."""
        self._finalized_deals: dict[bytes, DealsAnswer] = {}
        """The deals of runs this node finalized, by transcript hash (a few)."""
        self._served: DealsAnswer | None = None
        self._served_for: bytes | None = None
        self._deals_budget: dict[ParticipantIndex, tuple[float, float]] = {}
        self._holders: dict[ParticipantIndex, Acknowledgement] = {}
        self._holders_since: float | None = None
        self._holders_reported = -1
        self.share_error: str | None = None
        self._ran_epochs: set[int] = set()
        """Epochs this process ran a sharing run of (or, from a restart, may have)."""
        self._genesis_configs: dict[int, SharingConfig] = {}
        self._ran_epochs.add(0)
        self._policy_bytes = restored.admission_policy
        self._first_tick: float | None = None
        self._genesis_missed: bool | None = None
        self._endorsements: dict[int, GenesisEndorsement] = {}
        """Verified endorsements of the genesis this node holds, by signer."""
        self._pending_endorsements: dict[int, deque[GenesisEndorsement]] = {}
        """Endorsements received before this node had a chain (checked on use)."""
        self._own_genesis: deque[bytes] = deque(maxlen=16)
        """Transcript hashes this node's own genesis runs finalized."""
        self._candidates: dict[ParticipantIndex, EpochCertificate] = {}
        """Genesis certificates offered by peers, not endorsed (yet): the rest of a
        peer's chain is asked for again once its genesis is adopted."""
        self._offered: dict[ParticipantIndex, tuple[GenesisEndorsement, ...]] = {}
        """The endorsements each peer relayed before its chain (one bundle per peer)."""
        for raw in restored.records(GENESIS_ENDORSEMENTS_RUN).values():
            try:
                self._pend_endorsement(GenesisEndorsement.decode(raw))
            except InvalidEncoding:
                continue
        if restored.chain:
            before = self._restore_chain(list(restored.chain))
            head = self.state.epoch if self.state is not None else 0
            self._ran_epochs |= {head, head + 1}
            self._restore_shares(before)
            self._restore_intent()

    def _restore_shares(self, before: ChainState | None) -> None:
        """Check the restored shares against the chain; adopt a persisted share of the head's
        run if this node has none (it finalized the run but the certificate reached it late);
        rebuild what it knows about share holders and the retention trackers."""
        st = self.state
        if st is None:
            return
        if self.share is not None:
            pk = st.public_shares.get(self.me)
            if (
                self.share.index != self.me
                or pk is None
                or self.share.value.value * G2.generator() != pk
            ):
                reason = (
                    f"the stored share of epoch {st.epoch} does not match the chain's public "
                    f"share for index {int(self.me)}: it is not used, and this node serves no "
                    "keys until it gets a new share"
                )
                self.share_error = reason
                self._events.append(ShareRefused(st.epoch, reason))
                self.share = None
        for e, old in sorted(self._retained.items()):
            old_state = self.epoch_state(e)
            pk = old_state.public_shares.get(self.me) if old_state is not None else None
            if old.index != self.me or pk is None or old.value.value * G2.generator() != pk:
                reason = f"the retained share of epoch {e} does not match that epoch's public share"
                self._events.append(ShareRefused(e, reason))
                del self._retained[e]
        for raw in self._records(self._ack_run(st.certificate)).values():
            self._restore_ack(raw)
        for e in sorted(self._retained):
            cert = self._epoch_certificate(e + 1)
            if cert is None:
                continue
            self._trackers[e] = RetentionTracker(
                cert, {i: p.verify_key() for i, p in self._participants.items()}
            )
            for raw in self._records(self._ack_run(cert)).values():
                self._restore_ack(raw)
        if self.share is None:
            # Its own stored acknowledgement proves nothing once the share is not used.
            self._holders.pop(self.me, None)
        if self.share is None and self.me in st.committee.indices:
            share = self._persisted_share(st.certificate, before)
            if share is not None:
                self.share = share
                self.share_error = None
                self._events.append(
                    EpochSwitched(st.epoch, st.certificate, share, st, self._keep_runs())
                )
                self._acknowledge(st.certificate)

    def _restore_ack(self, raw: bytes) -> None:
        try:
            ack = Acknowledgement.decode(raw)
            self._take_ack(ParticipantIndex(ack.index), ack, persist=False)
        except (MessageDecodeError, RemoteProtocolError):
            pass  # an unreadable record proves nothing: the acknowledgement counts as missing

    def _epoch_certificate(self, epoch: int) -> EpochCertificate | None:
        for link in self.chain:
            if isinstance(link, EpochCertificate) and link.transcript.epoch == epoch:
                return link
        return None

    @staticmethod
    def _ack_run(cert: EpochCertificate) -> bytes:
        return ACK_RUN_LABEL + cert.hash()

    def _keep_runs(self) -> tuple[bytes, ...]:
        """Records still in use: acknowledgements the head's and retained shares' trackers
        count, and this node's records of higher attempts of the head's epoch."""
        keep = {self._ack_run(t.certificate) for t in self._trackers.values()}
        if self.state is not None:
            keep.add(self._ack_run(self.state.certificate))
            keep.update(self._higher_attempt_runs(self.state))
            keep.add(DEALS_RUN_LABEL + self.state.certificate.transcript.hash())
        keep.update(run_key_records(run) for run in self._recovery_seeds)
        return tuple(sorted(keep))

    def _higher_attempt_runs(self, st: ChainState) -> list[bytes]:
        """Run ids of the next attempts of the head's epoch. The highest certified attempt
        wins, so a higher attempt this node finalized (and may have signed) can still be
        certified: its share record must outlive the adoption of a lower one."""
        tr = st.certificate.transcript
        if tr.epoch not in self._ran_epochs:
            return []
        before = self._epoch_states.get(st.epoch - 1) if tr.kind == "reshare" else None
        out: list[bytes] = []
        for attempt in range(tr.attempt + 1, tr.attempt + 1 + HIGHER_ATTEMPTS_KEPT):
            try:
                if tr.kind == "dkg":
                    cfg: SharingConfig | None = self._genesis_config(attempt)
                else:
                    cfg = self._reshare_config(before, attempt) if before is not None else None
            except LocalProtocolError:
                break
            if cfg is None:
                break
            out.append(cfg.run_id())
        return out

    # --- restoring -------------------------------------------------------------

    def _restore_chain(self, links: list[Link]) -> ChainState | None:
        """Restore the stored chain; returns the state before its last epoch certificate."""
        first = links[0]
        if not isinstance(first, EpochCertificate):
            raise LocalProtocolError("stored chain does not start with the genesis certificate")
        self._check_genesis(first)
        pinned = self.config.genesis_mpk
        if pinned is not None and first.transcript.mpk != pinned:
            raise LocalProtocolError("stored genesis certificate is not for the pinned genesis_mpk")
        genesis_state(self._mpk_of(first), first)
        for link in links:
            self._note_policy(link)
        # Only the retained tail is verified (and kept): a head checked under the
        # pinned key is as strong as the walk from genesis.
        keep = self._retained_tail(links[1:])
        states = verify_recent([first, *keep], mpk=self._mpk_of(first))
        self.chain = [first, *keep]
        self._epoch_states = {st.epoch: st for st in states}
        if len(keep) < len(links) - 1:
            self._events.append(ChainTrimmed(link_position(keep[0]) if keep else 1))
        for prev, st in itertools.pairwise(states):
            self._note_removed(prev, st)
        self._set_state(states[-1])
        for queue in list(self._pending_endorsements.values()):
            for e in queue:
                try:
                    self._add_endorsement(e, persist=False)
                except InvalidSignature:
                    continue
        self._pending_endorsements.clear()
        return states[-2] if len(states) > 1 else None

    def _retained_tail(self, tail: list[Link]) -> list[Link]:
        """The links of the last ``chain_retention`` epochs of ``tail`` (from an epoch link)."""
        if not tail:
            return []
        head = max(link_position(x) for x in tail) // 2
        first = head - self.config.chain_retention + 1
        if first <= 0:
            return tail
        keep = [x for x in tail if link_position(x) >= 2 * first]
        return keep if keep and isinstance(keep[0], EpochCertificate) else tail[-1:]

    def _note_policy(self, link: Link) -> None:
        if isinstance(link, MembershipCertificate):
            change = link.outcome.proposal.change
            if isinstance(change, ChangeAdmissionPolicy):
                self._policy_bytes = change.policy

    def _restore_intent(self) -> None:
        """The standing intent and the lock this member persisted in the current epoch."""
        st = self.state
        if st is None or st.pending is not None:
            return
        head = st.head_hash
        saved = self._records(INTENT_RUN + head)
        keys = sorted(k for k in saved if k.startswith("intent-"))
        if keys:
            intent = MembershipIntent.decode(saved[keys[-1]])
            self._intent_seq = int(keys[-1].removeprefix("intent-")) + 1
            self._my_proposals = {p.id(): p for p in intent.proposals}
            self._my_approvals = set(intent.approvals)
            self._deferred = set(intent.deferred)
        raw = self._records(LOCK_RUN + head).get("lock")
        if raw is not None:
            lock = LockReport.decode(raw)
            if lock.outcome.previous_certificate_hash == head and lock.signer == int(self.me):
                self._lock = lock

    def _persist_intent(self) -> None:
        st = self.state
        if st is None:
            return
        intent = MembershipIntent(
            tuple(sorted(self._my_proposals.values(), key=lambda p: p.id())),
            tuple(sorted(self._my_approvals)),
            tuple(sorted(self._deferred)),
        )
        self._events.append(
            StoreRecord(
                INTENT_RUN + st.head_hash, f"intent-{self._intent_seq:06d}", intent.encode(), False
            )
        )
        self._intent_seq += 1

    def _clear_epoch_intent(self) -> None:
        self._my_proposals.clear()
        self._my_approvals.clear()
        self._deferred.clear()
        self._refused.clear()
        self._seen.clear()
        self._counts.clear()
        self._lock = None
        self._intent_seq = 0

    def _mpk_of(self, cert: EpochCertificate) -> G2:
        return G2.from_bytes(cert.transcript.mpk)

    def _check_genesis(self, cert: EpochCertificate) -> None:
        tr = cert.transcript
        if tr.committee != self.config.genesis or tr.threshold != self.config.threshold:
            raise ChainError("genesis certificate is not for the configured genesis committee")

    # --- genesis trust -----------------------------------------------------------------

    def _trust_genesis(self, cert: EpochCertificate) -> None:
        """Raise ``GenesisNotTrusted`` unless this node may adopt ``cert`` as its genesis.

        A certificate's signature, checked under the MPK written in it, proves only
        that someone knows that key's secret. The key is the committee's only if the
        configuration pins it, or this node's own genesis run computed the same
        transcript, or ``t`` genesis members endorsed it with their identity keys.
        """
        tr = cert.transcript
        pinned = self.config.genesis_mpk
        if pinned is not None:
            if tr.mpk != pinned:
                raise GenesisNotTrusted("genesis certificate is not for the pinned genesis_mpk")
            return
        if tr.hash() in self._own_genesis:
            return
        if self.me in tr.committee_indices() and self._persisted_share(cert, None) is not None:
            # Its run finalized this transcript before a restart: the stored share matches
            # the certificate's public share and the stored partial names its transcript.
            return
        pool = [e for queue in self._pending_endorsements.values() for e in queue]
        signers = endorsing_members(tr, pool, self.config.genesis)
        if len(signers) < self.config.threshold:
            raise GenesisNotTrusted(
                f"genesis certificate endorsed by {len(signers)} genesis members, "
                f"{self.config.threshold} needed"
            )

    def _pend_endorsement(self, e: GenesisEndorsement) -> None:
        if not any(p.index == e.signer for p in self.config.genesis):
            return
        queue = self._pending_endorsements.setdefault(
            e.signer, deque(maxlen=MAX_PENDING_ENDORSEMENTS)
        )
        if e not in queue:
            queue.append(e)

    def _add_endorsement(self, e: GenesisEndorsement, *, persist: bool = True) -> bool:
        """Keep ``e`` if it endorses this node's genesis; True if it was new and valid."""
        if not self.chain or e.signer in self._endorsements:
            return False
        genesis = self.chain[0]
        if not isinstance(genesis, EpochCertificate):  # pragma: no cover - restore checks
            return False
        if e.transcript_hash != genesis.transcript.hash():
            return False
        e.verify(genesis.transcript, self.config.genesis)
        self._endorsements[e.signer] = e
        if persist:
            self._events.append(
                StoreRecord(GENESIS_ENDORSEMENTS_RUN, str(e.signer), e.encode(), secret=False)
            )
        return True

    def _genesis_adopted(self) -> None:
        """Keep the endorsements gathered so far, and endorse it if this node computed it."""
        for queue in list(self._pending_endorsements.values()):
            for e in queue:
                try:
                    self._add_endorsement(e)
                except InvalidSignature:
                    continue
        self._pending_endorsements.clear()
        self._candidates.clear()
        self._maybe_endorse()

    def _maybe_endorse(self) -> None:
        """Endorse the chain's genesis if this node's own genesis run computed its transcript."""
        if not self.chain or int(self.me) in self._endorsements:
            return
        genesis = self.chain[0]
        if not isinstance(genesis, EpochCertificate) or self.me not in self._genesis_indices():
            return
        tr = genesis.transcript
        if tr.hash() not in self._own_genesis and self._persisted_share(genesis, None) is None:
            return
        mine = GenesisEndorsement.create(self._key, int(self.me), tr)
        self._add_endorsement(mine)
        for i in sorted(self._participants):
            if i != self.me:
                self._outbox.append(Outbound(i, mine))

    def _receive_endorsement(self, peer: ParticipantIndex, e: GenesisEndorsement) -> None:
        if e.signer != int(peer):
            raise RemoteProtocolError("genesis endorsement relayed for another signer", [peer])
        if self.state is not None:
            try:
                self._add_endorsement(e)
            except InvalidSignature as exc:
                raise RemoteProtocolError(f"bad genesis endorsement: {exc}", [peer]) from exc
            return
        self._pend_endorsement(e)
        self._try_candidates()

    def _offer(self, genesis: EpochCertificate, relayed: tuple[GenesisEndorsement, ...]) -> None:
        """Keep the relayed endorsements that verify for ``genesis``."""
        for e in relayed:
            try:
                e.verify(genesis.transcript, self.config.genesis)
            except InvalidSignature:
                continue
            self._pend_endorsement(e)

    def _receive_relayed(
        self, peer: ParticipantIndex, relayed: tuple[GenesisEndorsement, ...]
    ) -> None:
        if self.state is not None:
            for e in relayed:
                try:
                    self._add_endorsement(e)
                except InvalidSignature:
                    continue
            return
        candidate = self._candidates.get(peer)
        if candidate is None:
            # The chain follows: check these against its genesis then.
            self._offered.pop(peer, None)
            self._offered[peer] = relayed
            while len(self._offered) > MAX_GENESIS_OFFERS:
                del self._offered[next(iter(self._offered))]
            return
        self._offer(candidate, relayed)
        self._try_candidates()

    def _try_candidates(self) -> None:
        for peer, genesis in list(self._candidates.items()):
            try:
                self._trust_genesis(genesis)
            except GenesisNotTrusted:
                continue
            self._adopt_link(genesis, state_after=None)
            if self.state is not None:
                self._outbox.append(Outbound(peer, ChainRequest(len(self.chain))))
            break

    def _set_state(self, state: ChainState) -> None:
        if self.state is not None:
            self._note_removed(self.state, state)
        self.state = state
        self._recovery_check = True
        # The peers: this epoch's members and, while a change is pending, those of the
        # next; a removed member is dropped once the epoch without it is certified.
        self._participants = {ParticipantIndex(p.index): p for p in state.committee.members}
        change = state.pending.outcome.proposal.change if state.pending is not None else None
        if isinstance(change, AddMember):
            self._participants[ParticipantIndex(change.participant.index)] = change.participant
            if change.addresses:
                self.addresses[ParticipantIndex(change.participant.index)] = change.addresses
        self._epoch_ready_at = self._ready_time(state)

    @staticmethod
    def _members_of(state: ChainState) -> set[ParticipantIndex]:
        """The committee of ``state`` and the members a certified change is adding."""
        out = set(state.committee.indices)
        change = state.pending.outcome.proposal.change if state.pending is not None else None
        if isinstance(change, AddMember):
            out.add(ParticipantIndex(change.participant.index))
        return out

    def _note_removed(self, before: ChainState, after: ChainState) -> None:
        now_members = self._members_of(after)
        for i in sorted(self._members_of(before) - now_members):
            self._removed.pop(i, None)
            self._removed[i] = None
        for i in now_members:
            self._removed.pop(i, None)
        while len(self._removed) > RECENTLY_REMOVED:
            del self._removed[next(iter(self._removed))]
        keep = now_members | set(self._removed)
        for table in (self._chain_budget, self._deals_budget, self._early_bytes):
            for i in [i for i in table if i not in keep]:
                del table[i]
        for i in [i for i in self._early if i not in keep]:
            del self._early[i]

    def allowed_peers(self) -> frozenset[ParticipantIndex]:
        """Who this node takes protocol messages from: the current committee and the
        members a certified change is adding (before any chain: the configured
        participants). Everyone else is refused."""
        if self.state is None:
            return frozenset(self._participants)
        return frozenset(self._members_of(self.state))

    def recently_removed(self) -> tuple[ParticipantIndex, ...]:
        """Removed members (at most ``RECENTLY_REMOVED``, oldest first) whose chain requests
        are still answered, metered; nothing else of theirs is taken."""
        return tuple(self._removed)

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
        for link in reversed(self.chain):
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
        or None if the chain does not reach it or the epoch is older than the retained
        links (``is_stale``). Each state was verified when its link was adopted."""
        if self.state is None:
            return None
        return self._epoch_states.get(epoch)

    def is_stale(self, epoch: int) -> bool:
        """``epoch`` is before the oldest retained one: evidence about it is refused."""
        if len(self.chain) < 2:
            return False
        return 0 < epoch < link_position(self.chain[1]) // 2

    def head_position(self) -> int:
        """Position of this node's last link in the full chain (-1 without a chain)."""
        return link_position(self.chain[-1]) if self.chain else -1

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
        if self._first_tick is None:
            self._first_tick = now
        if self._live_since == float("inf") or now - self._now > LIVE_GAP_FRACTION * (
            self.config.delta
        ):
            self._live_since = now  # started, or resumed after a pause: live from now on
        if self.live_since is None or now - self._now > STALL_FRACTION * self.config.delta:
            self.live_since = now  # first time seen, or back from a stall
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
        if isinstance(change, RemoveMember) and not change.identity:
            # Name the identity removed: the change then applies to that node only.
            holder = next((m for m in state.committee.members if m.index == change.index), None)
            if holder is not None:
                change = replace(change, identity=holder.identity)
        if state.apply(change) is None:
            raise LocalProtocolError("the change is not valid for the current committee")
        self._check_change(change)
        p = Proposal.of(state.epoch, state.head_hash, int(self.me), self._rng(16), change)
        self._my_proposals[p.id()] = p
        self._my_approvals.add(p.id())
        self._persist_intent()
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
            self._persist_intent()
            return True
        p = self._seen.get(proposal_id) or self._my_proposals.get(proposal_id)
        if p is None:
            self._deferred.add(proposal_id)
            self._persist_intent()
            return False
        self._check_change(p.change)
        self._refused.pop(proposal_id, None)
        self._my_approvals.add(proposal_id)
        self._persist_intent()
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
        """Check the approvals kept by id once their proposal shows up in delivered ballots."""
        changed = False
        for pid in sorted(self._deferred):
            p = self._seen.get(pid)
            if p is None:
                continue
            self._deferred.discard(pid)
            changed = True
            try:
                self._check_change(p.change)
            except ChangeRefused as exc:
                self._refused[pid] = (exc.reason, exc.detail)
                self._events.append(ApprovalRefused(pid, exc.reason, exc.detail))
                continue
            self._my_approvals.add(pid)
        if changed:
            self._persist_intent()

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
        if self._policy_bytes is not None and hashlib.sha256(self._policy_bytes).digest() == want:
            return self._policy_bytes
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

    def run_progress(self) -> RunProgress | None:
        """The current sharing run and its phase, or ``None`` (cheap: read after every step
        for the phase-duration metrics)."""
        run = self._run
        if run is None:
            return None
        c = run.config
        return RunProgress(c.kind, c.epoch, c.attempt, run.phase.value)

    def status(self) -> NodeStatus:
        st = self.state
        pending = []
        if st is not None:
            for pid, p in sorted(self._seen.items()):
                pending.append((pid.hex(), p.kind, self._counts.get(pid, 0)))
            for pid, p in sorted(self._my_proposals.items()):
                if pid not in self._seen:
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
            share_holders=tuple(sorted(self._holders)),
            share_holders_below_threshold=(
                st is not None and self._holders_due() and len(self._holders) < st.threshold
            ),
            share_error=self.share_error,
            locked=self._lock.outcome.proposal.id().hex() if self._lock is not None else None,
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
        if not self.chain or have > self.head_position():
            return _update([])
        have = max(have, 0)
        after = [x for x in self.chain[1:] if link_position(x) >= have]
        if have == 0:
            after = [self.chain[0], *after]
        contiguous = bool(after) and link_position(after[0]) == have
        if (
            contiguous
            and len(after) <= MAX_CHAIN_ANSWER_LINKS
            and _size(after) <= MAX_CHAIN_ANSWER_BYTES
        ):
            return _update(after)
        head_epoch = self.head_position() // 2
        lo = 2 * (head_epoch - 1) if head_epoch >= 2 else 1
        tail = [x for x in self.chain[1:] if link_position(x) >= lo]
        return _update(_within_bytes([self.chain[0], *tail]))

    def chain_page(self, start: int, limit: int, max_bytes: int) -> tuple[int, int, ChainUpdate]:
        """Retained links from position ``start`` (genesis is position 0), at most ``limit``
        links and ``max_bytes`` encoded bytes (at least one link when any is left);
        returns the position of the first link given and the position to ask for next
        (``GET /v1/chain`` paging)."""
        links = [x for x in self.chain if link_position(x) >= max(start, 0)]
        out: list[Link] = []
        size = 0
        for x in links[: max(limit, 1)]:
            n = len(x.encode())
            if out and size + n > max_bytes:
                break
            out.append(x)
            size += n
        first = link_position(out[0]) if out else self.head_position() + 1
        following = link_position(out[-1]) + 1 if out else first
        return first, following, _update(out)

    def _send_chain(self, peer: ParticipantIndex, have: int) -> None:
        """Send ``peer`` the chain after ``have`` links; from genesis, the genesis
        endorsements this node holds go first."""
        if have == 0 and self.chain and self._endorsements:
            bundle = tuple(self._endorsements[s] for s in sorted(self._endorsements))
            self._outbox.append(Outbound(peer, GenesisEndorsements(bundle)))
        self._outbox.append(Outbound(peer, self.chain_update(have)))

    # --- dispatch ------------------------------------------------------------------------

    def _dispatch(self, peer: ParticipantIndex, message: Message, now: float) -> None:
        allowed = peer in self.allowed_peers()
        if isinstance(message, ChainRequest):
            if message.have < 0:
                raise RemoteProtocolError("negative chain position", [peer])
            if not allowed and peer not in self._removed:
                raise RemoteProtocolError("message from a peer that is not a member", [peer])
            if not self._take_chain_budget(peer, now):
                raise RemoteProtocolError("chain requests rate limited", [peer])
            self._send_chain(peer, message.have)
            own = self._holders.get(self.me)
            if own is not None:
                # A member catching up (or restarted) learns who holds shares from these.
                self._outbox.append(Outbound(peer, own))
            return
        if isinstance(message, GenesisEndorsements):
            # Like a chain, from any peer this node hears: a node with no chain does not
            # know the current members yet, and every endorsement is checked.
            self._receive_relayed(peer, message.endorsements)
            return
        if not allowed:
            raise RemoteProtocolError("message from a peer that is not a member", [peer])
        if isinstance(message, GenesisEndorsement):
            self._receive_endorsement(peer, message)
            return
        if isinstance(message, ChainUpdate):
            self._receive_chain(peer, message)
            return
        if isinstance(message, Acknowledgement):
            if self.state is None or message.epoch > self.state.epoch:
                # The new epoch may not be certified here yet: keep a few for later, a
                # handful per member and only for the next epoch, so that one member
                # cannot push the others' out.
                if self.state is not None and message.epoch > self.state.epoch + 1:
                    raise RemoteProtocolError("acknowledgement for an epoch too far ahead", [peer])
                if sum(1 for p, _ in self._early_acks if p == peer) >= EARLY_ACKS_PER_MEMBER:
                    raise RemoteProtocolError("too many early acknowledgements", [peer])
                self._early_acks.append((peer, message))
                return
            self._take_ack(peer, message)
            return
        if isinstance(message, DealsRequest):
            self._answer_deals(peer, message, now)
            return
        if isinstance(message, DealsAnswer):
            self._receive_deals(peer, message)
            return
        target = self._route(message)
        if target is None:
            # For a run or window that has not started here yet: keep it for later.
            self._keep_early(peer, message)
            return
        self._deliver(target, peer, message, now)

    def _take_budget(
        self,
        table: dict[ParticipantIndex, tuple[float, float]],
        peer: ParticipantIndex,
        now: float,
        burst: int,
        refill_deltas: float,
    ) -> bool:
        rate = 1.0 / (refill_deltas * self.config.delta)
        tokens, last = table.get(peer, (float(burst), now))
        tokens = min(float(burst), tokens + max(0.0, now - last) * rate)
        if tokens < 1.0:
            table[peer] = (tokens, now)
            return False
        table[peer] = (tokens - 1.0, now)
        return True

    def _take_chain_budget(self, peer: ParticipantIndex, now: float) -> bool:
        rate = 1.0 / (CHAIN_REQUEST_REFILL_DELTAS * self.config.delta)
        tokens, last = self._chain_budget.get(peer, (float(CHAIN_REQUEST_BURST), now))
        tokens = min(float(CHAIN_REQUEST_BURST), tokens + max(0.0, now - last) * rate)
        if tokens < 1.0:
            self._chain_budget[peer] = (tokens, now)
            return False
        self._chain_budget[peer] = (tokens - 1.0, now)
        return True

    def _early_quota(self) -> tuple[int, int]:
        st = self.state
        n = len(st.committee.members) if st is not None else len(self.config.genesis)
        t = st.threshold if st is not None else self.config.threshold
        # A reshare to a larger committee: count its recipients too.
        n = max(n, len(self.allowed_peers()))
        return early_messages(n), peer_queue_bytes(n, t)

    def _keep_early(self, peer: ParticipantIndex, message: Message) -> None:
        count, limit = self._early_quota()
        size = _approx_size(message)
        kept = self._early.setdefault(peer, deque())
        used = self._early_bytes.get(peer, 0)
        dropped = 0
        # Over its quota, a member's own oldest early messages make room (as a bounded
        # queue would), never another member's.
        while kept and (len(kept) >= count or used + size > limit):
            used -= kept.popleft()[2]
            dropped += 1
        self._early_seq += 1
        kept.append((self._early_seq, message, size))
        self._early_bytes[peer] = used + size
        if dropped:
            self._events.append(
                InputRejected(peer, f"early messages over the member's quota: {dropped} dropped")
            )

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
        pending = sorted(
            (seq, peer, msg, size) for peer, kept in self._early.items() for seq, msg, size in kept
        )
        self._early.clear()
        self._early_bytes.clear()
        for seq, peer, msg, size in pending:
            try:
                target = self._route(msg)
            except RemoteProtocolError:
                continue
            if target is None:
                self._early.setdefault(peer, deque()).append((seq, msg, size))
                self._early_bytes[peer] = self._early_bytes.get(peer, 0) + size
                continue
            try:
                self._deliver(target, peer, msg, self._now)
            except RemoteProtocolError as exc:
                self._events.append(InputRejected(peer, str(exc)))
            except (InvalidEncoding, InvalidSignature) as exc:
                self._events.append(InputRejected(peer, f"{type(exc).__name__}: {exc}"))

    # --- chain sync ------------------------------------------------------------------------

    def _receive_chain(self, peer: ParticipantIndex, update: ChainUpdate) -> None:
        """Adopt what a peer's chain proves beyond ours.

        Links that extend our head are checked one by one (``extend``). Links
        that do not (we missed more than the peer sent, or the peer holds
        another fork) are verified as genesis plus a recent tail from their
        head (``verify_recent``) and replace ours when their head ranks higher
        (``rank``: the highest ``(epoch, attempt)`` wins); a lower or equal
        conflicting head is ignored. A genesis other than ours must pass the
        same genesis check as any first chain.
        """
        links: list[Link] = []
        for kind, raw in zip(update.kinds, update.links, strict=True):
            try:
                links.append(decode_link(kind, raw))
            except MessageDecodeError as exc:
                raise RemoteProtocolError(f"malformed chain link: {exc}", [peer]) from exc
        if not links:
            return
        try:
            if self.state is not None:
                known = {x.fingerprint() for x in self.chain}
                rest = [x for x in links if x.fingerprint() not in known]
                state = self.state
                extends = True
                for link in rest:
                    try:
                        state = extend(state, link)
                    except ChainError:
                        extends = False
                        break
                if extends:
                    for link in rest:
                        self._adopt_link(link, state_after=None)
                    return
            first = links[0]
            if isinstance(first, EpochCertificate) and first.transcript.kind == "dkg":
                if self.chain and first.fingerprint() == self.chain[0].fingerprint():
                    mpk = self._mpk_of(first)
                else:
                    self._check_genesis(first)
                    mpk = self._mpk_of(first)
                    genesis_state(mpk, first)
                    # A genesis this node does not hold: adopted only if trusted (pinned,
                    # computed here, or endorsed by t genesis members).
                    if self.state is None:
                        self._offer(first, self._offered.pop(peer, ()))
                    try:
                        self._trust_genesis(first)
                    except GenesisNotTrusted as exc:
                        if self.state is None:
                            self._candidates.pop(peer, None)
                            self._candidates[peer] = first
                            while len(self._candidates) > MAX_GENESIS_OFFERS:
                                del self._candidates[next(iter(self._candidates))]
                        raise RemoteProtocolError(f"genesis refused: {exc}", [peer]) from exc
                states = verify_recent(links, mpk=mpk)
                new_chain = links
            else:
                # A tail without genesis: verified from its first epoch certificate
                # under our key, and joined to our links where it follows one of them.
                if self.state is None:
                    raise ChainError("a chain must start at genesis")
                tail = links
                while tail and not isinstance(tail[0], EpochCertificate):
                    tail = tail[1:]
                if not tail:
                    self._outbox.append(Outbound(peer, ChainRequest(0)))
                    return
                states = verify_recent(tail, mpk=self.state.mpk)
                new_chain = self._join(tail)
        except (ChainError, InvalidEncoding) as exc:
            raise RemoteProtocolError(f"chain link refused: {exc}", [peer]) from exc
        if self.state is not None and rank(states[-1]) <= rank(self.state):
            return  # behind us, or a fork that does not reach a higher (epoch, attempt)
        if new_chain is not links:
            try:
                states = verify_recent(new_chain, mpk=self.state.mpk)  # type: ignore[union-attr]
            except ChainError:  # pragma: no cover - _join keeps only links the tail follows
                new_chain = [self.chain[0], *new_chain[-len(tail) :]]
                states = verify_recent(new_chain, mpk=self.state.mpk)  # type: ignore[union-attr]
        self._replace_chain(new_chain, states)

    def _join(self, tail: list[Link]) -> list[Link]:
        """Our links up to the one ``tail`` follows, then ``tail``; else genesis and ``tail``."""
        first = tail[0]
        if not isinstance(first, EpochCertificate):  # pragma: no cover - checked by the caller
            return [self.chain[0], *tail]
        before = first.transcript.previous_certificate_hash
        for i in range(len(self.chain) - 1, 0, -1):
            link = self.chain[i]
            if link_position(link) == link_position(first) - 1 and link.hash() == before:
                return [*self.chain[: i + 1], *tail]
        return [self.chain[0], *tail]

    def _replace_chain(self, links: list[Link], states: list[ChainState]) -> None:
        """Switch to a verified chain (genesis + recent tail) that ranks above ours."""
        old_state = self.state
        head = states[-1]
        for link in links:
            self._note_policy(link)
        self.chain = list(links)
        self._epoch_states = {st.epoch: st for st in states}
        self._events.append(ChainReplaced(tuple(links)))
        gone = {e for e in self._retained if self._epoch_states.get(e) is None}
        for e in gone:
            self._retained.pop(e, None)
            self._trackers.pop(e, None)
        run = self._run
        if run is not None and run.config.epoch <= head.epoch:
            attempt = head.certificate.transcript.attempt
            if (run.config.epoch, run.config.attempt) != (head.epoch, attempt):
                self._run = None  # a run for an epoch the chain has settled otherwise
        share = self.share
        kept = {x.fingerprint() for x in links}
        if (
            share is not None
            and old_state is not None
            and old_state.epoch < head.epoch
            and old_state.certificate.fingerprint() in kept
        ):
            # Caught up past our epoch, which the new chain keeps: our share of it is
            # retained, as after any reshare, until the new epoch's members acknowledge.
            self._retained[old_state.epoch] = share
            retain: int | None = old_state.epoch
            share = None
        else:
            retain = None
        if share is not None and share.value.value * G2.generator() != head.public_shares.get(
            share.index
        ):
            share = None  # a share of another polynomial
        if share is None and self.me in head.committee.indices:
            # A higher attempt won: if this node finalized it, its persisted share is the
            # epoch's share (else none here, and a prompt refresh follows).
            share = self._persisted_share(head.certificate, states[-2] if len(states) > 1 else None)
        self._set_state(head)
        if retain is not None:
            self._trackers[retain] = RetentionTracker(
                head.certificate, {i: p.verify_key() for i, p in self._participants.items()}
            )
        self.share = share if self.me in head.committee.indices else None
        self._window = None
        self._clear_epoch_intent()
        self._run_attempt = 0
        self._previous_members = set(old_state.committee.indices) if old_state else set()
        self._holders = {}
        self._holders_since = None
        self._events.append(
            EpochSwitched(head.epoch, head.certificate, self.share, head, self._keep_runs())
        )
        self._trim()
        # As after any epoch switch: tell the others this node holds a share, and count
        # the acknowledgements that came early.
        if old_state is None:
            self._genesis_adopted()
        self._acknowledge(head.certificate)
        self._take_early_acks(head)

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
        if self.state is None and self._run is None and self.me in self._genesis_indices():
            self._start_genesis(self._run_attempt)
        if self._run is not None and self._run.phase in (Phase.DONE, Phase.FAILED):
            self._end_run(self._run)
        if self._run is not None:
            try:
                self._run.advance_time(now)
            except (LocalProtocolError, InvalidSignature, InvalidEncoding) as exc:
                self._session_broke(self._run, exc)
            else:
                self._collect(self._run)
        if self.state is not None and self.state.pending is not None and self._run is None:
            self._start_reshare(self._run_attempt)
        self._windows()

    def _session_broke(self, session: SharingSession | DecisionWindow, exc: Exception) -> None:
        """A run or window that breaks locally fails alone; the node and its epoch go on."""
        if isinstance(session, SharingSession):
            self._collect(session)
            cfg = session.config
            self._events.append(RunFailed(cfg.kind, cfg.epoch, cfg.attempt, f"local error: {exc}"))
            if self._run is session:
                self._end_run(session)
                if cfg.kind == "reshare":
                    self._run_attempt = cfg.attempt + 1
            else:
                self._end_run(session)
        else:
            self._collect(session)
            epoch = self.state.epoch if self.state is not None else 0
            self._events.append(RunFailed("window", epoch, session.window, f"local error: {exc}"))
            if self._window is session:
                self._window = None

    def _deliver(
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
            self._session_broke(target, exc)

    def _genesis_indices(self) -> list[ParticipantIndex]:
        return [ParticipantIndex(p.index) for p in self.config.genesis]

    def _start_genesis(self, attempt: int) -> None:
        # Attempts whose deadlines have all passed are over for everyone: skip them.
        while self._now >= self.config.genesis_schedule(attempt).end:
            attempt += 1
        if self._missed_genesis(attempt):
            return
        cfg = self._genesis_config(attempt)
        self._run_attempt = attempt
        self._ran_epochs.add(0)
        self._run = self._sharing_session(cfg, None)
        self._run.advance_time(self._now)
        self._replay_early()

    def _missed_genesis(self, attempt: int) -> bool:
        """A node that first ran after genesis attempt 0 was over and holds no record of an
        earlier attempt (a data directory lost, or a node started late) takes part in no
        later genesis attempt: the others may have certified one it did not see, and a
        new attempt with it could certify a second genesis under another MPK. It waits
        for the chain with ``t`` endorsements (or a pinned ``genesis_mpk``) instead."""
        if self._genesis_missed is not None:
            return self._genesis_missed
        first = self._first_tick if self._first_tick is not None else self._now
        missed = attempt > 0 and first >= self.config.genesis_schedule(0).end
        if missed:
            for earlier in range(max(0, attempt - HIGHER_ATTEMPTS_KEPT), attempt):
                if self._records(self._genesis_config(earlier).run_id()):
                    missed = False
                    break
        self._genesis_missed = missed
        if missed:
            self._events.append(
                RunFailed(
                    "dkg",
                    0,
                    attempt,
                    "genesis was over when this node started and it holds no record of it:"
                    " waiting for the chain with t endorsements or a pinned genesis_mpk",
                )
            )
        return missed

    def _genesis_config(self, attempt: int) -> SharingConfig:
        # Built once per attempt: constructing one checks every member's key signature.
        cfg = self._genesis_configs.get(attempt)
        if cfg is None:
            cfg = self._genesis_configs[attempt] = self._make_genesis_config(attempt)
            while len(self._genesis_configs) > 2 * HIGHER_ATTEMPTS_KEPT:
                del self._genesis_configs[min(self._genesis_configs)]
        return cfg

    def _make_genesis_config(self, attempt: int) -> SharingConfig:
        return SharingConfig(
            kind=RunKind.DKG,
            epoch=0,
            attempt=attempt,
            dealers=self.config.genesis,
            recipients=self.config.genesis,
            threshold=self.config.threshold,
            schedule=self.config.genesis_schedule(attempt),
            admission_policy_hash=self.config.admission_policy_hash,
        )

    def _reshare_config(self, st: ChainState, attempt: int) -> SharingConfig | None:
        """The configuration of reshare ``attempt`` after ``st`` (which has a pending change)."""
        if st.pending is None:
            return None
        outcome = st.pending.outcome
        new = st.apply(outcome.proposal.change)
        if new is None:  # pragma: no cover - extend() checked it
            return None
        sched = self.config.reshare_schedule(
            outcome.reshare_start, len(new.members), new.threshold, attempt
        )
        return SharingConfig(
            kind=RunKind.RESHARE,
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

    def _persisted_share(
        self, cert: EpochCertificate, before: ChainState | None
    ) -> SecretShare | None:
        """This node's share of the run ``cert`` certifies, if it finalized that run: kept in
        memory, or persisted as the run's ``share`` record (also across a restart). Used only
        if it matches the certificate's public share for this index and the persisted
        certificate partial, if any, names the certified transcript."""
        tr = cert.transcript
        if tr.epoch not in self._ran_epochs and not self._kept:
            return None  # catching up: this node ran no run of that epoch, nothing is stored
        if tr.kind == "dkg":
            cfg: SharingConfig | None = self._genesis_config(tr.attempt)
        else:
            cfg = self._reshare_config(before, tr.attempt) if before is not None else None
        if cfg is None or self.me not in cfg.recipient_indices:
            return None
        run = cfg.run_id()
        records = self._records(run)
        kept = self._kept.get(run)
        share = kept[1] if kept is not None else None
        if share is None:
            raw = records.get("share")
            if raw is None:
                return None
            try:
                share = SecretShare(self.me, SecretScalar(scalar_from_bytes(raw)))
            except (InvalidEncoding, ValueError):
                return None
        partial = records.get("certificate-partial")
        if partial is not None:
            try:
                if CertificatePartial.decode(partial).transcript_hash != tr.hash():
                    return None
            except MessageDecodeError:
                return None
        pk = cert.public_shares().get(self.me)
        if pk is None or share.value.value * G2.generator() != pk:
            return None
        return share

    def _sharing_session(self, cfg: SharingConfig, share: SecretShare | None) -> SharingSession:
        """The session for one run, from the ``session_factory`` the node was built with."""
        return self._session_factory(
            cfg,
            self.me,
            self._key,
            self._dkg_key,
            rng=self._rng,
            share=share,
            persisted=self._persisted(cfg),
            live_since=self.live_since,
        )

    def _persisted(self, cfg: SharingConfig) -> dict[str, bytes]:
        """A run's records: its own, and its key seed (kept under a run of its own)."""
        run = cfg.run_id()
        self._runs[run] = cfg.epoch
        while len(self._runs) > MAX_RUN_RECORDS:
            self._erase_run(next(iter(self._runs)))
        records = {
            **self._records(run),
            **self._records(run_key_records(run)),
            **self._records(polynomial_records(run)),
        }
        if RUN_KEY_RECORD in records:
            self._seeds[run] = records[RUN_KEY_RECORD]
        return records

    def _end_run(self, session: SharingSession) -> None:
        """The run is over here, done or failed: its key seed goes at once (nothing it
        encrypted to that key opens any more, whoever recorded the deals), unless this
        recipient holds no share of it that it signed with: then the seed is kept, bounded
        (``_prune_recovery_seeds``), to recover its share from the deals if certified."""
        if self._run is session:
            self._run = None
        self._erase.append(polynomial_records(session.run_id))
        seed = self._seeds.pop(session.run_id, None)
        res = session.result
        cfg = session.config
        if (
            seed is not None
            and session.is_recipient
            and (res is None or res.share is None or session.withheld is not None)
        ):
            # No share it signed with: it may need the seed to recover its share of this
            # run from the deals, if the others certify it (``_recovery_step``).
            end = cfg.schedule.end + RECOVERY_SEED_DELTAS * self.config.delta
            self._recovery_seeds[session.run_id] = (cfg.epoch, cfg.attempt, seed, end)
            self._recovery_check = True
        elif session.run_id not in self._recovery_seeds:
            self._erase.append(run_key_records(session.run_id))
        if (
            self.state is not None
            and self.state.epoch >= session.config.epoch
            and session.run_id not in self._keep_runs()
        ):
            # An outcome for its epoch is already certified (and this run is no higher
            # attempt of the head's epoch, which could still win): nothing of it is needed.
            self._erase_run(session.run_id)

    def _erase_run(self, run: bytes) -> None:
        self._runs.pop(run, None)
        self._erase.extend((run, polynomial_records(run)))
        if run not in self._recovery_seeds:
            self._erase.append(run_key_records(run))

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
        keep = set(self._keep_runs())
        for run, e in list(self._runs.items()):
            if e <= epoch and run != live and run not in keep:
                self._erase_run(run)

    def _start_reshare(self, attempt: int) -> None:
        st = self.state
        if st is None or st.pending is None:
            return
        outcome = st.pending.outcome
        new = st.apply(outcome.proposal.change)
        if new is None:  # pragma: no cover - extend() checked it
            return
        # Without a share for this epoch (a missed reshare) the node takes part as a
        # recipient only; its dealer slot stays empty and it is left out of QUAL.
        dealer_share = self.share if self.me in st.committee.indices else None
        if self.me not in new.indices and dealer_share is None:
            # Not a recipient, and (a leaving member without a share, or an outsider)
            # nothing to deal: this node takes no part.
            return
        sched = self.config.reshare_schedule(
            outcome.reshare_start, len(new.members), new.threshold, attempt
        )
        if self._now >= sched.end:
            # This attempt is already over (we were away): move on to the next one.
            self._run_attempt = attempt + 1
            return
        cfg = self._reshare_config(st, attempt)
        if cfg is None:  # pragma: no cover - extend() checked it
            return
        self._run_attempt = attempt
        self._ran_epochs.add(cfg.epoch)
        self._reshare_runs[cfg.run_id()] = cfg
        while len(self._reshare_runs) > MAX_RESHARE_RUNS:
            del self._reshare_runs[next(iter(self._reshare_runs))]
        try:
            self._run = self._sharing_session(cfg, dealer_share)
            self._run.advance_time(self._now)
        except (LocalProtocolError, InvalidSignature, InvalidEncoding) as exc:
            # This node cannot take part (e.g. its old share does not match): the run goes
            # on without it; the node and its epoch go on.
            self._events.append(RunFailed("reshare", cfg.epoch, attempt, f"local error: {exc}"))
            if self._run is not None:
                self._end_run(self._run)
            self._run = None
            self._run_attempt = attempt + 1
            return
        self._replay_early()

    def _public_polynomial(self, st: ChainState) -> list[G2]:
        return [G2.from_bytes(b) for b in st.certificate.public_polynomial]

    def _windows(self) -> None:
        st = self.state
        if st is None or self._epoch_ready_at is None:
            return
        if self._window is not None:
            try:
                self._window.advance_time(self._now)
            except (LocalProtocolError, InvalidSignature, InvalidEncoding) as exc:
                self._session_broke(self._window, exc)
                return
            self._collect(self._window)
            if self._window.phase in (
                WindowPhase.DECIDED,
                WindowPhase.NO_DECISION,
                WindowPhase.ABSTAINED,
                WindowPhase.FAILED,
            ):
                # What the window showed is kept for status and for checking approvals
                # that were waiting for their proposal; it never decides anything later.
                tally = self._window.tally
                if self.state is not None and self.state.head_hash == self._window.state.head_hash:
                    for pid, p in tally.proposals.items():
                        self._seen.setdefault(pid, p)
                    self._counts = {pid: len(v) for pid, v in tally.approvals.items()}
                    self._approve_deferred()
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
            prompt = self._prompt_proposal(st, self.me)
            proposals.append(prompt)
            approvals.add(prompt.id())
        # Another member's prompt refresh is approved only within the committee-wide cap
        # (a refresh proposed by anyone else is never approved automatically): no member
        # can keep the committee resharing.
        if self.prompt_refresh_allowed():
            for i in members:
                approvals.add(self._prompt_proposal(st, i).id())
        if self._lock is not None:
            approvals.add(self._lock.outcome.proposal.id())
        records = self._records(self._window_run_id(w))
        self._window = DecisionWindow(
            st,
            w,
            sched,
            self.me,
            self._key,
            self.share,
            proposals=sorted(proposals, key=lambda p: p.id())[:16],
            approvals=sorted(approvals)[:256],
            persisted=records,
            lock=self._lock,
            live_since=self._live_since,
            reshare_start_of=self._reshare_start_of,
        )
        self._window.advance_time(self._now)
        self._replay_early()

    def _prompt_proposal(self, st: ChainState, member: ParticipantIndex) -> Proposal:
        return Proposal.of(st.epoch, st.head_hash, int(member), PROMPT_NONCE, Refresh())

    def _reshare_start_of(self, window: int) -> int:
        """The reshare start an outcome decided in ``window`` names (the first attempt slot)."""
        st = self.state
        f = (st.threshold if st is not None else self.config.threshold) - 1
        sched = self.config.window_schedule(window, reshare_delay=2 * self.config.delta)
        return int(sched.sign_end(f) + sched.reshare_delay)

    def prompt_refresh_allowed(self) -> bool:
        """Whether this member approves prompt refreshes in the current window.

        Committee-wide cap, from the chain alone: not before two windows into the epoch,
        and at most one refresh epoch per ``refresh_interval`` (with 0: per
        ``PROMPT_REFRESH_WINDOWS`` window periods), counted from when the last epoch
        made by a refresh became ready. An epoch made by a removal lifts the cap once:
        members that missed the removal's reshare get their shares back promptly.
        """
        st = self.state
        if st is None or self._epoch_ready_at is None:
            return False
        if self._now - self._epoch_ready_at < 2 * self.config.window_period:
            return False
        prev = self._membership_before(st.epoch)
        if prev is not None and isinstance(prev.outcome.proposal.change, RemoveMember):
            return True
        gap = self.config.refresh_interval or PROMPT_REFRESH_WINDOWS * self.config.window_period
        last = self._last_refresh_ready()
        return last is None or self._now - last >= gap

    def _last_refresh_ready(self) -> float | None:
        """When the newest epoch made by a refresh became ready (from the chain)."""
        for link in reversed(self.chain):
            if isinstance(link, MembershipCertificate) and isinstance(
                link.outcome.proposal.change, Refresh
            ):
                e = link.outcome.epoch + 1
                es = self.epoch_state(e)
                if es is None:
                    return None
                return self._ready_time_of(link, es)
        return None

    def _ready_time_of(self, m: MembershipCertificate, es: ChainState) -> float:
        tr = es.certificate.transcript
        return self.config.reshare_schedule(
            m.outcome.reshare_start, len(tr.committee), tr.threshold, tr.attempt
        ).end

    def _first_reshare_attempt(
        self, outcome_window: int, reshare_start: int, n: int, t: int
    ) -> int:
        """The first attempt slot after this node holds the certificate, from the certificate
        and the window grid alone.

        The time is rounded to the window in which the certificate was formed: the first
        window ``w >= outcome_window`` whose signing deadline plus Δ is not past. Members
        that certify in window ``w`` (by its signing deadline) and members that learn the
        certificate from them (within Δ) compute the same ``w``, hence the same slot: the
        first attempt of the reshare grid anchored at ``reshare_start`` that starts at or
        after ``w``'s signing deadline.
        """
        st = self.state
        f = (st.threshold if st is not None else self.config.threshold) - 1
        # Both grids are regular: jump close to the answer, then step (constant time).
        first = self.config.window_schedule(outcome_window, 0.0)
        offset = first.sign_end(f) - first.start
        period = self.config.window_period
        w = outcome_window
        if self._now != float("inf"):
            behind = self._now - self.config.delta - offset - first.start
            w += max(0, int(behind // period) - 1)
        while True:
            sign_end = self.config.window_schedule(w, 0.0).sign_end(f)
            if sign_end + self.config.delta >= self._now:
                break
            w += 1
        s0 = self.config.reshare_schedule(reshare_start, n, t, 0)
        s1 = s0.next_attempt()
        step = s1.start - s0.start
        attempt = 0
        if sign_end > s1.start and step > 0:
            # Attempts after the first start on a grid of ``step`` seconds from ``s1``.
            attempt = 1 + max(0, int((sign_end - s1.start) // step) - 1)
        while self._attempt_start(reshare_start, n, t, attempt) < sign_end:
            attempt += 1
        return attempt

    def _attempt_start(self, reshare_start: int, n: int, t: int, attempt: int) -> float:
        """Start of reshare ``attempt`` (attempts after the first follow every ``step``)."""
        s0 = self.config.reshare_schedule(reshare_start, n, t, 0)
        if attempt == 0:
            return s0.start
        s1 = s0.next_attempt()
        return s1.start + (attempt - 1) * (s1.next_attempt().start - s1.start)

    def _window_run_id(self, w: int) -> bytes:
        st = self.state
        head = st.head_hash if st else ZERO_HASH
        return b"window" + head + w.to_bytes(8, "big")

    # --- results of the running protocols ------------------------------------------------------

    def _collect(self, session: SharingSession | DecisionWindow) -> None:
        if isinstance(session, SharingSession):
            run_id = session.run_id
            for ev in session.events():
                if isinstance(ev, SharingFinalized):
                    self._keep_deals(session, ev)
                if isinstance(ev, Persist):
                    if ev.key == RUN_KEY_RECORD:
                        self._seeds[run_id] = ev.data
                    where = run_id
                    if ev.key == RUN_KEY_RECORD:
                        where = run_key_records(run_id)
                    elif ev.key == POLYNOMIAL_RECORD:
                        where = polynomial_records(run_id)
                    self._events.append(StoreRecord(where, ev.key, ev.data, ev.secret))
                elif isinstance(ev, SharingFinalized) and session.config.kind == "dkg":
                    self._own_genesis.append(ev.result.transcript.hash())
                    self._maybe_endorse()
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
                    self._keep_finalized(session)
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
                elif isinstance(wev, OutcomeLocked):
                    # The one outcome this member signs in this epoch: stored before the
                    # partial goes out (the store refuses a second, different lock).
                    head = session.state.head_hash
                    self._events.append(
                        StoreRecord(LOCK_RUN + head, "lock", wev.report.encode(), False)
                    )
                    if self.state is not None and self.state.head_hash == head:
                        self._lock = wev.report
                elif isinstance(wev, MembershipCertified):
                    self._adopt_link(wev.certificate, state_after=None)

    def _keep_finalized(self, session: SharingSession) -> None:
        """A run that finalized (this node computed its share and may have signed) but failed
        locally may still be certified by the others: keep its share (it is persisted too) and
        use it if its certificate is already, or later, this node's head."""
        res = session.result
        if res is None or res.share is None:
            return
        self._kept[session.run_id] = (session.config.epoch, res.share)
        while len(self._kept) > MAX_KEPT_SHARES:
            del self._kept[next(iter(self._kept))]
        st = self.state
        if st is not None and st.certificate.transcript.hash() == res.transcript.hash():
            self._late_share(st.certificate, res.share)

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
            try:
                self._check_genesis(link)
                self._trust_genesis(link)
                state = genesis_state(self._mpk_of(link), link)
            except ChainError:
                return
        else:
            try:
                state = state_after or extend(self.state, link)
            except ChainError:
                return
        self.chain.append(link)
        old_state = self.state
        if isinstance(link, MembershipCertificate):
            self._note_policy(link)
            self._epoch_states[state.epoch] = state
            self._set_state(state)
            self._events.append(LinkCertified(link))
            new = state.apply(link.outcome.proposal.change)
            self._run_attempt = (
                self._first_reshare_attempt(
                    link.outcome.window,
                    link.outcome.reshare_start,
                    len(new.members),
                    new.threshold,
                )
                if new is not None
                else 0
            )
            self._clear_epoch_intent()
            # Make sure every participant of the coming reshare knows the decision.
            members = set(state.committee.indices)
            for i in sorted(members | set(self._incoming_members(state))):
                if i != self.me:
                    # Incoming members have no chain yet: they get genesis and the tail.
                    have = self.head_position() if i in members else 0
                    self._send_chain(i, have)
            return
        # An epoch certificate: switch epochs.
        if (
            new_share is not None
            and new_share.value.value * G2.generator() != state.public_shares.get(new_share.index)
        ):
            new_share = None
        in_committee = self.me in state.committee.indices
        if new_share is None and in_committee:
            # The certificate reached us through the chain: if this node finalized the
            # certified run (it may have signed), its persisted share is that epoch's share.
            new_share = self._persisted_share(link, old_state)
        previous_share = self.share
        self._epoch_states[state.epoch] = state
        self._set_state(state)
        self._trim()
        self.share = new_share if in_committee else None
        if self.share is not None:
            self.share_error = None
        self._holders = {}
        self._holders_since = None
        # Kept shares of this epoch (or older) are decided: used above, or another outcome won.
        # (Shares of this epoch's higher attempts stay: the highest certified attempt wins.)
        self._kept = {r: k for r, k in self._kept.items() if k[0] >= state.epoch}
        run = self._run
        if (
            run is not None
            and run.config.epoch <= state.epoch
            and (run.config.epoch, run.config.attempt) != (state.epoch, link.transcript.attempt)
        ):
            # Another attempt of a decided epoch: this node signs no second outcome for it.
            cfg = run.config
            self._events.append(
                RunFailed(cfg.kind, cfg.epoch, cfg.attempt, "another attempt is certified")
            )
            self._end_run(run)
        if link.transcript.kind == "reshare" and old_state is not None:
            if previous_share is not None:
                self._retained[old_state.epoch] = previous_share
                self._trackers[old_state.epoch] = RetentionTracker(
                    link, {i: p.verify_key() for i, p in self._participants.items()}
                )
            if link.transcript.committee == old_state.committee.members:
                self.last_refresh = self._now
        self._events.append(EpochSwitched(state.epoch, link, self.share, state, self._keep_runs()))
        self._erase_runs_up_to(state.epoch)
        if old_state is None:
            self._genesis_adopted()
        self._clear_epoch_intent()
        self._run_attempt = 0
        self._previous_members = set(old_state.committee.indices) if old_state else set()
        self._acknowledge(link)
        self._take_early_acks(state)

    def _take_early_acks(self, state: ChainState) -> None:
        early, self._early_acks = list(self._early_acks), deque(maxlen=1024)
        for peer, early_ack in early:
            if early_ack.epoch > state.epoch:
                self._early_acks.append((peer, early_ack))
                continue
            try:
                self._take_ack(peer, early_ack)
            except RemoteProtocolError as exc:
                self._events.append(InputRejected(peer, str(exc)))

    def _take_ack(
        self, peer: ParticipantIndex, ack: Acknowledgement, *, persist: bool = True
    ) -> None:
        """An acknowledgement: who holds a share of the current epoch, and what a retained
        old share waits for. Persisted (verified) so a restart keeps both."""
        st = self.state
        if st is None:
            return
        idx = ParticipantIndex(ack.index)
        if ack.epoch == st.epoch and idx not in self._holders:
            member = next((p for p in st.committee.members if p.index == ack.index), None)
            if member is None or ack.certificate_hash != st.certificate.hash():
                raise RemoteProtocolError(
                    "acknowledgement for another certificate or from a non-member", [peer]
                )
            try:
                ack.verify(member.verify_key())
            except InvalidSignature as exc:
                raise RemoteProtocolError("bad acknowledgement signature", [peer]) from exc
            self._holders[idx] = ack
            if persist:
                self._events.append(
                    StoreRecord(
                        self._ack_run(st.certificate), f"ack/{int(idx)}", ack.encode(), False
                    )
                )
        tracker = self._trackers.get(ack.epoch - 1)
        if tracker is not None:
            tracker.add(ack, peer)

    def _acknowledge(self, link: EpochCertificate) -> None:
        """Tell old and new members that this node holds a share of the new epoch."""
        state = self.state
        if self.share is None or state is None:
            return
        ack = Acknowledgement.create(link, self.share, self._key)
        everyone = set(state.committee.indices) | self._previous_members
        for i in sorted(everyone - {self.me}):
            self._outbox.append(Outbound(i, ack))
            self._outbox.append(Outbound(i, self.chain_update(self.head_position())))
        try:
            self._take_ack(self.me, ack)
        except RemoteProtocolError:  # pragma: no cover - our own, checked when created
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
        self.share_error = None
        self._events.append(EpochSwitched(state.epoch, link, share, state, self._keep_runs()))
        self._erase_runs_up_to(state.epoch)
        self._acknowledge(link)

    # --- recovering a share from the certified deals ----------------------------------

    def _keep_deals(self, session: SharingSession, ev: SharingFinalized) -> None:
        """The deals of a run this node finalized: served if its transcript is certified."""
        deals = session.certified_deals()
        if deals is None:
            return
        self._finalized_deals[ev.result.transcript.hash()] = deals
        while len(self._finalized_deals) > MAX_KEPT_SHARES:
            del self._finalized_deals[next(iter(self._finalized_deals))]
        self._served_for = None

    def _serve_head(self) -> None:
        """Hold the deals of the head's certified run, if this node finalized that run (in
        memory, or stored under ``DEALS_RUN_LABEL`` when it adopted the certificate), to
        answer ``DealsRequest``. They are public; they go with the next epoch switch."""
        st = self.state
        if st is None:
            return
        tr_hash = st.certificate.transcript.hash()
        if self._served_for == tr_hash:
            return
        self._served_for = tr_hash
        self._served = None
        deals = self._finalized_deals.get(tr_hash)
        if deals is not None:
            self._events.append(
                StoreRecord(DEALS_RUN_LABEL + tr_hash, "deals", deals.encode(), False)
            )
        else:
            raw = self._records(DEALS_RUN_LABEL + tr_hash).get("deals")
            try:
                deals = DealsAnswer.decode(raw) if raw is not None else None
            except MessageDecodeError:
                deals = None
        if deals is not None and len(deals.encode()) > MAX_MESSAGE_SIZE - 4096:
            deals = None  # more than one frame holds (n ≳ 130): members missing it get a refresh
        self._served = deals

    def _answer_deals(self, peer: ParticipantIndex, request: DealsRequest, now: float) -> None:
        if not self._take_budget(
            self._deals_budget, peer, now, DEALS_REQUEST_BURST, DEALS_REQUEST_REFILL_DELTAS
        ):
            raise RemoteProtocolError("deal requests rate limited", [peer])
        served, st = self._served, self.state
        if served is None or st is None or served.run != request.run:
            return  # this node holds no deals of that run (any more)
        n, t = len(st.committee.members), st.threshold
        if served.payload_bytes() > deals_answer_bytes(max(n, len(served.qual)), t):
            return  # pragma: no cover - honest deals are within the bound
        self._outbox.append(Outbound(peer, served))

    def _certified_config(self, st: ChainState) -> SharingConfig | None:
        """The configuration of the run the head's certificate certifies (from the chain)."""
        tr = st.certificate.transcript
        try:
            if tr.kind == "dkg":
                return self._genesis_config(tr.attempt)
            before = self._epoch_states.get(st.epoch - 1)
            return self._reshare_config(before, tr.attempt) if before is not None else None
        except (LocalProtocolError, InvalidSignature, InvalidEncoding):
            return None

    def _drop_seed(self, run: bytes) -> None:
        if self._recovery_seeds.pop(run, None) is not None:
            self._erase.append(run_key_records(run))

    def _prune_recovery_seeds(self) -> None:
        """A seed kept for recovery goes once its run is decided here (its share recovered
        or adopted, another attempt or a later epoch certified), or at its deadline."""
        st = self.state
        going = self._run.run_id if self._run is not None else None
        for run in [r for r in self._seeds if r != going]:
            del self._seeds[run]  # a run dropped without ending here (a chain replaced)
        active = self._recovery.run if self._recovery is not None else None
        for run, (epoch, attempt, _seed, erase_by) in list(self._recovery_seeds.items()):
            if run == active:
                continue
            decided = False
            if st is not None:
                head = st.certificate.transcript.attempt
                decided = epoch < st.epoch or (
                    epoch == st.epoch
                    and (attempt < head or (attempt == head and self.share is not None))
                )
            if decided or self._now > erase_by:
                self._drop_seed(run)

    def _recovery_step(self) -> None:
        """A member of the head's epoch without a share that still holds the seed of its run
        key for the certified run asks the others for that run's deals: ``t`` members at a
        time, each given ``RECOVERY_WAIT_DELTAS`` Δ to answer. With none left to ask, it gives
        up (the seed is erased) and gets a share from a prompt refresh instead."""
        self._prune_recovery_seeds()
        st = self.state
        rec = self._recovery
        if rec is not None:
            if st is None or self.share is not None or st.certificate.fingerprint() != rec.cert:
                self._end_recovery(rec)  # decided otherwise
                return
            if rec.pending and self._now < rec.asked_at + RECOVERY_WAIT_DELTAS * self.config.delta:
                return
            if not rec.queue:
                self._end_recovery(rec)  # nobody proved the share in time
                return
            batch, rec.queue = rec.queue[: st.threshold], rec.queue[st.threshold :]
            rec.pending = set(batch)
            rec.asked_at = self._now
            for i in batch:
                self._outbox.append(Outbound(i, DealsRequest(rec.run)))
            return
        if not self._recovery_check or st is None or self._now == float("-inf"):
            return
        self._recovery_check = False
        tr = st.certificate.transcript
        if self.share is not None or self.me not in st.committee.indices:
            return
        if st.certificate.fingerprint() in self._recovery_ended:
            return
        running = self._run
        if running is not None and (running.config.epoch, running.config.attempt) == (
            tr.epoch,
            tr.attempt,
        ):
            return  # its own run of the certified attempt is still going: it ends first
        cfg = self._certified_config(st)
        if cfg is None or self.me not in cfg.recipient_indices:
            return
        run = cfg.run_id()
        held = self._recovery_seeds.get(run)
        if held is None:
            # After a restart: the seed record the run left (not erased yet), if any.
            seed = self._records(run_key_records(run)).get(RUN_KEY_RECORD)
            if seed is None:
                return  # no seed: nothing opens its shares; a prompt refresh follows
            held = (
                tr.epoch,
                tr.attempt,
                seed,
                cfg.schedule.end + RECOVERY_SEED_DELTAS * (self.config.delta),
            )
            self._recovery_seeds[run] = held
        if self._now > held[3]:
            self._drop_seed(run)
            return
        members = [i for i in st.committee.indices if i != self.me]
        after = [i for i in members if i > self.me]
        queue = after + [i for i in members if i < self.me]
        self._recovery = _Recovery(run, cfg, held[2], st.certificate.fingerprint(), queue)
        self._recovery_step()

    def _end_recovery(self, rec: _Recovery) -> None:
        if self._recovery is rec:
            self._recovery = None
        self._last_recovery = rec  # answers still due from it are dropped quietly
        self._recovery_ended.append(rec.cert)
        self._drop_seed(rec.run)

    def _receive_deals(self, peer: ParticipantIndex, answer: DealsAnswer) -> None:
        """An answer to this node's ``DealsRequest``: one per member asked, checked in full
        (``recover_share``). A bad one is refused and counted; it changes nothing."""
        rec, st = self._recovery, self.state
        last = self._last_recovery
        if rec is None and last is not None and answer.run == last.run and peer in last.pending:
            last.pending.discard(peer)  # asked, but the recovery ended before it answered
            return
        if rec is None or st is None or peer not in rec.pending or answer.run != rec.run:
            raise RemoteProtocolError("deals this node did not ask for", [peer])
        rec.pending.discard(peer)
        bound = deals_answer_bytes(
            max(len(rec.config.recipients), len(rec.config.dealers)), st.threshold
        )
        if answer.payload_bytes() > bound:
            raise RemoteProtocolError("deals answer over the size bound", [peer])
        try:
            share = recover_share(rec.config, self.me, rec.seed, st.certificate, answer)
        except ShareNotDealt:
            self._end_recovery(rec)  # its run key was not agreed: nothing to recover
            return
        except DealerShareInvalid:
            # The certified deals, but a dealer's share for this member is wrong and not
            # revealed: the dealer's fault, or a justification this answer left out. Nobody
            # is blamed; other members are asked, and if none gives a share, the recovery
            # ends and this member asks for a prompt refresh.
            return
        except (RemoteProtocolError, InvalidEncoding, InvalidSignature) as exc:
            raise RemoteProtocolError(f"deals answer refused: {exc}", [peer]) from exc
        self._end_recovery(rec)
        self._late_share(st.certificate, share)

    def _trim(self) -> None:
        """Keep genesis and the links of the last ``chain_retention`` epochs."""
        keep = self._retained_tail(self.chain[1:])
        if len(keep) == len(self.chain) - 1:
            return
        self.chain = [self.chain[0], *keep]
        oldest = link_position(keep[0]) // 2
        self._epoch_states = {e: st for e, st in self._epoch_states.items() if e >= oldest}
        self._events.append(ChainTrimmed(link_position(keep[0])))

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
        if self._holders_since is None:
            self._holders_since = self._now
        start = max(self._epoch_ready_at, self._holders_since)
        return self._now >= start + HOLDERS_GRACE_DELTAS * self.config.delta

    def _pump(self) -> None:
        self._serve_head()
        self._recovery_step()
        st = self.state
        if st is not None and self._holders_reported != st.epoch and self._holders_due():
            self._holders_reported = st.epoch
            if len(self._holders) < st.threshold:
                self._events.append(
                    ShareHoldersBelowThreshold(st.epoch, tuple(sorted(self._holders)), st.threshold)
                )
        for epoch, tracker in list(self._trackers.items()):
            if tracker.status().deletable and epoch in self._retained:
                del self._retained[epoch]
                del self._trackers[epoch]
                self._events.append(RetainedShareDeletable(epoch))

    @property
    def retained_epochs(self) -> list[int]:
        return sorted(self._retained)


@dataclass
class _Recovery:
    """A share recovery going on: the certified run, its seed, whom to ask next."""

    run: bytes
    config: SharingConfig
    seed: bytes = field(repr=False)
    cert: bytes
    """The fingerprint of the certificate whose share is recovered."""
    queue: list[ParticipantIndex]
    pending: set[ParticipantIndex] = field(default_factory=set)
    asked_at: float = float("-inf")


def _approx_size(message: Message) -> int:
    """Roughly the encoded size of an early message (without encoding it again)."""
    if isinstance(message, BroadcastPayload):
        return len(message.payload) + 256
    if isinstance(message, DigestRelay):
        return 256 + 80 * len(message.relays)
    return 256


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
