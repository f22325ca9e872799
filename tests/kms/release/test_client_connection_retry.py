"""The key client when connections to nodes fail, as they do while nodes restart.

An in-process committee (``kms.app.testing.local_committee``: real services, their HTTP
apps; n = 3, t = 2) is reached through the client's public entry points
(``KeyClient.fetch``, ``KeyClient.certify``) over a network that fails the way a
restarted node's does: a kept-alive connection reset on its next request (over real
sockets), a server that closes without answering, refused connections while the node
is down. A connection-level failure is repeated once on a new connection, and nodes
that failed so are asked again after a short backoff once no other member is left,
within the request's deadline; a node that refuses is never asked again.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import coincurve
import httpx
import pytest
import trio

from kms.app.testing import LocalCommittee, app_boot, app_bundle, local_committee
from kms.client.appcert import AppKeyCert
from kms.client.core import KeyReleaseError
from kms.client.http import FetchResult, KeyClient
from kms.policy import ROOT_PURPOSE, OwnerKey
from kms.protocol import KeyRefusal
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2

ASKS = ("/v1/keys", "/v1/app-key-cert")
Fault = Callable[[httpx.Request, int], httpx.Response | Exception | None]


def reset(request: httpx.Request, _: int) -> Exception:
    return httpx.ReadError("[Errno 104] Connection reset by peer", request=request)


def disconnected(request: httpx.Request, _: int) -> Exception:
    return httpx.RemoteProtocolError(
        "Server disconnected without sending a response.", request=request
    )


def refused(request: httpx.Request, _: int) -> Exception:
    return httpx.ConnectError("[Errno 111] Connection refused", request=request)


def first_only(fault: Fault) -> Fault:
    return lambda request, n: fault(request, n) if n == 1 else None


class Flaky(httpx.BaseTransport):
    """The committee's network, with ``faults[i](request, n)`` deciding the ``n``-th key or
    certificate request to node ``i``: an exception to raise, a response, or ``None`` to
    let it through. ``asks`` counts them per node."""

    def __init__(self, inner: httpx.BaseTransport, faults: dict[int, Fault]) -> None:
        self.inner, self.faults = inner, faults
        self.asks: Counter[int] = Counter()
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        index = int(request.url.host.removeprefix("node-"))
        if request.url.path in ASKS:
            with self._lock:
                self.asks[index] += 1
                n = self.asks[index]
            fault = self.faults.get(index)
            outcome = fault(request, n) if fault is not None else None
            if isinstance(outcome, Exception):
                raise outcome
            if outcome is not None:
                return outcome
        return self.inner.handle_request(request)


async def admitted(c: LocalCommittee, seed: int) -> bytes:
    owner = OwnerKey.from_seed(bytes([seed]) * 32)
    bundle = app_bundle(owner, c.mpk, purposes=("app", ROOT_PURPOSE)).encode()
    s, _ = await c.fetch_keys(owner.app_id(), bundle=bundle)
    assert s.done
    return owner.app_id()


def quote_for(c: LocalCommittee, app: bytes) -> tuple[Callable[[bytes], bytes], bytes]:
    log, m = app_boot(app)
    return (lambda rd: c.tee.quote(rd, **m)), log  # type: ignore[arg-type]


def fetch(
    c: LocalCommittee, app: bytes, transport: httpx.BaseTransport | None, **kw: Any
) -> FetchResult:
    urls = kw.pop("urls", {PI(i): f"http://node-{i}" for i in c.services})
    quote, log = quote_for(c, app)
    with KeyClient(urls, G2.from_bytes(c.mpk), transport=transport, **kw) as client:
        return client.fetch(app, [("app", 1)], quote, event_log=log, now=int(c.clock.now()))


def run(tmp_path: Path, body: Callable[[LocalCommittee], Any]) -> None:
    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            await body(c)

    trio.run(main)


def test_a_reset_kept_alive_connection_is_asked_again_and_the_fetch_succeeds(
    tmp_path: Path,
) -> None:
    """Node 1's connection resets once, node 3 is down: node 2 and node 1's repeat suffice."""

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 81)
        net = Flaky(c.blocking_transport(), {1: first_only(reset), 3: disconnected})
        res = await trio.to_thread.run_sync(fetch, c, app, net)
        assert res.derived[("app", 1)] is not None
        assert net.asks[1] == 2  # the reset request, then its repeat on a new connection

    run(tmp_path, body)


def test_a_restarting_node_is_asked_again_after_a_backoff(tmp_path: Path) -> None:
    """Node 1 refuses connections for 0.6 s (restarting), node 3 stays down: the fetch waits
    for node 1 instead of failing at once, and ends well within its deadline."""

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 82)
        back_at: list[float] = []

        def restarting(r: httpx.Request, n: int) -> Exception | None:
            if not back_at:
                back_at.append(time.monotonic() + 0.6)
            return refused(r, n) if time.monotonic() < back_at[0] else None

        net = Flaky(c.blocking_transport(), {1: restarting, 3: refused})
        start = time.monotonic()
        res = await trio.to_thread.run_sync(partial(fetch, c, app, net, timeout=5.0))
        assert res.derived[("app", 1)] is not None
        assert net.asks[1] >= 3
        assert time.monotonic() - start < 5.0

    run(tmp_path, body)


def test_fewer_than_t_reachable_fails_within_the_deadline(tmp_path: Path) -> None:
    """Nodes 1 and 3 always reset: asked again while time allows, then the fetch fails,
    within its deadline (no hang), naming each unreachable node once."""

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 83)
        net = Flaky(c.blocking_transport(), {1: reset, 3: disconnected})
        start = time.monotonic()
        with pytest.raises(KeyReleaseError) as err:
            await trio.to_thread.run_sync(partial(fetch, c, app, net, timeout=1.5))
        elapsed = time.monotonic() - start
        assert elapsed < 1.5 + 2.0, elapsed  # the deadline, a chain fetch and slack
        assert net.asks[1] >= 4 and net.asks[3] >= 4  # asked again, not given up at once
        assert sorted(u.split(":")[0] for u in err.value.unreachable) == ["node 1", "node 3"]

    run(tmp_path, body)


def test_a_node_that_refuses_is_never_asked_again(tmp_path: Path) -> None:
    """Node 1 refuses, node 3 resets: node 3 is asked again until the deadline, node 1
    once only, and the fetch fails naming the refusal."""

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 84)
        refusal = KeyRefusal("policy-refused", "not this CVM").encode()

        def refuse(request: httpx.Request, n: int) -> httpx.Response:
            return httpx.Response(403, content=refusal)

        net = Flaky(c.blocking_transport(), {1: refuse, 3: reset})
        with pytest.raises(KeyReleaseError) as err:
            await trio.to_thread.run_sync(partial(fetch, c, app, net, timeout=1.0))
        assert err.value.refusals == {1: ("policy-refused", "not this CVM")}
        assert net.asks[1] == 1
        assert net.asks[3] >= 4

    run(tmp_path, body)


def test_a_certificate_request_is_asked_again_after_a_reset(tmp_path: Path) -> None:
    """``KeyClient.certify`` uses the same loop: node 1 disconnects once, node 3 is down."""
    pk = bytes(coincurve.PrivateKey((1001).to_bytes(32, "big")).public_key.format())

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 85)
        net = Flaky(c.blocking_transport(), {1: first_only(disconnected), 3: reset})
        quote, log = quote_for(c, app)
        urls = {PI(i): f"http://node-{i}" for i in c.services}

        def certify() -> AppKeyCert:
            with KeyClient(urls, G2.from_bytes(c.mpk), transport=net) as client:
                return client.certify(app, 1, pk, quote, event_log=log, now=int(c.clock.now()))

        cert = await trio.to_thread.run_sync(certify)
        assert (cert.app_id, cert.root_public) == (app, pk)
        assert net.asks[1] == 2

    run(tmp_path, body)


# --- over real sockets: a node restarted between two fetches ---------------------------------


class SocketNode:
    """Node ``index``'s HTTP/1.1 on a real local socket, kept alive, carried to its app.

    ``restart()`` makes every connection open now reset (RST) when its next request
    arrives, as the connections of a node that was killed and restarted do."""

    def __init__(self, bridge: httpx.BaseTransport, index: int) -> None:
        self.bridge, self.index = bridge, index
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.stale: set[socket.socket] = set()
        self.resets = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def restart(self) -> None:
        with self._lock:
            self.stale |= self.open

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.open.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        try:
            while True:
                line = rfile.readline()
                if not line:
                    return
                method, target, _ = line.decode("ascii").split(" ", 2)
                headers: dict[str, str] = {}
                while (h := rfile.readline()) not in (b"\r\n", b"\n", b""):
                    name, value = h.decode("latin-1").split(":", 1)
                    headers[name.strip().lower()] = value.strip()
                with self._lock:
                    stale = conn in self.stale
                if stale:
                    self.resets += 1
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                body = rfile.read(int(headers.get("content-length", "0")))
                keep = {k: v for k, v in headers.items() if k in ("content-type", "accept")}
                r = self.bridge.handle_request(
                    httpx.Request(
                        method, f"http://node-{self.index}{target}", content=body, headers=keep
                    )
                )
                head = (
                    f"HTTP/1.1 {r.status_code} X\r\nContent-Length: {len(r.content)}\r\n"
                    f"Content-Type: {r.headers.get('content-type', 'application/msgpack')}\r\n\r\n"
                )
                conn.sendall(head.encode("ascii") + r.content)
        except OSError:
            return
        finally:
            with self._lock:
                self.open.discard(conn)
            rfile.close()
            conn.close()


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_a_node_restarted_between_two_fetches_does_not_fail_the_second(tmp_path: Path) -> None:
    """Real sockets: nodes 1 and 2 served, node 3 down (its port closed). After a first
    fetch node 1 restarts: its kept-alive connection resets on the second fetch's request,
    which is repeated on a new connection, and the second fetch succeeds."""

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 86)
        bridge = c.blocking_transport()
        nodes = {i: SocketNode(bridge, i) for i in (1, 2)}
        urls = {PI(i): f"http://127.0.0.1:{n.port}" for i, n in nodes.items()}
        urls[PI(3)] = f"http://127.0.0.1:{closed_port()}"
        quote, log = quote_for(c, app)

        def two_fetches() -> tuple[FetchResult, FetchResult]:
            with KeyClient(urls, G2.from_bytes(c.mpk), timeout=5.0) as client:
                now = int(c.clock.now())
                first = client.fetch(app, [("app", 1)], quote, event_log=log, now=now)
                nodes[1].restart()
                second = client.fetch(app, [("app", 1)], quote, event_log=log, now=now)
                return first, second

        try:
            first, second = await trio.to_thread.run_sync(two_fetches)
        finally:
            for n in nodes.values():
                n.close()
        assert first.derived == second.derived
        assert nodes[1].resets >= 1  # the kept-alive connection was reset, and retried

    run(tmp_path, body)
