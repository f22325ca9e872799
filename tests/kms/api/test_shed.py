"""A node past its release capacity refuses at once, unread, and finishes what it admitted.

The ASGI app is driven in process (trio), as hypercorn drives it: the node's
stand-in holds each release until the test lets it go, so the bound is full
exactly when the test says.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_http_bodies import Source

from kms.api.http import make_app
from kms.api.shed import Admission, Shed, ShedLimits
from kms.app.config import ConfigError, load
from kms.app.setup import init_node, shed_limits, write_config
from kms.node.metrics import NodeMetrics
from kms.node.release import KeyRefusalReason, ReleaseRefused
from kms.protocol import AppKeyCertRequest, KeyRequest


class HeldSource(Source):
    """Releases wait for ``gate``; each decoded request is recorded in ``seen``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()
        self.started = 0

    async def release(self, request: KeyRequest) -> ReleaseRefused:
        self.started += 1
        await self.gate.wait()
        return await super().release(request)

    async def certify(self, request: AppKeyCertRequest) -> ReleaseRefused:
        self.started += 1
        await self.gate.wait()
        return await super().certify(request)


def _key_request() -> bytes:
    from kms.protocol import EphemeralKey, KeyRequestBody, PurposeVersion

    body = KeyRequestBody(
        app_id=bytes(20),
        purposes=(PurposeVersion("app", 1),),
        ephemeral_keys=(EphemeralKey(1, bytes(32)),),
        timestamp=1_800_000_000,
        nonce=bytes(16),
        min_policy_version=0,
        epoch=0,
    )
    return KeyRequest(body, b"quote", b"").encode()


KEY_REQUEST = _key_request()


class Answer:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.body_taken = False
        self.at: float | None = None


