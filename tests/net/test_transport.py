"""``check_transport`` against both transports, plus what only one of them can show."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from mpc.ids import PeerId
from mpc.sig import SigningKey
from net.errors import FrameTooLarge, PeerUnreachable, TransportClosed, TransportError
from net.libp2p import Libp2pTransport
from net.libp2p.transport import (
    BACKOFF_MAX,
    MAX_WRITE,
    _send_window,
    encode_varint,
    send_raw,
)
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519
from net.testing import check_transport, unknown_peer
from net.transport import Transport


def seed(n: int) -> bytes:
    return bytes([n]) * 32


def peer(n: int) -> PeerId:
    return peer_id_from_ed25519(SigningKey.from_seed(seed(n)).verify_key().to_bytes())


# --- memory --------------------------------------------------------------------------


@asynccontextmanager
async def memory_pair() -> AsyncIterator[tuple[Transport, Transport]]:
    network = MemoryNetwork()
    async with MemoryTransport(network, peer(1)) as a, MemoryTransport(network, peer(2)) as b:
        yield a, b


async def memory_inject(a: Transport, b: Transport) -> None:
    assert isinstance(a, MemoryTransport)
    a.network.inject(a.local_peer, b.local_peer, bytes(b.max_frame_size + 1))


def test_memory_transport_conforms() -> None:
    trio.run(lambda: check_transport(memory_pair, inject_oversize=memory_inject))


def test_memory_transport_conforms_under_mock_clock() -> None:
    async def main() -> None:
        await check_transport(memory_pair, inject_oversize=memory_inject)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_memory_partition_and_heal() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        async with (
            MemoryTransport(network, peer(1)) as a,
            MemoryTransport(network, peer(2)) as b,
            MemoryTransport(network, peer(3)) as c,
        ):
            network.partition([[a.local_peer, b.local_peer], [c.local_peer]])
            await a.send(b.local_peer, b"same side")
            assert await b.receive() == (a.local_peer, b"same side")
            with pytest.raises(PeerUnreachable):
                await a.send(c.local_peer, b"across")
            with pytest.raises(PeerUnreachable):
                await c.send(b.local_peer, b"across")
            assert a.statistics().send_failures == 1
            assert c.local_peer not in a.connected_peers()
            network.heal()
            await a.send(c.local_peer, b"healed")
            assert await c.receive() == (a.local_peer, b"healed")
            assert a.statistics().reconnects == 1
            assert network.statistics().refused == 2

    trio.run(main)


def test_memory_unnamed_peers_form_one_group() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        async with (
            MemoryTransport(network, peer(1)) as a,
            MemoryTransport(network, peer(2)) as b,
            MemoryTransport(network, peer(3)) as c,
        ):
            network.partition([[a.local_peer]])
            await b.send(c.local_peer, b"both unnamed")
            assert await c.receive() == (b.local_peer, b"both unnamed")
            with pytest.raises(PeerUnreachable):
                await b.send(a.local_peer, b"x")
            with pytest.raises(ValueError, match="two groups"):
                network.partition([[a.local_peer], [a.local_peer]])

    trio.run(main)


def test_memory_partition_loses_frames_in_flight() -> None:
    async def main() -> None:
        network = MemoryNetwork(default_delay=1.0)
        async with MemoryTransport(network, peer(1)) as a, MemoryTransport(network, peer(2)) as b:
            await a.send(b.local_peer, b"lost")
            network.partition([[a.local_peer], [b.local_peer]])
            await trio.sleep(2)
            network.heal()
            await a.send(b.local_peer, b"kept")
            assert await b.receive() == (a.local_peer, b"kept")
            assert network.statistics().dropped == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_memory_drop_is_silent_and_directed() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        async with MemoryTransport(network, peer(1)) as a, MemoryTransport(network, peer(2)) as b:
            network.set_drop(a.local_peer, b.local_peer, True, directed=True)
            await a.send(b.local_peer, b"into the void")  # no error: a lossy link
            await b.send(a.local_peer, b"other way works")
            assert await a.receive() == (b.local_peer, b"other way works")
            network.set_drop(a.local_peer, b.local_peer, False)
            await a.send(b.local_peer, b"through")
            assert await b.receive() == (a.local_peer, b"through")
            assert network.statistics().dropped == 1

    trio.run(main)


def test_memory_delay_uses_trio_time_and_keeps_link_order() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        async with (
            MemoryTransport(network, peer(1)) as a,
            MemoryTransport(network, peer(2)) as b,
            MemoryTransport(network, peer(3)) as c,
        ):
            network.set_delay(a.local_peer, c.local_peer, 5.0)
            network.set_delay(b.local_peer, c.local_peer, 1.0)
            start = trio.current_time()
            await a.send(c.local_peer, b"slow 1")
            network.set_delay(a.local_peer, c.local_peer, 0.0)
            await a.send(c.local_peer, b"slow 2")  # must not overtake "slow 1"
            await b.send(c.local_peer, b"fast")
            got = [await c.receive() for _ in range(3)]
            assert got == [
                (b.local_peer, b"fast"),
                (a.local_peer, b"slow 1"),
                (a.local_peer, b"slow 2"),
            ]
            assert trio.current_time() - start == pytest.approx(5.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_memory_restart_under_the_same_id() -> None:
    async def main() -> None:
        network = MemoryNetwork()
        async with MemoryTransport(network, peer(1)) as a:
            async with MemoryTransport(network, peer(2)) as b:
                with pytest.raises(ValueError, match="already"):
                    async with MemoryTransport(network, peer(2)):
                        pass
                await a.send(b.local_peer, b"first life")
            with pytest.raises(PeerUnreachable):
                await a.send(peer(2), b"while down")
            async with MemoryTransport(network, peer(2)) as b2:
                await a.send(b2.local_peer, b"second life")
                assert await b2.receive() == (a.local_peer, b"second life")
            assert network.peers() == [a.local_peer]

    trio.run(main)


def test_memory_transport_must_be_opened() -> None:
    async def main() -> None:
        t = MemoryTransport(MemoryNetwork(), peer(1))
        with pytest.raises(TransportClosed):
            await t.send(peer(2), b"x")
        async with t:
            with pytest.raises(FrameTooLarge):
                await t.send(peer(2), bytes(t.max_frame_size + 1))
        with pytest.raises(RuntimeError):
            async with t:
                pass

    trio.run(main)


# --- libp2p --------------------------------------------------------------------------


def closed_port() -> int:
    """A loopback TCP port where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@asynccontextmanager
