"""A genesis DKG of ``NodeService`` instances over ``net.memory`` on trio's MockClock, each
transport wrapped as a test needs (``tests/kms/node/test_delayed_links.py``,
``test_send_batches.py``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import trio
import trio.testing

from kms.app.testing import participant
from kms.node.core import NodeConfig
from kms.node.service import NodeService, TrioClock
from kms.store import NodeStore, TEESealer
from mpc.ids import ParticipantIndex as PI
from mpc.sig import SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519
from net.transport import Transport


def run_genesis(
    tmp_path: Path,
    label: str,
    n: int,
    t: int,
    *,
    delta: float,
    start: float,
    wrap: Callable[[int, MemoryTransport], Transport],
    settle: float = 0.0,
) -> tuple[dict[int, NodeService], dict[int, float]]:
    """Run ``n`` services until each holds a share of epoch 0 (then ``settle`` virtual
    seconds more); each service's transport is ``wrap(index, memory transport)``. Returns
    the services and the virtual time at which each had its share."""
    rnd = random.Random(label)
    seeds = {i: (rnd.randbytes(32), rnd.randbytes(32)) for i in range(1, n + 1)}
    genesis = tuple(participant(i, *seed)[2] for i, seed in seeds.items())
    services: dict[int, NodeService] = {}
    done_at: dict[int, float] = {}

    async def main() -> None:
        network = MemoryNetwork()
        clock = TrioClock(0.0)
        stores = []
        async with trio.open_nursery() as nursery:
            for i in seeds:
                cfg = NodeConfig(
                    PI(i), genesis, t, genesis_start=start, delta=delta, window_period=1e9
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
                svc.transport = wrap(i, inner)
                services[i] = svc
                await nursery.start(svc.run)
            with trio.fail_after(120):
                while len(done_at) < n:
                    for i, s in services.items():
                        if i not in done_at and s.core.state is not None and s.core.share:
                            done_at[i] = trio.current_time()
                    await trio.sleep(0.05)
            await trio.sleep(settle)
            nursery.cancel_scope.cancel()
        for store in stores:
            store.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return services, done_at
