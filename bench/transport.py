"""The libp2p transport's cost per frame: one write per frame against frames written together.

``python -m bench.transport [--quick] [--json FILE]`` opens two ``Libp2pTransport``s in
one process on loopback (py-libp2p: TCP, Noise, Yamux) and sends ``FRAMES`` frames of
each size from one to the other while the other receives them:

* ``send``: one ``send()`` per frame (one Yamux frame, one Noise message and one socket
  write each), as a node's sender did before it batched;
* ``send_many ×B``: ``send_many()`` of ``B`` frames at a time, as a node's sender hands
  over what is queued for a peer (``kms.node.service.SEND_BATCH_BYTES``) during a
  broadcast round's burst.

The CPU is the process's (``time.process_time``: both ends, sender and receiver, with
trio and libp2p), per frame; the ratio is ``send``'s CPU per frame over the row's, from
the same run. ``--quick``: fewer frames.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import trio
from rich.console import Console
from rich.table import Table

from net.libp2p import Libp2pTransport

SIZES = (200, 1_000, 4_000)
"""Frame sizes, bytes: a relay or digest, an ack or a small payload, a deal for ~100 members."""
BATCHES = (1, 8, 32, 128)
"""Frames per ``send_many`` (1: plain ``send``)."""
FRAMES = 6_000
QUICK_FRAMES = 1_500


@dataclass(frozen=True)
class Row:
    size: int
    batch: int
    frames: int
    seconds: float
    cpu_us_per_frame: float
    frames_per_second: float
    ratio: float
    """``send``'s CPU per frame over this row's (same size, same run)."""


async def _measure(size: int, batch: int, frames: int) -> tuple[float, float]:
    a = Libp2pTransport(bytes([1]) * 32)
    b = Libp2pTransport(bytes([2]) * 32)
    async with a, b:
        a.add_peer(b.local_peer, b.listen_addrs())
        await a.send(b.local_peer, b"warm up")
        await b.receive()
        payload = [bytes([i % 251]) * size for i in range(frames)]

        async def receive_all() -> None:
            for _ in range(frames):
                await b.receive()

        cpu, wall = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_all)
            if batch == 1:
                for frame in payload:
                    await a.send(b.local_peer, frame)
            else:
                for i in range(0, frames, batch):
                    await a.send_many(b.local_peer, payload[i : i + batch])
        return time.process_time() - cpu, time.perf_counter() - wall


def rows(quick: bool) -> list[Row]:
    frames = QUICK_FRAMES if quick else FRAMES
    out: list[Row] = []
    for size in SIZES:
        base = 0.0
        for batch in BATCHES:
            cpu, wall = trio.run(_measure, size, batch, frames)
            per = cpu / frames * 1e6
            base = base or per
            out.append(Row(size, batch, frames, wall, per, frames / wall, base / per))
    return out


def table(result: list[Row]) -> Table:
    t = Table(title="libp2p transport: CPU per frame, both ends in one process (loopback)")
    for col in ("frame bytes", "frames per write", "frames", "CPU µs/frame", "frames/s", "ratio"):
        t.add_column(col, justify="right")
    for r in result:
        t.add_row(
            f"{r.size:,}",
            "send" if r.batch == 1 else f"send_many ×{r.batch}",
            f"{r.frames:,}",
            f"{r.cpu_us_per_frame:.1f}",
            f"{r.frames_per_second:,.0f}",
            f"{r.ratio:.2f}×",
        )
    return t


def as_json(result: list[Row]) -> dict[str, object]:
    return {"rows": [asdict(r) for r in result]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    result = rows(args.quick)
    Console().print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(as_json(result), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