async def libp2p_pair() -> AsyncIterator[tuple[Transport, Transport]]:
    async with Libp2pTransport(seed(1)) as a, Libp2pTransport(seed(2)) as b:
        a.add_peer(b.local_peer, b.listen_addrs())
        b.add_peer(a.local_peer, a.listen_addrs())
        yield a, b


async def libp2p_inject(a: Transport, b: Transport) -> None:
    assert isinstance(a, Libp2pTransport)
    # A length prefix one byte over the limit, written on a raw stream of the protocol.
    await send_raw(a, b.local_peer, encode_varint(b.max_frame_size + 1) + bytes(64))


@pytest.mark.slow
def test_libp2p_transport_conforms() -> None:
    trio.run(
        lambda: check_transport(
            libp2p_pair,
            inject_oversize=libp2p_inject,
            unreachable_addr=f"/ip4/127.0.0.1/tcp/{closed_port()}",
        )
    )


@pytest.mark.slow
def test_libp2p_send_many_writes_together_only_within_the_yamux_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Small frames go out in one stream write while the Yamux send window holds them all
    (one DATA frame, taken whole or not at all); with less window, one write per frame;
    a batch over ``MAX_WRITE`` is split into writes of at most that; all arrive in order."""

    async def main() -> None:
        async with libp2p_pair() as (a, b):
            assert isinstance(a, Libp2pTransport)
            await a.send(b.local_peer, b"open")
            assert (await b.receive())[1] == b"open"
            stream = a._links[b.local_peer].stream
            assert _send_window(stream) > MAX_WRITE  # the attribute is where it is read
            writes: list[int] = []
            original = stream.write

            async def counting(data: bytes) -> None:
                writes.append(len(data))
                await original(data)

            stream.write = counting
            frames = [bytes([i]) * 100 for i in range(50)]

            async def receive(expected: list[bytes]) -> None:
                for frame in expected:
                    assert (await b.receive())[1] == frame

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, frames)
                await a.send_many(b.local_peer, frames)
            assert writes == [50 * 101]
            writes.clear()
            # A window smaller than the batch (as read from the stream):
            monkeypatch.setattr("net.libp2p.transport._send_window", lambda stream: 1_000)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, frames)
                await a.send_many(b.local_peer, frames)
            assert writes == [101] * 50
            writes.clear()
            monkeypatch.undo()
            big = [bytes([i]) * 20_000 for i in range(7)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive, big)
                await a.send_many(b.local_peer, big)
            assert all(w <= MAX_WRITE for w in writes) and sum(writes) == 7 * 20_003
            assert len(writes) == 3

    trio.run(main)


@pytest.mark.slow
def test_libp2p_frames_stay_in_order_when_a_stalled_receiver_makes_the_sender_switch_streams() -> (
    None
):
    """The receiver's application stops reading for longer than py-libp2p waits for a
    Yamux window update (5 s), as on a starved node: its inbox fills, its stream handler
    holds parsed frames, the sender's write times out and it opens a new stream. Frames
    the old stream's handler still held must not be delivered after the new stream's:
    they are dropped (loss is allowed), never reordered or repeated."""

    async def main() -> None:
        async with libp2p_pair() as (a, b):
            assert isinstance(a, Libp2pTransport) and isinstance(b, Libp2pTransport)
            b.set_allowed_peers(None, queue_bytes=20_000)
            sent = 0

            async def sender() -> None:
                # Until the sender switched streams (py-libp2p may first grow the stream's
                # window to megabytes), then 150 frames more; at most 12,000 (48 MB).
                nonlocal sent
                more = 150
                while more > 0 and sent < 12_000:
                    batch = [i.to_bytes(4, "big") * 1_000 for i in range(sent, sent + 15)]
                    with contextlib.suppress(TransportError):
                        await a.send_many(b.local_peer, batch)
                    sent += 15
                    if a.statistics().reconnects:
                        more -= 15

            got: list[int] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                # Not reading until the sender's window has stayed at 0 for over 5 s and it
                # switched streams (about 7 s; on a loaded machine its timers run late).
                with trio.move_on_after(120.0):
                    while a.statistics().reconnects == 0:
                        await trio.sleep(0.2)
                await trio.sleep(0.5)
                while True:
                    with trio.move_on_after(3.0) as idle:
                        got.append(int.from_bytes((await b.receive())[1][:4], "big"))
                    if idle.cancelled_caught:
                        break
                nursery.cancel_scope.cancel()
            assert a.statistics().reconnects >= 1, "the sender never switched streams"
            assert b.statistics().superseded_streams >= 1
            assert len(got) == len(set(got)), "a frame arrived twice"
            assert got == sorted(got), "frames arrived out of order"
            assert got and got[-1] == sent - 1

    trio.run(main)


@pytest.mark.slow
def test_libp2p_frames_a_superseded_stream_still_holds_are_dropped_not_reordered() -> None:
    """The same race, set up exactly: the receiver's inbox takes one frame at a time and
    nothing reads it; the sender writes frames 0-39 on a stream, then (as after a failed
    write) frames 100-139 on a new one. The old stream's handler holds frames it parsed;
    once the new stream is accepted it delivers none of them, so what arrives is in order."""

    async def main() -> None:
        for _ in range(3):
            async with libp2p_pair() as (a, b):
                assert isinstance(a, Libp2pTransport) and isinstance(b, Libp2pTransport)
                b.set_allowed_peers(None, queue_bytes=1)
                old = await a._open_stream(b.local_peer)
                await old.write(
                    b"".join(encode_varint(4) + i.to_bytes(4, "big") for i in range(40))
                )
                await trio.sleep(0.3)
                new = await a._open_stream(b.local_peer)
                await new.write(
                    b"".join(encode_varint(4) + i.to_bytes(4, "big") for i in range(100, 140))
                )
                await trio.sleep(0.3)
                got: list[int] = []
                while True:
                    with trio.move_on_after(0.5) as idle:
                        got.append(int.from_bytes((await b.receive())[1], "big"))
                    if idle.cancelled_caught:
                        break
                assert got == sorted(got), got
                assert got[-40:] == list(range(100, 140))
                assert b.statistics().superseded_streams == 1

    trio.run(main)


@pytest.mark.slow
def test_libp2p_send_many_that_fails_part_way_says_how_many_frames_went_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Frames written one by one (a window below the group); the receiver dies once it has
    the third: ``PeerUnreachable.frames_sent`` is 3 and exactly those 3 are counted sent."""

    async def main() -> None:
        async with libp2p_pair() as (a, b):
            assert isinstance(a, Libp2pTransport)
            await a.send(b.local_peer, b"open")
            await b.receive()
            before = a.statistics()
            monkeypatch.setattr("net.libp2p.transport._send_window", lambda stream: 1_000)
            stream = a._links[b.local_peer].stream
            original, written, got = stream.write, [0], []

            async def write(data: bytes) -> None:
                await original(data)
                written[0] += 1
                if written[0] == 3:
                    with trio.fail_after(5):
                        while len(got) < 3:
                            await trio.sleep(0.01)
                    await b.aclose()

            stream.write = write

            async def receive() -> None:
                with contextlib.suppress(TransportError):
                    while True:
                        got.append((await b.receive())[1])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                with pytest.raises(PeerUnreachable) as raised:
                    await a.send_many(b.local_peer, [bytes([i]) * 100 for i in range(10)])
                nursery.cancel_scope.cancel()
            assert raised.value.frames_sent == 3 and len(got) == 3
            after = a.statistics()
            assert after.frames_sent - before.frames_sent == 3
            assert after.bytes_sent - before.bytes_sent == 300
            assert after.send_failures - before.send_failures == 1

    trio.run(main)


