"""A full disk under the node store: a typed ``StorageFull``, nothing half-written, and the
store works again once space returns.

Two ways to fill the disk: SQLite's ``max_page_count`` on the store's own connection (the
database may not grow, so SQLite answers ``SQLITE_FULL`` exactly as it does for ``ENOSPC``;
runs anywhere), and a real size-limited tmpfs filled with a ballast file (needs root: it is
skipped with the reason when not root, and fails instead when ``QKMS_REQUIRE_LAB=1``).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from store_helpers import tee_sealer

from kms.store import NodeStore, StorageFull, StoreError


@dataclass(frozen=True)
class Rec:
    key: str
    data: bytes
    secret: bool = False


def records(i: int, size: int = 16 * 1024) -> list[Rec]:
    """One run's records: a secret one (sealed) and a public one, ``size`` bytes each."""
    return [
        Rec("dealt", bytes([i % 251]) * size, secret=True),
        Rec("signed", bytes([(i + 1) % 251]) * size),
    ]


def run_id(i: int) -> bytes:
    return b"run-%04d" % i


def integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of the file, through a connection of its own."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def assert_runs(store: NodeStore, written: list[int]) -> None:
    """Exactly the runs whose writes returned are stored, each whole."""
    assert store.runs() == [run_id(i) for i in written]
    for i in written:
        assert store.records(run_id(i)) == {r.key: r.data for r in records(i)}


# --- SQLITE_FULL without root: the database may not grow ------------------------------------


def limit_pages(store: NodeStore, pages: int | None) -> None:
    """Let the store's database grow to ``pages`` pages at most (``None``: lift the limit).

    Fault injection on the store's own connection: the limit binds that connection only."""
    db = store._conn()
    db.execute(f"PRAGMA max_page_count = {pages if pages is not None else 2**31 - 2}")


def test_a_write_the_disk_cannot_hold_raises_storage_full_and_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "node.db"
    store = NodeStore(path, tee_sealer())
    try:
        store.put_records(run_id(0), records(0))
        store.set_meta("kept", b"before")
        pages = int(store._conn().execute("PRAGMA page_count").fetchone()[0])
        limit_pages(store, pages)
        with pytest.raises(StorageFull) as got:
            store.put_records(run_id(1), records(1))
        assert isinstance(got.value, StoreError)  # callers catching StoreError still do
        assert "full" in str(got.value)
        with pytest.raises(StorageFull):
            store.set_meta("big", b"x" * 100_000)
        # Rolled back: nothing of the refused calls, everything from before.
        assert_runs(store, [0])
        assert store.get_meta("big") is None and store.get_meta("kept") == b"before"
        assert integrity(path) == "ok"
        # Space returns: the very same call succeeds.
        limit_pages(store, None)
        store.put_records(run_id(1), records(1))
        assert_runs(store, [0, 1])
    finally:
        store.close()
    with NodeStore(path, tee_sealer(), create=False) as again:
        assert_runs(again, [0, 1])
    assert integrity(path) == "ok"


# --- a real tmpfs filled with a ballast file (root) -------------------------------------------


def _need_root() -> None:
    if os.geteuid() == 0:
        return
    reason = "needs root to mount a size-limited tmpfs"
    if os.environ.get("QKMS_REQUIRE_LAB") == "1":
        pytest.fail(f"QKMS_REQUIRE_LAB=1 but {reason}")
    print(f"skipped: {reason}")
    pytest.skip(reason)


@contextmanager
def small_tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on a fresh directory, unmounted and removed at the end."""
    where = Path(tempfile.mkdtemp(prefix="qkms-full-"))
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
        try:
            yield where
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
    finally:
        os.rmdir(where)


def fill(path: Path) -> int:
    """Write a ballast file until the file system says ENOSPC; returns its size."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n = f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]
                continue
            written += n or 0


