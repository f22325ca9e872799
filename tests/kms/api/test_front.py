"""The public port's HTTP/1.1 server (``kms.api.front``), attacked over real sockets.

Each test speaks raw bytes to a server on a loopback port, as a client that
wants to desync, exhaust or crash it would, and checks what it answers,
what it never answers, and that it still serves an honest request after.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from test_http_bodies import Source
from test_shed import KEY_REQUEST, HeldSource

from kms.api.front import FrontLimits, serve
from kms.api.http import MAX_BODY, make_app
from kms.api.shed import ShedLimits

KEY_HEAD = (
    b"POST /v1/keys HTTP/1.1\r\nhost: node\r\ncontent-type: application/msgpack\r\n"
    b"content-length: %d\r\n\r\n" % len(KEY_REQUEST)
)
HONEST = KEY_HEAD + KEY_REQUEST
STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


async def _with_server(
    test: Callable[[int, Source], Awaitable[Any]],
    source: Source | None = None,
    limits: FrontLimits | None = None,
    shed: ShedLimits | None = None,
) -> Any:
    source = source or Source()
    app = make_app(source, shed)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, source, "127.0.0.1:0", limits=limits))
        port = int(binds[0].rsplit(":", 1)[1])
        try:
            return await test(port, source)
        finally:
            nursery.cancel_scope.cancel()


def run(
    test: Callable[[int, Source], Awaitable[Any]],
    source: Source | None = None,
    limits: FrontLimits | None = None,
    shed: ShedLimits | None = None,
    mock: bool = False,
) -> Any:
    async def main() -> Any:
        with trio.fail_after(120):
            return await _with_server(test, source, limits, shed)

    if mock:
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return trio.run(main)


async def exchange(port: int, data: bytes, wait: float = 10.0) -> bytes:
    """Send ``data`` and read until the server closes (or ``wait`` seconds pass)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    try:
        await stream.send_all(data)
        with trio.move_on_after(wait):
            while chunk := await stream.receive_some(65536):
                out += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    return out


def statuses(answer: bytes) -> list[int]:
    return [int(m) for m in STATUS.findall(answer)]


