"""No request on the admin socket stops a node, whatever it holds.

Attacks that did: an unauthenticated request whose token is a lone UTF-16 surrogate
(``"\\ud800"`` in JSON: encoding it raised before the comparison) and an authenticated
one with a number too large for an integer (``"start": 1e400``); either raised out of the
connection handler into the nursery the node service and the HTTP server share, and the
node stopped. A client that hangs up before the reply is the third case.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from kms.api import admin
from kms.app import devnet
from kms.app.config import load
from kms.app.setup import open_store
from kms.node.service import NodeService
from mpc.sig import SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519

TOKEN = "secret-token"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"op": "status", "token": "\\ud800"}\n',
        b'{"op": "audit", "start": 1e400, "token": "secret-token"}\n',
        b'{"op": "audit", "limit": -1e400, "token": "secret-token"}\n',
        b'{"op": "status", "token": "secret-token"}\n',  # and hangs up at once
    ],
)
def test_one_request_never_stops_the_node(tmp_path: Path, payload: bytes) -> None:
    devnet.create(
        tmp_path / "net", 2, 2, delta=0.5, start_in=3600, window_period=60, refresh_interval=0
    )
    short = Path(tempfile.mkdtemp(prefix="qkms-", dir="/tmp"))
    config = tmp_path / "net" / "node-1" / "node.toml"
    config.write_text(
        config.read_text().replace(
            'admin_socket = "admin.sock"', f'admin_socket = "{short / "a.sock"}"'
        )
    )
    cfg = load(config)
    cfg.admin_token_file.write_text(TOKEN + "\n")
    seen: dict[str, Any] = {}

    async def node() -> None:
        store = open_store(cfg)
        try:
            ident = store.load_identity()
            assert ident is not None
            key = SigningKey.from_seed(ident[0]).verify_key().to_bytes()
            service = NodeService(
                cfg.protocol, store, MemoryTransport(MemoryNetwork(), peer_id_from_ed25519(key)), {}
            )
            async with trio.open_nursery() as nursery:  # shared, as in ``kms node run``
                await nursery.start(
                    admin.serve, service, cfg.admin_socket, admin.AdminToken(cfg.admin_token_file)
                )
                hang_up = payload.endswith(b'"secret-token"}\n') and b"status" in payload
                s = await trio.open_unix_socket(str(cfg.admin_socket))
                async with s:
                    await s.send_all(payload)
                    if not hang_up:
                        seen["reply"] = await s.receive_some(4096)
                await trio.sleep(0.1)
                seen["after"] = await admin.call(cfg.admin_socket, {"op": "status", "token": TOKEN})
                nursery.cancel_scope.cancel()
        finally:
            store.close()

    async def bounded() -> None:
        with trio.fail_after(30):
            await node()

    try:
        trio.run(bounded)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert seen["after"]["ok"] is True
    if "reply" in seen:
        assert b'"ok": false' in seen["reply"]
