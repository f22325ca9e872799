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

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol

import trio

from kms.attest.pccs import CollateralProvider
from kms.node.core import NodeCore
from kms.node.driver import FrameRejected, NodeDriver, Step
from kms.node.limits import POLICY_BURST, peer_queue_bytes
from kms.node.logs import log_context
from kms.node.metrics import (
    CollateralCounts,
    NodeMetrics,
    NodeSnapshot,
    PolicyCounts,
)
from kms.node.model import (
    ApprovalRefused,
    ChainReplaced,
    ChangeCheck,
    EpochSwitched,
    InputRejected,
    LinkCertified,
    MisbehaviourObserved,
    NodeConfig,
    RetainedShareDeletable,
    RunFailed,
    ShareHoldersBelowThreshold,
    ShareRefused,
)
from kms.node.persist import (
    ADMISSION_POLICY_META as ADMISSION_POLICY_META,
)
from kms.node.persist import apply_events as persist_events
from kms.node.persist import (
    load_chain as load_chain,
)
from kms.node.persist import (
    restore,
)
from kms.node.persist import (
    share_from_bytes as share_from_bytes,
)
from kms.node.persist import (
    share_to_bytes as share_to_bytes,
)
from kms.node.release import Checked, KeyReleaser, Refusal, Released
from kms.policy.gossip import (
    MAX_DIGEST_ENTRIES,
    PolicyAnnounce,
    PolicyDigest,
    PolicyQuery,
    PolicyUnknown,
    announce_to,
    offer_outcome,
)
from kms.protocol import KeyRefusal, KeyRequest
from kms.store import NodeStore, StoreError
from kms.store.audit import AUDIT_HEAD_CONTEXT, head_statement
from mpc import hpke
from mpc.broadcast import Outbound
from mpc.dkg.session import STALL_FRACTION
from mpc.errors import InvalidEncoding
from mpc.ids import ParticipantIndex, PeerId
from mpc.sig import SigningKey
from net.codec import EnvelopeError
from net.errors import TransportError
from net.peerid import peer_id_from_ed25519
from net.transport import Transport

log = logging.getLogger("quorum_kms.node")

SHELL_MESSAGES = (PolicyAnnounce, PolicyDigest, PolicyQuery, PolicyUnknown)
"""Messages the service handles itself (policy gossip); the core only notes their epoch."""

