"""A boot storm of CVMs: open-loop key requests at increasing rates, beside the baseline.

``python -m bench.storm [--quick] [--json FILE] [--rates R ...] [--seconds S]`` starts a
devnet (``kms devnet up``: five node processes, t = 3, libp2p between them, the
production release path and store) and, for each offered rate in turn, replays a
storm of CVMs fetching their app key:

* **precomputed**: before each rate, one distinct ``KeyRequest`` per CVM is built
  with the client's own builder (``kms.client.core.KeyRequestSession``: a fresh
  ephemeral HPKE key per member, a fresh nonce, a simulated TDX quote over the
  report data binding them), encoded and wrapped in its HTTP/1.1 request, so the
  load generator only writes bytes and reads answers (nonces are single-use: no
  request is sent twice to a node);
* **open loop**: CVM ``k`` of a rate is due at ``k / rate`` seconds, whatever the
  answers; each asks ``t = 3`` of the five nodes at once (rotating, so every node
  gets 3/5 of the rate) and, as ``KeyClient`` does, one more node not yet asked per
  failed ask (a refusal, ``503 overloaded``, a timeout), but neither hedges a slow
  node nor asks again after a backoff. A CVM is served when three partials came
  back ``200``; its latency runs from its due time (time spent
  waiting for a free connection in the generator counts: no coordinated
  omission) to the third ``200``. A request unanswered ``timeout`` seconds after
  its due time counts as a timeout;
* **from its own network host**: the generator is a separate process in a
  network namespace of its own (a veth pair; the nodes' loopback ports reached
  through one DNAT rule), with a bounded pool of keep-alive connections per node
  (asyncio, raw sockets, pre-encoded requests); without root it falls back to a
  separate process on loopback, and says so.

Per rate: offered and served CVMs per second, latency p50/p99 of served CVMs, the
error mix per node request (``"503 overloaded"``, ``"403 replayed-nonce"``,
``timeout``, ``connection: …``), the nodes' CPU (``/proc/<pid>/stat``) per ``200``
answer, their resident memory, and the generator's own CPU. The knee is the highest
rate served in full (≥ 95 % of offered, ≤ 1 % errors). After the storm: the nodes
still running (``crashes`` counts those that are not), the shed count in their
``/metrics``, and one ordinary ``KeyClient`` fetch (recovery).

Beside it, in the same run: the same storm against the dstack-style baseline
(``bench.baseline``: one process verifying the quote and deriving the key; one
request per CVM), and the in-process release cost (``bench.key_release.in_process``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
FULL_RATES = (20, 30, 40, 60, 80, 120, 240, 480)
"""CVMs per second (each asks three nodes); ten seconds each: 10,700 distinct requests."""
QUICK_RATES = (20, 60, 150, 300)
FULL_BASELINE_RATES = (50, 100, 150, 200, 300, 600)
QUICK_BASELINE_RATES = (100, 300, 600)
ASKED = 3
"""Nodes each CVM asks at once: the committee's threshold."""
TIMEOUT = 5.0
"""Seconds a CVM waits for an answer (``KeyClient``'s default timeout)."""
CONNECTIONS = 64
"""Keep-alive connections the generator opens to one node at most."""
SERVED = 0.95
"""A rate is served in full when at least this share of its CVMs got their key…"""
ERRORS = 0.01
"""…and at most this share of its node requests failed."""
TARGET_PER_CPU_SECOND = 300.0


# --- the load generator (its own process, its own network host) ------------------------------


