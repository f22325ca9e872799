"""Node mode: the real trio node service over ``net.memory`` on trio's ``MockClock``.

Where protocol mode drives cores from its own event queue, node mode runs
``kms.node.service.NodeService`` exactly as a deployed node does (SQLite
store, envelopes, per-peer send queues, the timer task), on an in-process
network, with virtual time that jumps whenever every task is blocked. trio
schedules tasks in a randomised order, so node mode asserts *outcomes*
(who is certified, who is excluded and with what evidence, whether the
master public key held), never interleavings or bytes.

What node mode takes from a scenario: the committee, Δ and the windows,
the duration, one fixed link delay, partitions (``MemoryNetwork.partition``), membership
changes (proposed and approved through the cores, as the admin channel does),
crashes (the node's service is cancelled and later restarted from its SQLite
store, as a killed process would be) and the adversaries' sharing behaviours
(bad shares, equivocation, complaints, justifications). It does not apply
latency distributions, loss, message filters or key-request load; protocol
mode does.
"""

from __future__ import annotations

import functools
import logging
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from kms.node.core import NodeCore
from kms.node.model import NodeConfig
from kms.node.persist import restore
from kms.node.service import NodeService, TrioClock
from mpc.dkg import SharingSession
from mpc.errors import LocalProtocolError
from mpc.ids import ParticipantIndex
from mpc.membership import AddMember, ChangeThreshold, Refresh, RemoveMember
from mpc.membership.messages import Change
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519
from sim import adversary
from sim.nodes import (
    disqualified_from,
    node_keys,
    provision_sqlite_store,
    session_factory,
    sqlite_store,
)
from sim.scenario import MembershipEvent, Scenario


@dataclass(frozen=True)
class Outcome:
    """What both modes must agree on for one scenario."""

    genesis_certified: bool
    certified: tuple[tuple[int, tuple[int, ...], int], ...]
    """(epoch, committee, threshold) of every epoch honest nodes reached."""
    mpk_stable: bool
    disqualified: tuple[tuple[int, int, str | None], ...]
    """(epoch, dealer, evidence kind) of every exclusion in a run that finalised."""

    @classmethod
    def of_report(cls, report: dict[str, Any]) -> Outcome:
        epochs = [e for e in report["epochs"] if e["certified_at"] is not None]
        return cls(
            genesis_certified=report["epochs"][0]["certified_at"] is not None,
            certified=tuple((e["epoch"], tuple(e["committee"]), e["threshold"]) for e in epochs),
            mpk_stable=report["mpk_stable"],
            disqualified=tuple(
                sorted({(d["epoch"], d["index"], d["evidence"]) for d in report["disqualified"]})
            ),
        )


def _corrupt_in(epochs: tuple[int, int] | None, corrupt: bool) -> Callable[[int], bool]:
    if not corrupt:
        return lambda epoch: False
    if epochs is None:
        return lambda epoch: True
    lo, hi = epochs
    return lambda epoch: lo <= epoch <= hi


def _config(scenario: Scenario, index: int, genesis: Any) -> NodeConfig:
    return NodeConfig(
        ParticipantIndex(index),
        genesis,
        scenario.threshold,
        genesis_start=scenario.genesis_start,
        delta=scenario.delta,
        window_period=scenario.window_period,
        window_length=scenario.window_length,
        refresh_interval=scenario.refresh_interval,
    )


class _Process:
    """One node's service: started, crashed (cancelled) and restarted from its SQLite store."""

    def __init__(
        self,
        scenario: Scenario,
        seed: int,
        index: int,
        genesis: Any,
        network: MemoryNetwork,
        workdir: Path,
    ) -> None:
        self.index = index
        self.keys = node_keys(index, seed)
        self.config = _config(scenario, index, genesis)
        self.network = network
        self.path = workdir / f"node-{index}.sqlite"
        self.rng = random.Random(f"quorum-kms/sim/{seed}/node-mode/{index}")
        specs = [(a.behaviour, a.params) for a in scenario.adversaries if index in a.nodes]
        self.behaviours = adversary.build(specs, index)
        ranges = [a.epochs for a in scenario.adversaries if index in a.nodes]
        self.corrupt_in = _corrupt_in(ranges[0] if ranges else None, bool(specs))
        self.sessions: list[SharingSession] = []
        self.core: NodeCore | None = None
        self.scope: trio.CancelScope | None = None
        provision_sqlite_store(self.path, self.keys)

    async def serve(self, clock: TrioClock) -> None:
        """Run the real service until crashed; on a crash everything not stored is gone."""
        with trio.CancelScope() as scope:
            self.scope = scope
            with sqlite_store(self.path) as store:
                pid = peer_id_from_ed25519(self.keys.participant.identity)
                async with MemoryTransport(self.network, pid) as transport:
                    # The service's core, from what the store holds, with the scenario's
                    # adversaries plugged in through its session factory.
                    core = NodeCore(
                        self.config,
                        self.keys.identity,
                        self.keys.dkg_key,
                        rng=self.rng.randbytes,
                        restored=restore(store),
                        session_factory=session_factory(
                            self.sessions, self.behaviours, self.corrupt_in
                        ),
                    )
                    service = NodeService(self.config, store, transport, {}, clock=clock, core=core)
                    self.core = core
                    await service.run()

    def serving_member(self) -> bool:
        """Up, and a member of the epoch it is in."""
        core = self.core
        st = core.state if core is not None else None
        return (
            self.scope is not None
            and st is not None
            and ParticipantIndex(self.index) in st.committee.indices
        )

    def crash(self) -> None:
        if self.scope is not None:
            self.scope.cancel()
            self.scope = None


