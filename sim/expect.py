"""A scenario's ``[expect]`` table checked against a report: what the run should show.

``kms sim run`` prints the verdicts and the tests assert them, so every
shipped scenario states its outcome in the file that defines it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sim.scenario import Scenario


def binomial_at_least(n: int, k: int, p: float) -> float:
    """P[X ≥ k] for X ~ Binomial(n, p)."""
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


def wilson(successes: int, trials: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if trials == 0:
        return (0.0, 1.0)
    ph = successes / trials
    centre = (ph + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(ph * (1 - ph) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return (centre - half, centre + half)


def binomial_check(report: Mapping[str, Any], scenario: Scenario) -> tuple[float, float, float]:
    """(theory, low, high): the binomial availability and the measured 99 % interval."""
    rc = scenario.random_crashes
    if rc is None:
        raise ValueError("the scenario has no random crashes")
    n = len(rc.nodes) or scenario.n
    theory = binomial_at_least(n, scenario.threshold, 1.0 - rc.probability)
    lo, hi = wilson(report["key_requests_served"], report["key_requests"], 2.576)
    return theory, lo, hi


def check(report: Mapping[str, Any], scenario: Scenario) -> list[str]:
    """Every expectation that does not hold, as a sentence (empty: all hold)."""
    exp = scenario.expect
    bad: list[str] = []
    epochs = report["epochs"]
    certified = [e for e in epochs if e["certified_at"] is not None]
    for key in ("mpk_stable", "secret_exposed", "secret_reconstructed"):
        if key in exp and report[key] != exp[key]:
            bad.append(f"{key} is {report[key]}, expected {exp[key]}")
    if exp.get("genesis_certified") and epochs[0]["certified_at"] is None:
        bad.append("genesis was never certified")
    if exp.get("genesis_attempt_failed") and not any(
        f["kind"] == "dkg" and f["attempt"] == 0 for f in report["run_failures"]
    ):
        bad.append("the first genesis attempt did not fail")
    if "disqualified" in exp and len(report["disqualified"]) != exp["disqualified"]:
        bad.append(
            f"{len(report['disqualified'])} dealers disqualified, expected {exp['disqualified']}"
        )
    if "disqualified_with_evidence" in exp:
        want = sorted(exp["disqualified_with_evidence"])
        kind = exp.get("evidence")
        got = sorted(
            {
                d["index"]
                for d in report["disqualified"]
                if d["evidence"] is not None and (kind is None or d["evidence"] == kind)
            }
        )
        if got != want:
            bad.append(f"disqualified with evidence {kind}: {got}, expected {want}")
    if "wrong_keys_accepted" in exp and report["wrong_keys_accepted"] != exp["wrong_keys_accepted"]:
        bad.append(f"{report['wrong_keys_accepted']} wrong keys accepted")
    if "availability" in exp and (report["availability"] or 0.0) < exp["availability"]:
        bad.append(f"availability {report['availability']} below {exp['availability']}")
    if "min_epochs" in exp and len(certified) < exp["min_epochs"]:
        bad.append(f"{len(certified)} epochs certified, expected at least {exp['min_epochs']}")
    if exp.get("wrong_partials_detected") and report["wrong_partials_detected"] == 0:
        bad.append("no wrong partial was detected")
    if exp.get("only_refreshes"):
        first = epochs[0]["committee"]
        if any(e["committee"] != first for e in certified):
            bad.append("a membership change was certified")
    if exp.get("every_member_holds_a_share"):
        sh = report.get("share_holders")
        if sh is None:
            bad.append("no epoch was certified")
        elif sh["without_share"]:
            bad.append(f"members {sh['without_share']} of epoch {sh['epoch']} hold no share of it")
    if exp.get("binomial_availability"):
        theory, lo, hi = binomial_check(report, scenario)
        if not lo <= theory <= hi:
            bad.append(
                f"binomial availability {theory:.4f} outside the measured [{lo:.4f}, {hi:.4f}]"
            )
    return bad
