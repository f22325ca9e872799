"""Committee size on the real stack: a genesis DKG over libp2p for n = 16, 32 and 64.

    python -m bench.scale [--quick] [--json FILE] [--sizes 16,32,64] [--delay-ms 10]

Every node is its own process (``python -m kms.chaos.nodeproc``, the real node) on its own
network host: a host of a *direct* fault lab (``kms.chaos.netlab.Lab.create(direct=True)``,
one Linux network namespace per host, one veth each on a bridge, no link proxy), so every
libp2p link (Noise + Yamux over TCP) is a real TCP connection between two network stacks.
The node's data directory is a tmpfs, its PCCS a host of the lab; this bench runs in the
lab's parent namespace and talks to the nodes over HTTP like any client.

Latency: every node holds each frame it receives for ``--delay-ms`` (10 ms: 20 ms round
trip) before its service sees it (``net.delay.DelayedTransport``, enabled by the lab's
node program only). The lab's link proxy could delay instead, but at n = 64 one proxy
process would carry 4,032 connections on a machine whose two CPUs the nodes need; the
shim costs a deque operation per frame inside each node (``shim_*`` fields: its measured
cost per frame times the frames the nodes received).

Per size (t = ⌊2n/3⌋ + 1, Δ from ``delta_for`` or ``--delta``; the genesis start is absolute, chosen far
enough ahead for every process to start and connect):

* ``seconds_to_certified``: genesis start → the last member's ``epoch certified`` log
  line; ``schedule_bound_seconds``: ``Schedule.default(...).justify_end`` − start, the
  earliest a run can certify (each broadcast phase lasts its window plus (f+1)·Δ, no phase
  ends early);
* ``members_with_share``: members whose ``/v1/status`` shows epoch 0 and a share;
* per node (means; maxima in ``*_max``): CPU seconds from the genesis start to
  certification (``/proc``), RSS at certification, bytes sent meanwhile
  (``qkms_transport_bytes_sent_total``);
* at the largest size: a key fetch by a CVM (the real ``KeyClient``, a simulated-TEE quote
  of the devnet's demo measurement, the devnet's demo policy), then a node joins through
  the membership flow (reshare to n + 1), timed from the proposal to the new epoch, and
  the members holding a share of it counted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.timing import format_seconds
from mpc.dkg.schedule import Schedule

FULL_SIZES = (16, 32, 64)
QUICK_SIZES = (16,)
DELAY_MS = 10.0
"""One-way delay each node adds to every frame it receives: a 20 ms round trip."""
DELTAS: dict[int, float] = {}
"""Δ per size where it differs from the node's default (``Schedule.default``: 2 s + 20 ms
per member). Δ bounds honest delivery *including the time a frame waits for a CPU*: on
two CPUs shared by n node processes a node's event loop can wait ~n/2 scheduler slices,
and a tick gap over Δ/4 counts as a stall (the member then withholds its signature).
Measured on two CPUs: n = 16 certifies at its default 2.32 s since the deals are checked
as they arrive (before, it needed 4 s); n = 32 fails at its default 2.64 s
(docs/performance.md). ``--delta`` overrides."""
WINDOW_PERIOD = 30.0
"""Decision windows every 30 s at least: the join is decided at the first one after genesis."""


def window_period_for(t: int, delta: float) -> float:
    """At least :data:`WINDOW_PERIOD`, and longer than a decision window that decides nothing
    lasts (``window_length + t·Δ``, the node's length ``max(2, 4Δ)``) by two Δ: a node refuses
    a shorter period (overlapping windows would make every member abstain in every window;
    at n = 32, Δ = 5 s a window lasts 130 s)."""
    length = max(2.0, 4 * delta)
    return max(WINDOW_PERIOD, math.ceil(length + (t + 2) * delta))


STATUS_TIMEOUT = 3.0
_BYTES_SENT = re.compile(r"^qkms_transport_bytes_sent_total (\S+)$", re.M)
_FRAMES_SENT = re.compile(r"^qkms_transport_frames_sent_total (\S+)$", re.M)
_WRITES = re.compile(r"^qkms_transport_writes_total (\S+)$", re.M)
_FRAMES_RECEIVED = re.compile(r"^qkms_peer_messages_received_total\{[^}]*\} (\S+)$", re.M)


def threshold_for(n: int) -> int:
    return 2 * n // 3 + 1


def delta_for(n: int) -> float:
    """``DELTAS[n]``, else the Δ a node uses when none is configured."""
    return DELTAS.get(n, Schedule.default(0.0, n, threshold_for(n)).delta)


def start_in_for(n: int) -> float:
    """Seconds from the last node's config to the genesis start: every process must have
    started and dialled its peers. Measured: ~4.4 CPU-s per node process to start (imports,
    store unsealing), so ~2 s of wall time per node on 2 CPUs, and the n·(n-1) Noise
    handshakes on top (at n = 32, 20 + 2.5·n = 100 s was not enough: not every node had
    all its peers by the genesis start), so a term in n² as well, and margin."""
    return 20.0 + 2.5 * n + 0.05 * n * n


@dataclass
class ScaleRun:
    n: int
    t: int
    delta_seconds: float
    schedule_bound_seconds: float
    certified: bool = False
    members_with_share: int = 0
    seconds_to_certified: float | None = None
    first_certified_seconds: float | None = None
    cpu_seconds_per_node: float | None = None
    cpu_seconds_max: float | None = None
    startup_cpu_seconds_per_node: float | None = None
    idle_cpu_percent_per_node: float | None = None
    rss_mib_per_node: float | None = None
    rss_mib_max: float | None = None
    bytes_sent_per_node: float | None = None
    frames_received_per_node: float | None = None
    frames_per_write: float | None = None
    """Frames sent over stream writes, all nodes from the genesis start to their shares
    (``qkms_transport_frames_sent_total`` / ``qkms_transport_writes_total``)."""
    latency_injection: str = ""
    shim_cpu_seconds_per_node: float | None = None
    connected_before_genesis_seconds: float | None = None
    setup_seconds: float | None = None
    key_fetch_ok: bool | None = None
    key_fetch_seconds: float | None = None
    reshare_seconds: float | None = None
    reshare_members_with_share: int | None = None
    note: str = ""
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# --- /proc and /metrics -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def metric(text: str, pattern: re.Pattern[str]) -> float | None:
    """The sum of the samples ``pattern`` matches (``None``: none)."""
    found = pattern.findall(text)
    return sum(float(v) for v in found) if found else None


def certified_at(log: Path, epoch: int = 0) -> float | None:
    """The timestamp of the node's ``epoch certified`` log line for ``epoch``."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if not line.startswith("{") or "epoch certified" not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "epoch certified" and rec.get("epoch") == epoch:
            return float(rec["ts"])
    return None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def shim_cost_per_frame(frames: int = 20_000) -> float:
    """CPU seconds the delay shim adds per received frame (measured in-process: frames
    through ``DelayedTransport`` with no delay, against the same frames without it)."""
    import trio
    import trio.testing

    from mpc.ids import PeerId
    from net.delay import DelayedTransport
    from net.memory import MemoryNetwork, MemoryTransport

    async def once(wrap: bool) -> float:
        net = MemoryNetwork()
        async with MemoryTransport(net, PeerId("a")) as a, MemoryTransport(net, PeerId("b")) as b:
            rx: Any = DelayedTransport(b, 0.0) if wrap else b
            began = time.process_time()
            for _ in range(frames):
                await a.send(PeerId("b"), b"x" * 64)
                await rx.receive()
            return time.process_time() - began

    plain = min(trio.run(once, False) for _ in range(3))
    wrapped = min(trio.run(once, True) for _ in range(3))
    return max(0.0, wrapped - plain) / frames


# --- one size ------------------------------------------------------------------------------


class _Nodes:
    """Polls the lab committee's nodes in parallel."""

    def __init__(self, com: Any, pool: ThreadPoolExecutor) -> None:
        import httpx

        self.com = com
        self.pool = pool
        self.clients = {
            i: httpx.Client(base_url=node.url, timeout=STATUS_TIMEOUT)
            for i, node in com.nodes.items()
        }

    def add(self, index: int) -> None:
        import httpx

        node = self.com.nodes[index]
        self.clients[index] = httpx.Client(base_url=node.url, timeout=STATUS_TIMEOUT)

    def _get(self, i: int, path: str) -> Any:
        import httpx

        try:
            r = self.clients[i].get(path)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        return r.text if path == "/metrics" else r.json()

    def statuses(self, indices: list[int]) -> dict[int, dict[str, Any] | None]:
        got = self.pool.map(lambda i: self._get(i, "/v1/status"), indices)
        return dict(zip(indices, got, strict=True))

    def metrics(self, indices: list[int]) -> dict[int, str | None]:
        got = self.pool.map(lambda i: self._get(i, "/metrics"), indices)
        return dict(zip(indices, got, strict=True))

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def _wait_connected(nodes: _Nodes, n: int, genesis: float) -> float | None:
    """Seconds before the genesis start at which every node had all n − 1 peers connected
    (``None``: not by the genesis start)."""
    indices = sorted(nodes.com.nodes)
    while time.time() < genesis:
        st = nodes.statuses(indices)
        if all(s is not None and len(s.get("peers", [])) == n - 1 for s in st.values()):
            return genesis - time.time()
        for node in nodes.com.nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"node {node.index} exited; see {node.log}")
        time.sleep(max(0.5, n / 32))  # each poll costs every starting node a request
    return None


