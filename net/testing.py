"""Conformance suite for :class:`~net.transport.Transport` implementations.

In the spirit of trio's ``check_two_way_stream``: ``check_transport(make_pair)``
runs every check against fresh pairs of connected transports, so a new
implementation (or a fault-injecting wrapper) shows it honours the same
contract as ``net.memory`` and ``net.libp2p``::

    trio.run(check_transport, make_pair)

``make_pair()`` returns an async context manager yielding ``(a, b)``: two open
transports that know each other's addresses (``add_peer``) and whose
``max_frame_size`` is the same. Leaving the context closes both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

import trio

from mpc.ids import PeerId
from mpc.sig import SigningKey
from net.errors import FrameTooLarge, PeerUnreachable, TransportClosed
from net.peerid import peer_id_from_ed25519
from net.transport import Transport

__all__ = ["InjectOversize", "MakePair", "check_transport", "unknown_peer"]

MakePair = Callable[[], AbstractAsyncContextManager[tuple[Transport, Transport]]]
InjectOversize = Callable[[Transport, Transport], Awaitable[None]]
"""``inject(a, b)`` makes ``b`` receive, from ``a``, a frame over ``b.max_frame_size``."""

BURST = 1000
ORDERED = 200
LARGE = 1024 * 1024


def unknown_peer(n: int = 0) -> PeerId:
    """A well-formed peer id that no transport uses (its key comes from a fixed seed)."""
    seed = bytes([0xEE, n]) + bytes(30)
    return peer_id_from_ed25519(SigningKey.from_seed(seed).verify_key().to_bytes())


async def _expect(transport: Transport, sender: PeerId, frame: bytes) -> None:
    got_sender, got = await transport.receive()
    if got_sender != sender:
        raise AssertionError(f"frame from {got_sender}, expected the authenticated {sender}")
    if got != frame:
        raise AssertionError(f"frame of {len(got)} bytes differs from the {len(frame)} bytes sent")


async def _send_all(transport: Transport, peer: PeerId, frames: Sequence[bytes]) -> None:
    for frame in frames:
        await transport.send(peer, frame)


async def _receive_all(transport: Transport, sender: PeerId, frames: Sequence[bytes]) -> None:
    for i, frame in enumerate(frames):
        got_sender, got = await transport.receive()
        if got_sender != sender or got != frame:
            raise AssertionError(f"frame {i} from {sender} out of order, lost or altered")


async def _transfer(a: Transport, b: Transport, frames: Sequence[bytes]) -> None:
    """Send ``frames`` from ``a`` to ``b`` while ``b`` receives them, checking order."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send_all, a, b.local_peer, frames)
        nursery.start_soon(_receive_all, b, a.local_peer, frames)


async def _nothing_pending(transport: Transport) -> None:
    with trio.move_on_after(0.05):
        sender, frame = await transport.receive()
        raise AssertionError(f"unexpected frame of {len(frame)} bytes from {sender}")


# --- the checks ----------------------------------------------------------------------


async def check_both_ways(a: Transport, b: Transport) -> None:
    """A frame each way arrives with the authenticated sender; the peers show as connected."""
    for t in (a, b):
        if not isinstance(t, Transport):
            raise AssertionError(f"{type(t).__name__} lacks part of the Transport protocol")
    await a.send(b.local_peer, b"ping")
    await _expect(b, a.local_peer, b"ping")
    await b.send(a.local_peer, b"pong")
    await _expect(a, b.local_peer, b"pong")
    if b.local_peer not in a.connected_peers() or a.local_peer not in b.connected_peers():
        raise AssertionError("peers that exchanged frames are not in connected_peers()")
    await a.send(b.local_peer, b"")
    await _expect(b, a.local_peer, b"")


async def check_cancelled_receive(a: Transport, b: Transport) -> None:
    """A ``receive()`` cancelled while it waits takes no frame with it."""
    with trio.move_on_after(0.01):
        await b.receive()
    await a.send(b.local_peer, b"for the next receive")
    await _expect(b, a.local_peer, b"for the next receive")


async def check_order(a: Transport, b: Transport) -> None:
    """Frames keep their order in each direction while both directions are busy."""
    forward = [b"a->b %d" % i for i in range(ORDERED)]
    backward = [b"b->a %d" % i for i in range(ORDERED)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_transfer, a, b, forward)
        nursery.start_soon(_transfer, b, a, backward)


async def check_burst(a: Transport, b: Transport) -> None:
    """A burst of 1,000 small frames all arrive, in order."""
    await _transfer(a, b, [i.to_bytes(4, "big") * 4 for i in range(BURST)])


async def check_large_frames(a: Transport, b: Transport) -> None:
    """A 1 MiB frame and a frame of exactly ``max_frame_size`` arrive intact."""
    large = hashlib.shake_256(b"large frame").digest(LARGE)
    await _transfer(a, b, [large])
    await _transfer(b, a, [large])
    await _transfer(a, b, [hashlib.shake_256(b"maximal frame").digest(a.max_frame_size)])


