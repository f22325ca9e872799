"""The node's public port: an HTTP/1.1 server that answers key requests without a framework.

``serve`` listens on the public port and runs one task per connection. The task
reads the socket, parses it with llhttp (``httptools``, strict: no obs-fold, no
bare LF, no ``Content-Length`` beside ``Transfer-Encoding``, no differing or
repeated ``Content-Length``) and answers the connection's requests one at a
time, in order:

* ``POST /v1/keys`` and ``POST /v1/app-key-cert`` are answered here, by the
  same functions the app's routes call (``kms.api.http.answer_key_request``,
  ``answer_cert_request``), under the app's own ``Admission`` (one bound
  however a request arrives) and with the rules of ``kms.api.shed``: refused
  ``503 overloaded`` before the body is read when every place and queue place
  is taken; the whole body within ``ShedLimits.body_timeout`` or ``408``; a
  place taken only once the body is complete;
* every other request is passed, with its whole body, to the node's ASGI app
  (``kms.api.http.make_app``) as one ASGI call, and its answer written with a
  ``Content-Length``;
* a connection that opens with the HTTP/2 preface (prior knowledge) is
  handed, with the bytes read so far, to hypercorn serving the same app with
  ``kms.api.http.server_config``'s limits. ``Upgrade`` is ignored (allowed by
  RFC 9110): the request, with the body its head declared, is answered over
  HTTP/1.1 and the connection stays HTTP/1.1. A ``CONNECT`` is answered (by
  the app: no route) and the connection closed, nothing after it read.

What one connection can make the node hold (``FrontLimits``): a request head
(request line and headers) of at most ``head_bytes`` (16 KiB) counted from
where the server waits for it (a head that follows the previous request in
the same read may carry up to that read, 64 KiB, more), and
``max_headers`` header lines; a body of at most ``MAX_BODY`` (``413`` past
it, by ``Content-Length`` before reading, else as soon as the bytes pass it);
at most ``2 × MAX_BODY`` raw bytes per request however the body is framed
(chunk extensions and trailers included); requests parsed ahead of the one
being answered only from one read of at most 64 KiB (the socket is not read
again until they are answered), at most ``max_pipelined`` of them. A request
head must arrive within ``read_timeout`` of its first byte, every read within
a request within ``read_timeout``, a body for any other route within
``read_timeout`` as a whole, and an answer must be taken by the client within
``read_timeout``; a connection idle between requests is closed after
``keep_alive_timeout``. A request that breaks these is answered ``400``,
``408``, ``413`` or ``431`` with ``Connection: close`` (or, if nothing of it
can be answered, the connection is closed; an answer not taken in time is
counted as ``write-timeout``), and counted under
``qkms_rejected_inputs_total{reason="http: …"}`` or ``"http body: …"``.
At most ``max_connections`` connections are open at once (by default half the
open-file limit: HTTP clients cannot take the descriptors libp2p and the store
need; a socket counts until it is closed); past it the oldest idle keep-alive
connection (nothing waiting in its socket) or lingering one is closed to make
room, or, with none, the new connection is closed at once (``connection-cap``);
HTTP/2 connections take at most an eighth of the cap.
Nothing a client sends raises out of its connection's task.
"""

from __future__ import annotations

import email.utils
import logging
import math
import resource
import select
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
import trio

from kms.api.http import (
    BodyRefusal,
    BodyRefused,
    NodeApp,
    StatusSource,
    answer_cert_request,
    answer_key_request,
    json_bytes,
    server_config,
)
from kms.api.limits import MAX_BODY
from kms.api.shed import (
    BODY_TIMEOUT,
    Admission,
    ShedLimits,
    body_timeout_answer,
    overloaded_answer,
)

log = logging.getLogger("quorum_kms.http")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
RECV = 64 * 1024

Answer = Callable[[StatusSource, bytes, str, str], Awaitable[tuple[int, str, bytes]]]

DIRECT: dict[bytes, tuple[str, Answer]] = {
    b"/v1/keys": ("keys", answer_key_request),
    b"/v1/app-key-cert": ("app-key-cert", answer_cert_request),
}
"""The routes answered here (``POST`` only), with their ``route`` label and answer."""


