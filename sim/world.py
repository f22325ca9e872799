"""Protocol mode: the project's node cores on a seeded discrete-event loop over virtual time.

``World`` owns one ``NodeCore`` per simulated node (the real sans-I/O core,
with real cryptography), a ``Network`` of link models, the fault schedule,
the adversaries and the key-request load. Its event queue orders everything
by ``(virtual time, sequence number)``, so the same scenario and seed replay
the same run bit for bit; trio is not involved (it randomises task order).

The world is an omniscient observer: it records which shares corrupt nodes
held (to say whether the secret was exposed), and it reconstructs the
genesis secret from honest shares only to check whether a key a CVM
accepted was the right one. No node ever sees either.
"""

from __future__ import annotations

import functools
import gc
import heapq
import random
from collections.abc import Callable
from typing import Any

from kms.node.core import NodeCore
from kms.node.driver import FrameRejected, NodeDriver, OutboundFrame
from kms.node.model import NodeConfig
from kms.node.persist import apply_events
from mpc.broadcast import Outbound
from mpc.codec import Message
from mpc.errors import LocalProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.math.curve import set_decode_cache
from mpc.math.vss import set_public_share_cache
from mpc.membership import (
    AddMember,
    ChainState,
    ChangeThreshold,
    Refresh,
    RemoveMember,
)
from mpc.membership.messages import Change
from mpc.sig import set_key_cache
from net.codec import Envelope, open_envelope
from net.peerid import peer_id_from_ed25519
from sim import adversary
from sim.load import KeyRequestLoad
from sim.network import Network
from sim.nodes import SimNode, disqualified_from, node_keys, session_factory
from sim.observe import Observations
from sim.scenario import MembershipEvent, Partition, Scenario

DECODE_CACHE_LIMIT = 50_000
GC_THRESHOLD = 50_000
"""Allocations between two passes of the youngest generation of the cyclic collector while a
world runs (Python's default: 700)."""
ENVELOPE_OVERHEAD = 64
"""Bytes the wire envelope adds to a message, rounded up (``net.codec``)."""


# --- the world --------------------------------------------------------------------------


