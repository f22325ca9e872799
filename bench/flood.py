"""A live flood of a devnet: brand-new apps' policies and large bodies, all at once.

``python -m bench.flood [--apps N ...] [--nodes 5] [--json FILE]`` starts a
devnet (``kms devnet up``: node processes, libp2p, the production admission
settings: a new app is admitted only by an attested key request carrying its
bundle, anonymous pushes of unknown apps go to the bounded, unpersisted
cache), then floods it once per size (1,000 and 10,000 apps by default, on
the same devnet, one after the other) and prints one ``rich`` table and the
same figures as JSON.

One flood (:func:`flood`), concurrently:

* **policies**: ``apps`` valid signed policies of brand-new apps (each its own
  owner key), each posted anonymously to every node (``POST /v1/policies``)
  by ``workers`` threads;
* **large bodies**: ``bodies`` concurrent streams per node and body-taking
  route (``/v1/keys``, ``/v1/policies``, ``/v1/evidence``), each up to
  ``body_mib`` MiB generated on the fly, sent again (after ``pause``
  seconds) until the policies are done;
* **key fetches**: the devnet's demo app's key, fetched by its simulated CVM
  ``fetches`` times, evenly spread over the flood's progress (so the number
  of releases, and what they write, does not depend on the flood's size);
* **a legitimate new app**: half way through, a CVM of an app no node knows
  asks for its key with its signed policy bundle (the documented admission
  path); its quote's RTMR3 carries dstack's boot prefix with its app id and
  compose hash, and its policy admits it by compose hash.

Before and after, it records per node the resident memory (``VmRSS``; the
peak is ``VmHWM``, reset through ``/proc/<pid>/clear_refs`` just before the
flood when the kernel allows it) and the store (``node.db`` plus its
``-wal``, file bytes and pages in use). Generating the owner keys and signed
policies is done beforehand in a process pool and timed on its own.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from kms.app import devnet

ROUTES = ("/v1/keys", "/v1/policies", "/v1/evidence")
MIB = 1024 * 1024
MSGPACK = "application/msgpack"

# --- what a node uses -----------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> bool:
    """Reset the process's ``VmHWM`` to its current resident size (Linux ≥ 4.0)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def store_files(config: str) -> tuple[Path, Path]:
    db = Path(config).parent / "node.db"
    return db, db.with_name(db.name + "-wal")


def store_file_bytes(config: str) -> int:
    """Bytes on disk of the node's SQLite store: the database file plus its WAL."""
    return sum(p.stat().st_size for p in store_files(config) if p.exists())


def store_used_bytes(config: str) -> int:
    """Bytes of the store in use: pages in use (the WAL's included), free pages not."""
    db, _ = store_files(config)
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        size = con.execute("PRAGMA page_size").fetchone()[0]
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        free = con.execute("PRAGMA freelist_count").fetchone()[0]
    return int(size) * (int(pages) - int(free))


def store_rows(config: str) -> dict[str, int]:
    """Rows per table of the node's store."""
    db, _ = store_files(config)
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
        names = [
            str(r[0]) for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return {
            n: int(con.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0]) for n in sorted(names)
        }


@dataclass
class NodeFigures:
    index: int
    pid: int
    rss_before: int
    peak: int
    """``VmHWM`` after the flood (reset to ``VmRSS`` just before it when ``peak_reset``)."""
    peak_reset: bool
    store_file_before: int
    store_file_after: int
    store_used_before: int
    store_used_after: int
    cpu_seconds: float = 0.0
    """CPU time (user + system) the node used during the flood."""
    rows_added: dict[str, int] = field(default_factory=dict)
    """Rows each table of the store gained: ``apps`` is the legitimate app (the flood's
    apps are never written), ``audit`` the releases, ``records`` the protocol's own
    records of the decision windows that passed meanwhile (time, not the flood)."""
    healthy_after: bool = False

    @property
    def memory_growth(self) -> int:
        """Peak resident memory during the flood minus the resident memory before it."""
        return self.peak - self.rss_before

    @property
    def store_file_growth(self) -> int:
        return self.store_file_after - self.store_file_before

    @property
    def store_used_growth(self) -> int:
        return self.store_used_after - self.store_used_before


