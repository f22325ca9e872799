"""One node's CPU per key release over HTTP, beside the in-process release cost, profiled.

``python -m bench.release_profile [--quick] [--seconds S] [--clients C]
[--profile FILE] [--format raw|speedscope] [--json FILE]``

1. The in-process release rate (``bench.key_release.in_process``: decode, the
   whole pipeline, no HTTP, no store) on one core, before any node runs.
2. A devnet (n = 5, t = 3, ``kms devnet up``: node processes, libp2p, SQLite
   stores). Distinct key requests for its demo app are precomputed, each with
   a fresh nonce, ephemeral key and simulated quote, and sent to node 1 only by
   ``clients`` closed-loop connections (keep-alive HTTP/1.1) for ``seconds``.
   The node's CPU (user + system, ``/proc/<pid>/stat``) over that window,
   divided by the releases it answered ``200``, is its CPU per release over
   HTTP; the node's other work (libp2p, its decision windows) is in it too, so
   an idle window of the same length is measured first and reported.
3. With ``--profile FILE``, a second window of the same load under
   ``py-spy record --pid <node>`` (non-blocking sampling), and a table of where
   the node's samples fall: each sample's stack is read from its innermost frame
   outwards and counted under the first frame whose module names a category
   (HTTP stack, body decoding, quote verification, policy, derivation, HPKE,
   signing, store write, logging, metrics ...).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.table import Table

from kms.app import devnet

TARGET_RATIO = 1.3
TARGET_PER_CPU_SECOND = 300.0
NODE = 1

# --- the load ---------------------------------------------------------------------------------


def make_requests(d: Path, count: int, index: int) -> list[bytes]:
    """``count`` distinct encoded key requests for the devnet's demo app, each with its own
    nonce, ephemeral key (for node ``index``; the node reads only its own) and quote."""
    from kms.protocol import EphemeralKey, KeyRequest, KeyRequestBody, PurposeVersion
    from mpc import hpke

    state = devnet.read_state(d)
    app_id = bytes.fromhex(state["apps"]["demo"])
    tee = devnet.simulated_tee(d)
    now = int(time.time())
    out = []
    for _ in range(count):
        _sk, pk = hpke.generate_key_pair(os.urandom)
        body = KeyRequestBody(
            app_id=app_id,
            purposes=(PurposeVersion("app", 1),),
            ephemeral_keys=(EphemeralKey(index, pk),),
            timestamp=now,
            nonce=os.urandom(16),
            min_policy_version=0,
            epoch=0,
        )
        quote = tee.quote(body.report_data(), **devnet.DEMO_MEASUREMENT)
        out.append(KeyRequest(body, bytes(quote), b"").encode())
    return out


@dataclass
class Window:
    """One window of closed-loop load on one node."""

    seconds: float
    released: int
    statuses: dict[str, int]
    node_cpu: float
    """CPU seconds the node used over the window (user + system)."""
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def cpu_ms_per_release(self) -> float:
        return 1000 * self.node_cpu / self.released if self.released else float("inf")

    @property
    def per_cpu_second(self) -> float:
        return self.released / self.node_cpu if self.node_cpu else 0.0

    @property
    def per_second(self) -> float:
        return self.released / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        lat = sorted(self.latencies)
        return lat[len(lat) // 2] if lat else float("inf")


def drive(url: str, pid: int, requests: Iterable[bytes], seconds: float, clients: int) -> Window:
    """Send ``requests`` (each once) from ``clients`` keep-alive connections, closed loop,
    for ``seconds`` or until they run out; the node's CPU over the window."""
    from bench.flood import cpu_seconds

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    pending = iter(requests)
    lock = threading.Lock()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"content-type": "application/msgpack", "accept": "application/msgpack"}
        try:
            while not stop.is_set():
                with lock:
                    raw = next(pending, None)
                if raw is None:
                    return
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/v1/keys", body=raw, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    key = str(resp.status)
                except (OSError, http.client.HTTPException) as exc:
                    key = type(exc).__name__
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                dt = time.perf_counter() - t0
                with lock:
                    statuses[key] += 1
                    if key == "200":
                        latencies.append(dt)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return Window(elapsed, statuses.get("200", 0), dict(statuses), cpu, latencies)


def idle_cpu(pid: int, seconds: float) -> float:
    """CPU seconds the node uses over ``seconds`` with no load (libp2p, its timers)."""
    from bench.flood import cpu_seconds

    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - c0


