"""``kms agent``: boot time to the first key, and GetKey latency once it serves.

On a devnet of node processes on loopback (5 nodes, t = 3; ``--quick``: 3 nodes, t = 2):

* **boot to first key**: ``kms.agent.runtime.boot`` in process, repeated: the TEE view
  (one simulated quote), the app's policy from every node, then the two attested round
  trips (the key request for σ, the app-key certificate), each with a fresh quote;
* **GetKey over the socket**: ``kms agent run`` serving the devnet's dstack app, and
  ``POST /GetKey`` over its Unix socket (httpx, one kept-alive connection): local
  derivation only, no committee round trip;
* **GetKey derivation alone**: ``kms.dstack.keys.v0_get_key`` in process (HKDF, the
  public key, link 0), the floor under the socket figure.

``python -m bench.agent [--quick] [--json]``; ``make bench`` runs it with the rest.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.timing import format_seconds


@dataclass(frozen=True)
class AgentRow:
    operation: str
    samples: int
    p50: float
    p99: float
    note: str

    def as_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation,
            "samples": self.samples,
            "p50_s": self.p50,
            "p99_s": self.p99,
            "note": self.note,
        }


def _row(operation: str, samples: list[float], note: str) -> AgentRow:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return AgentRow(operation, len(samples), statistics.median(ordered), p99, note)


def _boots(directory: Path, count: int) -> list[float]:
    from kms.agent.runtime import boot, devnet_setup

    setup = devnet_setup(directory, "dstack-demo", directory / "unused.sock")
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        boot(setup)
        out.append(time.perf_counter() - t0)
    return out


def _socket_get_keys(directory: Path, count: int) -> list[float]:
    from kms.app.agentproc import AgentProcess

    sock = directory / "bench-agent.sock"
    agent = AgentProcess.devnet(directory, sock)
    try:
        agent.wait_serving()
        body = {"path": "wallet/main", "purpose": "ethereum", "algorithm": "secp256k1"}
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://localhost"
        ) as http:
            http.post("/GetKey", json=body).raise_for_status()  # warm up
            out = []
            for i in range(count):
                body["path"] = f"wallet/{i}"
                t0 = time.perf_counter()
                http.post("/GetKey", json=body).raise_for_status()
                out.append(time.perf_counter() - t0)
        return out
    finally:
        agent.stop()


def _derivations(count: int) -> list[float]:
    from kms.dstack.keys import v0_get_key

    root = bytes.fromhex("1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b")
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        v0_get_key(root, f"wallet/{i}", "ethereum", "secp256k1")
        out.append(time.perf_counter() - t0)
    return out


def rows(quick: bool) -> list[AgentRow]:
    """Start a devnet, time the agent against it, stop the devnet."""
    from bench.flood import running_devnet

    nodes, threshold = (3, 2) if quick else (5, 3)
    boots, keys = (3, 200) if quick else (10, 2000)
    with tempfile.TemporaryDirectory(prefix="qkms-bench-agent-") as tmp:
        with running_devnet(Path(tmp) / "devnet", nodes=nodes, threshold=threshold) as d:
            boot = _boots(d, boots)
            socket = _socket_get_keys(d, keys)
    derive = _derivations(keys)
    committee = f"{nodes} node processes, t = {threshold}"
    return [
        _row("boot to first key", boot, f"view + policy + 2 attested round trips; {committee}"),
        _row("GetKey over the socket", socket, "secp256k1, a new path each call"),
        _row("GetKey derivation alone", derive, "in process: HKDF, public key, link 0"),
    ]


def table(results: list[AgentRow]) -> Table:
    t = Table(title="kms agent: dstack guest API")
    for col in ("operation", "samples", "p50", "p99", "note"):
        t.add_column(col)
    for r in results:
        t.add_row(r.operation, str(r.samples), format_seconds(r.p50), format_seconds(r.p99), r.note)
    return t


def as_json(results: list[AgentRow]) -> dict[str, Any]:
    return {"agent": [r.as_json() for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller devnet, fewer samples")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = rows(args.quick)
    if args.json:
        print(json.dumps(as_json(results), indent=2))
    else:
        Console(width=None if sys.stdout.isatty() else 160).print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
