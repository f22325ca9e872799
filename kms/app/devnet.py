"""``kms devnet``: a local committee of node processes on loopback, with real libp2p.

``up`` creates one directory per node (``kms node init``), writes the shared
``[committee]`` section (genesis participants, threshold, a genesis start a
few seconds ahead, Δ) and the peer list into every ``node.toml``, starts one
``kms node run`` process per node, follows the DKG, writes ``devnet.json`` as
soon as the first epoch is certified, and runs until SIGINT/SIGTERM, then
stops every process (all signalled at once, see ``stop_pids``).

The node processes ``up`` starts die with it: each gets SIGTERM from the kernel
when the ``up`` process dies, however it dies (``spawn(die_with_parent=True)``,
Linux only). ``up --detach`` starts ``up`` itself as a supervisor process in
its own session and returns once the devnet serves; the supervisor owns the
nodes (they die with it), and ``down`` stops it and them.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import httpx

from kms.app.config import load
from kms.app.setup import init_node, tdx_quote, write_config
from kms.secretfile import write_secret
from mpc.ids import ParticipantIndex

STATE_FILE = "devnet.json"


_HANDED_OUT: set[int] = set()
_CLAIMS = Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache") / "quorum-kms" / "ports"
"""Ports handed out by any process of this user on this machine, one empty file each: in
the user's own runtime or cache directory, which no other local user can create first."""
CLAIM_HOLD = 600.0
"""Seconds a handed-out port stays claimed: long enough for its node to start and bind."""
_CLAIM_TRIES = 64


def free_port() -> int:
    """A loopback port nobody listens on, never the same one twice in this process, nor
    (through a claim file) in another process of this user within ``CLAIM_HOLD`` seconds.

    The kernel may hand a just-released ephemeral port out again, so two calls — in one
    process, or in two test runs side by side — could otherwise return the same port for
    two listeners before either binds it.
    """
    tries = 0
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port in _HANDED_OUT:
            continue
        tries += 1
        if tries <= _CLAIM_TRIES and not _claim(port):
            continue
        _HANDED_OUT.add(port)
        return port


