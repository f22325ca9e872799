"""The nemesis's schedule: deterministic per seed, never more than n − t nodes out at once,
byzantine members never victims of node faults, and every fault labelled inside or outside
the synchrony model by the documented rule."""

from __future__ import annotations

import types
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.chaos.scenario import PROCESS_FAULTS, ScenarioError, load, parse, shipped
from kms.chaos.schedule import FaultEvent, build, down_at, resolve_windows

seeds = st.integers(min_value=0, max_value=2**63)


def _scenario(faults: list[dict[str, Any]], **top: Any) -> Any:
    doc: dict[str, Any] = {
        "name": "t",
        "nodes": 5,
        "threshold": 3,
        "duration": 200.0,
        "faults": faults,
    }
    doc.update(top)
    return parse(doc)


@pytest.mark.parametrize("name", shipped())
def test_same_seed_same_schedule(name: str) -> None:
    scenario = load(name)
    assert build(scenario, 7) == build(scenario, 7)
    assert [e.to_json() for e in build(scenario, 7)] == [e.to_json() for e in build(scenario, 7)]


def test_different_seeds_give_different_schedules() -> None:
    scenario = load("mixed")
    assert len({tuple(e.at for e in build(scenario, s)) for s in range(5)}) == 5


def _check_capacity(events: list[FaultEvent], n: int, t: int, corrupt: set[str]) -> None:
    process = [e for e in events if e.kind in PROCESS_FAULTS]
    for e in process:
        assert len(down_at(events, e.at)) <= n - t, e
        # no node has two process faults at once
        for other in process:
            if other is not e and other.at <= e.at < other.end:
                assert not set(other.targets) & set(e.targets), (e, other)
    for e in events:
        if e.kind in PROCESS_FAULTS | {"skew"}:
            assert not set(e.targets) & corrupt, e


@given(
    seeds,
    st.integers(min_value=3, max_value=9),
    st.data(),
)
@settings(max_examples=60, deadline=None)
def test_never_more_than_n_minus_t_nodes_out_and_byzantine_never_victims(
    seed: int, n: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(min_value=2, max_value=n))
    byz = data.draw(st.integers(min_value=0, max_value=t - 1))
    kinds = data.draw(st.lists(st.sampled_from(sorted(PROCESS_FAULTS)), min_size=1, max_size=4))
    faults = [
        {
            "kind": k,
            "every": data.draw(st.floats(2.0, 30.0)),
            "duration": [1.0, 40.0],
            "victims": data.draw(st.integers(1, n)),
        }
        for k in kinds
    ]
    faults.append(
        {"kind": "skew", "every": 10.0, "duration": [5.0, 50.0], "params": {"skew_s": 1.0}}
    )
    extra: dict[str, Any] = {"nodes": n, "threshold": t}
    if byz:
        extra["byzantine"] = [{"nodes": byz, "strategies": ["stale-chain"]}]
    scenario = _scenario(faults, **extra)
    events = build(scenario, seed)
    corrupt = {f"n{i}" for i in range(n - byz + 1, n + 1)}
    _check_capacity(events, n, t, corrupt)
    assert all(0 <= e.at and e.end <= scenario.duration for e in events if e.duration is not None)


def test_count_faults_wait_for_a_free_victim_instead_of_being_dropped() -> None:
    # n − t = 1: the three kills must take turns; all three are placed.
    scenario = _scenario(
        [{"kind": "kill", "count": 3, "duration": [20.0, 20.0]}], nodes=4, threshold=3
    )
    for seed in range(20):
        kills = [e for e in build(scenario, seed) if e.kind == "kill"]
        assert len(kills) == 3
        _check_capacity(kills, 4, 3, set())


def test_allow_majority_down_lifts_the_cap() -> None:
    faults = [{"kind": "pause", "at": [10.0], "duration": [30.0, 30.0], "victims": 5}]
    assert [len(e.targets) for e in build(_scenario(faults), 0)] == [2]
    opened = _scenario(faults, allow_majority_down=True)
    assert [len(e.targets) for e in build(opened, 0)] == [5]


def test_pinned_times_and_victims_are_used_as_given() -> None:
    faults = [{"kind": "kill", "at": [18.0], "nodes": [3], "duration": [24.0, 24.0]}]
    (event,) = build(_scenario(faults), 1)
    assert (event.at, event.duration, event.targets) == (18.0, 24.0, ("n3",))


