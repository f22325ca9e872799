"""``Libp2pTransport``: the :class:`~net.transport.Transport` over py-libp2p (Noise, Yamux, TCP).

Wire format: for every ordered pair of peers one long-lived outbound stream
speaks ``protocol`` (``/quorum-kms/1.0.0``); each frame on it is an unsigned
varint (LEB128, as multiformats' ``unsigned-varint``) of the frame's length,
followed by the frame. The sender reported by ``receive()`` is the peer id
the Noise handshake proved (``muxed_conn.peer_id``), never anything read from
the stream. ``send_many`` writes several frames' bytes in one stream write (see
``MAX_WRITE``); the bytes on the stream are the same as from one ``send`` each.

Security: the host offers Noise only. py-libp2p's default host also accepts
``/plaintext/2.0.0``, ``/secio/1.0.0`` and TLS from any peer; a plaintext
dialer would then be "authenticated" by a key it merely claims. The explicit
``sec_opt`` here leaves such a dialer no protocol to negotiate.

Allowed peers: after ``set_allowed_peers(peers)``, an inbound connection
from any other peer is closed right after the Noise handshake, the first
moment its peer id is known (the upgrader's ``upgrade_security`` is wrapped;
the swarm then never negotiates Yamux, so the peer cannot open a stream and
nothing it sends is read). A stream from a peer that is no longer allowed
(the set shrank while a connection was up) is reset at its next frame, which
is dropped undelivered; the connection itself stays up. Refusals are counted in
``statistics().refused_peers``.

Receive queues: one per peer, each capped at ``queue_bytes`` (set with the
allowed peers; ``DEFAULT_QUEUE_BYTES`` before): a peer whose queue is full is
not read until ``receive()``, which takes the peers' frames in turn, drains
it; one frame is always taken into an empty queue. A slow or flooding peer
thus holds up only its own frames. py-libp2p's Yamux does not enforce its
receive window (it logs and buffers), so an *allowed* peer that ignores flow
control can still grow its stream's buffer in the muxer: the cap bounds this
transport's queues, not libp2p's.

Reconnects: a ``send()`` makes at most ``dial_attempts`` (3) attempts to
(re)open the stream, ``RETRY_DELAY`` apart and doubling (50 ms, 100 ms),
going round the peer's addresses; a dial that times out (``dial_timeout``)
ends that send's attempts. A write that fails (the peer restarted, or reset
the stream) uses up an attempt and the next one opens a new stream, so a
frame is never half-written into a stream that carries on. If every attempt
fails, the peer is *backing off*: sends fail at once with ``PeerUnreachable``
until ``BACKOFF_INITIAL`` · 2^(k-1) after the k-th consecutive failed send
(50 ms doubling, capped at ``BACKOFF_MAX`` = 5 s). ``add_peer`` and a
successful send end the back-off. A peer that refuses connections thus costs
a send about 150 ms; a silent one ``dial_timeout``.

py-libp2p quirks handled here (measured on 0.8.1):

* ``read(n)`` returns whatever has arrived, up to ``n`` bytes, and raises
  ``StreamEOF`` at the end (never returns ``b""``).
* ``host.connect`` stores the addresses with a 120 s TTL that covers *all* of
  a peer's addresses; afterwards the peerstore forgets them. Addresses are
  re-added with TTL 0 (permanent) before every dial instead.
* ``PeerData.add_addrs`` appends, and a dial tries only the first address
  of each transport class (TCP, QUIC, …): a peer that moved to a new port
  would be dialed at its old one forever. The peerstore is given exactly one
  address before each dial; successive attempts go round the known ones.
* A failed dial puts the peer in a 60 s negative cache (wall clock) that
  makes every later dial fail at once; it is cleared before each dial, since
  the back-off here decides when to dial again.
* The swarm retries a dial 3 times itself (0.1 s, 0.2 s, 0.4 s apart); that
  is turned off so that the back-off is this module's alone.
* The swarm's auto-connector dials every peer in the peerstore whenever the
  host has fewer than ``min_connections`` (50) connections, on its own
  schedule; it is stopped, so that only ``send()`` dials.
* The TCP listener sets ``SO_REUSEPORT``: a second node on a port already
  in use starts silently and shares the port. The port is probed with a
  plain bind first. A listen address no transport handles is skipped with a
  log line, leaving a host that listens nowhere: that is an error here.
* An exception escaping a stream handler runs into libp2p's connection
  nursery: the handler catches everything.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections import deque
from collections.abc import Callable, Collection, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Self

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.exceptions import SecurityUpgradeFailure

from mpc.errors import InvalidEncoding
from mpc.ids import PeerId
from mpc.sig import SigningKey
from net.codec import MAX_FRAME_SIZE
from net.errors import FrameTooLarge, PeerUnreachable, TransportClosed, TransportError
from net.peerid import peer_id_from_ed25519
from net.transport import TransportCounters, TransportStatistics

__all__ = [
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "DEFAULT_PROTOCOL",
    "Libp2pTransport",
    "configure_logging",
    "encode_varint",
    "send_raw",
]

DEFAULT_PROTOCOL: Final = "/quorum-kms/1.0.0"
RETRY_DELAY: Final = 0.05
"""First pause between two attempts within one ``send()``; doubles."""
BACKOFF_INITIAL: Final = 0.05
BACKOFF_MAX: Final = 5.0
DEFAULT_QUEUE_BYTES: Final = 8 * 1024 * 1024
"""Bytes buffered per peer for ``receive()`` until ``set_allowed_peers`` names a cap."""
_MAX_VARINT_BYTES: Final = 10
_READ_CHUNK: Final = 1 << 20

logger = logging.getLogger(__name__)


class _DialFailureFilter(logging.Filter):
    """Drops libp2p's ERROR record for every refused TCP dial.

    A dial failure is routine when a peer is down; this transport reports it
    as ``PeerUnreachable`` and in ``send_failures``, so the record adds only noise.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to open TCP stream")


