"""``kms devnet``: a local committee of node processes on loopback, with real libp2p.

``up`` creates one directory per node (``kms node init``), writes the shared
``[committee]`` section (genesis participants, threshold, a genesis start a
few seconds ahead, Δ) and the peer list into every ``node.toml``, starts one
``kms node run`` process per node, follows the DKG, writes ``devnet.json`` as
soon as the first epoch is certified, and runs until SIGINT/SIGTERM, then
stops every process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from kms.node.config import load
from kms.node.setup import init_node, write_config

STATE_FILE = "devnet.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create(
    directory: Path,
    nodes: int,
    threshold: int,
    *,
    delta: float,
    start_in: float,
    window_period: float,
    refresh_interval: float,
) -> dict[str, Any]:
    if not 2 <= threshold <= nodes:
        raise ValueError("need 2 ≤ threshold ≤ nodes")
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    ports = []
    for i in range(1, nodes + 1):
        p2p, http = free_port(), free_port()
        ports.append((p2p, http))
        records.append(
            init_node(
                directory / f"node-{i}",
                index=i,
                listen=f"/ip4/127.0.0.1/tcp/{p2p}",
                http=f"127.0.0.1:{http}",
            )
        )
    committee = {
        "threshold": threshold,
        "genesis_start": round(time.time() + start_in, 3),
        "delta": delta,
        "window_period": window_period,
        "window_length": max(2.0, 4 * delta),
        "refresh_interval": refresh_interval,
        "admission_policy": "devnet: simulated TEE admitted",
        "genesis": [
            {k: r[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")}
            for r in records
        ],
    }
    peers = [
        {"index": r["index"], "multiaddr": f"/ip4/127.0.0.1/tcp/{ports[k][0]}/p2p/{r['peer_id']}"}
        for k, r in enumerate(records)
    ]
    for i in range(1, nodes + 1):
        path = directory / f"node-{i}" / "node.toml"
        import tomllib

        doc = tomllib.loads(path.read_text())
        doc["committee"] = committee
        doc["peers"] = [p for p in peers if p["index"] != i]
        write_config(path, doc)
    state = {
        "master_public_key": None,
        "threshold": threshold,
        "nodes": [
            {
                "index": r["index"],
                "peer_id": r["peer_id"],
                "multiaddr": peers[k]["multiaddr"],
                "http_url": f"http://127.0.0.1:{ports[k][1]}",
                "config": str((directory / f"node-{r['index']}" / "node.toml").resolve()),
                "pid": None,
            }
            for k, r in enumerate(records)
        ],
    }
    return state


def spawn(config: str, log_path: Path) -> int:
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "kms.cli", "node", "run", "--config", config],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    finally:
        log.close()
    return proc.pid


def read_state(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / STATE_FILE).read_text()))


def write_state(directory: Path, state: dict[str, Any]) -> None:
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(directory / STATE_FILE)


def status_of(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        r = httpx.get(url + "/v1/status", timeout=timeout)
        return dict(r.json()) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def stop_pid(pid: int | None, timeout: float = 10.0) -> None:
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)
            if waited == pid:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def node_entry(state: dict[str, Any], index: int) -> dict[str, Any]:
    for n in state["nodes"]:
        if int(n["index"]) == index:
            return dict(n)
    raise KeyError(f"no node {index} in this devnet")


def start_node(directory: Path, index: int) -> int:
    state = read_state(directory)
    node = node_entry(state, index)
    pid = spawn(node["config"], Path(node["config"]).parent / "node.log")
    for n in state["nodes"]:
        if int(n["index"]) == index:
            n["pid"] = pid
    write_state(directory, state)
    return pid


def stop_node(directory: Path, index: int, *, kill: bool = False) -> None:
    state = read_state(directory)
    node = node_entry(state, index)
    if kill and node["pid"]:
        try:
            os.kill(int(node["pid"]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        stop_pid(node["pid"])
    for n in state["nodes"]:
        if int(n["index"]) == index:
            n["pid"] = None
    write_state(directory, state)


def genesis_start(state: dict[str, Any]) -> float:
    return load(state["nodes"][0]["config"]).protocol.genesis_start
