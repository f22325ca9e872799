"""The nemesis's fault schedule: a deterministic function of (scenario, seed, n, t).

``build`` draws every injection time, duration and victim from one
``random.Random`` seeded with the scenario's name and the seed, so the same seed gives the
same schedule (and a failing run can be replayed). Each event is labelled inside or outside
the synchrony model (``inside_model``), by whether it can delay a message between running
honest members by more than Δ:

* ``pause``, ``stall``: inside iff the duration is ≤ Δ;
* ``delay``: inside iff ``delay_ms + jitter_ms`` ≤ Δ (in ms);
* ``skew``: inside iff ``|skew_s|`` ≤ Δ/2;
* ``kill`` (with restart), ``data_loss`` (crash-recovery with an empty store), ``reset`` and
  ``disk_full``: inside (a crashed or refusing node is a crashed node, not a slow link);
* ``partition``, ``partition_partial``, ``partition_oneway``, ``bandwidth``: inside iff
  the duration is ≤ Δ (a bandwidth cap can hold a large message back for as long as it lasts);
* ``byzantine``: inside (the scenario refuses more than t − 1 byzantine members).

Capacity: at no time are more than ``n − t`` nodes under a process fault (kill, pause,
disk_full, data_loss), so at least t keep running, unless the scenario sets
``allow_majority_down``; a node never has two process faults at once. An injection drawn by
``every`` that finds no free victim is dropped; one drawn by ``count`` waits until a victim
is free (and is dropped only if that is after the end of the run); so does one placed by
``at``. Explicit victims (``nodes``) are used as given, when all of them are free.

Byzantine members are never victims of node faults (process faults and skew): their
behaviour is the adversary's to choose, and a crash of a corrupt member tells nothing
about the honest ones. They remain endpoints of network faults.

Faults aligned to the decision-window grid (a scenario fault with ``window``) keep their
window and their offset from its start (``FaultEvent.window``, ``at``); they are ordered and
checked for capacity on the grid's own axis (w · window_period + offset), never moved
(no free victim: dropped), and ``resolve_windows`` puts them on the run's axis once the
runner knows genesis_start. ``only_if`` reaches the nemesis as ``params["only_if"]``.

Targets are strings: ``n3`` (node 3; for a link fault: every link of node 3), ``c1``
(client 1; for a network fault: every link of that client), ``n1-n3`` (the link between
two hosts, both ways) and ``n1>n3`` (one way, for ``partition_oneway``). A ``partition``
cuts the ``targets`` off from every other host (``params["rest"]`` lists the other nodes);
``partition_partial`` cuts the listed links only.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from kms.chaos.scenario import (
    NODE_ONLY_FAULTS,
    PROCESS_FAULTS,
    Fault,
    Scenario,
    ScenarioError,
    byzantine_nodes,
)


@dataclass(frozen=True)
class FaultEvent:
    """One injection: from ``at`` (seconds after the workload starts) for ``duration`` s
    (``None``: the whole run)."""

    id: int
    at: float
    duration: float | None
    kind: str
    targets: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)
    inside_model: bool = True
    window: int | None = None
    """Set for a fault aligned to the decision-window grid: ``at`` is then the offset from
    that window's start, until the runner resolves it (``resolve_windows``)."""

    @property
    def end(self) -> float:
        return float("inf") if self.duration is None else self.at + self.duration

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["targets"] = list(self.targets)
        return doc


def inside_model(kind: str, duration: float | None, params: dict[str, Any], delta: float) -> bool:
    """Whether a fault of ``kind`` stays inside the synchrony model (see the module doc)."""
    if kind in ("kill", "data_loss", "reset", "disk_full", "byzantine"):
        return True
    if kind == "delay":
        lag = float(params.get("delay_ms", 0.0)) + float(params.get("jitter_ms", 0.0))
        return lag <= delta * 1000
    if kind == "skew":
        return abs(float(params.get("skew_s", 0.0))) <= delta / 2
    return duration is not None and duration <= delta


@dataclass
class _Draft:
    at: float
    duration: float
    fault: Fault
    order: int
    window: int | None = None