_DIAL_FAILURE_FILTER: Final = _DialFailureFilter()


def configure_logging(level: int = logging.WARNING) -> None:
    """Route py-libp2p's logs into the application's logging, at ``level`` and above.

    libp2p sets its ``libp2p`` logger to not propagate and attaches no handler,
    so its records bypass the service's logging (only Python's last-resort
    stderr handler prints them); some of its modules also set their own level
    (``libp2p.network.auto_connector`` logs at INFO). This sets the whole
    ``libp2p`` tree to ``level``, lets it propagate to the root logger, drops
    the per-dial failure record, and attaches no handler of its own.
    Idempotent; a ``LIBP2P_DEBUG`` set-up is left alone.
    """
    if os.environ.get("LIBP2P_DEBUG"):
        return
    root = logging.getLogger("libp2p")
    root.setLevel(level)
    root.propagate = True
    for name, child in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("libp2p.") and isinstance(child, logging.Logger):
            if child.level != logging.NOTSET and child.level < level:
                child.setLevel(logging.NOTSET)
    tcp = logging.getLogger("libp2p.transport.tcp.tcp")
    if _DIAL_FAILURE_FILTER not in tcp.filters:
        tcp.addFilter(_DIAL_FAILURE_FILTER)


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128, as multiformats' unsigned-varint."""
    if n < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Oversize(Exception):
    pass


class _DialTimedOut(PeerUnreachable):
    pass


MAX_WRITE = 65_000
"""Most bytes ``send_many`` writes at once (a larger frame is written alone): one Yamux DATA
frame (64 KiB less its 12-byte header) in one Noise message (65,519 bytes of plaintext)."""


def _send_window(stream: Any) -> int:
    """The Yamux send window of ``stream`` (py-libp2p 0.8.1:
    ``NetStream.muxed_stream.send_window``): a stream not opened yet will have a full one
    (256 KiB); if it cannot be read, 0 (frames are then written one by one)."""
    if stream is None:
        return MAX_WRITE
    window = getattr(getattr(stream, "muxed_stream", None), "send_window", None)
    return window if isinstance(window, int) else 0


