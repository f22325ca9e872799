"""``devnet.json`` stays right when operators also use ``kms member`` by hand.

The devnet's bookkeeping (``kms.app.devnet``) against a committee whose members report
their view in ``/v1/status``: the nodes here are real node directories (``devnet.create``),
their status answers are a table the test keeps (what a live node would say), and admin
calls are recorded, so no node process runs. The processes stopped are real children.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kms.app import devnet


def committee(*indices: int) -> list[dict[str, Any]]:
    return [{"index": i, "peer_id": f"peer-{i}"} for i in indices]


class Cluster:
    """What the devnet's members answer: a status per URL, and the admin requests seen."""

    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.directory = directory
        self.status: dict[str, dict[str, Any] | None] = {}
        self.chain: set[int] = set()
        self.admin: list[tuple[str, dict[str, Any]]] = []
        self.on_approve: Any = None
        self.state = state

    def set(self, epoch: int, members: tuple[int, ...], *, urls: list[str]) -> None:
        for url in urls:
            self.status[url] = {
                "epoch": epoch,
                "committee": committee(*members),
                "threshold": 3,
                "has_share": True,
                "master_public_key": "aa" * 96,
            }

    def status_of(self, url: str, timeout: float = 1.0) -> dict[str, Any] | None:
        return self.status.get(url)

    def admin_call(self, config: str | Path, request: dict[str, Any]) -> dict[str, Any]:
        self.admin.append((str(config), request))
        if request["op"] == "propose":
            return {"ok": True, "proposal_id": "ab" * 32}
        if self.on_approve is not None:
            self.on_approve()
        return {"ok": True}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tpl") / "devnet"
    state = devnet.create(
        d, 4, 3, delta=0.5, start_in=6.0, window_period=15.0, refresh_interval=0.0
    )
    state["master_public_key"] = "aa" * 96
    devnet.write_state(d, state)
    return d