@pytest.mark.parametrize(
    ("fault", "inside"),
    [
        ({"kind": "pause", "duration": [2.0, 2.0]}, True),
        ({"kind": "pause", "duration": [2.5, 2.5]}, False),
        ({"kind": "stall", "targets": "link", "duration": [1.0, 1.0]}, True),
        ({"kind": "stall", "targets": "link", "duration": [3.0, 3.0]}, False),
        (
            {
                "kind": "delay",
                "duration": [60.0, 60.0],
                "params": {"delay_ms": 1500, "jitter_ms": 500},
            },
            True,
        ),
        (
            {
                "kind": "delay",
                "duration": [60.0, 60.0],
                "params": {"delay_ms": 1500, "jitter_ms": 501},
            },
            False,
        ),
        ({"kind": "skew", "duration": [60.0, 60.0], "params": {"skew_s": 1.0}}, True),
        ({"kind": "skew", "duration": [60.0, 60.0], "params": {"skew_s": 1.5}}, False),
        ({"kind": "kill", "duration": [60.0, 60.0]}, True),
        ({"kind": "data_loss", "duration": [60.0, 60.0]}, True),
        ({"kind": "disk_full", "duration": [60.0, 60.0]}, True),
        ({"kind": "reset", "targets": "link", "duration": [0.0, 0.0]}, True),
        ({"kind": "partition", "duration": [1.5, 1.5]}, True),
        ({"kind": "partition", "duration": [10.0, 10.0]}, False),
        ({"kind": "partition_oneway", "duration": [10.0, 10.0]}, False),
        ({"kind": "bandwidth", "duration": [10.0, 10.0], "params": {"kbit": 64}}, False),
    ],
)
def test_model_label(fault: dict[str, Any], inside: bool) -> None:
    scenario = _scenario([{**fault, "at": [5.0]}], committee={"delta": 2.0})
    (event,) = build(scenario, 0)
    assert event.inside_model is inside


def test_skew_sign_is_drawn_and_magnitude_kept() -> None:
    scenario = _scenario(
        [{"kind": "skew", "every": 5.0, "duration": [1.0, 2.0], "params": {"skew_s": 0.8}}]
    )
    skews = {e.params["skew_s"] for e in build(scenario, 3)}
    assert skews == {0.8, -0.8}


def test_network_fault_targets() -> None:
    faults = [
        {"kind": "partition", "at": [1.0], "nodes": [1, 2], "duration": [5.0, 5.0]},
        {"kind": "partition_oneway", "at": [2.0], "duration": [5.0, 5.0]},
        {
            "kind": "delay",
            "at": [3.0],
            "targets": "client",
            "duration": [5.0, 5.0],
            "params": {"delay_ms": 10},
        },
        {"kind": "stall", "at": [4.0], "targets": "link", "duration": [1.0, 1.0]},
    ]
    part, oneway, delay, stall = build(_scenario(faults), 0)
    assert part.targets == ("n1", "n2") and part.params["rest"] == ["n3", "n4", "n5"]
    assert len(oneway.targets) == 1 and ">" in oneway.targets[0]
    assert delay.targets[0] in ("c1", "c2")
    a, b = stall.targets[0].split("-")
    assert a != b and a.startswith("n") and b.startswith("n")


@given(seeds)
@settings(max_examples=50, deadline=None)
def test_smoke_schedules_every_required_fault_for_every_seed(seed: int) -> None:
    scenario = load("smoke")
    events = build(scenario, seed)
    kinds = [e.kind for e in events]
    assert "partition" in kinds
    assert "delay" in kinds or "stall" in kinds
    assert "kill" in kinds and "pause" in kinds
    byz = [e for e in events if e.kind == "byzantine"]
    assert len(byz) == 1 and len(byz[0].targets) == 1 and byz[0].params["strategies"]
    _check_capacity(events, 5, 3, set(byz[0].targets))
    # Every fault is over before the quiet period: the run's checks see a healed lab.
    assert all(e.at + (e.duration or 0.0) <= scenario.duration for e in events)


# --- faults on the decision-window grid ---------------------------------------------------


