"""Nodes as the service runs them, on the mesh: each a real ``NodeService`` (its event
handling and its SQLite ``NodeStore``) around its ``NodeCore``, messages through the codec.
A restart builds a new service on the same store, as ``kms node run`` does."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mesh import Mesh

from kms.node.core import NodeConfig, NodeCore
from kms.node.service import NodeService
from kms.store import NodeStore, TEESealer
from mpc import hpke
from mpc.dkg.messages import Participant
from mpc.ids import ParticipantIndex as PI
from mpc.sig import CTX_DKG_KEY, SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519

DELTA = 0.5


class StoredNode:
    """A node service driven by the mesh: the core's events are stored by the service."""

    def __init__(self, service: NodeService) -> None:
        self.service = service

    @property
    def core(self) -> NodeCore:
        return self.service.core

    def advance_time(self, now: float) -> None:
        self.core.advance_time(now)

    def receive(self, peer: PI, message: Any, now: float) -> None:
        self.core.receive(peer, message, now)

    def events(self) -> list[object]:
        evs = self.core.events()
        self.service.apply_events(evs)
        return evs

    def messages_to_send(self) -> list[Any]:
        return self.core.messages_to_send()


class Committee:
    def __init__(self, root: Path, n: int, t: int, seed: int, *, period: float = 1000.0) -> None:
        rnd = random.Random(f"keep-{seed}")
        self.root = root
        self.seeds: dict[PI, tuple[bytes, bytes]] = {}
        parts = []
        for i in range(1, n + 1):
            ident_seed, dkg_seed = rnd.randbytes(32), rnd.randbytes(32)
            ident = SigningKey.from_seed(ident_seed)
            _, dkg_pub = hpke.derive_key_pair(dkg_seed)
            sig = ident.sign(CTX_DKG_KEY, Participant.dkg_key_statement(i, dkg_pub))
            parts.append(Participant(i, ident.verify_key().to_bytes(), dkg_pub, sig))
            self.seeds[PI(i)] = (ident_seed, dkg_seed)
        self.genesis = tuple(parts)
        self.t = t
        self.configs = {
            PI(i): NodeConfig(
                PI(i),
                self.genesis,
                t,
                genesis_start=1.0,
                delta=DELTA,
                window_period=period,
                window_length=2.0,
            )
            for i in range(1, n + 1)
        }
        self.stores: dict[PI, NodeStore] = {}
        self.nodes: dict[PI, StoredNode] = {}
        for i in self.configs:
            store = NodeStore(root / f"node{int(i)}.db", TEESealer(lambda: bytes(32)))
            store.save_identity(*self.seeds[i])
            self.stores[i] = store
            self.nodes[i] = self.start(i, seed)

    def start(self, i: PI, seed: int) -> StoredNode:
        """A fresh service on node ``i``'s store (a process start or restart)."""
        ident = SigningKey.from_seed(self.seeds[i][0])
        pid = peer_id_from_ed25519(ident.verify_key().to_bytes())
        service = NodeService(
            self.configs[i],
            self.stores[i],
            MemoryTransport(MemoryNetwork(), pid),
            {},
            rng=random.Random(f"rng-{seed}-{int(i)}-{len(self.stores)}").randbytes,
        )
        return StoredNode(service)

    def restart(self, mesh: Mesh, indices: Iterable[PI], seed: int) -> None:
        for i in indices:
            node = self.start(i, seed + 1000)
            self.nodes[i] = node
            mesh.sessions[i] = node

    def wipe(self, mesh: Mesh, indices: Iterable[PI], seed: int) -> None:
        """Delete the nodes' data directories but the identity, then start them."""
        for i in indices:
            self.stores[i].close()
            path = self.root / f"node{int(i)}.db"
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            store = NodeStore(path, TEESealer(lambda: bytes(32)))
            store.save_identity(*self.seeds[i])
            self.stores[i] = store
        self.restart(mesh, indices, seed)

    def core(self, i: int) -> NodeCore:
        return self.nodes[PI(i)].core

    def close(self) -> None:
        for s in self.stores.values():
            s.close()


def mesh_for(c: Committee, route: Callable[[PI, PI, Any, float], list[float] | None]) -> Mesh:
    ticks = [k * 0.25 for k in range(int(400 / 0.25) + 1)]
    return Mesh(c.nodes, seed=1, max_delay=DELTA / 3, route=route, ticks=ticks)  # type: ignore[arg-type]
