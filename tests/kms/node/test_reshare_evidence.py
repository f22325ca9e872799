"""A reshare dealer that deals a wrong constant term is removed with the evidence of it.

Node 4 is corrupt in the reshare (the simulator's ``wrong-constant`` behaviour:
it deals a sharing of something other than its share). The honest members
exclude it and keep its signed deal as ``ReshareConstantEvidence``; a removal
carrying that evidence passes the checks of every member that ran the
reshare, and is refused where the run is unknown or the evidence is bent.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
from mesh import Mesh, make_nodes

from kms.attest import INTEL_ROOT_CA, Verifier
from kms.node.admission import AdmissionRefusal, ChangeChecker
from kms.node.core import ChangeContext, ChangeRefused, MisbehaviourObserved, NodeConfig, NodeCore
from mpc.dkg.evidence import ReshareConstantEvidence
from mpc.ids import ParticipantIndex as PI
from mpc.membership import Refresh, RemoveMember
from sim.adversary import WrongConstant
from sim.nodes import session_factory

DELTA = 0.5


@pytest.fixture(scope="module")
def after_reshare():  # type: ignore[no-untyped-def]
    nodes = make_nodes(range(1, 5), 81)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, 5))
    rng = random.Random(81)
    cores: dict[PI, NodeCore] = {}
    for i in range(1, 5):
        cfg = NodeConfig(
            PI(i), genesis, 3, genesis_start=1.0, delta=DELTA, window_period=10.0, window_length=2.0
        )
        liar = (WrongConstant({}, node=4),) if i == 4 else ()
        cores[PI(i)] = NodeCore(
            cfg,
            nodes[PI(i)].identity,
            nodes[PI(i)].dkg_key,
            rng=rng.randbytes,
            session_factory=session_factory([], liar, lambda epoch: True),
        )
    mesh = Mesh(cores, seed=3, max_delay=DELTA / 3, ticks=[k * 0.25 for k in range(600)])
    mesh.run_until(19.0)
    mpk = cores[PI(1)].state.mpk
    pid = cores[PI(1)].propose(Refresh())
    for i in (2, 3):
        cores[PI(i)].approve(pid)
    mesh.run_until(80.0)
    st = cores[PI(1)].state
    assert st is not None and st.epoch == 1 and st.mpk == mpk  # the reshare went on without it
    evidence = [
        e.evidence
        for e in mesh.events[PI(1)]
        if isinstance(e, MisbehaviourObserved)
        and isinstance(e.evidence, ReshareConstantEvidence)
        and e.culprit == PI(4)
    ]
    assert evidence, "the honest members keep the wrong deal as evidence"
    return cores, evidence[0]


def _ctx(core: NodeCore, *, runs: bool = True) -> ChangeContext:
    assert core.state is not None
    return ChangeContext(
        core.state,
        tuple(core.chain),
        90.0,
        core.admission_policy(),
        dict(core._reshare_runs) if runs else {},
    )


CHECK = ChangeChecker(Verifier([INTEL_ROOT_CA]), None)


def _remove(core: NodeCore, index: int, evidence: bytes) -> RemoveMember:
    """A removal naming the identity that holds ``index`` in ``core``'s current epoch."""
    assert core.state is not None
    holder = next(m for m in core.state.committee.members if m.index == index)
    return RemoveMember(index, evidence, holder.identity)


def test_the_wrong_constant_evidence_passes_every_member_that_ran_the_reshare(
    after_reshare,
) -> None:  # type: ignore[no-untyped-def]
    cores, ev = after_reshare
    for i in (1, 2, 3):
        CHECK(_ctx(cores[PI(i)]), _remove(cores[PI(i)], 4, ev.encode()))
    # The core runs the same check when its operator proposes the removal.
    pid = cores[PI(2)].propose(RemoveMember(4, ev.encode()))
    assert len(pid) == 32


def test_the_evidence_is_refused_where_the_run_is_unknown_or_it_is_bent(after_reshare) -> None:  # type: ignore[no-untyped-def]
    cores, ev = after_reshare
    with pytest.raises(ChangeRefused) as exc:
        CHECK(_ctx(cores[PI(1)], runs=False), _remove(cores[PI(1)], 4, ev.encode()))
    assert AdmissionRefusal(exc.value.reason) is AdmissionRefusal.UNKNOWN_RUN
    # Claimed for a run this node never took part in.
    bent = dataclasses.replace(ev, run=bytes(32))
    with pytest.raises(ChangeRefused) as exc:
        CHECK(_ctx(cores[PI(1)]), _remove(cores[PI(1)], 4, bent.encode()))
    assert AdmissionRefusal(exc.value.reason) is AdmissionRefusal.UNKNOWN_RUN
    # Pinned on an honest member: the evidence names node 4, not node 3.
    with pytest.raises(ChangeRefused) as exc:
        CHECK(_ctx(cores[PI(1)]), _remove(cores[PI(1)], 3, ev.encode()))
    assert AdmissionRefusal(exc.value.reason) is AdmissionRefusal.EVIDENCE_NAMES_ANOTHER_NODE
