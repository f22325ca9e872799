"""The node lifecycle: the phases a ``NodeCore`` goes through, checked against the table."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from mesh import Mesh, make_nodes

from kms.node.core import NodeConfig, NodeCore, Restored
from kms.node.phase import TRANSITIONS, NodePhase, check_transition, phase_of
from mpc.errors import LocalProtocolError
from mpc.ids import ParticipantIndex as PI
from mpc.membership import AddMember, RemoveMember

DELTA = 0.5
P = NodePhase


class Recorder:
    """A core as the mesh drives it, noting every phase it shows after a step."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.phases = [core.phase]

    def _note(self) -> None:
        if self.core.phase is not self.phases[-1]:
            self.phases.append(self.core.phase)

    def advance_time(self, now: float) -> None:
        self.core.advance_time(now)
        self._note()

    def receive(self, peer: PI, message: Any, now: float) -> None:
        self.core.receive(peer, message, now)
        self._note()

    def messages_to_send(self) -> list[Any]:
        out = self.core.messages_to_send()
        self._note()
        return out

    def events(self) -> list[Any]:
        out = self.core.events()
        self._note()
        return out


def committee(n: int, t: int, seed: int, *, extra: int = 0) -> tuple[Any, dict[PI, Recorder]]:
    nodes = make_nodes(range(1, n + 1 + extra), seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, n + 1))
    rng = random.Random(seed)
    out = {}
    for i in range(1, n + 1 + extra):
        cfg = NodeConfig(
            PI(i),
            genesis,
            t,
            genesis_start=1.0,
            delta=DELTA,
            window_period=20.0,
            window_length=2.0,
        )
        core = NodeCore(cfg, nodes[PI(i)].identity, nodes[PI(i)].dkg_key, rng=rng.randbytes)
        out[PI(i)] = Recorder(core)
    return nodes, out


def mesh_of(cores: dict[PI, Recorder], until: float) -> Mesh:
    ticks = [k * 0.25 for k in range(int(200.0 / 0.25) + 1)]
    mesh = Mesh(dict(cores), seed=0, max_delay=DELTA / 3, ticks=ticks)
    mesh.run_until(until)
    return mesh


def walk_is_allowed(phases: list[NodePhase]) -> bool:
    return all(b in TRANSITIONS[a] for a, b in itertools.pairwise(phases))


def test_genesis_then_a_join_go_through_the_expected_phases() -> None:
    nodes, cores = committee(4, 3, seed=1, extra=1)
    mesh = mesh_of(cores, 19.0)
    for i in range(1, 5):
        assert cores[PI(i)].phases == [P.AWAITING_GENESIS, P.GENESIS, P.MEMBER], i
    # Not a genesis member, no endorsed chain offered yet: it waits.
    assert cores[PI(5)].phases == [P.AWAITING_GENESIS]
    pid = cores[PI(1)].core.propose(AddMember(nodes[PI(5)].participant, b"attestation"))
    cores[PI(2)].core.approve(pid)
    cores[PI(3)].core.approve(pid)
    mesh.run_until(60.0)
    for i in range(1, 5):
        assert cores[PI(i)].phases == [
            P.AWAITING_GENESIS,
            P.GENESIS,
            P.MEMBER,
            P.RESHARING,
            P.MEMBER,
        ], i
    # The members send the newcomer the chain once the change that adds it is certified:
    # it adopts the endorsed genesis first (following), then the change (joining).
    assert cores[PI(5)].phases == [P.AWAITING_GENESIS, P.FOLLOWING, P.JOINING, P.MEMBER]
    assert cores[PI(5)].core.state is not None and cores[PI(5)].core.state.epoch == 1
    assert all(walk_is_allowed(r.phases) for r in cores.values())


def test_a_removed_member_retires_and_a_restart_restores_its_phase() -> None:
    nodes, cores = committee(5, 3, seed=2)
    mesh = mesh_of(cores, 19.0)
    pid = cores[PI(2)].core.propose(RemoveMember(5))
    for i in (1, 3):
        cores[PI(i)].core.approve(pid)
    mesh.run_until(60.0)
    assert cores[PI(5)].phases == [
        P.AWAITING_GENESIS,
        P.GENESIS,
        P.MEMBER,
        P.RESHARING,
        P.RETIRED,
    ]
    for i in range(1, 5):
        assert cores[PI(i)].phases[-3:] == [P.MEMBER, P.RESHARING, P.MEMBER], i
    # A restart from the stored chain: restoring, then the phase the chain gives.
    for i, want in ((PI(1), P.MEMBER), (PI(5), P.RETIRED)):
        old = cores[i].core
        revived = NodeCore(
            old.config,
            nodes[i].identity,
            nodes[i].dkg_key,
            rng=random.Random(9).randbytes,
            restored=Restored(chain=tuple(old.chain), share=old.share),
        )
        assert revived.phase is want
        assert revived.status().phase == want.value


def test_a_node_that_restarts_without_a_chain_awaits_genesis() -> None:
    nodes, cores = committee(3, 2, seed=5)
    mesh_of(cores, 19.0)
    old = cores[PI(1)].core
    fresh = NodeCore(
        old.config, nodes[PI(1)].identity, nodes[PI(1)].dkg_key, rng=random.Random(1).randbytes
    )
    assert fresh.phase is P.AWAITING_GENESIS
    assert fresh.status().phase == "awaiting-genesis"


@pytest.mark.parametrize(
    ("a", "b"),
    [(a, b) for a in NodePhase for b in NodePhase if a is not b and b not in TRANSITIONS[a]],
    ids=lambda p: p.name,
)
def test_a_transition_outside_the_table_is_a_local_error_naming_both_phases(
    a: NodePhase, b: NodePhase
) -> None:
    with pytest.raises(LocalProtocolError, match=rf"{a.name} -> {b.name}"):
        check_transition(a, b)


def test_the_table_is_closed_and_retired_is_its_only_end() -> None:
    assert set(TRANSITIONS) == set(NodePhase)
    assert [p for p, nxt in TRANSITIONS.items() if not nxt] == [P.RETIRED]
    assert all(P.RESTORING not in nxt for nxt in TRANSITIONS.values())
    chain = {P.FOLLOWING, P.JOINING, P.MEMBER, P.RESHARING, P.RETIRED}
    for a in chain:
        assert not set(TRANSITIONS[a]) & {P.AWAITING_GENESIS, P.GENESIS}


def test_phase_of_reads_the_view() -> None:
    me = PI(3)

    def of(**kw: Any) -> NodePhase:
        base: dict[str, Any] = dict(
            has_chain=True,
            genesis_running=False,
            committee=(),
            incoming=(),
            pending=False,
            was_member=False,
        )
        return phase_of(me, **{**base, **kw})

    assert of(has_chain=False) is P.AWAITING_GENESIS
    assert of(has_chain=False, genesis_running=True) is P.GENESIS
    assert of(committee=(PI(1), me)) is P.MEMBER
    assert of(committee=(PI(1), me), pending=True) is P.RESHARING
    assert of(committee=(PI(1),), incoming=(me,), pending=True) is P.JOINING
    assert of(committee=(PI(1),)) is P.FOLLOWING
    assert of(committee=(PI(1),), was_member=True) is P.RETIRED
