"""A devnet in one process: the nodes of a ``kms.app.devnet`` directory, each a real
``NodeService`` built from its ``node.toml`` as ``kms node run`` builds it, on
``net.memory`` and trio's clock (see :class:`ServiceDevnet`)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
import trio.testing

from kms.api.http import make_app
from kms.node.service import NodeService, TrioClock
from kms.store import NodeStore
from mpc import hpke
from mpc.ids import ParticipantIndex
from mpc.sig import SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519


@dataclass
class _Running:
    service: NodeService
    transport: MemoryTransport
    store: NodeStore
    scope: trio.CancelScope
    done: trio.Event
    client: httpx.AsyncClient


def agreed_statuses(
    statuses: Iterable[tuple[int, dict[str, Any] | None]],
    *,
    epoch: int | None = None,
    min_epoch: int = 0,
    committee: Iterable[int] | None = None,
    share: bool | None = True,
) -> dict[int, dict[str, Any]] | None:
    """The statuses (``(index, /v1/status or None)``, read lazily) if the nodes agree on
    the epoch and key, run nothing, and meet the conditions; else ``None`` at the first
    that does not (the multi-process and in-process devnets' ``converged``)."""
    sts = {}
    for i, st in statuses:
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


class ServiceDevnet:
    """The nodes of a ``kms.app.devnet`` directory, each a real ``NodeService`` built from its
    ``node.toml`` by ``kms.app.setup.build_service``, as ``kms node run`` builds it (its
    SQLite store sealed with its passphrase, its change checker, collateral, releaser and
    policies), but all in this
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
        from kms.app.config import load

        self.directory = directory
        self.state = state
        self.network = MemoryNetwork()
        self.clock = TrioClock(epoch)
        self.running: dict[int, _Running] = {}
        self.paused: dict[int, trio.Event] = {}
        """Nodes whose HTTP app answers nothing until their event is set (:meth:`pause`)."""
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
        e.g. from ``kms.app.devnet.init_joining_node``); it starts with :meth:`start`."""
        self.state["nodes"].append(entry)

    def service(self, index: int) -> NodeService:
        return self.running[index].service

    async def start(self, *indices: int) -> None:
        """Start the nodes (all of them when none is given), each from its store."""
        from kms.app.config import load
        from kms.app.setup import build_service, open_store

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
            svc = build_service(cfg, store, transport, peers, clock=self.clock)
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
        from kms.app.config import load

        token = load(self.config_path(index)).admin_token_file.read_text().strip()
        raw = json.dumps({**request, "token": token}).encode()
        return admin.handle(self.service(index), token.encode(), raw)

    def join_request(
        self, index: int, member: int, quote: Callable[[bytes], bytes]
    ) -> dict[str, Any]:
        """``kms.app.setup.join_request`` of node ``index``, with the chain head that
        ``GET /v1/chain`` of node ``member`` serves (read here from its service) and its
        quote from ``quote`` (e.g. ``kms.app.devnet.quote_source``)."""
        import tomllib

        from kms.app.config import load
        from kms.app.setup import join_addresses, join_url, open_store, participant_record
        from kms.node.admission import join_report_data, link_epoch

        cfg = load(self.config_path(index))
        with open_store(cfg) as store:
            ident = store.load_identity()
        if ident is None:
            raise RuntimeError(f"node {index} has no identity")
        identity = SigningKey.from_seed(ident[0])
        _, dkg_pub = hpke.derive_key_pair(ident[1])
        rec = participant_record(identity, dkg_pub, index)
        peer = peer_id_from_ed25519(rec.identity)
        node = tomllib.loads(cfg.path.read_text())["node"]
        addresses = join_addresses(node, str(peer))
        url = join_url(node)
        links = self.service(member).core.chain
        epoch, head = link_epoch(links[-1]), links[-1].hash()
        attestation = quote(join_report_data(rec, addresses, epoch, head, url))
        return {
            "index": rec.index,
            "identity": rec.identity.hex(),
            "dkg_key": rec.dkg_key.hex(),
            "dkg_key_signature": rec.dkg_key_signature.hex(),
            "peer_id": str(peer),
            "addresses": addresses,
            "url": url,
            "epoch": epoch,
            "head": head.hex(),
            "attestation": attestation.hex(),
        }

    # --- the CLI's client code, in a worker thread ---------------------------------------------

    def index_of_url(self, url: str) -> int | None:
        """The node whose ``devnet.json`` HTTP URL is ``url`` (scheme, host and port)."""
        for n in self.state["nodes"]:
            if str(n["http_url"]).rstrip("/") == url.rstrip("/"):
                return int(n["index"])
        return None

    def transport(self) -> httpx.BaseTransport:
        """A synchronous httpx transport for client code run by :meth:`in_thread`: each
        request goes to the HTTP app of the node whose ``devnet.json`` URL it names (a
        stopped node refuses the connection; a paused one never answers)."""
        return _InProcessHTTP(self, trio.lowlevel.current_trio_token())

    def pause(self, index: int) -> None:
        """The node's HTTP app accepts requests and answers none until :meth:`resume`."""
        self.paused.setdefault(index, trio.Event())

    def resume(self, index: int) -> None:
        event = self.paused.pop(index, None)
        if event is not None:
            event.set()

    def admin_by_config(self, config: Path | str, request: dict[str, Any]) -> dict[str, Any]:
        """:meth:`admin` of the node of ``config``, callable from the trio run or a worker
        thread (what ``kms.app.devnet.admin_call`` does over the node's admin socket)."""
        index = next(i for i in self.indices if self.config_path(i) == Path(config).resolve())
        if index not in self.running:
            return {"ok": False, "error": "the node is not running"}
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a worker thread
            return dict(trio.from_thread.run_sync(self.admin, index, request))
        return self.admin(index, request)

    @staticmethod
    def real_time() -> None:
        """From now on trio's ``MockClock`` runs at wall-clock rate and no longer jumps:
        client code in worker threads reads ``time.time()`` and waits in real seconds,
        and the nodes' clock keeps pace with it."""
        clock = trio.lowlevel.current_clock()
        if isinstance(clock, trio.testing.MockClock):
            clock.autojump_threshold = math.inf
            clock.rate = 1.0

    @staticmethod
    async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread (blocking client code, e.g. ``kms.client.http``
        with :meth:`transport`), while the nodes run in this trio run."""
        return await trio.to_thread.run_sync(lambda: fn(*args))

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
        poll: float = 0.2,
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
        statuses = [(i, await self.status(i)) for i in indices]
        return agreed_statuses(
            statuses, epoch=epoch, min_epoch=min_epoch, committee=committee, share=share
        )


class _InProcessHTTP(httpx.BaseTransport):
    """``ServiceDevnet.transport``: a request from a worker thread is carried into the trio
    run and through the node's ASGI app; its read timeout is honoured for a paused node."""

    def __init__(self, net: ServiceDevnet, token: trio.lowlevel.TrioToken) -> None:
        self.net = net
        self.token = token

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        index = self.net.index_of_url(origin)
        body = request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        timeouts = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read") or math.inf
        target = request.url.raw_path.decode()

        async def forward() -> tuple[int, list[tuple[str, str]], bytes]:
            run = self.net.running.get(index) if index is not None else None
            if run is None:
                raise httpx.ConnectError(f"no node listens at {origin}", request=request)
            paused = self.net.paused.get(index)  # type: ignore[arg-type]
            if paused is not None:
                with trio.move_on_after(read_timeout):
                    await paused.wait()
                if not paused.is_set():
                    raise httpx.ReadTimeout("a paused node does not answer", request=request)
            try:
                r = await run.client.request(request.method, target, content=body, headers=headers)
            except Exception as exc:
                if self.net.running.get(index) is run:  # type: ignore[arg-type]
                    raise
                # The node stopped while it served the request: the connection drops.
                raise httpx.ReadError("the node stopped", request=request) from exc
            return r.status_code, list(r.headers.multi_items()), r.content

        try:
            status, rheaders, content = trio.from_thread.run(forward, trio_token=self.token)
        except trio.RunFinishedError as exc:
            raise httpx.ConnectError("the devnet is gone", request=request) from exc
        return httpx.Response(status, headers=rheaders, content=content, request=request)


@asynccontextmanager
async def service_devnet(
    directory: Path, state: dict[str, Any], epoch: float
) -> AsyncIterator[ServiceDevnet]:
    """The nodes of the devnet ``state`` (``kms.app.devnet.create``'s, in ``directory``) in
    this trio run (:class:`ServiceDevnet`; none is started yet), their clock reading
    ``epoch`` now. Every node still running is stopped when the block ends."""
    async with trio.open_nursery() as nursery:
        net = ServiceDevnet(directory, state, nursery, epoch)
        try:
            yield net
        finally:
            await net.stop_all()
