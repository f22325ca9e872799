"""A committee of node cores that certified its genesis epoch on the in-memory mesh."""

from __future__ import annotations

import random

from mesh import Mesh, Node, make_nodes

from kms.node.core import NodeConfig, NodeCore
from mpc.ids import ParticipantIndex as PI


def genesis_cores(
    n: int, t: int, *, key_seed: int, rng_seed: int, mesh_seed: int
) -> tuple[dict[PI, Node], dict[PI, NodeCore], random.Random]:
    """``n`` members with threshold ``t`` run the genesis DKG to its certificate; the
    generator their cores drew from is returned for the rest of the fixture."""
    nodes = make_nodes(range(1, n + 1), key_seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, n + 1))
    rng = random.Random(rng_seed)
    cores = {
        PI(i): NodeCore(
            NodeConfig(PI(i), genesis, t, genesis_start=1.0, delta=0.5, window_period=1000.0),
            nodes[PI(i)].identity,
            nodes[PI(i)].dkg_key,
            rng=rng.randbytes,
        )
        for i in range(1, n + 1)
    }
    Mesh(cores, seed=mesh_seed, max_delay=0.15, ticks=[k * 0.25 for k in range(160)]).run_until(
        38.0
    )
    return nodes, cores, rng
