"""The checker: from the observations a run wrote (``OUT/observations/*.jsonl``) to figures.

It reads only the JSON-lines contract of ``docs/chaos.md`` ("Observations"), never the
processes, so a saved run can be checked again. Five figures are safety figures and must be 0
(``SAFETY``); the rest measure availability, latency and recovery. Definitions:

* ``wrong_keys_accepted``: over every accepted (``ok``) fetch of a non-rogue client, the
  (fetch, app, purpose/version) results whose key digest differs from the reference value for
  that (app, purpose/version): the value most accepted fetches carry, ties broken by the
  earliest. One wrong key in one fetch counts 1, whichever of the two values came first.
* ``unauthorized_releases``: the rogue CVM's ``partials_decrypted``, summed, plus each
  rogue fetch that succeeded.
* ``mpk_changes``: per honest node, each status poll whose MPK differs from the node's
  previous one and from the reference, counting a node's first report too when it differs; a
  node that goes back to the reference counts 0. The reference is the MPK most honest status
  reports carry, ties broken by the earliest (in a run without a fork: the first seen; unlike
  "the first seen", one node that reports a wrong MPK first cannot make every other node's
  reports count).
* ``conflicting_certificates``: epochs for which honest nodes' chain observations (any node,
  any time) hold two links of one kind (membership outcome or epoch certificate) with
  different hashes or outcomes. ``dangling_certificates_seen`` apart: distinct links that
  byzantine nodes served and no honest node ever held for that epoch and kind.
* ``lost_shares``: honest members of the last epoch in the share checks whose latest check
  there says ``holds_share`` false or ``matches_public_share`` false while
  ``attempt_honest_live ≥ threshold``. A node whose data the nemesis erased (a target of a
  ``data_loss`` fault, or a share check saying ``data_lost``) lost its share by the fault,
  not by the protocol: it is not counted.
* ``availability``: of the non-rogue fetches that started while the client's latest
  ``reach`` said at least ``threshold`` members were running and reachable (no ``reach`` yet:
  counted), the fraction that succeeded; ``None`` without any such fetch.
* ``fetch_latency_ms``: p50 and p99 (nearest rank) of successful non-rogue fetches.
* ``recovery_seconds``: from the final ``heal`` to the first status poll at which, over the
  latest poll since the heal of every honest node polled since then (nodes the nemesis
  erased with ``data_loss`` left out): every one is up and reachable, every one reporting
  itself a member reports the same epoch ``E``, none reports a sharing run under way
  (``running``) or a locked membership outcome (``locked``), and no honest chain observation
  so far holds a membership link of epoch ``≥ E`` (a certified change whose reshare has not
  finished); ``None`` if that never happens (or no ``heal`` was written).
* ``recovery_target_seconds``: the target the final ``heal`` observation carries (two window
  periods plus one reshare attempt as the protocol schedules it); ``recovery_target_met``:
  whether ``recovery_seconds`` is at most the target (``None`` without both).
* ``faults_injected``: fault observations by kind; ``operations``: owner and operator
  actions by kind, succeeded and failed.
* ``per_fault_kind``: for each fault kind and ``none`` (fetches overlapping no fault), the
  availability and latency of the non-rogue fetches whose [t0, t1] overlaps a fault of that
  kind (a fault without t1 lasts until the final heal), split by the fault's model label.
  Byzantine members are there for the whole run, so ``none`` ignores them: it is the
  fetches that overlap no injected fault.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SAFETY = (
    "wrong_keys_accepted",
    "unauthorized_releases",
    "mpk_changes",
    "conflicting_certificates",
    "lost_shares",
)
FIGURE_ORDER = (
    "wrong_keys_accepted",
    "unauthorized_releases",
    "mpk_changes",
    "conflicting_certificates",
    "dangling_certificates_seen",
    "lost_shares",
    "availability",
    "fetch_latency_ms",
    "recovery_seconds",
    "recovery_target_seconds",
    "recovery_target_met",
    "faults_injected",
)


@dataclass
class Figures:
    wrong_keys_accepted: int = 0
    unauthorized_releases: int = 0
    mpk_changes: int = 0
    conflicting_certificates: int = 0
    dangling_certificates_seen: int = 0
    lost_shares: int = 0
    availability: float | None = None
    fetch_latency_ms: dict[str, float | None] = field(
        default_factory=lambda: {"p50": None, "p99": None}
    )
    recovery_seconds: float | None = None
    recovery_target_seconds: float | None = None
    recovery_target_met: bool | None = None
    faults_injected: dict[str, int] = field(default_factory=dict)
    per_fault_kind: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, dict[str, int]] = field(default_factory=dict)
    """Owner and operator actions by kind: how many succeeded and failed."""
    unreadable_lines: int = 0
    """Lines of the observation files that were not JSON objects with a known ``kind``."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def safety_ok(figures: Figures | dict[str, Any]) -> bool:
    """All five safety figures are 0."""
    doc = figures.to_json() if isinstance(figures, Figures) else figures
    return all(doc[name] == 0 for name in SAFETY)


