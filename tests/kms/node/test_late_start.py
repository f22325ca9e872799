"""Genesis members whose process starts a little after ``genesis_start``.

A node process that is not running when the run keys are announced never gets
them: the transport is best effort, and the announcements and their relays were
sent before it could be reached. Its view of the key round is then not the one
the others agree on, its deal does not match the agreed keys, and it judges the
others' deals against a view of its own. Such a member is not live through the
attempt (sharing.md, "Live members"), so it never signs it; what these tests add
is that nobody reports anyone as misbehaving over it: neither the members that
were up (about the late dealer) nor the late member (about the others). The
nodes are real ``NodeCore``s, every message through the codec.
"""

from __future__ import annotations

import random
from typing import Any

from mesh import Mesh, make_nodes

from kms.node.core import DealerLeftOut, MisbehaviourObserved, NodeConfig, NodeCore, RunFailed
from mpc.ids import ParticipantIndex as PI

DELTA = 0.5
N, T = 5, 3
START = 1.0


def committee(seed: int) -> tuple[dict[PI, NodeConfig], dict[PI, NodeCore]]:
    nodes = make_nodes(range(1, N + 1), seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, N + 1))
    rng = random.Random(seed)
    cfgs, cores = {}, {}
    for i in range(1, N + 1):
        cfg = NodeConfig(PI(i), genesis, T, genesis_start=START, delta=DELTA)
        cfgs[PI(i)] = cfg
        cores[PI(i)] = NodeCore(cfg, nodes[PI(i)].identity, nodes[PI(i)].dkg_key, rng=rng.randbytes)
    return cfgs, cores


def start_late(mesh: Mesh, cores: dict[PI, NodeCore], late: dict[PI, float]) -> None:
    """Each node in ``late`` has no process until its time: what is sent to it before
    is lost (the mesh drops messages to members it does not run)."""
    for i, at in late.items():
        core = mesh.sessions.pop(i)

        def boot(i: PI = i, core: Any = core) -> None:
            mesh.sessions[i] = core

        mesh.at(at, boot)


def blamed(mesh: Mesh, i: PI) -> list[MisbehaviourObserved]:
    return [e for e in mesh.events[i] if isinstance(e, MisbehaviourObserved)]


def left_out(mesh: Mesh, i: PI) -> list[DealerLeftOut]:
    return [e for e in mesh.events[i] if isinstance(e, DealerLeftOut)]


def test_two_members_starting_late_in_the_key_window_are_not_blamed() -> None:
    """Members 4 and 5 start 0.33 s and 0.46 s after the start, inside the key window
    and before ``key_cutoff - Δ``. Members 1-3 certify attempt 0 without them; the late
    dealers are left out of QUAL, but no node reports misbehaviour by anyone."""
    cfgs, cores = committee(seed=21)
    sched = cfgs[PI(1)].genesis_schedule(0)
    mesh = Mesh(cores, seed=21, max_delay=DELTA / 3, ticks=[0.0])
    start_late(mesh, cores, {PI(4): START + 0.33, PI(5): START + 0.46})
    mesh.run_until(sched.end + 1.0)
    for i in range(1, N + 1):
        assert blamed(mesh, PI(i)) == [], (i, blamed(mesh, PI(i)))
    for i in (1, 2, 3):
        st = cores[PI(i)].state
        assert st is not None and st.epoch == 0 and st.certificate.transcript.attempt == 0
        # The late dealers' deals do not match the agreed keys: left out, not blamed.
        assert {int(e.dealer) for e in left_out(mesh, PI(i))} == {4, 5}
        assert cores[PI(i)].share is not None
    # The late members hold the chain too (they catch up; a refresh gives them shares).
    for i in (4, 5):
        st = cores[PI(i)].state
        assert st is not None and st.mpk == cores[PI(1)].state.mpk  # type: ignore[union-attr]


def test_every_member_starting_late_fails_attempt_0_blaming_nobody_then_certifies() -> None:
    """The fault lab's case: every process starts 0.07-0.47 s after the start (1-2 s at
    Δ = 2.1 s), one after the other. Nobody is live through attempt 0, so it fails at
    every node, and nobody reports misbehaviour; attempt 1 certifies with every member."""
    cfgs, cores = committee(seed=22)
    sched = cfgs[PI(1)].genesis_schedule(0)
    mesh = Mesh(cores, seed=22, max_delay=DELTA / 3, ticks=[0.0])
    start_late(mesh, cores, {PI(i): START + 0.1 * i - 0.03 for i in range(1, N + 1)})
    end1 = cfgs[PI(1)].genesis_schedule(1).end
    mesh.run_until(end1 + 1.0)
    for i in range(1, N + 1):
        failed = [e for e in mesh.events[PI(i)] if isinstance(e, RunFailed) and e.attempt == 0]
        assert failed, i
        assert blamed(mesh, PI(i)) == [], (i, blamed(mesh, PI(i)))
        st = cores[PI(i)].state
        assert st is not None and st.certificate.transcript.attempt == 1
        assert cores[PI(i)].share is not None
    assert sched.end <= cfgs[PI(1)].genesis_schedule(1).start
