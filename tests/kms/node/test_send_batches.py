"""A node hands the frames queued for one peer to the transport together (``send_many``):
four ``NodeService`` instances over ``net.memory`` on trio's MockClock, each transport
wrapped to record what it is given, certify the genesis in the first attempt with every
frame delivered in the order its node queued it, and the broadcast rounds' bursts go out
in batches no larger than ``SEND_BATCH_BYTES`` (plus the frame that crossed it)."""

from __future__ import annotations

import random
import types
from collections.abc import Collection, Sequence
from pathlib import Path

import trio
import trio.testing

from kms.app.testing import participant
from kms.node.core import NodeConfig
from kms.node.metrics import NodeMetrics
from kms.node.service import SEND_BATCH_BYTES, NodeService, TrioClock
from kms.store import NodeStore, TEESealer
from mpc.dkg.schedule import Schedule
from mpc.ids import ParticipantIndex as PI
from mpc.ids import PeerId
from mpc.sig import SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519
from net.transport import TransportStatistics

N, T, DELTA, START = 4, 3, 0.25, 5.0


class Recording:
    """A transport that records every batch (``send`` is a batch of one) and passes it on."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.batches: list[tuple[PeerId, list[bytes]]] = []

    @property
    def local_peer(self) -> PeerId:
        return self.inner.local_peer

    @property
    def max_frame_size(self) -> int:
        return self.inner.max_frame_size

    async def send(self, peer: PeerId, frame: bytes) -> None:
        self.batches.append((peer, [frame]))
        await self.inner.send(peer, frame)

    async def send_many(self, peer: PeerId, frames: Sequence[bytes]) -> None:
        self.batches.append((peer, list(frames)))
        await self.inner.send_many(peer, frames)

    async def receive(self) -> tuple[PeerId, bytes]:
        return await self.inner.receive()

    def add_peer(self, peer: PeerId, addrs: Sequence[str]) -> None:
        self.inner.add_peer(peer, addrs)

    def connected_peers(self) -> list[PeerId]:
        return self.inner.connected_peers()

    def set_allowed_peers(
        self, peers: Collection[PeerId] | None, *, queue_bytes: int | None = None
    ) -> None:
        self.inner.set_allowed_peers(peers, queue_bytes=queue_bytes)

    def statistics(self) -> TransportStatistics:
        return self.inner.statistics()


def test_queued_frames_go_out_in_batches_and_the_dkg_certifies(tmp_path: Path) -> None:
    rnd = random.Random("send-batches")
    seeds = {i: (rnd.randbytes(32), rnd.randbytes(32)) for i in range(1, N + 1)}
    genesis = tuple(participant(i, *seed)[2] for i, seed in seeds.items())
    services: dict[int, NodeService] = {}
    recorders: dict[int, Recording] = {}
    received: dict[tuple[PeerId, PeerId], list[bytes]] = {}
    first = Schedule.default(START, N, T, delta=DELTA)
    done_at: dict[int, float] = {}

    async def main() -> None:
        network = MemoryNetwork()
        clock = TrioClock(0.0)
        stores = []
        async with trio.open_nursery() as nursery:
            for i in seeds:
                cfg = NodeConfig(
                    PI(i), genesis, T, genesis_start=START, delta=DELTA, window_period=1e9
                )
                store = NodeStore(tmp_path / f"node-{i}.db", TEESealer(lambda: bytes(32)))
                store.save_identity(*seeds[i])
                stores.append(store)
                ident = SigningKey.from_seed(seeds[i][0])
                inner = MemoryTransport(
                    network, peer_id_from_ed25519(ident.verify_key().to_bytes())
                )
                await inner.__aenter__()
                recorder = Recording(inner)
                original = inner.receive

                async def receive(
                    original: object = original, me: PeerId = inner.local_peer
                ) -> tuple[PeerId, bytes]:
                    sender, frame = await original()  # type: ignore[operator]
                    received.setdefault((sender, me), []).append(frame)
                    return sender, frame  # type: ignore[no-any-return]

                inner.receive = receive  # type: ignore[method-assign]
                recorders[i] = recorder
                services[i] = NodeService(cfg, store, recorder, {}, clock=clock)  # type: ignore[arg-type]
                await nursery.start(services[i].run)
            with trio.fail_after(120):
                while len(done_at) < N:
                    for i, s in services.items():
                        if i not in done_at and s.core.state is not None and s.core.share:
                            done_at[i] = trio.current_time()
                    await trio.sleep(0.05)
            await trio.sleep(5 * DELTA)  # frames still in flight arrive
            nursery.cancel_scope.cancel()
        for store in stores:
            store.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
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
