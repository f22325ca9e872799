"""Measure ``Libp2pTransport`` over loopback TCP: dial time, round trips, throughput.

Not a test (nothing asserts): run it and read the numbers::

    .venv/bin/python tests/net/measure_libp2p.py
"""

from __future__ import annotations

import statistics
import time

import trio

from net.libp2p import Libp2pTransport

ROUND_TRIPS = 1000
SIZES = [(100, 5000), (1024, 5000), (64 * 1024, 500), (1024 * 1024, 40), (4 * 1024 * 1024, 10)]


async def main() -> None:
    async with Libp2pTransport(b"\x01" * 32) as a, Libp2pTransport(b"\x02" * 32) as b:
        a.add_peer(b.local_peer, b.listen_addrs())
        b.add_peer(a.local_peer, a.listen_addrs())

        start = time.perf_counter()
        await a.send(b.local_peer, b"hello")
        await b.receive()
        print(
            f"first frame (dial, Noise, Yamux, stream): {(time.perf_counter() - start) * 1e3:.1f} ms"
        )
        await b.send(a.local_peer, b"hello")
        await a.receive()

        async def echo() -> None:
            for _ in range(ROUND_TRIPS):
                sender, frame = await b.receive()
                await b.send(sender, frame)

        rtts = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            for _ in range(ROUND_TRIPS):
                t = time.perf_counter()
                await a.send(b.local_peer, bytes(64))
                await a.receive()
                rtts.append(time.perf_counter() - t)
        rtts.sort()
        print(
            f"round trip, 64-byte frame: median {statistics.median(rtts) * 1e3:.2f} ms, "
            f"p99 {rtts[int(len(rtts) * 0.99)] * 1e3:.2f} ms ({1 / statistics.mean(rtts):.0f}/s)"
        )

        for size, count in SIZES:
            frame = bytes(size)

            async def sink(n: int = count) -> None:
                for _ in range(n):
                    await b.receive()

            t = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sink)
                for _ in range(count):
                    await a.send(b.local_peer, frame)
            elapsed = time.perf_counter() - t
            print(
                f"one way, {size:>8}-byte frames: {count / elapsed:8.0f} frames/s, "
                f"{count * size / elapsed / 1e6:7.1f} MB/s"
            )


if __name__ == "__main__":
    trio.run(main)
