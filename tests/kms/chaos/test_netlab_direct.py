"""A direct lab (no link proxy, no DNAT) refuses link shaping and never starts the proxy;
in process, without namespaces (``bench.scale`` runs it on real ones)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kms.chaos.netlab import Host, Lab, LabError


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
