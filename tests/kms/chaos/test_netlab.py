"""The fault lab's network hosts and link proxy, on real namespaces (needs root).

Each host runs a small agent: a TCP echo server on port 7000 and a client driven by JSON lines
on stdin, so every measurement is made by a real process inside a host, through the lab's DNAT
rules and the link proxy, to the other host's real address.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_required import need_lab

from kms.chaos.netlab import (
    Host,
    Lab,
    netem_available,
    remove_stale_labs,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
PORT = 7000


AGENT = textwrap.dedent(
    """
    import json, socket, sys, threading, time

    peers = []

    def serve(conn, addr):
        peers.append(addr[0])
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    def server():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", __PORT__))
        s.listen(64)
        while True:
            conn, addr = s.accept()
            threading.Thread(target=serve, args=(conn, addr), daemon=True).start()

    threading.Thread(target=server, daemon=True).start()
    conns = {}

    def recv_exactly(s, n, timeout):
        s.settimeout(timeout)
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError("eof")
            buf += chunk
        return buf

    def handle(req):
        op = req["op"]
        if op == "ready":
            return {}
        if op == "peers":
            return {"peers": sorted(set(peers))}
        if op == "open":
            s = socket.create_connection((req["ip"], req["port"]), timeout=req.get("timeout", 5))
            conns[req["id"]] = s
            return {"peer": s.getpeername()[0]}
        if op == "echo":  # a new connection, one round trip, closed
            t = time.monotonic()
            with socket.create_connection((req["ip"], req["port"]), timeout=req["timeout"]) as s:
                s.sendall(b"hello")
                recv_exactly(s, 5, req["timeout"])
            return {"elapsed": time.monotonic() - t}
        s = conns[req["id"]]
        if op == "rtt":
            t = time.monotonic()
            s.sendall(b"x")
            recv_exactly(s, 1, req.get("timeout", 10))
            return {"rtt": time.monotonic() - t}
        if op == "send":
            s.sendall(req["data"].encode())
            return {}
        if op == "recv":
            return {"data": recv_exactly(s, req["n"], req["timeout"]).decode()}
        if op == "bulk":
            payload = b"b" * req["bytes"]
            t = time.monotonic()
            sender = threading.Thread(target=s.sendall, args=(payload,))
            sender.start()
            recv_exactly(s, len(payload), req.get("timeout", 30))
            sender.join()
            return {"elapsed": time.monotonic() - t}
        if op == "close":
            conns.pop(req["id"]).close()
            return {}
        raise ValueError(op)

    for line in sys.stdin:
        req = json.loads(line)
        try:
            reply = {"ok": True, **handle(req)}
        except Exception as exc:
            reply = {"ok": False, "error": type(exc).__name__ + ": " + str(exc)}
        print(json.dumps(reply), flush=True)
    """
).replace("__PORT__", str(PORT))


class Agent:
    def __init__(self, lab: Lab, host: Host, script: Path) -> None:
        self.host = host
        self.proc = lab.popen(
            host,
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
        )

    def call(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"agent on {self.host.name} died"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ok(self, **req: Any) -> dict[str, Any]:
        reply = self.call(**req)
        assert reply["ok"], reply
        return reply


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, dict[str, Agent]]]:
    need_lab()
    base = tmp_path_factory.mktemp("netlab")
    script = base / "agent.py"
    script.write_text(AGENT)
    with Lab.create(base / "state") as the_lab:
        a = the_lab.add_host("a")
        b = the_lab.add_host("b")
        # exposed before c exists: c's rules must be installed when it is added
        the_lab.expose(a, PORT)
        the_lab.expose(b, PORT)
        c = the_lab.add_host("c")
        the_lab.expose(c, PORT)
        agents = {h.name: Agent(the_lab, h, script) for h in (a, b, c)}
        for agent in agents.values():
            agent.ok(op="ready")
        # the echo servers are listening once a connection to each succeeds
        deadline = time.monotonic() + 20
        for src, dst in (("b", "a"), ("a", "b"), ("a", "c")):
            while not agents[src].call(op="echo", ip=agents[dst].host.ip, port=PORT, timeout=2)[
                "ok"
            ]:
                assert time.monotonic() < deadline, "the echo servers did not come up"
                time.sleep(0.1)
        yield the_lab, agents


def test_links_go_through_the_proxy_from_shadow_addresses(
    lab: tuple[Lab, dict[str, Agent]],
) -> None:
    the_lab, agents = lab
    a, b, c = (agents[n].host for n in "abc")
    assert agents["c"].ok(op="echo", ip=the_lab.url_ip(a), port=PORT, timeout=5)
    assert agents["b"].ok(op="echo", ip=a.ip, port=PORT, timeout=5)
    peers = agents["a"].ok(op="peers")["peers"]
    assert set(peers) == {b.shadow, c.shadow}, peers
    stats = the_lab.proxy_stats()
    assert stats["c>a"]["connections_total"] >= 1
    assert stats["b>a"]["bytes_up"] >= 5 and stats["b>a"]["bytes_down"] >= 5
    assert the_lab.proxy_cpu_seconds() > 0


def test_delay_adds_to_a_round_trip(lab: tuple[Lab, dict[str, Agent]]) -> None:
    the_lab, agents = lab
    a, b = agents["a"].host, agents["b"].host
    agent = agents["b"]
    agent.ok(op="open", id="d", ip=a.ip, port=PORT)
    base = min(agent.ok(op="rtt", id="d")["rtt"] for _ in range(3))
    try:
        the_lab.set_link(b, a, delay_ms=300)
        delayed = agent.ok(op="rtt", id="d")["rtt"]
        assert delayed >= base + 0.3, (base, delayed)
        # the link b>a only: a's connections to b are not delayed
        assert agents["a"].ok(op="echo", ip=b.ip, port=PORT, timeout=5)["elapsed"] < 0.3
    finally:
        the_lab.clear_links()
    assert agent.ok(op="rtt", id="d")["rtt"] < 0.3
    agent.ok(op="close", id="d")


def test_jitter_never_reorders_bytes(lab: tuple[Lab, dict[str, Agent]]) -> None:
    the_lab, agents = lab
    a, b = agents["a"].host, agents["b"].host
    agent = agents["b"]
    agent.ok(op="open", id="j", ip=a.ip, port=PORT)
    try:
        the_lab.set_link(b, a, delay_ms=20, jitter_ms=20)
        expected = ""
        for i in range(40):
            piece = f"<{i}>"
            agent.ok(op="send", id="j", data=piece)
            expected += piece
        assert agent.ok(op="recv", id="j", n=len(expected), timeout=10)["data"] == expected
    finally:
        the_lab.clear_links()
        agent.ok(op="close", id="j")


def test_stall_holds_bytes_and_release_delivers_them_in_order(
    lab: tuple[Lab, dict[str, Agent]],
) -> None:
    the_lab, agents = lab
    a, b = agents["a"].host, agents["b"].host
    agent = agents["b"]
    agent.ok(op="open", id="s", ip=a.ip, port=PORT)
    try:
        the_lab.set_link(b, a, stall=True)
        for piece in ("one.", "two.", "three."):
            agent.ok(op="send", id="s", data=piece)
        held = agent.call(op="recv", id="s", n=1, timeout=0.7)
        assert not held["ok"] and "timed out" in held["error"], held
    finally:
        the_lab.set_link(b, a, stall=False)
    assert agent.ok(op="recv", id="s", n=14, timeout=5)["data"] == "one.two.three."
    agent.ok(op="close", id="s")


def test_partition_blocks_both_ways_and_heal_restores(lab: tuple[Lab, dict[str, Agent]]) -> None:
    the_lab, agents = lab
    a, b, c = (agents[n].host for n in "abc")
    the_lab.partition(a, b)
    try:
        assert not agents["b"].call(op="echo", ip=a.ip, port=PORT, timeout=1)["ok"]
        assert not agents["a"].call(op="echo", ip=b.ip, port=PORT, timeout=1)["ok"]
        # the others are not cut
        assert agents["c"].ok(op="echo", ip=a.ip, port=PORT, timeout=5)
        assert agents["b"].ok(op="echo", ip=c.ip, port=PORT, timeout=5)
    finally:
        the_lab.heal(a, b)
    assert agents["b"].ok(op="echo", ip=a.ip, port=PORT, timeout=5)
    assert agents["a"].ok(op="echo", ip=b.ip, port=PORT, timeout=5)


def test_isolate_and_heal_all(lab: tuple[Lab, dict[str, Agent]]) -> None:
    the_lab, agents = lab
    a, b, c = (agents[n].host for n in "abc")
    the_lab.isolate(c)
    try:
        assert not agents["a"].call(op="echo", ip=c.ip, port=PORT, timeout=1)["ok"]
        assert not agents["c"].call(op="echo", ip=b.ip, port=PORT, timeout=1)["ok"]
        assert agents["a"].ok(op="echo", ip=b.ip, port=PORT, timeout=5)
    finally:
        the_lab.heal_all()
    assert agents["a"].ok(op="echo", ip=c.ip, port=PORT, timeout=5)
    assert agents["c"].ok(op="echo", ip=b.ip, port=PORT, timeout=5)


def test_one_way_blocks_new_src_to_dst_and_resets_live_ones(
    lab: tuple[Lab, dict[str, Agent]],
) -> None:
    the_lab, agents = lab
    a, b = agents["a"].host, agents["b"].host
    agents["b"].ok(op="open", id="ow", ip=a.ip, port=PORT)
    agents["a"].ok(op="open", id="back", ip=b.ip, port=PORT)
    # Both connections live end to end (through the link proxy) before the partition: an
    # open returns once the proxy accepted, and a loaded machine may not have it connected
    # onward yet, so the proxy would have no live connection to reset.
    agents["b"].ok(op="rtt", id="ow")
    agents["a"].ok(op="rtt", id="back")
    the_lab.partition_oneway(b, a)
    try:
        # b's live connection to a was reset
        gone = agents["b"].call(op="recv", id="ow", n=1, timeout=5)
        assert not gone["ok"] and "ConnectionResetError" in gone["error"], gone
        # b cannot open a new one
        assert not agents["b"].call(op="echo", ip=a.ip, port=PORT, timeout=1)["ok"]
        # a still reaches b, on its live connection and on new ones
        assert agents["a"].ok(op="rtt", id="back")["rtt"] < 1
        assert agents["a"].ok(op="echo", ip=b.ip, port=PORT, timeout=5)
    finally:
        the_lab.heal(a, b)
    assert agents["b"].ok(op="echo", ip=a.ip, port=PORT, timeout=5)
    agents["b"].ok(op="close", id="ow")
    agents["a"].ok(op="close", id="back")


def test_bandwidth_cap_slows_a_bulk_transfer(lab: tuple[Lab, dict[str, Agent]]) -> None:
    the_lab, agents = lab
    a = agents["a"].host
    agent = agents["b"]
    size = 150_000
    agent.ok(op="open", id="bw", ip=a.ip, port=PORT)
    free = agent.ok(op="bulk", id="bw", bytes=size)["elapsed"]
    the_lab.bandwidth(a, 1000)  # 125 kB/s each way: 150 kB take about 1.2 s
    try:
        capped = agent.ok(op="bulk", id="bw", bytes=size)["elapsed"]
    finally:
        the_lab.bandwidth(a, None)
    assert capped >= 0.8, (free, capped)
    assert capped > 2 * free, (free, capped)
    again = agent.ok(op="bulk", id="bw", bytes=size)["elapsed"]
    assert again < capped / 2, (again, capped)
    agent.ok(op="close", id="bw")


def test_tmpfs_fill_gives_enospc_and_unfill_frees(lab: tuple[Lab, dict[str, Agent]]) -> None:
    the_lab, _ = lab
    disk = the_lab.tmpfs("disk", 4 << 20)
    assert os.path.ismount(disk)
    (disk / "before").write_bytes(b"x" * 100_000)
    assert Lab.fill(disk) > 3 << 20
    with pytest.raises(OSError) as caught:
        with open(disk / "data", "wb") as f:
            f.write(b"y" * 65536)
            f.flush()
            os.fsync(f.fileno())
    assert caught.value.errno == 28  # ENOSPC
    Lab.unfill(disk)
    (disk / "data").write_bytes(b"y" * 65536)
    Lab.fill(disk, leave_bytes=1 << 20)
    st = os.statvfs(disk)
    assert (1 << 20) - 65536 <= st.f_bavail * st.f_frsize <= (1 << 20) + (1 << 20)
    Lab.unfill(disk)


def _lab_namespaces(lab_id: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [
        line.split()[0] for line in out.stdout.splitlines() if line.startswith(f"qkl-{lab_id}-")
    ]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_teardown_removes_every_namespace_mount_and_process(tmp_path: Path) -> None:
    need_lab()
    state = tmp_path / "state"
    lab = Lab.create(state)
    host = lab.add_host("x")
    lab.add_host("y")
    lab.expose(host, PORT)
    disk = lab.tmpfs("disk", 1 << 20)
    sleeper = lab.popen(host, ["sleep", "300"])
    assert len(_lab_namespaces(lab.id)) == 3
    assert (state / f"{lab.id}.json").exists()
    lab.teardown()
    assert _lab_namespaces(lab.id) == []
    assert not os.path.ismount(disk) and not disk.exists()
    assert sleeper.poll() is not None
    assert not (state / f"{lab.id}.json").exists()
    lab.teardown()  # idempotent


HARNESS = textwrap.dedent(
    """
    import json, socket, sys, time
    from pathlib import Path
    from kms.chaos.netlab import CONTROLLER_IP, Lab
    lab = Lab.create(Path(sys.argv[1]))
    host = lab.add_host("h")
    lab.add_host("g")
    lab.expose(host, 7000)
    disk = lab.tmpfs("disk", 1 << 20)
    sleeper = lab.popen(host, ["sleep", "300"])
    lab.enter()
    s = socket.socket()
    s.bind((CONTROLLER_IP, 0))  # only the parent namespace has this address
    s.close()
    info = {"id": lab.id, "sleeper": sleeper.pid, "proxy": lab.proxy_pid, "disk": str(disk)}
    print(json.dumps(info), flush=True)
    time.sleep(300)
    """
)


def _run_harness(state: Path, sig: int) -> dict[str, Any]:
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert harness.stdout is not None
        line = harness.stdout.readline()
        assert line, "the harness died before its lab was up"
        info: dict[str, Any] = json.loads(line)
    finally:
        harness.send_signal(sig)
        harness.wait(timeout=20)
        if harness.stdout is not None:
            harness.stdout.close()
    return info


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signalled_harness_tears_its_lab_down(tmp_path: Path, sig: int) -> None:
    need_lab()
    state = tmp_path / "state"
    info = _run_harness(state, sig)
    try:
        assert _lab_namespaces(str(info["id"])) == []
        assert not os.path.ismount(info["disk"])
        assert not _alive(int(info["sleeper"])) and not _alive(int(info["proxy"]))
        assert list(state.glob("*.json")) == []
    finally:
        remove_stale_labs(state)  # only if the harness failed to tear its lab down


def test_an_exception_in_the_lab_tears_it_down(tmp_path: Path) -> None:
    need_lab()
    with pytest.raises(ZeroDivisionError), Lab.create(tmp_path / "state") as lab:
        lab.add_host("x")
        assert _lab_namespaces(lab.id)
        _ = 1 / 0
    assert _lab_namespaces(lab.id) == []


def test_a_sigkilled_harness_leaves_a_lab_the_next_create_removes(tmp_path: Path) -> None:
    need_lab()
    state = tmp_path / "state"
    info = _run_harness(state, signal.SIGKILL)
    old = str(info["id"])
    try:
        assert len(_lab_namespaces(old)) == 3
        assert _alive(int(info["sleeper"])) and _alive(int(info["proxy"]))
        assert os.path.ismount(info["disk"])
        with Lab.create(state) as lab:
            assert lab.id != old
            assert _lab_namespaces(old) == []
            assert not os.path.ismount(info["disk"])
            assert not (state / f"{old}.json").exists()
            deadline = time.monotonic() + 5
            while _alive(int(info["sleeper"])) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(int(info["sleeper"])) and not _alive(int(info["proxy"]))
            assert (state / f"{lab.id}.json").exists()
        assert _lab_namespaces(lab.id) == []
    finally:
        remove_stale_labs(state)  # whatever failed above, leave nothing behind


def test_netem_detection_matches_the_kernel(tmp_path: Path) -> None:
    need_lab()
    has = Path("/proc/modules").exists() and any(
        line.startswith("sch_netem ") for line in Path("/proc/modules").read_text().splitlines()
    )
    found = netem_available(tmp_path / "state")
    assert isinstance(found, bool)
    assert list((tmp_path / "state").glob("*.json")) == []  # the probe's lab is gone
    if has:
        assert found


class _Control:
    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 20
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                assert time.monotonic() < deadline, "the proxy did not open its control socket"
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")

    def raw(self, line: bytes) -> dict[str, Any]:
        self.file.write(line + b"\n")
        self.file.flush()
        reply: dict[str, Any] = json.loads(self.file.readline())
        return reply

    def call(self, **req: Any) -> dict[str, Any]:
        return self.raw(json.dumps(req).encode())

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_proxy_bounds_its_buffer_rejects_bad_requests_and_resets(tmp_path: Path) -> None:
    # The proxy alone, on loopback in this namespace: no root needed.
    from kms.chaos.proxy import BUFFER_CAP, CHUNK

    sink = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(sink.accept()[0]), daemon=True).start()
    control_path = tmp_path / "proxy.sock"
    proxy = subprocess.Popen(
        [sys.executable, "-m", "kms.chaos.proxy", "--control", str(control_path)], cwd=str(ROOT)
    )
    control = _Control(control_path)
    client: socket.socket | None = None
    try:
        for bad in (b"not json", b"[1, 2]", b'{"op": "nope"}', b'{"op": "listen"}'):
            assert control.raw(bad)["ok"] is False
        assert control.call(op="ping")["ok"]
        port = control.call(
            op="listen",
            listen_ip="127.0.0.1",
            listen_port=0,
            upstream_ip="127.0.0.1",
            upstream_port=sink.getsockname()[1],
            bind_ip="127.0.0.1",
            link="x>y",
        )["port"]
        assert control.call(op="set_link", link="x>y", stall=True)["ok"]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.setblocking(False)
        block = b"z" * 65536
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.0:  # until the proxy has stopped reading
            try:
                client.send(block)
                quiet_since = time.monotonic()
            except BlockingIOError:
                time.sleep(0.02)
        link = control.call(op="stats")["links"]["x>y"]
        assert BUFFER_CAP <= link["bytes_up"] < BUFFER_CAP + CHUNK, link
        assert link["connections_live"] == 1
        assert control.call(op="reset", link="x>y")["reset"] == 1
        client.setblocking(True)
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        assert control.call(op="stats")["links"]["x>y"]["resets"] == 1
    finally:
        control.close()
        proxy.kill()
        proxy.wait()
        if client is not None:
            client.close()
        for s in held:
            s.close()
        sink.close()
