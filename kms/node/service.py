"""The trio shell around ``NodeCore``: transport, store, clock, timers and HTTP.

Everything protocol-related is decided in ``kms.node.core``; this module
only moves bytes and time:

* inbound frames → envelope checks → the sender's participant index (from the
  transport-authenticated peer id, never from the frame) → ``core.receive``;
* every step's events are stored (sealed where secret) **before** the step's
  messages are queued for sending;
* one send queue and task per peer, so a slow or unreachable peer delays
  nobody else;
* a timer task advances the core's clock;
* bad input is refused with a reason, counted, logged once per
  (peer, reason) per minute, and never changes state or crashes the node.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import trio

from kms.attest.pccs import CollateralProvider
from kms.node.audit_log import AuditLog
from kms.node.core import (
    GENESIS_ENDORSEMENTS_RUN,
    ApprovalRefused,
    ChainReplaced,
    ChainTrimmed,
    ChangeCheck,
    EpochSwitched,
    EraseRecords,
    InputRejected,
    LinkCertified,
    MisbehaviourObserved,
    NodeConfig,
    NodeCore,
    Restored,
    RetainedShareDeletable,
    RunFailed,
    ShareHoldersBelowThreshold,
    ShareRefused,
    StoreRecord,
)
from kms.node.evidence_log import EvidenceLog, EvidenceResult
from kms.node.keyrelease import KeyRelease, KeysNotServed, ReleaseResult
from kms.node.limits import peer_queue_bytes
from kms.node.logs import log_context
from kms.node.metrics import NodeMetrics, NodeSnapshot
from kms.node.node_status import node_snapshot, node_status
from kms.node.policies import NodePolicies, PolicyOfferResult
from kms.node.policy_sync import POLICY_SYNC_INTERVAL, PolicySync
from kms.node.release import KeyReleaser, ReleaseRefused
from kms.policy.gossip import (
    PolicyAnnounce,
    PolicyDigest,
    PolicyQuery,
    PolicyUnknown,
)
from kms.protocol import KeyRequest
from kms.store import NodeStore
from mpc import hpke
from mpc.broadcast import Outbound
from mpc.cert import EpochCertificate
from mpc.codec import MessageDecodeError
from mpc.dkg.session import STALL_FRACTION
from mpc.errors import InvalidEncoding
from mpc.ids import ParticipantIndex, PeerId
from mpc.membership import ChangeAdmissionPolicy, MembershipCertificate
from mpc.secret import SecretScalar, SecretShare
from mpc.sig import SigningKey
from net.codec import Envelope, EnvelopeError, encode_envelope, open_envelope
from net.errors import TransportError
from net.peerid import peer_id_from_ed25519
from net.transport import Transport

log = logging.getLogger("quorum_kms.node")

ADMISSION_POLICY_META = "chain/admission-policy"
"""Meta entry: the bytes of the last certified admission-policy change."""

SEND_QUEUE = 4096
"""Frames queued per peer at most; the bytes queued are capped too (``peer_queue_bytes``)."""
TICK = 0.05
"""Longest timer period, seconds; ``Δ/16`` when that is shorter (``NodeService.tick``)."""


class Clock(Protocol):
    def now(self) -> float: ...


class WallClock:
    """Unix time: deadlines in the protocol are absolute wall-clock times."""

    def now(self) -> float:
        return time.time()


class TrioClock:
    """trio's clock (for ``MockClock`` runs), offset to look like Unix time."""

    def __init__(self, epoch: float = 0.0) -> None:
        self._offset = epoch - trio.current_time()

    def now(self) -> float:
        return trio.current_time() + self._offset


class RateLimitedLog:
    """Log each distinct (peer, reason) at most once per ``interval`` seconds.

    The table of last times holds at most ``max_entries`` pairs (the oldest is forgotten
    first); ``suppressed`` counts the records not logged.
    """

    def __init__(self, interval: float = 60.0, max_entries: int = 1024) -> None:
        self.interval = interval
        self.max_entries = max_entries
        self.suppressed = 0
        self._last: dict[tuple[str, str], float] = {}

    def __len__(self) -> int:
        return len(self._last)

    def warn(self, peer: str, reason: str, **fields: Any) -> None:
        key = (peer[:64], reason[:80])
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.interval:
            self.suppressed += 1
            return
        self._last.pop(key, None)
        self._last[key] = now  # insertion order is age order
        while len(self._last) > self.max_entries:
            del self._last[next(iter(self._last))]
        log.warning("input rejected", extra={"fields": {"peer": peer, "reason": reason, **fields}})


