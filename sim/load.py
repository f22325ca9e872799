"""Key requests from simulated CVMs, answered by the nodes' real key-release code.

Each request verifies the chain from the first node it reaches (pinned to
the genesis master public key), mints a simulated TDX quote bound to the
request (``kms.attest.simulated``), asks committee members in a random order
through the simulated network, and combines ``t`` partials of one epoch with
``kms.client.core``. A request is served correctly when the combined key is
the genesis secret's: the simulator knows that secret by interpolating
certified genesis shares, as an oracle for the report only.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from kms.attest import Verifier
from kms.attest.simulated import SimulatedTEE
from kms.client.core import KeyRequestSession
from kms.node.release import Admitted, KeyReleaser, Released, release_with
from kms.policy import AppPolicy, Measurement, OwnerKey
from kms.protocol import PurposeVersion
from mpc.cert import EpochCertificate
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.math.poly import interpolate_at
from mpc.math.vss import public_share
from mpc.membership import ChainError, ChainState, verify_chain
from mpc.tkd import KeyId, derive_point_base
from sim.network import CVM, Network
from sim.nodes import SimNode
from sim.scenario import Scenario

UNIX_BASE = 1_800_000_000
"""Virtual time 0 as Unix seconds (quotes, policies and key requests carry Unix time)."""
MR_TD, RTMR0, RTMR1, RTMR2, RTMR3 = (bytes([i]) * 48 for i in range(1, 6))
"""The measurement of the simulated CVMs, which the app's policy admits."""
PURPOSE = ("app", 1)


@dataclass
class KeyRequestRecord:
    at: float
    served: bool
    correct: bool
    asked: int
    wrong_partials: tuple[int, ...]


class LoadWorld(Protocol):
    """What the load reads of the world that runs it (``sim.world.World``)."""

    @property
    def rng_load(self) -> random.Random: ...

    @property
    def pinned_mpk(self) -> G2 | None: ...

    @property
    def nodes(self) -> Mapping[int, SimNode]: ...

    @property
    def network(self) -> Network: ...

    @property
    def now(self) -> float: ...

    @property
    def scenario(self) -> Scenario: ...

    def local_time(self, node: SimNode) -> float: ...


