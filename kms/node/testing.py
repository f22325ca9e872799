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
from kms.client.core import KeyRequestSession
from kms.node.core import NodeConfig, NodeCore
from kms.node.policies import NodePolicies
from kms.node.release import KeyReleaser
from kms.node.service import NodeService, TrioClock
from kms.policy import (
    AppPolicy,
    Measurement,
    OwnerKey,
    PolicyBundle,
    RotationRecord,
    build_event_log,
    dstack_boot_events,
)
from kms.protocol import KeyRefusal, KeyRequest, KeyResponse
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
) -> PolicyBundle:
    """A signed bundle admitting, for purpose ``app``, ``measurement`` (by default the
    registers of a CVM booted for the app, :func:`app_boot`)."""
    app_id = app_id or (rotations[0].app_id if rotations else owner.app_id())
    policy = AppPolicy.build(
        app_id=app_id,
        version=version,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**(measurement or app_boot(app_id)[1]))],
        kms_mpk=mpk,
        not_before=now - 60,
        expires=now - 60 + lifetime,
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
        ident = SigningKey.from_seed(id_seed)
        dkg, pub = hpke.derive_key_pair(dkg_seed)
        sig = ident.sign(CTX_DKG_KEY, Participant.dkg_key_statement(i, pub))
        keys[i] = (ident, dkg, Participant(i, ident.verify_key().to_bytes(), pub, sig))
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
            svc = NodeService(configs[ParticipantIndex(i)][0], store, transport, {}, clock=clock)
            svc.core = cores[ParticipantIndex(i)]
            svc._learn_participants()
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
            svc.releaser = KeyReleaser(
                ParticipantIndex(i),
                keys[i][0],
                verifier,
                lambda q: collateral,
                pol,
                rng=os.urandom,
            )
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


# --- a devnet in one process ---------------------------------------------------------------------


@dataclass
class _Running:
    service: NodeService
    transport: MemoryTransport
    store: NodeStore
    scope: trio.CancelScope
    done: trio.Event
    client: httpx.AsyncClient


