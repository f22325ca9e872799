"""The simulated network: per-link latency, loss, duplication, reordering, bandwidth, partitions.

``Network.route`` decides, when a message is sent, when (if ever) each copy
arrives. Every random draw comes from the one ``random.Random`` the world
hands it, in the order messages are sent, so a run is reproducible. Endpoint
``0`` is the simulated CVM population (the key-request clients).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sim.scenario import Latency, LinkSpec, Partition, Scenario

CVM = 0
"""The endpoint that stands for the simulated CVMs sending key requests."""


def sample_latency(lat: Latency, rnd: random.Random) -> float:
    if lat.kind == "fixed":
        value = lat.low
    elif lat.kind == "uniform":
        # ``rnd.uniform(low, high)`` written out (CPython's own formula, the same draw
        # and the same float operations): this runs once per message copy.
        value = lat.low + (lat.high - lat.low) * rnd.random()
    elif lat.kind == "exponential":
        value = lat.low + rnd.expovariate(1.0 / lat.mean) if lat.mean > 0 else lat.low
    else:  # lognormal with the given mean
        mu = math.log(max(lat.mean, 1e-9)) - lat.sigma**2 / 2
        value = lat.low + rnd.lognormvariate(mu, lat.sigma)
    return min(value, lat.cap)


@dataclass
class NetworkStats:
    sent: int = 0
    lost: int = 0
    partitioned: int = 0
    duplicated: int = 0


class Network:
    """Link models between endpoints, plus the partitions in force."""

    def __init__(self, scenario: Scenario, rnd: random.Random) -> None:
        self._default = scenario.network
        self._overrides = scenario.links
        self._rnd = rnd
        self._busy_until: dict[tuple[int, int], float] = {}
        self._partitions: list[Partition] = []
        self._specs: dict[tuple[int, int], LinkSpec] = {}
        self.stats = NetworkStats()

    def spec(self, sender: int, receiver: int) -> LinkSpec:
        """The last override naming this link wins; otherwise the default (the scenario
        does not change during a run, so each link's answer is looked up once)."""
        key = (sender, receiver)
        chosen = self._specs.get(key)
        if chosen is None:
            chosen = self._specs[key] = self._spec(sender, receiver)
        return chosen

    def _spec(self, sender: int, receiver: int) -> LinkSpec:
        chosen = self._default
        for o in self._overrides:
            if (not o.senders or sender in o.senders) and (
                not o.receivers or receiver in o.receivers
            ):
                chosen = o.spec
        return chosen

    # --- partitions --------------------------------------------------------------

    def open_partition(self, p: Partition) -> None:
        self._partitions.append(p)

    def heal_partition(self, p: Partition) -> None:
        if p in self._partitions:
            self._partitions.remove(p)

    def connected(self, a: int, b: int) -> bool:
        """Nodes not listed in any group of a partition form one more group of their own."""
        for p in self._partitions:
            if self._group(p, a) != self._group(p, b):
                return False
        return True

    @staticmethod
    def _group(p: Partition, node: int) -> int:
        for k, g in enumerate(p.groups):
            if node in g:
                return k
        return len(p.groups)

    # --- sending -----------------------------------------------------------------

    def route(self, sender: int, receiver: int, size: int, now: float) -> list[float]:
        """Arrival times of the copies of one message (empty: it is lost)."""
        self.stats.sent += 1
        if not self.connected(sender, receiver):
            self.stats.partitioned += 1
            return []
        spec = self.spec(sender, receiver)
        rnd = self._rnd
        if spec.loss and rnd.random() < spec.loss:
            self.stats.lost += 1
            return []
        departure = now
        if spec.bandwidth > 0:
            key = (sender, receiver)
            departure = max(now, self._busy_until.get(key, now)) + size / spec.bandwidth
            self._busy_until[key] = departure
        copies = 1
        if spec.duplicate and rnd.random() < spec.duplicate:
            copies = 2
            self.stats.duplicated += 1
        out = []
        for _ in range(copies):
            at = departure + sample_latency(spec.latency, rnd)
            if spec.reorder and rnd.random() < spec.reorder:
                at += rnd.uniform(0.0, spec.reorder_window)
            out.append(at)
        return out
