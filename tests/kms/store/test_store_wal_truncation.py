"""Deleted secrets leave the WAL even while key releases are being committed.

The attacker's view: after a finished run's secret records are deleted, and after the
release commits that follow (the group commit's, on the release writer, possibly in a
worker thread), the sealed bytes of the deleted records are nowhere in the ``-wal`` file.
Covers a release batch that wants to commit while the deletion truncates the WAL, a
truncation that SQLite answers "busy" (another writer holds the database), and a truncation
that is due (it found the disk full) while the node only serves releases afterwards.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

from store_helpers import TEE_KEY, StoreFactory

from kms.store import NodeStore, TEESealer

RUN = b"\x01" * 16


def wal(path: Path) -> bytes:
    p = Path(f"{path}-wal")
    return p.read_bytes() if p.exists() else b""


def sealed_secret(store: NodeStore, path: Path) -> bytes:
    """Store a secret record of ``RUN``; return its sealed bytes as they are on disk."""
    store.put_record(RUN, "dkg-secret", b"S" * 200, secret=True)
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as ro:
        row = ro.execute("SELECT data FROM records WHERE key = 'dkg-secret'").fetchone()
    blob = bytes(row[0])
    assert len(blob) > 200 and blob in wal(path)
    return blob


def release(store: NodeStore, i: int) -> bytes:
    return store.record_releases(
        [store.release_write(f"nonce/{i:04d}", b"x", [{"event": "key-release", "n": i}])]
    )


def in_thread(store: NodeStore, i: int) -> threading.Thread:
    t = threading.Thread(target=release, args=(store, i))
    t.start()
    return t


class GateSealer(TEESealer):
    """Seals normally; while armed, a seal made outside the main thread (the audit head of
    a release batch in a worker thread, inside its write transaction) waits for ``go``."""

    def __init__(self) -> None:
        super().__init__(lambda: TEE_KEY)
        self.armed = False
        self.inside = threading.Event()
        self.go = threading.Event()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        if self.armed and threading.current_thread() is not threading.main_thread():
            self.inside.set()
            self.go.wait(10)
        return super().seal(plaintext, aad)


def test_a_release_batch_in_a_worker_thread_waits_for_the_deletions_truncation(
    open_store: StoreFactory, store_path: Path
) -> None:
    sealer = GateSealer()
    store = open_store(sealer)
    blob = sealed_secret(store, store_path)
    workers: list[threading.Thread] = []

    def on_statement(sql: str) -> None:
        # The deletion has committed; a batch starts just before the truncation runs.
        if "wal_checkpoint" in sql and not workers:
            sealer.armed = True
            workers.append(in_thread(store, 0))
            sealer.inside.wait(0.1)  # the batch may not enter its transaction now

    store._conn().set_trace_callback(on_statement)
    try:
        assert store.delete_records(RUN) == 1
    finally:
        store._conn().set_trace_callback(None)
    assert blob not in wal(store_path)
    sealer.go.set()
    workers[0].join(10)
    assert not workers[0].is_alive() and sealer.inside.is_set()
    for i in range(1, 3):
        release(store, i)
    assert store.audit_head()[0] == 3
    assert blob not in wal(store_path)
    assert store._checkpoint_due is False


def test_a_truncation_answered_busy_is_due_and_done_by_the_next_release_commit(
    open_store: StoreFactory, store_path: Path
) -> None:
    """Another writer holds the database while the deletion truncates the WAL: SQLite
    answers with a busy row (no exception). The truncation stays due, and the next
    release batch, committed in a worker thread, does it."""
    store = open_store()
    blob = sealed_secret(store, store_path)
    other = sqlite3.connect(store_path, isolation_level=None)
    held: list[bool] = []

    def on_statement(sql: str) -> None:
        if "wal_checkpoint" in sql and not held:
            other.execute("BEGIN IMMEDIATE")
            held.append(True)

    store._conn().set_trace_callback(on_statement)
    try:
        assert store.delete_records(RUN) == 1
    finally:
        store._conn().set_trace_callback(None)
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    assert held and store._checkpoint_due is True
    assert blob in wal(store_path)  # the deletion stands; the old frames are still there
    assert store.records(RUN) == {}
    worker = in_thread(store, 0)
    worker.join(10)
    assert not worker.is_alive()
    assert blob not in wal(store_path)
    assert store._checkpoint_due is False


def test_a_due_truncation_is_done_by_release_commits_alone(
    open_store: StoreFactory, store_path: Path
) -> None:
    """The deletion's truncation found the disk full (stood in for here: the tmpfs test
    in ``test_store_disk_full`` fills a real disk); afterwards the node only commits
    releases, on the release writer: the first of them truncates the WAL."""
    store = open_store()
    blob = sealed_secret(store, store_path)
    real = store._checkpoint

    def disk_full(conn: sqlite3.Connection | None = None) -> None:
        store._checkpoint_due = True

    store._checkpoint = disk_full  # type: ignore[method-assign]
    try:
        assert store.delete_records(RUN) == 1
    finally:
        store._checkpoint = real  # type: ignore[method-assign]
    assert store._checkpoint_due is True and blob in wal(store_path)
    release(store, 0)
    assert blob not in wal(store_path)
    assert store._checkpoint_due is False
    release(store, 1)
    assert store.audit_head()[0] == 2
