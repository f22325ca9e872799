"""An in-process committee for tests and benchmarks: real ``NodeService`` instances on
``net.memory``, their HTTP apps (``kms.api.http.make_app``) reached through an ASGI
client, the simulated TEE, and a new-app policy flood that both the tests and
``bench`` run.

Nothing here is used by a running node.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from kms.api.http import make_app
from kms.attest import Verifier
from kms.attest.simulated import SimulatedTEE
from kms.client.appcert import AppKeyCertSession
from kms.client.core import KeyRequestSession
from kms.node.core import NodeCore
from kms.node.keyrelease import FixedCollateral
from kms.node.model import NodeConfig
from kms.node.policies import NodePolicies
from kms.node.release import KeyReleaser
from kms.node.service import NodeService
from kms.policy import (
    AppPolicy,
    Measurement,
    OwnerKey,
    Pins,
    PolicyBundle,
    RotationRecord,
    build_event_log,
    dstack_boot_events,
)
from kms.protocol import (
    AppKeyCertRequest,
    AppKeyCertShare,
    KeyRefusal,
    KeyRequest,
    KeyResponse,
)
from kms.store import NodeStore, TEESealer
from mpc import hpke
from mpc.codec import decode
from mpc.dkg.messages import Participant
from mpc.ids import ParticipantIndex
from mpc.membership import ChainState, verify_chain
from mpc.sig import CTX_DKG_KEY, SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519

NOW = 1_800_000_000
"""The committee's wall clock starts here (Unix seconds)."""