# --- the profile ------------------------------------------------------------------------------

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # A sample counts under the first category any frame of its stack names: the steps a
    # release calls into come before the layers that call them (the store before the
    # pipeline, the pipeline before the HTTP app, the app before the server, the server
    # before the event loop), so library frames (msgpack, json, cryptography) count
    # under the step that called them.
    ("store write (SQLite)", ("kms/store/", "sqlite3")),
    ("logging", ("logging/", "kms/node/logs.py")),
    ("metrics", ("prometheus_client", "kms/node/metrics.py")),
    ("HPKE", ("mpc/hpke",)),
    ("signing", ("mpc/sig",)),
    ("derivation (BLS partial)", ("mpc/tkd/", "derive_partial")),
    ("quote verification (kms/attest, dcap-qvl)", ("kms/attest/", "dcap_qvl")),
    ("policy", ("kms/policy/", "kms/node/policy_sync.py", "kms/node/policies.py")),
    ("body decoding / answer encoding", ("kms/protocol.py", "mpc/codec", "msgpack")),
    ("release pipeline (kms/node, own code)", ("kms/node/release.py", "kms/node/keyrelease.py")),
    (
        "HTTP server and app (kms/api, httptools, Starlette)",
        ("kms/api/", "httptools", "starlette/"),
    ),
    ("HTTP/2 server (hypercorn, h2)", ("hypercorn/", "h11/", "h2/", "wsproto/")),
    ("libp2p and the node's protocol", ("libp2p/", "kms/node/", "net/", "multiaddr", "yamux")),
    ("event loop (trio, anyio)", ("trio/", "anyio/", "outcome/", "sniffio/")),
)
OTHER = "other"


def categorise(stack: str) -> str:
    """The category of one collapsed stack (frames ``;``-separated)."""
    best = len(CATEGORIES)
    for frame in stack.split(";"):
        for k, (_, needles) in enumerate(CATEGORIES[:best]):
            if any(n in frame for n in needles):
                best = k
                break
    return CATEGORIES[best][0] if best < len(CATEGORIES) else OTHER


def breakdown(lines: Iterable[str]) -> dict[str, int]:
    """Samples per category, from py-spy's ``raw`` (collapsed) output."""
    out: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            out[categorise(stack)] += int(count)
    return dict(out.most_common())


def _speedscope_stacks(doc: dict[str, Any]) -> Iterable[str]:
    frames = doc["shared"]["frames"]
    for prof in doc["profiles"]:
        for sample in prof["samples"]:  # one sample each (py-spy weighs them in seconds)
            names = [f"{frames[i]['name']} ({frames[i].get('file', '')})" for i in sample]
            yield ";".join(names) + " 1"


