"""``DelayedTransport``: a test-only wrapper that holds each received frame for a fixed delay.

The fault lab's benchmarks use it to give every link a one-way latency without a link
proxy (one userspace proxy carrying every TCP link of a 64-node committee would itself
need most of a CPU) and without ``netem`` (not every kernel has it). It is enabled only by
the lab's node program (``[testing] delay_ms``); a production node never wraps its
transport.

Each frame that the inner transport delivers is held until ``delay`` (seconds, trio's
clock) after ``receive()`` took it from the inner transport, then returned. The delay is the
same for every peer, so frames stay in the order they arrived (per link and overall),
and frames that arrive while others are held are taken from the inner transport at once:
the delay adds latency, never serialises a link. Everything else (``send``, peers,
statistics, the lifecycle) is the inner transport's. A round trip between two wrapped
nodes thus costs ``2·delay`` on top of the network's own.

What is held is bounded: at most ``max_held`` frames; while that many are held, no more
are taken from the inner transport (its own per-peer queue caps then apply).

``receive()`` is cancel-safe: a frame taken from the inner transport is held before the
next checkpoint, and a held frame is handed out without one.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection, Sequence
from types import TracebackType
from typing import Self

import trio

from mpc.ids import PeerId
from net.transport import Transport, TransportStatistics

__all__ = ["DEFAULT_MAX_HELD", "DelayedTransport"]

DEFAULT_MAX_HELD = 65536
"""Frames held at most (about a second of a 64-node DKG's busiest traffic at one node)."""


class DelayedTransport:
    """A :class:`~net.transport.Transport` whose ``receive()`` returns each frame ``delay``
    seconds after it arrived (see the module doc)."""

    def __init__(self, inner: Transport, delay: float, *, max_held: int = DEFAULT_MAX_HELD) -> None:
        if not math.isfinite(delay) or delay < 0:
            raise ValueError("delay must be a finite number of seconds ≥ 0")
        if max_held < 1:
            raise ValueError("max_held must be ≥ 1")
        self.inner = inner
        self.delay = float(delay)
        self.max_held = max_held
        self._held: deque[tuple[float, PeerId, bytes]] = deque()
        self.held_max = 0
        """The most frames held at once so far."""

    # --- the delayed part --------------------------------------------------------------

    async def receive(self) -> tuple[PeerId, bytes]:
        while True:
            now = trio.current_time()
            if self._held and self._held[0][0] <= now:
                _, peer, frame = self._held.popleft()
                return peer, frame
            if len(self._held) >= self.max_held:
                await trio.sleep_until(self._held[0][0])
                continue
            wake = self._held[0][0] if self._held else math.inf
            with trio.move_on_at(wake):
                peer, frame = await self.inner.receive()
                self._held.append((trio.current_time() + self.delay, peer, frame))
                self.held_max = max(self.held_max, len(self._held))

    def held(self) -> int:
        """Frames received and not yet handed out."""
        return len(self._held)

    # --- the rest is the inner transport's ---------------------------------------------

    @property
    def local_peer(self) -> PeerId:
        return self.inner.local_peer

    @property
    def max_frame_size(self) -> int:
        return self.inner.max_frame_size

    async def send(self, peer: PeerId, frame: bytes) -> None:
        await self.inner.send(peer, frame)

    async def send_many(self, peer: PeerId, frames: Sequence[bytes]) -> None:
        await self.inner.send_many(peer, frames)

    def add_peer(self, peer: PeerId, addrs: Sequence[str]) -> None:
        self.inner.add_peer(peer, addrs)

    def connected_peers(self) -> list[PeerId]:
        return self.inner.connected_peers()

    def set_allowed_peers(
        self, peers: Collection[PeerId] | None, *, queue_bytes: int | None = None
    ) -> None:
        self.inner.set_allowed_peers(peers, queue_bytes=queue_bytes)
        if peers is not None:
            allowed = set(peers) | {self.inner.local_peer}
            self._held = deque(item for item in self._held if item[1] in allowed)

    def statistics(self) -> TransportStatistics:
        return self.inner.statistics()

    async def aclose(self) -> None:
        self._held.clear()
        await self.inner.aclose()

    async def __aenter__(self) -> Self:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._held.clear()
        await self.inner.__aexit__(exc_type, exc, tb)
