"""A node that was paused or restarted during genesis does not sign it (the node core).

The node core tracks, from the times it is given, since when its process has run
without a stall (``NodeCore.live_since``) and hands that to every sharing session
it builds. A restarted node is a new ``NodeCore`` built from its stored records.
"""

from __future__ import annotations

import random
from typing import Any

from mesh import Mesh, make_nodes

from kms.node.core import NodeConfig, NodeCore, Restored, StoreRecord
from mpc.dkg.messages import CertificatePartial
from mpc.ids import ParticipantIndex as PI

DELTA = 0.5
N, T = 5, 3
VICTIM = PI(3)


def committee(seed: int):  # type: ignore[no-untyped-def]
    nodes = make_nodes(range(1, N + 1), seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, N + 1))
    rng = random.Random(seed)
    cfgs, cores = {}, {}
    for i in range(1, N + 1):
        cfg = NodeConfig(PI(i), genesis, T, genesis_start=1.0, delta=DELTA)
        cfgs[PI(i)] = cfg
        cores[PI(i)] = NodeCore(cfg, nodes[PI(i)].identity, nodes[PI(i)].dkg_key, rng=rng.randbytes)
    return nodes, cfgs, cores


def partial_log() -> tuple[dict[PI, list[tuple[float, bytes]]], Any]:
    sent: dict[PI, list[tuple[float, bytes]]] = {}

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if isinstance(message, CertificatePartial):
            sent.setdefault(sender, []).append((now, message.encode()))
        return None

    return sent, route


def test_a_node_paused_through_a_phase_does_not_sign_and_the_others_certify() -> None:
    nodes, cfgs, cores = committee(seed=5)
    sched = cfgs[VICTIM].genesis_schedule(0)
    sent, route = partial_log()
    mesh = Mesh(cores, seed=5, max_delay=DELTA / 3, route=route, ticks=[0.0])
    mesh.run_until(sched.deal_end - 0.2)
    mesh.asleep[VICTIM] = sched.deal_end + 1.0  # SIGSTOP for 1.2 s, well over Δ/4
    mesh.run_until(sched.end + 1.0)
    assert VICTIM not in sent  # no partial, though its view was complete
    assert cores[VICTIM].live_since is not None and cores[VICTIM].live_since > sched.start
    for i in (1, 2, 4, 5):
        assert PI(i) in sent
        assert cores[PI(i)].state is not None and cores[PI(i)].share is not None
    # It still learns the certificate (the others' partials over its own transcript).
    assert cores[VICTIM].state is not None
    assert cores[VICTIM].state.mpk == cores[PI(1)].state.mpk


def test_a_restarted_node_core_never_signs_the_run_it_restarted_in() -> None:
    nodes, cfgs, cores = committee(seed=6)
    sched = cfgs[VICTIM].genesis_schedule(0)
    sent, route = partial_log()
    mesh = Mesh(cores, seed=6, max_delay=DELTA / 3, route=route, ticks=[0.0])
    mesh.run_until(sched.respond_end - 0.5)
    mesh.sessions.pop(VICTIM)  # killed
    records: dict[bytes, dict[str, bytes]] = {}
    for ev in mesh.events[VICTIM]:
        if isinstance(ev, StoreRecord):
            records.setdefault(ev.run, {})[ev.key] = ev.data
    mesh.run_until(sched.respond_end + 0.5)
    restarted = NodeCore(
        cfgs[VICTIM],
        nodes[VICTIM].identity,
        nodes[VICTIM].dkg_key,
        rng=random.Random("restart").randbytes,
        restored=Restored(records=lambda run: records.get(run, {})),
    )
    mesh.sessions[VICTIM] = restarted
    mesh.run_until(sched.end + 1.0)
    assert VICTIM not in sent
    assert restarted.live_since is not None and restarted.live_since > sched.start
    for i in (1, 2, 4, 5):
        assert cores[PI(i)].share is not None
    assert restarted.state is not None and restarted.state.mpk == cores[PI(1)].state.mpk