class _Pool:
    """At most ``cap`` keep-alive connections to one server; FIFO waiters when all are busy."""

    def __init__(self, host: str, port: int, cap: int) -> None:
        self.host, self.port, self.cap = host, port, cap
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.opened = 0
        self.waiters: deque[asyncio.Future[Any]] = deque()

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.open < self.cap:
                return await self._connect()
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            try:
                conn = await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    got = fut.result()
                    if got is None:
                        self._wake(None)
                    else:
                        self.put(got)
                raise
            if conn is not None:
                return conn  # type: ignore[no-any-return]
            # A connection was dropped: its place is free, open one in it.

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.open += 1
        self.opened += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self.open -= 1
            self._wake(None)
            raise

    def _wake(self, conn: Any) -> bool:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return True
        return False

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        if not self._wake(conn):
            self.idle.append(conn)

    def drop(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        conn[1].close()
        self.open -= 1
        self._wake(None)

    def close(self) -> None:
        for _, w in self.idle:
            w.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes, bytes]:
    """(status, server closes, content type, body) of one HTTP/1.1 answer with a length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, close, ctype = 0, False, b""
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key = key.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection":
            close = value.strip().lower() == b"close"
        elif key == b"content-type":
            ctype = value.strip()
        elif key == b"transfer-encoding":
            raise ValueError("chunked answer")
    body = await reader.readexactly(length) if length else b""
    return status, close, ctype, body


def _reason(status: int, ctype: bytes, body: bytes) -> str:
    """``"<status> <reason>"`` of a refusal: the JSON ``reason``, or the decoded refusal's."""
    try:
        if ctype.startswith(b"application/json"):
            return f"{status} {json.loads(body).get('reason', '?')}"
        import kms.protocol  # noqa: F401  (registers the message types)
        from mpc.codec import decode

        return f"{status} {getattr(decode(body), 'reason', '?')}"
    except Exception:  # a figure, not a failure
        return f"{status} undecodable"


async def _one(pool: _Pool, request: bytes, due: float, timeout: float) -> tuple[str, float | None]:
    loop = asyncio.get_running_loop()
    conn = None
    try:
        async with asyncio.timeout(due + timeout - loop.time()):
            conn = await pool.get()
            conn[1].write(request)
            status, close, ctype, body = await _read_response(conn[0])
    except TimeoutError:
        if conn is not None:
            pool.drop(conn)
        return "timeout", None
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        if conn is not None:
            pool.drop(conn)
        return f"connection: {type(exc).__name__}", None
    if close:
        pool.drop(conn)
    else:
        pool.put(conn)
    latency = loop.time() - due
    return ("ok" if status == 200 else _reason(status, ctype, body)), latency


