"""Shared harness for the boot attacks: an in-process committee (kms.app.testing) and the
agent's real boot (kms.agent.runtime.obtain_keys) against it, with a transport that lets one
member lie."""

from __future__ import annotations

import json
import time as _time
import types
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from kms.agent import runtime
from kms.agent.tee import full_digests, read_view
from kms.app import testing
from kms.policy import OwnerKey

COMPOSE = "the test apps' compose file"  # SHA-256 is testing.COMPOSE_HASH
OWNER = OwnerKey.from_seed(bytes([0x42]) * 32)
APP = OWNER.app_id()
PURPOSES = ("dstack-app-root", "ibe.env")


class CommitteeSource:
    """A dstack CVM of APP on the committee's simulated TEE (what the policy admits)."""

    def __init__(self, committee: testing.LocalCommittee, app_id: bytes = APP) -> None:
        log, self.regs = testing.app_boot(app_id)
        self.events = json.loads(log)
        self.c = committee

    def quote(self, report_data: bytes) -> bytes:
        m = self.regs
        return self.c.tee.quote(
            report_data,
            mr_td=m["mr_td"],
            rtmr0=m["rtmr0"],
            rtmr1=m["rtmr1"],
            rtmr2=m["rtmr2"],
            rtmr3=m["rtmr3"],
        )

    def event_log(self) -> list:
        return full_digests(self.events)

    def app_compose(self) -> str:
        return COMPOSE

    def vm_config(self) -> str:
        return ""


class Lying(httpx.BaseTransport):
    """Every request goes to the honest bridge unless ``hook(request)`` answers it."""

    def __init__(
        self, inner: httpx.BaseTransport, hook: Callable[[httpx.Request], httpx.Response | None]
    ):
        self.inner, self.hook = inner, hook

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.hook(request)
        return self.inner.handle_request(request) if r is None else r


async def admit(c: testing.LocalCommittee, tmp: Path, *bundles) -> None:
    for i in c.services:
        d = tmp / f"policies-{i}"
        d.mkdir(exist_ok=True)
        for k, b in enumerate(bundles):
            (d / f"app{k}.policy").write_bytes(b.encode())
        c.policies[i].directory = d
        c.policies[i].reload(testing.NOW)


def patch_clock(monkeypatch) -> None:
    """Requests carry the committee's time (its clock starts at testing.NOW)."""
    import kms.client.http as ch

    shim = types.SimpleNamespace(
        time=lambda: float(testing.NOW), monotonic=_time.monotonic, sleep=_time.sleep
    )
    monkeypatch.setattr(ch, "time", shim)


def boot_in_thread(c: testing.LocalCommittee, monkeypatch, urls, transport, **kw):
    """obtain_keys as `kms agent run` does it (view, policy, σ, certificate)."""
    from kms.app import owner as owner_mod

    monkeypatch.setattr(owner_mod, "HTTP_TRANSPORT", transport)  # nodes_by_index's transport
    src = CommitteeSource(c)
    setup = runtime.AgentSetup(src, c.mpk, tuple(urls), Path("/nonexistent.sock"), None, **kw)
    view = read_view(src)

    def run():
        return runtime.obtain_keys(setup, view, now=testing.NOW, transport=transport)

    return trio.to_thread.run_sync(run)
