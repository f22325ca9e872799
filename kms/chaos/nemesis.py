"""The nemesis: it injects the schedule's faults on time and lifts each after its duration.

Each fault of the schedule (``kms.chaos.schedule.FaultEvent``: ``at`` seconds after the
workload starts, for ``duration`` seconds) is made with the lab and the committee:

* ``partition``: the targets are cut off from every other host (iptables on shadow
  addresses, both ways); ``partition_partial``: the listed links ``a-b`` only;
  ``partition_oneway``: ``a>b``, connection-level (a's new connections to b are dropped, its
  live ones reset);
* ``delay``/``stall`` on every connection of a target host, or of a link, through the
  proxy; ``reset``: the live connections are closed once (an instant fault);
  ``bandwidth``: ``tbf`` on the target hosts' veths;
* ``kill``: SIGKILL, then a restart from the node's own store after the duration;
  ``pause``: SIGSTOP, then SIGCONT; ``skew``: the node's libfaketime offset file;
  ``disk_full``: a ballast file fills the node's data tmpfs, then is removed;
  ``data_loss``: the node is stopped and its data directory erased; the operator then
  replaces it through the membership flow (it is removed, a fresh node joins on a new host);
* ``byzantine``: the nodes run their adversary from the start (the committee starts them
  with it); one ``fault`` observation per strategy.

Each fault is written as one ``fault`` observation when it is lifted (``t1``), and every
change of the set of members a client can use (running, not paused, disk not full, not cut
off from or stalled towards the client) as a ``reach`` observation.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kms.app.devnet import poll_get
from kms.chaos.committee import LabCommittee, LabNode
from kms.chaos.observe import ObservationWriter


@dataclass
class Active:
    """A fault in force: its event, when it started, and how to lift it."""

    event: Any
    t0: float
    lift: Callable[[], None]
    blocked: set[tuple[str, str]] = field(default_factory=set)
    """Host pairs (src, dst) whose new connections fail while it lasts."""
    down: set[int] = field(default_factory=set)
    """Nodes that serve nothing while it lasts."""


RESTART_AFTER = 5.0
"""Seconds before a node process that exited by itself is started again (the shipped systemd
unit's ``Restart=on-failure``, ``RestartSec=5``)."""
MAX_RESTARTS = 5
"""Restarts of one node's crashes at most (a node that cannot start is left down)."""


class Nemesis:
    def __init__(
        self,
        lab: Any,
        committee: LabCommittee,
        writer: ObservationWriter,
        clients: dict[str, Any],
        *,
        operator_lock: threading.Lock | None = None,
        on_op: Callable[[str, bool, str], None] | None = None,
    ) -> None:
        self.lab = lab
        self.committee = committee
        self.writer = writer
        self.clients = clients
        self.operator_lock = operator_lock or threading.Lock()
        self.on_op = on_op
        self.active: dict[int, Active] = {}
        self.lock = threading.RLock()
        self.errors: list[str] = []
        self._reach: dict[str, int] = {}
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self.t0 = 0.0
        self.crashes: list[dict[str, Any]] = []
        """Node processes that exited by themselves (not killed by the nemesis or the
        operator): node, time, exit code, and whether they were restarted."""
        self._restarts: dict[int, int] = {}
        self._seen_crash: set[int] = set()
        self.conditions: list[dict[str, Any]] = []
        """Each ``only_if`` checked: the event, when, the window, whether it held."""

    # --- hosts ------------------------------------------------------------------------

    def host(self, name: str) -> Any:
        if name in self.clients:
            return self.clients[name]
        if name.startswith("n") and name[1:].isdigit():
            return self.committee.nodes[int(name[1:])].host
        return self.lab.host(name)

    def node(self, name: str) -> LabNode:
        return self.committee.nodes[int(name.lstrip("n"))]

    def all_hosts(self) -> list[Any]:
        hosts = [n.host for n in self.committee.nodes.values() if not n.retired]
        return hosts + list(self.clients.values())

    @staticmethod
    def link(target: str) -> tuple[str, str, bool]:
        """``a-b`` (both ways) or ``a>b`` (one way): the two host names and whether one-way."""
        if ">" in target:
            a, b = target.split(">", 1)
            return a, b, True
        a, b = target.split("-", 1)
        return a, b, False

    # --- schedule ---------------------------------------------------------------------

    def start(self, events: list[Any], t0: float) -> None:
        self.t0 = t0
        for ev in events:
            if ev.kind == "byzantine":
                self._byzantine(ev)
                continue
            self._push(t0 + float(ev.at), functools.partial(self._inject, ev))
        self.write_reach()
        self._thread = threading.Thread(target=self._loop, name="nemesis", daemon=True)
        self._thread.start()

    def _push(self, at: float, action: Callable[[], None]) -> None:
        with self.lock:
            heapq.heappush(self._queue, (at, next(self._seq), action))

    def supervise(self) -> None:
        """Restart, ``RESTART_AFTER`` seconds on, a node whose process exited by itself (a
        crash), as its service manager would; record the crash."""
        with self.lock:
            ours = set().union(*(a.down for a in self.active.values())) if self.active else set()
        for n in list(self.committee.nodes.values()):
            p = n.proc
            if n.retired or n.lost or p is None or p.poll() is None or n.index in ours:
                continue
            if p.pid in self._seen_crash:
                continue
            self._seen_crash.add(p.pid)
            count = self._restarts.get(n.index, 0)
            restart = count < MAX_RESTARTS
            self.crashes.append(
                {"node": n.index, "t": time.time(), "exit": p.returncode, "restarted": restart}
            )
            if restart:
                self._restarts[n.index] = count + 1
                self._push(time.time() + RESTART_AFTER, functools.partial(self._restart, n, p))

    def _restart(self, n: LabNode, crashed: Any) -> None:
        if n.proc is crashed and not n.retired and not n.lost:
            self.committee.start(n)

    def _loop(self) -> None:
        next_check = 0.0
        while not self._stop.is_set():
            if time.time() >= next_check:
                next_check = time.time() + 1.0
                self.supervise()
            with self.lock:
                due = self._queue[0][0] if self._queue else None
            if due is None or due > time.time():
                self._stop.wait(0.05 if due is None else min(0.05, max(0.0, due - time.time())))
                continue
            with self.lock:
                _, _, action = heapq.heappop(self._queue)
            try:
                action()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.write_reach()

    def stop(self) -> None:
        """Stop the schedule; wait for replacements under way (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for w in self._workers:
            w.join(timeout=90)

    # --- injecting and lifting --------------------------------------------------------

    def _inject(self, ev: Any) -> None:
        cond = ev.params.get("only_if")
        if cond is not None:
            held = self.condition(cond, ev.window)
            self.conditions.append(
                {
                    "id": int(ev.id),
                    "t": time.time(),
                    "only_if": cond,
                    "window": ev.window,
                    "held": held,
                }
            )
            if not held:
                return
        act = getattr(self, "_" + ev.kind)(ev)
        if act is None:
            return
        with self.lock:
            self.active[ev.id] = act
        if ev.kind == "reset":
            self._lift(ev.id)
        elif ev.duration is not None and ev.kind != "data_loss":
            self._push(act.t0 + float(ev.duration), lambda: self._lift(ev.id))

    def _lift(self, ev_id: int) -> None:
        with self.lock:
            act = self.active.pop(ev_id, None)
        if act is None:
            return
        try:
            act.lift()
        finally:
            self.record(act, time.time())

    def record(self, act: Active, t1: float | None) -> None:
        ev = act.event
        self.writer.write(
            {
                "kind": "fault",
                "id": int(ev.id),
                "fault": ev.kind,
                "t0": act.t0,
                "t1": t1,
                "targets": list(ev.targets),
                "params": dict(ev.params),
                "inside_model": bool(ev.inside_model),
            }
        )

    def heal_all(self) -> None:
        """The final heal: stop injecting, let a replacement under way finish (it lifts its
        own fault), lift every fault in force, clear every partition and link shape, and
        start every node that is down (a crash waiting for its restart too)."""
        self.stop()
        with self.lock:
            self._queue.clear()
            ids = list(self.active)
        for i in ids:
            try:
                self._lift(i)
            except Exception as exc:
                self.errors.append(f"heal {i}: {type(exc).__name__}: {exc}")
        try:
            self.lab.heal_all()
            self.lab.clear_links()
        except Exception as exc:
            self.errors.append(f"heal_all: {type(exc).__name__}: {exc}")
        self.supervise()
        for n in list(self.committee.nodes.values()):
            if not n.retired and not n.lost and not n.running:
                self.committee.start(n)
        self.write_reach()

    # --- conditions -------------------------------------------------------------------

    def served_chain(self) -> list[dict[str, Any]]:
        """The longest chain the running members serve (``observe.chain_links``), or []."""
        from kms.chaos.observe import chain_links

        best: list[dict[str, Any]] = []
        for n in self.committee.members():
            if not n.running or n.paused:
                continue
            try:
                r = poll_get(n.url + "/v1/chain", timeout=2.0)
                links = chain_links(r.content) if r.status_code == 200 else []
            except Exception:  # an unreachable member, or an answer that does not decode
                links = []
            if len(links) > len(best):
                best = links
        return best

    def condition(self, cond: str, window: int | None) -> bool:
        """Whether ``cond`` holds now for ``window`` (see ``scenario.Fault.only_if``):
        ``refresh-sorts-first``: the chain's last link is an epoch certificate and window
        w's scheduled refresh proposal (proposer: member w mod n of the sorted members)
        has a smaller id than window w + 1's, so a member holding both decides w's."""
        from mpc.membership.messages import Proposal, Refresh

        if cond != "refresh-sorts-first" or window is None:
            return False
        links = self.served_chain()
        if not links or links[-1]["kind"] != "epoch":
            return False
        head, epoch = bytes.fromhex(links[-1]["hash"]), int(links[-1]["epoch"])
        members = sorted(n.index for n in self.committee.members())
        a, b = (
            Proposal.of(epoch, head, members[w % len(members)], w.to_bytes(16, "big"), Refresh())
            for w in (window, window + 1)
        )
        return a.id() < b.id()

    # --- network faults ---------------------------------------------------------------

    def _partition(self, ev: Any) -> Active:
        side = [self.host(t) for t in ev.targets]
        names = {h.name for h in side}
        rest = [h for h in self.all_hosts() if h.name not in names]
        pairs = [(a, b) for a in side for b in rest]
        for a, b in pairs:
            self.lab.partition(a, b)
        blocked = {(a.name, b.name) for a, b in pairs} | {(b.name, a.name) for a, b in pairs}
        return Active(ev, time.time(), lambda: self._heal_pairs(pairs), blocked)

    def _heal_pairs(self, pairs: list[tuple[Any, Any]]) -> None:
        for a, b in pairs:
            self.lab.heal(a, b)

    def _partition_partial(self, ev: Any) -> Active:
        pairs = []
        for t in ev.targets:
            a, b, _ = self.link(t)
            pairs.append((self.host(a), self.host(b)))
        for a, b in pairs:
            self.lab.partition(a, b)
        blocked = {(a.name, b.name) for a, b in pairs} | {(b.name, a.name) for a, b in pairs}
        return Active(ev, time.time(), lambda: self._heal_pairs(pairs), blocked)

    def _partition_oneway(self, ev: Any) -> Active:
        pairs = []
        for t in ev.targets:
            a, b, _ = self.link(t)
            pairs.append((self.host(a), self.host(b)))
        for a, b in pairs:
            self.lab.partition_oneway(a, b)
        blocked = {(a.name, b.name) for a, b in pairs}
        return Active(ev, time.time(), lambda: self._heal_pairs(pairs), blocked)

    def _links_of(self, ev: Any) -> list[tuple[Any, Any]]:
        """(src, dst) pairs, ``None`` meaning every host: both ways of each target."""
        out: list[tuple[Any, Any]] = []
        for t in ev.targets:
            if "-" in t or ">" in t:
                a, b, oneway = self.link(t)
                out.append((self.host(a), self.host(b)))
                if not oneway:
                    out.append((self.host(b), self.host(a)))
            else:
                h = self.host(t)
                out += [(h, None), (None, h)]
        return out

    def _shape(self, ev: Any, **shape: Any) -> Active:
        links = self._links_of(ev)
        for s, d in links:
            self.lab.set_link(s, d, **shape)

        def lift() -> None:
            for s, d in links:
                self.lab.set_link(s, d, delay_ms=0, jitter_ms=0, stall=False)

        blocked: set[tuple[str, str]] = set()
        if shape.get("stall"):
            hosts = self.all_hosts()
            for s, d in links:
                for a in [s] if s is not None else hosts:
                    for b in [d] if d is not None else hosts:
                        if a.name != b.name:
                            blocked |= {(a.name, b.name), (b.name, a.name)}
        return Active(ev, time.time(), lift, blocked)

    def _delay(self, ev: Any) -> Active:
        p = ev.params
        return self._shape(
            ev, delay_ms=float(p.get("delay_ms") or 0), jitter_ms=float(p.get("jitter_ms") or 0)
        )

    def _stall(self, ev: Any) -> Active:
        return self._shape(ev, stall=True)

    def _reset(self, ev: Any) -> Active:
        for s, d in self._links_of(ev):
            self.lab.reset_link(s, d)
        return Active(ev, time.time(), lambda: None)

    def _bandwidth(self, ev: Any) -> Active:
        names: list[str] = []
        for t in ev.targets:
            if "-" in t or ">" in t:
                a, b, _ = self.link(t)
                names += [a, b]
            else:
                names.append(t)
        hosts = [self.host(n) for n in dict.fromkeys(names)]
        for h in hosts:
            self.lab.bandwidth(h, int(ev.params.get("kbit") or 1000))

        def lift() -> None:
            for h in hosts:
                self.lab.bandwidth(h, None)

        return Active(ev, time.time(), lift)

    # --- process faults ---------------------------------------------------------------

    def _kill(self, ev: Any) -> Active:
        nodes = [self.node(t) for t in ev.targets]
        for n in nodes:
            self.committee.kill(n)

        def lift() -> None:
            for n in nodes:
                if not n.retired and not n.running:
                    self.committee.start(n)

        return Active(ev, time.time(), lift, down={n.index for n in nodes})

    def _pause(self, ev: Any) -> Active:
        nodes = [self.node(t) for t in ev.targets]
        for n in nodes:
            self.committee.pause(n)

        def lift() -> None:
            for n in nodes:
                self.committee.resume(n)

        return Active(ev, time.time(), lift, down={n.index for n in nodes})

    def _skew(self, ev: Any) -> Active:
        nodes = [self.node(t) for t in ev.targets]
        s = float(ev.params.get("skew_s") or 0.0)
        for n in nodes:
            n.skew_file.write_text(f"{s:+.3f}\n")

        def lift() -> None:
            for n in nodes:
                n.skew_file.write_text("+0\n")

        return Active(ev, time.time(), lift)

    def _disk_full(self, ev: Any) -> Active:
        nodes = [self.node(t) for t in ev.targets]
        for n in nodes:
            self.lab.fill(n.dir.parent)

        def lift() -> None:
            for n in nodes:
                self.lab.unfill(n.dir.parent)

        return Active(ev, time.time(), lift, down={n.index for n in nodes})

    def _data_loss(self, ev: Any) -> Active:
        """Stop the node and erase its data; the operator replaces it (remove, then a fresh
        node joins on a new host), in a worker so that the schedule goes on meanwhile. The
        fault is lifted once the replacement is done (or has failed)."""
        nodes = [self.node(t) for t in ev.targets]
        for n in nodes:
            n.lost = True
            self.committee.kill(n)
            shutil.rmtree(n.dir, ignore_errors=True)
        act = Active(ev, time.time(), lambda: None, down={n.index for n in nodes})

        def replace() -> None:
            with self.operator_lock:
                for n in nodes:
                    self._replace(n)
            self._lift(ev.id)
            self.write_reach()

        w = threading.Thread(target=replace, name=f"replace-{ev.id}", daemon=True)
        self._workers.append(w)
        w.start()
        return act

    def _replace(self, n: LabNode) -> None:
        try:
            self.committee.remove(n.index)
            ok, detail = True, f"node {n.index} removed after data loss"
        except Exception as exc:
            ok, detail = False, f"remove {n.index} after data loss: {exc}"
        if self.on_op:
            self.on_op("remove", ok, detail)
        try:
            new = self.committee.join()
            ok, detail = True, f"node {new} joined to replace node {n.index}"
        except Exception as exc:
            ok, detail = False, f"join replacing {n.index}: {exc}"
        if self.on_op:
            self.on_op("join", ok, detail)

    def _byzantine(self, ev: Any) -> None:
        now = time.time()
        for s in ev.params.get("strategies", []):
            one = type("E", (), {})()
            one.id, one.kind, one.targets = ev.id, "byzantine", ev.targets
            one.params = {"strategy": s, "params": ev.params.get("params", {})}
            one.inside_model = True
            self.record(Active(one, now, lambda: None), None)

    # --- reach ------------------------------------------------------------------------

    def reachable(self, client: str) -> int:
        with self.lock:
            acts = list(self.active.values())
        down: set[int] = set().union(*(a.down for a in acts)) if acts else set()
        blocked: set[tuple[str, str]] = set().union(*(a.blocked for a in acts)) if acts else set()
        count = 0
        for n in self.committee.members():
            if n.index in down or not n.running or n.paused:
                continue
            if (client, n.host.name) in blocked:
                continue
            count += 1
        return count

    def write_reach(self) -> None:
        now = time.time()
        for name in self.clients:
            k = self.reachable(name)
            if self._reach.get(name) != k:
                self._reach[name] = k
                self.writer.write(
                    {
                        "kind": "reach",
                        "t": now,
                        "client": name,
                        "running_reachable_members": k,
                        "threshold": self.committee.threshold,
                    }
                )