@dataclass
class FloodFigures:
    apps: int
    nodes: int
    generate_seconds: float
    """Generating the owner keys and signed policies (process pool, before the flood)."""
    flood_seconds: float
    posts: int
    post_statuses: dict[str, int]
    body_streams: int
    body_answers: dict[str, int]
    """Status of each large body's answer; ``closed``: the node closed the connection
    while the client still wrote (also a refusal)."""
    body_max_sent: int
    fetch_latencies: list[float]
    fetch_failures: list[str]
    legit_seconds: float | None
    """Seconds from a new app's first key request (carrying its bundle) to its keys."""
    legit_error: str | None
    per_node: list[NodeFigures] = field(default_factory=list)

    @property
    def posts_per_second(self) -> float:
        return self.posts / self.flood_seconds if self.flood_seconds else 0.0

    @property
    def accepted_per_second(self) -> float:
        """Pushes answered 2xx per second (202: held in the unpersisted cache)."""
        ok = sum(v for k, v in self.post_statuses.items() if k.startswith("2"))
        return ok / self.flood_seconds if self.flood_seconds else 0.0

    @property
    def fetch_max(self) -> float:
        return max(self.fetch_latencies) if self.fetch_latencies else float("inf")

    @property
    def fetch_p50(self) -> float:
        return statistics.median(self.fetch_latencies) if self.fetch_latencies else float("inf")

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["posts_per_second"] = self.posts_per_second
        out["accepted_per_second"] = self.accepted_per_second
        out["fetch_p50"] = self.fetch_p50
        out["fetch_max"] = self.fetch_max
        for n, fig in zip(out["per_node"], self.per_node, strict=True):
            n["memory_growth"] = fig.memory_growth
            n["store_file_growth"] = fig.store_file_growth
            n["store_used_growth"] = fig.store_used_growth
        return out


# --- what the flood sends ------------------------------------------------------------------


def _bundles(args: tuple[int, str]) -> list[bytes]:
    count, mpk_hex = args
    from kms.policy import OwnerKey

    return [
        devnet.demo_policy(OwnerKey.generate(os.urandom), mpk_hex, version=1).encode()
        for _ in range(count)
    ]


def generate_bundles(count: int, mpk_hex: str, processes: int | None = None) -> list[bytes]:
    """``count`` signed first policies of brand-new apps (distinct owner keys)."""
    processes = processes or os.cpu_count() or 1
    if count < 200 or processes == 1:
        return _bundles((count, mpk_hex))
    chunk = 250
    jobs = [(min(chunk, count - k), mpk_hex) for k in range(0, count, chunk)]
    # Spawned, not forked: the caller may run threads (a forked child could deadlock).
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [b for part in pool.map(_bundles, jobs) for b in part]


@dataclass
class NewApp:
    """A legitimate new app and its CVM: the policy admits the CVM by compose hash."""

    app_id: bytes
    bundle: bytes
    rtmr3: bytes
    event_log: bytes


def legitimate_new_app(mpk_hex: str) -> NewApp:
    from kms.policy import AppPolicy, Measurement, OwnerKey, PolicyBundle
    from kms.policy.eventlog import build_event_log, compose_hash_of, dstack_boot_events

    owner = OwnerKey.generate(os.urandom)
    app_id = owner.app_id()
    compose = json.dumps(
        {"manifest_version": 2, "name": "flood-legit", "nonce": os.urandom(8).hex()}
    )
    compose_hash = compose_hash_of(compose.encode())
    log, rtmr3 = build_event_log(
        [
            *dstack_boot_events(
                app_id=app_id, compose_hash=compose_hash, instance_id=os.urandom(20)
            ),
            ("system-ready", b""),
        ]
    )
    m = devnet.DEMO_MEASUREMENT
    now = int(time.time())
    policy = AppPolicy.build(
        app_id=app_id,
        version=1,
        owner_key=owner.public_bytes(),
        measurements=[
            Measurement.compose(
                mr_td=m["mr_td"],
                rtmr0=m["rtmr0"],
                rtmr1=m["rtmr1"],
                rtmr2=m["rtmr2"],
                compose_hash=compose_hash,
            )
        ],
        kms_mpk=bytes.fromhex(mpk_hex),
        not_before=now - 60,
        expires=now + 86400,
        allowed_tcb_statuses=("UpToDate", "SWHardeningNeeded"),
        purposes=("app",),
    )
    bundle = PolicyBundle(policy.sign(owner), ()).encode()
    return NewApp(app_id, bundle, rtmr3, log.encode())


