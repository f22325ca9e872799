"""An in-process network of transports, with faults, for tests and the node-mode simulator.

:class:`MemoryNetwork` is the hub (drand's ``messageBus`` with ``Break()`` /
``Fix()``); :class:`MemoryTransport` is one peer's :class:`~net.transport.Transport`
on it. Time is trio's, so per-link delays run under
``trio.testing.MockClock`` and no task is ever spawned: a frame waits in the
receiver's queue until its delivery time.

Faults:

* ``partition(groups)`` cuts every link between different groups: ``send()``
  across the cut raises ``PeerUnreachable`` (as a TCP dial would fail), and
  frames already in flight across it are lost. ``heal()`` restores them.
* ``set_drop(a, b, True)`` makes a link silently lossy: ``send()`` succeeds,
  the frame never arrives (counted in ``statistics().dropped``).
* ``set_delay(a, b, seconds)`` delays delivery on a link. Frames on one link
  stay in order even when its delay shrinks.
* ``inject(sender, receiver, frame)`` delivers raw bytes with no size check,
  to test how a receiver handles frames a correct sender would never send.

A receiver's ``set_allowed_peers`` drops frames from other senders, at
delivery and again when they are taken, counted in ``refused_peers``.

A sender is identified by the peer id it registered under, which plays the
part of the authenticated identity.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import trio

from mpc.ids import PeerId
from net.codec import MAX_FRAME_SIZE
from net.errors import FrameTooLarge, PeerUnreachable, TransportClosed
from net.transport import TransportCounters, TransportStatistics

__all__ = ["MemoryNetwork", "MemoryTransport", "NetworkStatistics"]


@dataclass(frozen=True, slots=True)
class NetworkStatistics:
    """Counters of the whole memory network."""

    frames_in_flight: int = 0
    frames_delivered: int = 0
    dropped: int = 0
    """Frames lost to ``set_drop`` links or to a partition while in flight."""
    refused: int = 0
    """``send()`` calls refused: unknown or closed receiver, or a partition."""


@dataclass(order=True, slots=True)
class _Pending:
    due: float
    seq: int
    sender: PeerId = field(compare=False)
    frame: bytes = field(compare=False)


class MemoryNetwork:
    """The hub that :class:`MemoryTransport` s register on (see the module doc)."""

    def __init__(self, *, default_delay: float = 0.0) -> None:
        if default_delay < 0:
            raise ValueError("delay must be ≥ 0")
        self._default_delay = default_delay
        self._transports: dict[PeerId, MemoryTransport] = {}
        self._group: dict[PeerId, int] | None = None
        self._dropped_links: set[tuple[PeerId, PeerId]] = set()
        self._delays: dict[tuple[PeerId, PeerId], float] = {}
        self._last_due: dict[tuple[PeerId, PeerId], float] = {}
        self._seq = itertools.count()
        self._delivered = 0
        self._dropped = 0
        self._refused = 0

    # --- faults -----------------------------------------------------------------

    def partition(self, groups: Iterable[Collection[PeerId]]) -> None:
        """Cut every link between peers of different groups.

        Peers named in no group form one more group together. A peer named in
        two groups is an error (``ValueError``). Replaces any earlier partition.
        """
        group: dict[PeerId, int] = {}
        for number, members in enumerate(groups, start=1):
            for peer in members:
                if peer in group:
                    raise ValueError(f"peer {peer} is in two groups")
                group[peer] = number
        self._group = group
        # Frames in flight across the new cut are lost, as on a real network.
        for transport in self._transports.values():
            transport._discard_unreachable()

    def heal(self) -> None:
        """End the partition (drop rules and delays stay)."""
        self._group = None

    def set_drop(
        self, peer_a: PeerId, peer_b: PeerId, drop: bool, *, directed: bool = False
    ) -> None:
        """Silently lose every frame between ``peer_a`` and ``peer_b`` (from a to b if ``directed``)."""
        for link in self._links(peer_a, peer_b, directed):
            if drop:
                self._dropped_links.add(link)
            else:
                self._dropped_links.discard(link)

    def set_delay(
        self, peer_a: PeerId, peer_b: PeerId, seconds: float, *, directed: bool = False
    ) -> None:
        """Deliver frames between ``peer_a`` and ``peer_b`` after ``seconds`` (trio time)."""
        if seconds < 0:
            raise ValueError("delay must be ≥ 0")
        for link in self._links(peer_a, peer_b, directed):
            self._delays[link] = seconds

    def reachable(self, sender: PeerId, receiver: PeerId) -> bool:
        """False iff a partition separates the two peers."""
        if self._group is None or sender == receiver:
            return True
        return self._group.get(sender, 0) == self._group.get(receiver, 0)

    def is_open(self, peer: PeerId) -> bool:
        """Whether an open transport is registered as ``peer``."""
        return peer in self._transports

    def peers(self) -> list[PeerId]:
        """The peers with an open transport, sorted."""
        return sorted(self._transports)

    def inject(self, sender: PeerId, receiver: PeerId, frame: bytes) -> None:
        """Queue raw ``frame`` for ``receiver`` as if ``sender`` sent it, bypassing every check."""
        target = self._transports.get(receiver)
        if target is None:
            raise PeerUnreachable(receiver, "not on the network")
        self._enqueue(sender, target, bytes(frame))

    def statistics(self) -> NetworkStatistics:
        return NetworkStatistics(
            frames_in_flight=sum(len(t._queue) for t in self._transports.values()),
            frames_delivered=self._delivered,
            dropped=self._dropped,
            refused=self._refused,
        )

    # --- used by MemoryTransport ---------------------------------------------------

    @staticmethod
    def _links(a: PeerId, b: PeerId, directed: bool) -> list[tuple[PeerId, PeerId]]:
        return [(a, b)] if directed else [(a, b), (b, a)]

    def _register(self, transport: MemoryTransport) -> None:
        peer = transport.local_peer
        if peer in self._transports:
            raise ValueError(f"peer {peer} already has an open transport on this network")
        self._transports[peer] = transport

    def _unregister(self, transport: MemoryTransport) -> None:
        if self._transports.get(transport.local_peer) is transport:
            del self._transports[transport.local_peer]

    def _route(self, sender: PeerId, receiver: PeerId, frame: bytes) -> None:
        """Called by ``send()``: raise ``PeerUnreachable`` or queue the frame (or lose it)."""
        target = self._transports.get(receiver)
        if target is None or not self.reachable(sender, receiver):
            self._refused += 1
            reason = "partitioned away" if target is not None else "not on the network"
            raise PeerUnreachable(receiver, reason)
        if (sender, receiver) in self._dropped_links:
            self._dropped += 1
            return
        self._enqueue(sender, target, frame)

    def _enqueue(self, sender: PeerId, target: MemoryTransport, frame: bytes) -> None:
        link = (sender, target.local_peer)
        delay = self._delays.get(link, self._default_delay)
        # Never earlier than the link's previous frame: per-link order survives a shorter delay.
        due = max(trio.current_time() + delay, self._last_due.get(link, float("-inf")))
        self._last_due[link] = due
        target._deliver(_Pending(due, next(self._seq), sender, frame))

    def _count_dropped(self, n: int) -> None:
        self._dropped += n

    def _arrived(self, sender: PeerId, receiver: PeerId) -> bool:
        """At delivery time: whether the frame survives (a partition may have cut it off)."""
        if self.reachable(sender, receiver):
            self._delivered += 1
            return True
        self._dropped += 1
        return False


class MemoryTransport:
    """One peer's :class:`~net.transport.Transport` on a :class:`MemoryNetwork`.

    ``async with MemoryTransport(network, peer_id) as transport:`` registers
    ``peer_id`` on the network until the block ends (or ``aclose()``); another
    transport may then register under the same id (a restarted node).
    Frames queue without bound: a memory network has no flow control.
    """

    def __init__(
        self, network: MemoryNetwork, peer_id: PeerId, *, max_frame_size: int = MAX_FRAME_SIZE
    ) -> None:
        self._network = network
        self._peer = peer_id
        self._max_frame_size = max_frame_size
        self._queue: list[_Pending] = []
        self._changed = trio.Event()
        self._state = "new"  # new → open → closed
        self._seen: set[PeerId] = set()
        self._failed: set[PeerId] = set()
        self._counters = TransportCounters()
        self._allowed: frozenset[PeerId] | None = None

    @property
    def network(self) -> MemoryNetwork:
        return self._network

    @property
    def local_peer(self) -> PeerId:
        return self._peer

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a transport can be opened only once")
        self._network._register(self)
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._state == "open":
            self._network._unregister(self)
        self._state = "closed"
        self._queue.clear()
        self._wake()
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransportClosed(f"memory transport {self._peer} is {self._state}")

    async def send(self, peer: PeerId, frame: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        if len(frame) > self._max_frame_size:
            raise FrameTooLarge(len(frame), self._max_frame_size)
        try:
            self._network._route(self._peer, peer, bytes(frame))
        except PeerUnreachable:
            self._failed.add(peer)
            self._counters.send_failures += 1
            raise
        if peer in self._failed:
            self._failed.discard(peer)
            self._counters.reconnects += 1
        self._seen.add(peer)
        self._counters.sent(frame)
        if peer != self._peer:
            self._counters.writes += 1

    async def send_many(self, peer: PeerId, frames: Sequence[bytes]) -> None:
        for frame in frames:
            if len(frame) > self._max_frame_size:
                raise FrameTooLarge(len(frame), self._max_frame_size)
        for done, frame in enumerate(frames):
            try:
                await self.send(peer, frame)
            except PeerUnreachable as exc:
                raise PeerUnreachable(peer, exc.reason, frames_sent=done) from None

    async def receive(self) -> tuple[PeerId, bytes]:
        # Cancellation-safe like trio's channels: a cancelled receive() takes no frame.
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_open()
            now = trio.current_time()
            if self._queue and self._queue[0].due <= now:
                item = heapq.heappop(self._queue)
                if not self._network._arrived(item.sender, self._peer):
                    continue
                if not self._allows(item.sender):
                    self._counters.refused_peers += 1
                    continue
                self._seen.add(item.sender)
                self._counters.received(item.frame)
                await trio.lowlevel.cancel_shielded_checkpoint()
                return item.sender, item.frame
            wait = self._queue[0].due - now if self._queue else float("inf")
            with trio.move_on_after(wait):
                await self._changed.wait()

    def add_peer(self, peer: PeerId, addrs: Sequence[str]) -> None:
        """Nothing to do: peers are found by id on the network."""

    def set_allowed_peers(
        self, peers: Collection[PeerId] | None, *, queue_bytes: int | None = None
    ) -> None:
        """Deliver frames only from ``peers`` (and loopback); ``queue_bytes`` is ignored:
        the memory network has no flow control."""
        self._allowed = None if peers is None else frozenset(peers)

    def _allows(self, sender: PeerId) -> bool:
        return self._allowed is None or sender == self._peer or sender in self._allowed

    def connected_peers(self) -> list[PeerId]:
        """Open peers this transport exchanged frames with and that no partition cuts off."""
        return sorted(
            p
            for p in self._seen
            if p != self._peer
            and self._network.is_open(p)
            and self._network.reachable(self._peer, p)
        )

    def statistics(self) -> TransportStatistics:
        return self._counters.snapshot()

    # --- used by MemoryNetwork ---------------------------------------------------

    def _deliver(self, item: _Pending) -> None:
        if len(item.frame) > self._max_frame_size:  # only ``inject`` can get here
            self._counters.dropped_oversize += 1
            return
        if not self._allows(item.sender):
            self._counters.refused_peers += 1
            return
        heapq.heappush(self._queue, item)
        self._wake()

    def _discard_unreachable(self) -> None:
        kept = [i for i in self._queue if self._network.reachable(i.sender, self._peer)]
        self._network._count_dropped(len(self._queue) - len(kept))
        heapq.heapify(kept)
        self._queue = kept

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
