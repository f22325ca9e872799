"""The runner's recovery target: two window periods plus one reshare attempt as the nodes
schedule it, from the scenario's committee settings."""

from __future__ import annotations

import pytest

from kms.chaos.runner import recovery_target
from kms.chaos.scenario import load
from mpc.dkg.schedule import Schedule


@pytest.mark.parametrize(("nodes", "threshold"), [(5, 3), (7, 4)])
def test_the_target_is_two_windows_and_one_reshare_attempt(nodes: int, threshold: int) -> None:
    sc = load("processes", nodes=nodes, threshold=threshold)
    attempt = Schedule.default(1000.0, nodes, threshold, delta=sc.committee.delta)
    # One attempt lasts until the next one starts (the nodes retry a failed reshare there).
    length = attempt.next_attempt().start - attempt.start
    assert recovery_target(sc) == pytest.approx(2 * sc.committee.window_period + length, abs=1)
    assert sc.recovery_wait == 3.0


def test_the_documented_figure() -> None:
    sc = load("processes", nodes=5, threshold=3)
    assert (sc.committee.window_period, sc.committee.delta) == (30.0, 2.0)
    assert recovery_target(sc) == pytest.approx(107.6, abs=0.05)
