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


async def memory_node(
    tmp_path: Path,
    cfg: NodeConfig,
    seed: tuple[bytes, bytes],
    network: MemoryNetwork,
    clock: TrioClock,
) -> tuple[NodeService, NodeStore, MemoryTransport]:
    """A ``NodeService`` for ``cfg`` with its identity from ``seed``, its store under
    ``tmp_path`` and an open transport on ``network`` (the caller closes the store)."""
    store = NodeStore(tmp_path / f"node-{int(cfg.index)}.db", TEESealer(lambda: bytes(32)))
    store.save_identity(*seed)
    ident = SigningKey.from_seed(seed[0])
    transport = MemoryTransport(network, peer_id_from_ed25519(ident.verify_key().to_bytes()))
    await transport.__aenter__()
    return NodeService(cfg, store, transport, {}, clock=clock), store, transport


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
                svc, store, inner = await memory_node(tmp_path, cfg, seeds[i], network, clock)
                stores.append(store)
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
