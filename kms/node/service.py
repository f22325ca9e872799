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
  (peer, reason) per minute, and never changes state or crashes the node;
* a full disk (``kms.store.StorageFull``) holds the step whose writes failed, with
  its messages, and the node refuses work until a retry writes it (``StorageHold``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from kms.attest.pccs import CollateralProvider
from kms.node.audit_log import AuditLog
from kms.node.clock import Clock as Clock
from kms.node.clock import TrioClock as TrioClock
from kms.node.clock import WallClock
from kms.node.core import NodeCore
from kms.node.driver import FrameRejected, NodeDriver, Step
from kms.node.evidence_log import EvidenceLog, EvidenceResult
from kms.node.keyrelease import CertResult, KeyRelease, KeysNotServed, ReleaseResult
from kms.node.limits import peer_queue_bytes
from kms.node.logs import RateLimitedLog as RateLimitedLog
from kms.node.logs import log_context
from kms.node.metrics import (
    NodeMetrics,
    NodeSnapshot,
)
from kms.node.model import (
    ChainReplaced,
    ChangeCheck,
    EpochSwitched,
    LinkCertified,
    NodeConfig,
)
from kms.node.node_status import node_snapshot, node_status
from kms.node.persist import (
    ADMISSION_POLICY_META as ADMISSION_POLICY_META,
)
from kms.node.persist import (
    PendingWrites,
    restore,
)
from kms.node.persist import apply_events as persist_events
from kms.node.persist import (
    load_chain as load_chain,
)
from kms.node.persist import (
    share_from_bytes as share_from_bytes,
)
from kms.node.persist import (
    share_to_bytes as share_to_bytes,
)
from kms.node.policies import NodePolicies, PolicyOfferResult
from kms.node.policy_sync import POLICY_SYNC_INTERVAL, PolicySync
from kms.node.release import KeyReleaser, ReleaseRefused
from kms.node.reporting import EventReporter, ProgressLog
from kms.policy.gossip import (
    PolicyAnnounce,
    PolicyDigest,
    PolicyQuery,
    PolicyUnknown,
)
from kms.protocol import AppKeyCertRequest, KeyRefusal, KeyRequest
from kms.store import NodeStore, StorageFull, StoreError
from mpc import hpke
from mpc.broadcast import Outbound
from mpc.codec import MessageDecodeError
from mpc.dkg.session import STALL_FRACTION
from mpc.errors import InvalidEncoding
from mpc.ids import ParticipantIndex, PeerId
from mpc.secret import SecretShare
from mpc.sig import SigningKey
from net.codec import EnvelopeError
from net.errors import PeerUnreachable, TransportError
from net.transport import Transport

log = logging.getLogger("quorum_kms.node")

SHELL_MESSAGES = (PolicyAnnounce, PolicyDigest, PolicyQuery, PolicyUnknown)
"""Messages the service handles itself (policy gossip); the core only notes their epoch."""

SEND_QUEUE = 4096
"""Frames queued per peer at most; the bytes queued are capped too (``peer_queue_bytes``)."""
SEND_BATCH_BYTES = 60 * 1024
"""A peer's sender hands the transport every frame already queued for that peer, up to
this many bytes (one frame at least), in one ``send_many``: under a broadcast round's
burst that is one stream write for many small frames (a Noise message holds 65,519
bytes of plaintext, a Yamux frame 64 KiB)."""
TICK = 0.25
"""Longest timer period, seconds; ``Δ/16`` when that is shorter (``NodeService.tick``): 31 ms
at the devnet's Δ = 0.5 s, 131 ms at the default Δ of five members, 205 ms at 64 members.
Each tick costs the idle node a step of its core; at 20 ticks a second that was 1.8 % of a
CPU per node, more than a 2-CPU machine has for 64 idle nodes."""
STORAGE_RETRY = 1.0
"""Seconds between two tries to write what a full disk refused (trio's monotonic clock)."""
STORAGE_PROBE_META = "storage/probe"
"""Meta entry written to learn that the disk takes writes again, when no step is held."""
STORAGE_FULL = "storage-full"
"""The refusal reason of every request refused because the disk is full."""
STORAGE_ERROR = "storage-error"
"""The refusal reason of a key or certificate request whose records could not be stored
for another reason than a full disk (an I/O error, a busy database): nothing was sent."""


@dataclass(frozen=True)
class StorageRefused(KeysNotServed):
    """A key or certificate request refused because this node's disk is full: nothing
    this node signs leaves it until what it signed before is stored (HTTP 503)."""

    detail: str = "this node's disk is full"

    @property
    def refusal(self) -> KeyRefusal:
        return KeyRefusal(STORAGE_FULL, self.detail)


@dataclass(frozen=True)
class StorageFailed(KeysNotServed):
    """A key or certificate request refused because storing its nonce and audit records
    failed for another reason than a full disk (HTTP 503): no partial was sent, nothing
    of it is kept, and the next request tries again."""

    detail: str = "this node could not store the request's records"

    @property
    def refusal(self) -> KeyRefusal:
        return KeyRefusal(STORAGE_ERROR, self.detail)


class StorageHold:
    """What the service holds while its disk is full (``NodeService.storage``).

    ``step``/``writes``: the step whose store writes failed, with its outbound messages,
    and the writes still to make (``None`` when a write outside a step failed: a key
    release's record, a policy, evidence). ``since``: when the disk was found full (the
    node's clock); ``retry_at``: when to try again (trio's clock)."""

    def __init__(self, since: float, retry_at: float, reason: str) -> None:
        self.since = since
        self.retry_at = retry_at
        self.reason = reason
        self.step: Step | None = None
        self.writes: PendingWrites | None = None


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
        core: NodeCore | None = None,
    ) -> None:
        """``core``: the node's core, when the caller built it (a test committee, the
        simulator's node mode with its ``session_factory``); by default the service
        builds it from what ``store`` holds (``kms.node.persist.restore``)."""
        import os

        self.config = config
        self.store = store
        self.transport = transport
        self.clock = clock or WallClock()
        self.metrics = NodeMetrics(self.metrics_snapshot)
        self._rl = RateLimitedLog()
        self.progress = ProgressLog()
        self.reporter = EventReporter(
            self.metrics,
            lambda culprit, reason, raw: self.keep_evidence(culprit, reason, raw),
            lambda index, reason: self._reject(str(self.peer_of(index)), reason),
        )
        ident = store.load_identity()
        if ident is None:
            raise RuntimeError("the store has no identity: run `kms node init` first")
        identity_seed, dkg_seed = ident
        self.identity = SigningKey.from_seed(identity_seed)
        self.dkg_key, _ = hpke.derive_key_pair(dkg_seed)
        if core is None:
            core = NodeCore(
                config,
                self.identity,
                self.dkg_key,
                rng=rng or os.urandom,
                restored=restore(store),
                check=check,
            )
        self.driver = NodeDriver(core, shell_messages=SHELL_MESSAGES)
        # A gap of more than Δ/4 between two ticks makes the node count as stalled, and
        # it then withholds its signature on sharing runs (SharingSession.live): tick
        # at least four times within that allowance.
        self.tick = min(TICK, STALL_FRACTION * config.delta / 4)
        self._addrs = dict(peers)
        self._queues: dict[ParticipantIndex, trio.MemorySendChannel[bytes]] = {}
        self._queued_bytes: dict[ParticipantIndex, int] = {}
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self.started = trio.Event()
        self.policy_sync_interval = POLICY_SYNC_INTERVAL
        self.public_url: str | None = None
        self.release_off: str | None = None
        """Why this node releases no key, and how to turn key release on (``/v1/status``)."""
        """This node's HTTP URL for clients (``[node] public_url``), shown in its status."""
        self._next_policy_digest = 0.0
        self.storage: StorageHold | None = None
        """Set while the disk is full: the node refuses work (``_storage_full``)."""
        self._init_roles()
        self._add_peers(self.driver.learn_participants(), everyone=True)

    @property
    def core(self) -> NodeCore:
        return self.driver.core

    @core.setter
    def core(self, core: NodeCore) -> None:
        """Replace the core (tests that build a node's state first); prefer ``core=``."""
        self.driver = NodeDriver(core, shell_messages=SHELL_MESSAGES)

    # --- peers -------------------------------------------------------------------------

    def _learn_participants(self) -> None:
        self._add_peers(self.driver.learn_participants())

    def _add_peers(
        self, new: list[tuple[ParticipantIndex, PeerId]], *, everyone: bool = False
    ) -> None:
        """Tell the transport about newly bound peers and who may send frames."""
        for idx, pid in new if not everyone else sorted(self.driver.peers.items()):
            addrs = self._addrs.get(idx) or list(self.core.addresses.get(idx, ()))
            if addrs:
                self.transport.add_peer(pid, addrs)
        # Only current and incoming members (and recently removed ones, for the chain) get
        # through the transport; everyone else is refused before a frame is read.
        self.metrics.set_members(
            int(i) for i in self.core.allowed_peers() if i != self.config.index
        )
        peers = self.driver.peers
        allowed = {peers[i] for i in self.driver.heard if i in peers}
        self.transport.set_allowed_peers(allowed, queue_bytes=self.peer_queue_bytes())

    def peer_queue_bytes(self) -> int:
        """The byte cap of one peer's queue, for the committee this node is in."""
        st = self.core.state
        n = len(st.committee.members) if st is not None else len(self.config.genesis)
        t = st.threshold if st is not None else self.config.threshold
        return peer_queue_bytes(max(n, len(self.driver.heard)), t)

    def peer_of(self, index: ParticipantIndex) -> PeerId | None:
        return self.driver.peer_of(index)

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
        with log_context(self.log_fields), self._stop_logged():
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._timer_loop)
                for job in extra:
                    nursery.start_soon(job)
                self._step()
                self.started.set()
                task_status.started()

    @contextlib.contextmanager
    def _stop_logged(self) -> Iterator[None]:
        """One ``node service stopped`` line when the service's tasks end (at shutdown)."""
        try:
            yield
        finally:
            st = self.core.state
            log.info(
                "node service stopped",
                extra={
                    "fields": {
                        "has_share": self.core.share is not None,
                        "member": st is not None and self.config.index in st.committee.indices,
                        **self.progress.stopped(),
                    }
                },
            )

    async def _timer_loop(self) -> None:
        while True:
            if self.storage is not None:
                # The disk is full: the core's clock stands still (no tick, no timeout acts
                # on state that is not stored) until the held writes are made.
                self._retry_storage()
                await trio.sleep(self.tick)
                continue
            now = self.clock.now()
            self.driver.advance_time(now)
            self._step()
            if self.policies is not None and now >= self._next_policy_digest:
                self._next_policy_digest = now + self.policy_sync_interval
                try:
                    self._send_policy_digest()
                except StorageFull as exc:
                    self._storage_full("policy digest", exc)
            await trio.sleep(self.tick)

    async def _receive_loop(self) -> None:
        while True:
            peer, frame = await self.transport.receive()
            self.handle_frame(peer, frame)

    def handle_frame(self, peer: PeerId, frame: bytes) -> None:
        """One inbound frame from an authenticated peer. Never raises for bad input.

        While the disk is full the frame is dropped and counted: the sender retransmits,
        or this node catches up from the chain once it runs again."""
        if self.storage is not None:
            self.metrics.storage_refused("frame")
            return
        got = self.driver.receive_frame(peer, frame, self.clock.now())
        if isinstance(got, FrameRejected):
            self._reject(got.peer, got.reason)
            return
        self.metrics.received(int(got.sender), got.kind, got.size)
        if isinstance(got.message, SHELL_MESSAGES):
            try:
                self._on_policy_message(got.sender, peer, got.message)
            except StorageFull as exc:
                self._storage_full("policy message", exc)
                return
        self._step()

    def _reject(self, peer: str, reason: str) -> None:
        # The metric label names the kind of refusal: no culprit lists, no details.
        key = reason.split(" (culprits")[0]
        if not key.startswith("envelope:"):
            key = key.split(":")[0]
        key = key[:60]
        self.metrics.rejected_input(key)
        self._rl.warn(peer, reason)

    # --- a step: persist, then send, then the rest ---------------------------------------------

    def _step(self) -> None:
        if self.storage is not None:
            return
        step = self.driver.step()
        writes = PendingWrites(step.records)
        try:
            writes.apply(self.store)
        except StorageFull as exc:
            # Nothing of this step leaves the node before its records are stored: hold
            # the step, messages included, and stop driving the core until they are.
            held = self._storage_full("step", exc)
            held.step, held.writes = step, writes
            return
        self._finish_step(step)

    def _finish_step(self, step: Step) -> None:
        """A step whose records are stored: react to them, send its messages, then the rest."""
        self._after_stored(step)
        self.metrics.run_progress(self.core.run_progress(), self.clock.now())
        self.progress.observe(self.core.ballots.window, self.core.sharing.run)
        for fail in step.unencodable:
            self.metrics.encode_failed(fail.kind)
            self._rl.warn(str(fail.to), f"message not encodable: {fail.error}")
        for ob in step.messages:
            self._queue_frame(ob.to, ob.frame, ob.message.TYPE)
        for ev in step.events:
            self._handle_event(ev)

    def _after_stored(self, step: Step) -> None:
        """React to what a step stored (the step's records are in the store)."""
        if step.new_peers or step.relearned:
            # Also a removal or a threshold change, which bind nobody new: the transport's
            # allowed set and queue cap, and the per-peer metrics, follow the chain.
            self._add_peers(step.new_peers)
        for ev in step.records:
            self._handle_event(ev)

    # --- a full disk ---------------------------------------------------------------------------

    def _storage_full(self, what: str, exc: StorageFull) -> StorageHold:
        """A write failed because the disk is full: refuse work until a write succeeds."""
        self.metrics.storage_refused(what)
        if self.storage is None:
            self.storage = StorageHold(
                self.clock.now(), trio.current_time() + STORAGE_RETRY, f"{what}: {exc}"
            )
            self.metrics.storage_full = True
            log.error(
                "the disk is full: the node refuses work until it can store again",
                extra={"fields": {"write": what, "error": str(exc)}},
            )
        return self.storage

    def _retry_storage(self) -> None:
        """Every ``STORAGE_RETRY`` seconds: make the held writes (or a probe write); once
        they are made, send the held step's messages and run again."""
        held = self.storage
        if held is None or trio.current_time() < held.retry_at:
            return
        try:
            if held.writes is not None:
                held.writes.apply(self.store)
            else:
                self.store.set_meta(STORAGE_PROBE_META, int(self.clock.now()).to_bytes(8, "big"))
        except StorageFull:
            held.retry_at = trio.current_time() + STORAGE_RETRY
            return
        self.storage = None
        self.metrics.storage_full = False
        log.warning(
            "the disk takes writes again: the node runs",
            extra={"fields": {"held_step": held.step is not None}},
        )
        if held.step is not None:
            self._finish_step(held.step)

    def storage_refusal(self) -> str:
        """What a request refused for a full disk is told."""
        since = self.storage.since if self.storage is not None else self.clock.now()
        return (
            f"this node's disk is full (since {since:.0f}): it refuses work until it can "
            "store again; ask another node or retry later"
        )

    def apply_events(self, events: Iterable[object]) -> None:
        """Persist and act on core events, in order (a caller stepping a core by hand)."""
        events = list(events)
        persist_events(self.store, events)
        if any(isinstance(ev, EpochSwitched | LinkCertified | ChainReplaced) for ev in events):
            self._learn_participants()
        for ev in events:
            self._handle_event(ev)

    def _handle_event(self, ev: object) -> None:
        """What the service does about an event besides storing it (``kms.node.reporting``)."""
        self.reporter.report(ev)
        if isinstance(ev, EpochSwitched) and ev.share is not None:
            # A member of a new epoch (a node that just joined, above all) sends its policy
            # digest shortly, once the others have switched too: they answer with the apps
            # it lacks, so it serves them without waiting a whole sync interval.
            soon = self.clock.now() + 2 * self.config.delta
            self._next_policy_digest = min(self._next_policy_digest, soon)

    def _send(self, ob: Outbound) -> None:
        """Send a message the service makes itself (policy gossip) in this node's envelope."""
        if self._queues.get(ob.to) is None and self._nursery is None:
            return
        try:
            frame, _ = self.driver.envelope(ob.message)
        except (EnvelopeError, InvalidEncoding, ValueError, OverflowError) as exc:
            # An oversized (or otherwise unencodable) message is dropped and counted:
            # it must never raise into the node's tasks.
            self.metrics.encode_failed(ob.message.TYPE)
            self._rl.warn(str(ob.to), f"message not encodable: {type(exc).__name__}")
            return
        self._queue_frame(ob.to, frame, ob.message.TYPE)

    def _queue_frame(self, to: ParticipantIndex, frame: bytes, kind: str) -> None:
        q = self._queues.get(to)
        if q is None:
            if self._nursery is None:
                return
            send, recv = trio.open_memory_channel[bytes](SEND_QUEUE)
            self._queues[to] = send
            self._nursery.start_soon(self._sender, to, recv)
            q = send
        queued = self._queued_bytes.get(to, 0)
        if queued and queued + len(frame) > self.peer_queue_bytes():
            # The peer is not taking what it is sent: drop rather than hold without bound.
            self.metrics.send_failed(queue_full=True)
            return
        try:
            q.send_nowait(frame)
            self._queued_bytes[to] = queued + len(frame)
            self.metrics.queued(kind)
        except trio.WouldBlock:
            self.metrics.send_failed(queue_full=True)

    async def _sender(
        self, index: ParticipantIndex, recv: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        async for first in recv:
            batch = [first]
            size = len(first)
            while size < SEND_BATCH_BYTES:
                try:
                    frame = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                batch.append(frame)
                size += len(frame)
            self._queued_bytes[index] = max(0, self._queued_bytes.get(index, 0) - size)
            peer = self.driver.peer_of(index)
            if peer is None:
                for _ in batch:
                    self.metrics.send_failed()
                continue
            try:
                await self.transport.send_many(peer, batch)
                sent = len(batch)
            except PeerUnreachable as exc:
                sent = exc.frames_sent
            except TransportError:
                sent = 0
            for frame in batch[:sent]:
                self.metrics.sent(int(index), len(frame))
            for _ in batch[sent:]:
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
        """Answer a CVM's decoded key request (``kms.node.keyrelease``); refused with
        ``storage-full`` while the disk is full (no partial leaves before its nonce and
        audit records are stored)."""
        if self.storage is not None:
            self.metrics.storage_refused("key request")
            return StorageRefused(self.storage_refusal())
        try:
            return await self.keys.release(request)
        except StorageFull as exc:
            self._storage_full("key request", exc)
            return StorageRefused(self.storage_refusal())
        except StoreError as exc:
            return self._storage_failed("key request", exc)

    def _storage_failed(self, what: str, exc: StoreError) -> StorageFailed:
        """A request's records could not be stored (not a full disk): refused, counted."""
        self.metrics.storage_failed(what)
        log.error(
            "a request's records could not be stored: refused",
            extra={"fields": {"request": what, "error": str(exc)[:200]}},
        )
        return StorageFailed()

    def refuse_key_request(self, exc: MessageDecodeError) -> ReleaseRefused | KeysNotServed:
        """A key request body that does not decode: counted as a refused request."""
        return self.keys.undecodable(exc)

    async def certify(self, request: AppKeyCertRequest) -> CertResult:
        """Answer a CVM's decoded app-key certificate request (``kms.node.keyrelease``);
        refused with ``storage-full`` while the disk is full."""
        if self.storage is not None:
            self.metrics.storage_refused("cert request")
            return StorageRefused(self.storage_refusal())
        try:
            return await self.keys.certify(request)
        except StorageFull as exc:
            self._storage_full("cert request", exc)
            return StorageRefused(self.storage_refusal())
        except StoreError as exc:
            return self._storage_failed("cert request", exc)

    def refuse_cert_request(self, exc: MessageDecodeError) -> ReleaseRefused | KeysNotServed:
        """A certificate request body that does not decode: counted as a refused request."""
        return self.keys.undecodable_cert(exc)

    def offer_policy(self, raw: bytes) -> PolicyOfferResult:
        """An offered policy bundle; raises ``StorageFull`` while the disk is full."""
        self._refuse_if_full("policy")
        try:
            return self.policy_sync.offer(raw)
        except StorageFull as exc:
            self._storage_full("policy", exc)
            raise

    def _refuse_if_full(self, what: str) -> None:
        if self.storage is not None:
            self.metrics.storage_refused(what)
            raise StorageFull(self.storage_refusal())

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
        self._refuse_if_full("admin")
        try:
            return self.policy_sync.reload()
        except StorageFull as exc:
            self._storage_full("admin", exc)
            raise

    def resolve_fork(self, app_id: bytes, bundle: bytes) -> dict[str, Any]:
        """Lift a frozen app's freeze with its owner's bundle (admin channel ``resolve-fork``)."""
        self._refuse_if_full("admin")
        try:
            return self.policy_sync.resolve_fork(app_id, bundle)
        except StorageFull as exc:
            self._storage_full("admin", exc)
            raise

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
        self._refuse_if_full("admin")
        pid = self.core.propose(change)
        self._step()
        return pid

    def approve(self, proposal_id: bytes) -> bool:
        self._refuse_if_full("admin")
        known = self.core.approve(proposal_id)
        self._step()
        return known

    # --- evidence (``kms.node.evidence_log``) -------------------------------------------------

    def keep_evidence(self, culprit: int, reason: str, raw: bytes) -> str:
        """Keep evidence of misbehaviour; with the disk full it is not kept (logged and
        counted: the misbehaviour is reported in the metrics all the same)."""
        try:
            return self.evidence_log.keep(culprit, reason, raw)
        except StorageFull as exc:
            self._storage_full("evidence", exc)
            return ""

    def offer_evidence(self, raw: bytes) -> EvidenceResult:
        """Evidence a CVM discloses; raises ``StorageFull`` while the disk is full."""
        self._refuse_if_full("evidence")
        try:
            return self.evidence_log.offer(raw)
        except StorageFull as exc:
            self._storage_full("evidence", exc)
            raise

    def evidence(self) -> list[dict[str, Any]]:
        return self.evidence_log.entries()

    # --- status (``kms.node.node_status``) ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        out = node_status(
            self.core,
            int(self.config.index),
            self.transport,
            self.releaser,
            self.collateral,
            self.policies,
            now=self.clock.now(),
            own_url=self.public_url,
            release_off=self.release_off,
        )
        held = self.storage
        out["storage"] = {
            "full": held is not None,
            "since": round(held.since, 3) if held is not None else None,
            "held_step": held is not None and held.step is not None,
            "error": held.reason[:300] if held is not None else None,
        }
        if held is not None:
            out["healthy"] = False
            out["health"] = f"{STORAGE_FULL}: {self.storage_refusal()}"
        return out

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
