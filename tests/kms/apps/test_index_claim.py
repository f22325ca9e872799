"""A node that claims another member's index cannot hide that member from ``kms key get``.

The attack (n = 3, t = 2): corrupt node 1, listed first, says index 2 in its
unauthenticated ``/v1/status``. The client took the first claimant of each index and
dropped later ones, so honest node 2 was left out, node 1's answers were refused (another
identity's signature) and only node 3 was left: fewer than ``t`` although two honest
members ran. Every claimant is now kept and the next one tried when the first gives no
good partial (``kms.app.cvm.with_claimants``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from devnet_helpers import ClaimingNode, in_process_devnet
from test_owner_committee import owner_with_app

from kms.app import owner


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
            o, app_id = await owner_with_app(
                net, tmp_path, monkeypatch, sts[1]["master_public_key"]
            )
            honest_transport = net.transport()

            # All honest: the key is released.
            r = await o.key_get(app_id, "cvm", "--json")
            assert r.exit_code == 0, r.output

            # Node 1 corrupt: it claims index 2 in its status. Nodes 2 and 3 are honest and up.
            liar_url = str(net.state["nodes"][0]["http_url"]).rstrip("/")
            monkeypatch.setattr(
                owner, "HTTP_TRANSPORT", ClaimingNode(honest_transport, liar_url, claim=2)
            )
            r = await o.key_get(app_id, "cvm", "--json")
            assert r.exit_code == 0, r.output  # nodes 2 and 3 serve it

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
