"""A node hands the frames queued for one peer to the transport together (``send_many``):
four ``NodeService`` instances over ``net.memory`` on trio's MockClock, each transport
wrapped to record what it is given, certify the genesis in the first attempt with every
frame delivered in the order its node queued it, and the broadcast rounds' bursts go out
in batches no larger than ``SEND_BATCH_BYTES`` (plus the frame that crossed it)."""

from __future__ import annotations

import types
from collections.abc import Sequence
from pathlib import Path

import trio
from service_genesis import run_genesis

from kms.node.metrics import NodeMetrics
from kms.node.service import SEND_BATCH_BYTES, NodeService
from mpc.dkg.schedule import Schedule
from mpc.ids import ParticipantIndex as PI
from mpc.ids import PeerId
from net.delay import DelayedTransport
from net.memory import MemoryNetwork, MemoryTransport

N, T, DELTA, START = 4, 3, 0.25, 5.0


class Recording(DelayedTransport):
    """The inner transport with no delay, recording every batch (``send`` is one of one)."""

    def __init__(self, inner: MemoryTransport) -> None:
        super().__init__(inner, 0.0)
        self.batches: list[tuple[PeerId, list[bytes]]] = []

    async def send(self, peer: PeerId, frame: bytes) -> None:
        self.batches.append((peer, [frame]))
        await super().send(peer, frame)

    async def send_many(self, peer: PeerId, frames: Sequence[bytes]) -> None:
        self.batches.append((peer, list(frames)))
        await super().send_many(peer, frames)


def test_queued_frames_go_out_in_batches_and_the_dkg_certifies(tmp_path: Path) -> None:
    recorders: dict[int, Recording] = {}
    received: dict[tuple[PeerId, PeerId], list[bytes]] = {}
    first = Schedule.default(START, N, T, delta=DELTA)

    def wrap(i: int, inner: MemoryTransport) -> Recording:
        original = inner.receive

        async def receive() -> tuple[PeerId, bytes]:
            sender, frame = await original()
            received.setdefault((sender, inner.local_peer), []).append(frame)
            return sender, frame

        inner.receive = receive  # type: ignore[method-assign]
        recorders[i] = Recording(inner)
        return recorders[i]

    # After the last share, 5 Δ more: frames still in flight arrive.
    services, done_at = run_genesis(
        tmp_path, "send-batches", N, T, delta=DELTA, start=START, wrap=wrap, settle=5 * DELTA
    )
    assert max(done_at.values()) < first.end, (done_at, first.end)
    states = [s.core.state for s in services.values()]
    assert len({st.mpk.to_bytes() for st in states if st is not None}) == 1
    sizes = [len(frames) for r in recorders.values() for _, frames in r.batches]
    assert max(sizes) > 1, "no frames were ever sent together"
    for r in recorders.values():
        for _, frames in r.batches:
            assert sum(map(len, frames[:-1])) < SEND_BATCH_BYTES
        # What each peer received from this node is what it was handed, in that order;
        # the memory transport refuses a frame to a peer whose transport is not open yet
        # (the nodes start one after another) and the last may be in flight at the end.
        by_peer: dict[PeerId, list[bytes]] = {}
        for peer, frames in r.batches:
            by_peer.setdefault(peer, []).extend(frames)
        for peer, frames in by_peer.items():
            if peer == r.local_peer:
                continue
            got = received.get((r.local_peer, peer), [])
            rest = iter(frames)
            assert all(any(f == g for f in rest) for g in got), "reordered or altered"
            assert len(got) >= len(frames) - 2, (len(got), len(frames))


def test_a_batch_that_fails_part_way_counts_the_frames_that_went_out_as_sent() -> None:
    """The peer goes off the network after taking 3 of the 10 frames queued for it (it
    crashed mid-batch): the node counts 3 frames sent to it and 7 send failures."""

    async def main() -> None:
        network = MemoryNetwork()
        async with MemoryTransport(network, "peerA") as a, MemoryTransport(network, "peerB") as b:
            metrics = NodeMetrics()
            metrics.set_members([2])
            real_send = a.send
            taken: list[bytes] = []

            async def send(peer: PeerId, frame: bytes) -> None:
                if len(taken) == 3:
                    await b.aclose()
                await real_send(peer, frame)
                taken.append(frame)

            a.send = send  # type: ignore[method-assign]
            service = types.SimpleNamespace(
                _queued_bytes={PI(2): 1_000},
                transport=a,
                metrics=metrics,
                driver=types.SimpleNamespace(peer_of=lambda i: "peerB"),
            )
            s, r = trio.open_memory_channel[bytes](16)
            for i in range(10):
                s.send_nowait(bytes([i]) * 100)
            s.close()
            await NodeService._sender(service, PI(2), r)  # type: ignore[arg-type]
            assert len(taken) == 3
            assert metrics.send_failures == 7
            assert metrics.peer_messages_out == {2: 3}
            assert service._queued_bytes == {PI(2): 0}

    trio.run(main)