def record(
    pid: int, out: Path, fmt: str, seconds: float, rate: int = 250
) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` (non-blocking sampling)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            fmt,
            "--output",
            str(out),
            "--rate",
            str(rate),
            "--duration",
            str(max(1, round(seconds))),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def profile_breakdown(out: Path, fmt: str) -> dict[str, int]:
    if fmt == "raw":
        return breakdown(out.read_text().splitlines())
    return breakdown(_speedscope_stacks(json.loads(out.read_text())))


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Figures:
    in_process_per_second: float
    load: Window
    idle_cpu_per_second: float
    clients: int
    profile: dict[str, int] = field(default_factory=dict)
    profiled_load: Window | None = None

    @property
    def in_process_ms(self) -> float:
        return 1000 / self.in_process_per_second

    @property
    def ratio(self) -> float:
        return self.load.cpu_ms_per_release / self.in_process_ms

    def as_json(self) -> dict[str, Any]:
        def window(w: Window | None) -> dict[str, Any] | None:
            if w is None:
                return None
            d = asdict(w)
            d.pop("latencies")
            d |= {
                "cpu_ms_per_release": w.cpu_ms_per_release,
                "releases_per_cpu_second": w.per_cpu_second,
                "releases_per_second": w.per_second,
                "p50_seconds": w.p50,
            }
            return d

        return {
            "in_process_per_second": self.in_process_per_second,
            "in_process_ms": self.in_process_ms,
            "load": window(self.load),
            "idle_cpu_per_second": self.idle_cpu_per_second,
            "ratio": self.ratio,
            "clients": self.clients,
            "profile": self.profile,
            "profiled_load": window(self.profiled_load),
        }


def run(
    *,
    seconds: float,
    clients: int,
    quick: bool,
    profile: Path | None,
    fmt: str,
    progress: Any = print,
) -> Figures:
    from bench.key_release import in_process

    progress("in process: the release pipeline alone")
    per_second = in_process(quick)[0].ours
    expected = int(seconds * 1500) + 200  # more than a node can answer in the window
    with tempfile.TemporaryDirectory(prefix="qkms-release-") as tmp:
        d = Path(tmp) / "devnet"
        progress("a devnet of 5 (t = 3)")
        from bench.flood import running_devnet

        with running_devnet(d):
            node = next(n for n in devnet.read_state(d)["nodes"] if int(n["index"]) == NODE)
            url, pid = node["http_url"], int(node["pid"])
            progress(f"precomputing {expected:,} key requests")
            reqs = make_requests(d, expected, NODE)
            drive(url, pid, reqs[:50], 2.0, clients)  # warm: connections, caches
            idle = idle_cpu(pid, 3.0 if quick else 5.0) / (3.0 if quick else 5.0)
            progress(f"load: {clients} clients for {seconds:.0f} s")
            load = drive(url, pid, reqs[50:], seconds, clients)
            figures = Figures(per_second, load, idle, clients)
            if profile is not None:
                progress(f"profiled load: py-spy for {seconds:.0f} s")
                more = make_requests(d, expected, NODE)
                spy = record(pid, profile, fmt, seconds)
                time.sleep(0.5)
                figures.profiled_load = drive(url, pid, more, seconds, clients)
                _, err = spy.communicate(timeout=120)
                if spy.returncode != 0 or not profile.exists():
                    progress(f"py-spy failed: {err.decode(errors='replace')[-400:]}")
                else:
                    figures.profile = profile_breakdown(profile, fmt)
    return figures


def tables(f: Figures) -> list[Table]:
    t = Table(title="one node's key releases over HTTP beside the in-process pipeline (this run)")
    for col in ("measure", "value", "target", "verdict"):
        t.add_column(col)
    w = f.load
    t.add_row(
        "in process: releases per second (one core)", f"{f.in_process_per_second:,.0f}", "", ""
    )
    t.add_row("in process: ms per release", f"{f.in_process_ms:.2f}", "", "")
    t.add_row(
        f"over HTTP: releases ({f.clients} clients, {w.seconds:.1f} s)",
        f"{w.released:,} ({w.per_second:,.0f}/s; p50 {w.p50 * 1000:.1f} ms)",
        "",
        str(w.statuses),
    )
    t.add_row("over HTTP: node CPU ms per release", f"{w.cpu_ms_per_release:.2f}", "", "")
    t.add_row(
        "  of which the node's idle background",
        f"{1000 * f.idle_cpu_per_second * w.seconds / max(1, w.released):.2f}",
        "",
        f"{f.idle_cpu_per_second * 100:.1f}% of a core idle",
    )
    t.add_row(
        "ratio: HTTP CPU per release / in-process cost",
        f"{f.ratio:.2f}",
        f"≤ {TARGET_RATIO}",
        "met" if f.ratio <= TARGET_RATIO else "missed",
    )
    t.add_row(
        "releases per node CPU-second over HTTP",
        f"{w.per_cpu_second:,.0f}",
        f"≥ {TARGET_PER_CPU_SECOND:.0f}",
        "met" if w.per_cpu_second >= TARGET_PER_CPU_SECOND else "missed",
    )
    out = [t]
    if f.profile:
        p = Table(title="where the node's samples fall (py-spy, innermost categorised frame)")
        for col in ("category", "samples", "share", "ms per release"):
            p.add_column(col, justify="right" if col != "category" else "left")
        total = sum(f.profile.values())
        per = f.profiled_load.cpu_ms_per_release if f.profiled_load else 0.0
        for name, n in f.profile.items():
            p.add_row(name, f"{n:,}", f"{100 * n / total:.1f}%", f"{per * n / total:.3f}")
        if f.profiled_load is not None:
            p.caption = (
                f"profiled window: {f.profiled_load.released:,} releases, "
                f"{f.profiled_load.cpu_ms_per_release:.2f} ms CPU each (sampling included)"
            )
        out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.release_profile", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short windows (under 3 minutes)")
    parser.add_argument("--seconds", type=float, default=None, help="load window (default 15)")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop connections")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy output file")
    parser.add_argument("--format", choices=("raw", "speedscope"), default="raw")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    seconds = args.seconds or (6.0 if args.quick else 15.0)
    console = Console(width=None if sys.stdout.isatty() else 160)
    figures = run(
        seconds=seconds,
        clients=args.clients,
        quick=args.quick,
        profile=args.profile,
        fmt=args.format,
        progress=lambda s: console.print(f"[dim]{s}[/dim]"),
    )
    for t in tables(figures):
        console.print(t)
    if args.json is not None:
        args.json.write_text(json.dumps(figures.as_json(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
