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


class StatusSource(Protocol):
    def status(self) -> dict[str, Any]: ...

    def metrics_text(self) -> str: ...


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

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/status", status),
            Route("/metrics", metrics),
        ]
    )