def _claim(port: int) -> bool:
    """Claim ``port`` for ``CLAIM_HOLD`` seconds; ``False`` if another process holds it.
    Without a usable claim directory (not ours, or open to others) every port is ours:
    the process's own set still keeps its ports distinct. Claims are checked, released
    when stale and made under one lock on the directory, so releasing a stale claim
    never removes a claim another process made in the meantime."""
    try:
        _CLAIMS.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = _CLAIMS.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return True
        lock = os.open(_CLAIMS / ".lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return _claim_locked(_CLAIMS / str(port))
        finally:
            os.close(lock)  # releases the lock
    except OSError:
        return True


def _claim_locked(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        return True
    except FileExistsError:
        pass
    if time.time() - path.lstat().st_mtime < CLAIM_HOLD:
        return False
    path.unlink(missing_ok=True)  # a stale claim: free for a later call
    return False


def create(
    directory: Path,
    nodes: int,
    threshold: int,
    *,
    delta: float,
    start_in: float,
    window_period: float,
    refresh_interval: float,
    pccs_url: str | None = None,
) -> dict[str, Any]:
    """Initialise ``nodes`` node directories and their configs; returns the devnet state.

    With ``pccs_url`` the nodes take collateral from that PCCS (the devnet's
    own, serving the simulated TEE's collateral) and cache it, as in
    production; the simulated collateral file is configured too, for checks
    that cannot wait for the PCCS (join requests).
    """
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
        "admission_policy": node_admission_policy().encode().hex(),
        "genesis": [
            {k: r[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")}
            for r in records
        ],
    }
    peers = [
        {"index": r["index"], "multiaddr": f"/ip4/127.0.0.1/tcp/{ports[k][0]}/p2p/{r['peer_id']}"}
        for k, r in enumerate(records)
    ]
    tee_dir = simulated_tee_files(directory)
    for i in range(1, nodes + 1):
        path = directory / f"node-{i}" / "node.toml"
        import tomllib

        doc = tomllib.loads(path.read_text())
        doc["committee"] = committee
        doc["peers"] = [p for p in peers if p["index"] != i]
        # The devnet's CVMs run on the simulated TEE: say so, loudly, in every node's config.
        doc["node"]["accept_simulated_quotes"] = True
        doc["node"]["simulated_root_ca"] = str((tee_dir / "root.der").resolve())
        # Join requests are checked inside the node core, which cannot wait for a PCCS:
        # the file covers the devnet's one simulated platform until the cache does.
        doc["node"]["collateral_file"] = str((tee_dir / "collateral.json").resolve())
        if pccs_url is not None:
            doc["node"]["pccs_url"] = pccs_url
        doc["node"]["policies_dir"] = "policies"  # each node keeps its own
        doc["node"]["simulated_tee"] = str(tee_dir.resolve())
        write_config(path, doc)
    state: dict[str, Any] = {
        "pccs_url": pccs_url,
        "master_public_key": None,
        "apps": {},
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


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Node processes this process started (kept so they are reaped, not left as zombies)."""


def _is_gone(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
            return True
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie of another parent counts as stopped
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def node_log(entry: dict[str, Any]) -> Path:
    """Where a devnet node's process logs: ``node.log`` beside its config."""
    return Path(entry["config"]).parent / "node.log"


def spawn(config: str, log_path: Path, *, die_with_parent: bool = False) -> int:
    """Start ``kms node run --config config`` in its own session, logging to ``log_path``.

    With ``die_with_parent`` the node asks the kernel for SIGTERM when this
    process dies (``KMS_DIE_WITH_PARENT``, see ``kms.node.lifecycle``); the
    request is tied to the calling thread, so call it from the thread that
    lives as long as the devnet (the main thread).
    """
    from kms.node.lifecycle import DIE_WITH_PARENT_ENV

    env = dict(os.environ)
    env.pop(DIE_WITH_PARENT_ENV, None)
    if die_with_parent:
        env[DIE_WITH_PARENT_ENV] = str(os.getpid())
    log = open(log_path, "ab")
    try:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "kms.cli", "node", "run", "--config", config],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    finally:
        log.close()
    _CHILDREN[proc.pid] = proc
    return proc.pid


def reap_children() -> list[int]:
    """Reap the node processes this process started that have exited, so none stays a
    zombie (one stopped by ``kms devnet stop-node`` from another process, say): the
    supervisor calls this while it runs. Returns their pids."""
    gone = [pid for pid, child in _CHILDREN.items() if child.poll() is not None]
    for pid in gone:
        del _CHILDREN[pid]
    return gone


def wait_until_stopped(stopping: Callable[[], bool], *, every: float = 0.2) -> None:
    """The supervisor's loop: until ``stopping()``, reap exited nodes every ``every`` s."""
    while not stopping():
        reap_children()
        time.sleep(every)


def read_state(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / STATE_FILE).read_text()))


def write_state(directory: Path, state: dict[str, Any]) -> None:
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(directory / STATE_FILE)


_POLL_CLIENT: httpx.Client | None = None
_POLL_LOCK = threading.Lock()


def poll_get(url: str, timeout: float) -> httpx.Response:
    """``GET url`` for a poll loop, through one client per process.

    ``httpx.get`` builds a client, and with it a TLS context (about 27 ms of CPU), on every
    call, plain-HTTP URLs included; a devnet polled by several loops five times a second
    spent most of a core on that. Connections are not kept alive: a restarted node is
    never asked over a connection to its previous process."""
    global _POLL_CLIENT
    with _POLL_LOCK:
        if _POLL_CLIENT is None:
            _POLL_CLIENT = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
        client = _POLL_CLIENT
    return client.get(url, timeout=timeout)


def status_of(url: str, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        r = poll_get(url + "/v1/status", timeout=timeout)
        return dict(r.json()) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def stop_pid(pid: int | None, timeout: float = 10.0) -> None:
    """SIGTERM a node process, wait for it to stop, SIGKILL it after ``timeout``."""
    stop_pids([pid], timeout)


def stop_pids(pids: Iterable[int | None], timeout: float = 10.0) -> dict[int, str]:
    """SIGTERM every process at once, wait for all, SIGKILL those left after ``timeout``.

    Returns each pid's outcome: ``"stopped"`` (it exited after SIGTERM),
    ``"killed"`` (SIGKILL after the timeout) or ``"not running"``.
    """
    outcome: dict[int, str] = {}
    waiting: list[int] = []
    for pid in dict.fromkeys(p for p in pids if p):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            _CHILDREN.pop(pid, None)
            outcome[pid] = "not running"
            continue
        waiting.append(pid)
    deadline = time.time() + timeout
    while waiting and time.time() < deadline:
        for pid in [p for p in waiting if _is_gone(p)]:
            waiting.remove(pid)
            outcome[pid] = "stopped"
        if waiting:
            time.sleep(0.05)
    for pid in waiting:
        try:
            os.kill(pid, signal.SIGKILL)
            outcome[pid] = "killed"
        except ProcessLookupError:
            outcome[pid] = "stopped"
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            child.wait()
    return outcome


def _cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid`` (None where /proc cannot tell, e.g. not Linux)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return []
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _runs(pid: int, *needles: str) -> bool:
    """Whether ``pid`` still runs a command line holding every one of ``needles``.

    Guards against signalling a recycled pid: ``devnet.json`` may name processes
    that died long ago (a supervisor killed hard, a reboot).
    """
    args = _cmdline(pid)
    if args is None:
        return True  # cannot tell: trust devnet.json
    return all(any(n in a for a in args) for n in needles)


def down(directory: Path, timeout: float = 10.0) -> dict[str, Any]:
    """``kms devnet down``: stop a devnet's supervisor and nodes (pids from ``devnet.json``).

    Every process still running the devnet's command is signalled at once
    (``stop_pids``); pids that now belong to another command are left alone.
    The pids in ``devnet.json`` are cleared. Returns what was stopped.
    """
    state = read_state(directory)
    targets: dict[int, str] = {}
    nodes: list[dict[str, Any]] = []
    # A node dropped from the committee by hand (``sync_members``) may still run.
    for n in state["nodes"] + [r for r in state.get("removed", []) if r.get("pid")]:
        pid = n.get("pid")
        entry = {"index": int(n["index"]), "pid": pid, "outcome": "not running"}
        nodes.append(entry)
        if pid and n.get("config") and _runs(int(pid), "node", "run", str(n["config"])):
            targets[int(pid)] = "node"
    sup = state.get("supervisor_pid")
    supervisor = {"pid": sup, "outcome": "not running"}
    if sup and int(sup) != os.getpid() and _runs(int(sup), "kms.cli", "devnet", "up"):
        targets[int(sup)] = "supervisor"
    outcome = stop_pids(list(targets), timeout)
    for entry in nodes:
        if entry["pid"] and int(entry["pid"]) in outcome:
            entry["outcome"] = outcome[int(entry["pid"])]
    if sup and int(sup) in outcome:
        supervisor["outcome"] = outcome[int(sup)]
    state = read_state(directory)  # the supervisor may have rewritten it while stopping
    for n in state["nodes"] + state.get("removed", []):
        n["pid"] = None
    state["supervisor_pid"] = None
    write_state(directory, state)
    return {"nodes": nodes, "supervisor": supervisor}


def node_entry(state: dict[str, Any], index: int) -> dict[str, Any]:
    for n in state["nodes"]:
        if int(n["index"]) == index:
            return dict(n)
    raise KeyError(f"no node {index} in this devnet")


def start_node(directory: Path, index: int) -> int:
    state = read_state(directory)
    node = node_entry(state, index)
    pid = spawn(node["config"], node_log(node))
    for n in state["nodes"]:
        if int(n["index"]) == index:
            n["pid"] = pid
    write_state(directory, state)
    return pid


def stop_node(directory: Path, index: int, *, kill: bool = False) -> None:
    state = read_state(directory)
    node = node_entry(state, index)
    if kill and node["pid"]:
        pid = int(node["pid"])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            _CHILDREN.pop(pid, None)
        else:
            # Reaped here if this process started it (no zombie), else by its parent.
            deadline = time.time() + 10.0
            while not _is_gone(pid) and time.time() < deadline:
                time.sleep(0.02)
    else:
        stop_pid(node["pid"])
    for n in state["nodes"]:
        if int(n["index"]) == index:
            n["pid"] = None
    write_state(directory, state)


def genesis_start(state: dict[str, Any]) -> float:
    return load(state["nodes"][0]["config"]).protocol.genesis_start


TEE_SEED_FILE = "simulated-tee/seed"
"""The devnet's TEE directory is ``simulated-tee/`` (``kms.app.simtee``)."""
DEMO_MEASUREMENT = {
    name: bytes([0xD0 + i]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
"""The measurement of the devnet's demo CVM (admitted by the ``demo`` app's policy)."""
ROGUE_MEASUREMENT = {**DEMO_MEASUREMENT, "rtmr3": bytes(48)}
NODE_MEASUREMENT = {
    name: bytes([0xA0 + i]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
"""The measurement of a devnet KMS node's CVM (admitted by the devnet's node admission policy)."""
ROGUE_NODE_MEASUREMENT = {**NODE_MEASUREMENT, "rtmr3": bytes(48)}


def node_admission_policy() -> Any:
    """The devnet's genesis node admission policy: the simulated KMS node image, up to date."""
    from kms.policy import Measurement, NodeAdmissionPolicy

    return NodeAdmissionPolicy.build(
        [Measurement.explicit(**NODE_MEASUREMENT)], allowed_tcb_statuses=("UpToDate",)
    )


def simulated_tee(directory: Path) -> Any:
    """The devnet's simulated TDX platform (``kms.app.simtee``): ``directory`` is the
    devnet's directory or its TEE directory (``simulated-tee/``)."""
    from kms.app import simtee

    return simtee.load(directory)


def quote_source(
    config_path: Path, measurement: dict[str, bytes] | None = None
) -> Callable[[bytes], bytes]:
    """Where the node of ``config_path`` gets the quote of its join request.

    The simulated TEE when its ``[node] simulated_tee`` names a TEE directory (or, in
    configs written before TEE directories, a devnet directory), quoting ``measurement``,
    by default the TEE directory's ``node.measurement.toml`` (the devnet's node image
    when it has none); the TDX guest's configfs-tsm report interface otherwise
    (``kms.app.setup.tdx_quote``).
    """
    import tomllib

    from kms.app import simtee
    from kms.policy import Measurement

    node = tomllib.loads(Path(config_path).read_text())["node"]
    if not node.get("simulated_tee"):
        return tdx_quote
    tee_dir = Path(config_path).parent / node["simulated_tee"]
    if measurement is not None:
        return simtee.quote_source(tee_dir, Measurement.explicit(**measurement))
    image = simtee.node_measurement(tee_dir) or Measurement.explicit(**NODE_MEASUREMENT)
    return simtee.quote_source(tee_dir, image)


def simulated_tee_files(directory: Path) -> Path:
    """Create the devnet's TEE directory, ``simulated-tee/`` (``kms.app.simtee.init``):
    seed, root certificate, collateral, and the measurement files of the devnet's node
    image and demo CVM. An earlier one there is replaced."""
    from kms.app import simtee

    tee_dir = directory / "simulated-tee"
    (tee_dir / simtee.SEED_FILE).unlink(missing_ok=True)
    simtee.init(tee_dir, node_measurement=NODE_MEASUREMENT, app_measurement=DEMO_MEASUREMENT)
    return tee_dir


def owner_of(directory: Path, name: str) -> Any:
    """The owner key of devnet app ``name`` (created on first use, mode 0600)."""
    import secrets

    from kms.policy import OwnerKey

    owner_file = directory / "apps" / f"{name}.owner"
    owner_file.parent.mkdir(parents=True, exist_ok=True)
    if not owner_file.exists():
        write_secret(owner_file, secrets.token_hex(32) + "\n", replace=False)
    return OwnerKey.from_seed(bytes.fromhex(owner_file.read_text().strip()))


def demo_policy(owner: Any, mpk_hex: str, *, version: int, lifetime: int = 7 * 86400) -> Any:
    """A policy admitting the devnet's demo CVM measurement, signed by ``owner``."""
    from kms.policy import AppPolicy, Measurement, PolicyBundle

    now = int(time.time())
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=version,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**DEMO_MEASUREMENT)],
        kms_mpk=bytes.fromhex(mpk_hex),
        not_before=now - 60,
        expires=now + lifetime,
        allowed_tcb_statuses=("UpToDate", "SWHardeningNeeded"),
        purposes=("app", "disk", "ibe.app", "signing"),
    )
    return PolicyBundle(policy.sign(owner), ())


def push_policy(
    state: dict[str, Any],
    bundle: Any,
    timeout: float = 5.0,
    *,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Offer ``bundle`` to every node (``kms.app.owner.push_bundle``); the change is
    effective everywhere once all accept. ``transport`` carries the requests instead of
    the network (tests: in-process nodes)."""
    from kms.app.owner import push_bundle

    nodes = {int(n["index"]): str(n["http_url"]) for n in state["nodes"]}
    report = push_bundle(nodes, bundle, timeout, transport=transport)
    report.pop("app_id", None)
    for entry in report["lagging"]:
        entry["index"] = entry.pop("node")
    return report


def register_demo_app(
    directory: Path,
    mpk_hex: str,
    name: str = "demo",
    *,
    admin: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> str:
    """Create app ``name`` with an owner key and a policy admitting the demo CVM."""
    owner = owner_of(directory, name)
    admit_app(directory, demo_policy(owner, mpk_hex, version=1), admin=admin)
    return str(owner.app_id().hex())


DSTACK_APP = "dstack-demo"
"""The devnet's dstack app: a CVM whose dstack guest API is served by ``kms agent``."""
DSTACK_PURPOSES = ("dstack-app-root", "ibe.env")
"""What its policy lists: the app root key (``kms.agent``) and the encrypted-env inbox."""
AGENT_CONFIG_NAME = "kms-agent"
"""The ``configs:`` entry of the dstack app's docker compose holding the agent's config."""
AGENT_SOCKET = "/run/qkms/dstack.sock"
"""Where the sample compose's agent serves the guest API (a volume the app mounts at
``/var/run/dstack``, the second path dstack's SDKs try)."""
DSTACK_GUEST_SOCKET = "/var/run/dstack-guest.sock"
"""Where the sample compose mounts dstack's own guest agent into the agent's container
(its quotes and event log: ``--tee dstack --dstack-socket`` on the agent's command line)."""


def agent_config_text(mpk_hex: str, urls: Iterable[str], *, socket: str = AGENT_SOCKET) -> str:
    """The ``kms agent`` config a dstack app measures in its compose (``configs:``). It
    names no TEE source: the agent's ``command:`` in the compose does."""
    url_list = ", ".join(json.dumps(u) for u in urls)
    return f'[agent]\nmpk = "{mpk_hex}"\nurls = [{url_list}]\nsocket = "{socket}"\n'


def dstack_app_compose(name: str, agent_config: str) -> str:
    """A dstack ``app-compose.json`` whose docker compose runs ``kms agent`` beside the app,
    with the agent's config measured as a ``configs:`` entry (its exact bytes) and its TEE
    source (dstack's guest agent, mounted at ``DSTACK_GUEST_SOCKET``) on its ``command:``."""
    content = "".join(f"      {line}\n" if line else "\n" for line in agent_config.splitlines())
    compose = (
        "services:\n"
        "  kms-agent:\n"
        "    image: quorum-kms:latest\n"
        '    command: ["kms", "agent", "run", "--config", "/etc/kms/agent.toml",'
        f' "--tee", "dstack", "--dstack-socket", "{DSTACK_GUEST_SOCKET}"]\n'
        "    configs:\n"
        f"      - source: {AGENT_CONFIG_NAME}\n"
        "        target: /etc/kms/agent.toml\n"
        "    volumes:\n"
        f"      - /var/run/dstack.sock:{DSTACK_GUEST_SOCKET}\n"
        "      - qkms-socket:/run/qkms\n"
        "    restart: always\n"
        "  app:\n"
        "    image: python:3.12-slim\n"
        '    command: ["python", "/app/main.py"]\n'
        "    volumes:\n"
        "      - qkms-socket:/var/run/dstack\n"
        "    depends_on: [kms-agent]\n"
        "volumes:\n"
        "  qkms-socket: {}\n"
        "configs:\n"
        f"  {AGENT_CONFIG_NAME}:\n"
        "    content: |\n"
        f"{content}"
    )
    doc = {
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
        "docker_compose_file": compose,
        "kms_enabled": False,
        "key_provider": "local",
        "local_key_provider_enabled": True,
        "gateway_enabled": False,
        "public_logs": False,
        "public_sysinfo": False,
        "public_tcbinfo": True,
        "allowed_envs": [],
        "no_instance_id": False,
        "secure_time": True,
    }
    return json.dumps(doc, indent=2) + "\n"


def dstack_app_compose_path(directory: Path, name: str = DSTACK_APP) -> Path:
    """Where the devnet keeps its dstack app's ``app-compose.json``."""
    return directory / "apps" / f"{name}.app-compose.json"


DSTACK_IMAGE_EVENTS = (
    (0, 0x80000008, b"devnet dstack firmware"),
    (0, 0x0000000A, b"ACPI DATA"),
    (1, 0x80000003, b"devnet dstack kernel"),
    (2, 0x0000000D, b"devnet dstack kernel command line and initrd"),
)
"""The boot events (RTMR0–2) of the devnet's dstack CVM image: ``(imr, event_type, data)``."""


def dstack_image_events() -> list[dict[str, Any]]:
    """The devnet dstack CVM's boot events, as dstack's event log shows them (SHA-384
    digests of the data), so that its RTMR0–2 replay like a real dstack CVM's."""
    import hashlib

    return [
        {
            "imr": imr,
            "event_type": event_type,
            "digest": hashlib.sha384(data).hexdigest(),
            "event": "",
            "event_payload": data.hex(),
        }
        for imr, event_type, data in DSTACK_IMAGE_EVENTS
    ]


def _replayed(imr: int) -> bytes:
    import hashlib

    register = bytes(48)
    for event in dstack_image_events():
        if event["imr"] == imr:
            register = hashlib.sha384(register + bytes.fromhex(event["digest"])).digest()
    return register


def dstack_measurement(app_compose: str, *, rogue: bool = False) -> Any:
    """The devnet dstack CVM's measurement: the demo MRTD, RTMR0–2 replayed from
    ``dstack_image_events``, and the compose hash (with ``rogue``, an image no policy
    admits: MRTD of zeros)."""
    from kms.policy import Measurement, compose_hash_of

    image = {"mr_td": DEMO_MEASUREMENT["mr_td"]}
    image.update({f"rtmr{i}": _replayed(i) for i in range(3)})
    if rogue:
        image["mr_td"] = bytes(48)
    return Measurement.compose(**image, compose_hash=compose_hash_of(app_compose.encode()))


def dstack_policy(
    owner: Any, mpk_hex: str, app_compose: str, *, version: int, lifetime: int = 7 * 86400
) -> Any:
    """A policy admitting the devnet's dstack CVM (image + compose hash), signed by ``owner``."""
    from kms.policy import AppPolicy, PolicyBundle

    now = int(time.time())
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=version,
        owner_key=owner.public_bytes(),
        measurements=[dstack_measurement(app_compose)],
        kms_mpk=bytes.fromhex(mpk_hex),
        not_before=now - 60,
        expires=now + lifetime,
        allowed_tcb_statuses=("UpToDate", "SWHardeningNeeded"),
        purposes=DSTACK_PURPOSES,
    )
    return PolicyBundle(policy.sign(owner), ())


def register_dstack_app(
    directory: Path,
    mpk_hex: str,
    urls: Iterable[str],
    name: str = DSTACK_APP,
    *,
    admin: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> str:
    """Create the dstack app ``name``: its ``app-compose.json`` (measuring an agent config
    naming the devnet's key and URLs) and a policy admitting it by compose hash."""
    owner = owner_of(directory, name)
    app_compose = dstack_app_compose(name, agent_config_text(mpk_hex, urls))
    path = dstack_app_compose_path(directory, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(app_compose)
    admit_app(directory, dstack_policy(owner, mpk_hex, app_compose, version=1), admin=admin)
    return str(owner.app_id().hex())


def admit_app(
    directory: Path,
    bundle: Any,
    *,
    admin: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The devnet operator admits an app: its bundle goes into every node's policies
    directory (read at start) and every running node re-reads it (admin channel:
    ``admin_call``, or ``admin(config, request)`` when given, e.g. in-process nodes).
    Later versions travel with `kms app policy push`."""
    app_hex = bundle.signed.policy.app_id.hex()
    acks, lagging = [], []
    for node_dir in sorted(p for p in directory.glob("node-*") if p.is_dir()):
        pdir = node_dir / "policies"
        pdir.mkdir(exist_ok=True)
        tmp = pdir / f".{app_hex}.tmp"
        tmp.write_bytes(bundle.encode())
        tmp.replace(pdir / f"{app_hex}.policy")
        config = node_dir / "node.toml"
        if not config.exists():
            continue
        index = int(node_dir.name.rsplit("-", 1)[-1]) if node_dir.name[-1].isdigit() else None
        reply = (admin or admin_call)(config, {"op": "reload-policies"})
        if reply.get("ok") and reply.get("serving", True):
            acks.append(index)
        else:
            lagging.append({"index": index, "reason": reply.get("error", "not serving")})
    return {
        "version": bundle.signed.policy.version,
        "acknowledged": acks,
        "lagging": lagging,
        "effective_everywhere": not lagging,
    }


def launch(
    directory: Path,
    *,
    nodes: int = 5,
    threshold: int = 3,
    delta: float = 0.3,
    start_in: float | None = None,
    window_period: float | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``kms devnet up`` in the background (its caller stops it with SIGTERM)."""
    args = [
        sys.executable,
        "-m",
        "kms.cli",
        "devnet",
        "up",
        "--nodes",
        str(nodes),
        "--threshold",
        str(threshold),
    ]
    args += ["--dir", str(directory), "--delta", str(delta)]
    if start_in is not None:
        args += ["--start-in", str(start_in)]
    if window_period is not None:
        args += ["--window-period", str(window_period)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603


def wait_for_apps(
    directory: Path, proc: subprocess.Popen[bytes], timeout: float
) -> dict[str, Any] | None:
    """The devnet state once its demo app is registered, or None on timeout or exit."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (directory / STATE_FILE).exists():
            state = read_state(directory)
            if state.get("apps"):
                return state
        if proc.poll() is not None:
            return None
        time.sleep(0.3)
    return None


# --- membership on a running devnet ---------------------------------------------------------


def node_dir_entry(config: Path, pid: int | None = None) -> dict[str, Any]:
    """The ``devnet.json`` entry of the node whose ``node.toml`` is ``config`` (its peer id
    from its store's identity)."""
    from kms.app.setup import open_store
    from mpc.sig import SigningKey
    from net.peerid import peer_id_from_ed25519

    cfg = load(config)
    with open_store(cfg) as store:
        ident = store.load_identity()
    if ident is None:
        raise MembershipError(f"{config.parent} holds no node identity")
    peer = str(peer_id_from_ed25519(SigningKey.from_seed(ident[0]).verify_key().to_bytes()))
    return {
        "index": int(cfg.index),
        "peer_id": peer,
        "multiaddr": f"{cfg.listen}/p2p/{peer}",
        "http_url": f"http://{cfg.http_host}:{cfg.http_port}",
        "config": str(config.resolve()),
        "pid": pid,
    }


def taken_indices(state: dict[str, Any], statuses: dict[int, dict[str, Any] | None]) -> set[int]:
    """Every index a new node must not take: the nodes ``devnet.json`` lists or removed,
    and every member of every committee in the chain a member serves (nodes joined or
    removed by hand with ``kms member`` included). ``apply_change`` refuses an index
    that any committee of the chain ever had."""
    taken = {int(n["index"]) for n in state["nodes"] + state.get("removed", [])}
    for st in statuses.values():
        if st and st.get("committee"):
            taken |= {int(m["index"]) for m in st["committee"]}
    for n in state["nodes"]:
        if statuses.get(int(n["index"])):
            taken |= _chain_indices(str(n["http_url"]))
            break
    return taken


def _chain_indices(url: str) -> set[int]:
    """The indices of every committee in the chain ``url`` serves (not verified: a lying
    node can only make a new node skip indices). Empty if it does not answer."""
    from kms.client.http import _links
    from mpc.cert import EpochCertificate
    from mpc.membership import AddMember, MembershipCertificate

    try:
        links = _links(poll_get(url + "/v1/chain", timeout=2.0).content)
    except (httpx.HTTPError, ValueError):
        return set()
    out: set[int] = set()
    for link in links:
        if isinstance(link, EpochCertificate):
            out |= {int(p.index) for p in link.transcript.committee}
        elif isinstance(link, MembershipCertificate):
            change = link.outcome.proposal.change
            if isinstance(change, AddMember):
                out.add(int(change.participant.index))
    return out


def init_joining_node(directory: Path, index: int | None = None) -> dict[str, Any]:
    """Create a node that is not in the committee yet: same ``[committee]``, the devnet's TEE.

    It knows where the current members listen; they learn its address from the
    certified ``add`` change. It starts with the apps' policies the first node
    holds. Returns its entry (as in ``devnet.json``; not added there yet).

    Without ``index``, it takes the first index after every one taken
    (``taken_indices``). A directory ``node-<index>`` left by an add that failed
    is reused as it is (same keys): a retry proposes the same node, so the
    first attempt's proposal, if it still wins, admits that node too.
    """
    import shutil
    import tomllib

    state = read_state(directory)
    if index is None:
        index = max(taken_indices(state, _statuses(state))) + 1
    existing = directory / f"node-{index}" / "node.toml"
    if existing.is_file():
        return node_dir_entry(existing)
    p2p, http = free_port(), free_port()
    first = tomllib.loads(Path(state["nodes"][0]["config"]).read_text())
    peers = [{"index": int(n["index"]), "multiaddr": n["multiaddr"]} for n in state["nodes"]]
    node_dir = directory / f"node-{index}"
    record = init_node(
        node_dir,
        index=index,
        listen=f"/ip4/127.0.0.1/tcp/{p2p}",
        http=f"127.0.0.1:{http}",
        committee=first["committee"],
        peers=peers,
    )
    path = node_dir / "node.toml"
    doc = tomllib.loads(path.read_text())
    for key in (
        "accept_simulated_quotes",
        "simulated_root_ca",
        "collateral_file",
        "policies_dir",
        "simulated_tee",
    ):
        if key in first["node"]:
            doc["node"][key] = first["node"][key]
    write_config(path, doc)
    src = Path(state["nodes"][0]["config"]).parent / "policies"
    if src.is_dir():
        (node_dir / "policies").mkdir(exist_ok=True)
        for f in src.glob("*.policy"):
            shutil.copy(f, node_dir / "policies" / f.name)
    return {
        "index": index,
        "peer_id": record["peer_id"],
        "multiaddr": f"/ip4/127.0.0.1/tcp/{p2p}/p2p/{record['peer_id']}",
        "http_url": f"http://127.0.0.1:{http}",
        "config": str(path.resolve()),
        "pid": None,
    }


class MembershipError(RuntimeError):
    """A devnet membership flow could not be completed."""


def admin_call(config: str | Path, request: dict[str, Any]) -> dict[str, Any]:
    """One admin-channel request to a devnet node (with its token)."""
    import trio

    from kms.api import admin

    cfg = load(config)
    token = cfg.admin_token_file.read_text().strip()
    try:
        return trio.run(admin.call, cfg.admin_socket, {**request, "token": token})
    except OSError as exc:
        return {"ok": False, "error": f"admin channel unreachable: {exc}"}


def _statuses(state: dict[str, Any]) -> dict[int, dict[str, Any] | None]:
    """The status of every node ``devnet.json`` lists (None: it does not answer)."""
    return {int(n["index"]): status_of(n["http_url"]) for n in state["nodes"]}


def _reference(sts: dict[int, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The status at the highest epoch: the committee as it stands."""
    return max(
        (s for s in sts.values() if s and s.get("epoch") is not None),
        key=lambda s: int(s["epoch"]),
        default=None,
    )


def sync_members(directory: Path) -> dict[str, Any]:
    """Bring ``devnet.json``'s node list in line with the committee the members report
    (the status at the highest epoch), and return the state.

    A listed node that is no longer a member (removed by hand with ``kms member``, or
    certified after ``remove-node`` gave up) moves to ``removed``, so that clients
    reading the list (``kms key get --devnet``) stop asking it; its pid is kept for
    ``down``. A member that is not listed but has its directory ``node-<index>`` in the
    devnet directory (an add whose wait timed out, a hand join there) is listed. A node
    being added (``joining``) is left alone. Nothing changes when no member answers.
    """
    state = read_state(directory)
    ref = _reference(_statuses(state))
    if ref is None:
        return state
    members = {int(m["index"]) for m in ref["committee"]}
    keep = [n for n in state["nodes"] if int(n["index"]) in members or n.get("joining")]
    gone = [n for n in state["nodes"] if n not in keep]
    listed = {int(n["index"]) for n in keep}
    found = []
    for i in sorted(members - listed):
        cfg = directory / f"node-{i}" / "node.toml"
        if cfg.is_file():
            try:
                found.append(node_dir_entry(cfg))
            except (MembershipError, OSError, ValueError):
                continue
    if not gone and not found:
        return state
    state["nodes"] = sorted(keep + found, key=lambda n: int(n["index"]))
    removed = state.setdefault("removed", [])
    for n in gone:
        removed.append(n)
    write_state(directory, state)
    return state


def _live_members(state: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A member's status and the entries of the committee members that answer."""
    sts = _statuses(state)
    ref = _reference(sts)
    if ref is None:
        raise MembershipError("no member of the devnet answers")
    members = {int(m["index"]) for m in ref["committee"]}
    live = [n for n in state["nodes"] if int(n["index"]) in members and sts[int(n["index"])]]
    return ref, live


def propose_and_approve(
    state: dict[str, Any], request: dict[str, Any], *, exclude: int | None = None
) -> tuple[str, dict[str, Any]]:
    """Propose at one live member and approve at every other live member.

    The commands are given clear of a window's opening (``clear_of_window_opening``),
    so the proposal and every approval go out in the same window: the change takes
    one window. Returns the proposal id and the status the flow started from. Raises
    ``MembershipError`` with the node's reason if the change is refused.
    """
    ref, live = _live_members(state)
    voters = [n for n in live if int(n["index"]) != exclude]
    if len(voters) < int(ref["threshold"]):
        raise MembershipError(
            f"{len(voters)} members answer, {ref['threshold']} approvals are needed"
        )
    time.sleep(clear_of_window_opening(load(voters[0]["config"]).protocol, time.time()))
    reply = admin_call(voters[0]["config"], {"op": "propose", **request})
    if not reply.get("ok"):
        raise MembershipError(f"node {voters[0]['index']} refused: {reply.get('error')}")
    pid = str(reply["proposal_id"])
    for n in voters[1:]:
        admin_call(n["config"], {"op": "approve", "proposal_id": pid})
    return pid, ref


COMMANDS_TAKE = 1.0
"""Seconds the devnet's propose and approvals take at most, end to end (admin calls on
loopback and the proposal's way to the members)."""


def clear_of_window_opening(protocol: Any, now: float) -> float:
    """Seconds to wait so that commands given then, taking ``COMMANDS_TAKE`` + 2Δ at
    most, do not straddle the opening of a decision window (ballots go out when it
    opens: a proposal just before and approvals just after would take two windows).
    0 when the next window opens later than that."""
    period, start = float(protocol.window_period), float(protocol.genesis_start)
    w = (now - start) // period
    opens = start + (w + 1) * period
    if opens - now > COMMANDS_TAKE + 2 * float(protocol.delta):
        return 0.0
    return opens - now + float(protocol.delta)


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise MembershipError(f"timed out after {timeout:.0f} s waiting for {what}")


def _epoch_after(
    state: dict[str, Any], epoch: int, committee: list[int], *, timeout: float
) -> dict[int, dict[str, Any]]:
    def check() -> dict[int, dict[str, Any]] | None:
        sts = {}
        for n in state["nodes"]:
            i = int(n["index"])
            if i not in committee:
                continue
            st = status_of(n["http_url"])
            if st is None:
                continue  # a member that is down catches up from the chain when it returns
            if (
                st.get("epoch") is None
                or st["epoch"] <= epoch
                or [m["index"] for m in st["committee"]] != committee
            ):
                return None
            sts[i] = st
        if not sts:
            return None
        # Enough members hold a share to serve keys (one that missed the reshare gets
        # its share from a prompt refresh later).
        holders = sum(1 for st in sts.values() if st.get("has_share"))
        return sts if holders >= max(int(st["threshold"]) for st in sts.values()) else None

    return dict(_wait(f"an epoch after {epoch} with committee {committee}", check, timeout))


def add_node(directory: Path, *, timeout: float = 120.0) -> dict[str, Any]:
    """``kms devnet add-node``: a new node joins the running devnet.

    Init the node (with the devnet's simulated TEE) at the first free index, start
    it, write its join request (quote over its record and addresses), propose it at
    one member, approve it at the others, wait until every member of the new committee
    holds a share of the new epoch, then record it in ``devnet.json``. If that fails,
    the node is stopped and dropped from ``devnet.json`` but its directory stays: a
    retry reuses it (``init_joining_node``).
    """
    from kms.app.setup import join_request

    sync_members(directory)
    entry = init_joining_node(directory)
    index = int(entry["index"])
    cfg = Path(entry["config"])
    entry["pid"] = spawn(entry["config"], node_log(entry))
    entry["joining"] = True
    state = read_state(directory)
    state["nodes"] = [n for n in state["nodes"] if int(n["index"]) != index] + [entry]
    write_state(directory, state)  # so that `devnet up` stops it too
    try:
        member = next(n for n in state["nodes"] if int(n["index"]) != index)
        try:
            jr = join_request(cfg, committee_url=str(member["http_url"]), quote=quote_source(cfg))
        except (httpx.HTTPError, ValueError) as exc:
            raise MembershipError(f"no join request for node {index}: {exc}") from None
        (cfg.parent / "join-request.json").write_text(json.dumps(jr, indent=2) + "\n")
        pid, ref = propose_and_approve(state, {"change": "add", "join_request": jr}, exclude=index)
        committee = sorted([int(m["index"]) for m in ref["committee"]] + [index])
        sts = _epoch_after(state, int(ref["epoch"]), committee, timeout=timeout)
    except MembershipError as exc:
        stop_pid(entry["pid"])
        state = read_state(directory)
        state["nodes"] = [n for n in state["nodes"] if int(n["index"]) != index]
        write_state(directory, state)
        raise MembershipError(
            f"{exc} (node {index} stopped; a retry reuses {cfg.parent})"
        ) from None
    state = read_state(directory)
    for n in state["nodes"]:
        if int(n["index"]) == index:
            n.pop("joining", None)
    write_state(directory, state)
    st = sts[index]
    return {
        "index": index,
        "proposal_id": pid,
        "epoch": st["epoch"],
        "committee": committee,
        "threshold": st["threshold"],
        "master_public_key": st["master_public_key"],
    }


def remove_node(directory: Path, index: int, *, timeout: float = 120.0) -> dict[str, Any]:
    """``kms devnet remove-node``: the other members remove node ``index``, then it stops.

    The committee is read from the members' status, not from ``devnet.json`` alone: a
    node joined by hand (``kms member propose add``) can be removed too; this command
    stops only a node process that ``devnet.json`` lists.
    """
    state = sync_members(directory)
    ref, _ = _live_members(state)
    members = [int(m["index"]) for m in ref["committee"]]
    if index not in members:
        raise MembershipError(f"node {index} is not a member of the committee {members}")
    pid, ref = propose_and_approve(state, {"change": "remove", "index": index}, exclude=index)
    committee = [int(m["index"]) for m in ref["committee"] if int(m["index"]) != index]
    sts = _epoch_after(state, int(ref["epoch"]), committee, timeout=timeout)
    state = read_state(directory)
    gone = next((n for n in state["nodes"] if int(n["index"]) == index), None)
    if gone is None:
        gone = next(
            (n for n in state.get("removed", []) if int(n["index"]) == index),
            {"index": index, "pid": None},
        )
        state["removed"] = [n for n in state.get("removed", []) if int(n["index"]) != index]
    stop_pid(gone.get("pid"))
    gone["pid"] = None
    state["nodes"] = [n for n in state["nodes"] if int(n["index"]) != index]
    state.setdefault("removed", []).append(gone)
    write_state(directory, state)
    st = sts[min(sts)]
    return {
        "index": index,
        "proposal_id": pid,
        "epoch": st["epoch"],
        "committee": committee,
        "threshold": st["threshold"],
        "master_public_key": st["master_public_key"],
    }


# --- what the ``kms devnet``, ``kms key``, ``kms app`` and ``kms decrypt`` commands do ------


class DevnetError(RuntimeError):
    """A devnet operation that cannot be done as asked (the message says why)."""


def up_args(
    directory: Path,
    *,
    nodes: int,
    threshold: int,
    delta: float,
    start_in: float,
    window_period: float,
    refresh_interval: float,
    pccs: bool,
) -> list[str]:
    """The ``kms devnet up`` options that start the same devnet again (the supervisor's)."""
    return [
        *("--nodes", str(nodes), "--threshold", str(threshold), "--dir", str(directory)),
        *("--delta", str(delta), "--start-in", str(start_in)),
        *("--window-period", str(window_period), "--refresh-interval", str(refresh_interval)),
        "--pccs" if pccs else "--collateral-file",
    ]


def detach(directory: Path, args: list[str], timeout: float) -> tuple[dict[str, Any], int, Path]:
    """``devnet up --detach``: start ``kms devnet up ARGS`` as a supervisor in its own
    session (output in DIR/devnet.log) and wait until its devnet serves.

    Returns the devnet's state, the supervisor's pid and its log. Raises
    ``DevnetError`` (after stopping the supervisor) when it does not come up in time."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "devnet.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "kms.cli", "devnet", "up", *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = wait_for_apps(directory, proc, timeout)
    if state is None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise DevnetError(f"the devnet did not come up within {timeout:.0f} s; see {log_path}")
    return state, proc.pid, log_path


class PCCSHandle(Protocol):
    def stop(self) -> None: ...


def start_pccs(directory: Path, port: int) -> PCCSHandle:
    """Serve the devnet's simulated collateral as a PCCS on loopback ``port``."""
    # Lazy: the PCCS server pulls in starlette and hypercorn, which only `devnet up` needs.
    from kms.api.pccs import PCCSServer
    from kms.attest import Collateral

    collateral = Collateral.from_json((directory / "simulated-tee" / "collateral.json").read_text())
    server: PCCSHandle = PCCSServer({collateral.fmspc: collateral}, "127.0.0.1", port).start()
    return server


def spawn_nodes(directory: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Start every node of a new devnet (each dies with this process), this process as
    their supervisor; the state is written and returned."""
    for n in state["nodes"]:
        n["pid"] = spawn(n["config"], node_log(n), die_with_parent=True)
    state["supervisor_pid"] = os.getpid()
    write_state(directory, state)
    return state


LATE_START = "genesis was over when this node started"
"""What a node logs when it first ran after the genesis DKG's first attempt was over: it
then takes part in no genesis attempt (``kms.node.sharing_runs``), so a devnet whose nodes
all started that late never certifies."""


def log_sizes(state: dict[str, Any]) -> list[int]:
    """The current size of each node's log (where to read its new lines from)."""
    logs = [node_log(n) for n in state["nodes"]]
    return [p.stat().st_size if p.exists() else 0 for p in logs]


def started_late(
    state: dict[str, Any], since: list[int], stopping: Callable[[], bool], timeout: float
) -> bool:
    """Wait (at most ``timeout`` s) until every node has logged, after ``since``
    (``log_sizes``), that it runs; whether any of them started too late for the genesis."""
    logs = [node_log(n) for n in state["nodes"]]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        texts = []
        for path, offset in zip(logs, since, strict=True):
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    texts.append(f.read().decode(errors="replace"))
            except OSError:
                texts.append("")
        if any(LATE_START in t for t in texts):
            return True
        if all("node running" in t for t in texts):
            return False
        time.sleep(0.2)
    return False


def move_genesis(directory: Path, state: dict[str, Any], start_in: float) -> None:
    """Stop the nodes (none has a share: none took part in a genesis attempt) and move the
    committee's genesis start to ``start_in`` seconds from now in every node's config."""
    import tomllib

    stop_pids([n.get("pid") for n in state["nodes"]])
    start = round(time.time() + start_in, 3)
    for n in state["nodes"]:
        path = Path(n["config"])
        doc = tomllib.loads(path.read_text())
        doc["committee"]["genesis_start"] = start
        write_config(path, doc)
        n["pid"] = None
    write_state(directory, state)


def genesis_progress(directory: Path, stopping: Callable[[], bool]) -> tuple[int, set[Any]]:
    """How many nodes report an epoch, and the master public keys they report."""
    done, keys = 0, set()
    for n in read_state(directory)["nodes"]:
        if stopping():  # a busy node answers slowly: do not finish the round
            break
        st = status_of(n["http_url"], timeout=0.5)
        if st and st.get("epoch") is not None:
            done += 1
            keys.add(st.get("master_public_key"))
    return done, keys


def wait_for_genesis(
    directory: Path, stopping: Callable[[], bool], progress: Callable[[int], None]
) -> str | None:
    """Wait until every node reports the first epoch; its master public key, or ``None``
    when ``stopping()`` came first. ``progress(done)`` follows the nodes that are there.

    Raises ``DevnetError`` when the nodes report different keys."""
    total = len(read_state(directory)["nodes"])
    while not stopping():
        done, keys = genesis_progress(directory, stopping)
        progress(done)
        if done == total:
            # Every node must report the same key before it is written down.
            mpk = keys.pop() if len(keys) == 1 else None
            if mpk is None:
                raise DevnetError("the nodes report different keys")
            return str(mpk)
        time.sleep(0.2)
    return None


def record_genesis(directory: Path, mpk_hex: str) -> dict[str, Any]:
    """Write the devnet's master public key down and register its demo app."""
    state = read_state(directory)
    state["master_public_key"] = mpk_hex
    urls = [str(n["http_url"]) for n in state["nodes"]]
    state["apps"] = {
        "demo": register_demo_app(directory, mpk_hex),
        DSTACK_APP: register_dstack_app(directory, mpk_hex, urls),
    }
    write_state(directory, state)
    return state


def stop_supervised(directory: Path, server: PCCSHandle | None) -> None:
    """Stop every node of the devnet and its PCCS, all at once; mark them stopped."""
    stop_pids([n.get("pid") for n in read_state(directory)["nodes"]])
    if server is not None:
        server.stop()
    state = read_state(directory)
    for n in state["nodes"]:
        n["pid"] = None
    state["supervisor_pid"] = None
    write_state(directory, state)


def app_id_of(state: dict[str, Any], name_or_id: str) -> bytes:
    """An app's id from its alias in devnet.json or its hex; ``DevnetError`` if neither."""
    apps = state.get("apps", {})
    try:
        return bytes.fromhex(apps.get(name_or_id, name_or_id))
    except ValueError:
        raise DevnetError(f"unknown app {name_or_id!r} (known: {sorted(apps)})") from None


def simulated_cvm(
    directory: Path, state: dict[str, Any], *, rogue: bool = False
) -> tuple[dict[ParticipantIndex, str], Callable[[bytes], bytes]]:
    """The devnet's nodes by index, and the quotes of its simulated CVM (the demo
    measurement, or one no policy admits with ``rogue``)."""
    tee = simulated_tee(directory)
    meas = ROGUE_MEASUREMENT if rogue else DEMO_MEASUREMENT
    # Members removed by hand (``kms member``) are dropped from devnet.json: never asked again.
    removed = {int(n["index"]) for n in sync_members(directory).get("removed", [])}
    urls = {
        ParticipantIndex(int(n["index"])): n["http_url"]
        for n in state["nodes"]
        if int(n["index"]) not in removed
    }
    return urls, lambda rd: tee.quote(rd, **meas)


def create_app(
    directory: Path,
    name: str,
    *,
    admin: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A new app ``name``: a new owner key (the app id derives from it) and a first policy,
    admitted at every node (``admit_app``, through ``admin`` when given); its alias is
    written to devnet.json."""
    state = read_state(directory)
    if name in state.get("apps", {}):
        raise DevnetError(f"app {name!r} exists")
    if not state.get("master_public_key"):
        raise DevnetError("the devnet has no master public key yet")
    owner = owner_of(directory, name)
    report = admit_app(
        directory, demo_policy(owner, state["master_public_key"], version=1), admin=admin
    )
    state = read_state(directory)
    state.setdefault("apps", {})[name] = owner.app_id().hex()
    write_state(directory, state)
    return {"name": name, "app_id": owner.app_id().hex(), **report}


def _held_policy(url: str, app_id: bytes, transport: httpx.BaseTransport | None = None) -> Any:
    from kms.app.owner import held_policy

    return held_policy(url, app_id, transport=transport).get("policy")


def policies_held(
    state: dict[str, Any], app_id: bytes, *, transport: httpx.BaseTransport | None = None
) -> dict[str, Any]:
    """The policy each node holds for an app, and the versions among them."""
    nodes = [
        {"index": n["index"], "policy": _held_policy(n["http_url"], app_id, transport)}
        for n in state["nodes"]
    ]
    versions = {n["policy"]["version"] for n in nodes if n["policy"] and "version" in n["policy"]}
    return {"app_id": app_id.hex(), "nodes": nodes, "versions": sorted(versions)}


def push_next_policy(
    directory: Path,
    state: dict[str, Any],
    app_id: bytes,
    name: str,
    lifetime: int,
    *,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Sign the app's next version (one above the highest any node holds, expiring in
    ``lifetime`` seconds) with its owner key and push it to every node (``push_policy``).

    Raises ``DevnetError`` when the devnet holds no owner key for the app."""
    alias = next((k for k, v in state.get("apps", {}).items() if v == app_id.hex()), name)
    owner = owner_of(directory, alias)
    if owner.app_id() != app_id:
        raise DevnetError("no owner key for this app in the devnet")
    held = []
    for n in state["nodes"]:
        try:
            held.append(int((_held_policy(n["http_url"], app_id, transport) or {})["version"]))
        except (KeyError, TypeError, ValueError):
            pass
    version = max(held, default=0) + 1
    compose = dstack_app_compose_path(directory, alias)
    if compose.is_file():  # a dstack app: admitted by its compose hash
        bundle = dstack_policy(
            owner,
            state["master_public_key"],
            compose.read_text(),
            version=version,
            lifetime=lifetime,
        )
    else:
        bundle = demo_policy(owner, state["master_public_key"], version=version, lifetime=lifetime)
    return {"app_id": app_id.hex(), **push_policy(state, bundle, transport=transport)}
