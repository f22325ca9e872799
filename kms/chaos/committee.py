"""The lab's committee: real node processes on lab hosts, its PCCS, its apps, and the operator.

Built from the devnet's pieces (``kms.app.devnet``, ``kms.app.setup``): the same simulated TEE
directory, node admission policy, owner keys and demo policies; what differs is where things
run. Node ``i`` runs on host ``n<i>`` (libp2p on ``<ip>:4001``, HTTP on ``<ip>:8080``), its data
directory is a size-limited tmpfs of the lab (so the nemesis can fill it), its log is on the
real disk under ``OUT/logs``, and its clock reads a libfaketime offset file (``+0`` until the
nemesis skews it). The PCCS runs on host ``pccs``.

Nodes run the lab's node program (``python -m kms.chaos.nodeproc``, with ``[testing] lab =
true`` in their ``node.toml``, adversaries and broken-build switches on its command line).

The operator's flows (join, remove, threshold change, refresh) are the devnet's membership
flow: propose at one live member and approve at the others over their admin sockets (Unix
sockets: not network-namespaced, never faulted), then wait for the next epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from kms.app import devnet
from kms.app.setup import init_node, join_request, write_config

P2P_PORT = 4001
HTTP_PORT = 8080
PCCS_PORT = 8081
TMPFS_BYTES = 48 * 1024 * 1024
"""The size of a node's data tmpfs: far above what a short run stores, small enough to fill."""
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")


class LabHost(Protocol):
    name: str
    ip: str
    shadow: str


class LabNet(Protocol):
    """What the committee needs of the lab (``kms.chaos.netlab.Lab``)."""

    def add_host(self, name: str) -> Any: ...
    def expose(self, host: Any, port: int) -> None: ...
    def popen(
        self,
        host: Any,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdout: Any = None,
        stderr: Any = None,
        cwd: Any = None,
    ) -> subprocess.Popen[bytes]: ...
    def tmpfs(self, name: str, size_bytes: int) -> Path: ...


class CommitteeError(RuntimeError):
    """The lab committee could not be set up or changed (the message says why)."""


@dataclass
class LabNode:
    index: int
    host: Any
    dir: Path
    config: Path
    log: Path
    skew_file: Path
    peer_id: str = ""
    adversary: list[dict[str, Any]] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    member: bool = True
    paused: bool = False
    retired: bool = False
    """Removed from the committee, or its join failed: stopped, never restarted."""
    lost: bool = False
    """Its data directory was erased (``data_loss``): never restarted; the operator replaces
    it through the membership flow."""

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{HTTP_PORT}"

    @property
    def multiaddr(self) -> str:
        return f"/ip4/{self.host.ip}/tcp/{P2P_PORT}/p2p/{self.peer_id}"

    @property
    def byzantine(self) -> bool:
        return bool(self.adversary)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def entry(self) -> dict[str, Any]:
        """Its entry as ``devnet.json`` lists nodes (what the devnet's flows read)."""
        return {
            "index": self.index,
            "peer_id": self.peer_id,
            "multiaddr": self.multiaddr,
            "http_url": self.url,
            "config": str(self.config),
            "pid": self.proc.pid if self.running and self.proc else None,
        }


def admin_call(config: str | Path, request: dict[str, Any]) -> dict[str, Any]:
    """One admin-channel request to a lab node (``kms.app.devnet.admin_call`` for a config
    with the lab's ``[testing]`` section)."""
    import trio

    from kms.api import admin
    from kms.app.config import load

    cfg = load(config, testing=True)
    token = cfg.admin_token_file.read_text().strip()
    try:
        return dict(trio.run(admin.call, cfg.admin_socket, {**request, "token": token}))
    except OSError as exc:
        return {"ok": False, "error": f"admin channel unreachable: {exc}"}


def propose_and_approve(
    state: dict[str, Any], request: dict[str, Any], *, exclude: int | None = None
) -> tuple[str, dict[str, Any]]:
    """``kms.app.devnet.propose_and_approve`` for lab nodes: propose at one live member,
    approve at every other, clear of a decision window's opening."""
    from kms.app.config import load

    ref, live = devnet._live_members(state)
    voters = [n for n in live if int(n["index"]) != exclude]
    if len(voters) < int(ref["threshold"]):
        raise devnet.MembershipError(
            f"{len(voters)} members answer, {ref['threshold']} approvals are needed"
        )
    protocol = load(voters[0]["config"], testing=True).protocol
    time.sleep(devnet.clear_of_window_opening(protocol, time.time()))
    reply = admin_call(voters[0]["config"], {"op": "propose", **request})
    if not reply.get("ok"):
        raise devnet.MembershipError(f"node {voters[0]['index']} refused: {reply.get('error')}")
    pid = str(reply["proposal_id"])
    for n in voters[1:]:
        admin_call(n["config"], {"op": "approve", "proposal_id": pid})
    return pid, ref