class _FrameReader:
    """Reads length-prefixed frames from a stream whose ``read(n)`` returns what has arrived."""

    def __init__(self, stream: Any, max_frame_size: int) -> None:
        self._stream = stream
        self._max = max_frame_size
        self._buffer = bytearray()

    async def _fill(self, want: int) -> None:
        while len(self._buffer) < want:
            chunk = await self._stream.read(
                min(max(want - len(self._buffer), 1 << 16), _READ_CHUNK)
            )
            if not chunk:
                raise EOFError
            self._buffer += chunk

    async def read_frame(self) -> bytes:
        """The next frame; ``EOFError`` at the end, ``_Oversize`` for a frame over the limit."""
        length = 0
        for i in range(_MAX_VARINT_BYTES):
            await self._fill(i + 1)
            byte = self._buffer[i]
            length |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                del self._buffer[: i + 1]
                break
        else:
            raise _Oversize
        if length > self._max:
            raise _Oversize
        await self._fill(length)
        frame = bytes(self._buffer[:length])
        del self._buffer[:length]
        return frame


class _Inbox:
    """Received frames, one queue per peer capped in bytes; taken from the peers in turn."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._queues: dict[PeerId, deque[bytes]] = {}
        self._bytes: dict[PeerId, int] = {}
        self._ready: deque[PeerId] = deque()
        self._changed = trio.Event()
        self.closed = False

    def queued_bytes(self, peer: PeerId) -> int:
        return self._bytes.get(peer, 0)

    def wake(self) -> None:
        """Wake every ``put`` and ``get`` waiting, to look again."""
        self._changed.set()
        self._changed = trio.Event()

    def close(self) -> None:
        self.closed = True
        self._queues.clear()
        self._bytes.clear()
        self._ready.clear()
        self.wake()

    def drop(self, peer: PeerId) -> None:
        """Forget ``peer``'s queued frames (it is no longer allowed)."""
        self._queues.pop(peer, None)
        self._bytes.pop(peer, None)
        if peer in self._ready:
            self._ready.remove(peer)
        self.wake()

    async def put(
        self, peer: PeerId, frame: bytes, current: Callable[[], bool] | None = None
    ) -> bool:
        """Queue ``frame``; wait while ``peer``'s queue is non-empty and would exceed the cap.

        ``current`` says whether the frame's stream is still the peer's newest; once it is
        not, the frame is not queued and ``False`` is returned (see ``_handle_stream``)."""
        while True:
            if self.closed:
                raise trio.ClosedResourceError
            if current is not None and not current():
                return False
            used = self._bytes.get(peer, 0)
            if used == 0 or used + len(frame) <= self.cap:
                break
            await self._changed.wait()
        queue = self._queues.setdefault(peer, deque())
        if not queue:
            self._ready.append(peer)
        queue.append(frame)
        self._bytes[peer] = used + len(frame)
        self.wake()
        return True

    async def get(self) -> tuple[PeerId, bytes]:
        while not self._ready:
            if self.closed:
                raise trio.ClosedResourceError
            await self._changed.wait()
        peer = self._ready.popleft()
        queue = self._queues[peer]
        frame = queue.popleft()
        self._bytes[peer] -= len(frame)
        if queue:
            self._ready.append(peer)
        else:
            del self._queues[peer]
            del self._bytes[peer]
        self.wake()
        return peer, frame


class _Link:
    """Per destination peer: the outbound stream and the back-off state."""

    __slots__ = ("ever_connected", "failures", "lock", "next_addr", "retry_at", "stream")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.stream: Any = None
        self.failures = 0
        self.retry_at = -math.inf
        self.ever_connected = False
        self.next_addr = 0


def _check_port_free(addr: multiaddr.Multiaddr) -> None:
    """Raise ``TransportError`` if something already listens on ``addr``'s TCP port.

    libp2p listens with ``SO_REUSEPORT`` (for hole punching), so a second node
    on a taken port starts without error and the kernel then splits incoming
    connections between the two. A plain bind, which ``SO_REUSEPORT``
    listeners refuse, finds out first.
    """
    port = int(addr.value_for_protocol("tcp") or 0)
    if port == 0:
        return
    protocols = [p.name for p in addr.protocols()]
    family = socket.AF_INET6 if "ip6" in protocols else socket.AF_INET
    host = addr.value_for_protocol("ip6" if family == socket.AF_INET6 else "ip4") or ""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((str(host), port))
        except OSError as exc:
            raise TransportError(f"cannot listen on {addr}: {exc.strerror}") from exc


CLOSE_TIMEOUT = 1.0
"""Seconds ``Libp2pTransport.aclose`` waits for its streams to reset and its host to stop."""


