"""The sans-I/O node: genesis, membership changes, reshare, refresh and retention, on the mesh."""

from __future__ import annotations

import random

from mesh import Mesh, make_nodes

from kms.node.core import (
    EpochSwitched,
    InputRejected,
    NodeConfig,
    NodeCore,
    Restored,
    RetainedShareDeletable,
)
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.math.poly import interpolate_at
from mpc.membership import AddMember, ChangeThreshold, RemoveMember, verify_chain

DELTA = 0.5


def committee(
    n: int, t: int, seed: int, *, extra: int = 0, refresh: float = 0.0, period: float = 20.0
):  # type: ignore[no-untyped-def]
    nodes = make_nodes(range(1, n + 1 + extra), seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, n + 1))
    rng = random.Random(seed)
    cores = {}
    for i in range(1, n + 1 + extra):
        cfg = NodeConfig(
            PI(i),
            genesis,
            t,
            genesis_start=1.0,
            delta=DELTA,
            window_period=period,
            window_length=2.0,
            refresh_interval=refresh,
        )
        cores[PI(i)] = NodeCore(cfg, nodes[PI(i)].identity, nodes[PI(i)].dkg_key, rng=rng.randbytes)
    return nodes, cores


def run(
    cores, until: float, seed: int = 0, ticks_every: float = 0.25, horizon: float = 200.0
) -> Mesh:  # type: ignore[no-untyped-def]
    # Timer ticks for the whole test, so later run_until calls keep the clock moving.
    ticks = [k * ticks_every for k in range(int(horizon / ticks_every) + 1)]
    mesh = Mesh(cores, seed=seed, max_delay=DELTA / 3, ticks=ticks)
    mesh.run_until(until)
    return mesh


def secret_of(cores, members) -> int:  # type: ignore[no-untyped-def]
    return interpolate_at([(i, cores[i].share.value.value) for i in members])


def test_genesis_then_add_a_member_keeps_the_master_key() -> None:
    nodes, cores = committee(4, 3, seed=1, extra=1)
    mesh = run(cores, 19.0)
    mpk = cores[PI(1)].state.mpk
    assert all(cores[PI(i)].state.epoch == 0 and cores[PI(i)].state.mpk == mpk for i in range(1, 5))
    assert cores[PI(5)].state is None  # not a member yet
    pid = cores[PI(1)].propose(AddMember(nodes[PI(5)].participant, b"attestation"))
    cores[PI(2)].approve(pid)
    cores[PI(3)].approve(pid)
    mesh.run_until(60.0)
    for i in range(1, 6):
        st = cores[PI(i)].state
        assert st is not None and st.epoch == 1, (i, st and st.epoch)
        assert st.mpk == mpk
        assert [int(x) for x in st.committee.indices] == [1, 2, 3, 4, 5]
    assert secret_of(cores, [PI(1), PI(3), PI(5)]) * G2.generator() == mpk
    final = verify_chain(cores[PI(5)].chain, mpk=mpk)
    assert final.epoch == 1
    # Old shares were released once every new member acknowledged.
    assert any(isinstance(e, RetainedShareDeletable) for e in mesh.events[PI(1)])
    assert cores[PI(1)].retained_epochs == []


def test_remove_and_change_threshold() -> None:
    _nodes, cores = committee(5, 3, seed=2)
    mesh = run(cores, 19.0)
    mpk = cores[PI(1)].state.mpk
    pid = cores[PI(2)].propose(RemoveMember(5))
    for i in (1, 3):
        cores[PI(i)].approve(pid)
    mesh.run_until(60.0)
    assert all(cores[PI(i)].state.epoch == 1 for i in range(1, 5))
    assert cores[PI(5)].share is None  # a removed member's share is gone from the chain's view
    pid = cores[PI(1)].propose(ChangeThreshold(4))
    for i in (2, 3):
        cores[PI(i)].approve(pid)
    mesh.run_until(100.0)
    st = cores[PI(1)].state
    assert st.epoch == 2 and st.threshold == 4 and st.mpk == mpk
    assert secret_of(cores, [PI(1), PI(2), PI(3), PI(4)]) * G2.generator() == mpk