def test_a_store_on_a_full_tmpfs_refuses_writes_stays_intact_and_recovers() -> None:
    _need_root()
    with small_tmpfs("4m") as mnt:
        path = mnt / "node.db"
        store = NodeStore(path, tee_sealer())
        written: list[int] = []
        try:
            for i in range(4):
                store.put_records(run_id(i), records(i))
                written.append(i)
            ballast = mnt / "ballast"
            assert fill(ballast) > 0
            # Write until the disk refuses (a WAL of earlier writes may hold a few more).
            refused = None
            for i in range(4, 200):
                try:
                    store.put_records(run_id(i), records(i))
                except StorageFull as exc:
                    refused = i
                    assert "full" in str(exc)
                    break
                written.append(i)
            assert refused is not None, "the full tmpfs never refused a write"
            # Every call either wrote all of its run or nothing; the file is intact.
            assert_runs(store, written)
            assert integrity(path) == "ok"
            with pytest.raises(StorageFull):
                store.put_records(run_id(refused), records(refused))
            assert_runs(store, written)
            # Space returns: the refused write goes through, with no restart.
            ballast.unlink()
            store.put_records(run_id(refused), records(refused))
            written.append(refused)
            assert_runs(store, written)
        finally:
            store.close()
        assert integrity(path) == "ok"
        with NodeStore(path, tee_sealer(), create=False) as again:
            assert_runs(again, written)


def wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_a_deletion_whose_checkpoint_finds_the_disk_full_stands_and_the_wal_is_truncated_later() -> (
    None
):
    """Deleting a finished run's records (secret ones among them) commits even when the
    checkpoint after it cannot copy the WAL into a full disk: the call does not fail, and
    the first write once space returns truncates the WAL."""
    _need_root()
    with small_tmpfs("4m") as mnt:
        path = mnt / "node.db"
        with NodeStore(path, tee_sealer()) as store:
            for i in range(4):
                store.put_records(run_id(i), records(i))
            ballast = mnt / "ballast"
            size = fill(ballast)
            # Room for the deletion's few WAL frames, not for the checkpoint's copy.
            os.truncate(ballast, size - 96 * 1024)
            assert store.delete_records(run_id(0)) == 2
            assert_runs(store, [1, 2, 3])
            assert wal_bytes(path) > 0
            ballast.unlink()
            store.set_meta("after", b"1")
            assert wal_bytes(path) == 0
            assert_runs(store, [1, 2, 3])
        assert integrity(path) == "ok"


def test_a_deletion_whose_truncation_found_the_disk_full_leaves_the_wal_at_the_next_release() -> (
    None
):
    """The same full disk at a deletion, then only key releases (the group commit's batches,
    on the release writer, in a worker thread): the first release commit once space returns
    truncates the WAL, and the deleted record's sealed bytes are gone from it."""
    _need_root()
    with small_tmpfs("4m") as mnt:
        path = mnt / "node.db"
        with NodeStore(path, tee_sealer()) as store:
            for i in range(4):
                store.put_records(run_id(i), records(i))
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as ro:
                row = ro.execute(
                    "SELECT data FROM records WHERE run = ? AND secret = 1", (run_id(0),)
                ).fetchone()
            blob = bytes(row[0])
            ballast = mnt / "ballast"
            size = fill(ballast)
            os.truncate(ballast, size - 96 * 1024)
            assert store.delete_records(run_id(0)) == 2
            assert store._checkpoint_due
            ballast.unlink()
            write = store.release_write("nonce/1", b"x", [{"event": "key-release", "n": 1}])
            worker = threading.Thread(target=store.record_releases, args=([write],))
            worker.start()
            worker.join(10)
            assert not worker.is_alive()
            assert store.audit_head()[0] == 1
            assert wal_bytes(path) == 0
            assert blob not in Path(f"{path}-wal").read_bytes()
            assert_runs(store, [1, 2, 3])
        assert integrity(path) == "ok"
