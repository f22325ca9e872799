"""Key release: one node's throughput and the CVM's end-to-end latency, beside a baseline.

The baseline is what dstack's KMS does: the same quote verification (dcap-qvl
under the same root), the same report-data binding check and the same HPKE
encryption of the answer, but the key comes from ``HKDF(root key, app id)``
held by one process. Both are measured in this run, on the same request.

* one node, in process: the release pipeline (``kms.node.release``) vs the baseline handler
  (requests per second on one core, and their ratio);
* end to end on loopback: a CVM's ``kms.client.http.KeyClient`` against a
  devnet of 5 node processes (t = 3) over HTTP, p50 and p99, vs the baseline
  handler behind the same HTTP server (``bench.baseline``: ``kms.api.front``
  under trio, one process); and the cold start (``fetch_keys``),
  which also fetches and verifies every node's chain.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from rich.console import Console
from rich.table import Table

from bench import baseline
from bench.timing import format_seconds

NOW = baseline.NOW
MR = {
    name: bytes([i + 1]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
TARGET_RPS = 300.0
TARGET_P50 = 0.010
TARGET_P99 = 0.030
TARGET_RATIO = 3.0


@dataclass(frozen=True)
class Result:
    name: str
    ours: float
    baseline: float
    unit: str
    note: str

    @property
    def ratio(self) -> float:
        """How many times the baseline's cost ours is (≥ 1 means slower)."""
        if self.unit == "req/s":
            return self.baseline / self.ours if self.ours else float("nan")
        return self.ours / self.baseline if self.baseline else float("nan")


def _committee():  # type: ignore[no-untyped-def]
    """Shares of a 5-of-3 committee and its chain, from the node cores on the mesh."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from mesh import Mesh, make_nodes

    from kms.node.core import NodeConfig, NodeCore
    from mpc.ids import ParticipantIndex as PI
    from mpc.membership import verify_chain

    nodes = make_nodes(range(1, 6), 7)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, 6))
    rng = random.Random(1)
    cores = {
        PI(i): NodeCore(
            NodeConfig(PI(i), genesis, 3, genesis_start=1.0, delta=0.5, window_period=1000.0),
            nodes[PI(i)].identity,
            nodes[PI(i)].dkg_key,
            rng=rng.randbytes,
        )
        for i in range(1, 6)
    }
    Mesh(cores, seed=1, max_delay=0.15, ticks=[k * 0.25 for k in range(80)]).run_until(19.0)
    chain = verify_chain(cores[PI(1)].chain, mpk=cores[PI(1)].state.mpk)
    return cores, chain, nodes


def _rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def in_process(quick: bool) -> list[Result]:
    from kms.attest import Verifier
    from kms.client.core import KeyRequestSession
    from kms.node.release import Admitted, KeyReleaser, Released, release_with
    from kms.policy import AppPolicy, Measurement, OwnerKey
    from kms.protocol import KeyRequest
    from mpc.ids import ParticipantIndex as PI

    cores, chain, nodes = _committee()
    tee = baseline.simulated_tee(9)
    owner = OwnerKey.from_seed(bytes(32))
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=1,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**MR)],
        kms_mpk=chain.mpk.to_bytes(),
        not_before=NOW - 60,
    )
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    collateral = tee.collateral(NOW)
    releaser = KeyReleaser(PI(1), nodes[PI(1)].identity, verifier)
    session = KeyRequestSession(chain, owner.app_id(), [("app", 1)], now=NOW, rng=os.urandom)
    raw = session.attach_quote(tee.quote(session.report_data, **MR)).encode()
    share = cores[PI(1)].share

    def ours() -> object:
        # As the HTTP app does: decode once, then the pipeline with its inputs as values.
        res = release_with(
            releaser,
            KeyRequest.decode(raw),
            now=NOW,
            epoch=0,
            share=share,
            nonce_seen=False,
            app=Admitted(policy),
            collateral=collateral,
            rng=os.urandom,
        )
        if not isinstance(res, Released):
            raise RuntimeError(res)
        return res

    base = baseline.handler(verifier, collateral, os.urandom(32))
    seconds = 1.0 if quick else 3.0
    r_ours = _rate(ours, seconds)
    r_base = _rate(lambda: base(raw), seconds)
    return [
        Result(
            "one node, key requests per second (in process, one core)",
            r_ours,
            r_base,
            "req/s",
            f"target ≥ {TARGET_RPS:.0f}/s: {'met' if r_ours >= TARGET_RPS else 'missed'}; "
            f"ratio target ≤ {TARGET_RATIO:.0f}×: {'met' if r_base / r_ours <= TARGET_RATIO else 'missed'}; "
            "both verify the quote (dcap-qvl), the binding, and seal with HPKE; ours also checks "
            "the policy and computes s_i·H(id)",
        )
    ]


def _percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def _baseline_end_to_end(requests: int) -> list[float]:
    """The baseline served over HTTP (same stack as a node): one request, one answer."""
    import httpx

    from kms.app import devnet
    from kms.protocol import EphemeralKey, KeyRequest, KeyRequestBody, PurposeVersion, release_info
    from mpc import hpke

    port = devnet.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.baseline", "--port", str(port), "--tee-seed", "11"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tee = baseline.simulated_tee(11)
    url = f"http://127.0.0.1:{port}/v1/keys"
    purpose = PurposeVersion("app", 1)
    times: list[float] = []
    try:
        with httpx.Client(timeout=5.0) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.post(url, content=b"")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the baseline server did not start") from None
                    time.sleep(0.1)
            for i in range(requests + 1):
                start = time.perf_counter()
                sk, pk = hpke.generate_key_pair(os.urandom)
                body = KeyRequestBody(
                    app_id=bytes(20),
                    purposes=(purpose,),
                    ephemeral_keys=(EphemeralKey(1, pk),),
                    timestamp=NOW,
                    nonce=os.urandom(16),
                    min_policy_version=0,
                    epoch=0,
                )
                req = KeyRequest(body, tee.quote(body.report_data(), **MR), b"")
                answer = http.post(url, content=req.encode())
                enc, ct = msgpack.unpackb(answer.content)
                info = release_info(req.request_hash(), purpose, 0, 1)
                hpke.open(enc, sk, info, info, ct)
                if i:  # the first request opens the connection
                    times.append(time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return times


STEPS = (
    ("quote", "the simulated TEE mints a quote over the request's report data"),
    ("request", "ephemeral HPKE keys (one per member), the body, its hash, the encoding"),
    (
        "http, slowest of t",
        "POST to the t nodes at once until the last needed answer is "
        "decoded: the nodes' work (quote check, policy, partial, sealing, store write), "
        "their HTTP server, loopback, httpx",
    ),
    ("http, per node", "one POST as a request thread sees it (median over all)"),
    (
        "after the last answer",
        "from the t-th answer's arrival to the key in hand: that answer's signature, HPKE "
        "open and partial, the combination and its pairing check against the pinned MPK "
        "(the earlier answers are checked while it is awaited)",
    ),
    ("answers, all", "CPU of checking all t answers, per fetch"),
    (
        "dispatch",
        "the rest: handing the requests to the threads and the answers back, "
        "the chain check, the session's bookkeeping",
    ),
)
"""The per-step breakdown of a warm fetch, as the client's own timestamps give it."""


