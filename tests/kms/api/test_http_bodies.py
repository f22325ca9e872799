"""An anonymous client cannot make the public port hold a large request body.

Each test drives the node's ASGI app (``kms.api.http.make_app``) the way the
server does: the body arrives through the ASGI receive channel in chunks of
at most 64 KiB (hypercorn's socket read size), produced lazily by a
generator, so a 1 GiB body is never materialised. The wrapped receive counts
the bytes it delivered; the app must answer 413 having taken at most the
limit plus one chunk, and the node's handler must never see the body.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from kms.api.http import MAX_BODY, make_app
from kms.node.evidence_log import EvidenceRefusal, EvidenceRefused
from kms.node.release import KeyRefusalReason, ReleaseRefused
from kms.policy import PolicyFailure
from kms.policy.registry import OfferOutcome
from kms.protocol import AppKeyCertRequest, KeyRequest
from mpc.codec import MessageDecodeError

CHUNK = 64 * 1024
GiB = 1024**3
MiB = 1024**2
BLOCK = b"\x93" * CHUNK  # one shared chunk: the stream costs the test no memory

BODY_ROUTES = ("/v1/keys", "/v1/app-key-cert", "/v1/policies", "/v1/evidence")
# Routes that take no body, and a path that does not exist: bounded all the same.
OTHER_ROUTES = ("/v1/status", "/no/such/route")


class Source:
    """A node stand-in that records whether any handler was reached."""

    def __init__(self) -> None:
        self.rejected: Counter[str] = Counter()
        self.seen: list[tuple[str, int]] = []

    def status(self) -> dict[str, Any]:
        return {"healthy": True, "epoch": 1}

    def metrics_text(self) -> str:
        return ""

    async def release(self, request: KeyRequest) -> ReleaseRefused:
        self.seen.append(("release", len(request.encode())))
        return ReleaseRefused(KeyRefusalReason.NO_POLICY, "x")

    def refuse_key_request(self, exc: MessageDecodeError) -> ReleaseRefused:
        self.seen.append(("undecodable", 0))
        return ReleaseRefused(KeyRefusalReason.MALFORMED, "x")

    async def certify(self, request: AppKeyCertRequest) -> ReleaseRefused:
        self.seen.append(("certify", len(request.encode())))
        return ReleaseRefused(KeyRefusalReason.NO_POLICY, "x")

    def refuse_cert_request(self, exc: MessageDecodeError) -> ReleaseRefused:
        self.seen.append(("undecodable", 0))
        return ReleaseRefused(KeyRefusalReason.MALFORMED, "x")

    def chain_bytes(self) -> bytes:
        raise AssertionError("not called")

    def chain_page(self, start: int, limit: int, max_bytes: int) -> tuple[int, int, int, bytes]:
        raise AssertionError("not called")

    def count_rejected(self, label: str) -> None:
        self.rejected[label] += 1

    def offer_evidence(self, raw: bytes) -> EvidenceRefused:
        self.seen.append(("evidence", len(raw)))
        return EvidenceRefused(EvidenceRefusal.MALFORMED, "x")

    def audit_head(self) -> dict[str, Any]:
        raise AssertionError("not called")

    def offer_policy(self, raw: bytes) -> OfferOutcome:
        self.seen.append(("policy", len(raw)))
        return OfferOutcome(False, None, None, PolicyFailure.MALFORMED, "x")

    def policy_info(self, app_id: bytes) -> dict[str, Any] | None:
        return None


def stream(total: int) -> Iterator[bytes]:
    """``total`` bytes in chunks of at most ``CHUNK``, made as they are asked for."""
    left = total
    while left > 0:
        n = min(CHUNK, left)
        yield BLOCK if n == CHUNK else BLOCK[:n]
        left -= n


class Outcome:
    def __init__(self) -> None:
        self.delivered = 0
        self.at_answer: int | None = None  # bytes delivered when the answer started
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.answered = False


async def post(
    app: Any,
    path: str,
    total: int,
    *,
    content_length: str | None = None,
    method: str = "POST",
) -> Outcome:
    """Send a ``total``-byte body to ``path`` through the ASGI channel; count what was taken.

    Like hypercorn, once the answer is complete the channel passes no more of
    the body on and delivers a disconnect.
    """
    out = Outcome()
    chunks = stream(total)
    done = False

    async def receive() -> dict[str, Any]:
        nonlocal done
        await trio.lowlevel.checkpoint()
        if out.answered:
            return {"type": "http.disconnect"}
        if done:
            await trio.sleep_forever()  # as a server does until the client goes away
        chunk = next(chunks, b"")
        out.delivered += len(chunk)
        more = out.delivered < total
        done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.at_answer = out.delivered
            out.headers = dict(message.get("headers", []))
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")
            out.answered = not message.get("more_body", False)

    headers = [(b"content-type", b"application/msgpack")]
    if content_length is not None:
        headers.append((b"content-length", content_length.encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("203.0.113.9", 4000),
        "server": ("127.0.0.1", 8080),
    }
    with trio.fail_after(60):
        await app(scope, receive, send)
    return out


def run(coro_fn: Any, *args: Any, **kwargs: Any) -> Any:
    return trio.run(lambda: coro_fn(*args, **kwargs))


def assert_refused_early(out: Outcome, source: Source) -> None:
    assert out.status == 413, out.body
    assert out.at_answer is not None and out.at_answer <= MAX_BODY + CHUNK, out.at_answer
    assert out.delivered <= MAX_BODY + 2 * CHUNK, out.delivered  # and nothing more after it
    assert b'"reason":"body-too-large"' in out.body
    assert source.seen == []


@pytest.mark.parametrize("path", BODY_ROUTES + OTHER_ROUTES)
def test_a_1_gib_chunked_body_is_refused_after_at_most_the_limit_plus_one_chunk(
    path: str,
) -> None:
    source = Source()
    app = make_app(source)
    method = "POST" if path in BODY_ROUTES else "GET"
    out = run(post, app, path, GiB, method=method)
    if path in BODY_ROUTES:
        assert_refused_early(out, source)
        assert source.rejected["http body: body-too-large"] == 1
    else:
        # Never read at all: the route answers without touching the body.
        assert out.delivered <= MAX_BODY + CHUNK
        assert out.status in (200, 404)


@pytest.mark.parametrize("path", BODY_ROUTES + OTHER_ROUTES)
def test_a_declared_1_gib_body_is_refused_before_any_of_it_is_read(path: str) -> None:
    source = Source()
    out = run(post, make_app(source), path, GiB, content_length=str(GiB))
    assert out.status == 413 and out.at_answer == 0 and out.delivered <= CHUNK
    assert out.headers.get(b"connection") == b"close"
    assert source.seen == [] and source.rejected["http body: body-too-large"] == 1


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_longer_than_its_content_length_is_cut_at_the_limit(path: str) -> None:
    source = Source()
    out = run(post, make_app(source), path, GiB, content_length="100")
    assert_refused_early(out, source)


@pytest.mark.parametrize("path", BODY_ROUTES)
@pytest.mark.parametrize("value", ["abc", "-1", "1e9", "٣"])
def test_an_unusable_content_length_is_refused_with_a_reason(path: str, value: str) -> None:
    source = Source()
    out = run(post, make_app(source), path, 10, content_length=value)
    assert out.status == 400 and out.at_answer == 0
    assert b'"reason":"bad-content-length"' in out.body
    assert source.rejected["http body: bad-content-length"] == 1


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_32_concurrent_64_mib_bodies_each_cost_at_most_the_limit_plus_one_chunk(
    path: str,
) -> None:
    source = Source()
    app = make_app(source)
    outs: list[Outcome] = []

    async def one() -> None:
        outs.append(await post(app, path, 64 * MiB))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(32):
                nursery.start_soon(one)

    trio.run(main)
    assert len(outs) == 32
    for out in outs:
        assert_refused_early(out, source)
    assert sum(o.delivered for o in outs) <= 32 * (MAX_BODY + CHUNK)
    assert source.rejected["http body: body-too-large"] == 32


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_a_body_of_exactly_the_limit_reaches_the_node(path: str) -> None:
    source = Source()
    out = run(post, make_app(source), path, MAX_BODY)
    assert out.status != 413 and out.delivered == MAX_BODY
    if path in ("/v1/keys", "/v1/app-key-cert"):  # decoded: junk reaches the node as undecodable
        assert [k for k, _ in source.seen] == ["undecodable"]
    else:
        assert [n for _, n in source.seen] == [MAX_BODY]


def test_a_route_that_reads_its_body_another_way_is_bounded_by_the_server_limit() -> None:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    source = Source()
    app = make_app(source)
    whole: list[int] = []

    async def careless(request: Request) -> Response:
        whole.append(len(await request.body()))  # no limit of its own
        return Response(b"ok")

    app.router.routes.append(Route("/careless", careless, methods=["POST"]))
    out = run(post, app, "/careless", GiB)
    assert out.status == 413 and whole == []
    assert out.delivered <= MAX_BODY + CHUNK
    assert source.rejected["http body: body-too-large"] == 1


def public_port(source: Source | None = None) -> Any:
    """The node's public-port server (``kms.api.front.serve``) over ``make_app(source)`` on a
    free loopback port, for ``nursery.start`` (which returns its ``http://`` addresses)."""
    from functools import partial

    from kms.api.front import serve

    source = source or Source()
    return partial(serve, make_app(source), source, "127.0.0.1:0")


async def through_server(path: str, method: str, limit: int) -> tuple[bytes, int]:
    """Stream up to ``limit`` bytes chunked at the node's public-port server.

    Returns what the client read until the server closed the connection, and
    how many body bytes the client managed to write before that.
    """
    sent = 0
    answer = b""
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(public_port())
        port = int(binds[0].rsplit(":", 1)[1])
        client = await trio.open_tcp_stream("127.0.0.1", port)
        head = f"{method} {path} HTTP/1.1\r\nhost: node\r\ntransfer-encoding: chunked\r\n\r\n"
        await client.send_all(head.encode())
        frame = b"%x\r\n" % CHUNK + BLOCK + b"\r\n"

        async def write() -> None:
            nonlocal sent
            try:
                while sent < limit:
                    await client.send_all(frame)
                    sent += CHUNK
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        with trio.fail_after(30):  # the server closes; no hang
            async with trio.open_nursery() as inner:
                inner.start_soon(write)
                while data := await client.receive_some(65536):
                    answer += data
                inner.cancel_scope.cancel()
        await client.aclose()
        nursery.cancel_scope.cancel()
    return answer, sent


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/v1/policies", "POST", b"413"),
        ("/v1/keys", "POST", b"413"),
        ("/v1/evidence", "POST", b"413"),
        ("/health", "GET", b"413"),
        ("/v1/keys", "GET", b"413"),
    ],
)
def test_through_the_server_the_node_answers_and_closes_the_connection(
    path: str, method: str, status: bytes
) -> None:
    # Every route, one that takes no body and a method the route does not allow included:
    # the server reads no more than the limit of any body before it answers.
    answer, sent = trio.run(through_server, path, method, GiB)
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:60]
    # The server stopped reading and closed; the client only filled socket buffers.
    assert sent < 64 * MiB, sent


# httpx leaves the request's body iterator unclosed when the server stops taking data.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(("path", "method"), [("/v1/policies", "POST"), ("/health", "GET")])
def test_an_http2_body_that_keeps_coming_after_the_answer_does_not_stop_the_server(
    path: str, method: str
) -> None:
    """HTTP/2 with prior knowledge (handed to hypercorn by the public port): data for a
    stream the node already answered is dropped."""
    import httpx

    async def main() -> int:
        with trio.fail_after(60):
            return await run_server()

    async def run_server() -> int:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(public_port())
            url = binds[0] + path

            async def body():  # type: ignore[no-untyped-def]
                for _ in stream(64 * MiB):
                    yield BLOCK

            async with httpx.AsyncClient(http1=False, http2=True, timeout=2) as h2client:
                with pytest.raises(httpx.TransportError):  # the node stops taking data
                    await h2client.request(method, url, content=body())
            async with httpx.AsyncClient(timeout=10) as client:
                status = (await client.get(binds[0] + "/health")).status_code
            nursery.cancel_scope.cancel()
            return status

    assert trio.run(main) == 200  # the server is still serving
