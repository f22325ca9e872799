"""Fault-lab scenarios: what to run, under which faults, read from TOML and checked strictly.

A scenario names the committee (nodes, threshold, Δ, decision windows, refresh), the workload
(CVM clients, apps, fetch rate, the rogue CVM, policy pushes), operator actions, the fault
families the nemesis draws from, the byzantine members and, for the checker's validation only,
a deliberately broken build (``[testing] broken``). Unknown keys are refused with the path of
the offending key, so a typo never silently turns a fault off. ``docs/chaos.md`` documents
every field; shipped scenarios live in ``kms/chaos/scenarios/``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

FaultKind = Literal[
    "partition",
    "partition_partial",
    "partition_oneway",
    "delay",
    "stall",
    "reset",
    "bandwidth",
    "kill",
    "pause",
    "skew",
    "disk_full",
    "data_loss",
]
NETWORK_FAULTS = frozenset(
    {"partition", "partition_partial", "partition_oneway", "delay", "stall", "reset", "bandwidth"}
)
PROCESS_FAULTS = frozenset({"kill", "pause", "disk_full", "data_loss"})
"""Faults that take a node out of service while they last (counted against ``n − t``)."""
NODE_ONLY_FAULTS = PROCESS_FAULTS | {"skew"}
STRATEGIES = (
    "withhold-partials",
    "equivocate-deal",
    "wrong-partials",
    "spam-refresh",
    "stale-chain",
)
Strategy = Literal[
    "withhold-partials", "equivocate-deal", "wrong-partials", "spam-refresh", "stale-chain"
]
Broken = Literal["skip-sigma-check", "skip-policy-check", "window-tally"]
Op = Literal["join", "remove", "threshold", "refresh"]


class ScenarioError(ValueError):
    """A scenario that cannot be run, with the field that is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Committee(_Strict):
    delta: float = Field(default=2.0, gt=0)
    """Δ, the synchrony bound in seconds (also the node's ``delta``)."""
    window_period: float = Field(default=20.0, gt=0)
    window_length: float | None = Field(default=None, gt=0)
    """Unset: the node's default."""
    refresh_interval: float = Field(default=0.0, ge=0)


class Workload(_Strict):
    clients: int = Field(default=2, ge=1, le=16)
    apps: int = Field(default=1, ge=1)
    fetch_interval: float = Field(default=1.0, gt=0)
    hedge_after: float = Field(default=0.5, ge=0)
    rogue: bool = True
    policy_push_every: float = Field(default=0.0, ge=0)
    """Seconds between policy pushes by the owner (0: never)."""


class Operator(_Strict):
    every: float = Field(default=0.0, ge=0)
    """Seconds between operator actions (0: none)."""
    ops: tuple[Op, ...] = ()


class FaultParams(_Strict):
    delay_ms: float | None = Field(default=None, ge=0)
    jitter_ms: float | None = Field(default=None, ge=0)
    kbit: int | None = Field(default=None, gt=0)
    skew_s: float | None = None
    """The clock offset's magnitude; the schedule picks its sign."""


class Fault(_Strict):
    kind: FaultKind
    every: float | None = Field(default=None, gt=0)
    """Mean seconds between injections (a Poisson process)."""
    count: int | None = Field(default=None, ge=1)
    """Exactly this many injections, at seeded times (placed even if that means waiting)."""
    at: tuple[float, ...] | None = None
    """Exactly these injection times (seconds after the start), for recipes; with
    ``window``, offsets from each listed window's start instead (may be negative)."""
    window: tuple[int, ...] | None = None
    """Align to the nodes' decision-window grid, for recipes: one injection at each ``at``
    offset from the start S = genesis_start + w · window_period of each listed window w
    (absolute window numbers, counted from genesis). The runner resolves S once
    genesis_start is known; an injection whose time has passed by then is dropped."""
    duration: tuple[float, float] = (5.0, 10.0)
    targets: Literal["node", "client", "link"] = "node"
    victims: int | None = Field(default=None, ge=1)
    """Nodes per injection (a partition: the size of the cut-off side). Unset: 1, or for a
    partition a random minority."""
    nodes: tuple[int, ...] | None = None
    """Exactly these victims (node faults) or the cut-off side (a node partition), for
    recipes; the capacity rule still applies (a victim that is busy or would exceed it
    makes the injection wait or be dropped)."""
    params: FaultParams = Field(default_factory=FaultParams)
    only_if: Literal["refresh-sorts-first"] | None = None
    """With ``window``, a condition the nemesis checks when the injection is due (against
    the chain the members serve then), skipping the injection when it does not hold:
    ``refresh-sorts-first``: the last link is an epoch certificate and the scheduled
    refresh proposal of window w sorts before that of window w + 1."""

    @model_validator(mode="after")
    def _check(self) -> Fault:
        if sum(x is not None for x in (self.every, self.count, self.at)) != 1:
            raise ValueError("give exactly one of every (mean seconds), count or at")
        if self.window is not None:
            if self.at is None:
                raise ValueError("window needs at (offsets from each window's start)")
            if not self.window or any(w < 0 for w in self.window):
                raise ValueError("window must list window numbers >= 0")
        elif self.only_if is not None:
            raise ValueError("only_if needs window")
        elif self.at is not None and any(x < 0 for x in self.at):
            raise ValueError("at times must be >= 0")
        lo, hi = self.duration
        if not 0 <= lo <= hi:
            raise ValueError(f"duration must be [lo, hi] with 0 <= lo <= hi, got {[lo, hi]}")
        if self.kind in NODE_ONLY_FAULTS and self.targets != "node":
            raise ValueError(f"{self.kind} faults target nodes, not {self.targets}")
        if self.kind == "delay" and self.params.delay_ms is None:
            raise ValueError("delay faults need params.delay_ms")
        if self.kind == "bandwidth" and self.params.kbit is None:
            raise ValueError("bandwidth faults need params.kbit")
        if self.kind == "skew" and self.params.skew_s is None:
            raise ValueError("skew faults need params.skew_s")
        return self