def _zeros(limit: int, counter: list[int]) -> Iterator[bytes]:
    block = bytes(64 * 1024)
    for _ in range(limit // len(block)):
        counter[0] += len(block)
        yield block


# --- one flood ------------------------------------------------------------------------------


def _nodes(d: Path) -> list[dict[str, Any]]:
    return [n for n in devnet.read_state(d)["nodes"] if n.get("pid")]


def flood(
    d: Path,
    apps: int,
    *,
    workers: int = 8,
    bodies: int = 2,
    body_mib: int = 256,
    fetches: int = 20,
    pause: float = 0.5,
    bundles: list[bytes] | None = None,
    generate_seconds: float | None = None,
) -> FloodFigures:
    """Flood the running devnet in ``d`` (see the module docstring)."""
    from kms.client.http import KeyClient
    from mpc.ids import ParticipantIndex
    from mpc.math import G2

    state = devnet.read_state(d)
    nodes = _nodes(d)
    mpk_hex = state["master_public_key"]
    mpk = G2.from_bytes(bytes.fromhex(mpk_hex))
    urls = {ParticipantIndex(int(n["index"])): n["http_url"] for n in nodes}
    demo_app = bytes.fromhex(state["apps"]["demo"])
    tee = devnet.simulated_tee(d)
    tee_lock = threading.Lock()  # the simulated TEE's generator is not thread-safe

    def demo_quote(rd: bytes) -> bytes:
        with tee_lock:
            return tee.quote(rd, **devnet.DEMO_MEASUREMENT)

    if bundles is None:
        t0 = time.perf_counter()
        bundles = generate_bundles(apps, mpk_hex)
        generate_seconds = time.perf_counter() - t0
    bundles = bundles[:apps]
    legit = legitimate_new_app(mpk_hex)

    demo_client = KeyClient(urls, mpk)
    demo_client.fetch(demo_app, [("app", 1)], demo_quote)  # warm: chain and connections

    before: dict[int, dict[str, Any]] = {}
    for n in nodes:
        pid, cfg = int(n["pid"]), n["config"]
        reset = reset_peak(pid)
        before[int(n["index"])] = {
            "pid": pid,
            "rss": _proc_status(pid)["VmRSS"],
            "reset": reset,
            "file": store_file_bytes(cfg),
            "used": store_used_bytes(cfg),
            "cpu": cpu_seconds(pid),
            "rows": store_rows(cfg),
        }

    total = len(bundles) * len(nodes)
    progress = [0]
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    done = threading.Event()
    next_item = iter(range(total))

    def poster() -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                with lock:
                    k = next(next_item, None)
                if k is None:
                    return
                node = nodes[k % len(nodes)]
                try:
                    r = http.post(
                        node["http_url"] + "/v1/policies",
                        content=bundles[k // len(nodes)],
                        headers={"content-type": MSGPACK},
                    )
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                with lock:
                    statuses[key] = statuses.get(key, 0) + 1
                    progress[0] += 1

    body_answers: dict[str, int] = {}
    body_max = [0]
    streams = [0]

    def streamer(url: str) -> None:
        with httpx.Client(timeout=60) as http:
            first = True
            while first or not done.is_set():
                first = False
                sent = [0]
                try:
                    r = http.post(url, content=_zeros(body_mib * MIB, sent))
                    key = str(r.status_code)
                except httpx.TransportError:
                    key = "closed"
                with lock:
                    body_answers[key] = body_answers.get(key, 0) + 1
                    body_max[0] = max(body_max[0], sent[0])
                    streams[0] += 1
                time.sleep(pause)

    latencies: list[float] = []
    failures: list[str] = []

    def fetcher() -> None:
        for j in range(fetches):
            mark = total * j // fetches
            while progress[0] < mark and not done.is_set():
                time.sleep(0.01)
            t0 = time.perf_counter()
            try:
                demo_client.fetch(demo_app, [("app", 1)], demo_quote)
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # a failure is a figure here
                failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    legit_result: dict[str, Any] = {"seconds": None, "error": None}

    def legit_cvm() -> None:
        while progress[0] < total // 2 and not done.is_set():
            time.sleep(0.01)
        t0 = time.perf_counter()

        def quote(rd: bytes) -> bytes:
            m = devnet.DEMO_MEASUREMENT
            with tee_lock:
                return tee.quote(
                    rd,
                    mr_td=m["mr_td"],
                    rtmr0=m["rtmr0"],
                    rtmr1=m["rtmr1"],
                    rtmr2=m["rtmr2"],
                    rtmr3=legit.rtmr3,
                )

        try:
            with KeyClient(urls, mpk) as client:  # a fresh CVM: fetches the chain first
                client.fetch(
                    legit.app_id,
                    [("app", 1)],
                    quote,
                    event_log=legit.event_log,
                    bundle=legit.bundle,
                )
            legit_result["seconds"] = time.perf_counter() - t0
        except Exception as exc:  # a failure is a figure here
            legit_result["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"

    side = [threading.Thread(target=fetcher), threading.Thread(target=legit_cvm)]
    side += [
        threading.Thread(target=streamer, args=(n["http_url"] + route,))
        for n in nodes
        for route in ROUTES
        for _ in range(bodies)
    ]
    posters = [threading.Thread(target=poster) for _ in range(workers)]
    start = time.perf_counter()
    for t in side + posters:
        t.start()
    for t in posters:
        t.join()
    flood_seconds = time.perf_counter() - start
    done.set()
    for t in side:
        t.join(300)
    demo_client.close()

    figures = FloodFigures(
        apps=len(bundles),
        nodes=len(nodes),
        generate_seconds=generate_seconds or 0.0,
        flood_seconds=flood_seconds,
        posts=total,
        post_statuses=dict(sorted(statuses.items())),
        body_streams=streams[0],
        body_answers=dict(sorted(body_answers.items())),
        body_max_sent=body_max[0],
        fetch_latencies=latencies,
        fetch_failures=failures,
        legit_seconds=legit_result["seconds"],
        legit_error=legit_result["error"],
    )
    time.sleep(0.5)  # let the last writes (the legitimate app's gossip) land
    for n in nodes:
        i = int(n["index"])
        b = before[i]
        try:
            healthy = httpx.get(n["http_url"] + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            healthy = False
        figures.per_node.append(
            NodeFigures(
                index=i,
                pid=b["pid"],
                rss_before=b["rss"],
                peak=_proc_status(b["pid"])["VmHWM"],
                peak_reset=b["reset"],
                store_file_before=b["file"],
                store_file_after=store_file_bytes(n["config"]),
                store_used_before=b["used"],
                store_used_after=store_used_bytes(n["config"]),
                cpu_seconds=cpu_seconds(b["pid"]) - b["cpu"],
                rows_added={
                    t: c - b["rows"].get(t, 0)
                    for t, c in store_rows(n["config"]).items()
                    if c != b["rows"].get(t, 0)
                },
                healthy_after=healthy,
            )
        )
    return figures


# --- a devnet for the flood ------------------------------------------------------------------


@contextmanager
def running_devnet(directory: Path, *, nodes: int = 5, threshold: int = 3) -> Iterator[Path]:
    """``kms devnet up`` in ``directory`` until the block ends (SIGTERM, then SIGKILL)."""
    import signal
    import subprocess

    up = devnet.launch(directory, nodes=nodes, threshold=threshold)
    try:
        if devnet.wait_for_apps(directory, up, 120) is None:
            raise RuntimeError("the devnet did not come up")
        yield directory
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(10)


# --- report ---------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MIB:+.1f} MiB" if abs(n) >= MIB else f"{n / 1024:+.0f} KiB"


def _size(n: int) -> str:
    return f"{n / MIB:.2f} MiB"


def table(runs: list[FloodFigures]) -> Table:
    t = Table(
        title="live flood: new-app policies to every node + large bodies on every body-taking route",
        title_justify="left",
    )
    for col in (
        "apps",
        "node",
        "RSS before",
        "peak",
        "growth",
        "store before (db+wal)",
        "after",
        "Δ files",
        "Δ in use",
        "rows added",
        "fetch p50 / max",
        "legit app → keys",
        "posts/s (2xx)",
    ):
        t.add_column(col, justify="right")
    for run in runs:
        for k, n in enumerate(run.per_node):
            first = k == 0
            legit = (
                f"{run.legit_seconds:.2f} s"
                if run.legit_seconds is not None
                else f"[red]{run.legit_error}[/red]"
            )
            t.add_row(
                f"{run.apps:,}" if first else "",
                str(n.index),
                _size(n.rss_before),
                _size(n.peak),
                _mib(n.memory_growth),
                f"{n.store_file_before:,}",
                f"{n.store_file_after:,}",
                _mib(n.store_file_growth),
                _mib(n.store_used_growth),
                " ".join(f"{t}+{c}" for t, c in n.rows_added.items()) or "none",
                f"{run.fetch_p50 * 1000:.0f} / {run.fetch_max * 1000:.0f} ms" if first else "",
                legit if first else "",
                f"{run.accepted_per_second:,.0f}" if first else "",
                end_section=k == len(run.per_node) - 1,
            )
    return t


def growth_ratio(small: FloodFigures, large: FloodFigures) -> dict[str, dict[str, float | None]]:
    """Per node: store growth at the larger size over the smaller one, for the files
    (``node.db`` + WAL) and for the pages in use (``None`` where the smaller grew by 0)."""

    def ratio(x: int, y: int) -> float | None:
        return round(y / x, 3) if x else None

    return {
        str(a.index): {
            "files": ratio(a.store_file_growth, b.store_file_growth),
            "in_use": ratio(a.store_used_growth, b.store_used_growth),
        }
        for a, b in zip(small.per_node, large.per_node, strict=True)
    }


FULL_SIZES = (1_000, 10_000)
QUICK_SIZES = (100, 400)


def runs(
    sizes: Sequence[int],
    *,
    nodes: int = 5,
    threshold: int = 3,
    progress: Callable[[str], None] = lambda what: None,
    **options: Any,
) -> list[FloodFigures]:
    """One devnet, one flood per size in turn (``options`` go to :func:`flood`)."""
    out: list[FloodFigures] = []
    with tempfile.TemporaryDirectory(prefix="qkms-flood-") as tmp:
        d = Path(tmp) / "devnet"
        progress(f"flood: a devnet of {nodes}")
        with running_devnet(d, nodes=nodes, threshold=threshold):
            mpk_hex = devnet.read_state(d)["master_public_key"]
            for apps in sizes:
                progress(f"flood: generating {apps:,} apps")
                t0 = time.perf_counter()
                bundles = generate_bundles(apps, mpk_hex)
                gen = time.perf_counter() - t0
                progress(f"flood: {apps:,} apps")
                out.append(flood(d, apps, bundles=bundles, generate_seconds=gen, **options))
    return out


def as_json(results: list[FloodFigures]) -> dict[str, Any]:
    report: dict[str, Any] = {"runs": [r.as_json() for r in results]}
    if len(results) >= 2:
        report["store_growth_ratio"] = growth_ratio(results[0], results[-1])
    return report


def report(console: Console, results: list[FloodFigures]) -> dict[str, Any]:
    """Print the table and a line per flood; returns the figures as JSON."""
    console.print(table(results))
    for r in results:
        console.print(
            f"{r.apps:,} apps: {r.posts:,} pushes in {r.flood_seconds:.1f} s "
            f"({r.post_statuses}); {r.body_streams} large bodies ({r.body_answers}, "
            f"at most {r.body_max_sent / MIB:.1f} MiB sent); {len(r.fetch_latencies)} fetches, "
            f"{len(r.fetch_failures)} failed; node CPU "
            f"{', '.join(f'{n.cpu_seconds:.0f}' for n in r.per_node)} s; keys and policies "
            f"generated in {r.generate_seconds:.1f} s beforehand"
        )
    out = as_json(results)
    if "store_growth_ratio" in out:
        console.print(
            f"store growth at {results[-1].apps:,} over {results[0].apps:,} apps, "
            f"per node: {out['store_growth_ratio']}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    parser.add_argument("--apps", type=int, nargs="+", default=list(FULL_SIZES))
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--bodies", type=int, default=2, help="streams per node and route")
    parser.add_argument("--body-mib", type=int, default=256)
    parser.add_argument("--fetches", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    results = runs(
        args.apps,
        nodes=args.nodes,
        threshold=args.threshold,
        workers=args.workers,
        bodies=args.bodies,
        body_mib=args.body_mib,
        fetches=args.fetches,
    )
    out = report(console, results)
    console.print_json(json.dumps(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
