"""One key-serving node in process, behind its HTTP app, with a counting PCCS.

A committee of three runs its DKG on the mesh once per process; each
:class:`ServedNode` then restarts node 1 from a fresh store holding its
identity, the epoch certificate and its share (as ``kms node run`` does), with
a collateral provider whose PCCS is :class:`CountingPCCS` (``kms.api.pccs``'s
app behind a counter, reached through an ASGI transport), and answers key
requests sent to ``POST /v1/keys`` through an ASGI client on
``kms.api.http.make_app``.
"""

from __future__ import annotations

import functools
import os
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from mesh import Mesh

from kms.api.http import make_app
from kms.api.pccs import make_pccs_app
from kms.api.shed import ShedLimits
from kms.attest import Collateral, CollateralFloor, Verifier
from kms.attest.pccs import CollateralCache, CollateralProvider, PCCSClient
from kms.attest.simulated import SimulatedTEE
from kms.client.core import KeyRequestSession
from kms.node.core import EpochSwitched, NodeConfig, NodeCore
from kms.node.keyrelease import FixedPolicies
from kms.node.release import KeyReleaser
from kms.node.service import NodeService, share_to_bytes
from kms.policy import AppPolicy, Measurement, OwnerKey
from kms.protocol import KeyRefusal, KeyResponse
from kms.store import NodeStore
from kms.store.sealer import TEESealer
from mpc import hpke
from mpc.dkg.messages import Participant
from mpc.ids import ParticipantIndex as PI
from mpc.membership import ChainState, verify_chain
from mpc.sig import CTX_DKG_KEY, SigningKey
from net.transport import TransportStatistics