async def _storm(plan: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    pools = [_Pool(h, p, plan["connections"]) for h, p in plan["targets"]]
    rate, timeout, need = float(plan["rate"]), float(plan["timeout"]), int(plan["need"])
    requests: list[bytes] = plan["requests"]
    order: list[list[int]] = plan["order"]
    asks: list[tuple[int, int, str, float]] = []
    cvms: list[tuple[int, float]] = []
    lags: list[float] = []

    async def ask(k: int, node: int, due: float) -> tuple[str, float | None]:
        key, latency = await _one(pools[node], requests[k], due, timeout)
        asks.append((k, node, key, -1.0 if latency is None else latency))
        return key, latency

    async def cvm(k: int, due: float) -> None:
        # As KeyClient: ``need`` nodes at once, one more (not yet asked) per failed ask.
        nodes = order[k]
        pending = {loop.create_task(ask(k, n, due)) for n in nodes[:need]}
        spare, ok, last = need, 0, 0.0
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                key, latency = t.result()
                if key == "ok" and latency is not None:
                    ok += 1
                    last = max(last, latency)
                elif spare < len(nodes) and ok < need:
                    pending.add(loop.create_task(ask(k, nodes[spare], due)))
                    spare += 1
        cvms.append((k, last if ok >= need else -1.0))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    start = loop.time() + 0.2
    tasks = []
    for k in range(len(requests)):
        due = start + k / rate
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        lags.append(loop.time() - due)
        tasks.append(loop.create_task(cvm(k, due)))
    sent_by = loop.time() - start
    await asyncio.gather(*tasks)
    for p in pools:
        p.close()
    lags.sort()
    return {
        "asks": asks,
        "cvms": cvms,
        "cpu_s": time.process_time() - cpu0,
        "wall_s": time.perf_counter() - wall0,
        "send_s": sent_by,
        "send_lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
        "connections_opened": [p.opened for p in pools],
    }


def generate(plan_path: Path, out_path: Path) -> None:
    """The generator process: read the plan, run the storm, write what it saw."""
    plan = msgpack.unpackb(plan_path.read_bytes())
    out = asyncio.run(_storm(plan))
    out_path.write_text(json.dumps(out))


# --- its network host -------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorHost:
    address: str
    """The nodes' address as the generator sees it (their ports are the same)."""
    prefix: tuple[str, ...]
    """The command prefix that runs a program on the generator's host."""
    what: str


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@contextmanager
def generator_host(enabled: bool = True) -> Iterator[GeneratorHost]:
    """A network namespace for the generator, linked to this host by a veth pair; TCP to
    the host's side of the link is sent on to the same port on this host's loopback (one
    DNAT rule, ``route_localnet`` on that link). Removed at the end. Without root, ``ip``
    or ``iptables``: the generator runs as a plain process on loopback."""
    usable = os.geteuid() == 0 and shutil.which("ip") and shutil.which("iptables")
    if not (enabled and usable):
        yield GeneratorHost("127.0.0.1", (), "own process, loopback (no namespace)")
        return
    tag = str(os.getpid() % 100_000)
    ns, host_if, gen_if = f"qkms-storm-{tag}", f"qsh{tag}", f"qsg{tag}"
    octet = os.getpid() % 200 + 20
    host_ip, gen_ip = f"10.251.{octet}.1", f"10.251.{octet}.2"
    dnat = ("PREROUTING", "-i", host_if, "-p", "tcp", "-d", host_ip)
    dnat += ("-j", "DNAT", "--to-destination", "127.0.0.1")
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", gen_if)
        _run("ip", "link", "set", gen_if, "netns", ns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        inside = ("ip", "netns", "exec", ns)
        _run(*inside, "ip", "addr", "add", f"{gen_ip}/30", "dev", gen_if)
        _run(*inside, "ip", "link", "set", gen_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        _run("sysctl", "-qw", f"net.ipv4.conf.{host_if}.route_localnet=1")
        _run("iptables", "-t", "nat", "-A", *dnat)
        yield GeneratorHost(host_ip, inside, f"network namespace {ns} ({gen_ip} → {host_ip})")
    finally:
        for cmd in (
            ("iptables", "-t", "nat", "-D", *dnat),
            ("ip", "link", "del", host_if),
            ("ip", "netns", "del", ns),
        ):
            subprocess.run(cmd, capture_output=True, timeout=30, check=False)


# --- one rate ---------------------------------------------------------------------------------


@dataclass
class Rate:
    offered_per_s: float
    served_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]
    cvms: int = 0
    asks: int = 0
    """Node requests sent: ``ASKED`` per CVM, plus one per failed ask while a node is left."""
    releases_ok: int = 0
    """Node requests answered ``200``."""
    requests_per_s: float = 0.0
    """Node requests answered ``200`` per second (all nodes)."""
    node_cpu_s: float = 0.0
    """CPU the server processes used from the storm's start until its last answer."""
    node_cpu_ms_per_release: float | None = None
    node_cpu_ms_per_release_net: float | None = None
    """The same, less what the servers use idle (their protocol's timers) over the window."""
    per_core: float | None = None
    """``200`` answers per CPU-second of the server processes."""
    node_rss_mib: float = 0.0
    """Largest resident size of a server process after the rate."""
    node_peak_mib: float = 0.0
    """Largest peak resident size (``VmHWM``) of a server process so far."""
    generator_cpu_s: float = 0.0
    generator_cpu_share: float = 0.0
    """The generator's CPU over the storm's wall time (cores; 2 on this machine)."""
    send_lag_p99_ms: float = 0.0
    """How late the generator sent, 99th percentile (it kept to the schedule if small)."""
    connections_opened: int = 0
    wall_s: float = 0.0


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return 1000 * values[min(len(values) - 1, int(q * len(values)))]


def _http(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: kms\r\ncontent-type: application/msgpack\r\n"
        f"accept: application/msgpack\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def run_rate(
    host: GeneratorHost,
    ports: Sequence[int],
    pids: Sequence[int],
    bodies: Sequence[bytes],
    order: Sequence[Sequence[int]],
    need: int,
    rate: float,
    workdir: Path,
    idle_cpu_per_s: float = 0.0,
) -> Rate:
    """Replay ``bodies`` (one per CVM, sent to ``need`` of the servers ``order`` names, then
    to the next on each failure) at ``rate``."""
    from bench.flood import _proc_status, cpu_seconds

    plan = {
        "targets": [[host.address, p] for p in ports],
        "rate": rate,
        "timeout": TIMEOUT,
        "connections": CONNECTIONS,
        "need": need,
        "requests": [_http("/v1/keys", b) for b in bodies],
        "order": [list(a) for a in order],
    }
    plan_path, out_path = workdir / "plan.msgpack", workdir / "seen.json"
    plan_path.write_bytes(msgpack.packb(plan))
    cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.perf_counter()
    cmd = [*host.prefix, sys.executable, "-m", "bench.storm", "--generate", str(plan_path)]
    subprocess.run([*cmd, str(out_path)], cwd=REPO, check=True, timeout=600)
    node_cpu = sum(cpu_seconds(p) for p in pids if Path(f"/proc/{p}").exists()) - cpu0
    window = time.perf_counter() - t0
    seen = json.loads(out_path.read_text())
    errors: Counter[str] = Counter(key for _, _, key, _ in seen["asks"] if key != "ok")
    served = [lat for _, lat in seen["cvms"] if lat >= 0]
    seconds = len(bodies) / rate
    ok = sum(1 for a in seen["asks"] if a[2] == "ok")
    net_cpu = max(0.0, node_cpu - idle_cpu_per_s * window)
    status = [_proc_status(p) for p in pids if Path(f"/proc/{p}").exists()]
    return Rate(
        offered_per_s=rate,
        served_per_s=len(served) / seconds,
        p50_ms=_pct(served, 0.5),
        p99_ms=_pct(served, 0.99),
        errors=dict(errors.most_common()),
        cvms=len(bodies),
        asks=len(seen["asks"]),
        releases_ok=ok,
        requests_per_s=ok / seconds,
        node_cpu_s=node_cpu,
        node_cpu_ms_per_release=1000 * node_cpu / ok if ok else None,
        node_cpu_ms_per_release_net=1000 * net_cpu / ok if ok else None,
        per_core=ok / node_cpu if node_cpu > 0 else None,
        node_rss_mib=max((s["VmRSS"] for s in status), default=0) / 2**20,
        node_peak_mib=max((s["VmHWM"] for s in status), default=0) / 2**20,
        generator_cpu_s=seen["cpu_s"],
        generator_cpu_share=seen["cpu_s"] / seen["wall_s"] if seen["wall_s"] else 0.0,
        send_lag_p99_ms=seen["send_lag_p99_ms"],
        connections_opened=sum(seen["connections_opened"]),
        wall_s=seen["wall_s"],
    )


def knee(rates: Sequence[Rate]) -> Rate | None:
    """The highest rate served in full: ≥ ``SERVED`` of its CVMs, ≤ ``ERRORS`` failed asks."""
    best = None
    for r in rates:
        if r.served_per_s >= SERVED * r.offered_per_s and sum(r.errors.values()) <= ERRORS * (
            r.asks or 1
        ):
            if best is None or r.offered_per_s > best.offered_per_s:
                best = r
    return best


# --- the committee ----------------------------------------------------------------------------


@dataclass
class Storm:
    rates: list[Rate]
    crashes: int
    shed_total: int | None
    recovered: bool
    recovery_ms: float | None
    recovery_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _shed_total(url: str) -> int:
    import httpx

    text = httpx.get(url + "/metrics", timeout=5).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("qkms_shed_total{")
        )
    )


