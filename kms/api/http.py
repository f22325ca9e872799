"""The node's public HTTP app: ``/health``, ``/v1/status`` and ``/metrics``.

Admin actions are never served here: they go over the admin channel
(``kms.api.admin``), a Unix socket guarded by a token.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from kms.protocol import KeyRefusal, KeyRequest, WrongPartialEvidence
from mpc.codec import MessageDecodeError, decode


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...

    async def release(self, raw: bytes) -> tuple[int, bytes]: ...

    def chain_bytes(self) -> bytes: ...

    def count_rejected(self, label: str) -> None: ...

    def offer_evidence(self, raw: bytes) -> tuple[int, dict[str, Any]]: ...

    def audit_export(self, start: int = 0, limit: int = 1000) -> dict[str, Any]: ...

    def offer_policy(self, raw: bytes) -> tuple[int, dict[str, Any]]: ...

    def policy_info(self, app_id: bytes) -> dict[str, Any] | None: ...


MAX_BODY = 512 * 1024
MSGPACK = "application/msgpack"
JSON = "application/json"


def _wants_json(request: Request) -> bool:
    """JSON when the client accepts it over msgpack, or sent JSON and did not say."""
    accept = request.headers.get("accept", "")
    if MSGPACK in accept:
        return False
    if JSON in accept:
        return True
    return request.headers.get("content-type", "").split(";")[0].strip() == JSON


def _message_response(raw: bytes, status_code: int, as_json: bool) -> Response:
    """A msgpack message as it is, or in its JSON form (``mpc.codec``)."""
    if as_json:
        return JSONResponse(decode(raw).to_json(), status_code=status_code)
    return Response(raw, status_code=status_code, media_type=MSGPACK)


def make_app(source: StatusSource) -> Starlette:
    async def health(request: Request) -> Response:
        st = source.status()
        code = 200 if st.get("healthy") else 503
        return JSONResponse(
            {"ok": bool(st.get("healthy")), "epoch": st.get("epoch")}, status_code=code
        )

    async def status(request: Request) -> Response:
        return JSONResponse(source.status())

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(source.metrics_text(), media_type="text/plain; version=0.0.4")

    async def keys(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return JSONResponse(
                {"reason": "malformed-request", "detail": "body too large"}, status_code=413
            )
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse(
                    {"reason": "malformed-request", "detail": "body too large"}, status_code=413
                )
        as_json = _wants_json(request)
        if request.headers.get("content-type", "").split(";")[0].strip() == JSON:
            # The JSON form maps onto the msgpack one; the node checks that as usual.
            try:
                body = KeyRequest.decode_json(body).encode()
            except MessageDecodeError as exc:
                source.count_rejected("key request: malformed-request")
                refusal = KeyRefusal("malformed-request", str(exc)[:500])
                return _message_response(refusal.encode(), 400, as_json)
        code, answer = await source.release(body)
        return _message_response(answer, code, as_json)

    async def chain(request: Request) -> Response:
        return _message_response(source.chain_bytes(), 200, _wants_json(request))

    async def audit(request: Request) -> Response:
        try:
            start = int(request.query_params.get("start", "0"))
            limit = min(int(request.query_params.get("limit", "1000")), 10000)
        except ValueError:
            return JSONResponse({"error": "start and limit are integers"}, status_code=400)
        return JSONResponse(source.audit_export(max(0, start), max(1, limit)))

    async def policies(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse(
                {"accepted": False, "reason": "malformed", "detail": "too large"}, status_code=413
            )
        code, reply = source.offer_policy(body)
        return JSONResponse(reply, status_code=code)

    async def evidence(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse(
                {"accepted": False, "reason": "malformed", "detail": "too large"}, status_code=413
            )
        if request.headers.get("content-type", "").split(";")[0].strip() == JSON:
            try:
                body = WrongPartialEvidence.decode_json(body).encode()
            except MessageDecodeError as exc:
                source.count_rejected("evidence: malformed")
                return JSONResponse(
                    {"accepted": False, "reason": "malformed", "detail": str(exc)[:500]},
                    status_code=400,
                )
        code, reply = source.offer_evidence(body)
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

    return Starlette(
        routes=[
            Route("/v1/policies", policies, methods=["POST"]),
            Route("/v1/evidence", evidence, methods=["POST"]),
            Route("/v1/policies/{app_id}", policy),
            Route("/v1/audit", audit),
            Route("/health", health),
            Route("/v1/status", status),
            Route("/metrics", metrics),
            Route("/v1/keys", keys, methods=["POST"]),
            Route("/v1/chain", chain),
        ]
    )