async def honest_is_served(port: int) -> bool:
    answer = await exchange(port, HONEST.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n", 1))
    return statuses(answer) == [403]  # the stand-in's own refusal: the request reached it


# --- framing: one reading of the bytes, or none ------------------------------------------


@pytest.mark.parametrize(
    "smuggled",
    [
        # Content-Length and Transfer-Encoding together (CL.TE / TE.CL)
        b"POST /v1/keys HTTP/1.1\r\nhost: n\r\ncontent-length: 4\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n",
        # two Content-Length headers, equal or not
        b"POST /v1/keys HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 35\r\n\r\n"
        b"GET /v1/status HTTP/1.1\r\nx: y\r\n\r\n",
        b"POST /v1/keys HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n"
        b"GET /v1/status HTTP/1.1\r\n\r\n",
        # chunked not last, a signed length, obs-fold, bare LF, space before the colon
        b"POST /v1/keys HTTP/1.1\r\ntransfer-encoding: chunked, identity\r\n\r\n"
        b"0\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n",
        b"POST /v1/keys HTTP/1.1\r\ncontent-length: +0\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n",
        b"POST /v1/keys HTTP/1.1\r\nx: a\r\n content-length: 30\r\n\r\n"
        b"GET /v1/status HTTP/1.1\r\n\r\n",
        b"POST /v1/keys HTTP/1.1\ncontent-length: 0\n\nGET /v1/status HTTP/1.1\n\n",
        b"POST /v1/keys HTTP/1.1\r\ncontent-length : 0\r\n\r\nGET /v1/status HTTP/1.1\r\n\r\n",
    ],
)
def test_ambiguous_framing_is_refused_and_nothing_behind_it_is_answered(smuggled: bytes) -> None:
    async def test(port: int, source: Source) -> tuple[bytes, bool]:
        return await exchange(port, smuggled), await honest_is_served(port)

    answer, served = run(test)
    assert statuses(answer) == [400], answer  # one refusal, then the connection closed
    assert b"connection: close" in answer and b"malformed-request" in answer
    assert served


def test_pipelined_requests_are_answered_in_order_and_bounded() -> None:
    status = b"GET /v1/status HTTP/1.1\r\nhost: n\r\n\r\n"
    health = b"GET /health HTTP/1.1\r\nhost: n\r\n\r\n"

    async def test(port: int, source: Source) -> tuple[bytes, bytes]:
        # three different requests in one write, then the 17th pipelined request is refused
        ordered = await exchange(port, HONEST + status + health + HONEST, wait=2)
        flood = await exchange(port, health * 40)
        return ordered, flood

    ordered, flood = run(test, limits=FrontLimits(max_pipelined=16))
    assert statuses(ordered) == [403, 200, 200, 403]
    assert b'"epoch":1' in ordered.split(b"HTTP/1.1 ")[2]  # the second answer is /v1/status's
    assert statuses(flood) == [200] * 16 + [400]
    assert b"too-many-pipelined" in flood


# --- sizes ---------------------------------------------------------------------------------


async def endless(port: int, opening: bytes) -> tuple[bytes, int]:
    """Send ``opening`` and then 64 KiB of ``a`` at a time, up to 256 MiB, while reading the
    answer until the server closes; return it and the filler bytes the client got sent."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    sent = 0
    answer = b""

    async def write() -> None:
        nonlocal sent
        try:
            await stream.send_all(opening)
            while sent < 256 * 1024 * 1024:
                await stream.send_all(b"a" * 65536)
                sent += 65536
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        with trio.move_on_after(20):
            try:
                while chunk := await stream.receive_some(65536):
                    answer += chunk
            except trio.BrokenResourceError:
                pass
        nursery.cancel_scope.cancel()
    await stream.aclose()
    return answer, sent


def test_an_endless_header_is_cut_at_the_head_limit() -> None:
    async def test(port: int, source: Source) -> tuple[bytes, int]:
        answer, sent = await endless(port, b"GET /health HTTP/1.1\r\nx: ")
        assert await honest_is_served(port)
        return answer, sent

    answer, sent = run(test)
    assert statuses(answer) == [431] and b"head-too-large" in answer
    assert sent < 16 * 1024 * 1024  # it stopped reading; the client filled socket buffers only


def test_too_many_headers_are_refused() -> None:
    head = b"GET /health HTTP/1.1\r\n" + b"x: y\r\n" * 101 + b"\r\n"

    async def test(port: int, source: Source) -> bytes:
        return await exchange(port, head)

    answer = run(test)
    assert statuses(answer) == [431]


@pytest.mark.parametrize("path", [b"/v1/keys", b"/v1/policies", b"/health"])
def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(path: bytes) -> None:
    head = b"POST %s HTTP/1.1\r\ncontent-length: %d\r\n\r\n" % (path, MAX_BODY + 1)

    async def test(port: int, source: Source) -> tuple[bytes, list[Any]]:
        return await exchange(port, head), source.seen

    answer, seen = run(test)
    assert statuses(answer) == [413] and b"body-too-large" in answer
    assert seen == []


def test_an_endless_trailer_is_cut() -> None:
    # A chunked body of one byte, then a trailer that never ends: llhttp would gather the
    # trailer's value in memory; the server stops at 2 x MAX_BODY raw bytes for the request.
    opening = b"POST /v1/policies HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx: "

    async def test(port: int, source: Source) -> tuple[bytes, int, Any]:
        return (*await endless(port, opening), source.seen)

    answer, sent, seen = run(test)
    assert statuses(answer) == [413], answer[:200]
    assert sent < 32 * 1024 * 1024 and seen == []


# --- time ----------------------------------------------------------------------------------


def test_a_slow_head_is_answered_408_and_an_idle_connection_closed() -> None:
    async def test(port: int, source: Source) -> tuple[bytes, float, float]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        answer = b""
        for byte in b"GET /health HTTP/1.1\r\nx: " + b"y" * 200:
            try:
                await stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                break
            with trio.move_on_after(1):  # a byte a second: under any per-read timeout
                chunk = await stream.receive_some(65536)
                answer += chunk
                if not chunk:
                    break
        slow = trio.current_time() - start
        await stream.aclose()
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        assert await idle.receive_some(65536) == b""
        await idle.aclose()
        return answer, slow, trio.current_time() - start

    limits = FrontLimits(read_timeout=30, keep_alive_timeout=5)
    answer, slow, idle = run(test, limits=limits, mock=True)
    assert statuses(answer) == [408] and b"head-timeout" in answer
    assert 29 <= slow <= 32  # the whole head had read_timeout, whatever each read took
    assert 5 <= idle <= 6  # closed unanswered after keep_alive_timeout


def test_a_slow_key_body_is_answered_408_and_holds_no_place() -> None:
    source = HeldSource()

    async def test(port: int, src: Source) -> tuple[bytes, int]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(KEY_HEAD + KEY_REQUEST[:10])
        answer = b""
        with trio.move_on_after(10):
            while chunk := await stream.receive_some(65536):
                answer += chunk
        await stream.aclose()
        return answer, source.started

    answer, started = run(test, source=source, shed=ShedLimits(body_timeout=2), mock=True)
    assert statuses(answer) == [408] and b"body-timeout" in answer
    assert started == 0
    assert source.rejected["http body: body-timeout"] == 1


# --- semantics -----------------------------------------------------------------------------


def test_expect_100_continue_upgrade_http10_and_head() -> None:
    expect = KEY_HEAD.replace(b"\r\n\r\n", b"\r\nexpect: 100-continue\r\n\r\n")
    upgrade = (
        b"GET /health HTTP/1.1\r\nhost: n\r\nconnection: upgrade, http2-settings\r\n"
        b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n"
    )

    async def test(port: int, source: Source) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(expect)
        out["continue"] = await stream.receive_some(65536)
        await stream.send_all(KEY_REQUEST)
        out["expect"] = await stream.receive_some(65536)
        await stream.aclose()
        # An upgrade request is answered over HTTP/1.1; the next request on it too.
        out["upgrade"] = await exchange(port, upgrade + HONEST, wait=2)
        out["http10"] = await exchange(port, b"GET /health HTTP/1.0\r\n\r\n")
        out["head"] = await exchange(port, b"HEAD /health HTTP/1.1\r\nconnection: close\r\n\r\n")
        return out

    out = run(test)
    assert out["continue"] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert statuses(out["expect"]) == [403]
    assert statuses(out["upgrade"]) == [200, 403]
    assert statuses(out["http10"]) == [200] and b"connection: close" in out["http10"]
    head, _, body = out["head"].partition(b"\r\n\r\n")
    assert statuses(head) == [200] and body == b"" and b"content-length: " in head


def test_the_direct_path_and_the_app_give_the_same_answer() -> None:
    # ``/v1/%6beys`` is not the direct path's literal route; the app decodes it to /v1/keys.
    async def test(port: int, source: Source) -> tuple[bytes, bytes]:
        direct = await exchange(port, HONEST.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
        via_app = HONEST.replace(b"/v1/keys", b"/v1/%6beys").replace(
            b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"
        )
        return direct, await exchange(port, via_app)

    direct, via_app = run(test)
    assert statuses(direct) == statuses(via_app) == [403]
    assert direct.partition(b"\r\n\r\n")[2] == via_app.partition(b"\r\n\r\n")[2]


class Failing(Source):
    async def release(self, request: Any) -> Any:
        raise RuntimeError("a bug behind the route")


@pytest.mark.parametrize("path", [b"/v1/keys", b"/v1/%6beys"])  # direct, and through the app
def test_a_failure_behind_a_route_closes_one_connection_not_the_server(path: bytes) -> None:
    async def test(port: int, source: Source) -> tuple[bytes, bytes]:
        broken = await exchange(port, HONEST.replace(b"/v1/keys", path))
        health = await exchange(port, b"GET /health HTTP/1.1\r\nconnection: close\r\n\r\n")
        return broken, health

    broken, health = run(test, source=Failing())
    assert statuses(broken) == [500] and b"connection: close" in broken
    assert statuses(health) == [200]


def test_places_are_shared_with_the_app_and_given_back() -> None:
    source = HeldSource()

    async def test(port: int, src: Source) -> tuple[list[int], int, int]:
        answers: list[int] = []

        async def ask(data: bytes) -> None:
            answers.extend(statuses(await exchange(port, data, wait=5)))

        async with trio.open_nursery() as nursery:
            # one place, no queue: held by a direct request ...
            nursery.start_soon(ask, HONEST.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
            await trio.sleep(0.5)
            # ... so the app's route (the same admission) refuses at once
            via_app = HONEST.replace(b"/v1/keys", b"/v1/%6beys").replace(
                b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"
            )
            await ask(via_app)
            source.gate.set()
        await ask(HONEST.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
        return answers, source.started, source.rejected["http body: body-timeout"]

    answers, started, _ = run(test, source=source, shed=ShedLimits(concurrency=1, queue=0))
    assert sorted(answers) == [403, 403, 503]
    assert started == 2


# --- upgrades, CONNECT, HTTP/1.0 framing, a client that never reads ------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_an_upgrade_requests_body_is_its_body_not_a_request(chunked: bool) -> None:
    # llhttp takes a request with ``Upgrade`` as complete at the end of its head; the server
    # must still read the body its head declared, and nothing in it as a request.
    inner = b"GET /v1/audit HTTP/1.1\r\nhost: x\r\n\r\n"
    framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % len(inner)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner) if chunked else inner
    smuggle = (
        b"POST /v1/evidence HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n"
        b"content-type: application/octet-stream\r\n%s\r\n\r\n%s" % (framing, body)
    )
    key = (
        KEY_HEAD.replace(b"\r\n\r\n", b"\r\nconnection: upgrade, http2-settings\r\n")
        + b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n"
        + KEY_REQUEST
    )

    async def test(port: int, source: Source) -> tuple[bytes, bytes, list[Any]]:
        return await exchange(port, smuggle, wait=2), await exchange(port, key, wait=2), source.seen

    smuggled, upgraded_key, seen = run(test)
    assert statuses(smuggled) == [400] and b"admin-only" not in smuggled
    assert statuses(upgraded_key) == [403]  # the key request reached the node whole
    assert seen == [("evidence", len(inner)), ("release", len(KEY_REQUEST))]


def test_a_connect_is_answered_once_and_nothing_after_it_is_read() -> None:
    inner = b"GET /v1/audit HTTP/1.1\r\nhost: x\r\n\r\n"
    tunnel = b"CONNECT x:443 HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
        len(inner),
        inner,
    )

    async def test(port: int, source: Source) -> bytes:
        return await exchange(port, tunnel)

    answer = run(test)
    assert len(statuses(answer)) == 1 and b"admin-only" not in answer
    assert b"connection: close" in answer


def test_http10_with_transfer_encoding_closes_the_connection() -> None:
    faulty = (
        b"POST /v1/policies HTTP/1.0\r\nconnection: keep-alive\r\n"
        b"transfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"
    )

    async def test(port: int, source: Source) -> tuple[bytes, bytes]:
        kept = await exchange(port, b"GET /health HTTP/1.0\r\nconnection: keep-alive\r\n\r\n", 1)
        return await exchange(port, faulty + b"GET /health HTTP/1.1\r\n\r\n"), kept

    answer, kept = run(test)
    assert len(statuses(answer)) == 1 and b"connection: close" in answer
    assert statuses(kept) == [200] and b"connection: keep-alive" in kept


class _NeverReads:
    """A client that sent ``data`` and then neither reads nor sends (its window full)."""

    def __init__(self, data: bytes) -> None:
        import socket

        self.data = data
        # A real socket, readable, for the server's wait for the first bytes.
        self.socket, self._peer = socket.socketpair()
        self._peer.send(b"x")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.data:
            data, self.data = self.data, b""
            return data
        await trio.sleep_forever()
        raise AssertionError

    async def send_all(self, data: bytes) -> None:
        await trio.sleep_forever()

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        self.socket.close()
        self._peer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health HTTP/1.1\r\n\r\n",
        b"POST /v1/keys HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n",
        b"POST /v1/evidence HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n",
    ],
)
def test_a_client_that_never_reads_holds_its_connection_for_read_timeout(
    request_bytes: bytes,
) -> None:
    from kms.api.front import Front

    source = Source()
    front = Front(make_app(source), source, FrontLimits(read_timeout=3, keep_alive_timeout=3))

    async def main() -> float:
        start = trio.current_time()
        with trio.fail_after(60):
            await front.handle(_NeverReads(request_bytes))  # type: ignore[arg-type]
        return trio.current_time() - start

    took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert took <= 3 + 1 + 1  # the write's bound, the linger, the close
    assert source.rejected["http: write-timeout"] == 1


@pytest.mark.parametrize("coding", [b"xchunked", b"identity", b"gzip", b"chunked, chunked"])
def test_an_upgrade_request_with_a_transfer_coding_llhttp_would_refuse_is_refused(
    coding: bytes,
) -> None:
    smuggle = (
        b"POST /v1/evidence HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n"
        b"transfer-encoding: %s\r\n\r\n0\r\n\r\nGET /v1/audit HTTP/1.1\r\nhost: x\r\n\r\n" % coding
    )

    async def test(port: int, source: Source) -> tuple[bytes, list[Any]]:
        return await exchange(port, smuggle), source.seen

    answer, seen = run(test)
    assert statuses(answer) == [400] and b"malformed-request" in answer
    assert b"admin-only" not in answer and seen == []


def test_a_request_line_of_another_http_version_is_refused() -> None:
    async def test(port: int, source: Source) -> bytes:
        return await exchange(
            port,
            b"POST /v1/policies HTTP/0.9\r\nconnection: keep-alive\r\n"
            b"transfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
        )

    answer = run(test)
    assert statuses(answer) == [400] and b"connection: close" in answer


def test_a_head_that_starts_like_the_http2_preface_still_has_read_timeout_in_all() -> None:
    # "P" could open the HTTP/2 preface: the server waits for more before it decides, and that
    # wait counts toward the head's read_timeout.
    async def test(port: int, source: Source) -> tuple[bytes, float]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        start = trio.current_time()
        await stream.send_all(b"P")
        await trio.sleep(4.9)
        await stream.send_all(b"OST /v1/policies HTTP/1.1\r\n")
        answer = b""
        with trio.move_on_after(60):
            while chunk := await stream.receive_some(65536):
                answer += chunk
        await stream.aclose()
        return answer, trio.current_time() - start

    answer, took = run(test, limits=FrontLimits(read_timeout=30), mock=True)
    assert statuses(answer) == [408] and 30 <= took <= 31


# --- how many connections ------------------------------------------------------------------


def test_past_the_connection_cap_idle_connections_make_room_and_busy_ones_are_kept() -> None:
    # An attacker holding many connections must not exhaust the node's file descriptors
    # (libp2p and the store need them too): at most max_connections are open. An idle
    # keep-alive connection is closed to let a new client in; connections in the middle of a
    # request are not, and a new connection is then closed at once.
    async def test(port: int, source: Source) -> dict[str, Any]:
        out: dict[str, Any] = {}
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
        await trio.sleep(0.2)
        out["served_past_idle"] = await honest_is_served(port)  # evicts the oldest idle one
        out["evicted"] = await idle[0].receive_some(65536)
        for stream in idle[1:]:
            await stream.send_all(b"GET /health HTTP/1.1\r\n")  # a head begun, not finished
        busy = idle[1:]
        await trio.sleep(1)  # the server has read those heads, and closed the honest one
        extra = await trio.open_tcp_stream("127.0.0.1", port)
        await extra.send_all(b"GET /health HTTP/1.1\r\n")
        await trio.sleep(0.2)
        refused = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.move_on_after(2):
            out["refused"] = await refused.receive_some(65536)
        for stream in [*busy, extra]:
            await stream.send_all(b"\r\n")
            out.setdefault("busy_answers", []).append(statuses(await stream.receive_some(65536)))
        for stream in [*idle, extra, refused]:
            await stream.aclose()
        out["counts"] = dict(source.rejected)
        return out

    out = run(test, limits=FrontLimits(max_connections=4))
    assert out["served_past_idle"] and out["evicted"] == b""
    assert out["refused"] == b""  # closed at once, unanswered
    assert out["busy_answers"] == [[200]] * 4
    assert out["counts"]["http: idle-evicted"] == 1
    assert out["counts"]["http: connection-cap"] == 1


def test_the_default_cap_is_half_the_open_file_limit() -> None:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    expected = 4096 if soft == resource.RLIM_INFINITY else min(4096, max(64, soft // 2))
    assert FrontLimits().connection_cap() == expected
    assert FrontLimits(max_connections=7).connection_cap() == 7


def test_a_connection_whose_request_has_arrived_is_not_evicted() -> None:
    # Front.handle on socket pairs, cap 1: A's request is waiting in its socket when B
    # arrives at the cap. A must be served whole and B refused, never both open.
    import socket

    from kms.api.front import Front

    async def trial() -> tuple[bytes, int, int, dict[str, int]]:
        source = Source()
        front = Front(make_app(source), source, FrontLimits(max_connections=1))
        a_srv, a_cli = socket.socketpair()
        b_srv, b_cli = socket.socketpair()
        a = trio.SocketStream(trio.socket.from_stdlib_socket(a_srv))
        b = trio.SocketStream(trio.socket.from_stdlib_socket(b_srv))
        a_cli.sendall(b"GET /health HTTP/1.1\r\n\r\n")
        most_open = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(front.handle, a)
            while id(a) not in front._idle:  # A waits for its socket: its bytes are there
                await trio.lowlevel.checkpoint()
            nursery.start_soon(front.handle, b)
            for _ in range(30):
                await trio.sleep(0.01)
                most_open = max(most_open, front.open)
            answer = a_cli.recv(65536)
            for s in (a_cli, b_cli):
                s.close()  # the server's lingering close then ends at once
            nursery.cancel_scope.cancel()
        return answer, most_open, front.open, dict(source.rejected)

    async def main() -> list[tuple[bytes, int, int, dict[str, int]]]:
        return [await trial() for _ in range(10)]

    for answer, most_open, _, counts in trio.run(main):
        assert statuses(answer) == [200]
        assert most_open <= 1
        # B was refused, or found A idle again after its answer and took its place
        assert counts in ({"http: connection-cap": 1}, {"http: idle-evicted": 1})


def test_closing_connections_count_toward_the_cap_and_make_room_first() -> None:
    # Connections that end (``connection: close``) with a client that never closes its side
    # linger up to a second each; they hold a socket, so they count, and are the first
    # closed to let a new client in. Open sockets never pass the cap.
    from kms.api.front import Front

    source = Source()
    front = Front(make_app(source), source, FrontLimits(max_connections=8))

    async def main() -> tuple[int, bool]:
        most_open = 0
        held = []
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            await nursery.start(trio.serve_listeners, front.handle, listeners)
            for _ in range(200):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"GET /health HTTP/1.1\r\nconnection: close\r\n\r\n")
                held.append(stream)
                most_open = max(most_open, front.open)
                await trio.lowlevel.checkpoint()
            await trio.sleep(0.2)
            most_open = max(most_open, front.open)
            served = await honest_is_served(port)
            for stream in held:
                await stream.aclose()
            nursery.cancel_scope.cancel()
        return most_open, served

    most_open, served = trio.run(main)
    assert most_open <= 8 and served
    assert source.rejected["http: idle-evicted"] > 0


def test_http2_connections_hold_at_most_an_eighth_of_the_cap() -> None:
    from kms.api.front import H2_PREFACE

    async def test(port: int, source: Source) -> tuple[bytes, bool, dict[str, int]]:
        first = await trio.open_tcp_stream("127.0.0.1", port)
        await first.send_all(H2_PREFACE)  # held open by hypercorn, never idle here
        await trio.sleep(0.3)
        second = await exchange(port, H2_PREFACE, wait=2)
        served = await honest_is_served(port)
        await first.aclose()
        return second, served, dict(source.rejected)

    second, served, counts = run(test, limits=FrontLimits(max_connections=8))
    assert second == b"" and served
    assert counts["http: h2-cap"] == 1


def test_waiting_bytes_are_seen_on_descriptors_above_1023() -> None:
    # A busy node's sockets have high descriptors; select() cannot watch those, and a
    # connection whose request is waiting must still count as not idle.
    import os
    import resource
    import socket

    from kms.api.front import _readable

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    held = []
    try:
        while len(held) < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        a, b = socket.socketpair()
        try:
            assert a.fileno() > 1023
            assert not _readable(a.fileno())
            b.send(b"GET")
            assert _readable(a.fileno())
        finally:
            a.close()
            b.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