def committee_storm(
    rates: Sequence[int], seconds: float, host: GeneratorHost, progress: Any
) -> Storm:
    from bench.flood import running_devnet
    from kms.app import devnet
    from kms.client.core import KeyRequestSession
    from kms.client.http import KeyClient
    from mpc.ids import ParticipantIndex
    from mpc.math import G2

    with tempfile.TemporaryDirectory(prefix="qkms-storm-") as tmp:
        d = Path(tmp) / "devnet"
        progress("storm: a devnet of 5 (t = 3)")
        with running_devnet(d, nodes=5, threshold=3):
            state = devnet.read_state(d)
            nodes = sorted(state["nodes"], key=lambda n: int(n["index"]))
            urls = {ParticipantIndex(int(n["index"])): n["http_url"] for n in nodes}
            ports = [int(n["http_url"].rsplit(":", 1)[1]) for n in nodes]
            pids = [int(n["pid"]) for n in nodes]
            mpk = G2.from_bytes(bytes.fromhex(state["master_public_key"]))
            app_id = bytes.fromhex(state["apps"]["demo"])
            tee = devnet.simulated_tee(d)

            def quote(rd: bytes) -> bytes:
                return tee.quote(rd, **devnet.DEMO_MEASUREMENT)

            with KeyClient(urls, mpk) as client:
                client.fetch(app_id, [("app", 1)], quote)  # the app admitted, the chain known
                chain = client.chain()
            from bench.flood import cpu_seconds

            # What the nodes use idle (their protocol's timers and gossip), to set beside.
            cpu0, t0 = sum(cpu_seconds(p) for p in pids), time.perf_counter()
            time.sleep(2.0)
            idle = (sum(cpu_seconds(p) for p in pids) - cpu0) / (time.perf_counter() - t0)
            out: list[Rate] = []
            built = 0
            for k, rate in enumerate(rates):
                count = max(1, round(rate * seconds))
                progress(f"storm: building {count:,} requests for {rate}/s")
                now = int(time.time() + seconds / 2)
                bodies = []
                for _ in range(count):
                    session = KeyRequestSession(
                        chain, app_id, [("app", 1)], now=now, rng=os.urandom
                    )
                    bodies.append(session.attach_quote(quote(session.report_data)).encode())
                built += count
                # CVM j asks nodes j·3, j·3+1, j·3+2 (mod 5) first, so every node gets 3/5 of
                # the rate, then the other two in turn, one per failed ask.
                order = [
                    [(j * ASKED + i) % len(nodes) for i in range(len(nodes))] for j in range(count)
                ]
                progress(f"storm: {rate} CVMs/s for {seconds:g} s ({k + 1}/{len(rates)})")
                out.append(run_rate(host, ports, pids, bodies, order, ASKED, rate, Path(tmp), idle))
                time.sleep(1.0)  # let the nodes' queues drain between rates
            alive = [p for p in pids if _alive(p)]
            shed = None
            try:
                shed = sum(_shed_total(n["http_url"]) for n in nodes)
            except Exception:  # a figure: None when not read
                shed = None
            recovered, recovery_ms, why = False, None, None
            try:
                with KeyClient(urls, mpk) as client:
                    t0 = time.perf_counter()
                    client.fetch(app_id, [("app", 1)], quote)
                    recovery_ms = 1000 * (time.perf_counter() - t0)
                    recovered = True
            except Exception as exc:  # a figure: the fetch after the storm failed
                why = f"{type(exc).__name__}: {str(exc)[:200]}"
            return Storm(
                out,
                len(pids) - len(alive),
                shed,
                recovered,
                recovery_ms,
                why,
                {"distinct_requests": built, "node_idle_cpu_per_s": idle},
            )