NOW = 1_800_000_000
MR = {
    name: bytes([i + 1]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
OWNER = OwnerKey.from_seed(bytes(range(32)))
APP = OWNER.app_id()


@dataclass(frozen=True)
class Committee:
    config: NodeConfig
    seeds: tuple[bytes, bytes]
    switched: EpochSwitched
    chain: ChainState
    mpk: bytes


@functools.cache
def committee() -> Committee:
    """A committee of three (threshold 2) after its DKG; node 1's seeds and epoch."""
    rnd = random.Random("served-node")
    seeds = {i: (rnd.randbytes(32), rnd.randbytes(32)) for i in (1, 2, 3)}
    parts = []
    keys = {}
    for i, (ident_seed, dkg_seed) in seeds.items():
        ident = SigningKey.from_seed(ident_seed)
        dkg, dkg_pub = hpke.derive_key_pair(dkg_seed)
        sig = ident.sign(CTX_DKG_KEY, Participant.dkg_key_statement(i, dkg_pub))
        parts.append(Participant(i, ident.verify_key().to_bytes(), dkg_pub, sig))
        keys[i] = (ident, dkg)
    genesis = tuple(parts)
    configs = {
        i: NodeConfig(PI(i), genesis, 2, genesis_start=1.0, delta=0.5, window_period=1000.0)
        for i in seeds
    }
    cores = {PI(i): NodeCore(configs[i], keys[i][0], keys[i][1], rng=rnd.randbytes) for i in seeds}
    mesh = Mesh(cores, seed=3, max_delay=0.15, ticks=[k * 0.25 for k in range(80)])
    mesh.run_until(19.0)
    # Node 1 may learn the certificate from the chain before its own run ends
    # (its first switch then has no share) and adopt its kept share after.
    switched = next(
        e
        for e in reversed(mesh.events[PI(1)])
        if isinstance(e, EpochSwitched) and e.share is not None
    )
    mpk = cores[PI(1)].state.mpk
    chain = verify_chain(cores[PI(1)].chain, mpk=mpk)
    return Committee(configs[1], seeds[1], switched, chain, mpk.to_bytes())


class StubTransport:
    """No peers: the node only answers HTTP."""

    local_peer = "stub"
    max_frame_size = 1 << 20

    def add_peer(self, peer: Any, addrs: Sequence[str]) -> None:
        pass

    def connected_peers(self) -> list[Any]:
        return []

    def set_allowed_peers(self, peers: Any, *, queue_bytes: int | None = None) -> None:
        pass

    def statistics(self) -> TransportStatistics:
        return TransportStatistics()

    async def receive(self) -> Any:
        await trio.sleep_forever()

    async def send(self, peer: Any, frame: bytes) -> None:
        pass

    async def send_many(self, peer: Any, frames: Sequence[bytes]) -> None:
        pass


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.t = now

    def now(self) -> float:
        return float(self.t)


class CountingPCCS:
    """``kms.api.pccs``'s PCCS app, counting requests by path and how many run at once.

    ``serving`` (FMSPC → collateral JSON form) may be changed between requests;
    ``down`` answers 503; while ``gate`` is set to an unset event, every request
    waits for it.
    """

    def __init__(self, serving: Mapping[str, Mapping[str, str]]) -> None:
        self.serving = dict(serving)
        self.down = False
        self.gate: trio.Event | None = None
        self.requests: Counter[str] = Counter()
        self.running = 0
        self.most_running = 0

    @property
    def fetches(self) -> int:
        """Collateral fetches that reached the PCCS (each starts with the PCK CRL)."""
        return self.requests["/sgx/certification/v4/pckcrl"]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.requests[scope["path"]] += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.down:
                app: Any = make_pccs_app({})
            else:
                app = make_pccs_app({k: Collateral.from_dict(v) for k, v in self.serving.items()})
            await app(scope, receive, send)
        finally:
            self.running -= 1


def tee(seed: int, **kwargs: Any) -> SimulatedTEE:
    return SimulatedTEE(random.Random(seed).randbytes, now=NOW, **kwargs)


def policy(*, statuses: Iterable[str] = ("UpToDate",)) -> AppPolicy:
    return AppPolicy.build(
        app_id=APP,
        version=1,
        owner_key=OWNER.public_bytes(),
        measurements=[Measurement.explicit(**MR)],
        kms_mpk=committee().mpk,
        not_before=NOW - 86_400,
        allowed_tcb_statuses=statuses,
        purposes=("app",),
    )


class ServedNode:
    """Node 1, restarted from a fresh store, serving keys over its HTTP app."""

    def __init__(
        self,
        directory: Path,
        pccs: CountingPCCS,
        roots: Sequence[bytes],
        *,
        app_policy: AppPolicy | None = None,
        statuses: Iterable[str] = ("UpToDate", "SWHardeningNeeded"),
        floor: CollateralFloor | None = None,
        fixed: Collateral | None = None,
        use_pccs: bool = True,
        shed: ShedLimits | None = None,
        **limits: Any,
    ) -> None:
        c = committee()
        directory.mkdir(parents=True, exist_ok=True)
        store = NodeStore(directory / "node.db", TEESealer(lambda: bytes(32)))
        store.save_identity(*c.seeds)
        ev = c.switched
        store.switch_epoch(
            ev.epoch,
            ev.certificate.encode(),
            share_to_bytes(ev.share) if ev.share is not None else None,
            b"".join(ev.certificate.public_polynomial),
            b"".join(p.encode() for p in ev.state.committee.members),
        )
        self.clock = Clock()
        self.service = NodeService(
            c.config, store, StubTransport(), {}, clock=self.clock, rng=os.urandom
        )  # type: ignore[arg-type]
        floor = floor or CollateralFloor()
        client = (
            PCCSClient(
                "http://pccs.test",
                cache=CollateralCache(directory / "collateral"),
                transport=httpx.ASGITransport(app=pccs),
                floor=floor,
            )
            if use_pccs
            else None
        )
        self.cache = client.cache if client is not None else None
        self.service.collateral = CollateralProvider(client, fixed=fixed, **limits)
        verifier = Verifier(
            list(roots), simulated_allowed=True, allowed_statuses=statuses, floor=floor
        )
        self.service.releaser = KeyReleaser(c.config.index, self.service.identity, verifier)
        self.service.keys.policy_source = FixedPolicies({APP: app_policy or policy()})
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=make_app(self.service, shed=shed)),
            base_url="http://node",
        )

    def request(
        self, quote_with: SimulatedTEE, *, seed: int, timestamp: int | None = None
    ) -> bytes:
        """A key request for the app, quoted by ``quote_with``, as a CVM sends it."""
        s = KeyRequestSession(
            committee().chain,
            APP,
            (("app", 1),),
            now=self.clock.t if timestamp is None else timestamp,
            rng=random.Random(seed).randbytes,
        )
        s.attach_quote(quote_with.quote(s.report_data, **MR))
        return bytes(s.request.encode())

    async def post(self, raw: bytes) -> KeyResponse | KeyRefusal:
        r = await self.http.post(
            "/v1/keys", content=raw, headers={"content-type": "application/msgpack"}
        )
        if r.status_code == 200:
            return KeyResponse.decode(r.content)
        assert r.status_code in (400, 403, 503), r.status_code
        return KeyRefusal.decode(r.content)

    async def metrics(self) -> str:
        return (await self.http.get("/metrics")).text


def run(test: Any) -> None:
    trio.run(test)


def genuine_node(directory: Path) -> tuple[SimulatedTEE, ServedNode]:
    """A genuine platform and a node whose PCCS serves that platform's collateral."""
    genuine = tee(1)
    pccs = CountingPCCS({genuine.fmspc.hex().upper(): genuine.collateral(NOW)})
    return genuine, ServedNode(directory, pccs, [genuine.root_ca_der])
