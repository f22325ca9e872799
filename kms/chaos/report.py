"""A run's report: ``report.json`` (figures first, in a fixed order), a summary table and plots.

``report.json`` holds the figures of ``kms.chaos.checker`` as top-level keys in the order of
``checker.FIGURE_ORDER``, then ``schedule``, ``per_fault_kind``, ``model`` (Δ and the
committee's settings, with the model label of every fault), ``proxy_cpu`` and ``timings``
(both given by the runner in ``extra``), then ``scenario``, ``seed``, ``safety_ok`` and
whatever else ``extra`` holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from kms.chaos.checker import FIGURE_ORDER, SAFETY, Figures, safety_ok
from kms.chaos.scenario import Scenario
from kms.chaos.schedule import FaultEvent

__all__ = ["build", "safety_ok", "summary", "write"]


def build(
    scenario: Scenario,
    seed: int,
    schedule: Sequence[FaultEvent],
    figures: Figures,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (key order as documented above)."""
    extra = dict(extra or {})
    figs = figures.to_json()
    doc: dict[str, Any] = {name: figs[name] for name in FIGURE_ORDER}
    doc["schedule"] = [e.to_json() for e in schedule]
    doc["per_fault_kind"] = figs["per_fault_kind"]
    doc["model"] = {
        "delta": scenario.committee.delta,
        "nodes": scenario.nodes,
        "threshold": scenario.threshold,
        "window_period": scenario.committee.window_period,
        "window_length": scenario.committee.window_length,
        "refresh_interval": scenario.committee.refresh_interval,
        "allow_majority_down": scenario.allow_majority_down,
        "faults_inside": sum(1 for e in schedule if e.inside_model),
        "faults_outside": sum(1 for e in schedule if not e.inside_model),
    }
    doc["proxy_cpu"] = extra.pop("proxy_cpu", None)
    doc["timings"] = extra.pop("timings", {})
    doc["scenario"] = scenario.name
    doc["seed"] = seed
    doc["broken"] = scenario.broken
    doc["safety_ok"] = safety_ok(figures)
    doc["operations"] = figs["operations"]
    doc["unreadable_lines"] = figs["unreadable_lines"]
    doc.update(extra)
    return doc


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "—"
    return str(value)


def summary(report: Mapping[str, Any]) -> Table:
    """The figures as a table (safety figures marked), then one row per fault kind."""
    table = Table(title=f"{report['scenario']} (seed {report['seed']})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name in FIGURE_ORDER:
        value = report[name]
        style = ""
        if name in SAFETY:
            style = "green" if value == 0 else "bold red"
        table.add_row(name, f"[{style}]{_fmt(value)}[/]" if style else _fmt(value))
    for kind, entry in report["per_fault_kind"].items():
        label = kind
        if "faults" in entry:
            label = f"{kind} ({entry['inside_model']} in / {entry['outside_model']} out)"
        table.add_row(
            f"  during {label}",
            f"avail {_fmt(entry['availability'])}, p50 {_fmt(entry['latency_ms']['p50'])} ms, "
            f"p99 {_fmt(entry['latency_ms']['p99'])} ms, {entry['fetches']} fetches",
        )
    return table


def write(
    out_dir: Path,
    scenario: Scenario,
    seed: int,
    schedule: Sequence[FaultEvent],
    figures: Figures,
    extra: Mapping[str, Any] | None = None,
    *,
    console: Console | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``report.json`` (and the plots) to ``out_dir``, print the summary table, and
    return the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = build(scenario, seed, schedule, figures, extra)
    (out_dir / "report.json").write_text(json.dumps(doc, indent=2) + "\n")
    if console is not None:
        console.print(summary(doc))
    if plots:
        # Lazy: matplotlib is slow to import and only needed here.
        from kms.chaos import plots as chaos_plots

        chaos_plots.all_for_run(out_dir / "observations", schedule, out_dir, title=scenario.name)
    return doc


BROKEN_FIGURE = {
    "skip-sigma-check": "wrong_keys_accepted",
    "skip-policy-check": "unauthorized_releases",
    "window-tally": "conflicting_certificates",
}
"""Each broken build and the safety figure a run of it must make non-zero."""
VALIDATION_SCENARIOS = ("validate-sigma", "validate-policy", "validate-tally")


def load(out_dir: Path) -> dict[str, Any]:
    """The ``report.json`` a run wrote to ``out_dir``."""
    doc: dict[str, Any] = json.loads((out_dir / "report.json").read_text())
    return doc


def exposed(report: Mapping[str, Any]) -> tuple[str, bool]:
    """For a run of a broken build: the figure that must catch it, and whether it did."""
    figure = BROKEN_FIGURE[str(report["broken"])]
    value = report.get(figure)
    return figure, isinstance(value, int) and value > 0