# --- the baseline -----------------------------------------------------------------------------


def baseline_storm(
    rates: Sequence[int], seconds: float, host: GeneratorHost, progress: Any
) -> Storm:
    import httpx

    from bench import baseline
    from bench.key_release import MR
    from kms.app import devnet
    from kms.protocol import EphemeralKey, KeyRequest, KeyRequestBody, PurposeVersion
    from mpc import hpke

    port = devnet.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline", "--port", str(port), "--tee-seed", "11"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tee = baseline.simulated_tee(11)
    out: list[Rate] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"http://127.0.0.1:{port}/v1/keys", content=b"", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the baseline server did not start") from None
                time.sleep(0.1)
        with tempfile.TemporaryDirectory(prefix="qkms-storm-base-") as tmp:
            for rate in rates:
                count = max(1, round(rate * seconds))
                progress(f"baseline: {rate} CVMs/s for {seconds:g} s")
                bodies = []
                for _ in range(count):
                    _, pk = hpke.generate_key_pair(os.urandom)
                    body = KeyRequestBody(
                        app_id=bytes(20),
                        purposes=(PurposeVersion("app", 1),),
                        ephemeral_keys=(EphemeralKey(1, pk),),
                        timestamp=baseline.NOW,
                        nonce=os.urandom(16),
                        min_policy_version=0,
                        epoch=0,
                    )
                    bodies.append(
                        KeyRequest(body, tee.quote(body.report_data(), **MR), b"").encode()
                    )
                order = [[0]] * count
                out.append(run_rate(host, [port], [proc.pid], bodies, order, 1, rate, Path(tmp)))
                time.sleep(1.0)
        crashed = int(proc.poll() is not None)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return Storm(out, crashed, None, crashed == 0, None)


