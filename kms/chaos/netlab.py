"""The fault lab's network: one Linux network namespace per host, a bridge, and a link proxy.

A lab ``L`` (short random hex) names everything ``qkl-L-…``: the parent namespace ``qkl-L-p``
holds the bridge ``br0`` with the controller address ``10.213.0.1/16`` and, for every host ``k``,
a shadow address ``10.213.1.k``; host ``k`` lives in namespace ``qkl-L-<name>`` with one veth
``eth0`` at ``10.213.2.k/32``, created from the parent namespace with ``ip -n`` (nothing is ever
created in the machine's own namespace). Hosts reach each other through the parent, which routes
(without redirects) between its bridge's ports: each host holds one neighbour entry and the
parent one per host, so the kernel's neighbour table, shared by every namespace, does not fill
as hosts are added. Every TCP connection between hosts to a port declared with
:meth:`Lab.expose` is DNATed, in the source host's namespace, to a listener that the one proxy
process (:mod:`kms.chaos.proxy`) keeps on the destination's shadow address; the proxy connects to
the real address from the source's shadow address. So inside any host, traffic to or from host
``d`` has the remote address ``shadow(d)``, and partitions are iptables rules on shadow addresses.

A *direct* lab (``Lab.create(direct=True)``) has no link proxy and no DNAT: hosts reach each
other's real addresses over the bridge, so links cannot be shaped (``set_link`` and ``reset_link``
raise ``LabError``); partitions and bandwidth caps still work. It is the cheap base for runs with
many hosts, where one proxy process carrying every link would be the bottleneck
(``bench.scale``; latency is then injected in the nodes, ``net.delay``).

Needs root. The lab records itself in ``state_dir/<id>.json`` with its owner's pid; a lab whose
owner died (a SIGKILLed harness) is removed by the next :meth:`Lab.create`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import ipaddress
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

CLONE_NEWNET = 0x40000000
PREFIX = "qkl-"
SUBNET_PREFIX = 16
CONTROLLER_IP = "10.213.0.1"
LAB_NET = str(ipaddress.ip_network(f"{CONTROLLER_IP}/{SUBNET_PREFIX}", strict=False))
MAX_HOSTS = 250
BALLAST = ".qkl-ballast"
DEFAULT_STATE_DIR = Path("/run/qkl")
_SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


class LabError(RuntimeError):
    """The lab cannot be built or driven on this machine (not root, a missing tool, a failed
    command)."""


def _which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for directory in _SBIN:
        candidate = os.path.join(directory, tool)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_root() -> None:
    """Raise :class:`LabError` unless the lab can run here: root, ``ip``, ``tc``, ``iptables``."""
    if os.geteuid() != 0:
        raise LabError("the fault lab needs root: network namespaces, iptables, tmpfs; run as root")
    missing = [
        f"{tool} (Debian package {package})"
        for tool, package in (
            ("ip", "iproute2"),
            ("tc", "iproute2"),
            ("iptables", "iptables"),
            ("iptables-restore", "iptables"),
        )
        if _which(tool) is None
    ]
    if missing:
        raise LabError(
            "the fault lab needs "
            + ", ".join(missing)
            + "; install them with: apt-get install iproute2 iptables"
        )


def _tool(name: str) -> str:
    path = _which(name)
    if path is None:
        raise LabError(f"{name} is missing (Debian packages: iproute2, iptables)")
    return path


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    argv = [_tool(argv[0]), *argv[1:]]
    proc = subprocess.run(  # noqa: S603 - fixed tools, lab-made arguments
        argv, input=stdin, capture_output=True, text=True, check=False, timeout=60
    )
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _sysctl(ns: str, values: Mapping[str, int]) -> None:
    """Set ``/proc/sys/net/<key>`` to each value inside namespace ``ns`` (keys are the lab's
    own constants; ``sh`` rather than ``sysctl``, which a minimal machine may lack)."""
    script = "; ".join(f"echo {int(v)} > /proc/sys/net/{k}" for k, v in values.items())
    _run(["ip", "netns", "exec", ns, "sh", "-c", script])


def _list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _netns_pids(ns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", ns], check=False)
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22, starttime


def _pid_alive(pid: int, start_time: int | None) -> bool:
    now = _proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def _mounts_under(root: Path) -> list[Path]:
    found: list[Path] = []
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return found
    prefix = str(root).rstrip("/") + "/"
    for line in lines:
        parts = line.split()
        if len(parts) < 2:
            continue
        point = parts[1].replace("\\040", " ")
        if point.startswith(prefix):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(str(p)), reverse=True)


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _destroy(lab_id: str, state_dir: Path) -> None:
    """Remove every trace of lab ``lab_id``: its processes, mounts, namespaces and record."""
    names = [ns for ns in _list_netns() if ns.startswith(f"{PREFIX}{lab_id}-")]
    for _ in range(3):
        pids = [pid for ns in names for pid in _netns_pids(ns) if pid != os.getpid()]
        if not pids:
            break
        _kill_pids(pids)
        time.sleep(0.05)
    for point in _mounts_under(state_dir / lab_id):
        _run(["umount", str(point)], check=False)
        if os.path.ismount(point):
            _run(["umount", "-l", str(point)], check=False)
    hosts = [ns for ns in names if not ns.endswith("-p")]
    for ns in [*hosts, *(ns for ns in names if ns not in hosts)]:
        _run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(state_dir / lab_id, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / f"{lab_id}.json").unlink()


def remove_stale_labs(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Remove every lab recorded in ``state_dir`` whose owner process is gone; return their ids.

    Labs whose owner is alive are never touched."""
    removed: list[str] = []
    if not state_dir.is_dir():
        return removed
    for record in sorted(state_dir.glob("*.json")):
        try:
            data = json.loads(record.read_text())
            lab_id = str(data["id"])
            pid = int(data["pid"])
            start = data.get("start_time")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if lab_id != record.stem or _pid_alive(pid, None if start is None else int(start)):
            continue
        _destroy(lab_id, state_dir)
        removed.append(lab_id)
    return removed


