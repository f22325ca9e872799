"""Clients that trickle their bodies hold no release place: honest requests are served.

A key request takes one of the ``release_concurrency`` places only once its
whole body has arrived, within ``release_body_timeout`` for all of it; a
body still incomplete then is answered ``408 body-timeout``. Each test runs
the attack as a client would: slow bodies sent byte by byte just under
the server's per-read timeout (simulated time), over real sockets, and as the
streams of one HTTP/2 connection, while honest complete requests get the
node's own answer (the stand-in refuses ``no_policy``: ``403``), never
``503 overloaded``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h2.config
import h2.connection
import trio
import trio.testing
from test_http_bodies import Source
from test_shed import KEY_REQUEST, Answer, call

from kms.api.http import make_app
from kms.api.shed import ShedLimits

HEAD = (
    "POST /v1/keys HTTP/1.1\r\nhost: node\r\ncontent-type: application/msgpack\r\n"
    f"content-length: {len(KEY_REQUEST)}\r\n\r\n"
).encode()


async def _slow_request(app: Any, answers: list[int]) -> None:
    """One key request whose body comes one byte every 29 s (under a 30 s read timeout)
    and never ends; the server reports the disconnect once it has answered."""
    answered = trio.Event()
    pos = 0

    async def receive() -> dict[str, Any]:
        nonlocal pos
        if pos:
            with trio.move_on_after(29):
                await answered.wait()
        if answered.is_set() or pos >= len(KEY_REQUEST) - 1:
            await answered.wait()
            return {"type": "http.disconnect"}
        pos += 1
        return {"type": "http.request", "body": KEY_REQUEST[pos - 1 : pos], "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answers.append(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/keys",
        "raw_path": b"/v1/keys",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/msgpack"),
            (b"content-length", str(len(KEY_REQUEST)).encode()),
        ],
        "client": ("203.0.113.9", 1),
        "server": ("127.0.0.1", 2),
    }
    await app(scope, receive, send)


def test_slow_bodies_hold_no_release_place() -> None:
    # As many slow clients as there are places and queue places, each sending a new slow
    # request as soon as the last is answered, for five simulated minutes.
    source = Source()
    limits = ShedLimits()  # the defaults
    app = make_app(source, limits)
    honest = [Answer() for _ in range(10)]
    slow_answers: list[int] = []

    async def attacker() -> None:
        while True:
            await _slow_request(app, slow_answers)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(limits.concurrency + limits.queue):
                nursery.start_soon(attacker)
            await trio.sleep(1)  # the slow bodies have begun
            for a in honest:
                await call(app, "/v1/keys", a)
                await trio.sleep(30)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [a.status for a in honest] == [403] * len(honest)
    assert slow_answers and set(slow_answers) == {408}
    assert source.rejected["http body: body-timeout"] == len(slow_answers)


def test_a_body_that_does_not_arrive_in_time_is_answered_408() -> None:
    source = Source()
    app = make_app(source, ShedLimits(body_timeout=2))
    answers: list[int] = []
    bodies: list[bytes] = []

    async def main() -> None:
        answered = trio.Event()

        async def receive() -> dict[str, Any]:
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answers.append(message["status"])
            else:
                bodies.append(message["body"])
                answered.set()

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/app-key-cert",
            "headers": [(b"content-type", b"application/msgpack")],
        }
        start = trio.current_time()
        await app(scope, receive, send)
        assert trio.current_time() - start == 2

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert answers == [408]
    answer = json.loads(bodies[0])
    assert answer["reason"] == "body-timeout" and answer["timeout"] == 2
    assert source.rejected["http body: body-timeout"] == 1
    assert source.seen == []  # nothing was decoded


async def _serve(
    body_timeout: float, attack: Callable[[int, list[int]], Awaitable[None]]
) -> tuple[list[bytes], list[int]]:
    """Serves the app on a real socket under ``attack``; honest requests at 0.5 s, 1.5 s, 2.5 s."""
    from kms.api.front import serve

    source = Source()
    app = make_app(source, ShedLimits(body_timeout=body_timeout))
    honest: list[bytes] = []
    slow_answers: list[int] = []
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, source, "127.0.0.1:0"))
        port = int(binds[0].rsplit(":", 1)[1])
        nursery.start_soon(attack, port, slow_answers)
        await trio.sleep(0.5)
        for _ in range(3):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(HEAD.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
            await stream.send_all(KEY_REQUEST)
            answer = b""
            with trio.move_on_after(5):
                while True:  # the answer ends with the connection
                    data = await stream.receive_some(65536)
                    if not data:
                        break
                    answer += data
            await stream.aclose()
            honest.append(answer)
            await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return honest, slow_answers


def test_slow_bodies_over_real_sockets_leave_honest_clients_served() -> None:
    # Eight HTTP/1.1 connections trickle their bodies (a byte every 0.2 s, under any read
    # timeout) and open a new one when answered.
    async def slow(port: int, answers: list[int]) -> None:
        while True:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await stream.send_all(HEAD)
                for i in range(len(KEY_REQUEST) - 1):  # never the last byte
                    await stream.send_all(KEY_REQUEST[i : i + 1])
                    with trio.move_on_after(0.2):
                        data = await stream.receive_some(65536)
                        answers.append(int(data.split(b" ", 2)[1]) if data else 0)
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                answers.append(0)
            finally:
                await stream.aclose()

    async def attack(port: int, answers: list[int]) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(slow, port, answers)

    honest, slow_answers = trio.run(_serve, 1.0, attack)
    assert all(a.startswith(b"HTTP/1.1 403") for a in honest), [a[:100] for a in honest]
    assert 408 in slow_answers


def test_one_h2_connection_holds_no_release_place() -> None:
    # One HTTP/2 (prior knowledge) connection opens every stream it may as a key request,
    # sends one body byte on each and keeps the connection alive.
    async def attack(port: int, answers: list[int]) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await _h2_streams(stream, answers)

    honest, slow_answers = trio.run(_serve, 1.0, attack)
    assert all(a.startswith(b"HTTP/1.1 403") for a in honest), [a[:100] for a in honest]
    assert 408 in slow_answers


async def _h2_streams(stream: trio.SocketStream, answers: list[int]) -> None:
    """Every stream hypercorn allows, one body byte each, the connection kept alive."""
    try:
        await _h2_attack(stream, answers)
    except trio.BrokenResourceError:
        answers.append(0)  # the node closed the connection


async def _h2_attack(stream: trio.SocketStream, answers: list[int]) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for _ in range(16):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":path", "/v1/keys"),
                (":scheme", "http"),
                (":authority", "node"),
                ("content-type", "application/msgpack"),
                ("content-length", str(len(KEY_REQUEST))),
            ],
        )
        conn.send_data(sid, KEY_REQUEST[:1])
    await stream.send_all(conn.data_to_send())
    while True:
        with trio.move_on_after(0.5):
            data = await stream.receive_some(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                status = dict(getattr(event, "headers", None) or []).get(b":status")
                if status is not None:
                    answers.append(int(status))
        conn.ping(b"12345678")
        await stream.send_all(conn.data_to_send())
