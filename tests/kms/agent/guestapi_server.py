"""The guest API served over a real Unix socket for the API tests.

A fixed app root (dstack's published fixture key), a simulated TDX platform that quotes
with the measurements of an event log built here, and hypercorn serving ``make_app`` on
a temporary socket in a thread of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette

from kms.agent.api import AgentKeys, make_app
from kms.agent.tee import TeeView
from kms.attest.simulated import SimulatedTEE

ROOT = bytes.fromhex("1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b")
ROOT_PUBLIC = bytes.fromhex("0375427ab8309aad26beea8142edf427674e4544604ae4dc5045108ad21fc8a0db")
APP_ID = bytes.fromhex("ab" * 20)
LINK1 = bytes(range(48))
MPK = bytes(range(96))
NOW = 1_790_000_000
RUNTIME_EVENT = 0x08000001
APP_COMPOSE = json.dumps({"manifest_version": 2, "name": "demo-app", "runner": "docker-compose"})
VM_CONFIG = json.dumps({"cpu_count": 2, "memory_size": 2048})


def runtime_event(name: str, payload: bytes) -> dict[str, Any]:
    digest = hashlib.sha384(
        struct.pack("<I", RUNTIME_EVENT) + b":" + name.encode() + b":" + payload
    ).digest()
    return {
        "imr": 3,
        "event_type": RUNTIME_EVENT,
        "digest": digest.hex(),
        "event": name,
        "event_payload": payload.hex(),
    }


def replay(events: list[dict[str, Any]], imr: int) -> bytes:
    mr = bytes(48)
    for e in events:
        if e["imr"] == imr:
            mr = hashlib.sha384(mr + bytes.fromhex(e["digest"]).ljust(48, b"\0")).digest()
    return mr


class FakeSource:
    """A TeeSource on a simulated TDX platform: quotes carry the event log's RTMRs."""

    def __init__(self) -> None:
        rnd = random.Random(7)
        self.tee = SimulatedTEE(rnd.randbytes, now=NOW)
        compose_hash = hashlib.sha256(APP_COMPOSE.encode()).digest()
        self.events: list[dict[str, Any]] = [
            {
                "imr": i,
                "event_type": 0x80000001,
                "digest": hashlib.sha384(b"boot %d" % i).hexdigest(),
                "event": "",
                "event_payload": (b"boot %d" % i).hex(),
            }
            for i in range(3)
        ]
        self.events += [
            runtime_event("system-preparing", b""),
            runtime_event("app-id", APP_ID),
            runtime_event("compose-hash", compose_hash),
            runtime_event("instance-id", bytes(range(20))),
            runtime_event("boot-mr-done", b""),
        ]
        self.mrtd = hashlib.sha384(b"mrtd").digest()
        self.quotes: list[bytes] = []

    def rtmr(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (
            replay(self.events, 0),
            replay(self.events, 1),
            replay(self.events, 2),
            replay(self.events, 3),
        )

    def quote(self, report_data: bytes) -> bytes:
        r0, r1, r2, r3 = self.rtmr()
        self.quotes.append(report_data)
        return self.tee.quote(report_data, mr_td=self.mrtd, rtmr0=r0, rtmr1=r1, rtmr2=r2, rtmr3=r3)

    def event_log(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.events]

    def app_compose(self) -> str:
        return APP_COMPOSE

    def vm_config(self) -> str:
        return VM_CONFIG


def agent_keys() -> AgentKeys:
    return AgentKeys(
        root=ROOT,
        root_public=ROOT_PUBLIC,
        app_id=APP_ID,
        root_version=1,
        link1=LINK1,
        qkms_cert=(1, 3, bytes(range(100, 148))),
        mpk=MPK,
        committee_urls=("http://127.0.0.1:8101", "http://127.0.0.1:8102"),
    )


def view_of(source: FakeSource) -> TeeView:
    return TeeView(
        app_id=APP_ID,
        instance_id=bytes(range(20)),
        device_id=hashlib.sha256(b"device").digest(),
        compose_hash=hashlib.sha256(APP_COMPOSE.encode()).digest(),
        os_image_hash=hashlib.sha256(b"os image").digest(),
        mr_aggregated=hashlib.sha256(b"aggregated").digest(),
        mrtd=source.mrtd,
        rtmr=source.rtmr(),
        event_log=source.event_log(),
        app_compose=APP_COMPOSE,
        vm_config=VM_CONFIG,
        key_provider_info="",
    )


def build_app(max_body: int = 64 * 1024) -> tuple[Starlette, FakeSource]:
    source = FakeSource()
    app = make_app(agent_keys(), view_of(source), source, max_body=max_body, rev="r" * 40)
    return app, source


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with hypercorn on a fresh Unix socket; yields the socket path."""
    with tempfile.TemporaryDirectory(prefix="dstack-sock-") as tmp:
        path = str(Path(tmp) / "dstack.sock")
        config = Config()
        config.bind = [f"unix:{path}"]
        config.accesslog = None
        config.errorlog = None
        ready = threading.Event()
        state: dict[str, Any] = {}

        async def main() -> None:
            stop = trio.Event()
            state["stop"] = stop
            state["token"] = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    lambda task_status: serve(
                        app,  # type: ignore[arg-type]
                        config,
                        shutdown_trigger=stop.wait,
                        mode="asgi",
                        task_status=task_status,
                    )
                )
                ready.set()

        thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        thread.start()
        if not ready.wait(20):
            raise RuntimeError("the guest API server did not start")
        try:
            yield path
        finally:
            trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
            thread.join(20)


def client(path: str) -> httpx.Client:
    """What dstack-sdk does: httpx over the Unix socket with base URL http://localhost."""
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=path), base_url="http://localhost", timeout=20
    )


def raw_request(path: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw HTTP/1.1 bytes on the socket; return (status, headers, body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(path)
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        body = out
    return status, headers, body


def post(path: str, target: str, body: bytes, content_type: str = "application/json") -> bytes:
    """A raw POST request with ``Connection: close``."""
    return (
        f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