REQUIRED: dict[str, tuple[str, ...]] = {
    "fetch": ("t0", "t1", "ok"),
    "chain": ("t", "links"),
    "status": ("t", "node"),
    "share": ("t", "node", "epoch"),
    "reach": ("t", "client", "running_reachable_members", "threshold"),
    "fault": ("fault", "t0"),
    "op": ("t",),
    "heal": ("t",),
}
"""Each observation kind and the fields the checker cannot do without."""


def read(observations_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Every observation under ``observations_dir`` (all ``*.jsonl``), sorted by time
    (``t``, else ``t0``), and the number of lines that could not be read."""
    out: list[dict[str, Any]] = []
    bad = 0
    for path in sorted(Path(observations_dir).glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if (
                not isinstance(doc, dict)
                or doc.get("kind") not in REQUIRED
                or any(doc.get(key) is None for key in REQUIRED[doc["kind"]])
            ):
                bad += 1
                continue
            out.append(doc)
    out.sort(key=_time)
    return out, bad


def _time(doc: dict[str, Any]) -> float:
    t = doc.get("t", doc.get("t0"))
    return float(t) if isinstance(t, int | float) else 0.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _latency(fetches: Iterable[dict[str, Any]]) -> dict[str, float | None]:
    ms = [(f["t1"] - f["t0"]) * 1000 for f in fetches if f.get("ok")]
    return {"p50": percentile(ms, 50), "p99": percentile(ms, 99)}


def wrong_keys(fetches: Sequence[dict[str, Any]]) -> int:
    values: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in fetches:
        if f.get("ok") and not f.get("rogue"):
            for label, digest in sorted((f.get("keys") or {}).items()):
                values[(str(f.get("app")), label)].append(digest)
    wrong = 0
    for seen in values.values():
        counts = Counter(seen)
        best = max(counts.values())
        reference = next(v for v in seen if counts[v] == best)
        wrong += len(seen) - counts[reference]
    return wrong


def unauthorized(fetches: Sequence[dict[str, Any]]) -> int:
    rogue = [f for f in fetches if f.get("rogue")]
    return sum(int(f.get("partials_decrypted") or 0) for f in rogue) + sum(
        1 for f in rogue if f.get("ok")
    )


def mpk_changes(statuses: Sequence[dict[str, Any]]) -> int:
    reported = [s["mpk"] for s in statuses if not s.get("byzantine") and s.get("mpk")]
    if not reported:
        return 0
    counts = Counter(reported)
    reference = next(v for v in reported if counts[v] == max(counts.values()))
    last: dict[Any, str] = {}
    changes = 0
    for s in statuses:
        mpk = s.get("mpk")
        if s.get("byzantine") or not mpk:
            continue
        node = s.get("node")
        if mpk != last.get(node, reference) and mpk != reference:
            changes += 1
        last[node] = mpk
    return changes


def certificates(chains: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(conflicting epochs among honest chains, dangling links served by byzantine nodes)."""
    honest: dict[tuple[int, str], set[tuple[str, str]]] = defaultdict(set)
    served: set[tuple[int, str, str, str]] = set()
    for c in chains:
        for link in c.get("links") or []:
            key = (int(link["epoch"]), str(link["kind"]))
            value = (str(link.get("hash")), str(link.get("outcome")))
            if c.get("byzantine"):
                served.add((*key, *value))
            else:
                honest[key].add(value)
    forked = {epoch for (epoch, _), links in honest.items() if len(links) > 1}
    dangling = sum(1 for e, k, h, o in served if (h, o) not in honest.get((e, k), set()))
    return len(forked), dangling


def _node_of(target: Any) -> Any:
    """A fault target (``"n3"``) as the node index observations carry (``3``)."""
    text = str(target)
    if text.startswith("n") and text[1:].isdigit():
        return int(text[1:])
    return target


def data_lost(faults: Sequence[dict[str, Any]]) -> set[Any]:
    """The nodes whose data the nemesis erased (targets of ``data_loss`` faults)."""
    return {
        _node_of(t) for x in faults if x.get("fault") == "data_loss" for t in x.get("targets") or []
    }


def lost_shares(shares: Sequence[dict[str, Any]], erased: set[Any] | None = None) -> int:
    erased = erased or set()
    honest = [
        s
        for s in shares
        if not s.get("byzantine") and not s.get("data_lost") and s.get("node") not in erased
    ]
    if not honest:
        return 0
    last_epoch = max(int(s["epoch"]) for s in honest)
    latest: dict[Any, dict[str, Any]] = {}
    for s in honest:
        if int(s["epoch"]) == last_epoch:
            latest[s.get("node")] = s
    return sum(
        1
        for s in latest.values()
        if (not s.get("holds_share") or not s.get("matches_public_share"))
        and int(s.get("attempt_honest_live", 0)) >= int(s.get("threshold", 0))
    )


def _eligible(
    fetches: Sequence[dict[str, Any]], reaches: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The non-rogue fetches that started while their client could reach ≥ t members."""
    by_client: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in reaches:
        by_client[str(r.get("client"))].append(r)
    out = []
    for f in fetches:
        if f.get("rogue"):
            continue
        latest = None
        for r in by_client.get(str(f.get("client")), []):
            if r["t"] <= f["t0"]:
                latest = r
            else:
                break
        if latest is None or latest["running_reachable_members"] >= latest["threshold"]:
            out.append(f)
    return out


def _availability(fetches: Sequence[dict[str, Any]]) -> float | None:
    return sum(1 for f in fetches if f.get("ok")) / len(fetches) if fetches else None


def recovery(
    statuses: Sequence[dict[str, Any]],
    heals: Sequence[dict[str, Any]],
    chains: Sequence[dict[str, Any]] = (),
    erased: set[Any] | None = None,
) -> float | None:
    if not heals:
        return None
    erased = erased or set()
    healed = float(heals[-1]["t"])

    def counted(s: dict[str, Any]) -> bool:
        return not s.get("byzantine") and s.get("node") not in erased

    # The honest nodes the harness still polls after the heal (it stops polling a node that
    # left the committee and was stopped: such a node cannot hold recovery back).
    nodes = {s.get("node") for s in statuses if counted(s) and s["t"] >= healed}
    # Certified membership changes by the epoch they were decided in, as honest nodes
    # served them, merged with the status polls in time order.
    changes = sorted(
        (float(c["t"]), int(link["epoch"]))
        for c in chains
        if not c.get("byzantine")
        for link in c.get("links") or []
        if link.get("kind") == "membership"
    )
    certified = -1
    k = 0
    latest: dict[Any, dict[str, Any]] = {}
    for s in statuses:
        while k < len(changes) and changes[k][0] <= s["t"]:
            certified = max(certified, changes[k][1])
            k += 1
        if not counted(s) or s["t"] < healed:
            continue
        latest[s.get("node")] = s
        if set(latest) != nodes:
            continue
        running = list(latest.values())
        if not all(v.get("up") and v.get("reachable") for v in running):
            continue
        members = [v for v in running if v.get("member") is not False]
        epochs = {v.get("epoch") for v in members}
        if not members or len(epochs) != 1 or None in epochs:
            continue
        if any(v.get("running") or v.get("locked") for v in running):
            continue
        (epoch,) = epochs
        if certified >= int(str(epoch)):
            continue
        return float(s["t"]) - healed
    return None


def target_met(seconds: float | None, target: float | None) -> bool | None:
    if seconds is None or target is None:
        return None if target is None else False
    return seconds <= target


def per_fault_kind(
    eligible: Sequence[dict[str, Any]], faults: Sequence[dict[str, Any]], end: float
) -> dict[str, Any]:
    def overlaps(f: dict[str, Any], fault: dict[str, Any]) -> bool:
        t1 = fault.get("t1")
        stop = end if t1 is None else float(t1)
        return float(f["t0"]) <= stop and float(f["t1"]) >= float(fault["t0"])

    out: dict[str, Any] = {}
    for kind in sorted({str(x["fault"]) for x in faults}):
        mine = [x for x in faults if x["fault"] == kind]
        hit = [f for f in eligible if any(overlaps(f, x) for x in mine)]
        entry: dict[str, Any] = {
            "faults": len(mine),
            "inside_model": sum(1 for x in mine if x.get("inside_model")),
            "outside_model": sum(1 for x in mine if not x.get("inside_model")),
            "fetches": len(hit),
            "availability": _availability(hit),
            "latency_ms": _latency(hit),
        }
        for label, inside in (("inside", True), ("outside", False)):
            part = [x for x in mine if bool(x.get("inside_model")) == inside]
            sub = [f for f in eligible if any(overlaps(f, x) for x in part)]
            entry[label] = {
                "fetches": len(sub),
                "availability": _availability(sub),
                "latency_ms": _latency(sub),
            }
        out[kind] = entry
    injected = [x for x in faults if x["fault"] != "byzantine"]
    clean = [f for f in eligible if not any(overlaps(f, x) for x in injected)]
    out["none"] = {
        "fetches": len(clean),
        "availability": _availability(clean),
        "latency_ms": _latency(clean),
    }
    return out


def operations(ops: Sequence[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for o in ops:
        entry = out.setdefault(str(o.get("op")), {"ok": 0, "failed": 0})
        entry["ok" if o.get("ok") else "failed"] += 1
    return dict(sorted(out.items()))


def check_observations(observations: Sequence[dict[str, Any]], unreadable: int = 0) -> Figures:
    """The figures of already-read observations (sorted by time)."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in observations:
        by[doc["kind"]].append(doc)
    fetches = by["fetch"]
    eligible = _eligible(fetches, by["reach"])
    conflicting, dangling = certificates(by["chain"])
    heals = by["heal"]
    erased = data_lost(by["fault"])
    recovered = recovery(by["status"], heals, by["chain"], erased)
    target = heals[-1].get("recovery_target_seconds") if heals else None
    target = float(target) if isinstance(target, int | float) else None
    times = [_time(d) for d in observations] + [float(f["t1"]) for f in fetches]
    end = float(heals[-1]["t"]) if heals else max(times, default=0.0)
    return Figures(
        wrong_keys_accepted=wrong_keys(fetches),
        unauthorized_releases=unauthorized(fetches),
        mpk_changes=mpk_changes(by["status"]),
        conflicting_certificates=conflicting,
        dangling_certificates_seen=dangling,
        lost_shares=lost_shares(by["share"], erased),
        availability=_availability(eligible),
        fetch_latency_ms=_latency(f for f in fetches if not f.get("rogue")),
        recovery_seconds=recovered,
        recovery_target_seconds=target,
        recovery_target_met=target_met(recovered, target),
        faults_injected=dict(sorted(Counter(str(x["fault"]) for x in by["fault"]).items())),
        per_fault_kind=per_fault_kind(eligible, by["fault"], end),
        operations=operations(by["op"]),
        unreadable_lines=unreadable,
    )


def check(observations_dir: Path) -> Figures:
    """The figures of the run whose observations are under ``observations_dir``."""
    observations, bad = read(observations_dir)
    return check_observations(observations, bad)
