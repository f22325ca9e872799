"""A corrupt genesis member that claims, in its unauthenticated ``/v1/status``, the index
of a member added after genesis does not hide that member from ``kms key get``: for an
index the verified chain certifies a URL for, the client uses that URL, never a status
claimant's.

Promise kept (docs/threat-model.md, "The owner's and the CVM's command line"):
"A node that claims another member's index gains nothing ... Nor can it hide the honest
node of that index ... Members added after genesis are also found at their certified URL
from the verified chain". Also docs/protocols/membership.md, "The new member's URL, and
how clients find members".

Setup: n = 4, t = 3 genesis; node 5 joins (certified URL; n = 5, t = 3). The CVM lists the
genesis URLs (it learns node 5 from the chain). Node 1 is corrupt (1 < t) and says
``index: 5`` in its status; its /v1/keys stays honest. Node 2 crashes (an honest crash).
Nodes 3, 4, 5 are honest and up (= t), so the key is released (node 5 at its certified
URL), with or without the lie.

Before the fix kms/client/http.py KeyClient._learn_urls preferred the URL given for an
index (here the status claimant's) over the certified one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from devnet_helpers import ClaimingNode, in_process_devnet
from test_join_urls import join, url_of
from typer.testing import CliRunner

from kms.app import devnet, owner
from kms.cli import app
from kms.client import http as client_http

runner = CliRunner()


@pytest.mark.slow
@pytest.mark.parallel
def test_a_status_claim_does_not_hide_a_member_added_after_genesis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 4, 3, delta=0.2, start_in=5.0, window_period=4.0
        ) as net:
            await net.start()
            sts = await net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), 40)
            mpk = sts[1]["master_public_key"]
            app_id = devnet.register_demo_app(net.directory, mpk, admin=net.admin_by_config)
            await join(net, 5)
            await trio.sleep(3.0)  # node 5 learns the app (policy sync on its first epoch)
            assert ((await net.status(5)) or {})["apps"]["admitted"] == 1
            devnet.write_state(net.directory, net.state)
            net.real_time()
            honest = net.transport()
            genesis_urls = ",".join(url_of(net, i) for i in (1, 2, 3, 4))

            async def key_get() -> Any:
                def go() -> Any:
                    client_http._HEADS.clear()
                    return runner.invoke(
                        app,
                        ["key", "get", "--devnet", str(net.directory), "--app", app_id,
                         "--urls", genesis_urls, "--mpk", mpk, "--json"],
                    )  # fmt: skip

                return await net.in_thread(go)

            await net.stop(2)  # an honest member crashes: 3, 4, 5 (= t) honest and up

            # Control: no lie, node 5 is reached at its certified URL, the key is released.
            monkeypatch.setattr(owner, "HTTP_TRANSPORT", honest)
            r = await key_get()
            print("control:", r.output)
            assert r.exit_code == 0, r.output

            # Node 1 (corrupt) claims index 5 in its unauthenticated status.
            monkeypatch.setattr(
                owner, "HTTP_TRANSPORT", ClaimingNode(honest, url_of(net, 1).rstrip("/"), claim=5)
            )
            r = await key_get()
            print("attack:", r.output)
            assert r.exit_code == 0, r.output

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class Recording(ClaimingNode):
    def __init__(self, inner: httpx.BaseTransport, origin: str, claim: int) -> None:
        super().__init__(inner, origin, claim=claim)
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, str(request.url)))
        return super().handle_request(request)


@pytest.mark.slow
@pytest.mark.parallel
def test_a_removed_member_gets_no_key_request_by_claiming_a_joiners_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/threat-model.md: "A removed member gets no key request and no evidence from a
    client that verified the chain without it ... Its first chain fetch still goes to
    every URL it was given." Node 1 is removed (still running, still listed by the CVM)
    and claims index 5 (a member added after genesis): the CVM posts no key request to
    node 1, asks node 5 at its certified URL, and gets its key."""

    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 4, 3, delta=0.2, start_in=5.0, window_period=4.0
        ) as net:
            await net.start()
            sts = await net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), 40)
            mpk = sts[1]["master_public_key"]
            app_id = devnet.register_demo_app(net.directory, mpk, admin=net.admin_by_config)
            epoch = await join(net, 5)
            await trio.sleep(3.0)
            reply = net.admin(2, {"op": "propose", "change": "remove", "index": 1})
            assert reply["ok"], reply
            for i in (3, 4, 5):
                net.admin(i, {"op": "approve", "proposal_id": reply["proposal_id"]})
            await net.wait_for(
                "node 1 removed",
                lambda: net.converged([2, 3, 4, 5], epoch=epoch + 1, committee=[2, 3, 4, 5]),
                90,
            )
            devnet.write_state(net.directory, net.state)
            net.real_time()
            rec = Recording(net.transport(), url_of(net, 1).rstrip("/"), 5)
            monkeypatch.setattr(owner, "HTTP_TRANSPORT", rec)
            genesis_urls = ",".join(url_of(net, i) for i in (1, 2, 3, 4))

            def go() -> Any:
                client_http._HEADS.clear()
                return runner.invoke(
                    app,
                    ["key", "get", "--devnet", str(net.directory), "--app", app_id,
                     "--urls", genesis_urls, "--mpk", mpk, "--json"],
                )  # fmt: skip

            await net.stop(2)  # one honest crash: 3, 4, 5 (= t) are honest and up
            r = await net.in_thread(go)
            print(r.output)
            posts = [u for m, u in rec.seen if m == "POST"]
            print(posts)
            removed = url_of(net, 1).rstrip("/")
            assert not any(u.startswith(removed) for u in posts), posts
            assert any(u.startswith(url_of(net, 5).rstrip("/")) for u in posts), posts
            assert r.exit_code == 0, r.output  # and the key is released

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
