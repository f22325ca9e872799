"""Over the network: operators who act before a decision window get their change in it.

Real ``NodeService`` nodes (``service_devnet.ServiceDevnet``: their configs and stores from
``kms.app.devnet``, ``net.memory``, trio's ``MockClock``), operated through their admin
channels as ``kms member propose`` / ``approve`` do, with each node's change check on.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from devnet_helpers import in_process_devnet
from service_devnet import ServiceDevnet

from kms.app.config import load
from mpc.membership import MembershipCertificate


def test_approvals_before_a_window_certify_the_change_in_it(tmp_path: Path) -> None:
    async def scenario(net: ServiceDevnet) -> None:
        await net.start()
        await net.wait_for(
            "epoch 0 at nodes 1-4", lambda: net.converged([1, 2, 3, 4], epoch=0), timeout=30
        )
        cfg = load(net.config_path(1)).protocol
        # One second before window w opens, the operators act: a proposal, two approvals.
        w = int((net.now() - cfg.genesis_start) // cfg.window_period) + 2
        opens = cfg.genesis_start + w * cfg.window_period
        await net.wait_until(opens - 1.0)
        reply = net.admin(4, {"op": "propose", "change": "threshold", "threshold": 2})
        assert reply["ok"], reply
        pid = reply["proposal_id"]
        for i in (1, 2):
            assert net.admin(i, {"op": "approve", "proposal_id": pid})["ok"] is True
        assert net.now() < opens
        sched = cfg.window_schedule(w, reshare_delay=2 * cfg.delta)
        await net.wait_until(sched.sign_end(cfg.threshold - 1) + cfg.delta)
        for i in (1, 2, 3, 4):
            certs = [x for x in net.service(i).core.chain if isinstance(x, MembershipCertificate)]
            assert [c.outcome.window for c in certs] == [w], i
            assert certs[0].outcome.proposal.id().hex() == pid
        # Then the reshare: epoch 1, threshold 2.
        sts = await net.wait_for(
            "epoch 1", lambda: net.converged([1, 2, 3, 4], epoch=1), timeout=30
        )
        assert {st["threshold"] for st in sts.values()} == {2}

    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 4, 3, delta=0.2, start_in=5.0, window_period=5.0
        ) as net:
            await scenario(net)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
