"""PNG plots of one fault-lab run (matplotlib, Agg backend: no display needed).

Drawn from the observations and the schedule alone, so they can be redrawn from a saved run:
availability over time (moving window of fetches) and the latency of every fetch, each with
the faults shaded behind and labelled (``*`` marks a fault outside the synchrony model).
Times are seconds since the first observation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend is chosen first, above

from kms.chaos.checker import read
from kms.chaos.schedule import FaultEvent

FAULT_COLOURS = {
    "partition": "tab:orange",
    "partition_partial": "tab:orange",
    "partition_oneway": "tab:orange",
    "delay": "tab:olive",
    "stall": "tab:olive",
    "reset": "tab:olive",
    "bandwidth": "tab:olive",
    "kill": "tab:red",
    "pause": "tab:pink",
    "data_loss": "tab:brown",
    "skew": "tab:purple",
    "disk_full": "tab:cyan",
}
_META = {"Software": "quorum-kms chaos"}


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=100, metadata=_META)
    plt.close(fig)


def _shade(ax: Any, faults: Sequence[dict[str, Any]], origin: float, end: float) -> None:
    lanes: dict[str, int] = {}
    for f in faults:
        if f["fault"] == "byzantine":
            continue
        lane = lanes.setdefault(f["fault"], len(lanes))
        start = f["t0"] - origin
        stop = (f["t1"] if f.get("t1") is not None else end) - origin
        colour = FAULT_COLOURS.get(f["fault"], "grey")
        ax.axvspan(start, stop, color=colour, alpha=0.12)
        mark = "" if f.get("inside_model", True) else "*"
        ax.text(
            start,
            1.0 - 0.06 * (lane % 8),
            f" {f['fault']}{mark} {','.join(map(str, f.get('targets') or []))[:24]}",
            fontsize=7,
            color=colour,
            transform=ax.get_xaxis_transform(),
            va="top",
        )


def _t(o: dict[str, Any]) -> float:
    return float(o["t"] if o.get("t") is not None else o["t0"])


def _faults(
    observations: Sequence[dict[str, Any]], schedule: Sequence[FaultEvent], origin: float
) -> list[dict[str, Any]]:
    seen = [o for o in observations if o["kind"] == "fault"]
    if seen:
        return seen
    return [  # no fault observations (a dry run): draw the schedule relative to the origin
        {
            "fault": e.kind,
            "t0": origin + e.at,
            "t1": None if e.duration is None else origin + e.at + e.duration,
            "inside_model": e.inside_model,
        }
        for e in schedule
    ]


def availability(
    observations: Sequence[dict[str, Any]],
    schedule: Sequence[FaultEvent],
    path: Path,
    *,
    title: str,
    window: float = 10.0,
) -> None:
    """Moving availability of non-rogue fetches (over ``window`` s) with the faults shaded."""
    fetches = [o for o in observations if o["kind"] == "fetch" and not o.get("rogue")]
    origin = min((_t(o) for o in observations), default=0.0)
    end = max((float(f["t1"]) for f in fetches), default=origin + 1.0)
    fig, ax = plt.subplots(figsize=(10, 4))
    _shade(ax, _faults(observations, schedule, origin), origin, end)
    xs, ys = [], []
    for k, f in enumerate(fetches):
        recent = [g["ok"] for g in fetches[: k + 1] if g["t0"] > f["t0"] - window]
        xs.append(f["t0"] - origin)
        ys.append(sum(1 for ok in recent if ok) / len(recent))
    ax.plot(xs, ys, color="tab:blue", label=f"fetches served ({window:g} s window)")
    failed = [f["t0"] - origin for f in fetches if not f["ok"]]
    ax.scatter(failed, [0.0] * len(failed), color="tab:red", marker="x", s=12, label="fetch failed")
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("seconds since the start (harness clock)")
    ax.set_ylabel("fraction of fetches served")
    ax.set_title(f"{title}: availability and faults (* outside the model)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def latency(
    observations: Sequence[dict[str, Any]],
    schedule: Sequence[FaultEvent],
    path: Path,
    *,
    title: str,
) -> None:
    """Each successful non-rogue fetch's latency (ms, log scale) with the faults shaded."""
    fetches = [o for o in observations if o["kind"] == "fetch" and not o.get("rogue")]
    origin = min((_t(o) for o in observations), default=0.0)
    end = max((float(f["t1"]) for f in fetches), default=origin + 1.0)
    fig, ax = plt.subplots(figsize=(10, 4))
    _shade(ax, _faults(observations, schedule, origin), origin, end)
    ok = [f for f in fetches if f["ok"]]
    ax.scatter(
        [f["t0"] - origin for f in ok],
        [max(0.1, (f["t1"] - f["t0"]) * 1000) for f in ok],
        s=6,
        color="tab:blue",
        label="successful fetch",
    )
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the start (harness clock)")
    ax.set_ylabel("fetch latency (ms)")
    ax.set_title(f"{title}: fetch latency and faults (* outside the model)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def all_for_run(
    observations_dir: Path, schedule: Sequence[FaultEvent], out: Path, *, title: str
) -> list[Path]:
    observations, _ = read(observations_dir)
    paths = [out / "availability.png", out / "latency.png"]
    availability(observations, schedule, paths[0], title=title)
    latency(observations, schedule, paths[1], title=title)
    return paths