def test_scheduled_refresh_changes_shares_not_the_key() -> None:
    _, cores = committee(4, 2, seed=3, refresh=10.0)
    run(cores, 65.0)
    st = cores[PI(1)].state
    assert st.epoch >= 1
    assert all(cores[PI(i)].state.epoch == st.epoch for i in range(1, 5))
    assert cores[PI(1)].last_refresh is not None
    assert secret_of(cores, [PI(2), PI(4)]) * G2.generator() == st.mpk


def test_bad_input_is_rejected_and_counted_not_raised() -> None:
    _, cores = committee(3, 2, seed=4)
    mesh = run(cores, 19.0)
    from mpc.membership.messages import ChainUpdate

    core = cores[PI(1)]
    before = core.status()
    core.receive(PI(2), ChainUpdate(("epoch",), (b"\x00garbage",)), 19.5)
    core.receive(PI(9), ChainUpdate((), ()), 19.5)
    evs = core.events()
    assert any(isinstance(e, InputRejected) and e.peer == PI(2) for e in evs)
    assert core.status() == before
    del mesh


def test_restart_from_storage_restores_the_epoch() -> None:
    nodes, cores = committee(3, 2, seed=5)
    mesh = run(cores, 19.0)
    switched = [e for e in mesh.events[PI(2)] if isinstance(e, EpochSwitched)]
    assert len(switched) == 1
    old = cores[PI(2)]
    revived = NodeCore(
        old.config,
        nodes[PI(2)].identity,
        nodes[PI(2)].dkg_key,
        rng=random.Random(9).randbytes,
        restored=Restored(chain=tuple(old.chain), share=old.share),
    )
    assert revived.state.epoch == 0 and revived.state.mpk == old.state.mpk
    assert revived.status().has_share


def test_messages_two_epochs_old_are_dropped_but_chain_requests_are_answered() -> None:
    from mpc.membership.messages import ChainRequest, ChainUpdate

    _, cores = committee(4, 2, seed=5, refresh=10.0)
    mesh = run(cores, 19.0)
    core = cores[PI(1)]
    while core.state is None or core.state.epoch < 2:
        mesh.run_until(mesh.now + 10.0)
        assert mesh.now < 190.0, "no second refresh"
    st = core.state
    core.events()
    core.messages_to_send()
    # A protocol message under an envelope two epochs back: dropped, counted, nothing sent.
    core.receive(PI(2), ChainUpdate((), ()), mesh.now, sender_epoch=st.epoch - 2)
    assert [str(e.reason) for e in core.events() if isinstance(e, InputRejected)] == [
        "message for an old epoch"
    ]
    # A member that missed epochs asks for the chain: it is answered, whatever its epoch.
    core.receive(PI(2), ChainRequest(0), mesh.now, sender_epoch=0)
    sent = [ob for ob in core.messages_to_send() if isinstance(ob.message, ChainUpdate)]
    assert [int(ob.to) for ob in sent] == [2] and len(sent[0].message.links) == len(core.chain)
    del mesh


def test_a_member_behind_asks_a_peer_that_is_ahead_for_the_chain_rate_limited() -> None:
    from kms.node.core import CHAIN_RETRY_DELTAS
    from mpc.membership.messages import ChainRequest

    _, cores = committee(3, 2, seed=6)
    mesh = run(cores, 25.0)  # past the last chain request made while genesis ran
    core = cores[PI(1)]
    core.messages_to_send()
    now = mesh.now

    def asked() -> list[int]:
        return [
            int(ob.to) for ob in core.messages_to_send() if isinstance(ob.message, ChainRequest)
        ]

    core.observe_epoch(PI(2), 0, now)  # not ahead
    assert asked() == []
    core.observe_epoch(PI(2), 3, now)  # ahead: ask it
    assert asked() == [2]
    core.observe_epoch(PI(3), 3, now + 1.0)  # asked a moment ago: wait
    assert asked() == []
    core.observe_epoch(PI(3), 3, now + CHAIN_RETRY_DELTAS * DELTA + 0.1)
    assert asked() == [3]
    core.observe_epoch(PI(9), 5, now + 10 * CHAIN_RETRY_DELTAS * DELTA)  # not a participant
    assert asked() == []