@pytest.mark.slow
def test_libp2p_peer_id_is_the_mpc_identity_key() -> None:
    async def main() -> None:
        key = SigningKey.from_seed(seed(7))
        async with Libp2pTransport(seed(7)) as t:
            expected = peer_id_from_ed25519(key.verify_key().to_bytes())
            assert t.local_peer == expected
            assert t._host.get_id().to_base58() == expected
            (addr,) = t.listen_addrs()
            assert addr.startswith("/ip4/127.0.0.1/tcp/")
            assert addr.endswith(f"/p2p/{expected}")

    trio.run(main)


@pytest.mark.slow
def test_libp2p_reconnects_to_a_restarted_peer() -> None:
    async def main() -> None:
        async with Libp2pTransport(seed(1)) as a:
            async with Libp2pTransport(seed(2)) as b:
                a.add_peer(b.local_peer, b.listen_addrs())
                await a.send(b.local_peer, b"first life")
                assert await b.receive() == (a.local_peer, b"first life")
            # b is gone: sends fail, then back off without dialing.
            with trio.fail_after(10):
                while True:
                    try:
                        await a.send(peer(2), b"while down")
                    except PeerUnreachable:
                        break
            with pytest.raises(PeerUnreachable, match="backing off"):
                await a.send(peer(2), b"while down")
            failures = a.statistics().send_failures
            assert failures >= 2
            # Same identity, new process, new port.
            async with Libp2pTransport(seed(2)) as b2:
                a.add_peer(b2.local_peer, b2.listen_addrs())  # ends the back-off
                with trio.fail_after(BACKOFF_MAX + 5):
                    await a.send(b2.local_peer, b"second life")
                assert await b2.receive() == (a.local_peer, b"second life")
                assert a.statistics().reconnects == 1
                # The restarted peer can answer over the connection a dialed.
                await b2.send(a.local_peer, b"welcome back")
                assert await a.receive() == (b2.local_peer, b"welcome back")

    trio.run(main)