@pytest.fixture
def net(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    import shutil

    d = tmp_path / "devnet"
    shutil.copytree(template, d, symlinks=True)
    for f in template.parent.glob("*.passphrase"):
        shutil.copy(f, tmp_path / f.name)
    state = devnet.read_state(d)
    for n in state["nodes"]:
        n["config"] = str(d / f"node-{n['index']}" / "node.toml")
    devnet.write_state(d, state)
    c = Cluster(d, state)
    monkeypatch.setattr(devnet, "status_of", c.status_of)
    monkeypatch.setattr(devnet, "admin_call", c.admin_call)
    monkeypatch.setattr(devnet, "_chain_indices", lambda url: set(c.chain), raising=False)
    monkeypatch.setattr(devnet, "clear_of_window_opening", lambda p, now: 0.0, raising=False)
    return c


def urls(c: Cluster, *indices: int) -> list[str]:
    state = devnet.read_state(c.directory)
    return [str(n["http_url"]) for n in state["nodes"] if int(n["index"]) in indices]


def listed(c: Cluster) -> list[int]:
    return [int(n["index"]) for n in devnet.read_state(c.directory)["nodes"]]


def test_add_node_skips_an_index_joined_by_hand(net: Cluster) -> None:
    # Node 5 joined by hand (kms node init elsewhere, kms member propose add): the members
    # report it; devnet.json does not know it.
    net.set(1, (1, 2, 3, 4, 5), urls=urls(net, 1, 2, 3, 4))
    entry = devnet.init_joining_node(net.directory)
    assert entry["index"] == 6


def test_add_node_skips_an_index_the_chain_ever_had(net: Cluster) -> None:
    # Node 5 joined by hand and left again: no status names it, the chain does.
    net.set(2, (1, 2, 3, 4), urls=urls(net, 1, 2, 3, 4))
    net.chain = {1, 2, 3, 4, 5}
    assert devnet.init_joining_node(net.directory)["index"] == 6


def test_a_failed_add_stops_its_node_and_a_retry_reuses_its_directory(
    net: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    net.set(0, (1, 2, 3, 4), urls=urls(net, 1, 2, 3, 4))
    started: list[subprocess.Popen[bytes]] = []

    def spawn(config: str, log_path: Path, *, die_with_parent: bool = False) -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        devnet._CHILDREN[proc.pid] = proc
        started.append(proc)
        return proc.pid

    def refuse(cfg: Path, *, committee_url: str, quote: Any) -> dict[str, Any]:
        raise ValueError(f"{committee_url} serves no chain yet")

    monkeypatch.setattr(devnet, "spawn", spawn)
    monkeypatch.setattr("kms.app.setup.join_request", refuse)
    with pytest.raises(devnet.MembershipError, match="a retry reuses"):
        devnet.add_node(net.directory, timeout=1.0)
    assert listed(net) == [1, 2, 3, 4]
    assert started[0].poll() is not None  # stopped, and reaped
    first = (net.directory / "node-5" / "node.toml").read_text()
    # The retry takes the same index and the node left behind, keys and all.
    entry = devnet.init_joining_node(net.directory)
    assert entry["index"] == 5
    assert (net.directory / "node-5" / "node.toml").read_text() == first
    assert (
        entry["peer_id"] == devnet.node_dir_entry(net.directory / "node-5" / "node.toml")["peer_id"]
    )


def test_remove_node_removes_a_member_devnet_json_does_not_list(net: Cluster) -> None:
    # Node 5 joined by hand: devnet.json does not list it, the committee has it.
    members = urls(net, 1, 2, 3, 4)
    net.set(1, (1, 2, 3, 4, 5), urls=members)

    def certified() -> None:
        if sum(1 for _, r in net.admin if r["op"] == "approve") >= 2:
            net.set(2, (1, 2, 3, 4), urls=members)

    net.on_approve = certified
    res = devnet.remove_node(net.directory, 5, timeout=5.0)
    assert res["committee"] == [1, 2, 3, 4] and res["epoch"] == 2
    proposals = [r for _, r in net.admin if r["op"] == "propose"]
    assert proposals == [{"op": "propose", "change": "remove", "index": 5}]
    state = devnet.read_state(net.directory)
    assert [int(n["index"]) for n in state["removed"]] == [5]
    assert listed(net) == [1, 2, 3, 4]


def test_remove_node_refuses_an_index_that_is_not_a_member(net: Cluster) -> None:
    net.set(1, (1, 2, 3, 4), urls=urls(net, 1, 2, 3, 4))
    with pytest.raises(devnet.MembershipError, match="node 7 is not a member"):
        devnet.remove_node(net.directory, 7, timeout=1.0)
    assert net.admin == []


def test_a_member_removed_by_hand_is_dropped_and_key_get_no_longer_asks_it(net: Cluster) -> None:
    # `kms member propose remove 4` and approvals, by hand: the members report 1-3.
    net.set(1, (1, 2, 3), urls=urls(net, 1, 2, 3))
    state = devnet.read_state(net.directory)
    got, _ = devnet.simulated_cvm(net.directory, state)
    assert sorted(int(i) for i in got) == [1, 2, 3]
    assert listed(net) == [1, 2, 3]
    assert [int(n["index"]) for n in devnet.read_state(net.directory)["removed"]] == [4]


def test_a_member_joined_by_hand_in_the_devnet_directory_is_listed(net: Cluster) -> None:
    # A failed add left node-5; its proposal was certified later after all.
    net.set(0, (1, 2, 3, 4), urls=urls(net, 1, 2, 3, 4))
    devnet.init_joining_node(net.directory)
    net.set(1, (1, 2, 3, 4, 5), urls=urls(net, 1, 2, 3, 4))
    devnet.sync_members(net.directory)
    assert listed(net) == [1, 2, 3, 4, 5]
    assert devnet.init_joining_node(net.directory)["index"] == 6


def test_membership_commands_are_given_clear_of_a_window_opening() -> None:
    from kms.node.model import NodeConfig

    cfg = NodeConfig(1, (), 2, genesis_start=1000.0, delta=0.5, window_period=4.0)  # type: ignore[arg-type]
    # Windows open at 1000, 1004, 1008, ...; the commands take up to 1 s + 2 Δ = 2 s.
    assert devnet.clear_of_window_opening(cfg, 1004.1) == 0.0
    assert devnet.clear_of_window_opening(cfg, 1005.9) == 0.0
    for now in (1006.1, 1007.0, 1007.99):
        wait = devnet.clear_of_window_opening(cfg, now)
        # Past the opening of window 2 (ballots out within Δ), then clear of window 3's.
        assert 1008.0 + 0.5 <= now + wait < 1012.0 - 2.0


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _child(net: Cluster, index: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    devnet._CHILDREN[proc.pid] = proc
    state = devnet.read_state(net.directory)
    for n in state["nodes"]:
        if int(n["index"]) == index:
            n["pid"] = proc.pid
    devnet.write_state(net.directory, state)
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_stop_node_with_kill_leaves_no_zombie(net: Cluster) -> None:
    proc = _child(net, 2)
    devnet.stop_node(net.directory, 2, kill=True)
    assert not _zombie(proc.pid)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_supervisor_reaps_a_node_stopped_by_another_process(net: Cluster) -> None:
    proc = _child(net, 3)
    os.kill(proc.pid, signal.SIGTERM)  # `kms devnet stop-node` from another shell
    deadline = time.time() + 5
    while not _zombie(proc.pid) and time.time() < deadline:
        time.sleep(0.01)
    assert _zombie(proc.pid)  # exited, not reaped yet
    rounds = iter(range(3))
    devnet.wait_until_stopped(lambda: next(rounds, None) is None, every=0.01)
    assert not _zombie(proc.pid)
    assert proc.pid not in devnet._CHILDREN