async def _reset(stream: Any) -> None:
    """Reset a stream, even from a cancelled task, ignoring errors (it is broken anyway)."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception:
            logger.debug("resetting a stream failed", exc_info=True)


class Libp2pTransport:
    """A :class:`~net.transport.Transport` over py-libp2p; see the module doc.

    ``identity_seed`` is the node's 32-byte Ed25519 seed, the very key
    ``mpc.sig.SigningKey.from_seed`` makes, so ``local_peer`` is
    ``peer_id_from_ed25519(SigningKey.from_seed(seed).verify_key().to_bytes())``.
    ``listen`` is a TCP multiaddr (port 0 picks a free port; ``listen_addrs()``
    tells which). Use as ``async with Libp2pTransport(seed) as transport:``.
    """

    def __init__(
        self,
        identity_seed: bytes,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        *,
        protocol: str = DEFAULT_PROTOCOL,
        max_frame_size: int = MAX_FRAME_SIZE,
        dial_attempts: int = 3,
        dial_timeout: float = 5.0,
        write_timeout: float = 30.0,
    ) -> None:
        verify_key = SigningKey.from_seed(identity_seed).verify_key().to_bytes()
        self._peer = peer_id_from_ed25519(verify_key)
        self._key_pair = create_new_key_pair(identity_seed)
        if self._key_pair.public_key.to_bytes() != verify_key:  # pragma: no cover
            # Both follow RFC 8032 §5.1.5, so this cannot happen; but the id must be this key.
            raise InvalidEncoding("libp2p derived another Ed25519 key from the seed")
        self._listen = multiaddr.Multiaddr(listen)
        if "tcp" not in [p.name for p in self._listen.protocols()]:
            raise ValueError(f"listen on a TCP multiaddr, not {listen}")
        self._protocol = TProtocol(protocol)
        self._max_frame_size = max_frame_size
        if dial_attempts < 1:
            raise ValueError("dial_attempts must be ≥ 1")
        self._dial_attempts = dial_attempts
        self._dial_timeout = dial_timeout
        self._write_timeout = write_timeout
        self._addrs: dict[PeerId, list[multiaddr.Multiaddr]] = {}
        self._links: dict[PeerId, _Link] = {}
        self._counters = TransportCounters()
        self._state = "new"  # new → open → closed
        self._host: Any = None
        self._stack = AsyncExitStack()
        self._inbox = _Inbox(DEFAULT_QUEUE_BYTES)
        self._stream_serial = 0
        self._newest_inbound: dict[PeerId, int] = {}
        """Per peer, the serial number of its newest inbound stream (``_handle_stream``)."""
        self._allowed: frozenset[PeerId] | None = None
        configure_logging()

    # --- lifecycle -----------------------------------------------------------------

    def _make_host(self) -> Any:
        noise = NoiseTransport(
            self._key_pair, noise_privkey=create_new_x25519_key_pair().private_key
        )
        host = new_host(
            key_pair=self._key_pair,
            sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            connection_config=ConnectionConfig(
                max_connections_per_peer=1, dial_timeout=self._dial_timeout
            ),
        )
        network: Any = host.get_network()
        network.retry_config = RetryConfig(max_retries=0)
        upgrader = network.upgrader
        secure = upgrader.upgrade_security

        async def gated_upgrade_security(
            raw_conn: Any, is_initiator: bool, peer_id: Any = None
        ) -> Any:
            # The remote peer id is known only once the Noise handshake is done: refuse a
            # peer that is not allowed here, before Yamux and before any stream exists.
            conn = await secure(raw_conn, is_initiator, peer_id)
            remote = PeerId(conn.get_remote_peer().to_base58())
            if not self._allows(remote):
                self._counters.refused_peers += 1
                logger.debug("refused a connection from %s: not an allowed peer", remote)
                with contextlib.suppress(Exception):
                    await conn.close()
                raise SecurityUpgradeFailure(f"peer {remote} is not allowed")
            return conn

        upgrader.upgrade_security = gated_upgrade_security
        host.set_stream_handler(self._protocol, self._handle_stream)
        return host

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("a transport can be opened only once")
        self._state = "open"
        try:
            _check_port_free(self._listen)
            self._host = self._make_host()
            await self._stack.enter_async_context(self._host.run([self._listen]))
            if not self._host.get_addrs():
                raise TransportError(f"libp2p could not listen on {self._listen}")
            # Dial only when ``send()`` asks to (see the module doc on the auto-connector).
            await self._host.get_network().auto_connector.stop()
        except BaseException:
            self._state = "closed"
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        # The host's nurseries were entered by ``__aenter__``: only this task may exit them.
        await self._stack.aclose()

    async def aclose(self) -> None:
        """Close the streams and the host (its listeners and connections); idempotent.

        May be called from any task; the ``async with`` block still has to end.
        """
        if self._state == "closed":
            await trio.lowlevel.checkpoint()
            return
        was_open = self._state == "open"
        self._state = "closed"
        self._inbox.close()
        await trio.lowlevel.checkpoint()
        if was_open:
            # Shielded (it may run in a cancelled task) but bounded: the streams are reset
            # together, and the host gets what is left of CLOSE_TIMEOUT to stop.
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for link in self._links.values():
                        if link.stream is not None:
                            nursery.start_soon(_reset, link.stream)
                            link.stream = None
                await self._host.close()

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransportClosed(f"libp2p transport {self._peer} is {self._state}")

    # --- Transport -----------------------------------------------------------------

    @property
    def local_peer(self) -> PeerId:
        return self._peer

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    def listen_addrs(self) -> list[str]:
        """The multiaddrs this host listens on, each ending in ``/p2p/<local peer id>``."""
        self._check_open()
        out = []
        for addr in self._host.get_addrs():
            text = str(addr)
            if "/p2p/" not in text:
                text += f"/p2p/{self._peer}"
            out.append(text)
        return out

    def add_peer(self, peer: PeerId, addrs: Sequence[str]) -> None:
        """Where ``peer`` listens; a trailing ``/p2p/<id>`` must name ``peer``.

        Raises ``ValueError`` for a malformed peer id or multiaddr.
        """
        ID.from_base58(peer)
        parsed = []
        for text in addrs:
            addr = multiaddr.Multiaddr(text)
            named = addr.value_for_protocol("p2p") if "/p2p/" in text else None
            if named is not None:
                if named != peer:
                    raise ValueError(f"address {text} names another peer")
                addr = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{named}"))
            parsed.append(addr)
        self._addrs[peer] = parsed
        link = self._links.get(peer)
        if link is not None:
            link.retry_at = -math.inf
            link.failures = 0

    def connected_peers(self) -> list[PeerId]:
        if self._state != "open":
            return []
        return sorted(PeerId(p.to_base58()) for p in self._host.get_connected_peers())

    def statistics(self) -> TransportStatistics:
        return self._counters.snapshot()

    def set_allowed_peers(
        self, peers: Collection[PeerId] | None, *, queue_bytes: int | None = None
    ) -> None:
        """Take connections and frames only from ``peers`` (``None``: anyone); see the module doc."""
        self._allowed = None if peers is None else frozenset(peers)
        if queue_bytes is not None:
            if queue_bytes < 1:
                raise ValueError("queue_bytes must be positive")
            self._inbox.cap = queue_bytes
        if self._allowed is not None:
            for peer in list(self._inbox._queues):
                if peer not in self._allowed and peer != self._peer:
                    self._inbox.drop(peer)

    def _allows(self, peer: PeerId) -> bool:
        return self._allowed is None or peer == self._peer or peer in self._allowed

    def queued_bytes(self, peer: PeerId) -> int:
        """Bytes of ``peer``'s frames waiting for ``receive()``."""
        return self._inbox.queued_bytes(peer)

    async def receive(self) -> tuple[PeerId, bytes]:
        self._check_open()
        try:
            return await self._inbox.get()
        except trio.ClosedResourceError:
            raise TransportClosed(f"libp2p transport {self._peer} is closed") from None

    async def send(self, peer: PeerId, frame: bytes) -> None:
        self._check_open()
        if len(frame) > self._max_frame_size:
            raise FrameTooLarge(len(frame), self._max_frame_size)
        frame = bytes(frame)
        if peer == self._peer:
            try:
                await self._inbox.put(peer, frame)
            except trio.ClosedResourceError:
                raise TransportClosed(f"libp2p transport {self._peer} is closed") from None
            self._counters.sent(frame)
            self._counters.received(frame)
            return
        link = self._links.setdefault(peer, _Link())
        async with link.lock:
            self._check_open()
            try:
                await self._send_locked(peer, link, encode_varint(len(frame)) + frame)
            except PeerUnreachable:
                self._counters.send_failures += 1
                raise
        self._counters.sent(frame)

    async def send_many(self, peer: PeerId, frames: Sequence[bytes]) -> None:
        """``send()`` of each frame in order, written together: the frames' length-prefixed
        bytes go out in writes of at most ``MAX_WRITE`` bytes (a larger frame alone), each
        one Yamux frame, one Noise message and one socket write instead of one of each per
        frame. The receiver reads the same length-prefixed frames.

        A write of several frames is made only while the stream's Yamux send window holds
        all of it, so that Yamux sends it as one DATA frame, which the receiver takes whole
        or not at all (an incomplete one is dropped with its stream): a write that fails is
        sent again on a new stream, as ``send()`` does, and no frame arrives twice. With
        less window the frames are written one by one. On ``PeerUnreachable`` the frames
        after the failed write are not sent; its ``frames_sent`` says how many were."""
        self._check_open()
        for frame in frames:
            if len(frame) > self._max_frame_size:
                raise FrameTooLarge(len(frame), self._max_frame_size)
        if peer == self._peer or len(frames) == 1:
            for frame in frames:
                await self.send(peer, frame)
            return
        writes: list[list[tuple[bytes, bytes]]] = []
        size = MAX_WRITE
        for frame in frames:
            piece = encode_varint(len(frame)) + bytes(frame)
            if size + len(piece) > MAX_WRITE:
                writes.append([])
                size = 0
            writes[-1].append((piece, frame))
            size += len(piece)
        link = self._links.setdefault(peer, _Link())
        done = 0
        async with link.lock:
            self._check_open()
            for group in writes:
                data = b"".join(piece for piece, _ in group)
                if len(group) == 1 or _send_window(link.stream) >= len(data):
                    parts = [(data, [frame for _, frame in group])]
                else:
                    parts = [(piece, [frame]) for piece, frame in group]
                for part, written in parts:
                    try:
                        await self._send_locked(peer, link, part)
                    except PeerUnreachable as exc:
                        self._counters.send_failures += 1
                        raise PeerUnreachable(peer, exc.reason, frames_sent=done) from None
                    for frame in written:
                        self._counters.sent(frame)
                    done += len(written)

    # --- sending ---------------------------------------------------------------------

    async def _send_locked(self, peer: PeerId, link: _Link, data: bytes) -> None:
        if link.stream is None and trio.current_time() < link.retry_at:
            raise PeerUnreachable(peer, "backing off after failed attempts")
        reason = "no attempt made"
        for attempt in range(self._dial_attempts):
            if attempt:
                await trio.sleep(RETRY_DELAY * 2 ** (attempt - 1))
                self._check_open()
            if link.stream is None:
                try:
                    link.stream = await self._open_stream(peer, link.next_addr)
                except PeerUnreachable as exc:
                    reason = exc.reason
                    link.next_addr += 1  # the next attempt dials the next address
                    if isinstance(exc, _DialTimedOut):
                        break  # a silent address: do not wait for it again in this send
                    continue
                if link.ever_connected:
                    self._counters.reconnects += 1
                link.ever_connected = True
            stream = link.stream
            try:
                with trio.move_on_after(self._write_timeout) as scope:
                    await stream.write(data)
            except Exception as exc:
                # The stream broke (the peer closed or restarted): reopen it right away.
                link.stream = None
                await _reset(stream)
                reason = f"write failed: {type(exc).__name__}"
                continue
            except BaseException:
                # Cancelled mid-frame: the stream may hold half a frame, so it must go.
                link.stream = None
                await _reset(stream)
                raise
            if scope.cancelled_caught:
                link.stream = None
                await _reset(stream)
                reason = "write timed out"
                break
            link.failures = 0
            link.retry_at = -math.inf
            self._counters.writes += 1
            return
        self._check_open()  # closed meanwhile: say so rather than blame the peer
        link.failures += 1
        link.retry_at = trio.current_time() + min(
            BACKOFF_INITIAL * 2 ** (link.failures - 1), BACKOFF_MAX
        )
        raise PeerUnreachable(peer, reason)

    async def _open_stream(self, peer: PeerId, addr_index: int = 0) -> Any:
        """A new outbound stream to ``peer``, raising ``PeerUnreachable``.

        Reuses a live connection; otherwise dials ``addrs[addr_index % len(addrs)]``.
        """
        try:
            peer_id = ID.from_base58(peer)
        except Exception:
            raise PeerUnreachable(peer, "not a peer id") from None
        addrs = self._addrs.get(peer, [])
        network: Any = self._host.get_network()
        if not addrs and not network.get_connections(peer_id):
            raise PeerUnreachable(peer, "no known address")
        if addrs:
            # Exactly one address, TTL 0 (permanent): see the module doc.
            peerstore = self._host.get_peerstore()
            peerstore.clear_addrs(peer_id)
            peerstore.add_addrs(peer_id, [addrs[addr_index % len(addrs)]], 0)
        network._negative_peer_cache.evict(str(peer_id))
        with trio.move_on_after(self._dial_timeout):
            try:
                return await self._host.new_stream(peer_id, [self._protocol])
            except Exception as exc:
                logger.debug("opening a stream to %s failed", peer, exc_info=True)
                raise PeerUnreachable(peer, f"dial failed: {type(exc).__name__}") from exc
        raise _DialTimedOut(peer, f"dial timed out after {self._dial_timeout} s")

    # --- receiving -------------------------------------------------------------------

    async def _handle_stream(self, stream: Any) -> None:
        """Inbound stream: push ``(authenticated peer, frame)`` until it ends."""
        sender: PeerId | None = None
        mine = 0
        try:
            sender = PeerId(stream.muxed_conn.peer_id.to_base58())
            # A peer writes to one stream at a time and opens a new one only when the old
            # one failed on its side (a write error or time-out). Frames still held here
            # from the old stream (parsed, or waiting for room in the inbox) would then race
            # the new stream's into the inbox and arrive out of order: once a newer stream
            # from the same peer is accepted, the older one delivers nothing more and is
            # reset, so its frames are lost (allowed) rather than reordered. (py-libp2p keeps
            # a reset stream's unread buffer for another 60 s.) Streams are ordered by when
            # their handlers start: an old stream whose negotiation ends after the new one's
            # would supersede it; it is dead on the sender's side, so it ends, the sender's
            # next write to the superseded stream fails, and it opens another: a loss, then
            # order again.
            self._stream_serial += 1
            mine = self._stream_serial
            self._newest_inbound[sender] = mine

            def current() -> bool:
                return self._newest_inbound.get(sender) == mine

            self._inbox.wake()  # an older stream's handler waiting for room sees it
            reader = _FrameReader(stream, self._max_frame_size)
            while True:
                if not self._allows(sender):
                    # Its connection predates the allowed set: nothing more is read.
                    self._counters.refused_peers += 1
                    break
                frame = await reader.read_frame()
                if not self._allows(sender):
                    self._counters.refused_peers += 1
                    break
                if not await self._inbox.put(sender, frame, current):
                    self._counters.superseded_streams += 1
                    break
                self._counters.received(frame)
        except _Oversize:
            self._counters.dropped_oversize += 1
            logger.warning("dropped an oversize frame; resetting the stream")
        except Exception:
            # EOF, a reset, a broken connection, or this transport closing.
            logger.debug("inbound stream ended", exc_info=True)
        finally:
            if sender is not None and self._newest_inbound.get(sender) == mine:
                del self._newest_inbound[sender]
            await _reset(stream)


async def send_raw(transport: Libp2pTransport, peer: PeerId, data: bytes) -> None:
    """Test hook: open a fresh stream to ``peer`` and write ``data`` as is, unframed.

    It lets a test send what a correct transport never would (an oversize length
    prefix); the stream is reset afterwards.
    """
    transport._check_open()
    stream = await transport._open_stream(peer)
    try:
        await stream.write(data)
        with contextlib.suppress(Exception):
            # Wait for the receiver to reset the stream (it drops what it cannot take).
            with trio.move_on_after(5):
                await stream.read(1)
    finally:
        await _reset(stream)