MEASUREMENT = {
    name: bytes([i + 1]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
"""A CVM image with a fixed RTMR3 and no event log (it measured no app id)."""

COMPOSE_HASH = hashlib.sha256(b"the test apps' compose file").digest()


def participant(
    index: int, identity_seed: bytes, dkg_seed: bytes
) -> tuple[SigningKey, hpke.PrivateKey, Participant]:
    """Member ``index``'s identity key, DKG key and the participant record that binds
    them (its DKG key signed by its identity), from two 32-byte seeds."""
    ident = SigningKey.from_seed(identity_seed)
    dkg, pub = hpke.derive_key_pair(dkg_seed)
    sig = ident.sign(CTX_DKG_KEY, Participant.dkg_key_statement(index, pub))
    return ident, dkg, Participant(index, ident.verify_key().to_bytes(), pub, sig)


def app_boot(app_id: bytes) -> tuple[bytes, dict[str, bytes]]:
    """The RTMR3 event log of a dstack CVM booted for ``app_id`` with ``COMPOSE_HASH``,
    and its registers (``MEASUREMENT`` with the RTMR3 the log replays to)."""
    log, rtmr3 = build_event_log(dstack_boot_events(app_id=app_id, compose_hash=COMPOSE_HASH))
    return log.encode(), {**MEASUREMENT, "rtmr3": rtmr3}


_SEALER_KEY = bytes(range(32))


class SettableClock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.t = now

    def now(self) -> float:
        return self.t


def _run_dkg(
    configs: dict[ParticipantIndex, tuple[NodeConfig, SigningKey, Any]],
) -> dict[ParticipantIndex, NodeCore]:
    """Genesis DKG among fresh cores, delivering every message at once on a virtual clock."""
    rng = random.Random(1)
    cores = {
        i: NodeCore(cfg, ident, dkg, rng=rng.randbytes) for i, (cfg, ident, dkg) in configs.items()
    }
    start = next(iter(configs.values()))[0].genesis_start
    t = start
    while t < start + 60.0:
        for c in cores.values():
            c.advance_time(t)
        pending = [(i, ob) for i, c in cores.items() for ob in c.messages_to_send()]
        # Ticks well within Δ/4 of each other: every member stays live through the run.
        t += 0.02
        while pending:  # first in, first delivered
            sender, ob = pending.pop(0)
            if ob.to in cores:
                cores[ob.to].receive(sender, decode(ob.message.encode()), t)
            for i, c in cores.items():
                c.events()
                pending.extend((i, o) for o in c.messages_to_send())
        if all(c.state is not None and c.share is not None for c in cores.values()):
            break
        t += 0.03
    if not all(c.state is not None and c.share is not None for c in cores.values()):
        raise RuntimeError("the in-process DKG did not finish")
    for c in cores.values():
        c.events()
    return cores


@dataclass
class LocalCommittee:
    """``n`` nodes with shares, serving keys and policies, on one memory network."""

    services: dict[int, NodeService]
    clients: dict[int, httpx.AsyncClient]
    tee: SimulatedTEE
    chain: ChainState
    mpk: bytes
    clock: SettableClock
    network: MemoryNetwork
    stores: dict[int, Path]
    policies: dict[int, NodePolicies] = field(default_factory=dict)

    def store_bytes(self, index: int) -> int:
        """Bytes of the node's store in use (pages in use, WAL included, free pages not)."""
        with closing(sqlite3.connect(f"file:{self.stores[index]}?mode=ro", uri=True)) as db:
            size = db.execute("PRAGMA page_size").fetchone()[0]
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(size) * (int(pages) - int(free))

    async def post_policy(self, index: int, bundle: bytes) -> httpx.Response:
        return await self.clients[index].post("/v1/policies", content=bundle)

    async def fetch_keys(
        self,
        app_id: bytes,
        *,
        bundle: bytes = b"",
        purposes: Sequence[tuple[str, int]] = (("app", 1),),
        nodes: Sequence[int] | None = None,
        measurement: dict[str, bytes] | None = None,
        event_log: bytes = b"",
        retry: bool = True,
    ) -> tuple[KeyRequestSession, dict[int, KeyResponse | KeyRefusal]]:
        """A CVM's key request to ``nodes`` (all by default), through each node's HTTP app.

        By default the CVM is booted for ``app_id`` (:func:`app_boot`: its event log
        carries the app id); ``measurement`` (and ``event_log``) quote another CVM.
        Like ``kms.client``, asks again (a fresh request) while nodes answer ``retry-later``
        (they are asking the committee about an app they have not admitted), for up to 5 s,
        unless ``retry`` is false.
        """
        if measurement is None:
            event_log, measurement = app_boot(app_id)
        deadline = trio.current_time() + 5.0
        while True:
            s, answers = await self._fetch_once(
                app_id, bundle, purposes, nodes, measurement, event_log
            )
            asked_again = any(
                isinstance(a, KeyRefusal) and a.reason == "retry-later" for a in answers.values()
            )
            if s.done or not retry or not asked_again or trio.current_time() > deadline:
                return s, answers
            await trio.sleep(0.02)

    def key_request(
        self,
        app_id: bytes,
        *,
        bundle: bytes = b"",
        purposes: Sequence[tuple[str, int]] = (("app", 1),),
        measurement: dict[str, bytes] | None = None,
        event_log: bytes = b"",
    ) -> tuple[KeyRequestSession, KeyRequest]:
        """A CVM's key request, quoted by the committee's simulated TEE (by default from a
        CVM booted for ``app_id``, :func:`app_boot`), and the session that reads answers."""
        if measurement is None:
            event_log, measurement = app_boot(app_id)
        s = KeyRequestSession(
            self.chain,
            app_id,
            purposes,
            now=int(self.clock.now()),
            rng=os.urandom,
            bundle=bundle,
        )
        m = measurement
        quote = self.tee.quote(
            s.report_data,
            mr_td=m["mr_td"],
            rtmr0=m["rtmr0"],
            rtmr1=m["rtmr1"],
            rtmr2=m["rtmr2"],
            rtmr3=m["rtmr3"],
        )
        return s, s.attach_quote(quote, event_log)

    def cert_request(
        self,
        app_id: bytes,
        root_public: bytes,
        *,
        version: int = 1,
        bundle: bytes = b"",
        measurement: dict[str, bytes] | None = None,
        event_log: bytes = b"",
    ) -> tuple[AppKeyCertSession, AppKeyCertRequest]:
        """A CVM's app-key certificate request for ``root_public``, quoted by the
        committee's simulated TEE (by default from a CVM booted for ``app_id``)."""
        if measurement is None:
            event_log, measurement = app_boot(app_id)
        s = AppKeyCertSession(
            self.chain,
            app_id,
            version,
            root_public,
            now=int(self.clock.now()),
            rng=os.urandom,
            bundle=bundle,
        )
        m = measurement
        quote = self.tee.quote(
            s.report_data,
            mr_td=m["mr_td"],
            rtmr0=m["rtmr0"],
            rtmr1=m["rtmr1"],
            rtmr2=m["rtmr2"],
            rtmr3=m["rtmr3"],
        )
        return s, s.attach_quote(quote, event_log)

    async def post_cert(
        self, index: int, request: AppKeyCertRequest | bytes
    ) -> tuple[int, AppKeyCertShare | KeyRefusal]:
        """``POST /v1/app-key-cert`` to node ``index``: the status and the decoded answer."""
        raw = request if isinstance(request, bytes) else request.encode()
        r = await self.clients[index].post(
            "/v1/app-key-cert", content=raw, headers={"content-type": "application/msgpack"}
        )
        answer = decode(r.content)
        if not isinstance(answer, AppKeyCertShare | KeyRefusal):
            raise TypeError(f"unexpected answer {type(answer).__name__}")
        return r.status_code, answer

    def blocking_transport(self) -> httpx.BaseTransport:
        """A synchronous ``httpx`` transport to the nodes' apps at ``http://node-<i>``, for
        blocking clients (``kms.client.http.KeyClient``) run in a thread of this trio run
        (``trio.to_thread.run_sync``)."""
        return _TrioBridge(self.clients, trio.lowlevel.current_trio_token())

    async def _fetch_once(
        self,
        app_id: bytes,
        bundle: bytes,
        purposes: Sequence[tuple[str, int]],
        nodes: Sequence[int] | None,
        measurement: dict[str, bytes],
        event_log: bytes,
    ) -> tuple[KeyRequestSession, dict[int, KeyResponse | KeyRefusal]]:
        s, req = self.key_request(
            app_id, bundle=bundle, purposes=purposes, measurement=measurement, event_log=event_log
        )
        answers: dict[int, KeyResponse | KeyRefusal] = {}
        for i in nodes or sorted(self.services):
            r = await self.clients[i].post(
                "/v1/keys", content=req.encode(), headers={"content-type": "application/msgpack"}
            )
            answer = decode(r.content)
            if not isinstance(answer, KeyResponse | KeyRefusal):
                raise TypeError(f"unexpected answer {type(answer).__name__}")
            answers[i] = answer
            s.receive(ParticipantIndex(i), answer)
        return s, answers


class _TrioBridge(httpx.BaseTransport):
    """Blocking requests carried into the trio run to the nodes' ASGI clients."""

    def __init__(self, clients: dict[int, httpx.AsyncClient], token: trio.lowlevel.TrioToken):
        self._clients = clients
        self._token = token

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        index = int(host.removeprefix("node-")) if host.startswith("node-") else -1
        client = self._clients.get(index)
        if client is None:
            raise httpx.ConnectError(f"no node at {host}", request=request)
        body = request.read()

        async def send() -> httpx.Response:
            r = await client.request(
                request.method,
                request.url.raw_path.decode("ascii"),
                content=body,
                headers=dict(request.headers),
            )
            return httpx.Response(r.status_code, headers=r.headers, content=r.content)

        return trio.from_thread.run(send, trio_token=self._token)


def app_bundle(
    owner: OwnerKey,
    mpk: bytes,
    *,
    version: int = 1,
    now: int = NOW,
    lifetime: int = 7 * 86400,
    rotations: Sequence[RotationRecord] = (),
    app_id: bytes | None = None,
    measurement: dict[str, bytes] | None = None,
    purposes: Sequence[str] = ("app",),
    pins: Pins | None = None,
) -> PolicyBundle:
    """A signed bundle admitting, for ``purposes`` (``app`` by default), ``measurement``
    (by default the registers of a CVM booted for the app, :func:`app_boot`)."""
    app_id = app_id or (rotations[0].app_id if rotations else owner.app_id())
    policy = AppPolicy.build(
        app_id=app_id,
        version=version,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**(measurement or app_boot(app_id)[1]))],
        kms_mpk=mpk,
        not_before=now - 60,
        expires=now - 60 + lifetime,
        purposes=purposes,
        pins=pins,
    )
    return PolicyBundle(policy.sign(owner), tuple(rotations))