def test_window_faults_keep_their_window_and_offset_until_resolved() -> None:
    grid = _scenario(
        [
            {"kind": "kill", "window": [2, 5], "at": [-6.0], "nodes": [3, 4], "duration": [9, 9]},
            {"kind": "partition", "window": [2], "at": [2.0], "nodes": [1], "duration": [8, 8]},
        ],
        nodes=4,
        threshold=2,
        committee={"window_period": 20.0},
    )
    events = build(grid, 3)
    assert events == build(grid, 3)
    assert [(e.kind, e.window, e.at, e.targets) for e in events] == [
        ("kill", 2, -6.0, ("n3", "n4")),
        ("partition", 2, 2.0, ("n1",)),
        ("kill", 5, -6.0, ("n3", "n4")),
    ]
    assert all(e.to_json()["window"] == e.window for e in events)
    # genesis_start 1000, workload started at 1036: window 2 starts at 1040 (its kill, due
    # at 1034, has passed), window 5 at 1100.
    kept, dropped = resolve_windows(events, 1000.0, 20.0, 1036.0)
    assert [(e.id, e.at) for e in dropped] == [(0, -2.0)]
    assert [(e.id, e.at, e.window) for e in kept] == [(1, 6.0, 2), (2, 58.0, 5)]
    plain = _scenario([{"kind": "kill", "at": [4.0], "nodes": [1]}])
    assert resolve_windows(build(plain, 3), 1000.0, 20.0, 1036.0) == (build(plain, 3), [])


def test_window_faults_need_offsets_and_only_they_may_be_negative() -> None:
    with pytest.raises(ScenarioError, match="window needs at"):
        _scenario([{"kind": "kill", "window": [2], "count": 1}])
    with pytest.raises(ScenarioError, match="at times must be >= 0"):
        _scenario([{"kind": "kill", "at": [-1.0]}])
    with pytest.raises(ScenarioError, match="window numbers >= 0"):
        _scenario([{"kind": "kill", "window": [-1], "at": [0.0]}])


def test_only_if_needs_a_window_and_reaches_the_nemesis_in_params() -> None:
    with pytest.raises(ScenarioError, match="only_if needs window"):
        _scenario([{"kind": "kill", "at": [1.0], "only_if": "refresh-sorts-first"}])
    gated = _scenario(
        [{"kind": "kill", "window": [4], "at": [-2.0], "only_if": "refresh-sorts-first"}]
    )
    (ev,) = build(gated, 1)
    assert ev.params["only_if"] == "refresh-sorts-first" and ev.window == 4


class _Member:
    def __init__(self, index: int) -> None:
        self.index, self.running, self.paused = index, True, False


def _gate(head: bytes, kind: str = "epoch") -> tuple[Any, list[str]]:
    """A nemesis over four members whose served chain ends in ``head``; its injections are
    recorded instead of made."""
    from kms.chaos.nemesis import Nemesis

    committee = types.SimpleNamespace(members=lambda: [_Member(i) for i in (1, 2, 3, 4)])
    nem = Nemesis(None, committee, None, {})  # type: ignore[arg-type]
    made: list[str] = []
    nem.served_chain = lambda: [{"epoch": 3, "kind": kind, "hash": head.hex()}]  # type: ignore[method-assign]
    nem._kill = lambda ev: made.append(ev.kind)  # type: ignore[method-assign]
    return nem, made


def test_refresh_sorts_first_holds_exactly_when_window_ws_refresh_id_is_smaller() -> None:
    from mpc.membership.messages import Proposal, Refresh

    seen = set()
    for k in range(8):
        head = bytes([k]) * 32
        nem, made = _gate(head)
        ids = [
            Proposal.of(3, head, [1, 2, 3, 4][w % 4], w.to_bytes(16, "big"), Refresh()).id()
            for w in (6, 7)
        ]
        ev = FaultEvent(0, 1.0, 5.0, "kill", ("n1",), {"only_if": "refresh-sorts-first"}, True, 6)
        nem._inject(ev)
        held = ids[0] < ids[1]
        seen.add(held)
        assert nem.conditions[-1]["held"] is held
        assert made == (["kill"] if held else [])
    assert seen == {True, False}
    # A pending change (the chain ends in a membership certificate): no window opens.
    nem, made = _gate(b"\x00" * 32, kind="membership")
    assert nem.condition("refresh-sorts-first", 6) is False
