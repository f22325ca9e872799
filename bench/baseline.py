"""The centralised baseline: what dstack's KMS does for one key request, in one process.

The same quote verification (dcap-qvl under the same root), the same
report-data binding check and the same HPKE encryption of the answer as a
quorum-kms node, but the key comes from ``HKDF(root key, app id ‖ purpose)``
held by this one process, with no policy, partials or audit. It runs in
process (``handler``) for the throughput comparison and behind the nodes'
HTTP server (``kms.api.front`` under trio) for the end-to-end one:
``python -m bench.baseline --port P --tee-seed S`` serves ``POST /v1/keys``
and answers ``msgpack([enc, ciphertext])``.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NOW = 1_800_000_000
"""The simulated quotes and collateral are minted for this time; the server checks at it."""


def handler(verifier: Any, collateral: Any, root_key: bytes) -> Callable[[bytes], bytes]:
    """Verify the quote and binding, derive by HKDF from one root key, seal to key 0."""
    from kms.attest import parse_td_fields
    from kms.protocol import KeyRequest, release_info
    from mpc import hpke

    def handle(raw: bytes) -> bytes:
        req = KeyRequest.decode(raw)
        td = parse_td_fields(req.quote)
        if td is None or td.report_data != req.body.report_data():
            raise ValueError("report data does not bind the request")
        verifier.verify(req.quote, collateral, now=NOW)
        p = req.body.purposes[0]
        key = HKDF(hashes.SHA256(), 48, salt=b"baseline", info=req.body.app_id + p.encode()).derive(
            root_key
        )
        k0 = req.body.ephemeral_keys[0]
        info = release_info(req.request_hash(), p, 0, k0.index)
        enc, ct = hpke.seal(k0.public_key, info, info, key, rng=os.urandom)
        return msgpack.packb([enc, ct])

    return handle


def simulated_tee(seed: int) -> Any:
    from kms.attest.simulated import SimulatedTEE

    return SimulatedTEE(random.Random(seed).randbytes, now=NOW)


def serve(port: int, tee_seed: int) -> None:
    import trio

    from kms.api.front import serve as front_serve
    from kms.api.http import NodeApp
    from kms.attest import Verifier

    tee = simulated_tee(tee_seed)
    handle = handler(
        Verifier([tee.root_ca_der], simulated_allowed=True), tee.collateral(NOW), os.urandom(32)
    )

    async def keys(source: Any, body: bytes, content_type: str, accept: str) -> Any:
        try:
            return 200, "application/msgpack", handle(body)
        except ValueError as exc:
            return 400, "text/plain", str(exc).encode()

    class Counts:
        def count_rejected(self, label: str) -> None:
            pass

    # The nodes' server: ``POST /v1/keys`` answered without a framework, anything else 404.
    source: Any = Counts()
    trio.run(
        partial(
            front_serve,
            NodeApp(routes=[]),
            source,
            f"127.0.0.1:{port}",
            direct={b"/v1/keys": ("keys", keys)},
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tee-seed", type=int, default=9)
    args = parser.parse_args(argv)
    serve(args.port, args.tee_seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