@pytest.mark.slow
def test_libp2p_reconnects_on_the_same_address_after_backoff() -> None:
    async def main() -> None:
        port = closed_port()
        listen = f"/ip4/127.0.0.1/tcp/{port}"
        async with Libp2pTransport(seed(1)) as a:
            a.add_peer(peer(2), [listen])
            with pytest.raises(PeerUnreachable):
                await a.send(peer(2), b"nobody yet")
            async with Libp2pTransport(seed(2), listen) as b:
                with trio.fail_after(BACKOFF_MAX + 5):
                    while True:
                        try:
                            await a.send(b.local_peer, b"there you are")
                            break
                        except PeerUnreachable:
                            await trio.sleep(0.05)
                assert await b.receive() == (a.local_peer, b"there you are")

    trio.run(main)


@pytest.mark.slow
def test_libp2p_gives_up_on_a_silent_peer_after_the_dial_timeout() -> None:
    async def main() -> None:
        # Accepts TCP connections and never says a word (not even multistream-select).
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        accepted: list[trio.abc.Stream] = []

        async def hold(stream: trio.abc.Stream) -> None:
            accepted.append(stream)
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, hold, listeners)
            async with Libp2pTransport(seed(1), dial_timeout=0.5) as a:
                a.add_peer(peer(2), [f"/ip4/127.0.0.1/tcp/{port}"])
                start = trio.current_time()
                with pytest.raises(PeerUnreachable, match="timed out"):
                    await a.send(peer(2), b"anyone?")
                assert trio.current_time() - start < 1.5  # one attempt, not three
                assert len(accepted) == 1
                with pytest.raises(PeerUnreachable, match="backing off"):
                    await a.send(peer(2), b"anyone?")
            nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.slow
