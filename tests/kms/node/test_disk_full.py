"""A node whose disk fills up: it refuses work with ``storage-full``, stays up, keeps its
store intact, and runs again by itself once space returns.

The disk is filled without root: the node's own store connection may not grow its
database (SQLite's ``max_page_count``), and ballast rows fill what room the pages had
left, so every later write that needs room fails with SQLite's real ``SQLITE_FULL`` ("database
or disk is full"), as on a full file system. Lifting the limit is the space coming back.
Everything else goes through the node's public surfaces: its HTTP app, the memory network
between real ``NodeService`` instances, and its store file.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import coincurve
import pytest
import trio
import trio.testing

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kms.api import admin  # noqa: E402
from kms.app.testing import app_bundle, local_committee, participant  # noqa: E402
from kms.node.model import NodeConfig  # noqa: E402
from kms.node.persist import restore, share_to_bytes  # noqa: E402
from kms.node.service import NodeService, TrioClock  # noqa: E402
from kms.policy import OwnerKey  # noqa: E402
from kms.protocol import KeyRefusal, KeyResponse  # noqa: E402
from kms.store import NodeStore, StoreError, TEESealer  # noqa: E402
from mpc.codec import decode  # noqa: E402
from mpc.ids import ParticipantIndex  # noqa: E402
from mpc.math import G2  # noqa: E402
from mpc.membership import Refresh  # noqa: E402
from net.memory import MemoryNetwork, MemoryTransport  # noqa: E402
from net.peerid import peer_id_from_ed25519  # noqa: E402

# --- the fault: a store whose disk is full -------------------------------------------------


def fill_disk(store: NodeStore) -> int:
    """Let the store's database not grow, then fill the room left in its pages with
    ballast rows until SQLite says the disk is full; returns how many rows went in.

    The rows' names are spread over the whole key space and shrink as the room does, so
    every leaf is full: any later insert needs a new page, which the disk does not have."""
    db = store._conn()  # fault injection on the store's own connections
    pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    for conn in (db, release_writer(store)):
        conn.execute(f"PRAGMA max_page_count = {pages}")
    rows = 0
    for size in (1024, 256, 64, 16, 1):
        for _ in range(100_000):
            name = hashlib.sha256(b"ballast %d" % rows).hexdigest()
            try:
                store.set_meta(name, b"\xaa" * size)
            except StoreError as exc:
                assert "full" in str(exc), exc
                break
            rows += 1
        else:
            raise AssertionError("the store never filled up")
    return rows


def release_writer(store: NodeStore) -> sqlite3.Connection:
    """The connection the store commits releases on (``NodeStore.record_releases``)."""
    with store._writer_lock:
        return store._release_writer()


def free_disk(store: NodeStore) -> None:
    for conn in (store._conn(), release_writer(store)):
        conn.execute(f"PRAGMA max_page_count = {2**31 - 2}")


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


ROOT_PUBLIC = bytes(coincurve.PrivateKey((1001).to_bytes(32, "big")).public_key.format())

# --- key release ------------------------------------------------------------------------------


def test_a_node_with_a_full_disk_refuses_key_requests_with_storage_full_and_serves_again(
    tmp_path: Path,
) -> None:
    owner = OwnerKey.from_seed(bytes([47]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            bundle = app_bundle(owner, c.mpk).encode()
            s, answers = await c.fetch_keys(owner.app_id(), bundle=bundle)
            assert s.done and all(isinstance(a, KeyResponse) for a in answers.values())
            svc = c.services[3]
            http = c.clients[3]
            audit_before = (await http.get("/v1/audit/head")).json()

            fill_disk(svc.store)
            # A CVM asks: node 3 cannot store the request's nonce and audit records, so it
            # sends no partial; the other two release and the CVM gets its key.
            _, req = c.key_request(owner.app_id())
            r = await http.post(
                "/v1/keys", content=req.encode(), headers={"content-type": "application/msgpack"}
            )
            assert r.status_code == 503
            refusal = decode(r.content)
            assert isinstance(refusal, KeyRefusal) and refusal.reason == "storage-full"
            assert "disk is full" in refusal.detail
            s, answers = await c.fetch_keys(owner.app_id(), bundle=bundle)
            assert s.done
            assert isinstance(answers[3], KeyRefusal) and answers[3].reason == "storage-full"
            assert all(isinstance(answers[i], KeyResponse) for i in (1, 2))
            # App-key certificates are refused the same way.
            _, creq = c.cert_request(owner.app_id(), ROOT_PUBLIC)
            code, cans = await c.post_cert(3, creq)
            assert code == 503 and isinstance(cans, KeyRefusal)
            assert cans.reason == "storage-full"
            # It says so: status, health, metrics.
            st = (await http.get("/v1/status")).json()
            assert st["storage"]["full"] is True and st["healthy"] is False
            assert st["health"].startswith("storage-full")
            h = await http.get("/health")
            assert h.status_code == 503 and h.json()["health"].startswith("storage-full")
            text = (await http.get("/metrics")).text
            assert "qkms_storage_full 1.0" in text
            assert 'qkms_storage_full_refusals_total{what="key request"}' in text
            # A policy push or an admin change is refused too, typed.
            r = await http.post("/v1/policies", content=bundle)
            assert r.status_code == 503 and r.json()["reason"] == "storage-full"
            r = await http.post("/v1/evidence", content=b"\x93junk")
            assert r.status_code == 503 and r.json()["reason"] == "storage-full"
            # Nothing was half-written: the audit log is as it was, the file is intact.
            assert (await http.get("/v1/audit/head")).json() == audit_before
            assert integrity(c.stores[3]) == "ok"

            # Space returns: within a retry period the node runs and releases again.
            free_disk(svc.store)
            with trio.fail_after(10):
                while (await http.get("/v1/status")).json()["storage"]["full"]:
                    await trio.sleep(0.1)
            s, answers = await c.fetch_keys(owner.app_id(), bundle=bundle)
            assert s.done and isinstance(answers[3], KeyResponse)
            assert "qkms_storage_full 0.0" in (await http.get("/metrics")).text
            assert (await http.get("/health")).status_code == 200
        assert integrity(c.stores[3]) == "ok"

    trio.run(main)


def test_a_commit_failing_otherwise_than_by_a_full_disk_is_a_typed_503_storage_error(
    tmp_path: Path,
) -> None:
    """An I/O error, or any exception, in the release commit refuses that request with a
    ``storage-error`` 503 (counted), not a 500; the node is not held, and serves again."""
    owner = OwnerKey.from_seed(bytes([48]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            bundle = app_bundle(owner, c.mpk).encode()
            s, answers = await c.fetch_keys(owner.app_id(), bundle=bundle)
            assert s.done and all(isinstance(a, KeyResponse) for a in answers.values())
            store, http = c.services[3].store, c.clients[3]
            failures: list[BaseException] = [
                StoreError("disk I/O error"),
                RuntimeError("a bug in the commit"),
            ]

            def failing(writes: object) -> bytes:
                raise failures[0]

            store.record_releases = failing  # type: ignore[method-assign]
            for _ in range(2):
                _, req = c.key_request(owner.app_id())
                r = await http.post(
                    "/v1/keys",
                    content=req.encode(),
                    headers={"content-type": "application/msgpack"},
                )
                assert r.status_code == 503
                refusal = decode(r.content)
                assert isinstance(refusal, KeyRefusal) and refusal.reason == "storage-error"
                failures.pop(0)
            text = (await http.get("/metrics")).text
            assert 'qkms_storage_errors_total{what="key request"} 2.0' in text
            assert "qkms_storage_full 0.0" in text
            del store.record_releases  # the store works again
            s, answers = await c.fetch_keys(owner.app_id(), bundle=bundle)
            assert s.done and isinstance(answers[3], KeyResponse)

    trio.run(main)


# --- a DKG: the held step and its messages ------------------------------------------------------

NOW = 1_900_000_000.0


@asynccontextmanager
async def committee(
    tmp_path: Path, n: int = 3, t: int = 2, window_period: float = 1e9
) -> AsyncIterator[dict[int, Any]]:
    """``n`` real services from fresh stores on one memory network; their genesis DKG starts
    1 s in (trio's clock: run under a ``MockClock``)."""
    keys = {}
    for i in range(1, n + 1):
        id_seed, dkg_seed = bytes([i]) * 32, bytes([100 + i]) * 32
        keys[i] = (id_seed, dkg_seed, participant(i, id_seed, dkg_seed)[2])
    genesis = tuple(keys[i][2] for i in sorted(keys))
    network = MemoryNetwork()
    clock = TrioClock(NOW)
    out: dict[int, Any] = {"stores": {}, "services": {}}
    opened: list[tuple[MemoryTransport, NodeStore]] = []
    async with trio.open_nursery() as nursery:
        for i in sorted(keys):
            path = tmp_path / f"node-{i}.db"
            store = NodeStore(path, TEESealer(lambda: bytes(32)))
            store.save_identity(keys[i][0], keys[i][1])
            cfg = NodeConfig(
                ParticipantIndex(i),
                genesis,
                t,
                genesis_start=NOW + 1.0,
                delta=0.5,
                window_period=window_period,
            )
            pid = peer_id_from_ed25519(keys[i][2].identity)
            transport = MemoryTransport(network, pid)
            await transport.__aenter__()
            opened.append((transport, store))
            svc = NodeService(cfg, store, transport, {}, clock=clock)
            out["stores"][i] = path
            out["services"][i] = svc
            out.setdefault("parts", {})[i] = (cfg, store, transport, clock)
        out["scopes"] = {}
        out["nursery"] = nursery
        out["opened"] = opened
        for i, svc in out["services"].items():
            out["scopes"][i] = await nursery.start(_run, svc)
        try:
            yield out
        finally:
            nursery.cancel_scope.cancel()
    for transport in {id(t): t for t, _ in opened}.values():
        await transport.__aexit__(None, None, None)
    for _, store in opened:
        store.close()


async def _run(svc: NodeService, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run a service in a cancel scope of its own (cancelling it is the node's crash)."""
    with trio.CancelScope() as scope:
        await svc.run(task_status=_Started(task_status, scope))


class _Started:
    def __init__(self, status: Any, value: object) -> None:
        self._status, self._value = status, value

    def started(self, value: object = None) -> None:
        self._status.started(self._value)


def share_ok(svc: NodeService) -> bool:
    st, share = svc.core.state, svc.core.share
    if st is None or share is None:
        return False
    pk = st.certificate.public_shares().get(share.index)
    return pk is not None and share.value.value * G2.generator() == pk


@pytest.mark.parametrize("heal_after", [0.4, 3.0])
def test_a_node_whose_disk_fills_during_the_dkg_sends_nothing_unstored_and_catches_up(
    tmp_path: Path, heal_after: float
) -> None:
    """Node 3's disk is full from before the genesis DKG starts: its first step with
    records is held with its messages (nothing it signed leaves it), its core stands still
    and frames to it are dropped and counted; once space returns it stores the held step,
    sends it, and ends the DKG with a share that matches its public share, stored."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with committee(tmp_path) as c:
            svc: NodeService = c["services"][3]
            fill_disk(svc.store)
            with trio.fail_after(120):
                while not svc.status().get("storage", {}).get("held_step"):
                    await trio.sleep(0.05)
            # (Steps that store nothing, such as relaying a broadcast, went out before.)
            sent_before = sum(svc.metrics.messages_out.values())
            runs_before = {r: svc.store.records(r) for r in svc.store.runs()}
            held = svc.status()
            assert held["storage"]["full"] and held["healthy"] is False
            assert held["running"] is not None  # the DKG's first step
            await trio.sleep(heal_after)
            # Held: the step's messages were not sent, nothing unstored reached a peer, and
            # the core stood still (nothing more was written).
            assert sum(svc.metrics.messages_out.values()) == sent_before
            assert {r: svc.store.records(r) for r in svc.store.runs()} == runs_before
            assert integrity(c["stores"][3]) == "ok"
            seen["dropped"] = svc.metrics.storage_refusals["frame"]
            free_disk(svc.store)
            with trio.fail_after(300):
                while not all(share_ok(s) for s in c["services"].values()):
                    await trio.sleep(0.1)
            assert not svc.status()["storage"]["full"]
            assert sum(svc.metrics.messages_out.values()) > sent_before
            epochs = {s.core.state.epoch for s in c["services"].values()}
            mpks = {s.core.state.mpk.to_bytes() for s in c["services"].values()}
            assert len(epochs) == 1 and len(mpks) == 1
            seen["share"] = share_to_bytes(svc.core.share)
        # Its store opens, is intact, and holds the share it serves.
        assert integrity(c["stores"][3]) == "ok"
        with NodeStore(c["stores"][3], TEESealer(lambda: bytes(32)), create=False) as st:
            restored = restore(st)
            assert restored.share is not None
            assert share_to_bytes(restored.share) == seen["share"]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen["dropped"] > 0


@pytest.mark.parametrize("heal_after", [0.4, 3.0])
def test_a_node_whose_disk_fills_during_a_reshare_refuses_changes_and_ends_it_with_its_share(
    tmp_path: Path, heal_after: float
) -> None:
    """A refresh is proposed and approved; node 3's disk fills while it is decided and reshared:
    the step is held, an operator's change is refused with storage-full, and once space
    returns node 3 ends the reshare with a new share that matches its public share."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with committee(tmp_path, window_period=5.0) as c:
            services: dict[int, NodeService] = c["services"]
            svc = services[3]
            with trio.fail_after(120):
                while not all(share_ok(s) for s in services.values()):
                    await trio.sleep(0.1)
            old = share_to_bytes(svc.core.share)
            pid = services[1].propose(Refresh())
            for i in (2, 3):
                services[i].approve(pid)
            fill_disk(svc.store)
            with trio.fail_after(120):
                while not svc.status().get("storage", {}).get("held_step"):
                    await trio.sleep(0.05)
            sent_before = sum(svc.metrics.messages_out.values())
            # The operator's change over the admin channel is refused, typed.
            sock_dir = Path(tempfile.mkdtemp(prefix="qk-", dir="/tmp"))  # a short path
            try:
                async with trio.open_nursery() as admin_tasks:
                    sock = sock_dir / "a.sock"
                    await admin_tasks.start(admin.serve, svc, sock, b"token")
                    reply = await admin.call(
                        sock, {"op": "propose", "change": "refresh", "token": "token"}
                    )
                    admin_tasks.cancel_scope.cancel()
            finally:
                shutil.rmtree(sock_dir, ignore_errors=True)
            assert reply["ok"] is False and reply["reason"] == "storage-full"
            assert "disk is full" in reply["error"]
            await trio.sleep(heal_after)
            assert sum(svc.metrics.messages_out.values()) == sent_before
            assert integrity(c["stores"][3]) == "ok"
            free_disk(svc.store)
            with trio.fail_after(300):
                while not all(
                    s.core.state is not None and s.core.state.epoch == 1 and share_ok(s)
                    for s in services.values()
                ):
                    await trio.sleep(0.1)
            assert not svc.status()["storage"]["full"]
            assert share_to_bytes(svc.core.share) != old
            seen["share"] = share_to_bytes(svc.core.share)
        assert integrity(c["stores"][3]) == "ok"
        with NodeStore(c["stores"][3], TEESealer(lambda: bytes(32)), create=False) as st:
            restored = restore(st)
            assert restored.share is not None
            assert share_to_bytes(restored.share) == seen["share"]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_node_killed_while_it_holds_a_step_restarts_from_a_consistent_store(
    tmp_path: Path,
) -> None:
    """Node 3's disk fills during the DKG and it is killed while it holds a step (a process
    killed with the disk still full); started again on its store once space returns, it
    restores what it had stored, and ends the DKG with a share that matches its public
    share."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with committee(tmp_path) as c:
            svc: NodeService = c["services"][3]
            fill_disk(svc.store)
            with trio.fail_after(120):
                while not svc.status().get("storage", {}).get("held_step"):
                    await trio.sleep(0.05)
            await trio.sleep(0.5)
            c["scopes"][3].cancel()  # killed, the step unstored and unsent
            await trio.sleep(0.5)
            cfg, store, transport, clock = c["parts"][3]
            store.close()  # the process is gone, and its connection with it
            assert integrity(c["stores"][3]) == "ok"
            # Space returns; the node starts again on its store file.
            store = NodeStore(c["stores"][3], TEESealer(lambda: bytes(32)), create=False)
            c["opened"].append((transport, store))
            again = NodeService(cfg, store, transport, {}, clock=clock)
            c["services"][3] = again
            await c["nursery"].start(_run, again)
            with trio.fail_after(300):
                while not all(share_ok(s) for s in c["services"].values()):
                    await trio.sleep(0.1)
            mpks = {s.core.state.mpk.to_bytes() for s in c["services"].values()}
            assert len(mpks) == 1
            seen["share"] = share_to_bytes(again.core.share)
        assert integrity(c["stores"][3]) == "ok"
        with NodeStore(c["stores"][3], TEESealer(lambda: bytes(32)), create=False) as st:
            restored = restore(st)
            assert restored.share is not None
            assert share_to_bytes(restored.share) == seen["share"]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
