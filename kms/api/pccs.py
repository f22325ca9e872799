"""A PCCS for development: serves collateral it holds over Intel's PCCS API v4.

A devnet runs one in front of its simulated TEE so that its nodes take the
same path as in production (``pccs_url`` in ``node.toml``:
``kms.attest.pccs.PCCSClient`` with its disk cache) rather than reading a
collateral file. It answers exactly the four GETs the client sends:

* ``/sgx/certification/v4/pckcrl?ca=…&encoding=der``: the PCK CRL (DER), with
  ``SGX-PCK-CRL-Issuer-Chain``;
* ``/tdx/certification/v4/tcb?fmspc=…``: ``{"tcbInfo": …, "signature": …}``,
  with ``TCB-Info-Issuer-Chain``;
* ``/tdx/certification/v4/qe/identity``: ``{"enclaveIdentity": …, "signature": …}``,
  with ``SGX-Enclave-Identity-Issuer-Chain``;
* ``/sgx/certification/v4/rootcacrl``: the root CA CRL, hex.

It serves what it was given and signs nothing: the client checks every
signature against its pinned roots, as it would with Intel's service.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from kms.attest import Collateral


def make_pccs_app(collateral: Mapping[str, Collateral]) -> Starlette:
    """The ASGI app serving ``collateral`` (by upper-case FMSPC)."""
    held = {k.upper(): v for k, v in collateral.items()}
    first = next(iter(sorted(held)), None)

    def pick(request: Request) -> Collateral | None:
        fmspc = request.query_params.get("fmspc", first or "")
        return held.get(fmspc.upper())

    async def pckcrl(request: Request) -> Response:
        c = pick(request)
        if c is None:
            return PlainTextResponse("unknown FMSPC", status_code=404)
        return Response(
            c.pck_crl, headers={"SGX-PCK-CRL-Issuer-Chain": quote(c.pck_crl_issuer_chain)}
        )

    async def tcb(request: Request) -> Response:
        c = pick(request)
        if c is None:
            return PlainTextResponse("unknown FMSPC", status_code=404)
        body = f'{{"tcbInfo":{c.tcb_info},"signature":"{c.tcb_info_signature.hex()}"}}'
        return Response(
            body.encode(),
            media_type="application/json",
            headers={"TCB-Info-Issuer-Chain": quote(c.tcb_info_issuer_chain)},
        )

    async def qe_identity(request: Request) -> Response:
        c = pick(request)
        if c is None:
            return PlainTextResponse("no collateral", status_code=404)
        body = (
            f'{{"enclaveIdentity":{c.qe_identity},"signature":"{c.qe_identity_signature.hex()}"}}'
        )
        return Response(
            body.encode(),
            media_type="application/json",
            headers={"SGX-Enclave-Identity-Issuer-Chain": quote(c.qe_identity_issuer_chain)},
        )

    async def rootcacrl(request: Request) -> Response:
        c = pick(request)
        if c is None:
            return PlainTextResponse("no collateral", status_code=404)
        return PlainTextResponse(c.root_ca_crl.hex())

    return Starlette(
        routes=[
            Route("/sgx/certification/v4/pckcrl", pckcrl),
            Route("/tdx/certification/v4/tcb", tcb),
            Route("/tdx/certification/v4/qe/identity", qe_identity),
            Route("/sgx/certification/v4/rootcacrl", rootcacrl),
        ]
    )


class PCCSServer:
    """Serve ``make_pccs_app`` on ``host:port`` from a background thread (a devnet's PCCS)."""

    def __init__(self, collateral: Mapping[str, Collateral], host: str, port: int) -> None:
        self.app: Any = make_pccs_app(collateral)
        self.url = f"http://{host}:{port}"
        self._bind = f"{host}:{port}"
        self._thread: threading.Thread | None = None
        self._token: Any = None
        self._stop: Any = None
        self._ready = threading.Event()

    def start(self) -> PCCSServer:
        import trio
        from hypercorn.config import Config
        from hypercorn.trio import serve

        cfg = Config()
        cfg.bind = [self._bind]
        cfg.accesslog = None
        cfg.errorlog = None

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(serve, self.app, cfg, shutdown_trigger=self._stop.wait, mode="asgi")
                )
                self._ready.set()

        self._thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError(f"the PCCS did not start on {self._bind}")
        return self

    def stop(self) -> None:
        import trio

        if self._thread is None or self._token is None:
            return
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=10)
        self._thread = None
