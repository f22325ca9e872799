"""The admin channel refuses anything without the token and changes nothing."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import trio

from kms.api import admin


class Target:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def status(self) -> dict[str, Any]:
        return {"epoch": 3}

    def propose(self, change: Any) -> bytes:
        self.calls.append(("propose", change))
        return bytes(32)

    def approve(self, proposal_id: bytes) -> None:
        self.calls.append(("approve", proposal_id))


TOKEN = b"s3cret-token"


def test_requests_without_the_right_token_are_refused_and_change_nothing() -> None:
    t = Target()
    for req in (
        {"op": "propose", "change": "refresh"},
        {"op": "propose", "change": "refresh", "token": "wrong"},
        {"op": "approve", "proposal_id": "00" * 32, "token": ""},
        {"op": "status", "token": "s3cret-toke"},
    ):
        reply = admin.handle(t, TOKEN, json.dumps(req).encode())
        assert reply == {"ok": False, "error": "unauthorised"}
    assert t.calls == []
    for raw in (b"not json", b"[1, 2]", b"[" * 1000 + b"]" * 1000):
        assert admin.handle(t, TOKEN, raw)["ok"] is False
    assert t.calls == []


def test_with_the_token_operations_go_through() -> None:
    t = Target()
    ok = admin.handle(
        t,
        TOKEN,
        json.dumps({"op": "propose", "change": "refresh", "token": "s3cret-token"}).encode(),
    )
    assert ok["ok"] is True and len(ok["proposal_id"]) == 64
    bad = admin.handle(
        t,
        TOKEN,
        json.dumps({"op": "propose", "change": "nonsense", "token": "s3cret-token"}).encode(),
    )
    assert bad["ok"] is False and "unknown change" in bad["error"]


def test_over_a_real_unix_socket_created_private(tmp_path: Path) -> None:
    sock = tmp_path / "admin.sock"
    t = Target()

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(admin.serve, t, sock, TOKEN)
            mode = stat.S_IMODE(os.stat(sock).st_mode)
            assert mode & 0o077 == 0, oct(mode)
            assert await admin.call(sock, {"op": "status"}) == {
                "ok": False,
                "error": "unauthorised",
            }
            assert (await admin.call(sock, {"op": "status", "token": TOKEN.decode()}))[
                "status"
            ] == {"epoch": 3}
            n.cancel_scope.cancel()

    trio.run(main)
    assert t.calls == []
