"""The genesis DKG over real libp2p on loopback: wall time, lower bound, messages per node.

For each committee size ``n`` this starts ``n`` node processes
(``kms.app.devnet.create`` + ``spawn``: one ``kms node run`` per node, Noise +
Yamux over TCP on 127.0.0.1), waits until every node answers ``/v1/status``
with all ``n - 1`` peers connected, and only then lets the DKG begin: the
genesis start is an absolute time written into every ``node.toml``, so it is
chosen far enough ahead (``start_in``) and the run is repeated with a larger
one if the nodes were not all connected a little before it.

Measured from the genesis start (the DKG cannot begin earlier: its deadlines
are absolute):

* **polled**: when the last node's ``/v1/status`` shows epoch 0 (every
  pending node is polled about every 20 ms from shortly before the lower
  bound; earlier polling would only load the CPUs the nodes need);
* **logged**: when the last node logged ``epoch certified`` (the node's own
  timestamp, to the millisecond: no polling delay);
* **lower bound**: ``Schedule.default(...).justify_end``. Each broadcast
  phase lasts its window plus ``(f+1)·Δ`` (``f = t - 1``) and there is no
  early end; certification can only follow the justify phase.

Messages per node come from ``/metrics`` (``qkms_messages_sent_total``,
counted when a frame is queued for a peer), split into the DKG proper
(``bcast/*`` and ``cert/partial``) and the chain housekeeping around it
(``chain/request`` at start-up, ``chain/update`` and ``reshare/ack`` after the
epoch switch). Bytes are not measured: the transport counts them
(``Transport.statistics().bytes_sent``) but neither ``/v1/status`` nor
``/metrics`` reports them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.timing import format_seconds
from kms.app import devnet
from mpc.dkg.schedule import Schedule

DELTA = 0.1
"""Δ for every run, seconds."""
TARGET_N = 7
TARGET_SECONDS = 4.0
"""Target: the genesis DKG of n = 7 over libp2p within 4 s of its start, with Δ = 100 ms."""
FULL_SIZES = (4, 7, 10)
QUICK_SIZES = (4,)

POLL = 0.02
"""Seconds between polls of the nodes that are not at epoch 0 yet."""
POLL_FROM = 0.3
"""Start fast polling this long before the lower bound."""
CONNECT_MARGIN = 0.5
"""Every node must be connected to every other at least this long before genesis."""
SETTLE = 0.5
"""Seconds to wait after the last node reached epoch 0 before reading ``/metrics``."""
ATTEMPTS = 3
"""Runs per size when the nodes were not all connected in time (``start_in`` grows ×1.5)."""

DKG_KINDS = ("bcast/", "cert/partial")
# Counter values are printed as floats (``prometheus_client``): ``... 12.0``.
_SENT = re.compile(r'^qkms_messages_sent_total\{kind="([^"]+)"\} (\d+)(?:\.0)?$')
_SEND_FAILURES = re.compile(r"^qkms_send_failures_total (\d+)(?:\.0)?$")
_RUN_FAILURES = re.compile(r'^qkms_run_failures_total\{kind="[^"]+"\} (\d+)(?:\.0)?$')


def threshold_for(n: int) -> int:
    """``⌊2n/3⌋ + 1``: the smallest t with more than two thirds of the committee."""
    return 2 * n // 3 + 1


def start_in_for(n: int) -> float:
    """Seconds from creating the devnet to its genesis start: start-up grows with ``n``.

    Measured on 2 CPUs: all nodes were connected 2.5 s (n = 4), 3.9 s (n = 7)
    and 5.8 s (n = 10) after ``create``; the processes start in parallel and
    share the CPUs, hence the per-node term. Too short a lead is caught and
    the run repeated with a longer one.
    """
    return 3.0 + 0.6 * n


@dataclass
class DkgRow:
    n: int
    t: int
    delta: float
    schedule: Schedule
    start_in: float = 0.0
    connected_before: float | None = None
    """Seconds between every node being connected to all others and the genesis start."""
    polled: float | None = None
    """Genesis start → the last node's /v1/status shows epoch 0."""
    logged: float | None = None
    """Genesis start → the last node's "epoch certified" log line."""
    first_logged: float | None = None
    sent: list[dict[str, int]] = field(default_factory=list)
    """Per node: messages sent, by kind."""
    send_failures_during: int = 0
    run_failures: int = 0
    note: str = ""

    @property
    def lower_bound(self) -> float:
        return self.schedule.justify_end - self.schedule.start

    @property
    def wall(self) -> float | None:
        return self.polled

    def per_node(self, dkg: bool) -> float:
        if not self.sent:
            return 0.0
        totals = [
            sum(v for k, v in kinds.items() if k.startswith(DKG_KINDS) == dkg)
            for kinds in self.sent
        ]
        return sum(totals) / len(totals)

    @property
    def scale(self) -> int:
        return self.n * (self.n + self.t)

    @property
    def target_met(self) -> bool | None:
        if self.n != TARGET_N:
            return None
        return self.wall is not None and self.wall <= TARGET_SECONDS


