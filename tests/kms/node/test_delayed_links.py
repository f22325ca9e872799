"""A genesis DKG whose every node holds each received frame 10 ms (``net.delay``), as the
fault lab's scale runs do: four ``NodeService`` instances over ``net.memory`` on trio's
MockClock certify epoch 0 in the first attempt, every member with a share."""

from __future__ import annotations

import random
from pathlib import Path

import trio
import trio.testing

from kms.app.testing import participant
from kms.node.core import NodeConfig
from kms.node.service import NodeService, TrioClock
from kms.store import NodeStore, TEESealer
from mpc.dkg.schedule import Schedule
from mpc.ids import ParticipantIndex as PI
from mpc.sig import SigningKey
from net.delay import DelayedTransport
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519

N, T, DELTA, START = 4, 3, 0.25, 5.0


def test_a_dkg_with_delayed_receipt_certifies_in_its_first_attempt(tmp_path: Path) -> None:
    rnd = random.Random("delayed-links")
    seeds = {i: (rnd.randbytes(32), rnd.randbytes(32)) for i in range(1, N + 1)}
    genesis = tuple(participant(i, *seed)[2] for i, seed in seeds.items())
    services: dict[int, NodeService] = {}
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
                svc = NodeService(cfg, store, inner, {}, clock=clock)
                svc.transport = DelayedTransport(inner, 0.010)
                services[i] = svc
                await nursery.start(svc.run)
            with trio.fail_after(120):
                while len(done_at) < N:
                    for i, s in services.items():
                        if i not in done_at and s.core.state is not None and s.core.share:
                            done_at[i] = trio.current_time()
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        for store in stores:
            store.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert max(done_at.values()) < first.end, (done_at, first.end)
