"""The store's write path alone: durable key releases per second, one at a time vs grouped.

``python -m bench.store_write [--quick] [--json FILE] [--dir DIR]`` opens a
``NodeStore`` in a temporary directory (under ``/tmp`` unless ``--dir`` says
otherwise; the table's title names its file system) and records key releases'
bookkeeping as a node does: per release, a nonce entry (expiry and request hash)
and one audit record, in WAL mode with ``synchronous=FULL`` (an fsync of the WAL
at every commit). Each row runs for a fixed time and reports releases per second,
transactions, mean batch, latency per release (call to durable), CPU per release
(all threads), and the worst stall of the event loop (a 1 ms ticker's lateness):

* ``one at a time``: ``NodeStore.record_release`` per release, on the caller's
  thread (the path before group commit);
* ``group``: ``kms.node.commit.GroupCommit`` as a node runs it, ``C`` releases
  in flight (C = 1, 4, 16, 64): a batch of up to ``INLINE_MAX`` releases is
  committed on the event loop's thread, a larger one in a worker thread;
* ``group, thread``: the same with every commit in a worker thread;
* ``group, trio thread``: the same with every commit on the event loop's thread;
* ``one at a time`` and ``group`` at 16 again with ``synchronous=NORMAL``, for
  comparison only (the WAL
  is not fsynced at commit: a power loss may lose the last commits, so a nonce or
  an audit record of an answered release; the store never runs with it).

Ratios are against ``one at a time`` (FULL) of the same run. ``--quick``: shorter
rows (< 1 min).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import trio
from rich.console import Console
from rich.table import Table

from kms.node.commit import GroupCommit
from kms.node.release import nonce_entry
from kms.store import NodeStore, TEESealer

CONCURRENCY = (1, 4, 16, 64)
FULL_SECONDS = 3.0
QUICK_SECONDS = 0.8


class _NormalStore(NodeStore):
    """The store with ``synchronous=NORMAL``: for comparison in this benchmark only."""

    _SYNCHRONOUS = "NORMAL"


@dataclass(frozen=True)
class Row:
    mode: str
    synchronous: str
    concurrency: int
    releases: int
    seconds: float
    commits: int
    latency_p50: float
    latency_p99: float
    cpu_per_release: float
    loop_stall_max: float

    @property
    def per_second(self) -> float:
        return self.releases / self.seconds

    @property
    def batch(self) -> float:
        return self.releases / max(self.commits, 1)


def _release(n: int) -> tuple[str, bytes, list[dict[str, str | int]]]:
    """A release's bookkeeping as ``kms.node.keyrelease`` writes it (sizes as in a node)."""
    nonce = n.to_bytes(8, "big") + os.urandom(24)
    audit = {
        "event": "key-release",
        "app": os.urandom(20).hex(),
        "purpose": "app",
        "version": 1,
        "measurement": os.urandom(32).hex(),
        "request": os.urandom(32).hex(),
        "time": 1_800_000_000 + n,
        "epoch": 3,
        "simulated": 1,
    }
    return "nonce/" + nonce.hex(), nonce_entry(1_800_000_600 + n, os.urandom(32)), [audit]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _open(directory: Path, synchronous: str) -> NodeStore:
    cls = _NormalStore if synchronous == "NORMAL" else NodeStore
    path = Path(tempfile.mkdtemp(prefix="store-write-", dir=directory)) / "node.db"
    return cls(path, TEESealer(lambda: bytes(32)))


def one_at_a_time(directory: Path, synchronous: str, seconds: float) -> Row:
    store = _open(directory, synchronous)
    latencies: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        name, value, records = _release(n)
        t = time.perf_counter()
        store.record_release(name, value, records)
        latencies.append(time.perf_counter() - t)
        n += 1
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    store.audit_verify()
    _close(store)
    # The caller's thread is the event loop's: it stalls for every commit.
    return Row(
        "one at a time",
        synchronous,
        1,
        n,
        elapsed,
        n,
        _percentile(latencies, 0.5),
        _percentile(latencies, 0.99),
        cpu / max(n, 1),
        max(latencies, default=0.0),
    )


MODES: dict[bool | None, str] = {
    None: "group",
    True: "group, thread",
    False: "group, trio thread",
}