async def call(
    app: Any, path: str, out: Answer, body: bytes = KEY_REQUEST, method: str = "POST"
) -> None:
    """One request through the ASGI channel; records the answer and whether the body was read."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            out.body_taken = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = dict(message.get("headers", []))
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")
            if not message.get("more_body", False):
                out.at = trio.current_time()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/msgpack"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    await app(scope, receive, send)


def test_a_full_node_answers_overloaded_at_once_and_completes_what_it_admitted() -> None:
    source = HeldSource()
    shed: list[str] = []
    app = make_app(source, ShedLimits(concurrency=2, queue=0), shed.append)
    admitted = [Answer() for _ in range(2)]
    refused = Answer()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for a in admitted:
                nursery.start_soon(call, app, "/v1/keys", a)
            await trio.testing.wait_all_tasks_blocked()
            assert source.started == 2
            t0 = trio.current_time()
            await call(app, "/v1/keys", refused)
            assert refused.at is not None and refused.at - t0 < 0.05
            source.gate.set()

    trio.run(main)
    assert refused.status == 503
    assert json.loads(refused.body)["reason"] == "overloaded"
    assert refused.headers[b"retry-after"] == b"1"
    assert shed == ["keys"]
    assert [a.status for a in admitted] == [403, 403]  # answered by the node
    # The refused body was never decoded (BodyLimit only drops it while the 503 is sent).
    assert source.started == 2 and len(source.seen) == 2


def test_queued_requests_wait_their_turn_and_overflow_is_refused() -> None:
    source = HeldSource()
    shed: list[str] = []
    app = make_app(source, ShedLimits(concurrency=1, queue=1, queue_wait=30), shed.append)
    first, queued, over = Answer(), Answer(), Answer()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, app, "/v1/keys", first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, app, "/v1/keys", queued)
            await trio.testing.wait_all_tasks_blocked()
            assert source.started == 1 and queued.status is None  # waiting for the place
            await call(app, "/v1/keys", over)
            source.gate.set()

    trio.run(main)
    assert over.status == 503 and shed == ["keys"]
    assert first.status == 403 and queued.status == 403
    assert source.started == 2


def test_a_wait_that_runs_out_is_refused_and_frees_its_queue_place() -> None:
    source = HeldSource()
    shed: list[str] = []
    app = make_app(source, ShedLimits(concurrency=1, queue=1, queue_wait=0.05), shed.append)
    first, late, later = Answer(), Answer(), Answer()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, app, "/v1/keys", first)
            await trio.testing.wait_all_tasks_blocked()
            await call(app, "/v1/keys", late)  # waits 0.05 s, then refused
            nursery.start_soon(call, app, "/v1/keys", later)  # the queue place is free again
            await trio.testing.wait_all_tasks_blocked()
            assert later.status is None
            source.gate.set()

    trio.run(main)
    assert late.status == 503 and json.loads(late.body)["reason"] == "overloaded"
    assert shed == ["keys"]
    assert first.status == 403 and later.status == 403


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    limits = ShedLimits(concurrency=1, queue=4, queue_wait=30)
    adm = Admission(limits)

    async def main() -> None:
        assert await adm.enter()
        with trio.move_on_after(0.01):
            await adm.enter()  # cancelled while waiting: nothing taken
        assert adm.waiting == 0 and adm.in_progress == 1

        async with trio.open_nursery() as nursery:
            got: list[bool] = []

            async def waiter() -> None:
                got.append(await adm.enter())

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            adm.leave()  # handed to the waiter
        assert got == [True] and adm.in_progress == 1
        adm.leave()
        assert adm.in_progress == 0 and adm.waiting == 0

    trio.run(main)


def test_other_routes_are_served_while_releases_are_full() -> None:
    source = HeldSource()
    app = make_app(source, ShedLimits(concurrency=1, queue=0))
    held, status, policy = Answer(), Answer(), Answer()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, app, "/v1/keys", held)
            await trio.testing.wait_all_tasks_blocked()
            await call(app, "/v1/status", status, method="GET")
            await call(app, "/v1/policies", policy)
            source.gate.set()

    trio.run(main)
    assert status.status == 200 and policy.status == 400 and held.status == 403


def test_a_shed_without_a_counter_still_answers() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await trio.sleep_forever()

    shed = Shed(app, ShedLimits(concurrency=1, queue=0, retry_after=7))
    out = Answer()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, shed, "/v1/keys", Answer())
            await trio.testing.wait_all_tasks_blocked()
            await call(shed, "/v1/keys", out)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert out.status == 503 and out.headers[b"retry-after"] == b"7"
    assert shed.admission.in_progress == 0  # the cancelled request gave its place back


@pytest.mark.parametrize(
    "bad",
    [
        {"concurrency": 0},
        {"queue": -1},
        {"queue_wait": -0.1},
        {"queue_wait": float("inf")},
        {"retry_after": -1},
        {"body_timeout": 0},
        {"body_timeout": float("nan")},
    ],
)
def test_limits_refuse_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ShedLimits(**bad)


def test_the_counter_counts_by_route() -> None:
    metrics = NodeMetrics()
    text = metrics.exposition().decode()
    assert 'qkms_shed_total{route="keys"} 0.0' in text  # exported from the start
    metrics.shed("keys")
    metrics.shed("keys")
    metrics.shed("app-key-cert")
    metrics.shed("no such route")  # not a label: ignored
    text = metrics.exposition().decode()
    assert 'qkms_shed_total{route="keys"} 2.0' in text
    assert 'qkms_shed_total{route="app-key-cert"} 1.0' in text
    assert "no such route" not in text


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("shed")
    records = [init_node(base / f"n{i}", index=i) for i in (1, 2)]
    doc = tomllib.loads((base / "n1" / "node.toml").read_text())
    doc["committee"]["genesis"] = [
        {k: r[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")} for r in records
    ]
    return doc


def _write(template: dict[str, Any], tmp_path: Path, **settings: Any) -> Path:
    doc = copy.deepcopy(template)
    doc["node"].update(settings)
    path = tmp_path / "node.toml"
    write_config(path, doc)
    return path


def test_config_defaults_and_settings(template: dict[str, Any], tmp_path: Path) -> None:
    assert shed_limits(load(_write(template, tmp_path))) == ShedLimits()
    cfg = load(
        _write(
            template,
            tmp_path,
            release_concurrency=4,
            release_queue=0,
            release_queue_wait=2,
            release_retry_after=3,
            release_body_timeout=1,
        )
    )
    assert shed_limits(cfg) == ShedLimits(
        concurrency=4, queue=0, queue_wait=2.0, retry_after=3, body_timeout=1.0
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"release_concurrency": 0},
        {"release_concurrency": 1_000_000},
        {"release_concurrency": True},
        {"release_queue": -1},
        {"release_queue": "32"},
        {"release_queue_wait": -1},
        {"release_queue_wait": float("inf")},
        {"release_queue_wait": float("nan")},
        {"release_retry_after": 1.5},
        {"release_body_timeout": 0},
        {"release_body_timeout": 301},
        {"release_body_timeout": float("nan")},
        {"release_body_timeout": True},
    ],
)
def test_config_refuses_nonsense(template: dict[str, Any], tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError):
        load(_write(template, tmp_path, **bad))


def test_refusal_reason_is_not_a_key_refusal_reason() -> None:
    # ``overloaded`` is a transport-level refusal: never confused with the node's own answers.
    assert "overloaded" not in {r.value for r in KeyRefusalReason}
