"""The link models: latency, loss, duplication, reordering, bandwidth and partitions."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from sim.network import CVM, Network
from sim.scenario import Partition, Scenario


def _network(**net: Any) -> Network:
    sc = Scenario.from_dict({"n": 4, "threshold": 2, "network": net})
    return Network(sc, random.Random("test"))


def test_fixed_latency_and_bandwidth_queue_messages_on_a_link() -> None:
    net = _network(latency=0.1, bandwidth=1000)
    assert net.route(1, 2, 500, 0.0) == [pytest.approx(0.6)]  # 0.5 s on the wire + 0.1
    assert net.route(1, 2, 500, 0.0) == [pytest.approx(1.1)]  # queued behind the first
    assert net.route(1, 3, 500, 0.0) == [pytest.approx(0.6)]  # another link is free


def test_loss_and_duplication_rates() -> None:
    lossy = _network(loss=0.3)
    lost = sum(1 for _ in range(4000) if not lossy.route(1, 2, 10, 0.0))
    assert 0.25 < lost / 4000 < 0.35
    dup = _network(duplicate=0.2)
    copies = sum(len(dup.route(1, 2, 10, 0.0)) for _ in range(4000))
    assert 1.15 < copies / 4000 < 1.25


def test_reordering_delays_some_messages_past_later_ones() -> None:
    net = _network(latency=0.01, reorder=0.5, reorder_window=1.0)
    arrivals = [net.route(1, 2, 10, k * 0.1)[0] for k in range(200)]
    assert any(b < a for a, b in itertools.pairwise(arrivals))


def test_partitions_cut_groups_and_heal() -> None:
    net = _network(latency=0.01)
    p = Partition(at=0.0, heal=5.0, groups=((1, 2), (3,)))
    net.open_partition(p)
    assert net.route(1, 2, 10, 0.0) and not net.route(1, 3, 10, 0.0)
    # Nodes in no group (4, and the CVMs) form one more group together.
    assert net.connected(4, CVM) and not net.connected(4, 1)
    net.heal_partition(p)
    assert net.route(1, 3, 10, 0.0)


def test_link_overrides_apply_to_the_named_links() -> None:
    sc = Scenario.from_dict(
        {
            "n": 4,
            "threshold": 2,
            "network": {"latency": 0.01, "links": [{"from": [1], "to": [2], "latency": 0.5}]},
        }
    )
    net = Network(sc, random.Random(0))
    assert net.route(1, 2, 10, 0.0) == [pytest.approx(0.5)]
    assert net.route(2, 1, 10, 0.0) == [pytest.approx(0.01)]


def test_with_param_sets_nested_fields_and_keeps_integers() -> None:
    sc = Scenario.from_dict({"n": 4, "threshold": 2, "network": {"loss": 0.0}})
    assert sc.with_param("network.loss", 0.25).network.loss == 0.25
    bigger = sc.with_param("n", 7.0)
    assert bigger.n == 7 and isinstance(bigger.raw["n"], int)