class FrontRefusal:
    """The ``reason`` of a request the server itself refused (``qkms_rejected_inputs_total``
    counts ``http: <reason>``)."""

    MALFORMED = "malformed-request"
    """Not HTTP/1.1 as llhttp reads it strictly (smuggling shapes included): ``400``."""
    HEAD_TOO_LARGE = "head-too-large"
    """Request line and headers over ``head_bytes`` or ``max_headers``: ``431``."""
    HEAD_TIMEOUT = "head-timeout"
    """The request head did not arrive within ``read_timeout``: ``408``."""
    READ_TIMEOUT = "read-timeout"
    """A read within a request, or another route's whole body, took over ``read_timeout``."""
    PIPELINE = "too-many-pipelined"
    """More than ``max_pipelined`` requests sent ahead of their answers."""
    CONNECTION_CAP = "connection-cap"
    """A new connection closed at once: ``max_connections`` open, none of them idle."""
    IDLE_EVICTED = "idle-evicted"
    """An idle keep-alive connection (or one lingering at its close) closed to make room."""
    H2_CAP = "h2-cap"
    """A new HTTP/2 connection closed at once: an eighth of ``max_connections`` are HTTP/2."""
    WRITE_TIMEOUT = "write-timeout"
    """An answer not taken by the client within ``read_timeout``: the connection is closed."""