class LabCommittee:
    def __init__(
        self,
        lab: LabNet,
        work: Path,
        logs: Path,
        *,
        nodes: int,
        threshold: int,
        delta: float,
        window_period: float,
        window_length: float | None,
        refresh_interval: float,
        adversaries: dict[int, list[dict[str, Any]]] | None = None,
        broken: str | None = None,
        delay_ms: float = 0.0,
    ) -> None:
        self.lab = lab
        self.delay_ms = delay_ms
        """Every node holds each frame it receives this long (``nodeproc --delay-ms``)."""
        self.work = work
        self.logs = logs
        self.n = nodes
        self.threshold = threshold
        self.delta = delta
        self.window_period = window_period
        self.window_length = window_length
        self.refresh_interval = refresh_interval
        self.adversaries = adversaries or {}
        self.broken = broken
        self.nodes: dict[int, LabNode] = {}
        self.mpk: str | None = None
        self.apps: dict[str, str] = {}
        self.pccs: Any = None
        self.pccs_proc: subprocess.Popen[bytes] | None = None
        self.tee_dir = work / "simulated-tee"
        self.committee_doc: dict[str, Any] = {}
        self.records: dict[int, dict[str, Any]] = {}
        work.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)

    # --- set-up -----------------------------------------------------------------------

    def pccs_url(self) -> str:
        return f"http://{self.pccs.ip}:{PCCS_PORT}"

    def start_pccs(self) -> None:
        self.pccs = self.lab.add_host("pccs")
        self.lab.expose(self.pccs, PCCS_PORT)
        argv = [sys.executable, "-m", "kms.chaos.workload", "pccs"]
        argv += ["--collateral", str(self.tee_dir / "collateral.json")]
        argv += ["--host", self.pccs.ip, "--port", str(PCCS_PORT)]
        log = open(self.logs / "pccs.log", "ab")
        self.pccs_proc = self.lab.popen(self.pccs, argv, stdout=log, stderr=log)
        log.close()

    def _new_node(self, index: int) -> LabNode:
        host = self.lab.add_host(f"n{index}")
        self.lab.expose(host, P2P_PORT)
        self.lab.expose(host, HTTP_PORT)
        mount = self.lab.tmpfs(f"n{index}", TMPFS_BYTES)
        data = mount / "node"
        skew = self.work / f"n{index}.faketime"
        skew.write_text("+0\n")
        node = LabNode(
            index=index,
            host=host,
            dir=data,
            config=data / "node.toml",
            log=self.logs / f"n{index}.log",
            skew_file=skew,
            adversary=list(self.adversaries.get(index, [])),
        )
        # The devnet's operator flows find node directories as ``node-<i>`` of its directory.
        link = self.work / f"node-{index}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(data, target_is_directory=True)
        return node

    def _init(self, node: LabNode, committee: dict[str, Any] | None, peers: Any) -> dict[str, Any]:
        record = init_node(
            node.dir,
            index=node.index,
            listen=f"/ip4/{node.host.ip}/tcp/{P2P_PORT}",
            http=f"{node.host.ip}:{HTTP_PORT}",
            committee=committee,
            peers=peers,
            passphrase_file=self.work / f"n{node.index}.passphrase",
            simulated_tee=self.tee_dir.resolve(),
            pccs_url=self.pccs_url() if self.pccs is not None else None,
        )
        node.peer_id = str(record["peer_id"])
        return record

    def _configure(self, node: LabNode, committee: dict[str, Any], peers: list[Any]) -> None:
        doc = tomllib.loads(node.config.read_text())
        doc["committee"] = committee
        doc["peers"] = [p for p in peers if p["index"] != node.index]
        doc["node"]["accept_simulated_quotes"] = True
        doc["node"]["simulated_root_ca"] = str((self.tee_dir / "root.der").resolve())
        doc["node"]["collateral_file"] = str((self.tee_dir / "collateral.json").resolve())
        doc["node"]["policies_dir"] = "policies"
        doc["node"]["simulated_tee"] = str(self.tee_dir.resolve())
        doc["testing"] = {"lab": True}
        write_config(node.config, doc)

    def create(self) -> None:
        """Hosts, TEE files, PCCS, node directories and configs of the genesis committee."""
        devnet.simulated_tee_files(self.work)
        self.start_pccs()
        for i in range(1, self.n + 1):
            self.nodes[i] = self._new_node(i)
        self.records = {i: self._init(node, None, None) for i, node in self.nodes.items()}

    def configure(self, *, start_in: float) -> None:
        """Write the genesis committee into every node's config, the genesis DKG ``start_in``
        seconds from now (call right before ``start_all``: a node that starts after the
        genesis start joins its DKG late)."""
        self.committee_doc = {
            "threshold": self.threshold,
            "genesis_start": round(time.time() + start_in, 3),
            "delta": self.delta,
            "window_period": self.window_period,
            "window_length": self.window_length or max(2.0, 4 * self.delta),
            "refresh_interval": self.refresh_interval,
            "admission_policy": devnet.node_admission_policy().encode().hex(),
            "genesis": [
                {k: r[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")}
                for r in self.records.values()
            ],
        }
        peers = [{"index": n.index, "multiaddr": n.multiaddr} for n in self.nodes.values()]
        for node in self.nodes.values():
            self._configure(node, self.committee_doc, peers)

    def genesis_start(self) -> float:
        return float(self.committee_doc["genesis_start"])

    # --- processes --------------------------------------------------------------------

    def node_env(self, node: LabNode) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("KMS_DIE_WITH_PARENT", None)
        if FAKETIME_LIB.exists():
            env["LD_PRELOAD"] = str(FAKETIME_LIB)
            env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            env["FAKETIME_TIMESTAMP_FILE"] = str(node.skew_file)
            env["FAKETIME_CACHE_DURATION"] = "1"
        return env

    def node_argv(self, node: LabNode) -> list[str]:
        argv = [sys.executable, "-m", "kms.chaos.nodeproc", "--config", str(node.config)]
        if node.adversary:
            argv += ["--adversary", json.dumps(node.adversary)]
        if self.broken in ("skip-policy-check", "window-tally"):
            argv += ["--broken", self.broken]
        if self.delay_ms > 0:
            argv += ["--delay-ms", str(self.delay_ms)]
        return argv

    def start(self, node: LabNode) -> None:
        log = open(node.log, "ab")
        try:
            node.proc = self.lab.popen(
                node.host, self.node_argv(node), env=self.node_env(node), stdout=log, stderr=log
            )
        finally:
            log.close()
        node.paused = False

    def start_all(self) -> None:
        for node in self.nodes.values():
            self.start(node)

    def kill(self, node: LabNode) -> None:
        """SIGKILL (no clean shutdown): the node restarts later from its store."""
        if node.proc is not None and node.proc.poll() is None:
            if node.paused:
                node.proc.send_signal(signal.SIGCONT)
            node.proc.kill()
            node.proc.wait(10)
        node.paused = False

    def stop(self, node: LabNode, timeout: float = 5.0) -> None:
        if node.proc is None or node.proc.poll() is not None:
            return
        if node.paused:
            node.proc.send_signal(signal.SIGCONT)
            node.paused = False
        node.proc.terminate()
        try:
            node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(5)

    def pause(self, node: LabNode) -> None:
        if node.running and node.proc is not None:
            node.proc.send_signal(signal.SIGSTOP)
            node.paused = True

    def resume(self, node: LabNode) -> None:
        if node.running and node.proc is not None and node.paused:
            node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def stop_all(self) -> None:
        for node in self.nodes.values():
            self.resume(node)
        for node in self.nodes.values():
            if node.running and node.proc is not None:
                node.proc.terminate()
        deadline = time.time() + 5.0
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(5)
        if self.pccs_proc is not None and self.pccs_proc.poll() is None:
            self.pccs_proc.terminate()
            try:
                self.pccs_proc.wait(5)
            except subprocess.TimeoutExpired:
                self.pccs_proc.kill()

    # --- status -----------------------------------------------------------------------

    @staticmethod
    def status(node: LabNode, timeout: float = 1.0) -> dict[str, Any] | None:
        return devnet.status_of(node.url, timeout)

    def members(self) -> list[LabNode]:
        return [n for n in self.nodes.values() if n.member and not n.retired]

    def honest(self) -> list[LabNode]:
        return [n for n in self.members() if not n.byzantine]

    def state(self) -> dict[str, Any]:
        """The committee as ``devnet.json`` would list it (for the devnet's flows)."""
        return {
            "nodes": [n.entry() for n in self.members() if n.running and not n.paused],
            "threshold": self.threshold,
            "master_public_key": self.mpk,
        }

    def wait_genesis(self, timeout: float) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            keys = set()
            for node in self.nodes.values():
                if node.proc is not None and node.proc.poll() is not None:
                    raise CommitteeError(f"node {node.index} exited; see {node.log}")
                st = self.status(node, 0.5)
                if st and st.get("epoch") is not None and st.get("has_share"):
                    keys.add(st.get("master_public_key"))
                else:
                    keys.add(None)
            if None not in keys:
                if len(keys) != 1:
                    raise CommitteeError(f"the nodes report different keys: {keys}")
                self.mpk = str(keys.pop())
                return self.mpk
            time.sleep(0.2)
        raise CommitteeError(f"no genesis within {timeout:.0f} s; see {self.logs}")

    # --- apps -------------------------------------------------------------------------

    def create_apps(self, count: int) -> dict[str, str]:
        """``count`` apps, each with its own owner key and a first policy admitting the lab's
        CVM measurement (never the rogue's), admitted at every node."""
        if self.mpk is None:
            raise CommitteeError("no master public key yet")
        for k in range(1, count + 1):
            name = f"app{k}"
            owner = devnet.owner_of(self.work, name)
            report = devnet.admit_app(
                self.work, devnet.demo_policy(owner, self.mpk, version=1), admin=admin_call
            )
            if report["lagging"]:
                raise CommitteeError(f"app {name} not admitted everywhere: {report['lagging']}")
            self.apps[name] = owner.app_id().hex()
        return dict(self.apps)

    def push_policy(self, name: str) -> dict[str, Any]:
        """The app owner signs its next policy version and pushes it to every member."""
        state = self.state()
        return devnet.push_next_policy(
            self.work, state, bytes.fromhex(self.apps[name]), name, 7 * 86400
        )

    # --- the operator ---------------------------------------------------------------------

    def _change(
        self, request: dict[str, Any], committee: list[int], *, exclude: int | None, timeout: float
    ) -> dict[int, dict[str, Any]]:
        state = self.state()
        _, ref = propose_and_approve(state, request, exclude=exclude)
        return devnet._epoch_after(state, int(ref["epoch"]), committee, timeout=timeout)

    def current_members(self) -> list[int]:
        return sorted(n.index for n in self.members())

    def join(self, *, timeout: float = 60.0) -> int:
        """A new node on a new host joins: init, start, join request, propose, approve."""
        index = max(self.nodes) + 1
        node = self._new_node(index)
        first = next(iter(self.members()))
        peers = [{"index": n.index, "multiaddr": n.multiaddr} for n in self.members()]
        self._init(node, self.committee_doc, peers)
        self._configure(node, self.committee_doc, peers)
        src = first.dir / "policies"
        if src.is_dir():
            (node.dir / "policies").mkdir(exist_ok=True)
            for f in src.glob("*.policy"):
                shutil.copy(f, node.dir / "policies" / f.name)
        node.member = False
        self.nodes[index] = node
        self.start(node)
        try:
            live = next(n for n in self.members() if n.running and not n.paused)
            jr = join_request(
                node.config, committee_url=live.url, quote=devnet.quote_source(node.config)
            )
            committee = sorted([*self.current_members(), index])
            self._change(
                {"change": "add", "join_request": jr}, committee, exclude=index, timeout=timeout
            )
        except (devnet.MembershipError, httpx.HTTPError, ValueError, OSError) as exc:
            node.retired = True
            self.stop(node)
            raise CommitteeError(f"node {index} did not join: {exc}") from None
        node.member = True
        return index

    def remove(self, index: int, *, timeout: float = 60.0) -> None:
        committee = [i for i in self.current_members() if i != index]
        self._change(
            {"change": "remove", "index": index}, committee, exclude=index, timeout=timeout
        )
        node = self.nodes[index]
        node.member = False
        node.retired = True
        self.stop(node)

    def change_threshold(self, threshold: int, *, timeout: float = 60.0) -> None:
        self._change(
            {"change": "threshold", "threshold": threshold},
            self.current_members(),
            exclude=None,
            timeout=timeout,
        )
        self.threshold = threshold

    def refresh(self, *, timeout: float = 60.0) -> None:
        self._change({"change": "refresh"}, self.current_members(), exclude=None, timeout=timeout)