SEND_QUEUE = 4096
"""Frames queued per peer at most; the bytes queued are capped too (``peer_queue_bytes``)."""
TICK = 0.05
"""Longest timer period, seconds; ``Δ/16`` when that is shorter (``NodeService.tick``)."""
POLICY_SYNC_INTERVAL = 10.0
"""Seconds between policy digests to every member (``kms.policy.gossip``)."""


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
        self._next_policy_digest = 0.0
        self._digest_cursor = b""
        self._queried: dict[bytes, float] = {}
        self._gossip_budget: dict[tuple[int, str], tuple[float, float]] = {}
        self._answered: dict[tuple[int, bytes], float] = {}
        self._consults: dict[bytes, list[Any]] = {}  # app -> [started, last sent, answered]
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
            self.driver.advance_time(now)
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
        got = self.driver.receive_frame(peer, frame, self.clock.now())
        if isinstance(got, FrameRejected):
            self._reject(got.peer, got.reason)
            return
        self.metrics.received(int(got.sender), got.kind, got.size)
        if isinstance(got.message, SHELL_MESSAGES):
            self._on_policy_message(got.sender, peer, got.message)
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
        step = self.driver.step()
        self._apply(step)
        self.metrics.run_progress(self.core.run_progress(), self.clock.now())
        for fail in step.unencodable:
            self.metrics.encode_failed(fail.kind)
            self._rl.warn(str(fail.to), f"message not encodable: {fail.error}")
        for ob in step.messages:
            self._queue_frame(ob.to, ob.frame, ob.message.TYPE)
        for ev in step.events:
            self._handle_event(ev)

    def _apply(self, step: Step) -> None:
        """Store the step's records (``kms.node.persist``), then react to what they stored."""
        persist_events(self.store, step.records)
        if step.new_peers:
            self._add_peers(step.new_peers)
        for ev in step.records:
            self._handle_event(ev)

    def apply_events(self, events: Iterable[object]) -> None:
        """Persist and act on core events, in order (a caller stepping a core by hand)."""
        events = list(events)
        persist_events(self.store, events)
        if any(isinstance(ev, EpochSwitched | LinkCertified | ChainReplaced) for ev in events):
            self._learn_participants()
        for ev in events:
            self._handle_event(ev)

    def _handle_event(self, ev: object) -> None:
        """What the service does about an event besides storing it: logs and metrics."""
        if isinstance(ev, EpochSwitched):
            self.metrics.epoch_switched()
            log.info(
                "epoch certified",
                extra={
                    "fields": {
                        "epoch": ev.epoch,
                        "threshold": ev.state.threshold,
                        "has_share": ev.share is not None,
                    }
                },
            )
        elif isinstance(ev, LinkCertified):
            log.info(
                "membership change certified",
                extra={"fields": {"kind": ev.certificate.outcome.proposal.kind}},
            )
        elif isinstance(ev, ChainReplaced):
            log.info("chain replaced", extra={"fields": {"links": len(ev.links)}})
        elif isinstance(ev, RetainedShareDeletable):
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
        async for frame in recv:
            self._queued_bytes[index] = max(0, self._queued_bytes.get(index, 0) - len(frame))
            peer = self.driver.peer_of(index)
            if peer is None:
                self.metrics.send_failed()
                continue
            try:
                await self.transport.send(peer, frame)
                self.metrics.sent(int(index), len(frame))
            except TransportError:
                self.metrics.send_failed()

    # --- key release (called by the HTTP app) -------------------------------------------------

    releaser: KeyReleaser | None = None
    policies: Any = None
    """The node's app policies (``kms.node.policies.NodePolicies``), when it serves keys."""

    QUERY_MEMORY = 4096
    QUERY_INTERVAL = 60.0

    def offer_policy(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        if self.policies is None:
            return 503, {
                "accepted": False,
                "reason": "not-serving",
                "detail": "this node does not release keys",
            }
        code, reply, out = self.policies.offer(raw, int(self.clock.now()))
        if not reply.get("accepted"):
            self.metrics.rejected_input("policy push: " + str(reply.get("reason")))
        if out is not None and out.accepted and not out.duplicate:
            log.info("policy accepted", extra={"fields": {"app": reply.get("app_id")}})
            self._announce_policy(raw)  # the committee passes it on (kms.policy.gossip)
        elif out is not None and out.cached and out.app_id is not None:
            self._query_committee(out.app_id, "ask-push")
        return int(code), dict(reply)

    # --- policy gossip (``kms.policy.gossip``) ---------------------------------------------

    def _query_committee(self, app_id: bytes, budget: str = "ask") -> None:
        """Ask the other members for an app this node does not know (at most once a minute)."""
        now = self.clock.now()
        if now - self._queried.get(app_id, -math.inf) < self.QUERY_INTERVAL:
            return
        # Pushes of ever new app ids cost the committee nothing beyond this budget: without
        # it, every anonymous push of a fresh app would send n - 1 messages.
        if not self._take_budget(ParticipantIndex(int(self.config.index)), budget):
            return
        self._queried[app_id] = now
        while len(self._queried) > self.QUERY_MEMORY:
            self._queried.pop(next(iter(self._queried)))
        st = self.core.state
        if st is None:
            return
        for to in announce_to([int(i) for i in st.committee.indices], int(self.config.index)):
            self._send(Outbound(ParticipantIndex(to), PolicyQuery(app_id)))

    def _announce_policy(self, bundle: bytes, origin: ParticipantIndex | None = None) -> None:
        st = self.core.state
        if st is None:
            return
        msg = PolicyAnnounce(bundle)
        members = [int(i) for i in st.committee.indices]
        for to in announce_to(
            members, int(self.config.index), None if origin is None else int(origin)
        ):
            self._send(Outbound(ParticipantIndex(to), msg))

    def _send_policy_digest(self) -> None:
        """The next page of this node's apps, to every member (pages wrap around)."""
        st = self.core.state
        if st is None:
            return
        start = self._digest_cursor
        entries, nxt = self.policies.page(start, MAX_DIGEST_ENTRIES, int(self.clock.now()))
        digest = PolicyDigest.page(entries, start, nxt)
        self._digest_cursor = nxt
        for to in announce_to([int(i) for i in st.committee.indices], int(self.config.index)):
            self._send(Outbound(ParticipantIndex(to), digest))

    def _on_policy_message(
        self,
        index: ParticipantIndex,
        peer: PeerId,
        message: PolicyAnnounce | PolicyDigest | PolicyQuery | PolicyUnknown,
    ) -> None:
        if self.policies is None:
            return  # this node serves no keys and keeps no policies
        st = self.core.state
        if st is None or index not in st.committee.indices:
            # Only members of the current epoch vouch for apps or ask for them: a removed
            # or pending member is still a known peer, not a voucher.
            self.metrics.rejected_input("policy gossip: not a current member")
            return
        now = int(self.clock.now())
        if isinstance(message, PolicyDigest):
            if not self._take_budget(index, "digest"):
                return
            for app_id in self.policies.newer_than(message, now):
                bundle = self.policies.bundle_bytes(app_id)
                if bundle is not None:
                    # A digest of a few bytes draws up to 32 bundles: the bytes are metered too.
                    if not self._take_budget(index, "digest-bytes", len(bundle)):
                        return
                    self._send(Outbound(index, PolicyAnnounce(bundle)))
            return
        if isinstance(message, PolicyQuery):
            bundle = self.policies.bundle_bytes(bytes(message.app_id))
            if bundle is not None:
                if self._take_budget(index, "query"):
                    self._send(Outbound(index, PolicyAnnounce(bundle)))
            else:  # a few bytes, answered from a dictionary lookup: not budgeted
                self._send(Outbound(index, PolicyUnknown(bytes(message.app_id))))
            return
        if isinstance(message, PolicyUnknown):
            consult = self._consults.get(bytes(message.app_id))
            if consult is not None:
                consult[2].add(int(index))
            return
        st = self.core.state
        members = frozenset(int(i) for i in st.committee.indices) if st is not None else frozenset()
        code, reply, _ = self.policies.offer(
            message.bundle, now, voucher=int(index), members=members
        )
        accepted = bool(reply.get("accepted"))
        reason = None if accepted or code == 503 else str(reply.get("reason", "refused"))
        relay, blame = offer_outcome(accepted, bool(reply.get("duplicate")), reason)
        if relay:
            self.metrics.policy_learned()
            log.info(
                "policy learned from a peer",
                extra={
                    "fields": {
                        "from": int(index),
                        "app": reply.get("app_id"),
                        "version": reply.get("version"),
                    }
                },
            )
            self._announce_policy(message.bundle, index)
        if blame is not None:
            self._reject(str(peer), blame)
        if reply.get("reason") in ("not_owner", "stale_version") and reply.get("app_id"):
            # The peer holds an older policy, or one signed by a key our chain rotated
            # away: answer with ours, which carries the rotation (once a minute per peer and
            # app, so two nodes that refuse each other's bundles do not bounce them forever).
            app_id = bytes.fromhex(str(reply["app_id"]))
            key = (int(index), app_id)
            if now - self._answered.get(key, -math.inf) < self.QUERY_INTERVAL:
                return
            self._answered[key] = now
            while len(self._answered) > self.QUERY_MEMORY:
                self._answered.pop(next(iter(self._answered)))
            ours = self.policies.bundle_bytes(app_id)
            if ours is not None:
                self._send(Outbound(index, PolicyAnnounce(ours)))

    GOSSIP_BUDGET: ClassVar[dict[str, tuple[float, float]]] = {
        "digest": (8.0, 0.5),
        "query": (64.0, 8.0),
        "ask": (32.0, 4.0),
        "ask-push": (32.0, 4.0),
        "consult": (64.0, 16.0),
        "digest-bytes": (float(POLICY_BURST), POLICY_BURST / POLICY_SYNC_INTERVAL),
    }
    """Per member and kind: (burst, refill per second) of policy digests answered and of
    policy queries answered with a bundle; and, under this node's own index, of queries
    this node sends about apps it has not admitted: those a CVM's key request asked for
    (``ask``) and those anyone pushed (``ask-push``, its own budget, so that a flood of
    anonymous pushes cannot starve the queries quoted requests need), and the rounds of
    queries sent before a key request admits an app (``consult``). ``digest-bytes`` is per
    member in bytes: the bundles sent in answer to its digests (one full page of 32 bundles of
    64 KiB per ``POLICY_SYNC_INTERVAL``, the pace of an honest member's digests). Excess is
    dropped and counted."""

    def _take_budget(self, index: ParticipantIndex, kind: str, cost: float = 1.0) -> bool:
        burst, rate = self.GOSSIP_BUDGET[kind]
        now = self.clock.now()
        tokens, last = self._gossip_budget.get((int(index), kind), (burst, now))
        tokens = min(burst, tokens + max(0.0, now - last) * rate)
        if tokens < cost:
            self._gossip_budget[(int(index), kind)] = (tokens, now)
            self.metrics.rejected_input(f"policy gossip: {kind} rate limited")
            return False
        self._gossip_budget[(int(index), kind)] = (tokens - cost, now)
        return True

    def reload_policies(self) -> dict[str, Any]:
        """Re-read the operator's policies directory (admin channel ``reload-policies``)."""
        if self.policies is None:
            return {"admitted": 0, "updated": 0, "refused": 0, "serving": False}
        now = int(self.clock.now())
        if self.policies.ready(now) is None:
            return {"admitted": 0, "updated": 0, "refused": 0, "serving": False}
        return {**self.policies.reload(now), "serving": True}

    def resolve_fork(self, app_id: bytes, bundle: bytes) -> dict[str, Any]:
        """Lift a frozen app's freeze with its owner's bundle (admin channel ``resolve-fork``)."""
        if self.policies is None:
            return {"resolved": False, "reason": "not-serving"}
        return dict(self.policies.resolve_fork(app_id, bundle, int(self.clock.now())))

    def policy_info(self, app_id: bytes) -> dict[str, Any] | None:
        if self.policies is None:
            return None
        info = self.policies.describe(app_id, int(self.clock.now()))
        return dict(info) if info is not None else None

    NONCE_TTL = 600

    def _seen_nonce(self, nonce: bytes) -> bool:
        raw = self.store.get_meta("nonce/" + nonce.hex())
        return raw is not None and int.from_bytes(raw, "big") > int(self.clock.now())

    collateral: CollateralProvider | None = None
    """Where the releaser's collateral comes from (a PCCS with its cache, or a file)."""

    def _collateral_source(self) -> str | None:
        c = self.collateral
        if c is None:
            return None
        parts = ([f"pccs {c.client.url}"] if c.client is not None else []) + (
            ["file"] if c.fixed is not None else []
        )
        return ", ".join(parts)

    async def release(self, raw: bytes) -> tuple[int, bytes]:
        """Answer a CVM's key request: (HTTP status, msgpack body)."""
        started = time.perf_counter()
        code, body, refusal = await self._release(raw)
        self.metrics.key_request(refusal, time.perf_counter() - started)
        return code, body

    async def _release(self, raw: bytes) -> tuple[int, bytes, str | None]:
        """(HTTP status, msgpack body, the refusal reason or ``None`` if released)."""
        if self.releaser is None:
            refusal = KeyRefusal("not-serving", "this node does not release keys")
            return 503, refusal.encode(), refusal.reason
        now = int(self.clock.now())
        # The cheap checks first: nothing is fetched for a request that fails them, and
        # only a quote whose PCK chain verifies to a pinned root names a platform to fetch.
        checked = self.releaser.check(
            raw, now=now, share=self.core.share, seen_nonce=self._seen_nonce
        )
        decoded: KeyRequest | None = None
        bundle = None
        if isinstance(checked, Checked):
            decoded = checked.request
            if self.policies is not None:
                # A frozen app is refused; an app not admitted here may be admitted by the
                # bundle the request carries (bound by the quote's report data).
                gate = self._policy_gate(decoded, now, checked.quote.fields.rtmr3)
                if isinstance(gate, KeyRefusal):
                    self.metrics.rejected_input("key request: " + gate.reason)
                    return 403, gate.encode(), gate.reason
                bundle = gate
            if self.collateral is not None:
                await self.collateral.prepare(checked.quote, now=now)
                # The fetch may have waited (its timeouts, the fetch limiter): freshness,
                # the policy, the collateral and the nonce's lifetime are judged now.
                now = int(self.clock.now())
            st = self.core.state
            res = self.releaser.release(
                checked,
                now=now,
                epoch=st.epoch if st else 0,
                share=self.core.share,
                seen_nonce=self._seen_nonce,
                candidate=None if bundle is None else bundle.signed.policy,
            )
        else:
            res = checked
        if isinstance(res, Released) and bundle is not None and self.policies is not None:
            admitted = self.policies.admit_released(bundle, now)
            if admitted is not None and admitted.accepted:
                # The other members hear of it: t such announcements admit it at a member
                # that has not (its own consultation may have ended before they released).
                self._announce_policy(bytes(bundle.encode()))
        if isinstance(res, Released):
            # The replay cache survives restarts; the audit records are committed as one group.
            # Remembered for longer than any timestamp the releaser still accepts.
            ttl = max(self.NONCE_TTL, 2 * self.releaser.max_skew + 60)
            self.store.record_release(
                "nonce/" + res.nonce.hex(),
                (now + ttl).to_bytes(8, "big"),
                [a.as_dict() for a in res.audit],
            )
            self.metrics.queued("kms/key-response")
            log.info(
                "key released",
                extra={
                    "fields": {
                        "app": res.audit[0].app,
                        "purposes": len(res.audit),
                        "simulated": res.audit[0].simulated,
                    }
                },
            )
            return 200, res.response.encode(), None
        label = res.reason
        if res.reason == Refusal.QUOTE.value:
            # The quote failure code (a QuoteFailure value): a bounded set of labels.
            label += ": " + res.refusal.detail.split(":", 1)[0][:40]
        self.metrics.rejected_input("key request: " + label)
        self._rl.warn("cvm", f"key request refused: {res.reason}")
        if res.reason == "no-policy" and decoded is not None and self.policies is not None:
            self._query_committee(bytes(decoded.body.app_id))  # perhaps a member knows it
        return 403, res.refusal.encode(), res.reason

    def _policy_gate(self, req: KeyRequest, now: int, rtmr3: bytes) -> Any:
        """Before the releaser: a frozen app is refused; for an app this node has not
        admitted, the bundle the request carries or names (``None`` if it names none)."""
        from kms.node.release import Refusal

        app_id = req.body.app_id
        if self.policies.is_frozen(app_id, now):
            return KeyRefusal(Refusal.FROZEN.value, "the app is frozen by an owner rotation fork")
        bundle, why = self.policies.candidate(req, now)
        if why:
            return KeyRefusal(Refusal.BUNDLE.value, why[:500])
        if bundle is not None:
            # One boot admits at most one app: before the committee is asked, the request's
            # event log must replay to the quote's RTMR3 with this app's boot-prefix app-id
            # (the full policy check repeats this after the quote is verified).
            if not self._measured_app(req, rtmr3):
                return KeyRefusal(
                    Refusal.POLICY.value,
                    "app_id_not_measured: a key request that admits an app needs an RTMR3 "
                    "event log whose boot prefix names the app",
                )
            refusal = self._consult_committee(bytes(app_id), bundle)
            if refusal is not None:
                return refusal
        return bundle

    CONSULT_RESEND = 0.5
    """Seconds (monotonic) after which the query goes again to members that did not answer."""

    @staticmethod
    def _measured_app(req: KeyRequest, rtmr3: bytes) -> bool:
        from kms.policy import EventLogError
        from kms.policy.eventlog import replay_rtmr3

        if not req.event_log:
            return False
        try:
            return replay_rtmr3(bytes(req.event_log), rtmr3).app_id == bytes(req.body.app_id)
        except EventLogError:
            return False

    def _consult_committee(self, app_id: bytes, bundle: Any) -> KeyRefusal | None:
        """Before a key request admits an app this node has not admitted: the committee is
        asked (``kms/policy-query``) and the request refused ``retry-later`` until ``t``
        other members answered (all of them if fewer), so that at least one answer comes
        from an honest member: this node's own "not admitted" says nothing of what the
        others hold. Members holding the app answer with its bundle (``t`` of those admit it
        here, with the union of their chains, and the request is then checked against it);
        the others answer ``kms/policy-unknown``. A bundle whose chain disagrees with one
        a member sent is refused."""
        from kms.node.release import Refusal

        st = self.core.state
        if st is None:
            return KeyRefusal(Refusal.NOT_SERVING.value, "no epoch yet")
        others = [int(i) for i in st.committee.indices if int(i) != int(self.config.index)]
        need = min(int(st.threshold), len(others))
        mono = time.monotonic()
        consult = self._consults.get(app_id)
        if consult is None or mono - consult[0] > self.CONSULT_TTL:
            consult = self._consults[app_id] = [mono, -math.inf, set()]
            while len(self._consults) > self.QUERY_MEMORY:
                self._consults.pop(next(iter(self._consults)))
        _, sent, unknown = consult
        vouched = self.policies.vouched(app_id, int(self.clock.now()))
        answered = (unknown | set(vouched)) & set(others)
        if len(answered) < need:
            if mono - sent >= self.CONSULT_RESEND and self._take_budget(
                ParticipantIndex(int(self.config.index)), "consult"
            ):
                consult[1] = mono
                for to in others:
                    if to not in answered:
                        self._send(Outbound(ParticipantIndex(to), PolicyQuery(app_id)))
            return KeyRefusal(
                Refusal.RETRY.value, "asking the committee about this app: retry shortly"
            )
        why = self.policies.agrees(bundle, list(vouched.values()))
        if why:
            return KeyRefusal(Refusal.BUNDLE.value, why[:500])
        return None

    CONSULT_TTL = 60.0

    def count_rejected(self, label: str) -> None:
        """Count input refused before it reached the node (e.g. an unparsable JSON body)."""
        self.metrics.rejected_input(label)

    AUDIT_CONTEXT = AUDIT_HEAD_CONTEXT

    _audit_head: dict[str, Any] | None = None
    """The last signed head; signed again only when the log has grown."""

    def audit_head(self) -> dict[str, Any]:
        """The audit log's count and head hash, signed by this node's identity (public).

        One read of the log's last row (a primary-key lookup) per call; the
        signature is made once per change of the log. The chain is never
        walked here: ``audit_export(check=True)`` on the admin channel does that.
        """
        count, head = self.store.audit_head()
        cached = self._audit_head
        if cached is None or cached["count"] != count or cached["head"] != head.hex():
            statement = head_statement(count, head)
            cached = self._audit_head = {
                "count": count,
                "head": head.hex(),
                "identity": self.identity.verify_key().to_bytes().hex(),
                "signature": self.identity.sign(self.AUDIT_CONTEXT, statement).hex(),
            }
        return dict(cached)

    def audit_export(
        self, start: int = 0, limit: int = 1000, *, check: bool = False
    ) -> dict[str, Any]:
        """Audit entries (canonical JSON) from ``start`` and the signed head (admin channel only).

        ``check`` also recomputes the whole chain here (``node_check``): a
        walk over every entry, so it is asked for once per export, not per page.
        """
        head = self.audit_head()
        entries = self.store.audit_entries(start, limit)
        out = {
            **head,
            "start": start,
            "entries": [e.entry.decode("utf-8", "replace") for e in entries],
        }
        if check:
            try:
                self.store.audit_verify()
                out["node_check"] = "ok"
            except (StoreError, TypeError, ValueError) as exc:  # an edited file may hold anything
                out["node_check"] = f"broken: {exc}"
                log.warning("audit log check failed", extra={"fields": {"reason": str(exc)}})
        return out

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

    # --- evidence ---------------------------------------------------------------------------

    EVIDENCE_INDEX = "evidence/index"

    def keep_evidence(self, culprit: int, reason: str, raw: bytes) -> str:
        """Keep third-party-checkable evidence of misbehaviour (once per distinct evidence)."""
        import hashlib

        eid = hashlib.sha256(raw).hexdigest()
        index = json.loads(self.store.get_meta(self.EVIDENCE_INDEX) or b"[]")
        if any(e["id"] == eid for e in index):
            return eid
        st = self.core.state
        self.store.set_meta("evidence/" + eid, raw)
        index.append(
            {
                "id": eid,
                "culprit": culprit,
                "reason": reason,
                "epoch": st.epoch if st else None,
                "time": round(self.clock.now(), 3),
            }
        )
        self.store.set_meta(self.EVIDENCE_INDEX, json.dumps(index).encode())
        return eid

    def offer_evidence(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        """Evidence a CVM discloses (``POST /v1/evidence``): a node's signed wrong partial.

        Checked against this node's verified chain at the epoch the answer
        names (``kms.evidence.verify_wrong_partial``); kept (once) when it
        proves something, so an operator can attach it to a removal.
        """
        from kms.evidence import verify_wrong_partial
        from kms.protocol import WrongPartialEvidence
        from mpc.errors import InvalidSignature

        st = self.core.state
        if st is None:
            return 503, {"accepted": False, "reason": "not-serving", "detail": "no chain yet"}
        try:
            ev = WrongPartialEvidence.decode(raw)
        except InvalidEncoding as exc:
            self.count_rejected("evidence: malformed")
            return 400, {"accepted": False, "reason": "malformed", "detail": str(exc)[:500]}
        state = self.core.epoch_state(ev.response.epoch)
        if state is None and self.core.is_stale(ev.response.epoch):
            self.count_rejected("evidence: stale epoch")
            return 409, {
                "accepted": False,
                "reason": "stale-epoch",
                "detail": f"epoch {ev.response.epoch} is older than the chain this node keeps",
            }
        if state is None:
            self.count_rejected("evidence: unknown epoch")
            return 409, {
                "accepted": False,
                "reason": "unknown-epoch",
                "detail": f"epoch {ev.response.epoch} is not in this node's chain",
            }
        try:
            proves = verify_wrong_partial(ev, state)
        except (InvalidSignature, InvalidEncoding) as exc:
            self.count_rejected("evidence: does not verify")
            return 409, {"accepted": False, "reason": "does-not-verify", "detail": str(exc)[:500]}
        node = int(ev.response.index)
        eid = self.keep_evidence(node, f"wrong partial disclosed by a CVM: {proves}", raw)
        log.warning(
            "misbehaviour",
            extra={"fields": {"culprit": node, "reason": "wrong partial", "evidence": eid}},
        )
        return 200, {
            "accepted": True,
            "id": eid,
            "node": node,
            "epoch": state.epoch,
            "proves": proves,
        }

    def evidence(self) -> list[dict[str, Any]]:
        """Evidence this node collected: id, culprit, kind, reason, epoch, time and the bytes (hex)."""
        from mpc.codec import decode

        out = []
        for e in json.loads(self.store.get_meta(self.EVIDENCE_INDEX) or b"[]"):
            raw = self.store.get_meta("evidence/" + e["id"]) or b""
            try:
                kind = decode(raw).TYPE.removeprefix("evidence/")
            except ValueError:
                kind = "unreadable"
            out.append({**e, "kind": kind, "evidence": raw.hex()})
        return out

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.core.status()
        st = self.core.state
        committee = []
        if st is not None:
            for p in st.committee.members:
                committee.append(
                    {"index": p.index, "peer_id": str(peer_id_from_ed25519(p.identity))}
                )
        return {
            "index": int(self.config.index),
            "peer_id": str(self.transport.local_peer),
            "epoch": s.epoch,
            "threshold": s.threshold,
            "master_public_key": s.mpk.hex() if s.mpk else None,
            "committee": committee,
            "has_share": s.has_share,
            "running": s.running,
            "pending_proposals": [{"id": i, "kind": k, "approvals": n} for i, k, n in s.pending],
            "retained_shares": [
                {"epoch": e, "missing_acknowledgements": [int(m) for m in miss]}
                for e, miss in s.retained
            ],
            "share_holders": [int(i) for i in s.share_holders],
            "share_holders_below_threshold": s.share_holders_below_threshold,
            "share_error": s.share_error,
            "last_refresh": s.last_refresh,
            "refused_approvals": [{"id": i, "reason": r} for i, r in s.refused],
            "approvals_waiting": list(s.waiting),
            "locked_proposal": s.locked,
            "peers": sorted(str(p) for p in self.transport.connected_peers()),
            "healthy": self.core.state is not None or s.running == "dkg",
            "serves_keys": self.releaser is not None,
            "simulated_quotes_accepted": bool(self.releaser and self.releaser.simulated_allowed),
            "collateral": self._collateral_source(),
            "apps": self.policies.stats() if self.policies is not None else None,
        }

    def metrics_snapshot(self) -> NodeSnapshot:
        """What ``/metrics`` reports of the node's current state (read at each scrape)."""
        st = self.core.state
        s = self.core.status()
        ts = self.transport.statistics()
        c = self.collateral
        collateral = CollateralCounts()
        if c is not None:
            collateral = CollateralCounts(
                fetch_failures=c.fetch_failures,
                fetches=c.fetches,
                failures_cached=c.failures_cached,
                rollbacks_refused=c.rollbacks_refused,
                stale_refused=c.client.refused["stale"] if c.client is not None else 0,
                oversized_refused=c.client.refused["oversized"] if c.client is not None else 0,
                platforms=c.sizes(),
            )
        policies = None
        if self.policies is not None:
            ps = self.policies.stats()
            policies = PolicyCounts(
                admitted=ps["admitted"],
                frozen=ps.get("frozen_count", 0),
                cache_entries=ps["cache_entries"],
                cache_bytes=ps["cache_bytes"],
                cache_evictions=ps.get("cache_evictions", 0),
            )
        return NodeSnapshot(
            epoch=st.epoch if st else -1,
            peers=len(self.transport.connected_peers()),
            pending_proposals=len(s.pending),
            last_refresh=s.last_refresh or 0.0,
            retained_shares=len(s.retained),
            known_share_holders=len(s.share_holders),
            share_holders_below_threshold=s.share_holders_below_threshold,
            share_refused=s.share_error is not None,
            has_share=self.core.share is not None,
            simulated_quotes_accepted=bool(self.releaser and self.releaser.simulated_allowed),
            collateral=collateral,
            policies=policies,
            transport_refused_peers=ts.refused_peers,
            transport_bytes_sent=ts.bytes_sent,
            transport_bytes_received=ts.bytes_received,
            transport_dropped_oversize=ts.dropped_oversize,
            log_suppressed=self._rl.suppressed,
        )

    def metrics_text(self) -> str:
        """Prometheus text exposition (version 0.0.4), from this node's own registry."""
        return self.metrics.exposition().decode()
