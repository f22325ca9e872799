"""A direct lab (no link proxy, no DNAT) refuses link shaping and never starts the proxy
(in process, without namespaces); and on real namespaces (needs root), a full mesh of more
hosts than a flat subnet's neighbour entries allow connects."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from lab_required import need_lab

from kms.chaos.netlab import CONTROLLER_IP, Host, Lab, LabError


def test_a_direct_lab_exposes_ports_without_the_proxy(tmp_path: Path) -> None:
    lab = Lab("abc123", tmp_path, direct=True)
    a = Host("a", 1, "qkl-abc123-a", "10.213.2.1", "10.213.1.1")
    b = Host("b", 2, "qkl-abc123-b", "10.213.2.2", "10.213.1.2")
    lab.hosts = {"a": a, "b": b}
    lab.expose(b, 4001)  # a proxied lab would start the proxy and DNAT a's connections here
    assert lab.proxy_pid is None and lab._wired == set()
    assert lab.proxy_stats() == {} and lab.proxy_cpu_seconds() == 0.0
    lab.clear_links()  # nothing to clear
    with pytest.raises(LabError, match="no link proxy"):
        lab.set_link(a, b, delay_ms=10)
    with pytest.raises(LabError, match="no link proxy"):
        lab.reset_link(a, b)
    assert lab.proxy_pid is None


def test_a_lab_is_proxied_unless_asked(tmp_path: Path) -> None:
    assert Lab("abc123", tmp_path).direct is False


MESH_AGENT = """
import json, socket, sys, threading

port = int(sys.argv[1])
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(256)
held = []

def accept():
    while True:
        held.append(server.accept()[0])

threading.Thread(target=accept, daemon=True).start()
print("ready", flush=True)
peers = json.loads(sys.stdin.readline())
failed = {}

def connect(ip):
    try:
        held.append(socket.create_connection((ip, port), timeout=5))
    except OSError as exc:
        failed[ip] = str(exc)

threads = [threading.Thread(target=connect, args=(ip,)) for ip in peers]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(failed), flush=True)
sys.stdin.readline()  # the connections stay up (their neighbour entries in use) until told
"""


def _mesh_hosts() -> int:
    """Enough hosts that a full mesh on one flat subnet would overflow this kernel's neighbour
    table (shared by all namespaces: about hosts² entries against gc_thresh3), up to 60."""
    thresh3 = int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
    return min(60, math.isqrt(thresh3) + 3)


@pytest.mark.slow
def test_a_full_mesh_of_many_hosts_connects_and_each_host_keeps_one_neighbour(
    tmp_path: Path,
) -> None:
    """The failure it guards: on one flat /16, 34 hosts talking to each other (a 32-node
    committee, its PCCS and the load generator) filled the kernel's neighbour table, and every
    new connection after that timed out (``neighbor table overflow!``)."""
    need_lab()
    script = tmp_path / "mesh.py"
    script.write_text(MESH_AGENT)
    port = 7100
    count = _mesh_hosts()
    with Lab.create(tmp_path / "state", direct=True) as lab:
        hosts = [lab.add_host(f"h{i}") for i in range(count)]
        agents = [
            lab.popen(
                h,
                [sys.executable, str(script), str(port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for h in hosts
        ]
        for a in agents:
            assert a.stdout is not None and a.stdout.readline() == b"ready\n"
        for h, a in zip(hosts, agents, strict=True):
            assert a.stdin is not None
            a.stdin.write(json.dumps([o.ip for o in hosts if o is not h]).encode() + b"\n")
            a.stdin.flush()
        failures = {}
        for h, a in zip(hosts, agents, strict=True):
            assert a.stdout is not None
            failed = json.loads(a.stdout.readline() or b"null")
            if failed:
                failures[h.name] = failed
        assert failures == {}, (count, failures)
        for h in hosts:
            out = subprocess.run(
                ["ip", "-4", "-n", h.ns, "neigh", "show"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            neighbours = {line.split()[0] for line in out.splitlines() if line.strip()}
            assert neighbours <= {CONTROLLER_IP}, (h.name, neighbours)
        for a in agents:
            assert a.stdin is not None
            a.stdin.close()