async def check_oversize_send(a: Transport, b: Transport) -> None:
    """``send()`` refuses a frame over the limit, sends nothing, and the link still works."""
    before = a.statistics()
    try:
        await a.send(b.local_peer, bytes(a.max_frame_size + 1))
    except FrameTooLarge:
        pass
    else:
        raise AssertionError("an oversize frame was sent")
    if a.statistics().frames_sent != before.frames_sent:
        raise AssertionError("a refused oversize frame was counted as sent")
    await a.send(b.local_peer, b"still fine")
    await _expect(b, a.local_peer, b"still fine")


async def check_send_many(a: Transport, b: Transport) -> None:
    """``send_many`` delivers each frame, in order and counted, the empty frame and a
    maximal one among small ones; it interleaves in order with ``send``; a batch holding
    one oversize frame is refused whole; to ``local_peer`` it loops back."""
    small = [i.to_bytes(4, "big") * (1 + i % 50) for i in range(300)]
    maximal = hashlib.shake_256(b"maximal in a batch").digest(a.max_frame_size)
    batch = [*small[:100], b"", maximal, *small[100:]]
    before = a.statistics()
    async with trio.open_nursery() as nursery:

        async def sender() -> None:
            await a.send(b.local_peer, b"before")
            await a.send_many(b.local_peer, batch)
            await a.send(b.local_peer, b"after")
            await a.send_many(b.local_peer, [b"single"])

        nursery.start_soon(sender)
        await _receive_all(b, a.local_peer, [b"before", *batch, b"after", b"single"])
    sent = a.statistics()
    if sent.frames_sent - before.frames_sent != len(batch) + 3:
        raise AssertionError(
            f"{sent.frames_sent - before.frames_sent} frames counted, {len(batch) + 3} sent"
        )
    if sent.bytes_sent - before.bytes_sent != sum(map(len, batch)) + 17:
        raise AssertionError("send_many's bytes miscounted")
    if not 4 <= sent.writes - before.writes <= len(batch) + 3:
        raise AssertionError(f"{sent.writes - before.writes} writes for {len(batch) + 3} frames")
    try:
        await a.send_many(b.local_peer, [b"first", bytes(a.max_frame_size + 1), b"last"])
    except FrameTooLarge:
        pass
    else:
        raise AssertionError("a batch with an oversize frame was sent")
    if a.statistics().frames_sent != sent.frames_sent:
        raise AssertionError("a refused batch was counted as sent")
    await a.send_many(a.local_peer, [b"to", b"myself"])
    await _expect(a, a.local_peer, b"to")
    await _expect(a, a.local_peer, b"myself")
    await a.send_many(b.local_peer, [b"still", b"fine"])
    await _expect(b, a.local_peer, b"still")
    await _expect(b, a.local_peer, b"fine")


async def check_oversize_receive(a: Transport, b: Transport, inject: InjectOversize) -> None:
    """An incoming oversize frame is dropped and counted; later frames still arrive."""
    await inject(a, b)
    await a.send(b.local_peer, b"after the oversize frame")
    await _expect(b, a.local_peer, b"after the oversize frame")
    if b.statistics().dropped_oversize != 1:
        raise AssertionError(f"dropped_oversize is {b.statistics().dropped_oversize}, expected 1")


async def check_loopback(a: Transport, b: Transport) -> None:
    """A frame sent to ``local_peer`` comes back from ``local_peer``."""
    await a.send(a.local_peer, b"to myself")
    await _expect(a, a.local_peer, b"to myself")


async def check_unreachable(a: Transport, b: Transport, unreachable_addr: str | None) -> None:
    """Sending to an unknown peer, or to nobody listening, raises ``PeerUnreachable`` in time."""
    nobody = unknown_peer(1)
    with trio.fail_after(5):
        try:
            await a.send(nobody, b"hello?")
        except PeerUnreachable as exc:
            if exc.peer != nobody:
                raise AssertionError("PeerUnreachable names another peer") from exc
        else:
            raise AssertionError("a send to an unknown peer succeeded")
    if a.statistics().send_failures != 1:
        raise AssertionError("a failed send was not counted in send_failures")
    if unreachable_addr is not None:
        silent = unknown_peer(2)
        a.add_peer(silent, [unreachable_addr])
        with trio.fail_after(5):
            try:
                await a.send(silent, b"hello?")
            except PeerUnreachable:
                pass
            else:
                raise AssertionError(f"a send to {unreachable_addr} succeeded")
    # The failures leave the working link alone.
    await a.send(b.local_peer, b"still here")
    await _expect(b, a.local_peer, b"still here")