async def _run(scenario: Scenario, seed: int, workdir: Path, delay: float) -> Outcome:
    clock = TrioClock(0.0)
    start = trio.current_time()
    network = MemoryNetwork(default_delay=delay)
    genesis = tuple(node_keys(i, seed).participant for i in range(1, scenario.n + 1))
    procs = {
        i: _Process(scenario, seed, i, genesis, network, workdir) for i in range(1, scenario.n + 1)
    }
    pid = {i: peer_id_from_ed25519(p.keys.participant.identity) for i, p in procs.items()}
    events: list[tuple[float, int, Callable[[], None]]] = []

    async with trio.open_nursery() as nursery:

        def partition(groups: tuple[tuple[int, ...], ...]) -> None:
            network.partition([[pid[i] for i in g if i in pid] for g in groups])

        def recover(i: int) -> None:
            if procs[i].scope is None:
                nursery.start_soon(procs[i].serve, clock)

        for k, p in enumerate(scenario.partitions):
            events.append((p.at, k, functools.partial(partition, p.groups)))
            if p.heal is not None:
                events.append((p.heal, k, network.heal))
        for k, c in enumerate(scenario.crashes):
            events.append((c.at, 1000 + k, procs[c.node].crash))
            if c.recover is not None:
                events.append((c.recover, 1000 + k, functools.partial(recover, c.node)))

        def membership(m: MembershipEvent) -> None:
            up = [i for i in sorted(procs) if procs[i].serving_member()]
            if not up:
                return
            change: Change
            if m.action == "add":
                procs[m.node] = _Process(scenario, seed, m.node, genesis, network, workdir)
                pid[m.node] = peer_id_from_ed25519(procs[m.node].keys.participant.identity)
                nursery.start_soon(procs[m.node].serve, clock)
                change = AddMember(procs[m.node].keys.participant, b"simulated-attestation")
            elif m.action == "remove":
                change = RemoveMember(m.node)
            elif m.action == "threshold":
                change = ChangeThreshold(m.threshold)
            else:
                change = Refresh()
            proposer = m.proposer if m.proposer in up else up[0]
            core = procs[proposer].core
            if core is None:
                return
            try:
                proposal = core.propose(change)
            except LocalProtocolError:
                return
            for i in up:
                other = procs[i].core
                if i != proposer and other is not None:
                    other.approve(proposal)

        for k, m in enumerate(scenario.membership):
            events.append((m.at, 2000 + k, functools.partial(membership, m)))
        for i in sorted(procs):
            nursery.start_soon(procs[i].serve, clock)
        for at, _, action in sorted(events, key=lambda e: (e[0], e[1])):
            await trio.sleep_until(start + at)
            action()
        await trio.sleep_until(start + scenario.duration)
        nursery.cancel_scope.cancel()
    corrupt = set(scenario.corrupt_nodes())
    honest = [procs[i] for i in sorted(procs) if i not in corrupt]
    mpks = set()
    certified: dict[int, tuple[tuple[int, ...], int]] = {}
    for proc in honest:
        core = proc.core
        if core is None:
            continue
        for link in core.chain:
            tr = getattr(link, "transcript", None)
            if tr is not None:
                mpks.add(tr.mpk)
                certified.setdefault(tr.epoch, (tuple(p.index for p in tr.committee), tr.threshold))
        if core.state is not None:
            mpks.add(core.state.mpk.to_bytes())
    sessions: list[list[SharingSession]] = [proc.sessions for proc in honest]
    return Outcome(
        genesis_certified=0 in certified,
        certified=tuple((e, c, t) for e, (c, t) in sorted(certified.items())),
        mpk_stable=len(mpks) == 1,
        disqualified=tuple(
            sorted({(d["epoch"], d["index"], d["evidence"]) for d in disqualified_from(sessions)})
        ),
    )


def run_node_mode(scenario: Scenario, seed: int, *, delay: float = 0.05) -> Outcome:
    """Run ``scenario`` on the trio node service under ``MockClock`` and return its outcome.

    The simulated services' own warnings (misbehaviour seen, failed runs) are
    expected here and are silenced for the run; the outcome reports them."""
    logger = logging.getLogger("quorum_kms.node")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="qkms-sim-node-") as tmp:
            return trio.run(
                _run,
                scenario,
                seed,
                Path(tmp),
                delay,
                clock=trio.testing.MockClock(autojump_threshold=0),
            )
    finally:
        logger.setLevel(level)