# --- one run -----------------------------------------------------------------------------


def _stop_all(pids: list[int]) -> None:
    """SIGTERM every node at once, then wait for (or SIGKILL) each."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for pid in pids:
        devnet.stop_pid(pid)


def _statuses(
    pool: ThreadPoolExecutor, clients: dict[int, httpx.Client], indices: list[int]
) -> dict[int, dict[str, Any] | None]:
    def one(i: int) -> dict[str, Any] | None:
        try:
            r = clients[i].get("/v1/status")
            return dict(r.json()) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    return dict(zip(indices, pool.map(one, indices), strict=True))


def _metrics(client: httpx.Client) -> tuple[dict[str, int], int, int]:
    text = client.get("/metrics").text
    sent: dict[str, int] = {}
    send_failures = run_failures = 0
    for line in text.splitlines():
        if m := _SENT.match(line):
            sent[m.group(1)] = int(m.group(2))
        elif m := _SEND_FAILURES.match(line):
            send_failures = int(m.group(1))
        elif m := _RUN_FAILURES.match(line):
            run_failures += int(m.group(1))
    return sent, send_failures, run_failures


def _certified_at(log_path: Path) -> float | None:
    """The timestamp of the node's ``epoch certified`` log line for epoch 0."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "epoch certified" and rec.get("epoch") == 0:
            return float(rec["ts"])
    return None


class _NotConnected(Exception):
    """The nodes were not all connected in time for the genesis start."""


def _run_once(directory: Path, row: DkgRow, start_in: float) -> None:
    n, t = row.n, row.t
    state = devnet.create(
        directory,
        n,
        t,
        delta=row.delta,
        start_in=start_in,
        window_period=600,
        refresh_interval=0,
    )
    genesis = devnet.genesis_start(state)
    row.schedule = Schedule.default(genesis, n, t, delta=row.delta)
    row.start_in = start_in
    nodes = {int(x["index"]): x for x in state["nodes"]}
    pids: list[int] = []
    clients = {i: httpx.Client(base_url=x["http_url"], timeout=1.0) for i, x in nodes.items()}
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            for x in nodes.values():
                pids.append(devnet.spawn(x["config"], Path(x["config"]).parent / "node.log"))
            # 1. Every node up, with all n-1 peers connected, before the genesis start.
            while True:
                st = _statuses(pool, clients, sorted(nodes))
                if all(s is not None and len(s.get("peers", [])) == n - 1 for s in st.values()):
                    row.connected_before = genesis - time.time()
                    break
                if time.time() > genesis - CONNECT_MARGIN:
                    raise _NotConnected
                time.sleep(0.1)
            if row.connected_before < CONNECT_MARGIN:
                raise _NotConnected
            baseline = {i: _metrics(clients[i])[1] for i in nodes}
            # 2. Sleep until shortly before the lower bound, then poll the pending nodes fast.
            wake = row.schedule.justify_end - POLL_FROM
            while (now := time.time()) < wake:
                time.sleep(min(0.25, wake - now))
            reached: dict[int, float] = {}
            give_up = row.schedule.end + 2.0
            while len(reached) < n and time.time() < give_up:
                pending = [i for i in sorted(nodes) if i not in reached]
                st = _statuses(pool, clients, pending)
                seen = time.time()
                for i, s in st.items():
                    if s is not None and s.get("epoch") == 0:
                        reached[i] = seen
                time.sleep(POLL)
            if len(reached) == n:
                row.polled = max(reached.values()) - genesis
            else:
                row.note = f"only {len(reached)}/{n} nodes at epoch 0 by the end of attempt 0"
            logged = [_certified_at(Path(x["config"]).parent / "node.log") for x in nodes.values()]
            if all(v is not None for v in logged):
                times = [v for v in logged if v is not None]
                row.logged = max(times) - genesis
                row.first_logged = min(times) - genesis
            # 3. Messages, once the epoch switch's acknowledgements have gone out.
            time.sleep(SETTLE)
            row.sent = []
            for i in sorted(nodes):
                sent, send_failures, run_failures = _metrics(clients[i])
                row.sent.append(sent)
                row.send_failures_during += send_failures - baseline[i]
                row.run_failures += run_failures
    finally:
        _stop_all(pids)
        for c in clients.values():
            c.close()