def grouped(
    directory: Path,
    synchronous: str,
    seconds: float,
    concurrency: int,
    *,
    threaded: bool | None,
) -> Row:
    store = _open(directory, synchronous)
    commits = GroupCommit(store, threaded=threaded)
    latencies: list[float] = []
    stall = [0.0]
    counter = [0]

    async def worker(deadline: float) -> None:
        while time.perf_counter() < deadline:
            counter[0] += 1
            name, value, records = _release(counter[0])
            t = time.perf_counter()
            await commits.record(name, value, records)
            latencies.append(time.perf_counter() - t)

    async def ticker(done: trio.Event) -> None:
        while not done.is_set():
            t = time.perf_counter()
            await trio.sleep(0.001)
            stall[0] = max(stall[0], time.perf_counter() - t - 0.001)

    async def main() -> float:
        done = trio.Event()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker, done)
            async with trio.open_nursery() as workers:
                for _ in range(concurrency):
                    workers.start_soon(worker, start + seconds)
            done.set()
        return time.perf_counter() - start

    cpu0 = time.process_time()
    elapsed = trio.run(main)
    cpu = time.process_time() - cpu0
    store.audit_verify()
    _close(store)
    n = commits.committed
    return Row(
        MODES[threaded],
        synchronous,
        concurrency,
        n,
        elapsed,
        commits.commits,
        _percentile(latencies, 0.5),
        _percentile(latencies, 0.99),
        cpu / max(n, 1),
        stall[0],
    )


def _close(store: NodeStore) -> None:
    store.close()
    shutil.rmtree(Path(store.path).parent, ignore_errors=True)


def file_system(directory: Path) -> str:
    """The file system type and device of ``directory`` (``df``), for the record."""
    try:
        out = subprocess.run(
            ["df", "--output=fstype,source,target", str(directory)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"
    fstype, source, target = out.split()
    return f"{fstype} ({source} on {target})"


def default_directory() -> Path:
    """Where the stores go by default: the temporary directory (``/tmp`` here)."""
    return Path(tempfile.gettempdir())


def rows(
    quick: bool,
    directory: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    directory = directory or default_directory()
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    out: list[Row] = []

    def step(what: str) -> None:
        if progress is not None:
            progress(f"store write: {what}")

    for synchronous in ("FULL", "NORMAL"):
        step(f"one at a time, {synchronous}")
        out.append(one_at_a_time(directory, synchronous, seconds))
        for threaded in MODES if synchronous == "FULL" else (None,):
            for c in CONCURRENCY if synchronous == "FULL" else (16,):
                step(f"group, threaded={threaded}, C={c}, {synchronous}")
                out.append(grouped(directory, synchronous, seconds, c, threaded=threaded))
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def table(rows: list[Row], fs: str) -> Table:
    base = next(r for r in rows if r.mode == "one at a time" and r.synchronous == "FULL")
    tbl = Table(
        title=f"the store's write path: durable releases per second (WAL; {fs})",
        title_justify="left",
    )
    for col in (
        "mode",
        "sync",
        "in flight",
        "releases/s",
        "vs one at a time",
        "commits",
        "mean batch",
        "latency p50",
        "latency p99",
        "CPU/release",
        "loop stall max",
    ):
        tbl.add_column(col, justify="left" if col in ("mode", "sync") else "right")
    for r in rows:
        tbl.add_row(
            r.mode,
            r.synchronous + (" (comparison only)" if r.synchronous != "FULL" else ""),
            str(r.concurrency),
            f"{r.per_second:,.0f}",
            f"{r.per_second / base.per_second:.1f}x",
            f"{r.commits:,}",
            f"{r.batch:.1f}",
            _ms(r.latency_p50),
            _ms(r.latency_p99),
            f"{r.cpu_per_release * 1e6:,.0f} µs",
            _ms(r.loop_stall_max),
        )
    return tbl


def as_json(rows: list[Row], fs: str) -> dict[str, object]:
    return {
        "file_system": fs,
        "rows": [{**asdict(r), "per_second": r.per_second, "batch": r.batch} for r in rows],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_write", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter rows (< 1 min)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--dir", type=Path, help="where the stores go (default: the temp dir)")
    args = parser.parse_args(argv)
    directory = args.dir or default_directory()
    fs = file_system(directory)
    console = Console(width=None if sys.stdout.isatty() else 180)
    with console.status("benchmarking") as status:
        out = rows(args.quick, directory, status.update)
    console.print(table(out, fs))
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(out, fs), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
