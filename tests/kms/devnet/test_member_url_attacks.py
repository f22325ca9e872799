"""A member URL that httpx cannot build a request for (``https://xn--``: IDNAError, a
ValueError; ``http://[::1``: ``httpx.InvalidURL``) makes that member unreachable for a
client, as a stopped node would; it never crashes ``chain()`` or ``fetch()``
(docs/threat-model.md, "Where a client finds members: certified URLs").

Such a URL can no longer be certified (``valid_member_url``,
``tests/mpc/test_membership_url.py``); a caller can still give one, and a chain
certified before may still hold one. Before the fix ``KeyClient`` caught only
``httpx.HTTPError`` around its requests, so the exception escaped.
"""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from devnet_helpers import in_process_devnet
from test_join_urls import url_of

from kms.app import devnet
from kms.client.core import KeyReleaseError
from kms.client.http import KeyClient
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2

BAD = ("https://xn--", "http://[::1", "http://:abc", "http://?")


class Refuses4(httpx.BaseTransport):
    """Node 4 answers key requests with an error page: the client asks another node."""

    def __init__(self, inner: httpx.BaseTransport, origin: str) -> None:
        self.inner, self.origin = inner, origin

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if origin == self.origin and request.url.path == "/v1/keys":
            request.read()
            return httpx.Response(503, content=b"busy")
        return self.inner.handle_request(request)


@pytest.mark.slow
@pytest.mark.parallel
def test_an_unbuildable_member_url_makes_that_node_unreachable(tmp_path: Path) -> None:
    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 4, 3, delta=0.2, start_in=5.0, window_period=4.0
        ) as net:
            await net.start()
            sts = await net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), 40)
            mpk = sts[1]["master_public_key"]
            app = devnet.register_demo_app(net.directory, mpk, admin=net.admin_by_config)
            tee = devnet.simulated_tee(net.directory)
            now = int(net.now())
            t = [0.0]
            transport = Refuses4(net.transport(), url_of(net, 4).rstrip("/"))

            def cvm(bad: str) -> list[str]:
                # Node 1's URL cannot be built; nodes 2, 3 serve; node 4 answers with an
                # error, so the client also posts a key request to node 1's URL.
                client = KeyClient(
                    {PI(1): bad, **{PI(i): url_of(net, i) for i in (2, 3, 4)}},
                    G2.from_bytes(bytes.fromhex(mpk)),
                    transport=transport,
                    clock=lambda: t[0],
                )
                out = []
                try:
                    for _ in range(2):
                        try:
                            res = client.fetch(
                                bytes.fromhex(app),
                                [("app", 1)],
                                lambda rd: tee.quote(rd, **devnet.DEMO_MEASUREMENT),
                                now=now,
                            )
                            out.append(f"ok asked {sorted(int(i) for i in res.asked)}")
                        except KeyReleaseError as exc:
                            out.append(f"KeyReleaseError {exc}")
                        except Exception as exc:  # what the CVM would see
                            out.append(f"CRASH {type(exc).__name__}: {exc}")
                        t[0] += 61.0  # chain_ttl passes: the chain is fetched again
                finally:
                    client.close()
                return out

            clock = trio.lowlevel.current_clock()
            assert isinstance(clock, trio.testing.MockClock)
            clock.autojump_threshold = math.inf
            try:
                for bad in BAD:
                    out = await net.in_thread(lambda bad=bad: cvm(bad))
                    print(bad, out)
                    # Only 2 and 3 give partials (t = 3): a typed failure naming node 1
                    # unreachable, never an escaped exception.
                    assert all(o.startswith("KeyReleaseError") for o in out), out
                    assert all("node 1:" in o for o in out), out
            finally:
                clock.autojump_threshold = 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