def measure(n: int, progress: Callable[[str], None] | None = None) -> DkgRow:
    """Run the genesis DKG of ``n`` nodes (threshold ``⌊2n/3⌋+1``, Δ = 100 ms) once."""
    t = threshold_for(n)
    row = DkgRow(n, t, DELTA, Schedule.default(0.0, n, t, delta=DELTA))
    start_in = start_in_for(n)
    for attempt in range(1, ATTEMPTS + 1):
        if progress is not None:
            progress(f"genesis DKG over libp2p, n = {n} (start in {start_in:.0f} s)")
        directory = Path(tempfile.mkdtemp(prefix=f"qkms-bench-dkg-{n}-"))
        try:
            _run_once(directory, row, start_in)
            return row
        except _NotConnected:
            row.note = (
                f"rerun: not all connected {CONNECT_MARGIN} s before genesis with start_in "
                f"{start_in:.1f} s (run {attempt})"
            )
            start_in *= 1.5
        except Exception as exc:
            # A node that died or refused a request: report it and keep the bench going.
            row.note = f"run failed: {type(exc).__name__}: {exc}"
            return row
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return row


def rows(quick: bool, progress: Callable[[str], None] | None = None) -> list[DkgRow]:
    return [measure(n, progress) for n in (QUICK_SIZES if quick else FULL_SIZES)]


# --- output --------------------------------------------------------------------------------


def _s(v: float | None) -> str:
    return "n/a" if v is None else format_seconds(v)


def table(rs: list[DkgRow]) -> Table:
    tbl = Table(
        title=(
            f"genesis DKG over libp2p on loopback: one process per node, Δ = {DELTA * 1000:.0f} ms, "
            "t = ⌊2n/3⌋+1; times from the genesis start"
        ),
        title_justify="left",
    )
    for name in (
        "n",
        "t",
        "lower bound",
        "all at epoch 0 (polled)",
        "(logged)",
        "over bound",
        "DKG msgs/node",
        "n·(n+t)",
        "ratio",
        "other msgs/node",
    ):
        tbl.add_column(name, justify="right")
    tbl.add_column("note", overflow="fold")
    for r in rs:
        over = None if r.logged is None else r.logged - r.lower_bound
        notes = []
        if r.target_met is not None:
            verdict = "[green]met[/green]" if r.target_met else "[bold red]MISSED[/bold red]"
            notes.append(f"target ≤ {format_seconds(TARGET_SECONDS)}: {verdict}")
        if r.connected_before is not None:
            notes.append(f"all connected {r.connected_before:.1f} s before genesis")
        if r.first_logged is not None:
            notes.append(f"first node certified at {format_seconds(r.first_logged)}")
        if r.send_failures_during:
            notes.append(f"{r.send_failures_during} send failures during the run")
        if r.run_failures:
            notes.append(f"{r.run_failures} failed attempts")
        if r.note:
            notes.append(r.note)
        dkg = r.per_node(dkg=True)
        tbl.add_row(
            str(r.n),
            str(r.t),
            format_seconds(r.lower_bound),
            _s(r.polled),
            _s(r.logged),
            "n/a" if over is None else f"+{format_seconds(over)}",
            f"{dkg:.0f}" if r.sent else "n/a",
            str(r.scale),
            f"{dkg / r.scale:.2f}" if r.sent else "n/a",
            f"{r.per_node(dkg=False):.0f}" if r.sent else "n/a",
            "; ".join(notes),
        )
    tbl.caption = (
        "DKG msgs: bcast/payload, bcast/relay, bcast/pull, cert/partial; other: chain/request, "
        "chain/update, reshare/ack. Bytes are not reported here; /metrics has them "
        "(qkms_transport_bytes_sent_total, qkms_peer_bytes_sent_total)."
    )
    tbl.caption_justify = "left"
    return tbl


