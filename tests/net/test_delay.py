"""``net.delay.DelayedTransport``: each received frame held for the delay, order kept,
frames that arrive meanwhile taken at once, bounded, cancel-safe (under trio's mock clock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from mpc.ids import PeerId
from net.delay import DelayedTransport
from net.memory import MemoryNetwork, MemoryTransport
from net.transport import Transport

A, B, C = PeerId("a"), PeerId("b"), PeerId("c")


def run(fn: object) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))  # type: ignore[arg-type]


def test_each_frame_waits_the_delay_and_order_is_kept() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        async with (
            MemoryTransport(net, A) as a,
            MemoryTransport(net, C) as c,
            MemoryTransport(net, B) as b,
        ):
            rx = DelayedTransport(b, 0.010)
            assert isinstance(rx, Transport)
            t0 = trio.current_time()
            got: list[tuple[PeerId, bytes, float]] = []

            async def receiver() -> None:
                for _ in range(3):
                    peer, frame = await rx.receive()
                    got.append((peer, frame, round(trio.current_time() - t0, 6)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver)
                await a.send(B, b"1")
                await trio.sleep(0.004)
                await c.send(B, b"2")
                await a.send(B, b"3")
            # Not 10 ms apart: the later frames were taken while the first one was held.
            assert got == [(A, b"1", 0.010), (C, b"2", 0.014), (A, b"3", 0.014)]

    run(main)


def test_no_delay_is_the_inner_transport() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        async with MemoryTransport(net, A) as a, MemoryTransport(net, B) as b:
            rx = DelayedTransport(b, 0.0)
            t0 = trio.current_time()
            await a.send(B, b"x")
            assert await rx.receive() == (A, b"x")
            assert trio.current_time() == t0
            assert rx.local_peer == B and rx.max_frame_size == b.max_frame_size
            assert rx.statistics() == b.statistics()

    run(main)


def test_held_frames_are_bounded() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        async with MemoryTransport(net, A) as a, MemoryTransport(net, B) as b:
            rx = DelayedTransport(b, 1.0, max_held=4)
            for k in range(10):
                await a.send(B, bytes([k]))
            got = [(await rx.receive())[1] for _ in range(10)]
            assert got == [bytes([k]) for k in range(10)]
            assert rx.held_max == 4

    run(main)


def test_a_cancelled_receive_loses_no_frame() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        async with MemoryTransport(net, A) as a, MemoryTransport(net, B) as b:
            rx = DelayedTransport(b, 0.010)
            await a.send(B, b"x")
            with trio.move_on_after(0.005):
                await rx.receive()
            assert rx.held() == 1
            assert await rx.receive() == (A, b"x")

    run(main)


def test_frames_of_a_peer_no_longer_allowed_are_dropped() -> None:
    async def main() -> None:
        net = MemoryNetwork()
        async with (
            MemoryTransport(net, A) as a,
            MemoryTransport(net, C) as c,
            MemoryTransport(net, B) as b,
        ):
            rx = DelayedTransport(b, 0.010)
            await a.send(B, b"a")
            await c.send(B, b"c")
            with trio.move_on_after(0.001):
                await rx.receive()
            assert rx.held() == 2
            rx.set_allowed_peers([C])
            assert await rx.receive() == (C, b"c")

    run(main)


@pytest.mark.parametrize("delay", [-1.0, float("nan"), float("inf")])
def test_a_bad_delay_is_refused(delay: float) -> None:
    net = MemoryNetwork()
    with pytest.raises(ValueError):
        DelayedTransport(MemoryTransport(net, A), delay)
