"""A node that claims another member's index cannot hide that member from ``kms key get``.

The attack (n = 3, t = 2): corrupt node 1, listed first, says index 2 in its
unauthenticated ``/v1/status``. The client took the first claimant of each index and
dropped later ones, so honest node 2 was left out, node 1's answers were refused (another
identity's signature) and only node 3 was left: fewer than ``t`` although two honest
members ran. Every claimant is now kept and the next one tried when the first gives no
good partial (``kms.app.cvm.with_claimants``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from devnet_helpers import in_process_devnet
from test_owner_committee import Owner

import kms.cli.member
from kms.app import owner, simtee


class Liar(httpx.BaseTransport):
    """Node 1's HTTP as its corrupt operator serves it: /v1/status names index 2."""

    def __init__(self, inner: httpx.BaseTransport, liar_origin: str) -> None:
        self.inner, self.liar = inner, liar_origin

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.inner.handle_request(request)
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if origin == self.liar and request.url.path == "/v1/status":
            r.read()
            doc = json.loads(r.content)
            doc["index"] = 2
            return httpx.Response(200, json=doc)
        return r


@pytest.mark.slow
@pytest.mark.parallel
def test_a_liar_claiming_an_index_does_not_hide_its_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 3, 2, delta=0.3, start_in=5.0, window_period=5.0
        ) as net:
            await net.start()
            sts = await net.wait_for(
                "epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=60
            )
            net.real_time()
            honest_transport = net.transport()
            monkeypatch.setattr(owner, "HTTP_TRANSPORT", honest_transport)

            def admin(config: Path, request: dict[str, Any], json_out: bool = False) -> Any:
                reply = net.admin_by_config(config, request)
                assert reply.get("ok"), reply
                return reply

            monkeypatch.setattr(kms.cli.member, "admin", admin)
            work = tmp_path / "owner"
            work.mkdir()
            (work / "cvm.measurement.toml").write_text(
                simtee.measurement_toml(simtee.random_measurement())
            )
            o = Owner(net, work, sts[1]["master_public_key"])
            assert (await o.cli("app", "create", "--owner-key", work / "owner.key")).exit_code == 0
            app_id = owner.load_owner(work / "owner.key").app_id.hex()
            assert (await o.sign(1)).exit_code == 0
            for i in net.indices:
                r = await o.cli(
                    "member", "admit-app", "--config", net.config_path(i), work / "v1.policy"
                )
                assert r.exit_code == 0, r.output

            # All honest: the key is released.
            r = await o.key_get(app_id, "cvm", "--json")
            assert r.exit_code == 0, r.output

            # Node 1 corrupt: it claims index 2 in its status. Nodes 2 and 3 are honest and up.
            liar_url = str(net.state["nodes"][0]["http_url"]).rstrip("/")
            monkeypatch.setattr(owner, "HTTP_TRANSPORT", Liar(honest_transport, liar_url))
            r = await o.key_get(app_id, "cvm", "--json")
            assert r.exit_code == 0, r.output  # nodes 2 and 3 serve it

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
