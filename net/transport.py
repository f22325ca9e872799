"""The ``Transport`` protocol: authenticated, ordered, best-effort frames between peers.

A transport moves opaque *frames* (``bytes``; in practice encoded
:class:`net.codec.Envelope` s) between peers named by :data:`PeerId`. It does
not look inside them. Two implementations share this shape:
:class:`net.memory.MemoryTransport` (in-process, with fault injection, runs
under ``trio.testing.MockClock``) and ``net.libp2p.Libp2pTransport`` (Noise +
Yamux over TCP). ``net.testing.check_transport`` holds both to this contract.

Guarantees:

* **Authenticated sender.** ``receive()`` returns the peer id the transport
  itself authenticated (for libp2p, the key the Noise handshake proved), never
  anything the frame claims. Upper layers must still check that this peer id
  belongs to the participant index named inside the envelope.
* **Per-link order.** Frames from one sender to one receiver arrive in the
  order they were sent, without duplicates; frames may be lost (a connection
  that breaks after ``send()`` returned, a partition, a stream the sender gave
  up on while the receiver still held some of its frames), so delivery is best
  effort and protocols above must tolerate loss (the broadcast layer pulls
  missing payloads).
* **Bounded frames.** ``send()`` refuses frames over ``max_frame_size`` with
  ``FrameTooLarge``; an incoming oversize frame is dropped and counted in
  ``statistics().dropped_oversize``, never delivered.
* **Loopback.** A frame sent to ``local_peer`` is delivered to this
  transport's own ``receive()``.
* **Allowed peers.** After ``set_allowed_peers(peers)``, frames from any other
  peer are never delivered (counted in ``statistics().refused_peers``); libp2p
  closes such a peer's connection right after the Noise handshake, before
  any stream is read. ``None`` (the default) allows everyone.

Lifecycle (one shape for every implementation): a transport is an async
context manager. Entering it starts it (listening, registering on the memory
network); leaving it, or calling ``aclose()`` earlier, closes it. Using one
that is not open raises :class:`~net.errors.TransportClosed`::

    async with Libp2pTransport(seed, "/ip4/0.0.0.0/tcp/4001") as transport:
        transport.add_peer(peer, ["/ip4/10.0.0.2/tcp/4001"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_loop, transport)   # await transport.receive()
            ...                                           # await transport.send(peer, frame)

``send()`` blocks while the frame is written (and, for libp2p, while it dials
or backs off, bounded); a service that talks to many peers should send to each
peer from its own task so that one slow or dead peer delays no other.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from mpc.ids import PeerId

__all__ = ["PeerId", "Transport", "TransportCounters", "TransportStatistics"]


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """Counters since the transport was created (``statistics()`` in trio's sense)."""

    frames_sent: int = 0
    """Frames handed to the network (loopback frames included)."""
    bytes_sent: int = 0
    """Sum of the lengths of the frames sent (framing overhead excluded)."""
    frames_received: int = 0
    """Frames delivered to ``receive()``'s queue."""
    bytes_received: int = 0
    send_failures: int = 0
    """``send()`` and ``send_many()`` calls that raised ``PeerUnreachable``."""
    reconnects: int = 0
    """Links re-established to a peer after a failure or a broken connection."""
    dropped_oversize: int = 0
    """Incoming frames over ``max_frame_size``, dropped without delivery."""
    refused_peers: int = 0
    """Connections (libp2p) or frames (memory) refused because their peer is not allowed."""
    superseded_streams: int = 0
    """libp2p: inbound streams ended because their peer opened a newer one (the frames
    they still held are dropped, never delivered after the newer stream's)."""
    writes: int = 0
    """Writes that carried the frames sent to other peers (libp2p: stream writes, several
    frames each under ``send_many``; memory: one per frame)."""


class TransportCounters:
    """The mutable counters behind ``statistics()``, for transport implementations."""

    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "dropped_oversize",
        "frames_received",
        "frames_sent",
        "reconnects",
        "refused_peers",
        "send_failures",
        "superseded_streams",
        "writes",
    )

    def __init__(self) -> None:
        self.frames_sent = 0
        self.bytes_sent = 0
        self.frames_received = 0
        self.bytes_received = 0
        self.send_failures = 0
        self.reconnects = 0
        self.dropped_oversize = 0
        self.refused_peers = 0
        self.superseded_streams = 0
        self.writes = 0

    def sent(self, frame: bytes) -> None:
        self.frames_sent += 1
        self.bytes_sent += len(frame)

    def received(self, frame: bytes) -> None:
        self.frames_received += 1
        self.bytes_received += len(frame)

    def snapshot(self) -> TransportStatistics:
        return TransportStatistics(
            frames_sent=self.frames_sent,
            bytes_sent=self.bytes_sent,
            frames_received=self.frames_received,
            bytes_received=self.bytes_received,
            send_failures=self.send_failures,
            reconnects=self.reconnects,
            dropped_oversize=self.dropped_oversize,
            refused_peers=self.refused_peers,
            superseded_streams=self.superseded_streams,
            writes=self.writes,
        )


@runtime_checkable
class Transport(Protocol):
    """Authenticated, per-link ordered, best-effort frames between peers (see module doc)."""

    @property
    def local_peer(self) -> PeerId:
        """This transport's own (authenticated) peer id."""
        ...

    @property
    def max_frame_size(self) -> int:
        """The largest frame ``send()`` accepts and ``receive()`` delivers."""
        ...

    async def send(self, peer: PeerId, frame: bytes) -> None:
        """Send ``frame`` to ``peer``.

        Raises ``FrameTooLarge`` if ``len(frame) > max_frame_size`` (nothing sent),
        ``PeerUnreachable`` once the transport's own reconnect attempts for this
        call have failed, ``TransportClosed`` if this transport is not open.
        """
        ...

    async def send_many(self, peer: PeerId, frames: Sequence[bytes]) -> None:
        """Send ``frames`` to ``peer`` in order, as one ``send()`` of each would.

        The libp2p transport writes them together (one stream write: one muxer frame,
        one encryption and one socket write for many small frames; the receiver reads
        the same length-prefixed frames). Raises ``FrameTooLarge`` if any frame is over
        ``max_frame_size`` (nothing sent); otherwise as ``send()``, for all of them.
        """
        ...

    async def receive(self) -> tuple[PeerId, bytes]:
        """The next ``(authenticated sender, frame)``; raises ``TransportClosed`` once closed."""
        ...

    def add_peer(self, peer: PeerId, addrs: Sequence[str]) -> None:
        """Remember where ``peer`` listens (multiaddrs; ignored by the memory transport).

        New addresses replace the old ones and end any reconnect back-off for ``peer``.
        """
        ...

    def connected_peers(self) -> list[PeerId]:
        """Peers with a live link right now, sorted."""
        ...

    def set_allowed_peers(
        self, peers: Collection[PeerId] | None, *, queue_bytes: int | None = None
    ) -> None:
        """Take frames only from ``peers`` (``None``: from anyone); may be called any time.

        ``queue_bytes`` caps the received frames buffered per peer (libp2p: a peer
        whose queue is full is not read until ``receive()`` drains it; one frame is
        always taken into an empty queue). ``None`` keeps the current cap.
        """
        ...

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters."""
        ...

    async def aclose(self) -> None:
        """Close the transport; idempotent. Pending and later calls raise ``TransportClosed``."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