class Byzantine(_Strict):
    nodes: int | tuple[int, ...]
    """How many byzantine members (the highest indices), or exactly which."""
    strategies: tuple[Strategy, ...] = Field(min_length=1)
    params: dict[str, Any] = {}


class Testing(_Strict):
    broken: Broken | None = None


class Scenario(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    nodes: int = Field(ge=1, le=64)
    threshold: int = Field(ge=1)
    duration: float = Field(gt=0)
    """Seconds of faults and workload."""
    quiet: float = Field(default=30.0, ge=0)
    """Seconds after the final heal (workload still running) before the final checks."""
    recovery_wait: float = Field(default=3.0, ge=0)
    """After the final heal, the runner waits for recovery at most this many times the
    recovery target (``docs/chaos.md``, "Recovery") before the quiet period."""
    allow_majority_down: bool = False
    committee: Committee = Field(default_factory=Committee)
    workload: Workload = Field(default_factory=Workload)
    operator: Operator = Field(default_factory=Operator)
    faults: tuple[Fault, ...] = ()
    byzantine: tuple[Byzantine, ...] = ()
    testing: Testing | None = None

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.threshold > self.nodes:
            raise ValueError(f"threshold {self.threshold} exceeds nodes {self.nodes}")
        corrupt = byzantine_nodes(self)
        if len(corrupt) > self.threshold - 1:
            raise ValueError(
                f"{len(corrupt)} byzantine nodes; at most threshold - 1 = {self.threshold - 1}"
            )
        if any(not 1 <= i <= self.nodes for i in corrupt):
            raise ValueError(f"byzantine nodes {sorted(corrupt)} outside 1..{self.nodes}")
        for fault in self.faults:
            if fault.nodes and not all(1 <= i <= self.nodes for i in fault.nodes):
                raise ValueError(f"fault nodes {list(fault.nodes)} outside 1..{self.nodes}")
            if fault.nodes and set(fault.nodes) & set(corrupt) and fault.kind in NODE_ONLY_FAULTS:
                raise ValueError("byzantine members are never victims of node faults")
        if self.operator.every > 0 and not self.operator.ops:
            raise ValueError("operator.every is set but operator.ops is empty")
        return self

    @property
    def broken(self) -> str | None:
        return self.testing.broken if self.testing else None


def byzantine_nodes(scenario: Scenario) -> dict[int, Byzantine]:
    """Each byzantine node index and its entry: listed indices as given, counts take the
    highest indices not yet taken (so a count is the same for every seed)."""
    taken: dict[int, Byzantine] = {}
    for entry in scenario.byzantine:
        if isinstance(entry.nodes, tuple):
            for i in entry.nodes:
                if i in taken:
                    raise ValueError(f"node {i} is listed in two [[byzantine]] entries")
                taken[i] = entry
    for entry in scenario.byzantine:
        if isinstance(entry.nodes, int):
            free = [i for i in range(scenario.nodes, 0, -1) if i not in taken]
            if entry.nodes > len(free):
                raise ValueError(f"{entry.nodes} byzantine nodes requested, {len(free)} left")
            for i in free[: entry.nodes]:
                taken[i] = entry
    return taken


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse(raw: dict[str, Any], **overrides: Any) -> Scenario:
    """A scenario from a TOML table; ``overrides`` (nodes, threshold, duration) replace the
    file's values before checking."""
    doc = dict(raw)
    doc.update({k: v for k, v in overrides.items() if v is not None})
    try:
        # Through JSON, strictly: arrays become tuples, but no string, bool or float is
        # quietly taken for a number or a flag.
        return Scenario.model_validate_json(json.dumps(doc))
    except (TypeError, ValueError) as exc:
        if not isinstance(exc, ValidationError):
            raise ScenarioError(f"scenario {doc.get('name', '?')!r}: {exc}") from None
        raise ScenarioError(f"scenario {doc.get('name', '?')!r}: {_errors(exc)}") from None


def shipped() -> list[str]:
    """Names of the scenarios shipped in ``kms/chaos/scenarios``."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ScenarioError(f"no scenario file {path}")
        return path
    candidate = SCENARIO_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        raise ScenarioError(f"no shipped scenario {name_or_path!r} (known: {', '.join(shipped())})")
    return candidate


def load(
    name_or_path: str | Path,
    *,
    nodes: int | None = None,
    threshold: int | None = None,
    duration: float | None = None,
) -> Scenario:
    """A shipped scenario by name, or a TOML file; CLI overrides applied and checked."""
    path = resolve(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, nodes=nodes, threshold=threshold, duration=duration)