@pytest.mark.parametrize("security", ["plaintext", "secio"])
def test_libp2p_offers_noise_only_and_refuses_other_dialers(security: str) -> None:
    import libp2p.security.secio.transport as secio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import RetryConfig
    from libp2p.network.exceptions import SwarmException
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    from multiaddr import Multiaddr

    async def main() -> None:
        async with Libp2pTransport(seed(1)) as t:
            upgrader = t._host.get_network().upgrader
            assert list(upgrader.security_multistream.transports) == ["/noise"]
            key_pair = create_new_key_pair(seed(9))
            sec_opt = (
                {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(key_pair)}
                if security == "plaintext"
                else {TProtocol(secio.ID): secio.Transport(key_pair)}
            )
            dialer = new_host(key_pair=key_pair, sec_opt=sec_opt)
            network: Any = dialer.get_network()
            network.retry_config = RetryConfig(max_retries=0)  # fail fast
            (addr,) = t.listen_addrs()
            info = PeerInfo(ID.from_base58(t.local_peer), [Multiaddr(addr.split("/p2p/")[0])])
            async with dialer.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                with trio.fail_after(20), pytest.raises(SwarmException) as caught:
                    await dialer.connect(info)
            causes = repr(caught.value.__cause__)
            assert "failed to negotiate the secure protocol" in causes
            assert t.connected_peers() == []
            assert t.statistics().frames_received == 0

    trio.run(main)


@pytest.mark.slow
def test_libp2p_refuses_a_port_in_use() -> None:
    # libp2p itself would share it (SO_REUSEPORT) and split the connections.
    async def main() -> None:
        async with Libp2pTransport(seed(1)) as a:
            taken = a.listen_addrs()[0].split("/p2p/")[0]
            with pytest.raises(TransportError, match="cannot listen"):
                async with Libp2pTransport(seed(2), taken):
                    pass
        # Free again once the first transport closed (restart on the same port).
        async with Libp2pTransport(seed(2), taken) as b:
            assert b.listen_addrs()[0].startswith(taken)

    trio.run(main)


def test_libp2p_refuses_a_bad_seed_and_a_foreign_address() -> None:
    from mpc.errors import InvalidEncoding

    with pytest.raises(InvalidEncoding):
        Libp2pTransport(b"short")
    t = Libp2pTransport(seed(1))
    with pytest.raises(ValueError, match="another peer"):
        t.add_peer(peer(2), [f"/ip4/127.0.0.1/tcp/1/p2p/{peer(3)}"])
    with pytest.raises(ValueError):
        t.add_peer(PeerId("not a peer id"), ["/ip4/127.0.0.1/tcp/1"])
    with pytest.raises(ValueError):
        t.add_peer(peer(2), ["not a multiaddr"])
    with pytest.raises(ValueError, match="TCP"):
        Libp2pTransport(seed(1), "/ip4/127.0.0.1/udp/4001/quic-v1")
    t.add_peer(peer(2), [f"/ip4/127.0.0.1/tcp/1/p2p/{peer(2)}"])
    assert unknown_peer() != peer(2)
