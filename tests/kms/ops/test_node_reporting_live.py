"""What an operator sees of a live committee, in one process (``ServiceDevnet``: every
node a real ``NodeService`` from its devnet config and store, on ``net.memory`` and
trio's ``MockClock``): the log lines of the genesis DKG, of a removal proposed and
approved over the admin channel, of its decision window and reshare, and of shutdown;
the genesis countdown and the next decision window in ``/v1/status``; and the removed
node's ``/health`` and ``/v1/status``, which say it is not a member."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from devnet_helpers import in_process_devnet
from service_devnet import ServiceDevnet

from kms.app.config import load
from kms.node.logs import record_fields


class Lines(logging.Handler):
    """Every ``quorum_kms`` record as (msg, level, fields), the fields read when the
    record is emitted (so the node's context fields are those of the node that logged)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), record.levelname.lower(), record_fields(record)))

    def where(self, msg: str, **match: Any) -> list[dict[str, Any]]:
        return [
            f for m, _, f in self.lines if m == msg and all(f.get(k) == v for k, v in match.items())
        ]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("quorum_kms")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def test_genesis_removal_and_shutdown_are_logged_and_the_removed_node_is_not_healthy(
    tmp_path: Path, lines: Lines
) -> None:
    tokens: list[str] = []

    async def scenario(net: ServiceDevnet) -> None:
        tokens.extend(
            load(net.config_path(i)).admin_token_file.read_text().strip() for i in net.indices
        )
        await net.start()
        # Before genesis: the countdown, and a genesis member is healthy (its DKG is due).
        st = await net.status(1)
        assert st is not None and st["epoch"] is None
        assert st["genesis"]["at"] == net.genesis_start
        assert 0 < st["genesis"]["in_seconds"] <= 5.0
        assert st["next_window"] is None
        assert (await net.get(1, "/health")).status_code == 200

        sts = await net.wait_for(
            "epoch 0 at every node", lambda: net.converged(net.indices, epoch=0), timeout=30
        )
        st = sts[1]
        assert st["genesis"] is None and st["member"] is True and st["healthy"] is True
        nxt = st["next_window"]
        assert nxt["at"] == net.genesis_start + nxt["index"] * net.window_period
        assert 0 < nxt["in_seconds"] <= net.window_period
        assert abs(nxt["at"] - nxt["in_seconds"] - st["now"]) < 1e-3

        reply = net.admin(1, {"op": "propose", "change": "remove", "index": 4})
        assert reply["ok"], reply
        pid = reply["proposal_id"]
        for i in (2, 3):
            assert net.admin(i, {"op": "approve", "proposal_id": pid})["ok"] is True
        await net.wait_for(
            "epoch 1 with committee 1-3",
            lambda: net.converged([1, 2, 3], epoch=1, committee=[1, 2, 3]),
            timeout=45,
        )

        async def four_at_1() -> dict[str, Any] | None:
            s = await net.status(4)
            return s if s and s.get("epoch") == 1 else None

        st4 = await net.wait_for("node 4 to see its removal", four_at_1, timeout=15)
        assert st4["healthy"] is False and st4["member"] is False
        assert st4["health"] == "not a member of epoch 1: this node serves no keys"
        r = await net.get(4, "/health")
        assert r.status_code == 503
        assert r.json() == {"ok": False, "epoch": 1, "member": False, "health": st4["health"]}
        r = await net.get(1, "/health")
        assert r.status_code == 200 and r.json()["member"] is True
        lines.proposal = pid  # type: ignore[attr-defined]

    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 4, 3, delta=0.2, start_in=4.0, window_period=5.0
        ) as net:
            await scenario(net)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    pid = lines.proposal  # type: ignore[attr-defined]

    # Never the admin token, in any line.
    for _, _, fields in lines.lines:
        assert not any(t in json.dumps(fields, default=str) for t in tokens)

    # The operator's actions, with their arguments and results.
    (propose,) = lines.where("admin request", op="propose")
    assert propose["change"] == "remove" and propose["index"] == 4
    assert propose["ok"] is True and propose["proposal_id"] == pid
    approvals = lines.where("admin request", op="approve")
    assert len(approvals) == 2
    assert all(a["proposal_id"] == pid and a["ok"] is True for a in approvals)

    # The genesis DKG's start and end at every node.
    for node in (1, 2, 3, 4):
        started = lines.where("sharing run started", node=node, kind="dkg", epoch=0)
        assert started and started[0]["attempt"] == 0
        assert lines.where("sharing run ended", node=node, kind="dkg", epoch=0, outcome="done")
    # The window that decided the removal, and the reshare it started, at the members kept.
    for node in (1, 2, 3):
        decided = lines.where("decision window ended", node=node, outcome="decided")
        assert [d["proposal"] for d in decided] == [pid]
        assert decided[0]["kind"] == "remove" and decided[0]["epoch"] == 0
        window = decided[0]["window"]
        assert lines.where("decision window started", node=node, window=window, epoch=0)
        assert lines.where("sharing run started", node=node, kind="reshare", epoch=1)
        assert lines.where("sharing run ended", node=node, kind="reshare", epoch=1, outcome="done")
    # Shutdown, at every node.
    for node in (1, 2, 3, 4):
        (stopped,) = lines.where("node service stopped", node=node)
        assert stopped["member"] is (node != 4)