# --- report -----------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.1f}"


def table(title: str, storm: Storm, best: Rate | None) -> Table:
    t = Table(title=title, title_justify="left")
    for col in (
        "offered CVM/s",
        "served CVM/s",
        "p50 ms",
        "p99 ms",
        "200s/s",
        "server CPU ms / 200 (less idle)",
        "200s / CPU-s",
        "RSS MiB (peak)",
        "generator CPU",
        "send lag p99",
        "errors (per node request)",
    ):
        t.add_column(col, justify="right" if col != "errors (per node request)" else "left")
    for r in storm.rates:
        mark = " ◀ knee" if best is r else ""
        t.add_row(
            f"{r.offered_per_s:,.0f}{mark}",
            f"{r.served_per_s:,.1f}",
            _ms(r.p50_ms),
            _ms(r.p99_ms),
            f"{r.requests_per_s:,.0f}",
            f"{_ms(r.node_cpu_ms_per_release)} ({_ms(r.node_cpu_ms_per_release_net)})",
            "–" if r.per_core is None else f"{r.per_core:,.0f}",
            f"{r.node_rss_mib:,.0f} ({r.node_peak_mib:,.0f})",
            f"{r.generator_cpu_share:.2f} core",
            f"{r.send_lag_p99_ms:,.1f} ms",
            ", ".join(f"{k}: {v}" for k, v in r.errors.items()) or "none",
        )
    return t


def as_json(
    committee: Storm, base: Storm, in_process_ms: float, host: GeneratorHost
) -> dict[str, Any]:
    best, base_best = knee(committee.rates), knee(base.rates)
    return {
        "rates": [
            {
                "offered_per_s": r.offered_per_s,
                "served_per_s": r.served_per_s,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "errors": r.errors,
                **{
                    k: v
                    for k, v in asdict(r).items()
                    if k not in ("offered_per_s", "served_per_s", "p50_ms", "p99_ms", "errors")
                },
            }
            for r in committee.rates
        ],
        "node_cpu_ms_per_release_http": None if best is None else best.node_cpu_ms_per_release,
        "node_cpu_ms_per_release_in_process": in_process_ms,
        "node_cpu_ms_per_release_http_less_idle": None
        if best is None
        else best.node_cpu_ms_per_release_net,
        "baseline_served_per_s": max((r.served_per_s for r in base.rates), default=0.0),
        "crashes": committee.crashes,
        "knee_per_s": None if best is None else best.offered_per_s,
        "releases_per_cpu_second_at_knee": None if best is None else best.per_core,
        "http_over_in_process": None
        if best is None or best.node_cpu_ms_per_release is None
        else best.node_cpu_ms_per_release / in_process_ms,
        "shed_total": committee.shed_total,
        "recovered": committee.recovered,
        "recovery_ms": committee.recovery_ms,
        "recovery_error": committee.recovery_error,
        "generator_host": host.what,
        "generator_cpu_share_max": max((r.generator_cpu_share for r in committee.rates), default=0),
        "distinct_requests": committee.extra.get("distinct_requests"),
        "node_idle_cpu_per_s": committee.extra.get("node_idle_cpu_per_s"),
        "baseline_knee_per_s": None if base_best is None else base_best.offered_per_s,
        "baseline_crashes": base.crashes,
        "baseline_rates": [asdict(r) for r in base.rates],
    }


