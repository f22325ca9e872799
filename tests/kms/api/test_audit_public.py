"""The public port serves the audit log's signed head only; the log itself goes over the admin channel.

An anonymous client reading the public port learns how many releases a node
made and the head hash the node signed, never which apps, measurements or
requests they were for. The head costs the node one indexed read per request:
the chain is not walked and the head is not signed again until the log grows.
The whole chain is checked by ``kms audit verify --config`` over the admin
channel (token-guarded Unix socket), against the identity the verified epoch chain
gives the node (tests/kms/test_audit_pinning.py).
"""

from __future__ import annotations

import sqlite3
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
import trio
from typer.testing import CliRunner

from kms.api import admin
from kms.api.http import make_app
from kms.api.openapi import openapi_document
from kms.app.config import load
from kms.app.operator import read_audit
from kms.app.setup import init_node, open_store
from kms.cli import app as cli
from kms.node.service import NodeService
from kms.store import NodeStore
from kms.store.audit import chain_problems, head_problems
from mpc.sig import VerifyKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519

APPS = [f"{n:02x}" * 20 for n in range(1, 4)]
RELEASES = 30


def make_node(root: Path) -> Path:
    """A node directory as ``kms node init`` leaves it, in a two-member genesis committee."""
    records = [init_node(root / f"n{i}", index=i) for i in (1, 2)]
    toml = root / "n1" / "node.toml"
    doc = tomllib.loads(toml.read_text())
    doc["committee"]["genesis"] = [
        {k: r[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")} for r in records
    ]
    doc["committee"]["genesis_start"] = 4_000_000_000.0  # never starts: no DKG in these tests
    toml.write_text(tomli_w.dumps(doc))
    return toml


def service_for(config: Path, store: NodeStore) -> NodeService:
    cfg = load(config)
    ident = store.load_identity()
    assert ident is not None
    from mpc.sig import SigningKey

    pid = peer_id_from_ed25519(SigningKey.from_seed(ident[0]).verify_key().to_bytes())
    return NodeService(cfg.protocol, store, MemoryTransport(MemoryNetwork(), pid), {})


def log_releases(store: NodeStore, n: int, start: int = 0) -> None:
    for k in range(start, start + n):
        store.record_release(
            f"nonce/{k:032x}",
            (4_000_000_000).to_bytes(8, "big"),
            [
                {
                    "event": "key-release",
                    "app": APPS[k % len(APPS)],
                    "purpose": "app",
                    "mrtd": f"{k:096x}",
                    "time": 1_800_000_000 + k,
                }
            ],
        )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, NodeService]]:
    config = make_node(tmp_path)
    store = open_store(load(config))
    log_releases(store, RELEASES)
    try:
        yield config, service_for(config, store)
    finally:
        store.close()


