"""``kms chaos run``: one run of the fault lab, from an empty lab to the report.

1. **Set-up**: a new lab (stale ones removed), the harness enters its parent namespace; the
   committee's hosts, PCCS, node data tmpfs and configs (``kms.chaos.committee``), byzantine
   nodes started with their adversary; genesis; the apps and their first policies; the CVM
   client hosts and the rogue's.
2. **Run** (``scenario.duration`` seconds): the workload processes fetch keys, the owner
   pushes policy versions, the operator changes the committee, the nemesis injects the
   schedule (``kms.chaos.schedule.build``), the pollers record every node's status and chain.
3. **Heal** every fault (``heal`` observation), then **quiet** (``scenario.quiet`` s, the
   workload still running), then the final checks: each member of the last epoch proves it
   holds a share matching its public share (``share``), and a last status and chain poll.
4. **Check** (``kms.chaos.checker``) and **report** (``kms.chaos.report``), with the phases'
   timings and the proxy's share of the CPU; the lab is torn down in any case (Ctrl-C too).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kms.chaos.committee import LabCommittee
from kms.chaos.nemesis import Nemesis
from kms.chaos.observe import ObservationWriter, PolledNode, Pollers, prove_share

Progress = Callable[[float, float, str], None]

GENESIS_TIMEOUT = 60.0
GENESIS_DELTAS = 50.0
_REPLACED = re.compile(r"to replace node (\d+)$")
"""The nemesis's record of a replacement that joined (``kms.chaos.nemesis``)."""
START_IN_PER_NODE = 2.5
"""Seconds from writing the configs to the genesis DKG's start (the nodes start meanwhile)."""


def recovery_target(scenario: Any) -> float:
    """Seconds from the final heal by which the lab should have recovered: two window
    periods (a change proposed in one window is certified by the end of the next) plus one
    reshare attempt as the protocol schedules it (``Schedule.default`` for the scenario's
    committee and Δ, start to end)."""
    from mpc.dkg.schedule import Schedule

    c = scenario.committee
    attempt = Schedule.default(0.0, scenario.nodes, scenario.threshold, delta=c.delta)
    return round(2 * float(c.window_period) + attempt.end, 3)