def share_to_bytes(share: SecretShare) -> bytes:
    return int(share.index).to_bytes(4, "big") + share.value.value.to_bytes(32, "big")


def share_from_bytes(raw: bytes) -> SecretShare:
    return SecretShare(
        ParticipantIndex(int.from_bytes(raw[:4], "big")),
        SecretScalar(int.from_bytes(raw[4:], "big")),
    )


def load_chain(store: NodeStore) -> list[EpochCertificate | MembershipCertificate]:
    out: list[EpochCertificate | MembershipCertificate] = []
    for kind, _epoch, data in store.chain():
        out.append(
            EpochCertificate.decode(data) if kind == "epoch" else MembershipCertificate.decode(data)
        )
    return out


class NodeService:
    """Runs one node until cancelled."""

    def __init__(
        self,
        config: NodeConfig,
        store: NodeStore,
        transport: Transport,
        peers: Mapping[ParticipantIndex, list[str]],
        *,
        clock: Clock | None = None,
        rng: Callable[[int], bytes] | None = None,
        check: ChangeCheck | None = None,
    ) -> None:
        import os

        self.config = config
        self.store = store
        self.transport = transport
        self.clock = clock or WallClock()
        self.metrics = NodeMetrics(self.metrics_snapshot)
        self._rl = RateLimitedLog()
        ident = store.load_identity()
        if ident is None:
            raise RuntimeError("the store has no identity: run `kms node init` first")
        identity_seed, dkg_seed = ident
        self.identity = SigningKey.from_seed(identity_seed)
        self.dkg_key, _ = hpke.derive_key_pair(dkg_seed)
        current = store.current_epoch()
        restored = Restored(
            chain=tuple(load_chain(store)),
            share=share_from_bytes(current.share)
            if current is not None and current.share
            else None,
            retained={
                e: share_from_bytes(store.retained_share(e)) for e in store.retained_shares()
            },
            records=store.records,
            admission_policy=store.get_meta(ADMISSION_POLICY_META),
        )
        self.core = NodeCore(
            config,
            self.identity,
            self.dkg_key,
            rng=rng or os.urandom,
            restored=restored,
            check=check,
        )
        # A gap of more than Δ/4 between two ticks makes the node count as stalled, and
        # it then withholds its signature on sharing runs (SharingSession.live): tick
        # at least four times within that allowance.
        self.tick = min(TICK, STALL_FRACTION * config.delta / 4)
        self._peer_index: dict[PeerId, ParticipantIndex] = {}
        self._index_peer: dict[ParticipantIndex, PeerId] = {}
        self._addrs = dict(peers)
        self._queues: dict[ParticipantIndex, trio.MemorySendChannel[bytes]] = {}
        self._queued_bytes: dict[ParticipantIndex, int] = {}
        self._heard: frozenset[ParticipantIndex] = frozenset()
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self.started = trio.Event()
        self.policy_sync_interval = POLICY_SYNC_INTERVAL
        self._next_policy_digest = 0.0
        self._init_roles()
        self._learn_participants()

    # --- peers -------------------------------------------------------------------------

    def _learn_participants(self) -> None:
        for idx, p in sorted(self.core.participants.items()):
            pid = peer_id_from_ed25519(p.identity)
            known = self._index_peer.get(idx) == pid
            self._peer_index[pid] = idx
            self._index_peer[idx] = pid
            addrs = self._addrs.get(idx) or list(self.core.addresses.get(idx, ()))
            if addrs and not known:
                self.transport.add_peer(pid, addrs)
        # Only current and incoming members (and recently removed ones, for the chain) get
        # through the transport; everyone else is refused before a frame is read.
        self._heard = self.core.allowed_peers() | frozenset(self.core.recently_removed())
        self.metrics.set_members(
            int(i) for i in self.core.allowed_peers() if i != self.config.index
        )
        allowed = {self._index_peer[i] for i in self._heard if i in self._index_peer}
        self.transport.set_allowed_peers(allowed, queue_bytes=self.peer_queue_bytes())

    def peer_queue_bytes(self) -> int:
        """The byte cap of one peer's queue, for the committee this node is in."""
        st = self.core.state
        n = len(st.committee.members) if st is not None else len(self.config.genesis)
        t = st.threshold if st is not None else self.config.threshold
        return peer_queue_bytes(max(n, len(self._heard)), t)

    def peer_of(self, index: ParticipantIndex) -> PeerId | None:
        return self._index_peer.get(index)

    # --- main loop -----------------------------------------------------------------------

    def log_fields(self) -> dict[str, Any]:
        """The fields every log line about this node carries (``kms.node.logs``)."""
        st = self.core.state
        out: dict[str, Any] = {"node": int(self.config.index), "epoch": st.epoch if st else None}
        run = self.core.run_progress()
        if run is not None:
            out["run"] = f"{run.kind}:{run.epoch}:{run.attempt}"
        return out

    async def run(
        self, *extra: Callable[[], Awaitable[None]], task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        with log_context(self.log_fields):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._timer_loop)
                for job in extra:
                    nursery.start_soon(job)
                self._step()
                self.started.set()
                task_status.started()

    async def _timer_loop(self) -> None:
        while True:
            now = self.clock.now()
            self.core.advance_time(now)
            self._step()
            if self.policies is not None and now >= self._next_policy_digest:
                self._next_policy_digest = now + self.policy_sync_interval
                self._send_policy_digest()
            await trio.sleep(self.tick)

    async def _receive_loop(self) -> None:
        while True:
            peer, frame = await self.transport.receive()
            self.handle_frame(peer, frame)

    def handle_frame(self, peer: PeerId, frame: bytes) -> None:
        """One inbound frame from an authenticated peer. Never raises for bad input."""
        index = self._peer_index.get(peer)
        if index is None or index not in self._heard:
            self._reject(str(peer), "unknown or unauthorised peer")
            return
        try:
            env, message = open_envelope(frame)
        except EnvelopeError as exc:
            self._reject(str(peer), f"envelope: {exc.reason.value}")
            return
        except InvalidEncoding as exc:
            self._reject(str(peer), f"malformed message: {exc}")
            return
        if env.sender != int(index):
            self._reject(str(peer), "envelope names another sender")
            return
        self.metrics.received(int(index), env.kind, len(frame))
        if isinstance(message, PolicyAnnounce | PolicyDigest | PolicyQuery | PolicyUnknown):
            self.core.observe_epoch(index, env.epoch, self.clock.now())
            self._on_policy_message(index, peer, message)
            self._step()
            return
        self.core.receive(index, message, self.clock.now(), sender_epoch=env.epoch)
        self._step()

    def _reject(self, peer: str, reason: str) -> None:
        # The metric label names the kind of refusal: no culprit lists, no details.
        key = reason.split(" (culprits")[0]
        if not key.startswith("envelope:"):
            key = key.split(":")[0]
        key = key[:60]
        self.metrics.rejected_input(key)
        self._rl.warn(peer, reason)

    # --- a step: persist, then send --------------------------------------------------------

    def _step(self) -> None:
        self.apply_events(self.core.events())
        self.metrics.run_progress(self.core.run_progress(), self.clock.now())
        for ob in self.core.messages_to_send():
            self._send(ob)

    def apply_events(self, events: Iterable[object]) -> None:
        """Persist and act on the core's events, in order (before sending the step's messages)."""
        batch: list[StoreRecord] = []
        for ev in events:
            if isinstance(ev, StoreRecord):
                batch.append(ev)
                continue
            self._put_records(batch)
            batch = []
            self._handle_event(ev)
        self._put_records(batch)

    def _put_records(self, records: list[StoreRecord]) -> None:
        """One step's records of one run land in one transaction (a crash keeps all or none)."""
        runs: dict[bytes, list[StoreRecord]] = {}
        for r in records:
            runs.setdefault(r.run, []).append(r)
        for run, group in runs.items():
            self.store.put_records(run, group)

    def _handle_event(self, ev: object) -> None:
        if isinstance(ev, StoreRecord):
            self.store.put_record(ev.run, ev.key, ev.data, secret=ev.secret)
        elif isinstance(ev, EraseRecords):
            self.store.delete_records(ev.run)
        elif isinstance(ev, EpochSwitched):
            st = ev.state
            poly = b"".join(ev.certificate.public_polynomial)
            committee = b"".join(p.encode() for p in st.committee.members)
            share = share_to_bytes(ev.share) if ev.share is not None else None
            current = self.store.current_epoch()
            if current is not None and current.epoch == ev.epoch:
                if share is not None and current.share is None:
                    self.store.set_share(ev.epoch, share)
            else:
                self.store.switch_epoch(ev.epoch, ev.certificate.encode(), share, poly, committee)
            self.metrics.epoch_switched()
            # Records of finished runs (dealt polynomials, signed messages) are of no
            # further use and some are secret: a dealt polynomial's constant term is
            # an old share. Delete them once the new epoch is stored. The core has
            # already taken its share of the certified run from them (if it finalized
            # that run); other attempts of this epoch lost. Acknowledgements it still
            # counts are kept.
            for run in self.store.runs():
                if run not in ev.keep_runs and run != GENESIS_ENDORSEMENTS_RUN:
                    self.store.delete_records(run)
            self._learn_participants()
            log.info(
                "epoch certified",
                extra={
                    "fields": {
                        "epoch": ev.epoch,
                        "threshold": st.threshold,
                        "has_share": ev.share is not None,
                    }
                },
            )
        elif isinstance(ev, LinkCertified):
            self._keep_policy((ev.certificate,))
            self.store.append_link(
                "membership", ev.certificate.outcome.epoch, ev.certificate.encode()
            )
            self._learn_participants()
            log.info(
                "membership change certified",
                extra={"fields": {"kind": ev.certificate.outcome.proposal.kind}},
            )
        elif isinstance(ev, ChainTrimmed):
            self.store.trim_chain(ev.position)
        elif isinstance(ev, ChainReplaced):
            self.store.replace_chain(
                (
                    ("epoch", x.transcript.epoch, x.encode())
                    if isinstance(x, EpochCertificate)
                    else ("membership", x.outcome.epoch, x.encode())
                )
                for x in ev.links
            )
            self._keep_policy(ev.links)
            self._learn_participants()
            log.info("chain replaced", extra={"fields": {"links": len(ev.links)}})
        elif isinstance(ev, RetainedShareDeletable):
            self.store.delete_retained_share(ev.epoch)
            log.info("old share deleted", extra={"fields": {"epoch": ev.epoch}})
        elif isinstance(ev, MisbehaviourObserved):
            self.metrics.misbehaved(ev.reason.split(":")[0])
            if ev.evidence is not None:
                self.keep_evidence(int(ev.culprit), ev.reason, ev.evidence.encode())
            log.warning(
                "misbehaviour", extra={"fields": {"culprit": int(ev.culprit), "reason": ev.reason}}
            )
        elif isinstance(ev, InputRejected):
            self._reject(str(self.peer_of(ev.peer)), ev.reason)
        elif isinstance(ev, ApprovalRefused):
            self.metrics.rejected_input("approval: " + ev.reason)
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
        elif isinstance(ev, RunFailed):
            self.metrics.run_failed(ev.kind)
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

    def _keep_policy(self, links: Iterable[object]) -> None:
        """Keep the bytes of a certified admission policy apart from the chain links, which
        are deleted once older than the kept epochs."""
        for link in links:
            if isinstance(link, MembershipCertificate):
                change = link.outcome.proposal.change
                if isinstance(change, ChangeAdmissionPolicy):
                    self.store.set_meta(ADMISSION_POLICY_META, change.policy)

    def _send(self, ob: Outbound) -> None:
        q = self._queues.get(ob.to)
        if q is None:
            if self._nursery is None:
                return
            send, recv = trio.open_memory_channel[bytes](SEND_QUEUE)
            self._queues[ob.to] = send
            self._nursery.start_soon(self._sender, ob.to, recv)
            q = send
        st = self.core.state
        try:
            env = Envelope.of(
                ob.message, epoch=st.epoch if st else 0, sender=int(self.config.index)
            )
            frame = encode_envelope(env)
        except (EnvelopeError, InvalidEncoding, ValueError, OverflowError) as exc:
            # An oversized (or otherwise unencodable) message is dropped and counted:
            # it must never raise into the node's tasks.
            self.metrics.encode_failed(ob.message.TYPE)
            self._rl.warn(str(ob.to), f"message not encodable: {type(exc).__name__}")
            return
        queued = self._queued_bytes.get(ob.to, 0)
        if queued and queued + len(frame) > self.peer_queue_bytes():
            # The peer is not taking what it is sent: drop rather than hold without bound.
            self.metrics.send_failed(queue_full=True)
            return
        try:
            q.send_nowait(frame)
            self._queued_bytes[ob.to] = queued + len(frame)
            self.metrics.queued(ob.message.TYPE)
        except trio.WouldBlock:
            self.metrics.send_failed(queue_full=True)

    async def _sender(
        self, index: ParticipantIndex, recv: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        async for frame in recv:
            self._queued_bytes[index] = max(0, self._queued_bytes.get(index, 0) - len(frame))
            peer = self._index_peer.get(index)
            if peer is None:
                self.metrics.send_failed()
                continue
            try:
                await self.transport.send(peer, frame)
                self.metrics.sent(int(index), len(frame))
            except TransportError:
                self.metrics.send_failed()

    # --- roles: key release, policies and gossip, evidence, audit, status -------------------
    # Each lives in its own module; the service wires them to the core, the store, the
    # clock and the transport, and keeps the thin methods ``kms.api`` and the loops call.

    def _init_roles(self) -> None:
        self.policy_sync = PolicySync(
            self.config.index,
            lambda: self.core.state,
            self.clock,
            self.metrics,
            self._send,
            self._reject,
        )
        self.keys = KeyRelease(
            self.store,
            self.clock,
            self.metrics,
            self._share_and_epoch,
            self.policy_sync,
            self._rl.warn,
        )
        self.evidence_log = EvidenceLog(
            self.store,
            self.clock,
            lambda: self.core,
            lambda: self.core.state.epoch if self.core.state is not None else None,
            self.count_rejected,
        )
        self.audit = AuditLog(self.store, lambda: self.identity)
        self._collateral: CollateralProvider | None = None

    def _share_and_epoch(self) -> tuple[SecretShare | None, int]:
        st = self.core.state
        return self.core.share, st.epoch if st is not None else 0

    @property
    def releaser(self) -> KeyReleaser | None:
        """The key-release pipeline (``kms.node.release``), when the node serves keys."""
        return self.keys.releaser

    @releaser.setter
    def releaser(self, releaser: KeyReleaser | None) -> None:
        self.keys.releaser = releaser

    @property
    def policies(self) -> NodePolicies | None:
        """The node's app policies (``kms.node.policies.NodePolicies``), when it serves keys."""
        return self.policy_sync.policies

    @policies.setter
    def policies(self, policies: NodePolicies | None) -> None:
        self.policy_sync.policies = policies

    @property
    def collateral(self) -> CollateralProvider | None:
        """Where the releaser's collateral comes from (a PCCS with its cache, or a file)."""
        return self._collateral

    @collateral.setter
    def collateral(self, provider: CollateralProvider | None) -> None:
        self._collateral = provider
        self.keys.collateral = provider

    @property
    def GOSSIP_BUDGET(self) -> dict[str, tuple[float, float]]:
        """The policy gossip budgets (``PolicySync.GOSSIP_BUDGET``) of this node."""
        return self.policy_sync.budget

    @GOSSIP_BUDGET.setter
    def GOSSIP_BUDGET(self, budget: dict[str, tuple[float, float]]) -> None:
        self.policy_sync.budget = budget

    # --- key release and policies (called by the HTTP app and the loops) ----------------------

    async def release(self, request: KeyRequest) -> ReleaseResult:
        """Answer a CVM's decoded key request (``kms.node.keyrelease``)."""
        return await self.keys.release(request)

    def refuse_key_request(self, exc: MessageDecodeError) -> ReleaseRefused | KeysNotServed:
        """A key request body that does not decode: counted as a refused request."""
        return self.keys.undecodable(exc)

    def offer_policy(self, raw: bytes) -> PolicyOfferResult:
        return self.policy_sync.offer(raw)

    def _on_policy_message(
        self,
        index: ParticipantIndex,
        peer: PeerId,
        message: PolicyAnnounce | PolicyDigest | PolicyQuery | PolicyUnknown,
    ) -> None:
        self.policy_sync.on_message(index, peer, message)

    def _send_policy_digest(self) -> None:
        self.policy_sync.send_digest()

    def reload_policies(self) -> dict[str, Any]:
        """Re-read the operator's policies directory (admin channel ``reload-policies``)."""
        return self.policy_sync.reload()

    def resolve_fork(self, app_id: bytes, bundle: bytes) -> dict[str, Any]:
        """Lift a frozen app's freeze with its owner's bundle (admin channel ``resolve-fork``)."""
        return self.policy_sync.resolve_fork(app_id, bundle)

    def policy_info(self, app_id: bytes) -> dict[str, Any] | None:
        return self.policy_sync.info(app_id)

    def count_rejected(self, label: str) -> None:
        """Count input refused before it reached the node (e.g. an unparsable JSON body)."""
        self.metrics.rejected_input(label)

    # --- audit, chain -------------------------------------------------------------------------

    def audit_head(self) -> dict[str, Any]:
        """The audit log's signed head (``kms.node.audit_log``; public)."""
        return self.audit.head()

    def audit_export(
        self, start: int = 0, limit: int = 1000, *, check: bool = False
    ) -> dict[str, Any]:
        """Audit entries and the signed head (admin channel only)."""
        return self.audit.export(start, limit, check=check)

    def chain_bytes(self) -> bytes:
        """Genesis and the recent tail (``GET /v1/chain``): what a client verifies from."""
        return self.core.chain_update(0).encode()

    def chain_page(self, start: int, limit: int, max_bytes: int) -> tuple[int, int, int, bytes]:
        """Kept links from position ``start``: (first position given, next position to ask,
        head position, encoded ``ChainUpdate``)."""
        first, following, update = self.core.chain_page(start, limit, max_bytes)
        return first, following, self.core.head_position(), update.encode()

    # --- admin actions (called by the admin channel) ---------------------------------------

    def propose(self, change: Any) -> bytes:
        pid = self.core.propose(change)
        self._step()
        return pid

    def approve(self, proposal_id: bytes) -> bool:
        known = self.core.approve(proposal_id)
        self._step()
        return known

    # --- evidence (``kms.node.evidence_log``) -------------------------------------------------

    def keep_evidence(self, culprit: int, reason: str, raw: bytes) -> str:
        return self.evidence_log.keep(culprit, reason, raw)

    def offer_evidence(self, raw: bytes) -> EvidenceResult:
        return self.evidence_log.offer(raw)

    def evidence(self) -> list[dict[str, Any]]:
        return self.evidence_log.entries()

    # --- status (``kms.node.node_status``) ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        return node_status(
            self.core,
            int(self.config.index),
            self.transport,
            self.releaser,
            self.collateral,
            self.policies,
        )

    def metrics_snapshot(self) -> NodeSnapshot:
        """What ``/metrics`` reports of the node's current state (read at each scrape)."""
        return node_snapshot(
            self.core,
            self.transport,
            self.releaser,
            self.collateral,
            self.policies,
            self._rl.suppressed,
        )

    def metrics_text(self) -> str:
        """Prometheus text exposition (version 0.0.4), from this node's own registry."""
        return self.metrics.exposition().decode()