def measure(
    n: int,
    *,
    largest: bool,
    delay_ms: float = DELAY_MS,
    delta: float | None = None,
    out: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ScaleRun:
    from kms.chaos.committee import LabCommittee
    from kms.chaos.netlab import Lab

    say = progress or (lambda _: None)
    t = threshold_for(n)
    delta = delta_for(n) if delta is None else delta
    bound = Schedule.default(0.0, n, t, delta=delta)
    run = ScaleRun(n, t, delta, bound.justify_end - bound.start)
    run.latency_injection = (
        f"{delay_ms:g} ms one-way per frame in each receiving node (net.delay shim): "
        f"{2 * delay_ms:g} ms round trip"
        if delay_ms > 0
        else "none"
    )
    keep = out is not None
    work = Path(tempfile.mkdtemp(prefix=f"qkms-scale-{n}-")) if out is None else out / f"n{n}"
    began = time.time()
    lab = Lab.create(direct=True)
    try:
        lab.enter()
        com = LabCommittee(
            lab,
            work / "lab",
            work / "logs",
            nodes=n,
            threshold=t,
            delta=delta,
            window_period=window_period_for(t, delta),
            window_length=None,
            refresh_interval=0,
            delay_ms=delay_ms,
        )
        say(f"n = {n}: hosts, node directories")
        com.create()
        com.configure(start_in=start_in_for(n))
        genesis = com.genesis_start()
        schedule = Schedule.default(genesis, n, t, delta=delta)
        say(f"n = {n}: starting {n} node processes (genesis in {genesis - time.time():.0f} s)")
        com.start_all()
        run.setup_seconds = time.time() - began
        with ThreadPoolExecutor(max_workers=16) as pool:
            nodes = _Nodes(com, pool)
            try:
                _measure_dkg(run, com, nodes, schedule, say)
                if largest and run.certified:
                    _fetch_and_join(run, com, nodes, say)
            finally:
                nodes.close()
                com.stop_all()
    except Exception as exc:
        run.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        lab.teardown()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return run


def _measure_dkg(
    run: ScaleRun, com: Any, nodes: _Nodes, schedule: Schedule, say: Callable[[str], None]
) -> None:
    n = run.n
    genesis = schedule.start
    indices = sorted(com.nodes)
    pids = {i: com.nodes[i].proc.pid for i in indices}
    run.connected_before_genesis_seconds = _wait_connected(nodes, n, genesis)
    if run.connected_before_genesis_seconds is None:
        run.note = "not all nodes connected to all others by the genesis start"
    # Idle cost: every node up and connected, the DKG not begun.
    idle_from = {i: cpu_seconds(p) for i, p in pids.items()}
    idle_t0 = time.time()
    while (now := time.time()) < genesis:
        time.sleep(min(0.2, genesis - now))
    cpu0 = {i: cpu_seconds(p) for i, p in pids.items()}
    idle_span = time.time() - idle_t0
    if idle_span > 1.0:
        idle = [
            (b - a) / idle_span
            for i in indices
            if (a := idle_from[i]) is not None and (b := cpu0[i]) is not None
        ]
        run.idle_cpu_percent_per_node = (_mean(idle) or 0.0) * 100
    run.startup_cpu_seconds_per_node = _mean([c for c in cpu0.values() if c is not None])
    base = nodes.metrics(indices)
    say(
        f"n = {n}: genesis DKG running (Δ = {run.delta_seconds:g} s, the schedule ends "
        f"{format_seconds(run.schedule_bound_seconds)} after its start)"
    )
    # Sleep to the lower bound, then poll until every member is at epoch 0 (or a second
    # attempt would have ended too).
    while (now := time.time()) < schedule.justify_end:
        time.sleep(min(1.0, schedule.justify_end - now))
    give_up = schedule.next_attempt().end + 10.0
    done: dict[int, float] = {}
    cpu1: dict[int, float | None] = {}
    rss: dict[int, float | None] = {}
    while len(done) < n and time.time() < give_up:
        pending = [i for i in indices if i not in done]
        for i, s in nodes.statuses(pending).items():
            if s is not None and s.get("epoch") == 0 and s.get("has_share"):
                done[i] = time.time()
                cpu1[i] = cpu_seconds(pids[i])
                rss[i] = rss_mib(pids[i])
        if len(done) < n:
            time.sleep(1.0)
    run.members_with_share = len(done)
    logged = [certified_at(com.nodes[i].log) for i in indices]
    times = [x for x in logged if x is not None]
    run.certified = len(times) == n or len(done) >= run.t
    if times:
        run.seconds_to_certified = max(times) - genesis
        run.first_certified_seconds = min(times) - genesis
    cpu = [
        b - a for i in indices if (a := cpu0.get(i)) is not None and (b := cpu1.get(i)) is not None
    ]
    run.cpu_seconds_per_node = _mean(cpu)
    run.cpu_seconds_max = max(cpu, default=None)
    rs = [r for r in rss.values() if r is not None]
    run.rss_mib_per_node = _mean(rs)
    run.rss_mib_max = max(rs, default=None)
    after = nodes.metrics(indices)
    sent, frames = [], []
    for i in indices:
        m0, m1 = base.get(i), after.get(i)
        if m0 is None or m1 is None:
            continue
        s0, s1 = metric(m0, _BYTES_SENT), metric(m1, _BYTES_SENT)
        if s0 is not None and s1 is not None:
            sent.append(s1 - s0)
        f0, f1 = metric(m0, _FRAMES_RECEIVED), metric(m1, _FRAMES_RECEIVED)
        if f0 is not None and f1 is not None:
            frames.append(f1 - f0)
    run.bytes_sent_per_node = _mean(sent)
    run.frames_received_per_node = _mean(frames)
    framed, written = 0.0, 0.0
    for i in indices:
        m0, m1 = base.get(i), after.get(i)
        if m0 is None or m1 is None:
            continue
        f0, f1 = metric(m0, _FRAMES_SENT), metric(m1, _FRAMES_SENT)
        w0, w1 = metric(m0, _WRITES), metric(m1, _WRITES)
        if None not in (f0, f1, w0, w1):
            framed += f1 - f0  # type: ignore[operator]
            written += w1 - w0  # type: ignore[operator]
    run.frames_per_write = framed / written if written else None
    if len(done) < n:
        missing = [i for i in indices if i not in done]
        run.errors.append(f"no share at epoch 0 by the end of attempt 1: nodes {missing[:20]}")


def _fetch_and_join(run: ScaleRun, com: Any, nodes: _Nodes, say: Callable[[str], None]) -> None:
    from kms.app import simtee
    from kms.app.devnet import DEMO_MEASUREMENT
    from kms.chaos.workload import PURPOSES
    from kms.client.http import KeyClient
    from kms.policy import Measurement
    from mpc.ids import ParticipantIndex
    from mpc.math import G2

    say(f"n = {run.n}: an app, and a CVM's key fetch")
    try:
        if com.mpk is None:
            com.wait_genesis(60.0)  # every member holds a share already: this reads the key
        apps = com.create_apps(1)
        quote = simtee.quote_source(com.tee_dir, Measurement.explicit(**DEMO_MEASUREMENT))
        urls = {ParticipantIndex(node.index): node.url for node in com.members()}
        client = KeyClient(urls, G2.from_bytes(bytes.fromhex(com.mpk)), timeout=30.0)
        try:
            t0 = time.time()
            result = client.fetch(bytes.fromhex(next(iter(apps.values()))), PURPOSES, quote)
            run.key_fetch_seconds = time.time() - t0
            run.key_fetch_ok = bool(result.derived)
        finally:
            client.close()
    except Exception as exc:
        run.key_fetch_ok = False
        run.errors.append(f"key fetch: {type(exc).__name__}: {exc}")
    say(f"n = {run.n}: a node joins (reshare to n = {run.n + 1})")
    t1 = run.t
    reshare = Schedule.default(0.0, run.n + 1, t1, delta=run.delta_seconds)
    timeout = window_period_for(t1, run.delta_seconds) * 2 + 3 * (reshare.end - reshare.start) + 60
    t0 = time.time()
    try:
        index = com.join(timeout=timeout)
    except Exception as exc:
        run.errors.append(f"join: {type(exc).__name__}: {exc}")
        return
    run.reshare_seconds = time.time() - t0
    nodes.add(index)
    # The members of the new epoch: wait a little for the last ones to switch.
    members = com.current_members()
    deadline = time.time() + 10 * run.delta_seconds + 10
    count = 0
    while time.time() < deadline:
        st = nodes.statuses(members)
        epochs = [s.get("epoch") for s in st.values() if s is not None]
        top = max((e for e in epochs if e is not None), default=0)
        count = sum(
            1 for s in st.values() if s is not None and s.get("epoch") == top and s.get("has_share")
        )
        if count == len(members):
            break
        time.sleep(1.0)
    run.reshare_members_with_share = count


# --- output --------------------------------------------------------------------------------


def _s(v: float | None) -> str:
    return "n/a" if v is None else format_seconds(v)


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def table(runs: list[ScaleRun]) -> Table:
    tbl = Table(
        title=(
            "genesis DKG over libp2p, one process per node, each on its own network host "
            "(direct lab), t = ⌊2n/3⌋+1; times from the genesis start"
        ),
        title_justify="left",
    )
    for name in (
        "n",
        "t",
        "Δ",
        "schedule bound",
        "certified",
        "over bound",
        "with share",
        "CPU s/node",
        "RSS MiB/node",
        "MB sent/node",
        "idle CPU %/node",
        "key fetch",
        "join → n+1",
        "with share after",
    ):
        tbl.add_column(name, justify="right")
    tbl.add_column("note", overflow="fold")
    for r in runs:
        over = (
            None
            if r.seconds_to_certified is None
            else r.seconds_to_certified - r.schedule_bound_seconds
        )
        fetch = (
            "n/a"
            if r.key_fetch_ok is None
            else ("[green]ok[/green] " if r.key_fetch_ok else "[red]FAILED[/red] ")
            + _s(r.key_fetch_seconds)
        )
        notes = [r.note] if r.note else []
        if r.frames_per_write is not None:
            notes.append(f"{r.frames_per_write:.1f} frames per write")
        if r.connected_before_genesis_seconds is not None:
            notes.append(f"all connected {r.connected_before_genesis_seconds:.0f} s before genesis")
        notes += r.errors
        tbl.add_row(
            str(r.n),
            str(r.t),
            format_seconds(r.delta_seconds),
            format_seconds(r.schedule_bound_seconds),
            _s(r.seconds_to_certified) if r.certified else "[red]no[/red]",
            "n/a" if over is None else f"+{format_seconds(over)}",
            f"{r.members_with_share}/{r.n}",
            _num(r.cpu_seconds_per_node, ".1f"),
            _num(r.rss_mib_per_node, ".0f"),
            "n/a" if r.bytes_sent_per_node is None else f"{r.bytes_sent_per_node / 1e6:.2f}",
            _num(r.idle_cpu_percent_per_node, ".2f"),
            fetch,
            _s(r.reshare_seconds),
            "n/a"
            if r.reshare_members_with_share is None
            else f"{r.reshare_members_with_share}/{r.n + 1}",
            "; ".join(notes),
        )
    injection = runs[0].latency_injection if runs else ""
    tbl.caption = (
        f"latency: {injection}. CPU: user+system from the genesis start to the node's share; "
        "RSS at that moment; bytes: qkms_transport_bytes_sent_total over the same span."
    )
    tbl.caption_justify = "left"
    return tbl


def as_json(runs: list[ScaleRun]) -> dict[str, Any]:
    return {"runs": [r.as_json() for r in runs]}


def largest_certified(runs: list[ScaleRun]) -> int | None:
    ok = [r.n for r in runs if r.certified and r.members_with_share == r.n]
    return max(ok, default=None)


def runs(
    sizes: tuple[int, ...],
    *,
    delay_ms: float = DELAY_MS,
    delta: float | None = None,
    keep: Path | None = None,
    progress: Callable[[str], None] | None = None,
    each: Callable[[ScaleRun], None] | None = None,
) -> list[ScaleRun]:
    """One run per size; the key fetch and the join at the largest."""
    per_frame = shim_cost_per_frame() if delay_ms > 0 else 0.0
    out: list[ScaleRun] = []
    for n in sizes:
        run = measure(
            n,
            largest=n == max(sizes),
            delay_ms=delay_ms,
            delta=delta,
            out=keep,
            progress=progress,
        )
        if run.frames_received_per_node is not None:
            run.shim_cpu_seconds_per_node = per_frame * run.frames_received_per_node
        out.append(run)
        if each is not None:
            each(run)
    return out


def report(console: Console, rs: list[ScaleRun]) -> None:
    console.print(table(rs))
    top = largest_certified(rs)
    console.print(
        "largest n that certified with every member holding a share: "
        + ("none" if top is None else str(top))
    )


def unavailable() -> str | None:
    """Why the lab cannot run here (``None``: it can)."""
    from kms.chaos.netlab import LabError, require_root

    try:
        require_root()
    except LabError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="n = 16 only (about 10 min: see docs/performance.md)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the runs here")
    parser.add_argument("--sizes", default=None, help="comma-separated committee sizes")
    parser.add_argument("--delay-ms", type=float, default=DELAY_MS, help="one-way delay, ms")
    parser.add_argument(
        "--delta", type=float, default=None, help="Δ in seconds for every size (default: DELTAS)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep logs under this directory")
    args = parser.parse_args(argv)
    if args.sizes:
        sizes = tuple(int(x) for x in args.sizes.split(","))
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES
    console = Console(width=None if sys.stdout.isatty() else 200)
    rs = runs(
        sizes,
        delay_ms=args.delay_ms,
        delta=args.delta,
        keep=args.keep,
        progress=lambda what: console.print(f"[dim]{time.strftime('%H:%M:%S')} {what}[/dim]"),
        each=lambda run: console.print(table([run])),
    )
    report(console, rs)
    if args.json is not None:
        args.json.write_text(json.dumps(as_json(rs), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