@asynccontextmanager
async def local_committee(
    workdir: Path,
    *,
    n: int = 3,
    threshold: int = 2,
    policies_dir: Callable[[int], Path | None] = lambda i: None,
    stores: dict[int, Path] | None = None,
    cache_entries: int = 1024,
    cache_bytes: int = 16 * 1024 * 1024,
    max_version_step: int = 1000,
    max_apps: int = 0,
    seed: int = 7,
) -> AsyncIterator[LocalCommittee]:
    """Run a committee of ``n`` services until the block ends (inside a trio run).

    ``stores`` reuses node stores of an earlier run (a restart).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(f"local-committee-{seed}")
    seeds = {i: (rnd.randbytes(32), rnd.randbytes(32)) for i in range(1, n + 1)}
    keys = {}
    for i, (id_seed, dkg_seed) in seeds.items():
        keys[i] = participant(i, id_seed, dkg_seed)
    genesis = tuple(keys[i][2] for i in sorted(keys))
    configs = {
        ParticipantIndex(i): (
            NodeConfig(
                ParticipantIndex(i),
                genesis,
                threshold,
                genesis_start=float(NOW - 1000),
                delta=0.5,
                window_period=1e9,
            ),
            keys[i][0],
            keys[i][1],
        )
        for i in keys
    }
    cores = _run_dkg(configs)
    first = cores[ParticipantIndex(1)]
    if first.state is None:
        raise RuntimeError("no epoch after the DKG")
    mpk = first.state.mpk
    chain = verify_chain(first.chain, mpk=mpk)
    mpk_bytes: bytes = mpk.to_bytes()
    tee = SimulatedTEE(random.Random(seed).randbytes, now=NOW)
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    collateral = tee.collateral(NOW)
    clock = SettableClock(float(NOW))
    network = MemoryNetwork()
    paths = dict(stores or {})
    services: dict[int, NodeService] = {}
    clients: dict[int, httpx.AsyncClient] = {}
    policies: dict[int, NodePolicies] = {}
    transports: list[tuple[MemoryTransport, NodeStore]] = []
    async with trio.open_nursery() as nursery:
        for i in sorted(keys):
            path = paths.setdefault(i, workdir / f"node-{i}.db")
            store = NodeStore(path, TEESealer(lambda: _SEALER_KEY))
            if store.load_identity() is None:
                store.save_identity(*seeds[i])
            pid = peer_id_from_ed25519(keys[i][2].identity)
            transport = MemoryTransport(network, pid)
            await transport.__aenter__()
            transports.append((transport, store))
            svc = NodeService(
                configs[ParticipantIndex(i)][0],
                store,
                transport,
                {},
                clock=clock,
                core=cores[ParticipantIndex(i)],
            )
            svc.policy_sync_interval = 3600.0
            pol = NodePolicies(
                store,
                lambda: mpk_bytes,
                directory=policies_dir(i),
                max_version_step=max_version_step,
                cache_entries=cache_entries,
                cache_bytes=cache_bytes,
                vouch_threshold=lambda: threshold,
                max_apps=max_apps,
            )
            svc.policies = pol
            pol.ready(NOW)  # what a node's first timer tick does
            svc.releaser = KeyReleaser(ParticipantIndex(i), keys[i][0], verifier)
            svc.keys.collateral = FixedCollateral(collateral)
            await nursery.start(svc.run)
            services[i] = svc
            policies[i] = pol
            app: Any = make_app(svc)
            clients[i] = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=f"http://node-{i}"
            )
        committee = LocalCommittee(
            services, clients, tee, chain, mpk.to_bytes(), clock, network, paths, policies
        )
        try:
            yield committee
        finally:
            for c in clients.values():
                await c.aclose()
            nursery.cancel_scope.cancel()
    # Only once every service task has ended: close the transports and stores.
    for transport, store in transports:
        await transport.__aexit__(None, None, None)
        store.close()


@dataclass
class FloodReport:
    apps: int
    seconds: float
    store_growth: dict[int, int]
    fetch_during_flood: float
    """Wall seconds of a key fetch made half way through the flood."""
    new_app_keys: float
    """Wall seconds until a legitimate new app, registered during the flood by its key
    request carrying its bundle, held its keys."""
    cache: dict[int, tuple[int, int]]
    statuses: dict[int, int]


async def flood_new_apps(
    committee: LocalCommittee,
    count: int,
    *,
    known_app: bytes,
    target: int = 1,
    rng: random.Random | None = None,
) -> FloodReport:
    """Post ``count`` valid policies of brand-new apps to node ``target``; half way through,
    fetch ``known_app``'s key and register a new app through its key request."""
    rng = rng or random.Random(11)
    before = {i: committee.store_bytes(i) for i in committee.services}
    statuses: dict[int, int] = {}
    fetch_time = -1.0
    new_app_time = -1.0
    start = time.monotonic()
    for k in range(count):
        owner = OwnerKey.generate(rng.randbytes)
        raw = app_bundle(owner, committee.mpk).encode()
        r = await committee.post_policy(target, raw)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if k == count // 2:
            t0 = time.monotonic()
            s, _ = await committee.fetch_keys(known_app)
            if s.done:
                fetch_time = time.monotonic() - t0
            t0 = time.monotonic()
            legit = OwnerKey.generate(rng.randbytes)
            b = app_bundle(legit, committee.mpk).encode()
            s, _ = await committee.fetch_keys(legit.app_id(), bundle=b)
            if s.done:
                new_app_time = time.monotonic() - t0
        if k % 64 == 0:
            await trio.sleep(0)  # let the gossip tasks run
    seconds = time.monotonic() - start
    after = {i: committee.store_bytes(i) for i in committee.services}
    cache = {
        i: (p.stats()["cache_entries"], p.stats()["cache_bytes"])
        for i, p in committee.policies.items()
    }
    return FloodReport(
        count,
        seconds,
        {i: after[i] - before[i] for i in after},
        fetch_time,
        new_app_time,
        cache,
        statuses,
    )
