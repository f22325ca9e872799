"""The key client when a node sheds load: ``503 overloaded`` is not an answer.

A node past its release limits refuses a key request unread (``kms.api.shed``):
the client asks another member, and asks the overloaded one again after a
backoff only when no other member is left, within the request's deadline.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import trio
from test_client_connection_retry import (
    Flaky,
    admitted,
    disconnected,
    fetch,
    first_only,
    refused,
    run,
)

from kms.app.testing import LocalCommittee
from kms.client.http import KeyClient

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


def _shed_once(retry_after: str, times: list[float]) -> object:
    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        times.append(time.monotonic())
        if n > 1:
            return None
        return httpx.Response(
            503,
            json={"reason": "overloaded", "detail": "busy"},
            headers={"retry-after": retry_after},
        )

    return fault


def test_an_overloaded_node_is_asked_again_only_after_its_retry_after(tmp_path: Path) -> None:
    """Node 1 sheds with ``Retry-After: 1``, node 3 is down: the client waits the second the
    node asked for before asking it again (not its 0.1 s connection backoff)."""
    times: list[float] = []

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 93)
        net = Flaky(c.blocking_transport(), {1: _shed_once("1", times), 3: disconnected})
        res = await trio.to_thread.run_sync(fetch, c, app, net)
        assert res.derived[("app", 1)] is not None
        assert net.asks[1] == 2 and times[1] - times[0] >= 1.0, times

    run(tmp_path, body)


@pytest.mark.parametrize("retry_after", ["3600", "nan", "inf", "-5"])
def test_a_node_cannot_stall_the_client_with_its_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry_after: str
) -> None:
    """A lying node's ``Retry-After`` is capped (and ignored when it is no number of
    seconds): the client asks it again within ``OVERLOADED_WAIT_MAX``."""
    monkeypatch.setattr(KeyClient, "OVERLOADED_WAIT_MAX", 0.5)
    times: list[float] = []

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 94)
        net = Flaky(c.blocking_transport(), {1: _shed_once(retry_after, times), 3: disconnected})
        res = await trio.to_thread.run_sync(fetch, c, app, net)
        assert res.derived[("app", 1)] is not None
        assert net.asks[1] == 2 and times[1] - times[0] < 3.0, times

    run(tmp_path, body)


def test_one_nodes_retry_after_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """A corrupt node 3 sheds every request with ``Retry-After: 5``; honest node 1 is
    restarting (connections refused for 0.3 s). Node 1 is asked again after the
    connection backoff, not after node 3's five seconds."""
    elapsed: list[float] = []

    async def body(c: LocalCommittee) -> None:
        app = await admitted(c, 95)
        back_at: list[float] = []

        def restarting(request: httpx.Request, n: int) -> object:
            if not back_at:
                back_at.append(time.monotonic() + 0.3)
            return refused(request, n) if time.monotonic() < back_at[0] else None

        def shedder(request: httpx.Request, n: int) -> httpx.Response:
            return httpx.Response(
                503, json={"reason": "overloaded", "detail": "busy"}, headers={"retry-after": "5"}
            )

        net = Flaky(c.blocking_transport(), {1: restarting, 3: shedder})

        def go() -> object:
            began = time.monotonic()
            res = fetch(c, app, net, timeout=10.0, read_timeout=1.0)
            elapsed.append(time.monotonic() - began)
            return res

        res = await trio.to_thread.run_sync(go)
        assert res.derived[("app", 1)] is not None  # type: ignore[attr-defined]

    run(tmp_path, body)
    assert elapsed[0] < 2.5, elapsed
