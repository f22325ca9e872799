"""Key release over the network: a devnet of processes, the CLI as a CVM would use it.

Only what needs node processes is here: ``kms key get`` as a command against a live
devnet, and large bodies streamed through hypercorn (with the node process's peak
memory). The other key release checks run on an in-process devnet
(``test_key_release_in_process.py``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kms.app.devnet import launch, wait_for_apps

KMS = [sys.executable, "-m", "kms.cli"]


def kms(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*KMS, *args], capture_output=True, text=True, timeout=120, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"kms {' '.join(args)} failed: {proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("keys") / "devnet"
    up = launch(d)
    try:
        assert wait_for_apps(d, up, 150) is not None, "the devnet did not come up"
        yield d
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()


def key(d: Path, *extra: str) -> dict[str, object]:
    return dict(
        json.loads(kms("key", "get", "--devnet", str(d), "--app", "demo", "--json", *extra).stdout)
    )


@pytest.mark.slow
def test_the_cvm_gets_the_same_key_whichever_nodes_answer(devnet: Path) -> None:
    first = key(devnet)
    assert first["epoch"] == 0 and len(str(first["fingerprint"])) == 64
    assert len(bytes.fromhex(str(first["secp256k1_public"]))) == 33
    kms("devnet", "stop-node", "--dir", str(devnet), "1")
    kms("devnet", "stop-node", "--dir", str(devnet), "2")
    try:
        assert key(devnet) == first
    finally:
        kms("devnet", "start-node", "--dir", str(devnet), "1")
        kms("devnet", "start-node", "--dir", str(devnet), "2")
    other = key(devnet, "--purpose", "disk", "--version", "2")
    assert other["fingerprint"] != first["fingerprint"]


def _peak_rss(pid: int) -> int:
    """A process's peak resident memory in bytes (``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_a_live_node_refuses_large_bodies_on_every_body_taking_route(devnet: Path) -> None:
    """Through hypercorn, 8 connections at once per route, each streaming up to 256 MiB.

    Every connection is answered 413 and closed while the client still
    writes, the node's peak resident memory grows by less than 64 MiB, it
    stays healthy, and it counts each refusal.
    """
    import threading

    state = json.loads((devnet / "devnet.json").read_text())
    node = state["nodes"][2]
    url, pid = node["http_url"], int(node["pid"])
    routes = ("/v1/keys", "/v1/policies", "/v1/evidence")
    before = _peak_rss(pid)
    sent: list[int] = []
    answers: list[int | None] = []

    def one(route: str) -> None:
        n = 0

        def chunks():  # type: ignore[no-untyped-def]
            nonlocal n
            block = bytes(65536)
            for _ in range(4096):
                n += len(block)
                yield block

        try:
            r = httpx.post(url + route, content=chunks(), timeout=60)
            answers.append(r.status_code)
        except httpx.TransportError:
            answers.append(None)  # closed while the client still wrote: also a refusal
        sent.append(n)

    threads = [threading.Thread(target=one, args=(r,)) for r in routes for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == len(threads) and set(answers) <= {413, None}, answers
    assert max(sent) < 64 * 1024 * 1024  # the node stopped reading long before the end
    assert _peak_rss(pid) - before < 64 * 1024 * 1024
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    metrics = httpx.get(url + "/metrics", timeout=10).text
    line = next(x for x in metrics.splitlines() if 'reason="http body: body-too-large"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= len(threads)