@dataclass(frozen=True)
class FrontLimits:
    """What one connection may make the public port hold (the module docstring)."""

    head_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body: int = MAX_BODY
    read_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_pipelined: int = 16
    max_connections: int | None = None
    """Open connections at most (``None``: half the process's open-file limit, between 64
    and 4,096); past it an idle keep-alive connection is closed to make room, or, if none
    is idle, the new one is closed at once."""

    def __post_init__(self) -> None:
        for name in ("read_timeout", "keep_alive_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds, above 0")
        if min(self.head_bytes, self.max_headers, self.max_body, self.max_pipelined) < 1:
            raise ValueError("head_bytes, max_headers, max_body and max_pipelined must be >= 1")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")

    def connection_cap(self) -> int:
        """``max_connections``, or its default from the open-file limit."""
        if self.max_connections is not None:
            return self.max_connections
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return 4096
        return min(4096, max(64, soft // 2))


class _Refuse(Exception):
    """Raised inside the parser's callbacks to stop parsing a connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Request:
    url: bytearray = field(default_factory=bytearray)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    head_done: bool = False
    done: bool = False
    keep_alive: bool = True
    method: bytes = b""
    version: str = "1.1"
    body: bytearray = field(default_factory=bytearray)
    too_large: bool = False
    content_length: int | None = None
    expects_continue: bool = False

    def header(self, name: bytes) -> str:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return ""


class _Parse:
    """llhttp's callbacks over one connection: the requests parsed so far, in order."""

    def __init__(self, limits: FrontLimits) -> None:
        self.limits = limits
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[_Request] = deque()
        self.in_head = True  # the next bytes belong to a request head
        self.counted = 0  # bytes fed in the current head or message
        self.started = False  # the current request's head has begun
        self.error: _Refuse | None = None
        self.stopped = False  # nothing more is read as HTTP (after a CONNECT)
        self.synthetic = False  # parsing the framing head of an upgrade request's body

    def feed(self, data: bytes) -> None:
        """Parse ``data``; a refusal is kept in ``error`` (parsing stops for good)."""
        view = memoryview(data)
        try:
            while view and self.error is None and not self.stopped:
                if self.in_head:
                    room = self.limits.head_bytes - self.counted
                    if room <= 0:
                        raise _Refuse(431, FrontRefusal.HEAD_TOO_LARGE)
                else:
                    room = 2 * self.limits.max_body - self.counted
                    if room <= 0:
                        raise _Refuse(413, BodyRefusal.TOO_LARGE.value)
                piece = view[:room]
                view = view[len(piece) :]
                self.counted += len(piece)
                try:
                    self.parser.feed_data(piece)
                except httptools.HttpParserUpgrade as upgrade:
                    offset = int(upgrade.args[0]) if upgrade.args else len(piece)
                    view = memoryview(bytes(piece[offset:]) + bytes(view))
                    self._upgraded()
        except _Refuse as refusal:
            self.error = refusal
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__ or exc.__cause__
            self.error = cause if isinstance(cause, _Refuse) else _Refuse(400, "malformed")
        except httptools.HttpParserError:
            self.error = _Refuse(400, FrontRefusal.MALFORMED)

    def _upgraded(self) -> None:
        """llhttp stopped after a request with ``Upgrade`` (or a ``CONNECT``), taking it as
        complete at the end of its head and what follows as another protocol. ``Upgrade``
        is ignored: the request's body, if its head declared one, is read as declared (a
        new parser, given a head with the same framing, passes it to the request), and what
        follows is the next HTTP/1.1 request. A ``CONNECT`` is answered and the connection
        closed; nothing after it is read."""
        self.parser = httptools.HttpRequestParser(self)
        request = self.requests[-1] if self.requests else None
        if request is None or request.method == b"CONNECT":
            if request is not None:
                request.keep_alive = False
            self.stopped = True
            return
        codings = [
            c.strip().lower()
            for name, value in request.headers
            if name == b"transfer-encoding"
            for c in value.decode("latin-1").split(",")
        ]
        chunked = bool(codings)
        if chunked and (codings[-1] != "chunked" or codings.count("chunked") > 1):
            # llhttp checks the last coding after its upgrade check: the same rule here.
            request.done = False
            raise _Refuse(400, FrontRefusal.MALFORMED)
        if not chunked and not request.content_length:
            self.in_head, self.counted, self.started = True, 0, False
            return
        request.done = False
        framing = (
            b"transfer-encoding: chunked\r\n"
            if chunked
            else b"content-length: %d\r\n" % (request.content_length or 0)
        )
        self.synthetic = True
        self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n")

    # llhttp's callbacks

    def on_message_begin(self) -> None:
        if self.synthetic:
            return
        if len(self.requests) >= self.limits.max_pipelined:
            raise _Refuse(400, FrontRefusal.PIPELINE)
        self.started = True
        self.requests.append(_Request())

    def on_url(self, url: bytes) -> None:
        if not self.synthetic:
            self.requests[-1].url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.requests[-1]
        if request.head_done:
            return  # a trailer: counted as body bytes, not kept
        if len(request.headers) >= self.limits.max_headers:
            raise _Refuse(431, FrontRefusal.HEAD_TOO_LARGE)
        request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.synthetic:
            self.synthetic = False
            self.in_head, self.counted, self.started = False, 0, False
            return
        request = self.requests[-1]
        if self.parser.get_http_version() not in ("1.0", "1.1"):
            raise _Refuse(400, FrontRefusal.MALFORMED)
        request.head_done = True
        request.keep_alive = bool(self.parser.should_keep_alive())
        request.method = self.parser.get_method()
        request.version = self.parser.get_http_version()
        length = request.header(b"content-length")
        if length:
            request.content_length = int(length)  # llhttp checked: digits, given once
            if request.content_length > self.limits.max_body:
                request.too_large = True
        if request.version == "1.0" and request.header(b"transfer-encoding"):
            request.keep_alive = False  # RFC 9112 6.1: its framing is faulty; close after
        request.expects_continue = request.header(b"expect").lower() == "100-continue"
        self.in_head, self.counted = False, 0

    def on_body(self, body: bytes) -> None:
        request = self.requests[-1]
        if request.too_large:
            return
        request.body += body
        if len(request.body) > self.limits.max_body:
            request.too_large = True
            request.body = bytearray()

    def on_message_complete(self) -> None:
        self.requests[-1].done = True
        self.in_head, self.counted, self.started = True, 0, False


class _Date:
    """The ``Date`` header's value, formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.value = email.utils.formatdate(now, usegmt=True).encode()
        return self.value


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


class Front:
    """The public port's connection handler over the node's app and source."""

    def __init__(
        self,
        app: NodeApp,
        source: StatusSource,
        limits: FrontLimits | None = None,
        on_shed: Callable[[str], None] | None = None,
        direct: Mapping[bytes, tuple[str, Answer]] | None = None,
    ) -> None:
        self.app = app
        self.direct = DIRECT if direct is None else direct
        self.source = source
        self.limits = limits or FrontLimits()
        if app.admission is None:
            app.admission = Admission(ShedLimits())
        self.admission: Admission = app.admission
        self.on_shed = on_shed
        shed = self.admission.limits
        self._overloaded = overloaded_answer(shed)
        self._body_timeout = body_timeout_answer(shed)
        self._date = _Date()
        self._status_lines = {s: _status_line(s) for s in (200, 400, 403, 404, 408, 413, 503)}
        self._h2: Any = None
        self.cap = self.limits.connection_cap()
        self.open = 0
        # Connections that may be closed to make room, oldest first: their cancel scope, and
        # the socket's descriptor if it is waiting for a request (-1 while lingering).
        self._idle: dict[int, tuple[trio.CancelScope, int]] = {}
        self._evicted: set[int] = set()
        # HTTP/2 connections are never idle here (hypercorn holds them while they have no
        # stream open, 30 s or longer if the client pings): at most an eighth of the cap.
        self.h2_cap = max(1, self.cap // 8)
        self.h2_open = 0

    # the connection

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection until it closes; never raises for what the client did."""
        if self.open >= self.cap and not self._make_room():
            self.source.count_rejected(f"http: {FrontRefusal.CONNECTION_CAP}")
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()
            return
        self.open += 1
        try:
            await self._connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except trio.TooSlowError:  # an answer the client did not take in time
            self.source.count_rejected(f"http: {FrontRefusal.WRITE_TIMEOUT}")
        except Exception:  # a bug here must not end the server, and with it the node
            log.exception("public port connection failed")
        finally:
            # The socket counts as open until it is closed, its lingering included (which
            # may be cut short to make room, as an idle connection's wait is).
            with trio.CancelScope(shield=True):
                key = id(stream)
                try:
                    if key in self._evicted:
                        with trio.move_on_after(1):
                            await stream.aclose()
                    else:
                        scope = trio.CancelScope()
                        self._idle[key] = (scope, -1)
                        try:
                            await _linger_and_close(stream, scope)
                        finally:
                            self._idle.pop(key, None)
                finally:
                    if key in self._evicted:
                        self._evicted.discard(key)  # given back when it was evicted
                    else:
                        self.open -= 1

    def _make_room(self) -> bool:
        """Close the oldest idle (or lingering) connection to make room for a new one;
        ``False`` if none is idle."""
        for key, (scope, fd) in self._idle.items():
            if fd >= 0 and _readable(fd):
                continue  # its next request (or its close) has arrived: not idle any more
            del self._idle[key]
            self._evicted.add(key)
            self.open -= 1  # its place goes to the new connection now; it closes at once
            scope.cancel()
            self.source.count_rejected(f"http: {FrontRefusal.IDLE_EVICTED}")
            return True
        return False

    async def _receive_idle(self, stream: trio.SocketStream) -> bytes | None:
        """One read while the connection is idle (no request begun), for at most
        ``keep_alive_timeout``; ``None`` if none came or the connection was evicted to make
        room for a new one. The connection is evictable only while it waits for the socket
        to become readable; it leaves the idle set before anything is read, with no
        checkpoint between, so bytes read are never dropped by an eviction."""
        key = id(stream)
        scope = trio.CancelScope(deadline=trio.current_time() + self.limits.keep_alive_timeout)
        fd = stream.socket.fileno()
        self._idle[key] = (scope, fd)
        registered = False
        with scope:
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                entry = self._idle.pop(key, None)
                registered = entry is not None and entry[0] is scope
        if not registered or scope.cancelled_caught:
            return None  # evicted (possibly after the wait ended) or timed out
        return await stream.receive_some(RECV)

    async def _connection(self, stream: trio.SocketStream) -> None:
        parse = _Parse(self.limits)
        first = await self._receive_idle(stream)
        if not first:
            return
        since: float | None = trio.current_time()  # when the first byte arrived
        with trio.move_on_after(self.limits.keep_alive_timeout):
            while len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                data = await stream.receive_some(RECV)
                if not data:
                    return
                first += data
        if first.startswith(H2_PREFACE):
            if self.h2_open >= self.h2_cap:
                self.source.count_rejected(f"http: {FrontRefusal.H2_CAP}")
                return
            self.h2_open += 1
            try:
                await self._hand_to_h2(stream, first)
            finally:
                self.h2_open -= 1
            return
        parse.feed(first)
        while True:
            request = parse.requests[0] if parse.requests else None
            if request is None or not request.head_done:
                if parse.error is not None:
                    await self._refuse_parse(stream, parse.error)
                    return
                if not await self._read_head(stream, parse, since):
                    return
                since = None
                continue
            route = self.direct.get(bytes(request.url).split(b"?", 1)[0])
            if route is not None and request.method == b"POST":
                keep = await self._direct(stream, parse, request, *route)
            else:
                keep = await self._through_app(stream, parse, request)
            parse.requests.popleft()
            if not keep:
                return

    async def _read_head(
        self, stream: trio.SocketStream, parse: _Parse, since: float | None = None
    ) -> bool:
        """Read until the next request's head is complete; ``False``: the connection ends.
        ``since``: when the head's first byte arrived, if it was read before."""
        if not parse.started and not parse.stopped:
            # Idle between requests: keep_alive_timeout, and evictable.
            data = await self._receive_idle(stream)
            if not data:
                return False
            since = trio.current_time()
            parse.feed(data)
        # The whole head has read_timeout from its first byte.
        deadline = (trio.current_time() if since is None else since) + self.limits.read_timeout
        while not (parse.requests and parse.requests[0].head_done) and parse.error is None:
            if parse.stopped:
                return False
            with trio.move_on_at(deadline):
                data = await stream.receive_some(RECV)
                if not data:
                    return False
                parse.feed(data)
                continue
            await self._refuse(stream, 408, FrontRefusal.HEAD_TIMEOUT)
            return False
        return True

    async def _read_body(
        self, stream: trio.SocketStream, parse: _Parse, request: _Request, timeout: float
    ) -> bool:
        """Read until ``request`` is complete, too large or broken, within ``timeout`` in all
        and ``read_timeout`` per read; ``False``: the time ran out."""
        with trio.move_on_after(timeout):
            while not (request.done or request.too_large or parse.error is not None):
                with trio.fail_after(self.limits.read_timeout):
                    data = await stream.receive_some(RECV)
                if not data:
                    raise trio.BrokenResourceError("the client closed the connection")
                parse.feed(data)
            return True
        return False

    async def _take_body(
        self,
        stream: trio.SocketStream,
        parse: _Parse,
        request: _Request,
        timeout: float,
        timed_out: Callable[[], Awaitable[None]],
    ) -> bool:
        """Read ``request``'s whole body within ``timeout``; ``False``: it was refused (too
        large, broken, or late: ``timed_out`` answers that) and the connection ends."""
        if request.too_large:
            return await self._body_refused(stream)
        if request.expects_continue and not request.done:
            await self._continue(stream)
        try:
            arrived = await self._read_body(stream, parse, request, timeout)
        except trio.TooSlowError:
            arrived = False
        if request.too_large:
            return await self._body_refused(stream)
        if parse.error is not None and not request.done:
            await self._refuse_parse(stream, parse.error)
            return False
        if not arrived:
            await timed_out()
            return False
        return True

    async def _direct(
        self,
        stream: trio.SocketStream,
        parse: _Parse,
        request: _Request,
        route: str,
        answer: Answer,
    ) -> bool:
        """A key or certificate request, answered here (``kms.api.shed``'s rules)."""
        if self.admission.full:
            self._shed(route)
            body, headers = self._overloaded
            keep = request.done and request.keep_alive
            await self._write(stream, 503, headers, body, keep, request)
            return keep

        async def timed_out() -> None:
            self.source.count_rejected(f"http body: {BODY_TIMEOUT}")
            body, headers = self._body_timeout
            await self._write(stream, 408, headers, body, False)

        timeout = self.admission.limits.body_timeout
        if not await self._take_body(stream, parse, request, timeout, timed_out):
            return False
        if not await self.admission.enter():
            self._shed(route)
            body, headers = self._overloaded
            await self._write(stream, 503, headers, body, request.keep_alive, request)
            return request.keep_alive
        try:
            code, media, payload = await answer(
                self.source,
                bytes(request.body),
                request.header(b"content-type"),
                request.header(b"accept"),
            )
        except Exception:
            log.exception("a key route failed", extra={"fields": {"route": route}})
            await self._internal_error(stream)
            return False
        finally:
            self.admission.leave()
        headers = [(b"content-type", media.encode()), (b"content-length", b"%d" % len(payload))]
        await self._write(stream, code, headers, payload, request.keep_alive, request)
        return request.keep_alive

    async def _through_app(
        self, stream: trio.SocketStream, parse: _Parse, request: _Request
    ) -> bool:
        """Any other request: its whole body, then one call of the node's ASGI app."""

        async def timed_out() -> None:
            await self._refuse(stream, 408, FrontRefusal.READ_TIMEOUT)

        timeout = self.limits.read_timeout
        if not await self._take_body(stream, parse, request, timeout, timed_out):
            return False
        try:
            status, headers, body = await self._call_app(stream, request)
        except Exception:
            # Starlette has answered 500 (and raised again), or nothing was answered.
            log.exception("a route of the app failed")
            await self._internal_error(stream)
            return False
        keep = request.keep_alive and (b"connection", b"close") not in [
            (k.lower(), v.lower()) for k, v in headers
        ]
        if request.method == b"HEAD":
            body = b""  # the app's Content-Length stays: the GET's
        else:  # ``_write`` gives the length of what is sent
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        await self._write(stream, status, headers, body, keep, request)
        return keep

    async def _call_app(
        self, stream: trio.SocketStream, request: _Request
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        url = bytes(request.url)
        if not url.startswith(b"/"):
            try:
                parsed = httptools.parse_url(url)
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            except httptools.HttpParserInvalidURLError:
                url = b"/"
        raw_path, _, query = url.partition(b"?")
        try:
            client = tuple(stream.socket.getpeername()[:2])
            server = tuple(stream.socket.getsockname()[:2])
        except OSError:
            client = server = None  # type: ignore[assignment]
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.version,
            "method": request.method.decode("ascii"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": client,
            "server": server,
            "state": {},
        }
        body = bytes(request.body)
        answered = trio.Event()
        delivered = False
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def receive() -> MutableMapping[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    answered.set()

        try:
            await self.app(scope, receive, send)
        finally:
            answered.set()
        return status, headers, b"".join(chunks)

    async def _hand_to_h2(self, stream: trio.SocketStream, first: bytes) -> None:
        """An HTTP/2 connection (prior knowledge): hypercorn serves it with the same app."""
        from hypercorn.trio.tcp_server import TCPServer
        from hypercorn.trio.worker_context import WorkerContext
        from hypercorn.typing import ConnectionState
        from hypercorn.utils import wrap_app

        if self._h2 is None:
            config = server_config("127.0.0.1:0")
            app: Any = self.app  # an ASGI app; hypercorn types it narrowly
            self._h2 = (wrap_app(app, config.wsgi_max_body_size, "asgi"), config)
        wrapped, config = self._h2
        replay: Any = _Replay(stream, first)  # hypercorn reads it as a plain stream
        server = TCPServer(wrapped, config, WorkerContext(None), ConnectionState({}), replay)
        await server.run()

    # answers

    def _shed(self, route: str) -> None:
        if self.on_shed is not None:
            self.on_shed(route)

    async def _body_refused(self, stream: trio.SocketStream) -> bool:
        refused = BodyRefused(BodyRefusal.TOO_LARGE, self.limits.max_body)
        self.source.count_rejected(f"http body: {refused.reason.value}")
        body = json_bytes(refused.body())
        await self._write(stream, 413, [(b"content-type", b"application/json")], body, False)
        return False

    async def _continue(self, stream: trio.SocketStream) -> None:
        with trio.fail_after(self.limits.read_timeout):
            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def _internal_error(self, stream: trio.SocketStream) -> None:
        body = json_bytes({"reason": "internal-error", "detail": "the node failed this request"})
        await self._write(stream, 500, [(b"content-type", b"application/json")], body, False)

    async def _refuse_parse(self, stream: trio.SocketStream, error: _Refuse) -> None:
        if error.reason == BodyRefusal.TOO_LARGE.value:
            await self._body_refused(stream)
            return
        await self._refuse(stream, error.status, error.reason)

    async def _refuse(self, stream: trio.SocketStream, status: int, reason: str) -> None:
        self.source.count_rejected(f"http: {reason}")
        body = json_bytes({"reason": reason, "detail": _DETAILS.get(reason, reason)})
        await self._write(stream, status, [(b"content-type", b"application/json")], body, False)

    async def _write(
        self,
        stream: trio.SocketStream,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        request: _Request | None = None,
    ) -> None:
        line = self._status_lines.get(status) or _status_line(status)
        parts = [line]
        has_length = False
        for name, value in headers:
            if name.lower() in (b"connection", b"date"):
                continue  # its own, below
            has_length = has_length or name.lower() == b"content-length"
            parts.append(b"%s: %s\r\n" % (name, value))
        if not has_length:
            parts.append(b"content-length: %d\r\n" % len(body))
        parts.append(b"date: %s\r\n" % self._date())
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif request is not None and request.version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        parts.append(body)
        with trio.fail_after(self.limits.read_timeout):
            await stream.send_all(b"".join(parts))


_DETAILS = {
    FrontRefusal.MALFORMED: "the request is not HTTP/1.1 as this server reads it",
    FrontRefusal.HEAD_TOO_LARGE: "the request line and headers are too large",
    FrontRefusal.HEAD_TIMEOUT: "the request line and headers did not arrive in time",
    FrontRefusal.READ_TIMEOUT: "the request did not arrive in time",
    FrontRefusal.PIPELINE: "too many requests sent ahead of their answers",
}


def _readable(fd: int) -> bool:
    """Whether bytes (or the peer's close) are waiting on ``fd``, without waiting."""
    poller = select.poll()  # not select.select: descriptors above 1023 are common here
    try:
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024


async def _linger_and_close(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Close a connection so that its last answer is read: end our side, then drop what
    the client still sends (at most ``LINGER_BYTES`` for ``LINGER_SECONDS``) before the
    socket closes. Closing with unread bytes would reset the connection, and a client that
    is still sending (a refused body) could lose the answer."""
    try:
        await stream.send_eof()
        dropped = 0
        with scope, trio.move_on_after(LINGER_SECONDS):
            while dropped < LINGER_BYTES:
                data = await stream.receive_some(RECV)
                if not data:
                    break
                dropped += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
        pass
    with trio.move_on_after(1):
        await stream.aclose()


class _Replay:
    """``stream`` with ``first`` given back to the first read (for hypercorn)."""

    def __init__(self, stream: trio.SocketStream, first: bytes) -> None:
        self._stream = stream
        self._first = first
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._first:
            data, self._first = self._first, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def parse_bind(bind: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port)."""
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not host:port: {bind!r}")
    return host.strip("[]"), int(port)


async def serve(
    app: NodeApp,
    source: StatusSource,
    bind: str,
    *,
    limits: FrontLimits | None = None,
    on_shed: Callable[[str], None] | None = None,
    direct: Mapping[bytes, tuple[str, Answer]] | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the public port on ``bind`` until cancelled; ``task_status`` gets the bound
    addresses as ``http://host:port``. ``direct``: the routes answered without the app
    (default ``DIRECT``; the benchmarks' baseline gives its own)."""
    host, port = parse_bind(bind)
    front = Front(app, source, limits, on_shed, direct)
    listeners = await trio.open_tcp_listeners(port, host=host)
    binds = []
    for listener in listeners:
        name = listener.socket.getsockname()
        shown = f"[{name[0]}]" if ":" in name[0] else name[0]
        binds.append(f"http://{shown}:{name[1]}")
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, front.handle, listeners))
        task_status.started(binds)
