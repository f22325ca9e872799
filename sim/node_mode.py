"""Node mode: the real trio node service over ``net.memory`` on trio's ``MockClock``.

Where protocol mode drives cores from its own event queue, node mode runs
``kms.node.service.NodeService`` exactly as a deployed node does (SQLite
store, envelopes, per-peer send queues, the timer task), on an in-process
network, with virtual time that jumps whenever every task is blocked. trio
schedules tasks in a randomised order, so node mode asserts *outcomes*
(who is certified, who is excluded and with what evidence, whether the
master public key held), never interleavings or bytes.

What node mode takes from a scenario: the committee, Δ and the windows,
the duration, one fixed link delay, and the adversaries' sharing behaviours
(bad shares, equivocation, complaints, justifications). It does not apply
partitions, crashes, message filters or key-request load; protocol mode does.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from kms.node.core import NodeConfig
from kms.node.service import NodeService, TrioClock
from kms.store import NodeStore
from kms.store.sealer import TEESealer
from mpc.dkg import SharingSession
from mpc.ids import ParticipantIndex
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519
from sim import adversary
from sim.scenario import Scenario
from sim.world import SimNodeCore, disqualified_from, node_keys


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


async def _run(scenario: Scenario, seed: int, workdir: Path, delay: float) -> Outcome:
    network = MemoryNetwork(default_delay=delay)
    keys = {i: node_keys(i, seed) for i in range(1, scenario.n + 1)}
    genesis = tuple(keys[i].participant for i in sorted(keys))
    cores: dict[int, SimNodeCore] = {}
    corrupt = set(scenario.corrupt_nodes())
    async with AsyncExitStack() as stack:
        services = []
        for i in sorted(keys):
            k = keys[i]
            store = NodeStore(workdir / f"node-{i}.sqlite", TEESealer(lambda: bytes(32)))
            stack.callback(store.close)
            store.save_identity(k.identity_seed, k.dkg_seed)
            transport = await stack.enter_async_context(
                MemoryTransport(network, peer_id_from_ed25519(k.participant.identity))
            )
            cfg = _config(scenario, i, genesis)
            rng = random.Random(f"quorum-kms/sim/{seed}/node-mode/{i}")
            service = NodeService(
                cfg, store, transport, {}, clock=TrioClock(0.0), rng=rng.randbytes
            )
            # The service's own core, with the scenario's adversaries plugged in.
            core = SimNodeCore(cfg, k.identity, k.dkg_key, rng=rng.randbytes)
            core.sessions = []
            specs = [(a.behaviour, a.params) for a in scenario.adversaries if i in a.nodes]
            core.behaviours = adversary.build(specs, i)
            ranges = [a.epochs for a in scenario.adversaries if i in a.nodes]
            core.corrupt_in = _corrupt_in(ranges[0] if ranges else None, bool(specs))
            service.core = core
            cores[i] = core
            services.append(service)
        async with trio.open_nursery() as nursery:
            for service in services:
                nursery.start_soon(service.run)
            await trio.sleep(scenario.duration)
            nursery.cancel_scope.cancel()
    honest = [cores[i] for i in sorted(cores) if i not in corrupt]
    mpks = set()
    certified: dict[int, tuple[tuple[int, ...], int]] = {}
    for core in honest:
        for link in core.chain:
            tr = getattr(link, "transcript", None)
            if tr is not None:
                mpks.add(tr.mpk)
                certified.setdefault(tr.epoch, (tuple(p.index for p in tr.committee), tr.threshold))
        if core.state is not None:
            mpks.add(core.state.mpk.to_bytes())
    sessions: list[list[SharingSession]] = [core.sessions for core in honest]
    return Outcome(
        genesis_certified=0 in certified,
        certified=tuple((e, c, t) for e, (c, t) in sorted(certified.items())),
        mpk_stable=len(mpks) == 1,
        disqualified=tuple(
            sorted({(d["epoch"], d["index"], d["evidence"]) for d in disqualified_from(sessions)})
        ),
    )


def run_node_mode(scenario: Scenario, seed: int, *, delay: float = 0.05) -> Outcome:
    """Run ``scenario`` on the trio node service under ``MockClock`` and return its outcome."""
    with tempfile.TemporaryDirectory(prefix="qkms-sim-node-") as tmp:
        return trio.run(
            _run,
            scenario,
            seed,
            Path(tmp),
            delay,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