@dataclass
class Run:
    committee: Storm
    base: Storm
    in_process_ms: float
    host: GeneratorHost
    seconds: float
    total_s: float


def run(
    quick: bool,
    progress: Any = lambda what: None,
    *,
    rates: Sequence[int] | None = None,
    base_rates: Sequence[int] | None = None,
    seconds: float | None = None,
    netns: bool = True,
) -> Run:
    """The in-process release cost, then the storm on a devnet, then on the baseline."""
    from bench import key_release

    rates = rates or (QUICK_RATES if quick else FULL_RATES)
    base_rates = base_rates or (QUICK_BASELINE_RATES if quick else FULL_BASELINE_RATES)
    seconds = seconds or (3.0 if quick else 10.0)
    start = time.perf_counter()
    progress("storm: in-process release")
    in_process_ms = 1000 / key_release.in_process(quick)[0].ours
    with generator_host(netns) as host:
        committee = committee_storm(rates, seconds, host, progress)
        base = baseline_storm(base_rates, seconds, host, progress)
    return Run(committee, base, in_process_ms, host, seconds, time.perf_counter() - start)


def report(console: Console, r: Run) -> dict[str, Any]:
    """Print both tables and a summary line; returns the figures as JSON."""
    committee, base = r.committee, r.base
    console.print(
        f"generator: {r.host.what}; each rate held {r.seconds:g} s; timeout {TIMEOUT:g} s"
    )
    console.print(
        table("boot storm: CVMs against a committee of 5 (t = 3)", committee, knee(committee.rates))
    )
    console.print(table("the same storm against the dstack-style baseline", base, knee(base.rates)))
    out = as_json(committee, base, r.in_process_ms, r.host)
    per_core = out["releases_per_cpu_second_at_knee"]
    ratio = out["http_over_in_process"]
    console.print(
        f"in process {r.in_process_ms:.2f} ms/release; over HTTP at the knee "
        f"{_ms(out['node_cpu_ms_per_release_http'])} ms "
        f"({'–' if ratio is None else f'{ratio:.2f}×'}); "
        f"{'–' if per_core is None else f'{per_core:,.0f}'} releases per CPU-second "
        f"(target ≥ {TARGET_PER_CPU_SECOND:.0f}); crashes {committee.crashes}; shed "
        f"{committee.shed_total}; after the storm a fetch "
        + (
            f"took {committee.recovery_ms:.0f} ms"
            if committee.recovered
            else f"failed: {committee.recovery_error}"
        )
        + f"; total {r.total_s:.0f} s"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="four rates, 3 s each (< 3 min)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--rates", type=int, nargs="+", default=None, help="CVMs per second")
    parser.add_argument("--baseline-rates", type=int, nargs="+", default=None)
    parser.add_argument("--seconds", type=float, default=None, help="each rate held this long")
    parser.add_argument("--no-netns", action="store_true", help="generator on loopback")
    parser.add_argument("--generate", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        generate(*args.generate)
        return 0
    console = Console(width=None if sys.stdout.isatty() else 200)
    with console.status("storm") as status:
        result = run(
            args.quick,
            status.update,
            rates=args.rates,
            base_rates=args.baseline_rates,
            seconds=args.seconds,
            netns=not args.no_netns,
        )
    out = report(console, result)
    console.print_json(json.dumps(out))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
