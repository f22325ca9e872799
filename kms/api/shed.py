"""Admission control of the release routes: a node past its capacity refuses at once.

A node releases keys on one thread; a boot storm of CVMs can offer it more
key requests than it can verify. Without a bound every request is accepted,
decoded and queued, the queue grows with the storm, every answer comes later
than the client waits for, and the node does work whose answer nobody reads.

``Shed``, an ASGI middleware around the app, bounds the key and certificate
routes (``POST /v1/keys``, ``POST /v1/app-key-cert``) by ``ShedLimits``:

* a request takes no place before its whole body has arrived: the body is
  received first, within ``body_timeout`` seconds for all of it (not per
  read), and a body not complete by then is answered ``408 {"reason":
  "body-timeout", "detail", "timeout"}`` unread by the route and counted
  (``on_body_timeout``, by route); so a client that trickles its body costs
  the node a connection for at most ``body_timeout`` seconds and never holds
  a place that an honest, complete request could have;
* at most ``concurrency`` requests are handled at once (decoded, verified,
  answered);
* at most ``queue`` more wait for one of those places, first come first
  served, each at most ``queue_wait`` seconds;
* any other request, and one whose wait ran out, is answered at once with
  ``503 {"reason": "overloaded", "detail", "retry_after"}`` and a
  ``Retry-After`` header, without its body being decoded; each such refusal
  is counted (``on_shed``, by route: ``qkms_shed_total``). A request that
  arrives while every place and every queue place is taken is refused so
  before its body is read at all.

The received body is held in memory while the request waits and then
replayed to the route, which reads it as it would from the server; the body
limit (``kms.api.http.BodyLimit``, outside this middleware) applies while it
is received, so at most ``MAX_BODY`` bytes are held per request, and a body
refused there reaches the route as the same refusal (answered ``413``),
without taking a place.

A request that was admitted always completes: the bound never cancels work
in progress. Other routes are not bounded here (they do no quote
verification); every route's body is bounded by ``kms.api.http.BodyLimit``,
which sits outside this middleware and drops an unread body while the
refusal is sent, so the connection stays usable.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OVERLOADED = "overloaded"
"""The ``reason`` of a request refused because the node is at capacity."""

BODY_TIMEOUT = "body-timeout"
"""The ``reason`` of a request whose body did not arrive within ``body_timeout`` (``408``)."""

ROUTES: dict[str, str] = {"/v1/keys": "keys", "/v1/app-key-cert": "app-key-cert"}
"""The bounded paths (``POST`` only) and their ``route`` label in ``qkms_shed_total``."""


@dataclass(frozen=True)
class ShedLimits:
    """The bounds of the release routes (``node.toml``: ``release_concurrency``,
    ``release_queue``, ``release_queue_wait``, ``release_retry_after``,
    ``release_body_timeout``)."""

    concurrency: int = 8
    """Key and certificate requests handled at once."""
    queue: int = 32
    """Requests that may wait for one of those places; beyond them, refused at once."""
    queue_wait: float = 0.5
    """Seconds a request waits for a place at most before it is refused."""
    retry_after: int = 1
    """Seconds the refusal's ``Retry-After`` asks the client to wait (whole seconds)."""
    body_timeout: float = 5.0
    """Seconds the whole body of a request may take to arrive before it takes a place."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.queue < 0:
            raise ValueError("queue must be at least 0")
        if not (math.isfinite(self.queue_wait) and self.queue_wait >= 0):
            raise ValueError("queue_wait must be a finite number of seconds, at least 0")
        if self.retry_after < 0:
            raise ValueError("retry_after must be at least 0")
        if not (math.isfinite(self.body_timeout) and self.body_timeout > 0):
            raise ValueError("body_timeout must be a finite number of seconds, above 0")


class Admission:
    """Places for ``concurrency`` requests and a FIFO of at most ``queue`` waiting ones.

    Single-threaded (one event loop), so plain counters suffice; ``enter`` hands a
    freed place directly to the oldest waiter, so a place is never taken twice.
    """

    def __init__(self, limits: ShedLimits) -> None:
        self.limits = limits
        self.in_progress = 0
        self._waiters: deque[anyio.Event] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def full(self) -> bool:
        """Whether ``enter`` would refuse at once (every place and every queue place taken)."""
        if self.in_progress < self.limits.concurrency and not self._waiters:
            return False
        return len(self._waiters) >= self.limits.queue or self.limits.queue_wait <= 0

    async def enter(self) -> bool:
        """Take a place (waiting for one, within the bounds); ``False``: refuse the request."""
        if self.in_progress < self.limits.concurrency and not self._waiters:
            self.in_progress += 1
            return True
        if len(self._waiters) >= self.limits.queue or self.limits.queue_wait <= 0:
            return False
        granted = anyio.Event()
        self._waiters.append(granted)
        try:
            with anyio.move_on_after(self.limits.queue_wait):
                await granted.wait()
        except BaseException:
            # Cancelled while waiting (the client went away): give back a place handed over.
            if granted.is_set():
                self.leave()
            else:
                self._waiters.remove(granted)
            raise
        if granted.is_set():
            return True  # the place was handed over by ``leave``
        self._waiters.remove(granted)
        return False

    def leave(self) -> None:
        """Give a place back: to the oldest waiter, else free it."""
        if self._waiters:
            self._waiters.popleft().set()
            return
        self.in_progress -= 1


class _Body:
    """A request body received whole before the request takes a place, replayed to the app.

    ``failure`` is what the receive channel raised (the body limit's refusal): the
    replay raises it again, so the route answers it as it would have.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.complete = False
        self.disconnected = False
        self.failure: Exception | None = None

    async def take(self, receive: Receive) -> None:
        while True:
            try:
                message = await receive()
            except Exception as exc:
                self.failure = exc
                return
            if message["type"] != "http.request":
                self.disconnected = True
                return
            self.buffer += message.get("body", b"")
            if not message.get("more_body", False):
                self.complete = True
                return

    def replay(self, receive: Receive) -> Receive:
        """A receive channel giving the buffered body in one message, then ``receive``'s."""
        pending = True

        async def replayed() -> Message:
            nonlocal pending
            if self.failure is not None:
                raise self.failure
            if pending:
                pending = False
                body, self.buffer = self.buffer, bytearray()  # handed over, not copied
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replayed


def overloaded_answer(limits: ShedLimits) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The ``503 overloaded`` refusal's body and headers."""
    body = json.dumps(
        {
            "reason": OVERLOADED,
            "detail": "the node is handling as many key requests as it can: "
            "ask another node, or this one again later",
            "retry_after": limits.retry_after,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(limits.retry_after).encode()),
    ]
    return body, headers


def body_timeout_answer(limits: ShedLimits) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The ``408 body-timeout`` answer's body and headers (the connection is closed)."""
    body = json.dumps(
        {
            "reason": BODY_TIMEOUT,
            "detail": f"the request body did not arrive within {limits.body_timeout:g} seconds",
            "timeout": limits.body_timeout,
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    return body, headers


class Shed:
    """ASGI middleware: ``Admission`` around the release routes (see the module docstring).

    ``on_shed`` is called with the route label of each refused request,
    ``on_body_timeout`` with that of each request whose body did not arrive in time.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: ShedLimits | None = None,
        on_shed: Callable[[str], None] | None = None,
        on_body_timeout: Callable[[str], None] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.app = app
        self.admission = admission or Admission(limits or ShedLimits())
        self.on_shed = on_shed
        self.on_body_timeout = on_body_timeout
        self._timeout, self._timeout_headers = body_timeout_answer(self.admission.limits)
        self._refusal, self._headers = overloaded_answer(self.admission.limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if self.admission.full:
            await self._refuse(route, send)
            return
        body = _Body()
        with anyio.move_on_after(self.admission.limits.body_timeout):
            await body.take(receive)
        if body.disconnected:
            return  # the client went away: nobody to answer
        if body.failure is not None:
            # Refused by the body limit: the route answers that at once, without a place.
            await self.app(scope, body.replay(receive), send)
            return
        if not body.complete:
            body.buffer = bytearray()
            if self.on_body_timeout is not None:
                self.on_body_timeout(route)
            await send(
                {"type": "http.response.start", "status": 408, "headers": self._timeout_headers}
            )
            await send({"type": "http.response.body", "body": self._timeout})
            return
        if not await self.admission.enter():
            await self._refuse(route, send)
            return
        try:
            await self.app(scope, body.replay(receive), send)
        finally:
            self.admission.leave()

    async def _refuse(self, route: str, send: Send) -> None:
        if self.on_shed is not None:
            self.on_shed(route)
        await send({"type": "http.response.start", "status": 503, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._refusal})