def breakdown(row: DkgRow) -> Table:
    """Where the time of one run goes: the schedule's phases, then certification."""
    s = row.schedule
    tail = s.phase_tail
    work = s.deal_window - 2 * s.delta  # Schedule.default's verification budget
    tbl = Table(
        title=(
            f"n = {row.n}, t = {row.t}: the genesis schedule (Schedule.default, Δ = "
            f"{format_seconds(s.delta)}, f = t-1 = {s.f}); no phase ends early"
        ),
        title_justify="left",
    )
    tbl.add_column("phase")
    tbl.add_column("lasts", justify="right")
    tbl.add_column("ends at", justify="right")
    tbl.add_column("made of", overflow="fold")
    window = f"2Δ + verification budget {format_seconds(work)} (0.5 s + 2 ms·n·t)"
    phases = (
        ("run-key window", s.key_window_length, s.key_cutoff, "2Δ: recipients announce run keys"),
        ("run-key tail", tail, s.key_end, "(f+1)·Δ: the run keys are agreed, dealers deal"),
        ("deal window", s.deal_window, s.deal_cutoff, window),
        ("deal tail", tail, s.deal_end, f"(f+1)·Δ = {s.f + 1}·{format_seconds(s.delta)}"),
        ("respond window", s.respond_window, s.respond_cutoff, window),
        ("respond tail", tail, s.respond_end, "(f+1)·Δ"),
        ("justify window", s.justify_window, s.justify_cutoff, window),
        ("justify tail", tail, s.justify_end, "(f+1)·Δ: the lower bound ends here"),
    )
    for name, lasts, ends, what in phases:
        tbl.add_row(name, format_seconds(lasts), format_seconds(ends - s.start), what)
    if row.logged is not None:
        tbl.add_row(
            "certification (measured)",
            format_seconds(row.logged - row.lower_bound),
            format_seconds(row.logged),
            "finalize (sum deals, public shares), sign and exchange t partials, combine",
        )
    fixed = 3 * work
    tbl.caption = (
        f"of the {format_seconds(row.lower_bound)} lower bound, {format_seconds(fixed)} is the "
        f"verification budget, {format_seconds(4 * tail)} the (f+1)·Δ tails and "
        f"{format_seconds(6 * s.delta + s.key_window_length)} the windows' fixed part"
    )
    tbl.caption_justify = "left"
    return tbl


def report(console: Console, rs: list[DkgRow]) -> None:
    console.print(table(rs))
    target = [r for r in rs if r.target_met is not None]
    if not target:
        console.print(f"DKG target (n = {TARGET_N} ≤ {format_seconds(TARGET_SECONDS)}): not run")
        return
    r = target[0]
    if r.target_met:
        margin = TARGET_SECONDS - (r.wall or 0.0)
        console.print(
            f"[green]DKG target met[/green]: n = {r.n} at epoch 0 after {_s(r.wall)} "
            f"(≤ {format_seconds(TARGET_SECONDS)}, {format_seconds(margin)} to spare; "
            f"the schedule's lower bound is {format_seconds(r.lower_bound)})"
        )
        return
    console.print(
        f"[bold red]DKG target missed[/bold red]: n = {r.n} at epoch 0 after {_s(r.wall)} "
        f"(> {format_seconds(TARGET_SECONDS)}); the schedule alone takes "
        f"{format_seconds(r.lower_bound)}:"
    )
    console.print(breakdown(r))


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.dkg_network [--quick]``: this table alone."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m bench.dkg_network", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="n = 4 only")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 180)
    report(console, rows(args.quick, lambda what: console.print(what)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