@dataclass(frozen=True)
class Host:
    """A network host of the lab: its own namespace ``ns``, address ``ip``, and the ``shadow``
    address that every other host sees its traffic come from."""

    name: str
    index: int
    ns: str
    ip: str
    shadow: str


def _host_ip(index: int) -> str:
    return f"10.213.2.{index}"


def _shadow_ip(index: int) -> str:
    return f"10.213.1.{index}"


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


class _ProxyClient:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.file: Any = None

    def connect(self, deadline: float) -> None:
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise LabError(f"the link proxy did not open {self.path}") from None
                time.sleep(0.05)
                continue
            self.sock = sock
            self.file = sock.makefile("rwb")
            return

    def call(self, request: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.file is None:
                raise LabError("the link proxy is not running")
            self.file.write(json.dumps(request).encode() + b"\n")
            self.file.flush()
            line = self.file.readline()
        if not line:
            raise LabError("the link proxy closed its control socket")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise LabError(f"link proxy: {reply.get('error')}")
        return reply

    def close(self) -> None:
        for thing in (self.file, self.sock):
            if thing is not None:
                with contextlib.suppress(OSError):
                    thing.close()
        self.file = None
        self.sock = None


class Lab:
    """A lab of network hosts. Use :meth:`create`; a context manager that tears down on exit."""

    def __init__(self, lab_id: str, state_dir: Path, *, direct: bool = False) -> None:
        self.id = lab_id
        self.state_dir = state_dir
        self.direct = direct
        """No link proxy, no DNAT: hosts reach each other directly over the bridge."""
        self.parent_ns = f"{PREFIX}{lab_id}-p"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._mounts: list[Path] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._exposed: list[tuple[Host, int]] = []
        self._wired: set[tuple[str, str, int]] = set()
        self._partitions: set[frozenset[str]] = set()
        self._oneway: set[tuple[str, str]] = set()
        self._proxy: subprocess.Popen[bytes] | None = None
        self._proxy_client: _ProxyClient | None = None
        self._origin_ns: int | None = None
        self._torn_down = False
        self._previous_handlers: dict[int, Any] = {}
        self._lock = threading.RLock()

    # ----- life cycle -----------------------------------------------------------------------

    @classmethod
    def create(cls, state_dir: Path = DEFAULT_STATE_DIR, *, direct: bool = False) -> Lab:
        """Remove stale labs, then make a new one: parent namespace, bridge, controller address
        (``direct``: without the link proxy, see the module doc)."""
        require_root()
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_stale_labs(state_dir)
        while True:
            lab_id = secrets.token_hex(3)
            if not (state_dir / f"{lab_id}.json").exists() and not any(
                ns.startswith(f"{PREFIX}{lab_id}-") for ns in _list_netns()
            ):
                break
        lab = cls(lab_id, state_dir, direct=direct)
        lab._write_record()  # before anything exists, so that a crash leaves a removable lab
        lab._install_teardown_hooks()
        try:
            lab._make_parent()
        except BaseException:
            lab.teardown()
            raise
        return lab

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def _write_record(self) -> None:
        record = {
            "id": self.id,
            "pid": os.getpid(),
            "start_time": _proc_start_time(os.getpid()),
            "namespaces": self._namespaces,
            "mounts": [str(m) for m in self._mounts],
            "created": time.time(),
        }
        path = self.state_dir / f"{self.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def _install_teardown_hooks(self) -> None:
        atexit.register(self.teardown)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, previous)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        self.teardown()  # restores the previous handlers
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        self._write_record()
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _make_parent(self) -> None:
        self._add_ns(self.parent_ns)
        p = self.parent_ns
        # The parent routes between hosts (see _add_host) and never tells a host to go direct.
        _sysctl(
            p,
            {
                "ipv4/ip_forward": 1,
                "ipv4/conf/all/send_redirects": 0,
                "ipv4/conf/default/send_redirects": 0,
            },
        )
        _run(["ip", "-n", p, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", p, "addr", "add", f"{CONTROLLER_IP}/{SUBNET_PREFIX}", "dev", "br0"])
        _run(["ip", "-n", p, "link", "set", "br0", "up"])

    def enter(self) -> None:
        """Move the calling process into the parent namespace (call before starting threads:
        ``setns`` moves only the calling thread; threads started later inherit it)."""
        if self._origin_ns is None:
            self._origin_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        _setns(f"/run/netns/{self.parent_ns}")

    def teardown(self) -> None:
        """Kill every process of the lab, unmount its tmpfs, delete its namespaces and record.

        Idempotent."""
        with self._lock:
            if self._torn_down:
                return
            self._torn_down = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)
        self._restore_handlers()
        if self._proxy_client is not None:
            self._proxy_client.close()
        procs = [*self._procs, *([self._proxy] if self._proxy is not None else [])]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        if self._origin_ns is not None:
            with contextlib.suppress(OSError):
                libc = ctypes.CDLL(None, use_errno=True)
                libc.setns(self._origin_ns, CLONE_NEWNET)
                os.close(self._origin_ns)
            self._origin_ns = None
        _destroy(self.id, self.state_dir)

    # ----- hosts and processes ----------------------------------------------------------------

    def add_host(self, name: str) -> Host:
        """Add host ``name`` (``[a-z0-9]``, at most 8 characters) with its own namespace."""
        with self._lock:
            return self._add_host(name)

    def _add_host(self, name: str) -> Host:
        if not (0 < len(name) <= 8 and name.isascii() and name.isalnum() and name.islower()):
            raise LabError(f"bad host name {name!r}: 1-8 lower-case letters and digits")
        if name == "p" or name in self.hosts:
            raise LabError(f"host {name!r} exists or is reserved")
        index = len(self.hosts) + 1
        if index > MAX_HOSTS:
            raise LabError(f"a lab has at most {MAX_HOSTS} hosts")
        host = Host(name, index, f"{PREFIX}{self.id}-{name}", _host_ip(index), _shadow_ip(index))
        p = self.parent_ns
        self._add_ns(host.ns)
        veth = f"v{index}"
        _run(
            [
                "ip",
                "-n",
                p,
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.ns,
            ]
        )
        _run(["ip", "-n", p, "link", "set", veth, "master", "br0", "up"])
        _run(["ip", "-n", p, "addr", "add", f"{host.shadow}/{SUBNET_PREFIX}", "dev", "br0"])
        # A host's address is alone on its link and everything else is routed through the
        # parent: a host keeps one neighbour entry (the parent) and the parent one per host.
        # On one flat subnet every pair of hosts that talks holds a neighbour entry at both
        # ends, and the kernel's neighbour table (one for all namespaces, 1,024 entries by
        # default, gc_thresh3) overflows at about 33 hosts in a full mesh: new connections
        # then fail with no neighbour entry made.
        _sysctl(host.ns, {"ipv4/conf/all/accept_redirects": 0})
        _run(["ip", "-n", host.ns, "addr", "add", f"{host.ip}/32", "dev", "eth0"])
        _run(["ip", "-n", host.ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", host.ns, "route", "add", CONTROLLER_IP, "dev", "eth0", "scope", "link"])
        _run(
            [
                "ip",
                "-n",
                host.ns,
                "route",
                "add",
                LAB_NET,
                "via",
                CONTROLLER_IP,
                "dev",
                "eth0",
            ]
        )
        self._iptables_restore(
            host,
            "*filter\n:QKL - [0:0]\n-A OUTPUT -j QKL\nCOMMIT\n"
            "*nat\n:QKL-DNAT - [0:0]\n-A OUTPUT -j QKL-DNAT\nCOMMIT\n",
        )
        self.hosts[name] = host
        if not self.direct:
            self._wire((host, dst, port) for dst, port in list(self._exposed))
        return host

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def popen(
        self,
        host: Host,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        stdin: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside ``host``'s namespace in a session of its own; the lab kills it at
        teardown."""
        proc = subprocess.Popen(  # noqa: S603 - the lab runs the programs its caller names
            [_tool("ip"), "netns", "exec", host.ns, *argv],
            env=None if env is None else dict(env),
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            cwd=cwd,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    @staticmethod
    def url_ip(host: Host) -> str:
        """The address clients and nodes use to reach ``host`` (its real ip; DNAT does the rest)."""
        return host.ip

    # ----- links through the proxy ------------------------------------------------------------

    def _proxy_call(self, request: Mapping[str, Any]) -> dict[str, Any]:
        if self.direct:
            raise LabError("a direct lab has no link proxy: its links cannot be shaped or reset")
        with self._lock:
            client = self._proxy_client or self._start_proxy()
        return client.call(request)

    def _start_proxy(self) -> _ProxyClient:
        if self._torn_down:
            raise LabError("the lab is torn down")
        control = self.state_dir / self.id / "proxy.sock"
        control.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        proc = subprocess.Popen(  # noqa: S603
            [
                _tool("ip"),
                "netns",
                "exec",
                self.parent_ns,
                sys.executable,
                "-m",
                "kms.chaos.proxy",
                "--control",
                str(control),
            ],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        self._proxy = proc
        client = _ProxyClient(control)
        try:
            client.connect(time.monotonic() + 30)
        except LabError:
            proc.kill()
            raise
        self._proxy_client = client
        return client

    def _iptables_restore(self, host: Host, rules: str) -> None:
        _run(["ip", "netns", "exec", host.ns, "iptables-restore", "-w", "--noflush"], stdin=rules)

    def _wire(self, links: Iterable[tuple[Host, Host, int]]) -> None:
        """Route ``src``'s connections to ``dst:port`` through the proxy, for each triple (one
        ``iptables-restore`` per source host)."""
        rules: dict[str, list[str]] = {}
        for src, dst, port in links:
            key = (src.name, dst.name, port)
            if src.name == dst.name or key in self._wired:
                continue
            reply = self._proxy_call(
                {
                    "op": "listen",
                    "listen_ip": dst.shadow,
                    "listen_port": 0,
                    "upstream_ip": dst.ip,
                    "upstream_port": port,
                    "bind_ip": src.shadow,
                    "link": f"{src.name}>{dst.name}",
                }
            )
            rules.setdefault(src.name, []).append(
                f"-A QKL-DNAT -p tcp -d {dst.ip}/32 --dport {port} "
                f"-j DNAT --to-destination {dst.shadow}:{int(reply['port'])}"
            )
            self._wired.add(key)
        for name, lines in rules.items():
            self._iptables_restore(self.hosts[name], "*nat\n" + "\n".join(lines) + "\nCOMMIT\n")

    def expose(self, host: Host, port: int) -> None:
        """Declare that ``host`` listens on TCP ``port`` for the other hosts: every other host's
        connections to ``host.ip:port`` go through the proxy (hosts added later too)."""
        with self._lock:
            if (host, port) not in self._exposed:
                self._exposed.append((host, port))
            if self.direct:
                return
            self._wire((src, host, port) for src in list(self.hosts.values()))

    def _pairs(self, src: Host | None, dst: Host | None) -> list[tuple[Host, Host]]:
        srcs = list(self.hosts.values()) if src is None else [src]
        dsts = list(self.hosts.values()) if dst is None else [dst]
        return [(s, d) for s, d in itertools.product(srcs, dsts) if s.name != d.name]

    def set_link(
        self,
        src: Host | None,
        dst: Host | None,
        *,
        delay_ms: float = 0,
        jitter_ms: float = 0,
        stall: bool = False,
    ) -> None:
        """Shape the connections that ``src`` opens to ``dst`` (``None``: every host, as of now):
        each byte direction is delayed by ``delay_ms ± jitter_ms`` (order kept), or held while
        ``stall``."""
        for s, d in self._pairs(src, dst):
            self._proxy_call(
                {
                    "op": "set_link",
                    "link": f"{s.name}>{d.name}",
                    "delay_ms": delay_ms,
                    "jitter_ms": jitter_ms,
                    "stall": stall,
                }
            )

    def reset_link(self, src: Host | None, dst: Host | None) -> int:
        """Close (TCP RST) the live connections that ``src`` opened to ``dst``; return how many."""
        return sum(
            int(self._proxy_call({"op": "reset", "link": f"{s.name}>{d.name}"})["reset"])
            for s, d in self._pairs(src, dst)
        )

    def clear_links(self) -> None:
        """Lift every delay, jitter and stall."""
        if self._proxy_client is None:
            return
        for link in self.proxy_stats():
            self._proxy_call(
                {"op": "set_link", "link": link, "delay_ms": 0, "jitter_ms": 0, "stall": False}
            )

    def proxy_stats(self) -> dict[str, dict[str, Any]]:
        """Bytes and connections per link (``"src>dst"``)."""
        if self._proxy_client is None:
            return {}
        links: dict[str, dict[str, Any]] = self._proxy_call({"op": "stats"})["links"]
        return links

    @property
    def proxy_pid(self) -> int | None:
        """The link proxy's pid (``None`` until the first link needs it)."""
        return None if self._proxy is None else self._proxy.pid

    def proxy_cpu_seconds(self) -> float:
        """The link proxy's CPU time so far (user + system), from ``/proc``."""
        if self._proxy is None:
            return 0.0
        try:
            stat = Path(f"/proc/{self._proxy.pid}/stat").read_text()
        except OSError:
            return 0.0
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    # ----- partitions -------------------------------------------------------------------------

    def _sync_filters(self, hosts: Iterable[Host]) -> None:
        for host in hosts:
            rules = ["*filter", "-F QKL"]
            for other in self.hosts.values():
                if other.name == host.name:
                    continue
                if frozenset((host.name, other.name)) in self._partitions:
                    rules.append(f"-A QKL -d {other.shadow}/32 -j DROP")
                    rules.append(f"-A QKL -d {other.ip}/32 -j DROP")
                elif (host.name, other.name) in self._oneway:
                    rules.append(f"-A QKL -p tcp --syn -d {other.shadow}/32 -j DROP")
                    rules.append(f"-A QKL -p tcp --syn -d {other.ip}/32 -j DROP")
            rules.append("COMMIT")
            self._iptables_restore(host, "\n".join(rules) + "\n")

    def partition(self, a: Host, b: Host) -> None:
        """Cut ``a`` and ``b`` apart: each drops every packet it sends to the other."""
        with self._lock:
            self._partitions.add(frozenset((a.name, b.name)))
            self._sync_filters([a, b])

    def partition_oneway(self, src: Host, dst: Host) -> None:
        """``src`` can no longer open connections to ``dst`` (its SYNs are dropped) and its live
        connections to ``dst`` are reset; ``dst`` still reaches ``src``. Connection-level: a
        packet-level one-way drop would stall TCP both ways."""
        with self._lock:
            self._oneway.add((src.name, dst.name))
            self._sync_filters([src])
            if self._proxy_client is not None:
                self.reset_link(src, dst)

    def isolate(self, host: Host) -> None:
        """Partition ``host`` from every other host."""
        with self._lock:
            for other in self.hosts.values():
                if other.name != host.name:
                    self._partitions.add(frozenset((host.name, other.name)))
            self._sync_filters(self.hosts.values())

    def heal(self, a: Host, b: Host) -> None:
        """Lift the partitions (full and one-way, either direction) between ``a`` and ``b``."""
        with self._lock:
            self._partitions.discard(frozenset((a.name, b.name)))
            self._oneway.discard((a.name, b.name))
            self._oneway.discard((b.name, a.name))
            self._sync_filters([a, b])

    def heal_all(self) -> None:
        """Lift every partition (links shaped with :meth:`set_link` stay: :meth:`clear_links`)."""
        with self._lock:
            self._partitions.clear()
            self._oneway.clear()
            self._sync_filters(self.hosts.values())

    # ----- bandwidth --------------------------------------------------------------------------

    def bandwidth(self, host: Host, kbit: int | None) -> None:
        """Cap ``host``'s traffic to ``kbit`` kbit/s each way (``tbf`` on both ends of its veth);
        ``None`` removes the cap."""
        ends = [(host.ns, "eth0"), (self.parent_ns, f"v{host.index}")]
        for ns, dev in ends:
            if kbit is None:
                _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
                continue
            if kbit <= 0:
                raise LabError("a bandwidth cap is a positive number of kbit/s")
            burst = max(4096, kbit * 1000 // 8 // 20)  # 50 ms worth, at least a few packets
            _run(
                [
                    "tc",
                    "-n",
                    ns,
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    f"{kbit}kbit",
                    "burst",
                    str(burst),
                    "latency",
                    "200ms",
                ]
            )

    # ----- disks ------------------------------------------------------------------------------

    def tmpfs(self, name: str, size_bytes: int) -> Path:
        """Mount a tmpfs of ``size_bytes`` at ``state_dir/<id>/<name>``; unmounted at teardown."""
        if not name or "/" in name or name.startswith(".") or name == "proxy.sock":
            raise LabError(f"bad tmpfs name {name!r}")
        path = self.state_dir / self.id / name
        path.mkdir(parents=True, exist_ok=False, mode=0o700)
        self._mounts.append(path)
        self._write_record()
        _run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={int(size_bytes)},mode=0700",
                f"{PREFIX}{self.id}",
                str(path),
            ]
        )
        return path

    @staticmethod
    def fill(path: Path, leave_bytes: int = 0) -> int:
        """Write a ballast file in ``path`` until the file system is full (``ENOSPC``) or only
        ``leave_bytes`` are free; return the bytes written."""
        ballast = Path(path) / BALLAST
        written = 0
        block = b"\0" * (1 << 20)
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                st = os.statvfs(path)
                free = st.f_bavail * st.f_frsize
                room = free - leave_bytes
                if room <= 0:
                    break
                chunk = block[: min(len(block), room)]
                try:
                    n = os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        break
                    raise
                if n <= 0:
                    break
                written += n
        finally:
            os.close(fd)
        return written

    @staticmethod
    def unfill(path: Path) -> None:
        """Remove the ballast that :meth:`fill` wrote."""
        with contextlib.suppress(FileNotFoundError):
            (Path(path) / BALLAST).unlink()


_NETEM: bool | None = None


def netem_available(state_dir: Path = DEFAULT_STATE_DIR) -> bool:
    """Whether this kernel has ``sch_netem`` (tried on a veth in a throwaway lab; cached)."""
    global _NETEM
    if _NETEM is None:
        with Lab.create(state_dir) as lab:
            a = lab.add_host("probe")
            out = subprocess.run(  # noqa: S603
                [
                    _tool("tc"),
                    "-n",
                    a.ns,
                    "qdisc",
                    "add",
                    "dev",
                    "eth0",
                    "root",
                    "netem",
                    "delay",
                    "1ms",
                ],
                capture_output=True,
                check=False,
                timeout=30,
            )
            _NETEM = out.returncode == 0
    return _NETEM
