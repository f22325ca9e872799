"""Scenario files: what to simulate, read from TOML and checked before a run starts.

A scenario is plain data (committee, network, fault schedule, adversaries,
load, duration). ``docs/simulator.md`` documents every field. Sweeps change
one dotted field at a time (``with_param("network.loss", 0.1)``), so a
scenario keeps the raw table it was read from.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


class ScenarioError(ValueError):
    """A scenario file that cannot be run, with the field that is wrong."""


def _num(table: Mapping[str, Any], key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{key} must be a number, got {value!r}")
    return float(value)


def _int(table: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"{key} must be an integer, got {value!r}")
    return value


def _ints(table: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ScenarioError(f"{key} must be a list of integers, got {value!r}")
    return tuple(value)


def _prob(table: Mapping[str, Any], key: str) -> float:
    p = _num(table, key, 0.0)
    if not 0.0 <= p <= 1.0:
        raise ScenarioError(f"{key} must be a probability in [0, 1], got {p}")
    return p


@dataclass(frozen=True)
class Latency:
    """A one-way delay distribution in seconds: fixed, uniform, exponential or lognormal."""

    kind: str = "uniform"
    low: float = 0.01
    high: float = 0.1
    mean: float = 0.05
    sigma: float = 0.5
    cap: float = 10.0
    """No sample exceeds this (a heavy tail must not produce absurd delays)."""

    @classmethod
    def parse(cls, raw: Any) -> Latency:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return cls("fixed", float(raw), float(raw), float(raw))
        if not isinstance(raw, dict):
            raise ScenarioError(f"latency must be a number or a table, got {raw!r}")
        kind = raw.get("kind", "uniform")
        if kind not in ("fixed", "uniform", "exponential", "lognormal"):
            raise ScenarioError(
                f"latency.kind {kind!r} is not one of fixed|uniform|exponential|lognormal"
            )
        low = _num(raw, "low", 0.01)
        lat = cls(
            kind,
            low,
            _num(raw, "high", low if kind == "fixed" else max(low, 0.1)),
            _num(raw, "mean", 0.05),
            _num(raw, "sigma", 0.5),
            _num(raw, "cap", 10.0),
        )
        if min(lat.low, lat.high, lat.mean) < 0 or lat.low > lat.high:
            raise ScenarioError("latency needs 0 ≤ low ≤ high and mean ≥ 0")
        return lat


@dataclass(frozen=True)
class LinkSpec:
    """Network behaviour of a set of directed links (or, as the default, of every link)."""

    latency: Latency = field(default_factory=Latency)
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_window: float = 0.2
    bandwidth: float = 0.0
    """Bytes per second on each directed link; 0 means unlimited."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any], base: LinkSpec | None = None) -> LinkSpec:
        b = base or cls()
        return cls(
            Latency.parse(raw["latency"]) if "latency" in raw else b.latency,
            _prob(raw, "loss") if "loss" in raw else b.loss,
            _prob(raw, "duplicate") if "duplicate" in raw else b.duplicate,
            _prob(raw, "reorder") if "reorder" in raw else b.reorder,
            _num(raw, "reorder_window", b.reorder_window),
            _num(raw, "bandwidth", b.bandwidth),
        )


@dataclass(frozen=True)
class LinkOverride:
    senders: tuple[int, ...]
    receivers: tuple[int, ...]
    spec: LinkSpec


@dataclass(frozen=True)
class Partition:
    """From ``at`` until ``heal`` (or forever), nodes in different groups cannot talk."""

    at: float
    heal: float | None
    groups: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Crash:
    node: int
    at: float
    recover: float | None


@dataclass(frozen=True)
class RandomCrashes:
    """Each node is down in each period independently with ``probability``."""

    probability: float
    period: float
    start: float
    stop: float | None
    nodes: tuple[int, ...]
    """Empty: every genesis node."""