class ServiceDevnet:
    """The nodes of a ``kms.devnet`` directory, each a real ``NodeService`` built from its
    ``node.toml`` as ``kms node run`` builds it (its SQLite store sealed with its
    passphrase, its change checker, collateral, releaser and policies), but all in this
    trio run: they talk over one ``net.memory`` network instead of libp2p, on a
    ``TrioClock`` (under ``trio.testing.MockClock`` virtual time jumps whenever every
    task waits), and their HTTP apps are reached through an ASGI client.

    Stopping a node cancels its service's tasks and closes its store and transport; a
    start builds a new service on the same store file, so the node's state comes only
    from its store, as after a process restart. A cancel happens between two steps of
    the service (every store write is synchronous within a step), so it is not a
    SIGKILL in the middle of a write.

    Use inside a trio run, with :func:`service_devnet`.
    """

    def __init__(
        self, directory: Path, state: dict[str, Any], nursery: trio.Nursery, epoch: float
    ) -> None:
        from kms.node.config import load

        self.directory = directory
        self.state = state
        self.network = MemoryNetwork()
        self.clock = TrioClock(epoch)
        self.running: dict[int, _Running] = {}
        self._nursery = nursery
        cfg = load(state["nodes"][0]["config"])
        self.n = len(state["nodes"])
        self.threshold = int(state["threshold"])
        self.genesis_start = cfg.protocol.genesis_start
        self.delta = cfg.protocol.delta
        self.window_period = cfg.protocol.window_period

    # --- nodes ------------------------------------------------------------------------------

    @property
    def indices(self) -> list[int]:
        return [int(n["index"]) for n in self.state["nodes"]]

    def entry(self, index: int) -> dict[str, Any]:
        return next(n for n in self.state["nodes"] if int(n["index"]) == index)

    def config_path(self, index: int) -> Path:
        return Path(self.entry(index)["config"])

    def store_path(self, index: int) -> Path:
        return self.config_path(index).parent / "node.db"

    def add_entry(self, entry: dict[str, Any]) -> None:
        """Count in a node made outside the genesis committee (its ``devnet.json`` entry,
        e.g. from ``kms.devnet.init_joining_node``); it starts with :meth:`start`."""
        self.state["nodes"].append(entry)

    def service(self, index: int) -> NodeService:
        return self.running[index].service

    async def start(self, *indices: int) -> None:
        """Start the nodes (all of them when none is given), each from its store."""
        from kms.node.config import load
        from kms.node.setup import make_checker, make_collateral, make_releaser, open_store

        for index in indices or tuple(self.indices):
            if index in self.running:
                raise RuntimeError(f"node {index} is already running")
            cfg = load(self.config_path(index))
            store = open_store(cfg)
            ident = store.load_identity()
            if ident is None:
                raise RuntimeError(f"node {index} has no identity")
            pid = peer_id_from_ed25519(SigningKey.from_seed(ident[0]).verify_key().to_bytes())
            transport = MemoryTransport(self.network, pid)
            await transport.__aenter__()
            peers: dict[ParticipantIndex, list[str]] = {}
            for p in cfg.peers:
                peers.setdefault(p.index, []).append(p.multiaddr)
            collateral = make_collateral(cfg)
            svc = NodeService(
                cfg.protocol,
                store,
                transport,
                peers,
                clock=self.clock,
                check=make_checker(cfg, collateral),
            )
            svc.collateral = collateral
            svc.releaser = make_releaser(cfg, svc)
            svc.policy_sync_interval = cfg.policy_sync_interval
            app: Any = make_app(svc)
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=f"http://node-{index}"
            )
            run = _Running(svc, transport, store, trio.CancelScope(), trio.Event(), client)
            self.running[index] = run
            await self._nursery.start(self._serve, run)

    @staticmethod
    async def _serve(run: _Running, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with run.scope:
                await run.service.run(task_status=task_status)
        finally:
            run.done.set()

    async def stop(self, index: int) -> None:
        """Stop the node: its tasks are cancelled, then its store and transport closed."""
        run = self.running.pop(index)
        run.scope.cancel()
        await run.done.wait()
        await run.client.aclose()
        run.store.close()
        await run.transport.__aexit__(None, None, None)

    async def stop_all(self) -> None:
        for index in list(self.running):
            await self.stop(index)

    # --- the node's surfaces -------------------------------------------------------------------

    async def get(self, index: int, path: str) -> httpx.Response:
        """``GET path`` on the node's HTTP app."""
        return await self.running[index].client.get(path)

    async def status(self, index: int) -> dict[str, Any] | None:
        """``GET /v1/status`` of a running node (``None`` for a stopped one)."""
        if index not in self.running:
            return None
        r = await self.get(index, "/v1/status")
        return dict(r.json()) if r.status_code == 200 else None

    async def statuses(self, indices: Sequence[int]) -> dict[int, dict[str, Any] | None]:
        return {i: await self.status(i) for i in indices}

    async def metrics(self, index: int) -> str:
        r = await self.get(index, "/metrics")
        r.raise_for_status()
        return r.text

    async def health(self, index: int) -> int:
        return (await self.get(index, "/health")).status_code

    def admin(self, index: int, request: dict[str, Any]) -> dict[str, Any]:
        """One admin request, with the node's token, through the admin channel's handler
        (``kms.api.admin.handle``, what the admin socket runs for each request)."""
        import json

        from kms.api import admin
        from kms.node.config import load

        token = load(self.config_path(index)).admin_token_file.read_text().strip()
        raw = json.dumps({**request, "token": token}).encode()
        return admin.handle(self.service(index), token.encode(), raw)

    def join_request(
        self, index: int, member: int, quote: Callable[[bytes], bytes]
    ) -> dict[str, Any]:
        """``kms.node.setup.join_request`` of node ``index``, with the chain head that
        ``GET /v1/chain`` of node ``member`` serves (read here from its service) and its
        quote from ``quote`` (e.g. ``kms.devnet.quote_source``)."""
        from kms.node.admission import join_report_data, link_epoch
        from kms.node.config import load
        from kms.node.setup import open_store, participant_record

        cfg = load(self.config_path(index))
        with open_store(cfg) as store:
            ident = store.load_identity()
        if ident is None:
            raise RuntimeError(f"node {index} has no identity")
        identity = SigningKey.from_seed(ident[0])
        _, dkg_pub = hpke.derive_key_pair(ident[1])
        rec = participant_record(identity, dkg_pub, index)
        peer = peer_id_from_ed25519(rec.identity)
        addresses = [f"{cfg.listen}/p2p/{peer}"]
        links = self.service(member).core.chain
        epoch, head = link_epoch(links[-1]), links[-1].hash()
        attestation = quote(join_report_data(rec, addresses, epoch, head))
        return {
            "index": rec.index,
            "identity": rec.identity.hex(),
            "dkg_key": rec.dkg_key.hex(),
            "dkg_key_signature": rec.dkg_key_signature.hex(),
            "peer_id": str(peer),
            "addresses": addresses,
            "epoch": epoch,
            "head": head.hex(),
            "attestation": attestation.hex(),
        }

    # --- waiting ----------------------------------------------------------------------------

    def now(self) -> float:
        """The nodes' clock (Unix seconds, virtual)."""
        return self.clock.now()

    async def wait_until(self, t: float) -> None:
        await trio.sleep(max(0.0, t - self.now()))

    async def wait_for(
        self,
        what: str,
        check: Callable[[], Any],
        timeout: float,
        poll: float = 0.05,
    ) -> Any:
        """Poll ``check`` (a coroutine function or a plain one) until it returns something
        truthy; fail after ``timeout`` seconds of the nodes' clock."""
        import inspect

        deadline = self.now() + timeout
        last: Any = None
        while True:
            last = check()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last
            if self.now() >= deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            await trio.sleep(poll)

    async def converged(
        self,
        indices: Sequence[int],
        *,
        epoch: int | None = None,
        min_epoch: int = 0,
        committee: Sequence[int] | None = None,
        share: bool | None = True,
    ) -> dict[int, dict[str, Any]] | None:
        """Statuses of ``indices`` if they agree on the epoch and key and meet the conditions
        (as the multi-process devnet tests' ``Devnet.converged``)."""
        sts = {}
        for i in indices:
            st = await self.status(i)
            if st is None or st.get("epoch") is None or st.get("running") is not None:
                return None
            if epoch is not None and st["epoch"] != epoch:
                return None
            if st["epoch"] < min_epoch:
                return None
            if share is not None and st.get("has_share") is not share:
                return None
            if committee is not None and sorted(m["index"] for m in st["committee"]) != sorted(
                committee
            ):
                return None
            sts[i] = st
        if len({st["epoch"] for st in sts.values()}) != 1:
            return None
        if len({st["master_public_key"] for st in sts.values()}) != 1:
            return None
        return sts


@asynccontextmanager
async def service_devnet(
    directory: Path, state: dict[str, Any], epoch: float
) -> AsyncIterator[ServiceDevnet]:
    """The nodes of the devnet ``state`` (``kms.devnet.create``'s, in ``directory``) in
    this trio run (:class:`ServiceDevnet`; none is started yet), their clock reading
    ``epoch`` now. Every node still running is stopped when the block ends."""
    async with trio.open_nursery() as nursery:
        net = ServiceDevnet(directory, state, nursery, epoch)
        try:
            yield net
        finally:
            await net.stop_all()