def _times(rng: random.Random, fault: Fault, horizon: float) -> list[float]:
    if fault.at is not None:
        return sorted(fault.at)
    if fault.count is not None:
        latest = max(0.0, horizon - fault.duration[0])
        return sorted(rng.uniform(0.0, latest) for _ in range(fault.count))
    mean = fault.every or 1.0  # the scenario guarantees every is set when count is not
    out, at = [], rng.expovariate(1.0 / mean)
    while at < horizon:
        out.append(at)
        at += rng.expovariate(1.0 / mean)
    return out


def _params(rng: random.Random, fault: Fault) -> dict[str, Any]:
    params = fault.params.model_dump(exclude_none=True)
    if "skew_s" in params:
        params["skew_s"] = params["skew_s"] * rng.choice((-1.0, 1.0))
    return params


class _Builder:
    def __init__(self, scenario: Scenario, seed: int, n: int, t: int) -> None:
        self.scenario, self.n, self.t = scenario, n, t
        self.rng = random.Random(f"quorum-kms/chaos/{scenario.name}/{seed}")  # noqa: S311 replayable
        self.corrupt = sorted(i for i in byzantine_nodes(scenario) if i <= n)
        self.honest = [i for i in range(1, n + 1) if i not in self.corrupt]
        self.clients = [f"c{k}" for k in range(1, scenario.workload.clients + 1)]
        self.capacity = n if scenario.allow_majority_down else n - t
        self.busy: list[tuple[float, int]] = []  # (end, node) of running process faults
        self.busy_skew: list[tuple[float, int]] = []

    def _free(self, heap: list[tuple[float, int]], at: float) -> list[tuple[float, int]]:
        return [(end, i) for end, i in heap if end > at]

    def node_victims(self, draft: _Draft) -> list[int] | None:
        """Victims for a node fault at ``draft.at``, or ``None`` when none may be taken."""
        process = draft.fault.kind in PROCESS_FAULTS
        self.busy = self._free(self.busy, draft.at)
        self.busy_skew = self._free(self.busy_skew, draft.at)
        heap = self.busy if process else self.busy_skew
        taken = {i for _, i in heap}
        pool = [i for i in self.honest if i not in taken]
        room = self.capacity - len(heap) if process else len(pool)
        if draft.fault.nodes:
            chosen = sorted(draft.fault.nodes)
            if not set(chosen) <= set(pool) or len(chosen) > room:
                return None
        else:
            want = min(draft.fault.victims or 1, room)
            if want < 1 or len(pool) < want:
                return None
            chosen = sorted(self.rng.sample(pool, want))
        heap.extend((draft.at + draft.duration, i) for i in chosen)
        return chosen

    def wait_until(self, draft: _Draft) -> float | None:
        process = draft.fault.kind in PROCESS_FAULTS
        heap = self.busy if process else self.busy_skew
        return min((end for end, _ in heap), default=None)

    def network_targets(self, fault: Fault) -> tuple[list[str], dict[str, Any]]:
        rng, nodes = self.rng, list(range(1, self.n + 1))
        names = [f"n{i}" for i in nodes]
        if fault.kind == "partition":
            if fault.targets == "client":
                return [rng.choice(self.clients)], {"rest": names}
            size = fault.victims or rng.randint(1, max(1, (self.n - 1) // 2))
            cut = sorted(fault.nodes or rng.sample(nodes, min(size, self.n - 1)))
            return [f"n{i}" for i in cut], {"rest": [f"n{i}" for i in nodes if i not in cut]}
        if fault.kind == "partition_partial":
            pairs = list(itertools.combinations(nodes, 2))
            k = fault.victims or rng.randint(1, max(1, len(pairs) // 3))
            chosen = sorted(rng.sample(pairs, min(k, len(pairs))))
            return [f"n{a}-n{b}" for a, b in chosen], {}
        if fault.kind == "partition_oneway":
            a, b = rng.sample(nodes, 2)
            return [f"n{a}>n{b}"], {}
        if fault.targets == "client":
            return [rng.choice(self.clients)], {}
        if fault.targets == "link":
            a, b = sorted(rng.sample(nodes, 2))
            return [f"n{a}-n{b}"], {}
        k = min(fault.victims or 1, self.n)
        return [f"n{i}" for i in sorted(rng.sample(nodes, k))], {}


def build(
    scenario: Scenario, seed: int, n: int | None = None, t: int | None = None
) -> list[FaultEvent]:
    """The schedule of ``scenario`` for ``seed`` with n nodes and threshold t (defaults: the
    scenario's): byzantine entries first (at 0, for the whole run), then injections by time."""
    n = scenario.nodes if n is None else n
    t = scenario.threshold if t is None else t
    if not 1 <= t <= n:
        raise ScenarioError(f"threshold {t} must be in 1..{n}")
    b = _Builder(scenario, seed, n, t)
    delta = scenario.committee.delta
    events: list[FaultEvent] = []
    corrupt = byzantine_nodes(scenario)
    for entry in scenario.byzantine:
        mine = sorted(i for i, e in corrupt.items() if e is entry and i <= n)
        params = {"strategies": list(entry.strategies), "params": dict(entry.params)}
        events.append(
            FaultEvent(len(events), 0.0, None, "byzantine", tuple(f"n{i}" for i in mine), params)
        )
    drafts: list[tuple[float, int, _Draft]] = []
    order = itertools.count()
    for fault in scenario.faults:
        if fault.window is not None:
            continue
        for at in _times(b.rng, fault, scenario.duration):
            lo, hi = fault.duration
            d = _Draft(at, b.rng.uniform(lo, hi), fault, next(order))
            heapq.heappush(drafts, (d.at, d.order, d))
    period = scenario.committee.window_period
    for fault in scenario.faults:
        # Window-aligned faults are placed on the grid's own axis (w · window_period +
        # offset, genesis_start taken as 0) for ordering and capacity; the runner moves them.
        for w in fault.window or ():
            for offset in sorted(fault.at or ()):
                lo, hi = fault.duration
                d = _Draft(w * period + offset, b.rng.uniform(lo, hi), fault, next(order), w)
                heapq.heappush(drafts, (d.at, d.order, d))
    while drafts:
        _, _, d = heapq.heappop(drafts)
        if d.window is None:
            if d.at >= scenario.duration:
                continue
            d.duration = min(d.duration, scenario.duration - d.at)
        params = _params(b.rng, d.fault)
        if d.fault.kind in NODE_ONLY_FAULTS:
            victims = b.node_victims(d)
            if victims is None:
                waits = d.fault.every is None and d.window is None
                later = b.wait_until(d) if waits else None
                if later is not None and later > d.at:
                    d.at = later
                    heapq.heappush(drafts, (d.at, d.order, d))
                continue
            targets, extra = [f"n{i}" for i in victims], dict[str, Any]()
        else:
            targets, extra = b.network_targets(d.fault)
        params.update(extra)
        if d.fault.only_if is not None:
            params["only_if"] = d.fault.only_if
        inside = inside_model(d.fault.kind, d.duration, params, delta)
        at = d.at if d.window is None else d.at - d.window * period
        events.append(
            FaultEvent(
                len(events), at, d.duration, d.fault.kind, tuple(targets), params, inside, d.window
            )
        )
    return events


def resolve_windows(
    events: list[FaultEvent], genesis_start: float, window_period: float, t0: float
) -> tuple[list[FaultEvent], list[FaultEvent]]:
    """The schedule with every window-aligned event moved to the run's time axis (seconds
    after ``t0``, the workload's start: ``genesis_start + window · window_period + at − t0``),
    and the window-aligned events dropped because that time is already past."""
    kept: list[FaultEvent] = []
    dropped: list[FaultEvent] = []
    for ev in events:
        if ev.window is None:
            kept.append(ev)
            continue
        at = genesis_start + ev.window * window_period + ev.at - t0
        (kept if at >= 0 else dropped).append(dataclasses.replace(ev, at=at))
    return kept, dropped


def down_at(events: list[FaultEvent], at: float) -> set[str]:
    """Nodes under a process fault at time ``at``."""
    return {
        target
        for e in events
        if e.kind in PROCESS_FAULTS and e.at <= at < e.end
        for target in e.targets
    }