@dataclass(frozen=True)
class MembershipEvent:
    at: float
    action: str  # add | remove | threshold | refresh
    node: int = 0
    threshold: int = 0
    proposer: int = 0
    """0: the lowest-indexed member that is up."""


@dataclass(frozen=True)
class AdversarySpec:
    nodes: tuple[int, ...]
    behaviour: str
    epochs: tuple[int, int] | None
    """Inclusive range of epochs in which these nodes are corrupt; None: always."""
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Load:
    rate: float = 0.0
    """Key requests per virtual second (0: none)."""
    start: float | None = None
    """None: when genesis is certified."""
    timeout: float = 2.0
    arrivals: str = "fixed"  # fixed | poisson


@dataclass(frozen=True)
class Scenario:
    """One simulated world; see docs/simulator.md for the meaning of every field."""

    name: str
    description: str
    n: int
    threshold: int
    delta: float
    duration: float
    genesis_start: float
    window_period: float
    window_length: float
    refresh_interval: float
    tick: float
    network: LinkSpec
    links: tuple[LinkOverride, ...]
    partitions: tuple[Partition, ...]
    crashes: tuple[Crash, ...]
    random_crashes: RandomCrashes | None
    skew: Mapping[int, float]
    membership: tuple[MembershipEvent, ...]
    adversaries: tuple[AdversarySpec, ...]
    load: Load
    expect: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    # --- reading -----------------------------------------------------------------

    @classmethod
    def load_file(cls, path: str | Path) -> Scenario:
        p = Path(path)
        if not p.exists() and (SCENARIO_DIR / p).exists():
            p = SCENARIO_DIR / p
        if not p.exists() and (SCENARIO_DIR / f"{p}.toml").exists():
            p = SCENARIO_DIR / f"{p}.toml"
        try:
            raw = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
        raw.setdefault("name", p.stem)
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Scenario:
        known = {
            "name", "description", "n", "threshold", "delta", "duration", "genesis_start",
            "window_period", "window_length", "refresh_interval", "tick", "network",
            "partitions", "crashes", "random_crashes", "skew", "membership", "adversaries",
            "load", "expect",
        }  # fmt: skip
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ScenarioError(f"unknown scenario fields: {unknown}")
        n = _int(raw, "n")
        t = _int(raw, "threshold")
        if not 2 <= t <= n:
            raise ScenarioError(f"need 2 ≤ threshold ≤ n, got n={n}, threshold={t}")
        delta = _num(raw, "delta", 0.5)
        net_raw = dict(raw.get("network", {}))
        link_raws = net_raw.pop("links", [])
        network = LinkSpec.parse(net_raw)
        links = tuple(
            LinkOverride(_ints(lr, "from"), _ints(lr, "to"), LinkSpec.parse(lr, network))
            for lr in link_raws
        )
        partitions = tuple(
            Partition(
                _num(pr, "at", 0.0),
                _num(pr, "heal", 0.0) if "heal" in pr else None,
                tuple(tuple(g) for g in pr.get("groups", [])),
            )
            for pr in raw.get("partitions", [])
        )
        crashes = tuple(
            Crash(
                _int(cr, "node"),
                _num(cr, "at", 0.0),
                _num(cr, "recover", 0.0) if "recover" in cr else None,
            )
            for cr in raw.get("crashes", [])
        )
        rc = raw.get("random_crashes")
        random_crashes = (
            RandomCrashes(
                _prob(rc, "probability"),
                _num(rc, "period", 10.0),
                _num(rc, "start", 0.0),
                _num(rc, "stop", 0.0) if "stop" in rc else None,
                _ints(rc, "nodes"),
            )
            if rc
            else None
        )
        membership = tuple(
            MembershipEvent(
                _num(m, "at", 0.0),
                str(m.get("action", "")),
                _int(m, "node", 0),
                _int(m, "threshold", 0),
                _int(m, "proposer", 0),
            )
            for m in raw.get("membership", [])
        )
        for m in membership:
            if m.action not in ("add", "remove", "threshold", "refresh"):
                raise ScenarioError(
                    f"membership action {m.action!r} is not add|remove|threshold|refresh"
                )
        adversaries = []
        for a in raw.get("adversaries", []):
            params = {k: v for k, v in a.items() if k not in ("nodes", "behaviour", "epochs")}
            ep = a.get("epochs")
            if ep is not None and (not isinstance(ep, list) or len(ep) != 2):
                raise ScenarioError("adversaries.epochs must be [first, last]")
            adversaries.append(
                AdversarySpec(
                    _ints(a, "nodes"),
                    str(a.get("behaviour", "")),
                    (int(ep[0]), int(ep[1])) if ep is not None else None,
                    params,
                )
            )
        load_raw = raw.get("load", {})
        load = Load(
            _num(load_raw, "rate", 0.0),
            _num(load_raw, "start", 0.0) if "start" in load_raw else None,
            _num(load_raw, "timeout", 2.0),
            str(load_raw.get("arrivals", "fixed")),
        )
        if load.arrivals not in ("fixed", "poisson"):
            raise ScenarioError("load.arrivals must be fixed or poisson")
        skew = {int(k): float(v) for k, v in raw.get("skew", {}).items()}
        sc = cls(
            name=str(raw.get("name", "scenario")),
            description=str(raw.get("description", "")),
            n=n,
            threshold=t,
            delta=delta,
            duration=_num(raw, "duration", 60.0),
            genesis_start=_num(raw, "genesis_start", 1.0),
            window_period=_num(raw, "window_period", 1e9),
            window_length=_num(raw, "window_length", 2.0),
            refresh_interval=_num(raw, "refresh_interval", 0.0),
            tick=_num(raw, "tick", delta / 8),
            network=network,
            links=links,
            partitions=partitions,
            crashes=crashes,
            random_crashes=random_crashes,
            skew=skew,
            membership=membership,
            adversaries=tuple(adversaries),
            load=load,
            expect=dict(raw.get("expect", {})),
            raw=copy.deepcopy(dict(raw)),
        )
        sc._check_nodes()
        return sc

    def _check_nodes(self) -> None:
        added = {m.node for m in self.membership if m.action == "add"}
        valid = set(range(1, self.n + 1)) | added
        named: list[int] = [c.node for c in self.crashes]
        named += [i for a in self.adversaries for i in a.nodes]
        named += [i for p in self.partitions for g in p.groups for i in g]
        named += list(self.skew)
        bad = sorted({i for i in named if i not in valid and i != 0})
        if bad:
            raise ScenarioError(f"scenario names nodes that never exist: {bad}")
        if self.tick <= 0 or self.duration <= 0 or self.delta <= 0:
            raise ScenarioError("tick, duration and delta must be positive")
        if self.tick >= self.delta / 4:
            # A node that sees no time for Δ/4 counts as stalled and withholds its
            # signature (SharingSession.live): every up node must tick more often.
            raise ScenarioError("tick must be shorter than delta / 4")

    # --- sweeps --------------------------------------------------------------------

    def with_param(self, name: str, value: float) -> Scenario:
        """A copy with the dotted field ``name`` set to ``value`` (integers stay integers)."""
        raw = copy.deepcopy(dict(self.raw))
        table: dict[str, Any] = raw
        parts = name.split(".")
        for p in parts[:-1]:
            nxt = table.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ScenarioError(f"{name}: {p} is not a table")
            table = nxt
        old = table.get(parts[-1])
        table[parts[-1]] = (
            round(value)
            if (isinstance(old, int) and not isinstance(old, bool)) or name in ("n", "threshold")
            else float(value)
        )
        return Scenario.from_dict(raw)

    def corrupt_nodes(self) -> list[int]:
        return sorted({i for a in self.adversaries for i in a.nodes})