class KeyRequestLoad:
    """The CVM population: one simulated TEE, one app and its policy, requests on demand."""

    def __init__(self, world: LoadWorld) -> None:
        self.world = world
        self._rng = world.rng_load
        self._owner = OwnerKey.from_seed(bytes(32))
        self._tee: SimulatedTEE | None = None
        self._verifier: Verifier | None = None
        self._collateral: object = None
        self._policy: AppPolicy | None = None
        self._releasers: dict[int, KeyReleaser] = {}
        self._chain_cache: dict[tuple[bytes, ...], ChainState] = {}
        self._secret: int | None = None

    def _release_setup(self) -> bool:
        world = self.world
        if world.pinned_mpk is None:
            return False
        if self._tee is None:
            self._tee = SimulatedTEE(self._rng.randbytes, now=UNIX_BASE)
            self._verifier = Verifier([self._tee.root_ca_der], simulated_allowed=True)
            self._collateral = self._tee.collateral(UNIX_BASE)
            self._policy = AppPolicy.build(
                app_id=self._owner.app_id(),
                version=1,
                owner_key=self._owner.public_bytes(),
                measurements=[
                    Measurement.explicit(
                        mr_td=MR_TD, rtmr0=RTMR0, rtmr1=RTMR1, rtmr2=RTMR2, rtmr3=RTMR3
                    )
                ],
                kms_mpk=world.pinned_mpk.to_bytes(),
                not_before=UNIX_BASE - 60,
                expires=UNIX_BASE + 10 * 365 * 86400,
            )
        return True

    def _releaser(self, node: SimNode) -> KeyReleaser:
        r = self._releasers.get(node.index)
        if r is None:
            verifier = self._verifier
            if verifier is None:  # pragma: no cover - _release_setup ran first
                raise RuntimeError("key release is not set up")
            r = KeyReleaser(ParticipantIndex(node.index), node.keys.identity, verifier)
            self._releasers[node.index] = r
        return r

    def _client_chain(self) -> ChainState | None:
        """The CVM fetches the chain from the first node that answers and verifies it."""
        world = self.world
        if world.pinned_mpk is None:
            return None
        for i in sorted(world.nodes):
            node = world.nodes[i]
            if node.core is None or not node.core.chain:
                continue
            if not world.network.connected(CVM, i):
                continue
            key = tuple(x.fingerprint() for x in node.core.chain)
            st = self._chain_cache.get(key)
            if st is None:
                try:
                    st = verify_chain(node.core.chain, mpk=world.pinned_mpk)
                except (ChainError, ValueError):
                    continue
                self._chain_cache[key] = st
            return st
        return None

    def _reference_secret(self) -> int | None:
        """The genesis secret, interpolated from genesis shares that match the certified
        public polynomial (an oracle for checking keys; no node ever computes it)."""
        world = self.world
        if self._secret is not None:
            return self._secret
        genesis: EpochCertificate | None = None
        shares: list[tuple[ParticipantIndex, int]] = []
        for i in sorted(world.nodes):
            store = world.nodes[i].store
            if genesis is None:
                genesis = store.genesis()
            share = store.share_of(0)
            if share is not None:
                shares.append((ParticipantIndex(i), share.value.value))
        if genesis is None:
            return None
        poly = [G2.from_bytes(b) for b in genesis.public_polynomial]
        good = [(i, v) for i, v in shares if v * G2.generator() == public_share(poly, int(i))]
        if len(good) < genesis.transcript.threshold:
            return None
        self._secret = interpolate_at(good[: genesis.transcript.threshold])
        return self._secret

    def request(self) -> KeyRequestRecord:
        """One key request at the world's current time."""
        world = self.world
        now = world.now
        state = self._client_chain() if self._release_setup() else None
        if state is None:
            return KeyRequestRecord(now, False, False, 0, ())
        tee = self._tee
        if tee is None:  # pragma: no cover - set up above
            return KeyRequestRecord(now, False, False, 0, ())
        session = KeyRequestSession(
            state,
            self._owner.app_id(),
            [PURPOSE],
            now=UNIX_BASE + int(now),
            rng=self._rng.randbytes,
        )
        request = session.attach_quote(
            tee.quote(
                session.report_data, mr_td=MR_TD, rtmr0=RTMR0, rtmr1=RTMR1, rtmr2=RTMR2, rtmr3=RTMR3
            )
        )
        raw = request.encode()
        timeout = world.scenario.load.timeout
        asked = 0
        order = list(state.committee.indices)
        self._rng.shuffle(order)  # CVMs spread their requests over the committee
        for idx in order:
            if session.done:
                break
            node = world.nodes.get(int(idx))
            asked += 1
            if node is None or node.core is None or node.core.state is None:
                continue
            there = world.network.route(CVM, int(idx), len(raw), now)
            if not there:
                continue
            core = node.core
            share = core.share
            if share is not None and node.corrupt_in(core.state.epoch if core.state else None):
                for b in node.behaviours:
                    share = b.release_share(share)
            res = release_with(
                self._releaser(node),
                request,
                now=UNIX_BASE + int(world.local_time(node)),
                epoch=core.state.epoch if core.state else 0,
                share=share,
                nonce_seen=request.body.nonce in node.nonces,
                app=Admitted(self._policy),
                collateral=self._collateral,  # type: ignore[arg-type]
                rng=node.rng.randbytes,
            )
            answer = res.response if isinstance(res, Released) else res.refusal
            back = world.network.route(int(idx), CVM, len(answer.encode()), there[0])
            if not back or back[0] - now > timeout:
                continue
            if isinstance(res, Released):
                node.nonces.add(res.nonce)
            session.receive(idx, answer)
        wrong = tuple(sorted({int(r.index) for r in session.rejected if r.evidence is not None}))
        served = session.done
        correct = False
        if served:
            derived = session.derived()[PurposeVersion(*PURPOSE)]
            secret = self._reference_secret()
            key_id = KeyId(self._owner.app_id(), *PURPOSE)
            correct = secret is not None and derived.point == secret * derive_point_base(key_id)
        return KeyRequestRecord(now, served, correct, asked, wrong)