async def check_allowed_peers(a: Transport, b: Transport) -> None:
    """A peer left out of ``set_allowed_peers`` gets nothing delivered (counted in
    ``refused_peers``; its ``send()`` may fail or vanish); allowed again, it gets through."""
    b.set_allowed_peers([unknown_peer(3)])
    with trio.fail_after(10):
        try:
            await a.send(b.local_peer, b"let me in")
        except PeerUnreachable:
            pass
    await _nothing_pending(b)
    if b.statistics().refused_peers < 1:
        raise AssertionError("a frame or connection from a peer not allowed was not counted")
    b.set_allowed_peers(None)
    a.add_peer(b.local_peer, _addrs_of(b))  # ends a back-off after the refused dial
    with trio.fail_after(10):
        while True:
            try:
                await a.send(b.local_peer, b"allowed now")
                break
            except PeerUnreachable:
                await trio.sleep(0.05)
    await _expect(b, a.local_peer, b"allowed now")
    # Loopback is never refused.
    b.set_allowed_peers([])
    await b.send(b.local_peer, b"to myself")
    await _expect(b, b.local_peer, b"to myself")


def _addrs_of(t: Transport) -> list[str]:
    listen = getattr(t, "listen_addrs", None)
    return list(listen()) if listen is not None else []


async def check_statistics(a: Transport, b: Transport) -> None:
    """Frames and bytes are counted on both sides."""
    frames = [bytes(n) for n in (1, 10, 100, 1000)]
    await _transfer(a, b, frames)
    await _transfer(b, a, frames[:2])
    total, back = sum(map(len, frames)), sum(map(len, frames[:2]))
    sa, sb = a.statistics(), b.statistics()
    expected = {
        "a.frames_sent": (sa.frames_sent, 4),
        "a.bytes_sent": (sa.bytes_sent, total),
        "a.frames_received": (sa.frames_received, 2),
        "a.bytes_received": (sa.bytes_received, back),
        "b.frames_sent": (sb.frames_sent, 2),
        "b.bytes_sent": (sb.bytes_sent, back),
        "b.frames_received": (sb.frames_received, 4),
        "b.bytes_received": (sb.bytes_received, total),
        "a.send_failures": (sa.send_failures, 0),
        "a.writes": (sa.writes, 4),
        "b.writes": (sb.writes, 2),
        "a.dropped_oversize": (sa.dropped_oversize, 0),
    }
    wrong = {k: v for k, v in expected.items() if v[0] != v[1]}
    if wrong:
        raise AssertionError(f"statistics (got, expected): {wrong}")


async def check_close(a: Transport, b: Transport) -> None:
    """After ``aclose()``: a blocked ``receive()`` wakes, every call raises
    ``TransportClosed``, ``aclose()`` is idempotent, and the peer's sends fail."""
    await a.send(b.local_peer, b"hello")
    await _expect(b, a.local_peer, b"hello")
    woke: list[BaseException] = []

    async def blocked_receive() -> None:
        try:
            await a.receive()
        except TransportClosed as exc:
            woke.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_receive)
        await trio.sleep(0.01)
        await a.aclose()
    if not woke:
        raise AssertionError("a receive() blocked across aclose() did not raise TransportClosed")
    await a.aclose()
    for name, call in (
        ("send", lambda: a.send(b.local_peer, b"x")),
        ("receive", a.receive),
    ):
        try:
            await call()
        except TransportClosed:
            pass
        else:
            raise AssertionError(f"{name}() after aclose() did not raise TransportClosed")
    # The peer notices within a bounded time (its first send may still go into a
    # connection that is only being torn down).
    with trio.fail_after(10):
        while True:
            try:
                await b.send(a.local_peer, b"are you there?")
            except PeerUnreachable:
                break
            await trio.sleep(0.05)


async def check_transport(
    make_pair: MakePair,
    *,
    inject_oversize: InjectOversize | None = None,
    unreachable_addr: str | None = None,
    timeout: float = 30.0,
) -> None:
    """Run every check, each on a fresh pair from ``make_pair`` and within ``timeout``.

    ``inject_oversize`` enables the incoming-oversize check (a transport only
    receives one from a sender that breaks the rules, which needs a hook);
    ``unreachable_addr`` is an address where nothing listens, for the dial-failure check.
    Raises ``AssertionError`` naming the first check that fails.
    """
    checks: list[tuple[str, Callable[[Transport, Transport], Awaitable[None]]]] = [
        ("both ways", check_both_ways),
        ("cancelled receive", check_cancelled_receive),
        ("order", check_order),
        ("burst", check_burst),
        ("large frames", check_large_frames),
        ("oversize send", check_oversize_send),
        ("send many", check_send_many),
        ("loopback", check_loopback),
        ("unreachable", lambda a, b: check_unreachable(a, b, unreachable_addr)),
        ("statistics", check_statistics),
        ("allowed peers", check_allowed_peers),
        ("close", check_close),
    ]
    if inject_oversize is not None:
        inject = inject_oversize
        checks.append(("oversize receive", lambda a, b: check_oversize_receive(a, b, inject)))
    for name, check in checks:
        with trio.fail_after(timeout):
            async with make_pair() as (a, b):
                try:
                    await check(a, b)
                    if check is not check_close:
                        # Nothing stray: no duplicates, no frames from nowhere.
                        await _nothing_pending(a)
                        await _nothing_pending(b)
                except AssertionError as exc:
                    raise AssertionError(f"check_transport: {name}: {exc}") from exc
