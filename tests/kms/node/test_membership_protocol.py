"""Membership agreement on the sans-I/O node cores (the mesh): protocol properties.

Competing proposals in one window, a decided outcome without enough
signatures, replayed and forged certificates, and a removed member's old
share, which must be of no use for any later epoch.
"""

from __future__ import annotations

import dataclasses
import random

from mesh import Mesh
from test_core import committee, run

from kms.node.core import InputRejected, NodeCore
from mpc.cert import sign_partial
from mpc.ids import ParticipantIndex as PI
from mpc.math import G1
from mpc.membership import (
    ChainError,
    ChangeThreshold,
    MembershipCertificate,
    OutcomePartial,
    Refresh,
    RemoveMember,
    extend,
    verify_chain,
)
from mpc.membership.messages import ChainUpdate
from mpc.tkd import KeyId, combine, derive_partial, verify_combined, verify_partial


def memberships(core: NodeCore) -> list[MembershipCertificate]:
    return [x for x in core.chain if isinstance(x, MembershipCertificate)]


def test_two_competing_proposals_one_certified_the_other_decided_later() -> None:
    _, cores = committee(5, 3, seed=31)
    mesh = run(cores, 19.0)
    remove = cores[PI(1)].propose(RemoveMember(5))
    threshold = cores[PI(2)].propose(ChangeThreshold(4))
    for i in (3, 4):  # both reach t approvals in the same window
        cores[PI(i)].approve(remove)
        cores[PI(i)].approve(threshold)
    cores[PI(1)].approve(threshold)
    cores[PI(2)].approve(remove)
    mesh.run_until(50.0)
    first = memberships(cores[PI(1)])
    assert len(first) == 1, "exactly one change per epoch"
    winner = first[0].outcome.proposal.id()
    assert winner == min(remove, threshold)  # same rank: the smaller id wins
    loser_change = RemoveMember(5) if winner == threshold else ChangeThreshold(4)
    for i in range(1, 5):
        assert [m.fingerprint() for m in memberships(cores[PI(i)])] == [first[0].fingerprint()]
        st = cores[PI(i)].state
        assert st is not None and st.epoch == 1
    # The loser was bound to epoch 0: it is dropped, and decided in a later window once
    # proposed again for the new epoch.
    st = cores[PI(1)].state
    assert st is not None
    assert all(
        p[0] != (remove if winner == threshold else threshold).hex()
        for p in cores[PI(1)].status().pending
    )
    again = cores[PI(1)].propose(loser_change)
    # Four approvals: enough whichever change won (a threshold of 4 needs them all).
    for i in (2, 3, 4):
        cores[PI(i)].approve(again)
    mesh.run_until(100.0)
    both = memberships(cores[PI(1)])
    assert len(both) == 2 and both[1].outcome.proposal.id() == again
    assert both[1].outcome.window > both[0].outcome.window
    final = cores[PI(1)].state
    assert final is not None and final.epoch == 2
    assert [int(i) for i in final.committee.indices] == [1, 2, 3, 4]
    assert final.threshold == 4


def test_an_outcome_without_enough_signatures_is_locked_and_certified_later_unchanged() -> None:
    _, cores = committee(5, 3, seed=32)
    withhold = {PI(2), PI(3), PI(4), PI(5)}
    on = [True]

    def route(sender, to, message, now):  # type: ignore[no-untyped-def]
        if on[0] and sender in withhold and isinstance(message, OutcomePartial):
            return []  # every member holds its own and node 1's: t - 1 signatures
        return None

    ticks = [k * 0.25 for k in range(800)]
    mesh = Mesh(cores, seed=32, max_delay=0.5 / 3, ticks=ticks, route=route)
    mesh.run_until(19.0)
    pid = cores[PI(1)].propose(Refresh())
    for i in (2, 3):
        cores[PI(i)].approve(pid)
    mesh.run_until(35.0)  # window 1 decides it and fails to certify it
    for i in range(1, 6):
        core = cores[PI(i)]
        assert core.state is not None and core.state.epoch == 0 and core.state.pending is None
        assert memberships(core) == []
        assert core.status().locked == pid.hex()  # every member signed it: its lock
    [(pending, _, approvals)] = cores[PI(1)].status().pending
    assert pending == pid.hex() and approvals >= 3
    # In the next window the members report their locks (with their partials) in their
    # ballots: the same outcome, first decided in window 1, is certified.
    mesh.run_until(110.0)
    assert all(cores[PI(i)].state.epoch == 1 for i in range(1, 6))  # type: ignore[union-attr]
    [m] = memberships(cores[PI(1)])
    assert m.outcome.proposal.id() == pid and m.outcome.window == 1


