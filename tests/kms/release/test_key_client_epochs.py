"""A CVM during an epoch switch: members on the old epoch and on the new one both answer.

The committee refreshes (epoch 0 → 1) on the node cores. While the switch is
in progress some members still answer with epoch-0 partials and some with
epoch-1 partials; a session that holds the verified states of both epochs
combines whichever reaches ``t`` first, and the key is the same.
"""

from __future__ import annotations

import random

import pytest
from mesh import Mesh, make_nodes
from release_committee import InProcessReleaser

from kms.attest import Verifier
from kms.attest.simulated import SimulatedTEE
from kms.client.core import KeyRequestSession
from kms.node.core import NodeConfig, NodeCore
from kms.node.release import Released
from kms.policy import AppPolicy, Measurement, OwnerKey
from mpc.ids import ParticipantIndex as PI
from mpc.membership import Refresh, verify_chain_epochs

NOW = 1_800_000_000
MR = {n: bytes([i + 1]) * 48 for i, n in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))}


@pytest.fixture(scope="module")
def switched():  # type: ignore[no-untyped-def]
    nodes = make_nodes(range(1, 6), 71)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, 6))
    rng = random.Random(71)
    cores = {
        PI(i): NodeCore(
            NodeConfig(
                PI(i),
                genesis,
                3,
                genesis_start=1.0,
                delta=0.5,
                window_period=20.0,
                window_length=2.0,
            ),
            nodes[PI(i)].identity,
            nodes[PI(i)].dkg_key,
            rng=rng.randbytes,
        )
        for i in range(1, 6)
    }
    mesh = Mesh(cores, seed=0, max_delay=0.15, ticks=[k * 0.25 for k in range(400)])
    mesh.run_until(19.0)
    old = {i: cores[i].share for i in cores}
    pid = cores[PI(1)].propose(Refresh())
    for i in (2, 3, 4, 5):
        cores[PI(i)].approve(pid)
    mesh.run_until(60.0)
    states = verify_chain_epochs(cores[PI(1)].chain, mpk=cores[PI(1)].state.mpk)
    assert [s.epoch for s in states] == [0, 1]
    tee = SimulatedTEE(random.Random(4).randbytes, now=NOW)
    owner = OwnerKey.from_seed(bytes([7]) * 32)
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=1,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**MR)],
        kms_mpk=states[-1].mpk.to_bytes(),
        not_before=NOW - 60,
    )
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    collateral = tee.collateral(NOW)
    releasers = {
        i: InProcessReleaser(
            i,
            nodes[i].identity,
            verifier,
            collateral,
            {owner.app_id(): policy},
            rng=random.Random(int(i)).randbytes,
        )
        for i in cores
    }

    def answer(i: int, raw: bytes, epoch: int):  # type: ignore[no-untyped-def]
        share = old[PI(i)] if epoch == 0 else cores[PI(i)].share
        res = releasers[PI(i)].handle(
            raw, now=NOW, epoch=epoch, share=share, seen_nonce=lambda n: False
        )
        assert isinstance(res, Released)
        return res.response

    return states, owner, tee, answer


def _session(switched, *, with_previous: bool, seed: int):  # type: ignore[no-untyped-def]
    states, owner, tee, answer = switched
    s = KeyRequestSession(
        states[-1],
        owner.app_id(),
        [("app", 1)],
        now=NOW,
        rng=random.Random(seed).randbytes,
        previous=states[-2] if with_previous else None,
    )
    raw = s.attach_quote(tee.quote(s.report_data, **MR)).encode()
    return s, raw, answer


def test_partials_of_the_previous_epoch_complete_the_key_during_a_switch(switched) -> None:  # type: ignore[no-untyped-def]
    s, raw, answer = _session(switched, with_previous=True, seed=1)
    for i, epoch in ((1, 1), (2, 1), (3, 0), (4, 0)):
        s.receive(PI(i), answer(i, raw, epoch))
    assert not s.done  # two of each epoch: neither has t = 3
    s.receive(PI(5), answer(5, raw, 0))
    assert s.done and s.epoch_used() == 0 and not s.rejected
    # The same key as t partials of the new epoch give.
    t, raw2, _ = _session(switched, with_previous=True, seed=2)
    for i in (1, 2, 3):
        t.receive(PI(i), answer(i, raw2, 1))
    assert t.epoch_used() == 1
    assert t.derived()[t.purposes[0]] == s.derived()[s.purposes[0]]


def test_without_the_previous_epoch_old_answers_are_rejected(switched) -> None:  # type: ignore[no-untyped-def]
    s, raw, answer = _session(switched, with_previous=False, seed=3)
    for i, epoch in ((1, 1), (2, 1), (3, 0), (4, 0), (5, 0)):
        s.receive(PI(i), answer(i, raw, epoch))
    assert not s.done
    assert sorted(int(r.index) for r in s.rejected) == [3, 4, 5]
    assert not s.newer_epoch_seen  # older answers do not ask for a newer chain


def test_previous_must_be_the_epoch_just_before(switched) -> None:  # type: ignore[no-untyped-def]
    states, owner, tee, answer = switched
    with pytest.raises(ValueError):
        KeyRequestSession(
            states[-1],
            owner.app_id(),
            [("app", 1)],
            now=NOW,
            rng=random.Random(0).randbytes,
            previous=states[-1],
        )
