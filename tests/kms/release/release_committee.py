"""A committee of node cores that certified its genesis epoch on the in-memory mesh, and
the key-release pipeline of one node with its inputs at hand."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from mesh import Mesh, Node, make_nodes

from kms.attest import Verifier
from kms.node.core import NodeConfig, NodeCore
from kms.node.release import (
    DEFAULT_MAX_SKEW,
    Admitted,
    KeyRefusalReason,
    KeyReleaser,
    Released,
    ReleaseRefused,
    refuse,
    release_with,
)
from kms.policy import AppPolicy
from kms.protocol import KeyRequest
from mpc.codec import MessageDecodeError
from mpc.ids import ParticipantIndex as PI
from mpc.secret import RNG, SecretShare
from mpc.sig import SigningKey


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


class InProcessReleaser:
    """A node's release pipeline (``kms.node.release``) with the inputs an in-process test
    gives every request at hand: one collateral and a fixed set of admitted policies. It
    decodes the request as the HTTP app does, then runs the pipeline on values."""

    def __init__(
        self,
        index: PI,
        identity: SigningKey,
        verifier: Verifier,
        collateral: object,
        policies: Mapping[bytes, AppPolicy],
        *,
        rng: RNG,
        max_skew: int = DEFAULT_MAX_SKEW,
    ) -> None:
        self.releaser = KeyReleaser(index, identity, verifier, max_skew=max_skew)
        self.rng = rng
        self.collateral = collateral
        self.policies = dict(policies)

    def handle(
        self,
        raw: bytes,
        *,
        now: int,
        epoch: int,
        share: SecretShare | None,
        seen_nonce: Callable[[bytes], bool] = lambda n: False,
    ) -> Released | ReleaseRefused:
        try:
            request = KeyRequest.decode(raw)
        except MessageDecodeError as exc:
            return refuse(KeyRefusalReason.MALFORMED, str(exc))
        return release_with(
            self.releaser,
            request,
            now=now,
            epoch=epoch,
            share=share,
            nonce_seen=seen_nonce(bytes(request.body.nonce)),
            app=Admitted(self.policies.get(bytes(request.body.app_id))),
            collateral=self.collateral,  # type: ignore[arg-type]
            rng=self.rng,
        )