def _adversaries(events: list[Any]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for ev in events:
        if ev.kind != "byzantine":
            continue
        for t in ev.targets:
            out.setdefault(int(t.lstrip("n")), []).extend(
                {"behaviour": s, "params": dict(ev.params.get("params", {}))}
                for s in ev.params.get("strategies", [])
            )
    return out


class Run:
    """One run's moving parts (kept together so that ``teardown`` finds them all)."""

    def __init__(self, scenario: Any, seed: int, out: Path, progress: Progress | None) -> None:
        self.scenario = scenario
        self.seed = seed
        self.out = out
        self.progress = progress
        self.obs = out / "observations"
        self.timings: dict[str, float] = {}
        self.lab: Any = None
        self.committee: LabCommittee | None = None
        self.writer: ObservationWriter | None = None
        self.pollers: Pollers | None = None
        self.nemesis: Nemesis | None = None
        self.clients: dict[str, Any] = {}
        self.client_procs: list[Any] = []
        self.polled: dict[int, PolledNode] = {}
        self.operator_lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self._healing = 0.0
        self._replaced: set[int] = set()
        """Nodes erased by ``data_loss`` whose replacement joined during the run."""

    @property
    def com(self) -> LabCommittee:
        if self.committee is None:
            raise RuntimeError("the committee is not set up")
        return self.committee

    @property
    def w(self) -> ObservationWriter:
        if self.writer is None:
            raise RuntimeError("no observation writer yet")
        return self.writer

    def say(self, done: float, total: float, what: str) -> None:
        if self.progress is not None:
            self.progress(done, total, what)

    # --- the phases -------------------------------------------------------------------

    def setup(self, events: list[Any]) -> None:
        from kms.chaos import netlab

        sc = self.scenario
        self.lab = netlab.Lab.create()
        self.lab.enter()  # before any thread: every later thread is in the lab's namespace
        c = sc.committee
        self.committee = LabCommittee(
            self.lab,
            self.out / "lab",
            self.out / "logs",
            nodes=sc.nodes,
            threshold=sc.threshold,
            delta=c.delta,
            window_period=c.window_period,
            window_length=c.window_length,
            refresh_interval=c.refresh_interval,
            adversaries=_adversaries(events),
            broken=sc.broken,
        )
        com = self.committee
        t = time.time()
        com.create()
        self.timings["setup_hosts_and_init"] = time.time() - t
        start_in = max(8.0, START_IN_PER_NODE * sc.nodes)
        com.configure(start_in=start_in)
        com.start_all()
        self.say(0, 1, "genesis")
        t = time.time()
        # The genesis DKG takes about 21 Δ after its start when nothing fails; give it room
        # for a failed first attempt too.
        com.wait_genesis(max(GENESIS_TIMEOUT, start_in + GENESIS_DELTAS * sc.committee.delta))
        self.timings["setup_genesis"] = time.time() - t
        t = time.time()
        com.create_apps(sc.workload.apps)
        self.timings["setup_apps"] = time.time() - t
        for k in range(1, sc.workload.clients + 1):
            self.clients[f"c{k}"] = self.lab.add_host(f"c{k}")
        if sc.workload.rogue:
            self.clients["rogue"] = self.lab.add_host("rogue")
        self.obs.mkdir(parents=True, exist_ok=True)
        self.writer = ObservationWriter(self.obs / "harness.jsonl")
        for node in com.nodes.values():
            self.polled[node.index] = PolledNode(node.index, node.url, node.byzantine)
        self.pollers = Pollers(self.writer, self._polled_nodes)
        self.pollers.start()

    def _polled_nodes(self) -> list[PolledNode]:
        com = self.com
        for node in com.nodes.values():
            p = self.polled.get(node.index)
            if p is None:
                p = self.polled[node.index] = PolledNode(node.index, node.url, node.byzantine)
            p.up = node.running and not node.paused
            p.retired = node.retired
        return list(self.polled.values())

    def start_workload(self, until: float) -> None:
        import sys

        com, sc = self.com, self.scenario
        if com.mpk is None:
            raise RuntimeError("no master public key")
        urls = json.dumps({str(n.index): n.url for n in com.members()})
        apps = ",".join(com.apps.values())
        for name, host in self.clients.items():
            role = "rogue" if name == "rogue" else "client"
            argv = [sys.executable, "-m", "kms.chaos.workload", role, "--name", name]
            argv += ["--mpk", com.mpk, "--urls", urls, "--apps", apps]
            argv += ["--tee", str(com.tee_dir), "--out", str(self.obs / f"{name}.jsonl")]
            argv += ["--interval", str(sc.workload.fetch_interval)]
            argv += ["--hedge-after", str(sc.workload.hedge_after)]
            argv += ["--duration", str(max(1.0, until - time.time()))]
            if sc.broken == "skip-sigma-check" and role == "client":
                argv += ["--broken", sc.broken]
            log = open(self.out / "logs" / f"{name}.log", "ab")
            self.client_procs.append(self.lab.popen(host, argv, stdout=log, stderr=log))
            log.close()

    def op(self, op: str, ok: bool, detail: str) -> None:
        self.w.write({"kind": "op", "t": time.time(), "op": op, "ok": ok, "detail": detail})

    def _operator(self, ops: tuple[str, ...], every: float, end: float) -> None:
        k = 0
        while not self.stop.wait(every) and time.time() < end:
            what = ops[k % len(ops)]
            k += 1
            with self.operator_lock:
                try:
                    detail = self._do(what)
                    self.op(what, True, detail)
                except Exception as exc:
                    self.op(what, False, f"{type(exc).__name__}: {exc}")

    def _do(self, what: str) -> str:
        com = self.com
        if what == "join":
            return f"node {com.join()} joined"
        if what == "remove":
            honest = [n for n in com.honest() if n.running]
            if len(com.members()) - 1 < max(com.threshold, 2) or not honest:
                return "skipped: too few members to remove one"
            victim = max(honest, key=lambda n: n.index)
            com.remove(victim.index)
            return f"node {victim.index} removed"
        if what == "threshold":
            members = len(com.members())
            t = com.threshold + 1 if com.threshold < members - 1 else com.threshold - 1
            t = max(2, min(t, members))
            com.change_threshold(t)
            return f"threshold is {t}"
        if what == "refresh":
            com.refresh()
            return "refreshed"
        raise ValueError(f"unknown operator op {what!r}")

    def _owner(self, every: float, end: float) -> None:
        com = self.com
        names = list(com.apps)
        k = 0
        while not self.stop.wait(every) and time.time() < end:
            name = names[k % len(names)]
            k += 1
            try:
                rep = com.push_policy(name)
                self.op(
                    "policy_push",
                    bool(rep.get("acknowledged")),
                    json.dumps({"app": name, **rep}, default=str)[:500],
                )
            except Exception as exc:
                self.op("policy_push", False, f"{name}: {type(exc).__name__}: {exc}")

    def _thread(self, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def run(self, events: list[Any]) -> None:
        sc, com = self.scenario, self.com
        t0 = time.time()
        end = t0 + float(sc.duration)
        events = self.align(events, t0)
        self.start_workload(end + float(sc.quiet) + 5.0)
        self.nemesis = Nemesis(
            self.lab,
            com,
            self.w,
            self.clients,
            operator_lock=self.operator_lock,
            on_op=self._nemesis_op,
        )
        self.nemesis.start(events, t0)
        if sc.operator.every > 0 and sc.operator.ops:
            self._thread(self._operator, tuple(sc.operator.ops), float(sc.operator.every), end)
        if sc.workload.policy_push_every > 0:
            self._thread(self._owner, float(sc.workload.policy_push_every), end)
        while time.time() < end:
            self.say(time.time() - t0, float(sc.duration), "faults")
            time.sleep(min(1.0, max(0.0, end - time.time())))

    def align(self, events: list[Any], t0: float) -> list[Any]:
        """Window-aligned faults moved onto the run's axis, now that genesis_start is known;
        the ones whose time has passed are dropped and listed in the report's errors."""
        from kms.chaos.schedule import resolve_windows

        com = self.com
        kept, dropped = resolve_windows(events, com.genesis_start(), com.window_period, t0)
        for ev in dropped:
            self.errors.append(
                f"fault {ev.id} ({ev.kind} in window {ev.window}) dropped: its time passed "
                f"{-ev.at:.1f} s before the run started"
            )
        return kept

    def heal_and_settle(self) -> None:
        sc = self.scenario
        self._healing = time.time()
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)
        if self.nemesis is not None:
            self.nemesis.heal_all()
        target = recovery_target(sc)
        self.w.write({"kind": "heal", "t": time.time(), "recovery_target_seconds": target})
        self.timings["heal"] = time.time() - self._healing
        began = time.time()
        bound = began + float(sc.recovery_wait) * target
        self.redrive(bound)
        if not self.settled():
            while time.time() < bound and not self.settled():
                self.say(time.time() - began, bound - began, "recovery")
                time.sleep(1.0)
        self.timings["recovery_wait"] = time.time() - began
        began = time.time()
        quiet = float(sc.quiet)
        while time.time() - began < quiet:
            self.say(time.time() - began, quiet, "quiet")
            time.sleep(min(1.0, max(0.0, quiet - (time.time() - began))))

    # --- recovery after the final heal ------------------------------------------------

    def settled(self) -> bool:
        """Every running member answers at one epoch with no sharing run under way and no
        locked membership outcome (so no certified change waits for its reshare)."""
        com = self.com
        epochs = set()
        for n in com.members():
            if n.lost or not n.running or n.paused:
                continue
            st = com.status(n, 2.0)
            if st is None or st.get("running") or st.get("locked_proposal"):
                return False
            epochs.add(st.get("epoch"))
        return len(epochs) == 1 and None not in epochs

    def _committee_now(self) -> list[int] | None:
        """The committee of the current epoch as a running honest member reports it."""
        com = self.com
        for n in com.honest():
            if n.lost or not n.running or n.paused:
                continue
            st = com.status(n, 2.0)
            if st and st.get("committee"):
                return [int(m["index"]) for m in st["committee"]]
        return None

    def redrive(self, bound: float) -> None:
        """Operator work the faults left undone: the removal and the replacement of a node
        whose data was erased. A removal already certified is waited for (its reshare), never
        proposed twice; every action taken is recorded as an ``op`` observation."""
        com = self.com
        lost = [n for n in com.nodes.values() if n.lost and not n.retired]
        replaced = set(self._replaced)
        unreplaced = [n for n in com.nodes.values() if n.lost and n.index not in replaced]
        stopped = [n for n in com.nodes.values() if n.retired and not n.lost]
        if not lost and not unreplaced and not stopped:
            return
        while time.time() < bound and not self.settled():
            time.sleep(1.0)
        if not self.settled():
            unsettled = "not attempted, the committee did not settle within the bound"
            for n in com.nodes.values():
                if n.lost and not (n.retired and n.index in replaced):
                    self.op("remove", False, f"re-driven after heal: node {n.index}: {unsettled}")
            return
        adopted = self._adopt_certified_joins()
        for n in lost:
            committee = self._committee_now()
            if committee is not None and n.index not in committee:
                # Its removal was certified during the run and its reshare has finished.
                n.member = False
                n.retired = True
                continue
            timeout = max(10.0, bound - time.time())
            try:
                com.remove(n.index, timeout=timeout)
                self.op("remove", True, f"re-driven after heal: node {n.index} removed")
            except Exception as exc:
                self.op("remove", False, f"re-driven after heal: remove {n.index}: {exc}")
                committee = self._committee_now()
                if committee is not None and n.index not in committee:
                    n.member = False  # certified after all, as the committee shows
                    n.retired = True
        for n in unreplaced[adopted:]:
            timeout = max(10.0, bound - time.time())
            try:
                new = com.join(timeout=timeout)
                self.op("join", True, f"re-driven after heal: node {new} replaces {n.index}")
            except Exception as exc:
                self.op("join", False, f"re-driven after heal: replacing {n.index}: {exc}")

    def _adopt_certified_joins(self) -> int:
        """Nodes whose join timed out (the lab stopped them) but was certified later: the
        committee holds them, so they are started again and counted as members (each one
        stands for a replacement). Returns how many."""
        com = self.com
        committee = self._committee_now()
        adopted = 0
        for i in committee or []:
            n = com.nodes.get(i)
            if n is None or n.lost or not n.retired:
                continue
            n.retired = False
            n.member = True
            com.start(n)
            self.op(
                "join",
                True,
                f"re-driven after heal: node {i}'s join was certified after it timed out: restarted",
            )
            adopted += 1
        return adopted

    def _nemesis_op(self, op: str, ok: bool, detail: str) -> None:
        """The nemesis's operator actions: recorded, and replacements done remembered."""
        m = _REPLACED.search(detail)
        if op == "join" and ok and m is not None:
            self._replaced.add(int(m.group(1)))
        self.op(op, ok, detail)

    def final_checks(self) -> None:
        com, writer = self.com, self.w
        members = com.members()
        live_honest = sum(1 for n in members if not n.byzantine and n.running and not n.paused)
        app = next(iter(com.apps.values()))
        for node in members:
            st = com.status(node, 2.0)
            holds, matches, epoch = prove_share(com, node, app, st)
            writer.write(
                {
                    "kind": "share",
                    "t": time.time(),
                    "node": node.index,
                    "byzantine": node.byzantine,
                    "data_lost": node.lost,
                    "epoch": epoch,
                    "holds_share": holds,
                    "matches_public_share": matches,
                    "attempt_honest_live": live_honest,
                    "threshold": com.threshold,
                }
            )
        if self.pollers is not None:
            self.pollers.stop()
        final = Pollers(writer, self._polled_nodes)
        final.poll_all(chains=True)
        final.stop()

    def teardown(self) -> None:
        for p in self.client_procs:
            if p.poll() is None:
                p.terminate()
        for p in self.client_procs:
            try:
                p.wait(5)
            except Exception:
                p.kill()
        if self.pollers is not None:
            self.pollers.stop()
        if self.committee is not None:
            try:
                self.committee.stop_all()
            except Exception as exc:
                self.errors.append(f"stop: {exc}")
        if self.writer is not None:
            self.writer.close()
        if self.lab is not None:
            self.lab.teardown()


def run(scenario: Any, *, seed: int, out: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run ``scenario`` once with ``seed`` into ``out``; returns the report (figures first)."""
    from kms.chaos import checker, netlab, report
    from kms.chaos import schedule as schedule_mod

    netlab.require_root()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in (out / "observations").glob("*.jsonl"):
        old.unlink()
    events = schedule_mod.build(scenario, seed)
    r = Run(scenario, seed, out, progress)
    began = time.time()
    cpu0 = 0.0
    try:
        r.setup(events)
        cpu0 = r.lab.proxy_cpu_seconds()
        r.timings["setup"] = time.time() - began
        t = time.time()
        r.run(events)
        r.timings["run"] = time.time() - t
        t = time.time()
        r.heal_and_settle()
        r.timings["quiet"] = (
            time.time() - t - r.timings.get("heal", 0.0) - r.timings.get("recovery_wait", 0.0)
        )
        t = time.time()
        r.final_checks()
        r.timings["final_checks"] = time.time() - t
        proxy_cpu = r.lab.proxy_cpu_seconds() - cpu0
        wall = time.time() - began
    finally:
        t = time.time()
        r.teardown()
        r.timings["teardown"] = time.time() - t
    r.timings["total"] = time.time() - began
    figures = checker.check(out / "observations")
    extra = {
        "lab": r.lab.id if r.lab is not None else None,
        "proxy_cpu": {
            "proxy_cpu_seconds": round(proxy_cpu, 3),
            "wall_seconds": round(wall, 3),
            "share": round(proxy_cpu / wall, 4) if wall > 0 else None,
            "cores": os.cpu_count(),
        },
        "timings": {k: round(v, 3) for k, v in r.timings.items()},
        "errors": r.errors + (r.nemesis.errors if r.nemesis is not None else []),
        "crashes": r.nemesis.crashes if r.nemesis is not None else [],
        "conditions": r.nemesis.conditions if r.nemesis is not None else [],
    }
    return dict(report.write(out, scenario, seed, events, figures, extra))
