"""Key release: one node's throughput and the CVM's end-to-end latency, beside a baseline.

The baseline is what dstack's KMS does: the same quote verification (dcap-qvl
under the same root), the same report-data binding check and the same HPKE
encryption of the answer, but the key comes from ``HKDF(root key, app id)``
held by one process. Both are measured in this run, on the same request.

* one node, in process: the release pipeline (``kms.node.release``) vs the baseline handler
  (requests per second on one core, and their ratio);
* end to end on loopback: a CVM's ``kms.client.http.KeyClient`` against a
  devnet of 5 node processes (t = 3) over HTTP, p50 and p99, vs the baseline
  handler behind the same HTTP stack (``bench.baseline``: hypercorn +
  starlette under trio, one process); and the cold start (``fetch_keys``),
  which also fetches and verifies every node's chain.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def end_to_end(quick: bool) -> list[Result]:
    """The client against a devnet of 5 processes (t = 3) on loopback, and the baseline."""
    from kms.app import devnet
    from kms.client.http import KeyClient, fetch_keys
    from mpc.ids import ParticipantIndex as PI
    from mpc.math import G2

    requests = 30 if quick else 100
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

            cold: list[float] = []
            for _ in range(max(10, requests // 5)):
                start = time.perf_counter()
                fetch_keys(urls, mpk, app_id, [("app", 1)], quote)
                cold.append(time.perf_counter() - start)
            warm: list[float] = []
            with KeyClient(urls, mpk) as client:
                client.fetch(app_id, [("app", 1)], quote)  # chain verified, connections open
                for _ in range(requests):
                    start = time.perf_counter()
                    client.fetch(app_id, [("app", 1)], quote)
                    warm.append(time.perf_counter() - start)
        finally:
            up.terminate()
            up.wait(timeout=60)
    base = _baseline_end_to_end(requests)
    w50, w99 = _percentiles(warm)
    c50, c99 = _percentiles(cold)
    b50, b99 = _percentiles(base)
    note = (
        f"{requests} requests by a CVM holding a KeyClient: the chain verified once from the "
        "pinned key, connections kept; each request mints a simulated quote, asks 3 nodes over "
        "HTTP, decrypts, combines and checks against MPK"
    )
    verdict = "met" if w50 / b50 <= TARGET_RATIO else "missed"
    return [
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
        Result(
            "cold start (fetch_keys: fetch and verify 5 chains, then the request), p50",
            c50,
            b50,
            "s",
            f"p99 {format_seconds(c99)}; a CVM pays this once at boot",
        ),
    ]


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

    parser = argparse.ArgumentParser(prog="python -m bench.key_release")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    Console(width=None if sys.stdout.isatty() else 180).print(table(rows(args.quick)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
