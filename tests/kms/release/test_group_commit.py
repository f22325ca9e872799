"""Group commit of releases' bookkeeping (``kms.node.commit``): batches commit in order with
an intact audit chain, nothing is answered before its batch is durable, a failed batch
refuses every release in it and keeps nothing, and a nonce is served fresh at most once."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import pytest
import trio
import trio.testing
from served_node import NOW, genuine_node, run

from kms.node.commit import GroupCommit
from kms.node.release import nonce_entry
from kms.protocol import KeyRefusal, KeyRequest, KeyResponse
from kms.store import NodeStore, ReleaseWrite, StorageFull, StoreError, TEESealer


def open_store(path: Path) -> NodeStore:
    return NodeStore(path / "node.db", TEESealer(lambda: bytes(32)))


def record(n: int) -> dict[str, str | int]:
    return {"event": "key-release", "app": f"{n:02x}" * 20, "purpose": "app", "n": n}


def stored_meta(path: Path, name: str) -> bytes | None:
    """A meta entry as another process reads the file (committed data only)."""
    with closing(sqlite3.connect(f"file:{path / 'node.db'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else bytes(row[0])


@pytest.mark.parametrize(
    ("threaded", "max_batch"), [(True, 256), (False, 256), (True, 5), (None, 256)]
)
def test_a_batch_commits_all_its_releases_in_arrival_order_with_a_valid_audit_chain(
    tmp_path: Path, threaded: bool, max_batch: int
) -> None:
    store = open_store(tmp_path)
    commits = GroupCommit(store, threaded=threaded, max_batch=max_batch)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(commits.record, f"nonce/{n:02x}", b"%d" % n, [record(n)])
                await trio.sleep(0)  # arrival order is the start order

    trio.run(main)
    assert commits.committed == 12
    assert 12 / max_batch <= commits.commits < 12  # grouped: fewer transactions than releases
    entries = store.audit_entries()
    assert [e.entry for e in entries] == [
        store.release_write("nonce/00", b"", [record(n)]).entries[0] for n in range(12)
    ]
    store.audit_verify()
    assert all(store.get_meta(f"nonce/{n:02x}") == b"%d" % n for n in range(12))
    store.close()


def test_the_store_commits_a_batch_as_one_transaction_in_order(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.record_release("nonce/aa", b"a", [record(0)])
    writes = [
        store.release_write("nonce/bb", b"b", [record(1), record(2)]),
        store.release_write("nonce/cc", b"c", [record(3)], also=[("cert/x", b"k")]),
    ]
    head = store.record_releases(writes)
    assert store.audit_head() == (4, head)
    assert [e.position for e in store.audit_entries()] == [0, 1, 2, 3]
    store.audit_verify()
    assert store.get_meta("cert/x") == b"k" and store.get_meta("nonce/cc") == b"c"
    with pytest.raises(ValueError):  # a bad record fails its own write, before any batch
        store.release_write("nonce/dd", b"d", [{"share": "00"}])
    with pytest.raises(TypeError):
        store.record_releases([("nonce/dd", b"d")])  # type: ignore[list-item]
    store.close()


def test_a_release_is_not_answered_before_its_batch_is_committed(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    commits = GroupCommit(store, threaded=True)
    gate = threading.Event()
    real = store.record_releases

    def held(writes: Sequence[ReleaseWrite]) -> bytes:
        assert gate.wait(10)
        return real(writes)

    store.record_releases = held  # type: ignore[method-assign]
    answered: list[bool] = []

    async def release() -> None:
        await commits.record("nonce/01", b"v", [record(1)])
        # Answered only now: the entries are in the file, as any reader sees it.
        answered.append(stored_meta(tmp_path, "nonce/01") == b"v")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(release)
            for _ in range(20):
                await trio.sleep(0.005)  # the event loop runs while the commit waits
            assert answered == []
            assert commits.get_meta("nonce/01") == b"v"  # pending, seen by the replay check
            assert stored_meta(tmp_path, "nonce/01") is None
            nursery.cancel_scope.cancel()  # a request cancelled now is still committed
            gate.set()

    trio.run(main)
    assert answered == [True]
    assert store.get_meta("nonce/01") == b"v"
    store.close()


def fill_writer(store: NodeStore) -> None:
    """A full disk for the store's connections: neither may grow the database, and ballast
    fills its pages, so a write that needs room fails with SQLite's real ``SQLITE_FULL``."""
    with store._writer_lock:
        writer = store._release_writer()
    pages = int(writer.execute("PRAGMA page_count").fetchone()[0])
    for db in (writer, store._conn()):
        db.execute(f"PRAGMA max_page_count = {pages}")
    rows = 0
    for size in (1024, 256, 64, 16, 1):
        while True:
            try:
                store.set_meta(hashlib.sha256(b"ballast %d" % rows).hexdigest(), b"\xaa" * size)
            except StorageFull:
                break
            rows += 1