def test_replayed_and_forged_certificates_are_refused() -> None:
    _, cores = committee(4, 3, seed=33)
    mesh = run(cores, 19.0)
    for change in (Refresh(), ChangeThreshold(2)):
        pid = cores[PI(1)].propose(change)
        for i in (2, 3):
            cores[PI(i)].approve(pid)
        mesh.run_until(mesh.now + 30.0)
    core = cores[PI(4)]
    st = core.state
    assert st is not None and st.epoch == 2 and st.threshold == 2
    old = memberships(core)[0]  # the refresh decided in epoch 0

    # Replayed: an old certificate does not extend the current epoch.
    try:
        extend(st, old)
        raise AssertionError("a replayed certificate was accepted")
    except ChainError as exc:
        assert "epoch 0" in str(exc)

    # Forged: the certified change swapped (signature kept), or a signature made with
    # fewer than t shares.
    forged_change = dataclasses.replace(
        old.outcome,
        proposal=dataclasses.replace(
            old.outcome.proposal, refresh=None, threshold=ChangeThreshold(3)
        ),
    )
    forged = MembershipCertificate(forged_change, old.signature)
    one_share = cores[PI(1)].share
    assert one_share is not None
    lone = MembershipCertificate(
        dataclasses.replace(old.outcome, epoch=2, previous_certificate_hash=st.head_hash),
        sign_partial(one_share, old.outcome.encode()).to_bytes(),
    )
    genesis = core.chain[0]
    for bad in (forged, lone):
        try:
            verify_chain([genesis, bad], mpk=st.mpk)
            raise AssertionError("a forged certificate verified")
        except ChainError:
            pass
        before = core.status()
        core.receive(
            PI(2), ChainUpdate(("epoch", "membership"), (genesis.encode(), bad.encode())), mesh.now
        )
        refused = [e for e in core.events() if isinstance(e, InputRejected)]
        assert refused and "chain link refused" in refused[0].reason
        assert core.status() == before
    # A new member syncing from scratch refuses the forged chain too.
    fresh = NodeCore(core.config, *_keys_of(core), rng=random.Random(33).randbytes)
    fresh.receive(
        PI(2), ChainUpdate(("epoch", "membership"), (genesis.encode(), forged.encode())), mesh.now
    )
    assert fresh.state is None
    assert any(isinstance(e, InputRejected) for e in fresh.events())


def _keys_of(core: NodeCore):  # type: ignore[no-untyped-def]
    return core._key, core._dkg_key


def test_a_removed_members_old_share_is_useless_in_later_epochs() -> None:
    _, cores = committee(5, 3, seed=34)
    mesh = run(cores, 19.0)
    old5 = cores[PI(5)].share
    assert old5 is not None
    pid = cores[PI(1)].propose(RemoveMember(5))
    for i in (2, 3):
        cores[PI(i)].approve(pid)
    mesh.run_until(60.0)
    st = cores[PI(1)].state
    assert st is not None and st.epoch == 1 and PI(5) not in st.committee.indices
    key = KeyId(b"\x11" * 32, "app", 1)
    # Index 5 has no public share in epoch 1: its partial cannot be checked, only refused.
    assert PI(5) not in st.public_shares
    stale = derive_partial(old5, key)
    for i in (1, 2, 3, 4):
        assert not verify_partial(stale, key, st.public_shares[PI(i)])
    # Combined with t - 1 honest partials of epoch 1, it gives no valid key...
    new = [derive_partial(cores[PI(i)].share, key) for i in (1, 2)]  # type: ignore[arg-type]
    assert not verify_combined(combine([*new, stale], 3), key, st.mpk)
    # ...while t partials of epoch 1 do, and the old share still fits with epoch-0 shares
    # only, which every other member has deleted.
    third = derive_partial(cores[PI(3)].share, key)  # type: ignore[arg-type]
    assert verify_combined(combine([*new, third], 3), key, st.mpk)
    assert all(cores[PI(i)].retained_epochs == [] for i in (1, 2, 3, 4))
    assert isinstance(stale.point, G1)