async def get_all(service: NodeService, paths: list[str]) -> dict[str, httpx.Response]:
    transport = httpx.ASGITransport(app=make_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        return {p: await client.get(p) for p in paths}


def public_get_paths() -> list[str]:
    """Every GET route of the published document, templates filled, the audit export with queries."""
    doc = openapi_document()
    paths = [p.replace("{app_id}", APPS[0]) for p, ops in doc["paths"].items() if "get" in ops]
    return [*paths, "/v1/audit?start=0&limit=10000", "/v1/audit?app=" + APPS[0]]


def test_an_anonymous_client_cannot_read_any_apps_release_history(
    node: tuple[Path, NodeService],
) -> None:
    _, service = node
    answers = trio.run(get_all, service, public_get_paths())
    export = answers["/v1/audit?start=0&limit=10000"]
    assert export.status_code == 403 and export.json()["reason"] == "admin-only"
    assert service.metrics.rejected["http: audit export is admin-only"] == 3
    for path, r in answers.items():
        for app_id in APPS:
            assert app_id not in r.text, path
        assert '"key-release"' not in r.text and "mrtd" not in r.text, path


def test_the_public_head_is_signed_and_names_the_whole_log(
    node: tuple[Path, NodeService],
) -> None:
    _, service = node
    head = trio.run(get_all, service, ["/v1/audit/head"])["/v1/audit/head"].json()
    count, digest = service.store.audit_head()
    assert head["count"] == count == RELEASES and head["head"] == digest.hex()
    assert set(head) == {"count", "head", "identity", "signature"}
    VerifyKey.from_bytes(bytes.fromhex(head["identity"])).verify(
        b"quorum-kms/v1/kms/audit-head",
        count.to_bytes(8, "big") + digest,
        bytes.fromhex(head["signature"]),
    )


def test_the_head_costs_no_chain_walk_and_one_signature_per_change(
    node: tuple[Path, NodeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, service = node

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the public head must not read or walk the log")

    monkeypatch.setattr(NodeStore, "audit_verify", forbidden)
    monkeypatch.setattr(NodeStore, "audit_entries", forbidden)
    signatures = 0
    real = service.identity

    class CountingKey:
        def sign(self, context: bytes, message: bytes) -> bytes:
            nonlocal signatures
            signatures += 1
            return real.sign(context, message)

        def verify_key(self) -> Any:
            return real.verify_key()

    service.identity = CountingKey()  # type: ignore[assignment]

    async def many() -> list[dict[str, Any]]:
        transport = httpx.ASGITransport(app=make_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            first = [(await client.get("/v1/audit/head")).json() for _ in range(50)]
            log_releases(service.store, 1, start=RELEASES)
            second = [(await client.get("/v1/audit/head")).json() for _ in range(50)]
            return first + second

    heads = trio.run(many)
    assert signatures == 2  # once for the log as it was, once after it grew
    assert {h["count"] for h in heads} == {RELEASES, RELEASES + 1}


@pytest.fixture
def admin_node(tmp_path: Path) -> Iterator[Path]:
    """A node serving its admin channel (in its own thread, which owns the store)."""
    config = make_node(tmp_path)
    cfg = load(config)
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        store = open_store(cfg)
        try:
            log_releases(store, RELEASES)
            service = service_for(config, store)
            token = cfg.admin_token_file.read_text().strip().encode()
            with trio.CancelScope() as scope:
                state["cancel"] = scope.cancel
                state["token"] = trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    await nursery.start(admin.serve, service, cfg.admin_socket, token)
                    ready.set()
        finally:
            store.close()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield config
    finally:
        trio.from_thread.run_sync(state["cancel"], trio_token=state["token"])
        thread.join(30)


def test_audit_verify_reads_and_checks_the_whole_chain_over_the_admin_channel(
    admin_node: Path,
) -> None:
    """What ``kms audit verify`` reads over the real admin socket (``read_audit``) and checks
    (``chain_problems``) once it has the identity the chain pins (tests/kms/test_audit_pinning.py)."""
    doc, entries = read_audit(admin_node)
    assert chain_problems(entries, doc) == [] and doc["count"] == RELEASES == len(entries)
    # Someone with the disk edits a record (dropping the append-only triggers first).
    db = admin_node.parent / "node.db"
    con = sqlite3.connect(db)
    try:
        for (t,) in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'"
        ).fetchall():
            con.execute(f"DROP TRIGGER {t}")
        con.execute("UPDATE audit SET entry = replace(entry, 'key-release', 'key-relaxed')")
        con.commit()
    finally:
        con.close()
    doc, entries = read_audit(admin_node)
    assert chain_problems(entries, doc) != []


def test_audit_verify_needs_a_node_to_ask() -> None:
    r = CliRunner().invoke(cli, ["audit", "verify", "--json"])
    assert r.exit_code == 2


def test_the_admin_export_needs_the_token_and_bounds_its_pages(admin_node: Path) -> None:
    cfg = load(admin_node)
    token = cfg.admin_token_file.read_text().strip()

    def ask(req: dict[str, Any]) -> dict[str, Any]:
        return trio.run(admin.call, cfg.admin_socket, req)

    assert ask({"op": "audit"}) == {"ok": False, "error": "unauthorised"}
    assert ask({"op": "audit", "token": "wrong"}) == {"ok": False, "error": "unauthorised"}
    for bad in ({"limit": 0}, {"limit": 10_001}, {"start": -1}, {"limit": "x"}):
        assert ask({"op": "audit", "token": token, **bad})["ok"] is False
    page = ask({"op": "audit", "token": token, "start": 25, "limit": 10})
    assert page["ok"] is True and len(page["audit"]["entries"]) == RELEASES - 25
    assert "node_check" not in page["audit"]  # the chain walk only when asked for


def _public_head(service: NodeService) -> dict[str, Any]:
    return trio.run(get_all, service, ["/v1/audit/head"])["/v1/audit/head"].json()


def test_audit_verify_checks_the_public_head_against_the_chain(
    admin_node: Path, tmp_path: Path
) -> None:
    store = open_store(load(admin_node))  # the same node's store, read by its public port
    try:
        public = _public_head(service_for(admin_node, store))
    finally:
        store.close()
    doc, entries = read_audit(admin_node)
    assert head_problems(public) == [] and chain_problems(entries, doc, public) == []
    # Another node's head is not a head of this node's chain.
    other = make_node(tmp_path / "other")
    other_store = open_store(load(other))
    try:
        log_releases(other_store, 3)
        mixed = _public_head(service_for(other, other_store))
    finally:
        other_store.close()
    assert "the public head is signed by another identity" in chain_problems(entries, doc, mixed)