def test_a_failed_commit_refuses_every_release_of_its_batch_and_keeps_no_nonce(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path)
    commits = GroupCommit(store)
    head = store.audit_head()
    fill_writer(store)
    outcomes: dict[int, BaseException | None] = {}

    async def release(n: int) -> None:
        try:
            await commits.record(f"nonce/{n:02x}", b"x" * 2000, [record(n)] * 8)
            outcomes[n] = None
        except StoreError as exc:
            outcomes[n] = exc

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(release, n)

    trio.run(main)
    assert sorted(outcomes) == list(range(6))
    assert all(isinstance(e, StorageFull) for e in outcomes.values()), outcomes
    assert store.audit_head() == head
    assert all(commits.get_meta(f"nonce/{n:02x}") is None for n in range(6))
    store.audit_verify()
    store.close()


def test_a_committed_nonce_survives_reopening_the_store(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    commits = GroupCommit(store)
    entry = nonce_entry(NOW + 600, b"\x01" * 32)
    trio.run(commits.record, "nonce/0102", entry, [record(1)])
    head = store.audit_head()
    store.close()
    with open_store(tmp_path) as again:
        assert again.get_meta("nonce/0102") == entry
        assert again.audit_head() == head
        again.audit_verify()


@pytest.mark.parametrize("threaded", [None, True])
def test_the_same_nonce_twice_at_once_is_served_fresh_at_most_once(
    tmp_path: Path, threaded: bool | None
) -> None:
    genuine, node = genuine_node(tmp_path)
    store = node.service.store
    commits = node.service.keys.commits
    commits.threaded = threaded

    async def together(*raws: bytes) -> list[KeyResponse | KeyRefusal]:
        out: dict[int, KeyResponse | KeyRefusal] = {}
        before = store.audit_head()[0]

        async def post(i: int, raw: bytes) -> None:
            out[i] = await node.post(raw)
            if isinstance(out[i], KeyResponse):  # answered once its records are in the file
                assert store.audit_head()[0] == before + 1

        async with trio.open_nursery() as nursery:
            for i, raw in enumerate(raws):
                nursery.start_soon(post, i, raw)
        return [out[i] for i in range(len(raws))]

    async def main() -> None:
        # Two identical requests at once: both answered (the repeat once the first one's
        # records are durable), one nonce and one audit record written.
        raw = node.request(genuine, seed=3)
        before = store.audit_head()[0]
        answers = await together(raw, raw)
        assert all(isinstance(a, KeyResponse) for a in answers), answers
        assert store.audit_head()[0] == before + 1
        # Another request with the same nonce, then two at once with a fresh one:
        # refused as a replay; of the two, one is released and one refused.
        other = node.request(genuine, seed=3, timestamp=node.clock.t + 1)
        replayed = await node.post(other)
        assert isinstance(replayed, KeyRefusal) and replayed.reason == "replayed-nonce"
        a = node.request(genuine, seed=4)
        b = node.request(genuine, seed=4, timestamp=node.clock.t + 1)
        answers = await together(a, b)
        released = [x for x in answers if isinstance(x, KeyResponse)]
        refused = [x for x in answers if isinstance(x, KeyRefusal)]
        assert len(released) == 1 and [r.reason for r in refused] == ["replayed-nonce"]
        assert store.audit_head()[0] == before + 2
        store.audit_verify()
        assert commits.committed == 2

    run(main)


def test_a_node_answers_storage_full_for_every_release_of_a_failed_batch(
    tmp_path: Path,
) -> None:
    genuine, node = genuine_node(tmp_path)
    store = node.service.store

    async def main() -> None:
        assert isinstance(await node.post(node.request(genuine, seed=1)), KeyResponse)
        head = store.audit_head()
        fill_writer(store)
        raws = [node.request(genuine, seed=10 + i) for i in range(4)]
        out: list[KeyResponse | KeyRefusal] = []

        async def post(raw: bytes) -> None:
            out.append(await node.post(raw))

        async with trio.open_nursery() as nursery:
            for raw in raws:
                nursery.start_soon(post, raw)
        assert [getattr(a, "reason", None) for a in out] == ["storage-full"] * 4
        assert store.audit_head() == head

    run(main)


def test_under_virtual_time_a_commit_does_not_let_the_clock_jump(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    commits = GroupCommit(store)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 100)  # a timer the clock would jump to
            await commits.record("nonce/01", b"v", [record(1)])
            assert trio.current_time() == 0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert store.get_meta("nonce/01") == b"v"
    store.close()


def test_an_identical_repeat_after_an_epoch_switch_is_a_new_audited_release(
    tmp_path: Path,
) -> None:
    # A repeat of the very request is answered again without a record only while the node
    # answers from the same epoch's share: after a switch, the answer carries the new
    # epoch's partials, which no audit record would otherwise name.
    genuine, node = genuine_node(tmp_path)
    store = node.service.store
    keys = node.service.keys

    def audited_epochs() -> list[int]:
        return [json.loads(e.entry)["epoch"] for e in store.audit_entries()]

    async def main() -> None:
        raw = node.request(genuine, seed=5)
        assert isinstance(await node.post(raw), KeyResponse)
        assert isinstance(await node.post(raw), KeyResponse)  # the same epoch: no record
        share, epoch = keys._share_and_epoch()
        assert audited_epochs() == [epoch]
        keys._share_and_epoch = lambda: (share, epoch + 1)  # the node moved on (a reshare)
        assert isinstance(await node.post(raw), KeyResponse)
        assert audited_epochs() == [epoch, epoch + 1]
        assert isinstance(await node.post(raw), KeyResponse)  # a repeat in the new epoch
        assert audited_epochs() == [epoch, epoch + 1]
        # Another request with that nonce is still a replay, in any epoch.
        other = node.request(genuine, seed=5, timestamp=node.clock.t + 1)
        replayed = await node.post(other)
        assert isinstance(replayed, KeyRefusal) and replayed.reason == "replayed-nonce"
        store.audit_verify()

    run(main)


def test_an_entry_written_before_epochs_were_kept_does_not_hide_a_new_epochs_release(
    tmp_path: Path,
) -> None:
    # An entry of the previous format (expiry and request hash) names no epoch: the
    # identical request answered after a switch is recorded, naming the new epoch.
    genuine, node = genuine_node(tmp_path)
    store = node.service.store
    keys = node.service.keys

    async def main() -> None:
        raw = node.request(genuine, seed=6)
        assert isinstance(await node.post(raw), KeyResponse)
        share, epoch = keys._share_and_epoch()
        name = "nonce/" + KeyRequest.decode(raw).body.nonce.hex()
        value = store.get_meta(name)
        assert value is not None and len(value) == 48
        store.set_meta(name, value[:40])  # as the previous version wrote it
        keys._share_and_epoch = lambda: (share, epoch + 1)
        again = await node.post(raw)
        assert isinstance(again, KeyResponse)
        assert [json.loads(e.entry)["epoch"] for e in store.audit_entries()] == [
            epoch,
            epoch + 1,
        ]
        assert len(store.get_meta(name) or b"") == 48  # written again, naming the epoch
        # A node answering from an earlier epoch than the entry names refuses the repeat.
        keys._share_and_epoch = lambda: (share, epoch)
        back = await node.post(raw)
        assert isinstance(back, KeyRefusal) and back.reason == "replayed-nonce"
        store.audit_verify()

    run(main)
