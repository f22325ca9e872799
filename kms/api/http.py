"""The node's public HTTP app: key release, app-key certificates, chain, policies, evidence,
health and metrics.

Admin actions are never served here: they go over the admin channel
(``kms.api.admin``), a Unix socket guarded by a token. The full audit log is
one of them; this port serves only its signed head.

Every request body is bounded twice, so no route can be made to hold more
than ``MAX_BODY`` bytes of one request in memory:

* each body-taking route reads its body with ``read_body``, which refuses a
  ``Content-Length`` over the limit before reading anything and stops
  reading as soon as the bytes received pass it (chunked bodies, and bodies
  longer than their ``Content-Length`` says);
* ``BodyLimit``, an ASGI middleware around the whole app, counts the bytes
  the ASGI receive channel delivers to any route and refuses the request
  once they pass the limit, so a route that reads its body another way is
  bounded all the same; it also drops what is left of an unread body while
  the answer is sent, so the server can close the connection.

A refused body is answered ``413`` (or ``400`` for an unusable
``Content-Length``) with ``{"reason", "detail", "limit"}``, a ``BodyRefusal``
code, and counted under ``qkms_rejected_inputs_total{reason="http body: …"}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kms.api.answers import cert_answer, evidence_answer, key_answer, policy_answer
from kms.api.limits import CHAIN_PAGE_BYTES, CHAIN_PAGE_LINKS, MAX_BODY
from kms.api.shed import BODY_TIMEOUT, Admission, Shed, ShedLimits
from kms.node.evidence_log import EvidenceResult
from kms.node.keyrelease import CertResult, KeysNotServed, ReleaseResult
from kms.node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kms.node.policies import PolicyOfferResult
from kms.node.release import ReleaseRefused
from kms.protocol import AppKeyCertRequest, KeyRequest, WrongPartialEvidence
from kms.store.errors import StorageFull
from mpc.codec import Message as WireMessage
from mpc.codec import MessageDecodeError, decode


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...

    async def release(self, request: KeyRequest) -> ReleaseResult: ...

    def refuse_key_request(self, exc: MessageDecodeError) -> ReleaseRefused | KeysNotServed: ...

    async def certify(self, request: AppKeyCertRequest) -> CertResult: ...

    def refuse_cert_request(self, exc: MessageDecodeError) -> ReleaseRefused | KeysNotServed: ...

    def chain_bytes(self) -> bytes: ...

    def chain_page(self, start: int, limit: int, max_bytes: int) -> tuple[int, int, int, bytes]: ...

    def count_rejected(self, label: str) -> None: ...

    def offer_evidence(self, raw: bytes) -> EvidenceResult: ...

    def audit_head(self) -> dict[str, Any]: ...

    def offer_policy(self, raw: bytes) -> PolicyOfferResult: ...

    def policy_info(self, app_id: bytes) -> dict[str, Any] | None: ...


_Req = TypeVar("_Req")
_Res = TypeVar("_Res")

MSGPACK = "application/msgpack"
JSON = "application/json"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyRefusal(StrEnum):
    """Why a request body was refused before any route looked at it."""

    TOO_LARGE = "body-too-large"
    """Its ``Content-Length``, or the bytes received so far, exceed ``MAX_BODY``: 413."""
    BAD_LENGTH = "bad-content-length"
    """``Content-Length`` is not one decimal number (or appears twice, differently): 400."""


class BodyRefused(Exception):
    """A request body refused for a ``BodyRefusal`` reason."""

    def __init__(self, reason: BodyRefusal, limit: int) -> None:
        self.reason = reason
        self.limit = limit
        detail = (
            f"the request body exceeds {limit} bytes"
            if reason is BodyRefusal.TOO_LARGE
            else "Content-Length is not a single decimal number"
        )
        super().__init__(detail)

    @property
    def status_code(self) -> int:
        return 413 if self.reason is BodyRefusal.TOO_LARGE else 400

    def body(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "detail": str(self), "limit": self.limit}


def check_content_length(headers: Headers, limit: int) -> None:
    """Refuse (``BodyRefused``) a declared body over ``limit`` before reading any of it."""
    values = headers.getlist("content-length")
    if not values:
        return
    if len(set(values)) != 1 or not values[0].isascii() or not values[0].isdigit():
        raise BodyRefused(BodyRefusal.BAD_LENGTH, limit)
    if len(values[0]) > 20 or int(values[0]) > limit:
        raise BodyRefused(BodyRefusal.TOO_LARGE, limit)


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request's body, at most ``limit`` bytes; raises ``BodyRefused``.

    Refuses on ``Content-Length`` before reading, and mid-stream as soon as
    the bytes received pass ``limit`` (whatever ``Content-Length`` said), so
    at most ``limit`` plus one received chunk is ever held.
    """
    check_content_length(request.headers, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyRefused(BodyRefusal.TOO_LARGE, limit)
    return bytes(body)


class BodyLimit:
    """ASGI middleware: no request of any route delivers more than ``limit`` body bytes.

    A declared ``Content-Length`` over the limit is answered before the app
    runs; otherwise the receive channel is wrapped and raises ``BodyRefused``
    once the bytes it delivered pass the limit (the app's handler for it
    answers 413). ``on_refusal`` counts each refusal.

    While the last part of an answer is sent and the request's body has not
    ended (it was refused, or sent to a route that takes none), what is left
    of it is received and dropped at the same time: hypercorn queues received
    chunks for the app and, on finishing the answer, queues a disconnect
    behind them, waiting for room; with nobody receiving, that wait never
    ends and the connection (its socket and coroutine) is never closed. Once the
    answer is sent hypercorn stops passing the body on, so this drops at most
    the few chunks already queued; the server then closes the connection.
    """

    def __init__(
        self, app: ASGIApp, limit: int = MAX_BODY, on_refusal: Callable[[str], None] | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.on_refusal = on_refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0
        ended = False

        async def take() -> Message:
            nonlocal ended
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                ended = True
            return message

        async def drop_rest() -> None:
            while not ended:
                await take()

        async def bounded_receive() -> Message:
            nonlocal received
            message = await take()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyRefused(BodyRefusal.TOO_LARGE, self.limit)
            return message

        async def guarded_send(message: Message) -> None:
            last = message["type"] == "http.response.body" and not message.get("more_body", False)
            if not last or ended:
                await send(message)
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(drop_rest)
                await send(message)

        try:
            check_content_length(Headers(scope=scope), self.limit)
        except BodyRefused as exc:
            if self.on_refusal is not None:
                self.on_refusal(f"http body: {exc.reason.value}")
            await refusal_response(exc)(scope, take, guarded_send)
            return
        await self.app(scope, bounded_receive, guarded_send)


class NodeApp(Starlette):
    """Starlette with ``BodyLimit`` outside everything, its error middleware included, and
    the release routes' admission control (``kms.api.shed.Shed``) just inside it."""

    body_limit = MAX_BODY
    on_refusal: Callable[[str], None] | None = None
    admission: Admission | None = None
    on_shed: Callable[[str], None] | None = None
    on_body_timeout: Callable[[str], None] | None = None

    def build_middleware_stack(self) -> ASGIApp:
        if self.admission is None:
            self.admission = Admission(ShedLimits())
        shed = Shed(
            super().build_middleware_stack(),
            on_shed=self.on_shed,
            on_body_timeout=self.on_body_timeout,
            admission=self.admission,
        )
        return BodyLimit(shed, self.body_limit, self.on_refusal)


def refusal_response(exc: BodyRefused) -> Response:
    # The rest of the body is never read: the server closes the connection.
    return JSONResponse(exc.body(), status_code=exc.status_code, headers={"connection": "close"})


def _wants_json(request: Request) -> bool:
    return wants_json(request.headers.get("content-type", ""), request.headers.get("accept", ""))


def wants_json(content_type: str, accept: str) -> bool:
    """JSON when the client accepts it over msgpack, or sent JSON and did not say."""
    if MSGPACK in accept:
        return False
    if JSON in accept:
        return True
    return _is_json(content_type)


def _is_json(content_type: str) -> bool:
    return content_type.split(";")[0].strip() == JSON


def json_bytes(content: Any) -> bytes:
    """``content`` as Starlette's ``JSONResponse`` renders it."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def _typed_bytes(message: WireMessage, as_json: bool) -> tuple[str, bytes]:
    """(media type, body): a message encoded as msgpack, or in its JSON form."""
    if as_json:
        return JSON, json_bytes(message.to_json())
    return MSGPACK, message.encode()


async def answer_key_request(
    source: StatusSource, body: bytes, content_type: str, accept: str
) -> tuple[int, str, bytes]:
    """(status, media type, body) answering a ``POST /v1/keys`` body: the route's whole work,
    shared by the app's route and the public port's direct path (``kms.api.front``).

    Decoded once, here (the JSON form maps onto the msgpack one); the node gets the typed
    request."""
    read = KeyRequest.decode_json if _is_json(content_type) else KeyRequest.decode
    return await _answer(
        read, source.release, source.refuse_key_request, key_answer, body, content_type, accept
    )


async def answer_cert_request(
    source: StatusSource, body: bytes, content_type: str, accept: str
) -> tuple[int, str, bytes]:
    """(status, media type, body) answering a ``POST /v1/app-key-cert`` body, as
    ``answer_key_request`` does a key request."""
    read = AppKeyCertRequest.decode_json if _is_json(content_type) else AppKeyCertRequest.decode
    return await _answer(
        read, source.certify, source.refuse_cert_request, cert_answer, body, content_type, accept
    )


async def _answer(
    read: Callable[[bytes], _Req],
    ask: Callable[[_Req], Awaitable[_Res]],
    refuse: Callable[[MessageDecodeError], _Res],
    status: Callable[[_Res], tuple[int, WireMessage]],
    body: bytes,
    content_type: str,
    accept: str,
) -> tuple[int, str, bytes]:
    try:
        request = read(body)
    except MessageDecodeError as exc:
        code, answer = status(refuse(exc))
    else:
        code, answer = status(await ask(request))
    return (code, *_typed_bytes(answer, wants_json(content_type, accept)))


def _message_response(raw: bytes, status_code: int, as_json: bool) -> Response:
    """A msgpack message as it is, or in its JSON form (``mpc.codec``)."""
    if as_json:
        return JSONResponse(decode(raw).to_json(), status_code=status_code)
    return Response(raw, status_code=status_code, media_type=MSGPACK)


def make_app(
    source: StatusSource,
    shed: ShedLimits | None = None,
    on_shed: Callable[[str], None] | None = None,
) -> NodeApp:
    """The public app of ``source``. Key and certificate requests beyond ``shed`` (default
    ``ShedLimits()``) are refused ``503 overloaded`` (``kms.api.shed``); ``on_shed`` counts
    each refusal by route."""
    from kms.api.openapi import openapi_document

    async def health(request: Request) -> Response:
        st = source.status()
        code = 200 if st.get("healthy") else 503
        return JSONResponse(
            {
                "ok": bool(st.get("healthy")),
                "epoch": st.get("epoch"),
                "member": st.get("member"),
                "health": st.get("health"),
            },
            status_code=code,
        )

    async def status(request: Request) -> Response:
        return JSONResponse(source.status())

    async def metrics(request: Request) -> Response:
        # The node's registry in prometheus_client's text format (``kms.node.metrics``).
        return Response(source.metrics_text(), media_type=METRICS_CONTENT_TYPE)

    async def keys(request: Request) -> Response:
        body = await read_body(request)
        h = request.headers
        code, media, payload = await answer_key_request(
            source, body, h.get("content-type", ""), h.get("accept", "")
        )
        return Response(payload, status_code=code, media_type=media)

    async def app_key_cert(request: Request) -> Response:
        body = await read_body(request)
        h = request.headers
        code, media, payload = await answer_cert_request(
            source, body, h.get("content-type", ""), h.get("accept", "")
        )
        return Response(payload, status_code=code, media_type=media)

    async def chain(request: Request) -> Response:
        q = request.query_params
        if not any(k in q for k in ("from", "limit", "max_bytes")):
            return _message_response(source.chain_bytes(), 200, _wants_json(request))
        try:
            start = int(q.get("from", "0"))
            limit = int(q.get("limit", str(CHAIN_PAGE_LINKS)))
            max_bytes = int(q.get("max_bytes", str(CHAIN_PAGE_BYTES)))
        except ValueError:
            source.count_rejected("chain: bad paging parameters")
            return JSONResponse(
                {"error": "bad paging: from, limit and max_bytes are integers"},
                status_code=400,
            )
        if start < 0 or not 1 <= limit <= CHAIN_PAGE_LINKS or not 1 <= max_bytes:
            source.count_rejected("chain: bad paging parameters")
            return JSONResponse(
                {
                    "error": f"bad paging: from >= 0, 1 <= limit <= {CHAIN_PAGE_LINKS}, "
                    "max_bytes >= 1"
                },
                status_code=400,
            )
        first, following, head, raw = source.chain_page(
            start, limit, min(max_bytes, CHAIN_PAGE_BYTES)
        )
        response = _message_response(raw, 200, _wants_json(request))
        response.headers["x-chain-first"] = str(first)
        response.headers["x-chain-next"] = str(following)
        response.headers["x-chain-head"] = str(head)
        return response

    async def audit_head(request: Request) -> Response:
        return JSONResponse(source.audit_head())

    async def audit_export(request: Request) -> Response:
        source.count_rejected("http: audit export is admin-only")
        return JSONResponse(
            {
                "reason": "admin-only",
                "detail": "the audit log is exported on the admin channel only "
                "(kms audit verify --config); this port serves its signed head "
                "at /v1/audit/head",
            },
            status_code=403,
        )

    async def policies(request: Request) -> Response:
        body = await read_body(request)
        code, reply = policy_answer(source.offer_policy(body))
        return JSONResponse(reply, status_code=code)

    async def evidence(request: Request) -> Response:
        body = await read_body(request)
        if request.headers.get("content-type", "").split(";")[0].strip() == JSON:
            try:
                body = WrongPartialEvidence.decode_json(body).encode()
            except MessageDecodeError as exc:
                source.count_rejected("evidence: malformed")
                return JSONResponse(
                    {"accepted": False, "reason": "malformed", "detail": str(exc)[:500]},
                    status_code=400,
                )
        code, reply = evidence_answer(source.offer_evidence(body))
        return JSONResponse(reply, status_code=code)

    async def policy(request: Request) -> Response:
        try:
            app_id = bytes.fromhex(request.path_params["app_id"])
        except ValueError:
            return JSONResponse({"error": "app id must be hex"}, status_code=400)
        info = source.policy_info(app_id)
        return JSONResponse(
            info if info is not None else {"error": "no current policy"},
            status_code=200 if info else 404,
        )

    document = openapi_document()

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def storage_full(request: Request, exc: Exception) -> Response:
        # A request that would write while the node's disk is full (a policy, evidence).
        source.count_rejected("http: storage-full")
        return JSONResponse(
            {"accepted": False, "reason": "storage-full", "detail": str(exc)[:500]},
            status_code=503,
        )

    async def body_refused(request: Request, exc: Exception) -> Response:
        refused = exc if isinstance(exc, BodyRefused) else BodyRefused(BodyRefusal.TOO_LARGE, 0)
        source.count_rejected(f"http body: {refused.reason.value}")
        return refusal_response(refused)

    app = NodeApp(
        routes=[
            Route("/v1/policies", policies, methods=["POST"]),
            Route("/v1/evidence", evidence, methods=["POST"]),
            Route("/v1/policies/{app_id}", policy),
            Route("/v1/audit/head", audit_head),
            Route("/v1/audit", audit_export),
            Route("/health", health),
            Route("/v1/status", status),
            Route("/metrics", metrics),
            Route("/v1/keys", keys, methods=["POST"]),
            Route("/v1/app-key-cert", app_key_cert, methods=["POST"]),
            Route("/v1/chain", chain),
            Route("/openapi.json", openapi),
        ],
        exception_handlers={BodyRefused: body_refused, StorageFull: storage_full},
    )
    app.on_refusal = source.count_rejected
    # One admission for the release routes, however they are reached (this app, or the
    # public port's direct path in ``kms.api.front``).
    app.admission = Admission(shed or ShedLimits())
    app.on_shed = on_shed
    app.on_body_timeout = lambda route: source.count_rejected(f"http body: {BODY_TIMEOUT}")
    return app


def _drop_data_for_closed_h2_streams() -> None:
    """Make hypercorn's HTTP/2 protocol drop data that arrives for a stream it has closed.

    hypercorn 0.18 looks the stream of every received DATA frame up without
    checking that it is still open, so a client that keeps sending a body
    after the node answered (a refused body, or one sent to a route that
    takes none) raises ``KeyError`` in the connection's handler, which under
    trio ends the whole server and with it the node. This wraps the event
    handler so that such data is dropped, as the adjacent end-of-stream case
    already is upstream, and not acknowledged: the connection's flow-control
    window then closes and the sender can push no more than that window.
    """
    import h2.events
    from hypercorn.protocol.h2 import H2Protocol

    if getattr(H2Protocol, "_qkms_guarded", False):
        return
    handle_events = H2Protocol._handle_events

    async def guarded(self: Any, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                continue  # not acknowledged: the sender's window closes, it must stop
            await handle_events(self, [event])

    H2Protocol._handle_events = guarded  # type: ignore[method-assign]
    H2Protocol._qkms_guarded = True  # type: ignore[attr-defined]


def server_config(bind: str) -> Any:
    """The hypercorn settings for the public port's HTTP/2 connections, which
    ``kms.api.front`` hands to hypercorn (``hypercorn.config.Config``; the agent's guest
    API uses them too).

    What they bound per connection, beyond the body limit above: request
    headers at most ``h11_max_incomplete_size`` (16 KiB) over HTTP/1.1 and
    ``h2_max_header_list_size`` over HTTP/2; at most ``max_app_queue_size``
    received chunks (of at most 64 KiB each) waiting for a route that does not
    read them, after which hypercorn stops reading the socket; a read that
    waits longer than ``read_timeout`` closes the connection; an idle
    keep-alive connection is closed after ``keep_alive_timeout``. HTTP/2
    data for a stream the node already answered is dropped
    (``_drop_data_for_closed_h2_streams``).
    """
    from hypercorn.config import Config

    _drop_data_for_closed_h2_streams()
    hc = Config()
    hc.bind = [bind]
    hc.accesslog = None
    hc.errorlog = None
    hc.h11_max_incomplete_size = 16 * 1024
    hc.h2_max_header_list_size = 16 * 1024
    hc.h2_max_concurrent_streams = 16
    hc.max_app_queue_size = 4
    hc.read_timeout = 30
    hc.keep_alive_timeout = 5
    return hc
