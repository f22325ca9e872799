"""PNG plots of one run's report, and of a sweep (matplotlib, Agg backend: no display needed).

Plots are drawn from ``report.json`` alone, so they can be redrawn from a saved
report: availability over time with the fault schedule shaded behind it,
DKG/reshare duration per epoch, and message load per node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend is chosen first, above
from matplotlib.patches import Rectangle

FAULT_COLOURS = {
    "crash": "tab:red",
    "partition": "tab:orange",
    "membership": "tab:green",
    "skew": "tab:purple",
}
_META = {"Software": "quorum-kms sim"}


def _save(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=100, metadata=_META)
    plt.close(fig)


def availability(report: Mapping[str, Any], path: Path, window: float = 10.0) -> None:
    """Moving availability (fraction served correctly over ``window`` s) with faults shaded."""
    fig, ax = plt.subplots(figsize=(9, 4))
    duration = float(report["duration"])
    faults = report["faults"]
    rows: list[str] = []
    for f in faults:
        if f["kind"] not in rows and f["kind"] != "skew":
            rows.append(f["kind"])
    for f in faults:
        start = float(f["from"])
        colour = FAULT_COLOURS.get(f["kind"], "grey")
        if f["kind"] == "skew":
            continue  # constant for the whole run: listed in the report, not drawn
        if f["kind"] == "membership":
            ax.axvline(start, color=colour, alpha=0.7, linestyle="--")
            ax.text(start, 0.05, f" {f['what']}", fontsize=7, color=colour, rotation=90)
            continue
        end = float(f["until"]) if f["until"] is not None else duration
        ax.axvspan(start, end, color=colour, alpha=0.08)
    requests = report["requests"]
    if requests:
        xs, ys = [], []
        for k, (at, _) in enumerate(requests):
            recent = [ok for t, ok in requests[: k + 1] if t > at - window]
            xs.append(at)
            ys.append(sum(recent) / len(recent))
        ax.plot(xs, ys, color="tab:blue", label=f"availability ({window:g} s window)")
        ax.scatter(
            [at for at, ok in requests if not ok],
            [0.0 for _, ok in requests if not ok],
            color="tab:red",
            marker="x",
            s=12,
            label="request not served",
        )
    for epoch in report["epochs"]:
        if epoch["certified_at"] is not None:
            ax.axvline(epoch["certified_at"], color="black", alpha=0.3, linewidth=0.8)
            ax.text(epoch["certified_at"], 1.04, f"e{epoch['epoch']}", fontsize=7, ha="center")
    handles = [Rectangle((0, 0), 1, 1, color=FAULT_COLOURS.get(k, "grey"), alpha=0.3) for k in rows]
    drawn, labels = ax.get_legend_handles_labels()
    ax.legend([*drawn, *handles], [*labels, *rows], loc="lower right", fontsize=8)
    ax.set_xlim(0, duration)
    ax.set_ylim(-0.05, 1.1)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("key requests served correctly")
    ax.set_title(f"{report['scenario']} (seed {report['seed']}): availability and faults")
    fig.tight_layout()
    _save(fig, path)


def durations(report: Mapping[str, Any], path: Path) -> None:
    """How long each epoch took to certify after the previous one (genesis: after start 0)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [e for e in report["epochs"] if e["certified_at"] is not None]
    starts = [0.0] + [e["certified_at"] for e in epochs[:-1]]
    labels = [f"{e['epoch']}\n{e['kind']}" for e in epochs]
    values = [e["certified_at"] - s for e, s in zip(epochs, starts, strict=True)]
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("virtual seconds since the previous epoch")
    ax.set_title("DKG / reshare: time to certification per epoch")
    fig.tight_layout()
    _save(fig, path)


def message_load(report: Mapping[str, Any], path: Path) -> None:
    """Messages sent and received per node; corrupt nodes in red."""
    fig, ax = plt.subplots(figsize=(9, 4))
    per = report["messages_per_node"]
    nodes = sorted(per, key=int)
    corrupt = set(report["corrupt_nodes"])
    xs = range(len(nodes))
    sent = [per[i]["sent"] for i in nodes]
    received = [per[i]["received"] for i in nodes]
    colours = ["tab:red" if int(i) in corrupt else "tab:blue" for i in nodes]
    ax.bar([x - 0.2 for x in xs], sent, width=0.4, color=colours, label="sent")
    ax.bar([x + 0.2 for x in xs], received, width=0.4, color="tab:gray", label="received")
    step = max(1, len(nodes) // 32)
    ax.set_xticks(list(xs)[::step], nodes[::step], fontsize=7)
    ax.set_xlabel("node (red: corrupt)")
    ax.set_ylabel("messages")
    ax.set_title("message load per node")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def all_for_run(report: Mapping[str, Any], out: Path) -> list[Path]:
    paths = [out / "availability.png", out / "durations.png", out / "messages.png"]
    availability(report, paths[0])
    durations(report, paths[1])
    message_load(report, paths[2])
    return paths


def sweep(
    param: str,
    xs: Sequence[float],
    series: Mapping[str, Sequence[tuple[float, float, float]]],
    path: Path,
    title: str,
) -> None:
    """One outcome per panel: mean against ``param`` with a 95 % confidence band."""
    names = sorted(series)
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        mean = [m for m, _, _ in series[name]]
        lo = [a for _, a, _ in series[name]]
        hi = [b for _, _, b in series[name]]
        ax.plot(xs, mean, marker="o", color="tab:blue")
        ax.fill_between(xs, lo, hi, color="tab:blue", alpha=0.2, label="95 % confidence")
        ax.set_ylabel(name, fontsize=8)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel(param)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    _save(fig, path)