class World:
    """One simulated run of ``scenario`` from ``seed``; call ``run()`` once."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        *,
        progress: Callable[[float, float], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.now = 0.0
        self._progress = progress
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._rng_net = random.Random(f"quorum-kms/sim/{seed}/network")
        self._rng_faults = random.Random(f"quorum-kms/sim/{seed}/faults")
        self.rng_load = random.Random(f"quorum-kms/sim/{seed}/load")
        self.network = Network(scenario, self._rng_net)
        self.obs = Observations()
        self._decoded: dict[bytes, tuple[Envelope, Message]] = {}
        self._encoded: dict[Message, bytes] = {}
        self._link_bytes: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._genesis_keys = {i: node_keys(i, seed) for i in range(1, scenario.n + 1)}
        self.peer_ids = {
            i: peer_id_from_ed25519(k.participant.identity) for i, k in self._genesis_keys.items()
        }
        """Each node's peer id, as its transport would authenticate it."""
        self.genesis = tuple(self._genesis_keys[i].participant for i in range(1, scenario.n + 1))
        self.nodes: dict[int, SimNode] = {}
        for i in range(1, scenario.n + 1):
            self._create_node(i)
        self.pinned_mpk: G2 | None = None
        """The master public key CVMs pin: the genesis key, once certified."""
        self.load = KeyRequestLoad(self)

    # --- construction --------------------------------------------------------------

    def _create_node(self, index: int) -> SimNode:
        sc = self.scenario
        keys = self._genesis_keys.get(index) or node_keys(index, self.seed)
        self.peer_ids[index] = peer_id_from_ed25519(keys.participant.identity)
        cfg = NodeConfig(
            ParticipantIndex(index),
            self.genesis,
            sc.threshold,
            genesis_start=sc.genesis_start,
            delta=sc.delta,
            window_period=sc.window_period,
            window_length=sc.window_length,
            refresh_interval=sc.refresh_interval,
        )
        specs = [(a.behaviour, a.params) for a in sc.adversaries if index in a.nodes]
        epochs = [a.epochs for a in sc.adversaries if index in a.nodes]
        node = SimNode(
            index,
            keys,
            cfg,
            random.Random(f"quorum-kms/sim/{self.seed}/node/{index}"),
            behaviours=adversary.build(specs, index),
            corrupt_epochs=epochs[0] if epochs else None,
            skew=sc.skew.get(index, 0.0),
        )
        self.nodes[index] = node
        self._boot(node)
        return node

    def _boot(self, node: SimNode) -> None:
        """Start (or restart, from what its store kept) the node's core and driver."""
        core = NodeCore(
            node.config,
            node.keys.identity,
            node.keys.dkg_key,
            rng=node.rng.randbytes,
            restored=node.restored(),
            session_factory=session_factory(node.sessions, node.behaviours, node.corrupt_in),
        )
        node.driver = NodeDriver(core, opener=self._open, encoder=self._encode)

    # --- the event queue -------------------------------------------------------------

    def at(self, time: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, action))

    def run(self) -> Observations:
        sc = self.scenario
        self._schedule_faults()
        self._schedule_membership()
        k = 0
        while k * sc.tick <= sc.duration:
            self.at(k * sc.tick, self._tick)
            k += 1
        previous = set_decode_cache({})
        previous_shares = set_public_share_cache({})
        previous_keys = set_key_cache({})
        # A run keeps a large, growing heap alive (nodes, their stores, decoded messages), and
        # the cyclic collector's passes over it cost about a tenth of an n = 64 run at the
        # default thresholds; fewer passes for the run's duration.
        thresholds = gc.get_threshold()
        gc.set_threshold(max(thresholds[0], GC_THRESHOLD), *thresholds[1:])
        try:
            while self._queue:
                time, _, action = heapq.heappop(self._queue)
                if time > sc.duration:
                    break
                self.now = time
                action()
        finally:
            gc.set_threshold(*thresholds)
            set_decode_cache(previous)
            set_public_share_cache(previous_shares)
            set_key_cache(previous_keys)
        self.now = sc.duration
        return self.obs

    def local_time(self, node: SimNode) -> float:
        return self.now + node.skew

    # --- ticks and message flow ---------------------------------------------------------

    def _tick(self) -> None:
        if self._progress is not None:
            self._progress(self.now, self.scenario.duration)
        for i in sorted(self.nodes):
            node = self.nodes[i]
            if node.core is None:
                continue
            if node.behaviours and node.corrupt_in(node.epoch() or 0):
                for b in node.behaviours:
                    b.on_tick(self, self.now)
            if node.driver is not None:
                node.driver.advance_time(self.local_time(node))
                self._flush(node)

    def _flush(self, node: SimNode) -> None:
        """One driver step: store the records, observe them, send, then count the rest."""
        driver = node.driver
        if driver is None:
            return
        step = driver.step()
        apply_events(node.store, step.records)
        for mpk in self.obs.record(node, step, self.now):
            if self.pinned_mpk is None:
                self.pinned_mpk = G2.from_bytes(mpk)
        self.obs.unencodable += len(step.unencodable)
        frames = step.messages
        if node.behaviours and node.corrupt_in(node.epoch() or 0):
            out = [Outbound(f.to, f.message) for f in frames]
            for b in node.behaviours:
                out = b.outbound(self.now, out)
            made = {id(f.message): f for f in frames}
            frames = []
            for ob in out:
                f = made.get(id(ob.message))
                if f is not None and f.to != ob.to:
                    f = OutboundFrame(ob.to, f.message, f.frame, f.size)
                frames.extend([f] if f is not None else driver.frames([ob]))
        for f in frames:
            self._send_frame(node.index, int(f.to), f.frame, f.size)

    def _open(self, frame: bytes) -> tuple[Envelope, Message]:
        """``open_envelope``, once per distinct frame: a broadcast fans one frame out."""
        got = self._decoded.get(frame)
        if got is None:
            got = open_envelope(frame)  # every message goes through the wire codec
            if len(self._decoded) >= DECODE_CACHE_LIMIT:
                self._decoded.clear()
            self._decoded[frame] = got
        return got

    def _encode(self, message: Message) -> bytes:
        """Encode once per distinct message value: a broadcast fans one message out to
        every member, and pull answers and chain updates repeat the same content."""
        try:
            data = self._encoded.get(message)
        except TypeError:  # a message with an unhashable field
            return message.encode()
        if data is None:
            data = message.encode()
            if len(self._encoded) >= DECODE_CACHE_LIMIT:
                self._encoded.clear()
            self._encoded[message] = data
        return data

    def _send_frame(self, sender: int, to: int, frame: bytes, size: int) -> None:
        """Put one envelope on the wire. Sizes (counters, link models) are the message's
        encoded size, as before envelopes were simulated; ``ENVELOPE_OVERHEAD`` stands for
        the envelope in the link burst."""
        node = self.nodes[sender]
        node.sent_messages += 1
        node.sent_bytes += size
        self.obs.messages += 1
        self.obs.total_bytes += size
        if not node.behaviours:
            self._count_link_burst(sender, to, size + ENVELOPE_OVERHEAD)
        for arrival in self.network.route(sender, to, size, self.now):
            self.at(arrival, functools.partial(self._deliver, sender, to, frame, size))

    def _count_link_burst(self, sender: int, to: int, size: int) -> None:
        bucket = int(self.now // self.scenario.delta)
        start, current, previous = self._link_bytes.get((sender, to), (bucket, 0, 0))
        if bucket != start:
            previous = current if bucket == start + 1 else 0
            start, current = bucket, 0
        current += size
        self._link_bytes[(sender, to)] = (start, current, previous)
        if current + previous > self.obs.link_burst:
            self.obs.link_burst = current + previous
            self.obs.link_burst_at = (self.now, sender, to)

    def send(self, sender: int, to: int, message: Message) -> None:
        """``AdversaryContext``: put a message on the wire from a corrupt node (in the
        envelope its driver makes; nothing is sent while it is down)."""
        driver = self.nodes[sender].driver
        if driver is None:
            return
        for f in driver.frames([Outbound(ParticipantIndex(to), message)]):
            self._send_frame(sender, to, f.frame, f.size)

    def _deliver(self, sender: int, to: int, frame: bytes, size: int) -> None:
        """A frame arrives: it goes through the node's driver as on a real node."""
        node = self.nodes.get(to)
        if node is None or node.driver is None:
            self.obs.dropped_down += 1
            return
        if not self.network.connected(sender, to):
            self.network.stats.partitioned += 1  # in flight when the partition opened
            return
        got = node.driver.receive_frame(self.peer_ids[sender], frame, self.local_time(node))
        if isinstance(got, FrameRejected) and got.reason.startswith(("envelope:", "malformed")):
            self.obs.undecodable += 1
            return
        node.received_messages += 1
        node.received_bytes += size
        if isinstance(got, FrameRejected):
            self.obs.count_rejected(node, sender)
            return
        self._flush(node)

    # --- faults ------------------------------------------------------------------------------

    def _schedule_faults(self) -> None:
        sc = self.scenario
        for p in sc.partitions:
            self.at(p.at, functools.partial(self.network.open_partition, p))
            if p.heal is not None:
                self.at(p.heal, functools.partial(self.network.heal_partition, p))
            self.obs.faults.append(("partition", p.at, p.heal, _groups(p)))
        for c in sc.crashes:
            self.at(c.at, functools.partial(self.crash, c.node))
            if c.recover is not None:
                self.at(c.recover, functools.partial(self.recover, c.node))
            self.obs.faults.append(("crash", c.at, c.recover, f"node {c.node}"))
        rc = sc.random_crashes
        if rc is not None:
            stop = rc.stop if rc.stop is not None else sc.duration
            nodes = list(rc.nodes) or list(range(1, sc.n + 1))
            k = 0
            while rc.start + k * rc.period < stop:
                start = rc.start + k * rc.period
                down = [i for i in nodes if self._rng_faults.random() < rc.probability]
                self.at(start, functools.partial(self._set_down, nodes, down))
                for i in down:
                    self.obs.faults.append(("crash", start, start + rc.period, f"node {i}"))
                k += 1
            self.at(stop, functools.partial(self._set_down, nodes, []))
        for index, skew in sorted(sc.skew.items()):
            self.obs.faults.append(("skew", 0.0, None, f"node {index}: {skew:+g} s"))
        load = sc.load
        if load.rate > 0:
            self._schedule_load()

    def _set_down(self, nodes: list[int], down: list[int]) -> None:
        for i in sorted(nodes):
            if i in down:
                self.crash(i)
            else:
                self.recover(i)

    def crash(self, index: int) -> None:
        node = self.nodes.get(index)
        if node is None or node.driver is None:
            return
        node.driver = None
        node.crashes += 1

    def recover(self, index: int) -> None:
        node = self.nodes.get(index)
        if node is None or node.driver is not None:
            return
        self._boot(node)
        if node.driver is not None:
            node.driver.advance_time(self.local_time(node))
            self._flush(node)

    # --- membership ----------------------------------------------------------------------------

    def _schedule_membership(self) -> None:
        for m in self.scenario.membership:
            self.at(m.at, functools.partial(self._membership, m))

    def members(self) -> list[int]:
        """``AdversaryContext``: the committee as the most advanced up node sees it."""
        best: ChainState | None = None
        for i in sorted(self.nodes):
            core = self.nodes[i].core
            st = core.state if core is not None else None
            if st is not None and (best is None or st.epoch > best.epoch):
                best = st
        return [int(x) for x in best.committee.indices] if best is not None else []

    def epoch_of(self, node: int) -> int | None:
        return self.nodes[node].epoch()

    def chain_update_of(self, node: int) -> Message | None:
        """``AdversaryContext``: ``node``'s whole chain as a ``chain/update`` (None if down)."""
        core = self.nodes[node].core
        return core.chain_update(0) if core is not None and core.chain else None

    def propose(self, node: int, change: Change) -> bool:
        """``AdversaryContext`` and membership events: propose through ``node``'s core."""
        core = self.nodes[node].core
        if core is None:
            return False
        try:
            core.propose(change)
        except LocalProtocolError:
            self.obs.proposals_refused += 1
            return False
        return True

    def _membership(self, m: MembershipEvent) -> None:
        members = self.members()
        up = [i for i in members if self.nodes[i].core is not None]
        if not up:
            self.obs.proposals_refused += 1
            return
        change: Change
        if m.action == "add":
            newcomer = self.nodes.get(m.node) or self._create_node(m.node)
            change = AddMember(newcomer.keys.participant, b"simulated-attestation")
        elif m.action == "remove":
            change = RemoveMember(m.node)
        elif m.action == "threshold":
            change = ChangeThreshold(m.threshold)
        else:
            change = Refresh()
        proposer = m.proposer if m.proposer in up else up[0]
        core = self.nodes[proposer].core
        if core is None:
            return
        try:
            pid = core.propose(change)
        except LocalProtocolError:
            self.obs.proposals_refused += 1
            return
        for i in up:
            other = self.nodes[i].core
            if i != proposer and other is not None:
                other.approve(pid)
        self.obs.faults.append(("membership", m.at, None, f"{m.action} {m.node or ''}".strip()))

    # --- key requests from simulated CVMs ----------------------------------------------------------

    def _schedule_load(self) -> None:
        load = self.scenario.load
        start = load.start if load.start is not None else self._genesis_end()
        t = start
        while t <= self.scenario.duration:
            self.at(t, self._key_request)
            if load.arrivals == "poisson":
                t += self.rng_load.expovariate(load.rate)
            else:
                t += 1.0 / load.rate

    def _genesis_end(self) -> float:
        return self.nodes[1].config.genesis_schedule(0).end

    def _key_request(self) -> None:
        self.obs.requests.append(self.load.request())

    # --- results for the report ----------------------------------------------------------------

    def honest_nodes(self) -> list[SimNode]:
        return [self.nodes[i] for i in sorted(self.nodes) if not self.nodes[i].corrupt]

    def disqualified(self) -> list[dict[str, Any]]:
        """Dealers excluded by honest members, one entry per (epoch, attempt, dealer)."""
        return disqualified_from([node.sessions for node in self.honest_nodes()])


def _groups(p: Partition) -> str:
    return " | ".join(",".join(str(i) for i in g) for g in p.groups)


def run_world(
    scenario: Scenario, seed: int, progress: Callable[[float, float], None] | None = None
) -> World:
    world = World(scenario, seed, progress=progress)
    world.run()
    return world


__all__ = ["World", "run_world"]
