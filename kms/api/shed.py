"""Admission control of the release routes: a node past its capacity refuses at once.

A node releases keys on one thread; a boot storm of CVMs can offer it more
key requests than it can verify. Without a bound every request is accepted,
decoded and queued, the queue grows with the storm, every answer comes later
than the client waits for, and the node does work whose answer nobody reads.

``Shed``, an ASGI middleware around the app, bounds the key and certificate
routes (``POST /v1/keys``, ``POST /v1/app-key-cert``) by ``ShedLimits``:

* at most ``concurrency`` requests are handled at once (decoded, verified,
  answered);
* at most ``queue`` more wait for one of those places, first come first
  served, each at most ``queue_wait`` seconds;
* any other request, and one whose wait ran out, is answered at once with
  ``503 {"reason": "overloaded", "detail", "retry_after"}`` and a
  ``Retry-After`` header, without its body being read or decoded; each such
  refusal is counted (``on_shed``, by route: ``qkms_shed_total``).

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

ROUTES: dict[str, str] = {"/v1/keys": "keys", "/v1/app-key-cert": "app-key-cert"}
"""The bounded paths (``POST`` only) and their ``route`` label in ``qkms_shed_total``."""


@dataclass(frozen=True)
class ShedLimits:
    """The bounds of the release routes (``node.toml``: ``release_concurrency``,
    ``release_queue``, ``release_queue_wait``, ``release_retry_after``)."""

    concurrency: int = 8
    """Key and certificate requests handled at once."""
    queue: int = 32
    """Requests that may wait for one of those places; beyond them, refused at once."""
    queue_wait: float = 0.5
    """Seconds a request waits for a place at most before it is refused."""
    retry_after: int = 1
    """Seconds the refusal's ``Retry-After`` asks the client to wait (whole seconds)."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.queue < 0:
            raise ValueError("queue must be at least 0")
        if not (math.isfinite(self.queue_wait) and self.queue_wait >= 0):
            raise ValueError("queue_wait must be a finite number of seconds, at least 0")
        if self.retry_after < 0:
            raise ValueError("retry_after must be at least 0")


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


class Shed:
    """ASGI middleware: ``Admission`` around the release routes (see the module docstring).

    ``on_shed`` is called with the route label of each refused request.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: ShedLimits | None = None,
        on_shed: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.admission = Admission(limits or ShedLimits())
        self.on_shed = on_shed
        retry = self.admission.limits.retry_after
        self._refusal = json.dumps(
            {
                "reason": OVERLOADED,
                "detail": "the node is handling as many key requests as it can: "
                "ask another node, or this one again later",
                "retry_after": retry,
            }
        ).encode()
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._refusal)).encode()),
            (b"retry-after", str(retry).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if not await self.admission.enter():
            if self.on_shed is not None:
                self.on_shed(route)
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._refusal})
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave()