@dataclass
class StepTimes:
    """Seconds per step of each warm fetch (``STEPS``), and the totals."""

    total: list[float]
    steps: dict[str, list[float]]
    client_cpu: float = 0.0
    """CPU seconds of the client process (all its threads) per warm fetch."""
    node_cpu: float = 0.0
    """CPU seconds of all node processes together per warm fetch (``t`` releases, and
    whatever else the nodes did meanwhile: their libp2p links, timers)."""
    releases: float = 0.0
    """Key requests the nodes answered per warm fetch."""

    def medians(self) -> dict[str, float]:
        return {k: statistics.median(v) if v else 0.0 for k, v in self.steps.items()}


@contextmanager
def _timed_client() -> Iterator[dict[str, list[float]]]:
    """Timestamp the client's steps while the block runs: the key session's building and
    answer handling, each request thread's POST, the request's encoding (all in this
    process; a benchmark's instrumentation, undone on exit)."""
    from kms.client import http as client_http
    from kms.client.core import KeyRequestSession
    from kms.protocol import KeyRequest

    marks: dict[str, list[float]] = {"request": [], "answers": [], "posts": [], "ends": []}
    lock = threading.Lock()

    class Timed(KeyRequestSession):
        def __init__(self, *args: Any, **kw: Any) -> None:
            t = time.perf_counter()
            super().__init__(*args, **kw)
            marks["request"].append(time.perf_counter() - t)

        def attach_quote(self, quote: bytes, event_log: bytes = b"") -> KeyRequest:
            t = time.perf_counter()
            req = super().attach_quote(quote, event_log)
            marks["request"].append(time.perf_counter() - t)
            return req

        def receive(self, index: Any, answer: Any) -> None:
            t = time.perf_counter()
            super().receive(index, answer)
            marks["answers"].append(time.perf_counter() - t)

    send = client_http.KeyClient._send
    encode = KeyRequest.encode

    def timed_send(self: Any, *args: Any) -> object:
        t = time.perf_counter()
        try:
            return send(self, *args)
        finally:
            end = time.perf_counter()
            with lock:
                marks["posts"].append(end - t)
                marks["ends"].append(end)

    def timed_encode(self: KeyRequest) -> bytes:
        t = time.perf_counter()
        out = encode(self)
        marks["request"].append(time.perf_counter() - t)
        return out

    patches = [
        (client_http, "KeyRequestSession", Timed),
        (client_http.KeyClient, "_send", timed_send),
        (KeyRequest, "encode", timed_encode),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield marks
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def warm_fetches(
    client: Any, app_id: bytes, quote: Callable[[bytes], bytes], n: int, **fetch: Any
) -> StepTimes:
    """``n`` warm fetches by ``client`` (its chain verified, connections open), each timed
    end to end and split into ``STEPS``; ``fetch`` is passed on to ``KeyClient.fetch``."""
    out = StepTimes([], {name: [] for name, _ in STEPS})
    quote_times: list[float] = []

    def timed_quote(rd: bytes) -> bytes:
        t = time.perf_counter()
        q = quote(rd)
        quote_times.append(time.perf_counter() - t)
        return q

    with _timed_client() as marks:
        for _ in range(n):
            for times in (*marks.values(), quote_times):
                times.clear()
            start = time.perf_counter()
            res = client.fetch(app_id, [("app", 1)], timed_quote, **fetch)
            end = time.perf_counter()
            total = end - start
            posts = sorted(marks["posts"])
            ends = sorted(marks["ends"])
            # The fetch waits for t answers: the t-th fastest POST is the one it waited on.
            k = min(len(posts), len(res.asked)) - 1
            step = {
                "quote": sum(quote_times),
                "request": sum(marks["request"]),
                "http, slowest of t": posts[k] if posts else 0.0,
                "after the last answer": end - ends[k] if ends else 0.0,
            }
            step["dispatch"] = max(0.0, total - sum(step.values()))
            step["answers, all"] = sum(marks["answers"])
            out.total.append(total)
            for name, seconds in step.items():
                out.steps[name].append(seconds)
            out.steps["http, per node"].extend(posts)
    return out


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far, from ``/proc`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_to_end(quick: bool, *, requests: int | None = None) -> list[Result]:
    """The client against a devnet of 5 processes (t = 3) on loopback, and the baseline."""
    return end_to_end_steps(quick, requests=requests)[0]


def end_to_end_steps(
    quick: bool, *, requests: int | None = None, cold: bool = True
) -> tuple[list[Result], StepTimes]:
    """``end_to_end`` and the per-step times of its warm fetches."""
    from kms.app import devnet
    from kms.client.http import KeyClient, fetch_keys
    from mpc.ids import ParticipantIndex as PI
    from mpc.math import G2

    requests = requests or (30 if quick else 100)
    with tempfile.TemporaryDirectory(prefix="qkms-bench-") as tmp:
        d = Path(tmp) / "devnet"
        up = devnet.launch(d)
        try:
            if devnet.wait_for_apps(d, up, 120) is None:
                raise RuntimeError("the devnet did not come up")
            state = devnet.read_state(d)
            mpk = G2.from_bytes(bytes.fromhex(state["master_public_key"]))
            app_id = bytes.fromhex(state["apps"]["demo"])
            urls = {PI(int(n["index"])): n["http_url"] for n in state["nodes"]}
            tee = devnet.simulated_tee(d)

            def quote(rd: bytes) -> bytes:
                return tee.quote(rd, **devnet.DEMO_MEASUREMENT)

            cold_times: list[float] = []
            for _ in range(max(10, requests // 5) if cold else 0):
                start = time.perf_counter()
                fetch_keys(urls, mpk, app_id, [("app", 1)], quote)
                cold_times.append(time.perf_counter() - start)
            nodes = [int(n["pid"]) for n in state["nodes"] if n.get("pid")]
            with KeyClient(urls, mpk) as client:
                for _ in range(3):  # chain verified, connections open, threads started
                    client.fetch(app_id, [("app", 1)], quote)
                node_cpu = sum(_cpu(p) for p in nodes)
                client_cpu = time.process_time()
                steps = warm_fetches(client, app_id, quote, requests)
                steps.client_cpu = (time.process_time() - client_cpu) / requests
                steps.node_cpu = (sum(_cpu(p) for p in nodes) - node_cpu) / requests
                steps.releases = len(steps.steps["http, per node"]) / requests
        finally:
            up.terminate()
            up.wait(timeout=60)
    base = _baseline_end_to_end(requests)
    w50, w99 = _percentiles(steps.total)
    b50, b99 = _percentiles(base)
    note = (
        f"{requests} requests by a CVM holding a KeyClient: the chain verified once from the "
        "pinned key, connections and threads kept; each request mints a simulated quote, asks "
        "3 nodes over HTTP, decrypts, combines and checks against MPK"
    )
    verdict = "met" if w50 / b50 <= TARGET_RATIO else "missed"
    out = [
        Result(
            "client end to end, p50 (n = 5, t = 3, loopback)",
            w50,
            b50,
            "s",
            f"target ≤ 10 ms: {'met' if w50 <= TARGET_P50 else 'missed'}; "
            f"ratio to the baseline over HTTP ≤ {TARGET_RATIO:.0f}×: {verdict}; {note}",
        ),
        Result(
            "client end to end, p99",
            w99,
            b99,
            "s",
            f"target ≤ 30 ms: {'met' if w99 <= TARGET_P99 else 'missed'}",
        ),
    ]
    if cold_times:
        c50, c99 = _percentiles(cold_times)
        out.append(
            Result(
                "cold start (fetch_keys: fetch and verify 5 chains, then the request), p50",
                c50,
                b50,
                "s",
                f"p99 {format_seconds(c99)}; a CVM pays this once at boot",
            )
        )
    return out, steps


def steps_table(steps: StepTimes) -> Table:
    """The warm fetch's median time per step, and its share of the median fetch."""
    tbl = Table(title="a warm fetch, step by step (client timestamps; medians)")
    for col in ("step", "median", "share of p50", "what"):
        tbl.add_column(col)
    p50 = statistics.median(steps.total) if steps.total else float("nan")
    med = steps.medians()
    for name, what in STEPS:
        share = "" if name in ("http, per node", "answers, all") else f"{med[name] / p50:.0%}"
        tbl.add_row(name, format_seconds(med[name]), share, what)
    tbl.add_row(
        "client CPU per fetch",
        format_seconds(steps.client_cpu),
        f"{steps.client_cpu / p50:.0%}",
        "process time of the client (every thread), per warm fetch",
    )
    tbl.add_row(
        "nodes' CPU per fetch",
        format_seconds(steps.node_cpu),
        f"{steps.node_cpu / p50:.0%}",
        f"all 5 node processes together, {steps.releases:.1f} releases per fetch "
        f"({format_seconds(steps.node_cpu / max(steps.releases, 1.0))} per release with the "
        "nodes' other work)",
    )
    tbl.add_row(
        "CPU floor on 2 cores",
        format_seconds((steps.client_cpu + steps.node_cpu) / 2),
        f"{(steps.client_cpu + steps.node_cpu) / 2 / p50:.0%}",
        "(client + nodes) / 2: no schedule of these processes on this machine beats it",
    )
    tbl.add_row(
        "whole fetch",
        format_seconds(p50),
        "100%",
        f"p99 {format_seconds(_percentiles(steps.total)[1])}",
    )
    return tbl


def table(rs: list[Result]) -> Table:
    tbl = Table(
        title="key release: ours beside a centralised (dstack-style) baseline, measured in this run"
    )
    for col in ("measure", "ours", "baseline or target", "ratio", "note"):
        tbl.add_column(col)
    for r in rs:
        fmt = (lambda v: f"{v:,.0f} req/s") if r.unit == "req/s" else format_seconds
        tbl.add_row(r.name, fmt(r.ours), fmt(r.baseline), f"{r.ratio:.2f}", r.note)
    return tbl


def rows(quick: bool) -> list[Result]:
    out = in_process(quick)
    try:
        out += end_to_end(quick)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        out.append(
            Result(
                f"client end to end: not measured ({type(exc).__name__}: {exc})", 0.0, 1.0, "s", ""
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.key_release")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--warm-only",
        action="store_true",
        help="only the warm fetch end to end and its baseline (no in-process rate, no cold start)",
    )
    parser.add_argument("--requests", type=int, default=None, help="warm fetches to time")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 180)
    out = [] if args.warm_only else in_process(args.quick)
    steps: StepTimes | None = None
    try:
        e2e, steps = end_to_end_steps(args.quick, requests=args.requests, cold=not args.warm_only)
        out += e2e
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        out.append(
            Result(
                f"client end to end: not measured ({type(exc).__name__}: {exc})", 0.0, 1.0, "s", ""
            )
        )
    console.print(table(out))
    if steps is not None:
        console.print(steps_table(steps))
    if args.json is not None:
        doc: dict[str, Any] = {
            "results": [
                {"name": r.name, "ours": r.ours, "baseline": r.baseline, "unit": r.unit}
                for r in out
            ]
        }
        if steps is not None:
            p50, p99 = _percentiles(steps.total)
            doc["warm"] = {"p50": p50, "p99": p99, "n": len(steps.total)}
            doc["steps_median"] = steps.medians()
            doc["cpu_per_fetch"] = {
                "client": steps.client_cpu,
                "nodes": steps.node_cpu,
                "releases": steps.releases,
            }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
