"""The key client when a node sheds load: ``503 overloaded`` is not an answer.

A node past its release limits refuses a key request unread (``kms.api.shed``):
the client asks another member, and asks the overloaded one again after a
backoff only when no other member is left, within the request's deadline.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from test_client_connection_retry import Flaky, admitted, disconnected, fetch, first_only, run

from kms.app.testing import LocalCommittee

OVERLOADED = httpx.Response(
    503,
    json={"reason": "overloaded", "detail": "busy", "retry_after": 1},
    headers={"retry-after": "1"},
)


def overloaded(request: httpx.Request, _: int) -> httpx.Response:
    return OVERLOADED


def test_an_overloaded_node_is_passed_over_not_counted_as_a_refusal(tmp_path: Path) -> None:
    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 91)
        net = Flaky(c.blocking_transport(), {1: overloaded})
        res = await trio.to_thread.run_sync(fetch, c, app, net)
        assert res.derived[("app", 1)] is not None
        assert not res.refusals  # shedding is not the node's answer to the request
        assert any("overloaded" in u for u in res.ignored_nodes)

    run(tmp_path, body)


def test_an_overloaded_node_is_asked_again_when_no_other_is_left(tmp_path: Path) -> None:
    """Node 1 sheds once, node 3 is down: node 1 is asked again after the backoff."""

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 92)
        net = Flaky(c.blocking_transport(), {1: first_only(overloaded), 3: disconnected})
        res = await trio.to_thread.run_sync(fetch, c, app, net)
        assert res.derived[("app", 1)] is not None
        assert net.asks[1] == 2  # shed, then asked again and answered

    run(tmp_path, body)
