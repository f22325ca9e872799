"""Resharing keeps the master public key; byzantine and silent old members are tolerated."""

from __future__ import annotations

import os

import pytest
from byzantine import Misbehaviour
from dkg_harness import (
    FAULT_KINDS,
    Adversary,
    allowed_faulty,
    check_agreement,
    check_evidence,
    check_safety,
    faults_from,
    run_sharing,
    schedule,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mesh import make_nodes

from mpc.cert import EpochCertificate
from mpc.dkg.evidence import ReshareConstantEvidence
from mpc.dkg.session import Phase
from mpc.errors import LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex as PI
from mpc.math.poly import interpolate_at
from mpc.reshare import Acknowledgement, RetentionTracker, required_acknowledgements

# Scale up for a deeper search: QKMS_PROPERTY_EXAMPLES=500 make test-fast
PROPERTY_EXAMPLES = int(os.environ.get("QKMS_PROPERTY_EXAMPLES", "20"))


def genesis(n: int, t: int, seed: int, nodes=None):  # type: ignore[no-untyped-def]
    run = run_sharing(n, t, Adversary(), seed, nodes=nodes)
    res = check_agreement(run)
    shares = {i: run.sessions[i].result.share for i in run.honest}
    return run, res, shares


def reshare(
    old_run, old_res, old_shares, new: list[int], t_new: int, adv: Adversary, seed: int, **kw
):  # type: ignore[no-untyped-def]
    everyone = sorted({*old_run.config.dealer_indices, *map(PI, new)})
    nodes = dict(old_run.nodes)
    extra = [int(i) for i in everyone if i not in nodes]
    nodes.update(make_nodes(extra, seed + 1000))
    return run_sharing(
        len(new),
        t_new,
        adv,
        seed,
        kind="reshare",
        dealers=[int(i) for i in old_run.config.dealer_indices],
        recipients=new,
        old=old_shares,
        old_public_polynomial=old_res.public_polynomial,
        old_threshold=old_run.config.threshold,
        epoch=1,
        nodes=nodes,
        start=100.0,
        **kw,
    )


def test_refresh_keeps_mpk_and_makes_old_shares_useless() -> None:
    run, res, shares = genesis(5, 3, seed=21)
    new = reshare(run, res, shares, [1, 2, 3, 4, 5], 3, Adversary(), seed=22)
    res2 = check_agreement(new, expect_mpk=res.mpk)
    new_shares = {i: new.sessions[i].result.share.value.value for i in new.honest}
    old_values = {i: s.value.value for i, s in shares.items()}
    assert all(new_shares[i] != old_values[i] for i in new_shares)
    # Two old shares with one new one do not reconstruct the secret.
    secret = interpolate_at([(PI(i), new_shares[PI(i)]) for i in (1, 2, 3)])
    mixed = interpolate_at(
        [(PI(1), old_values[PI(1)]), (PI(2), old_values[PI(2)]), (PI(3), new_shares[PI(3)])]
    )
    assert mixed != secret
    assert res2.transcript.kind == "reshare"


@pytest.mark.parametrize(
    ("new", "t_new"),
    [([3, 4, 5, 6, 7, 8], 4), ([6, 7, 8], 2), ([1, 2, 3, 4, 5, 6], 3), ([2, 3, 4, 5], 3)],
    ids=["grow and raise t", "disjoint committee", "add one member", "remove one member"],
)
def test_reshare_to_a_new_committee_keeps_mpk(new: list[int], t_new: int) -> None:
    run, res, shares = genesis(5, 3, seed=23)
    nxt = reshare(run, res, shares, new, t_new, Adversary(), seed=24)
    res2 = check_agreement(nxt, expect_mpk=res.mpk)
    assert len(res2.public_polynomial) == t_new


def test_old_member_with_wrong_constant_term_is_excluded_with_evidence() -> None:
    run, res, shares = genesis(5, 3, seed=25)
    adv = Adversary({2: Misbehaviour(wrong_constant=True)})
    nxt = reshare(run, res, shares, [1, 3, 4, 5], 3, adv, seed=26)
    res2 = check_agreement(nxt, expect_mpk=res.mpk)
    assert PI(2) not in res2.qual
    for i in nxt.honest:
        if i in nxt.config.recipient_indices:
            assert isinstance(nxt.exclusions(i)[PI(2)].evidence, ReshareConstantEvidence)
    check_evidence(nxt)


def test_silent_old_members_are_tolerated_while_t_remain() -> None:
    run, res, shares = genesis(5, 3, seed=27)
    nxt = reshare(
        run, res, shares, [1, 2, 3, 4, 5], 3, Adversary(), seed=28, silent_honest=frozenset({4, 5})
    )
    res2 = check_agreement(nxt, expect_mpk=res.mpk)
    assert res2.qual == (PI(1), PI(2), PI(3))


def test_too_few_old_dealers_fails_and_the_old_epoch_stands() -> None:
    run, res, shares = genesis(5, 3, seed=29)
    adv = Adversary(
        {1: Misbehaviour(silent=True), 2: Misbehaviour(silent=True), 3: Misbehaviour(silent=True)}
    )
    nxt = reshare(run, res, shares, [4, 5, 6], 2, adv, seed=30)
    for i in nxt.honest:
        assert nxt.sessions[i].phase is Phase.FAILED
    # The old shares still reconstruct the old key.
    old = [(i, s.value.value) for i, s in sorted(shares.items())][:3]
    assert interpolate_at(old) * res.public_polynomial[0].generator() == res.mpk


def test_dealer_needs_a_share_matching_its_public_share() -> None:
    run, res, shares = genesis(4, 2, seed=31)
    bad = {**shares, PI(1): shares[PI(2)]}
    with pytest.raises(LocalProtocolError):
        reshare(run, res, bad, [1, 2, 3, 4], 2, Adversary(), seed=32)


def test_acknowledgements_gate_deletion_of_old_shares() -> None:
    run, res, shares = genesis(4, 3, seed=33)
    nxt = reshare(run, res, shares, [1, 2, 3, 4], 3, Adversary(), seed=34)
    check_agreement(nxt, expect_mpk=res.mpk)
    cert: EpochCertificate = nxt.sessions[PI(1)].certificate
    identities = {i: n.identity.verify_key() for i, n in nxt.nodes.items()}
    tracker = RetentionTracker(cert, identities)
    assert tracker.required == required_acknowledgements(4, 3) == 4
    assert not tracker.status().deletable
    for i in (1, 2, 3):
        ack = Acknowledgement.create(
            cert, nxt.sessions[PI(i)].result.share, nxt.nodes[PI(i)].identity
        )
        tracker.add(ack, PI(i))
    st_ = tracker.status()
    assert not st_.deletable and st_.missing == (PI(4),)
    forged = Acknowledgement.create(
        cert, nxt.sessions[PI(1)].result.share, nxt.nodes[PI(1)].identity
    )
    with pytest.raises(RemoteProtocolError):
        tracker.add(
            Acknowledgement(forged.epoch, forged.certificate_hash, 4, forged.signature), PI(1)
        )
    with pytest.raises(
        LocalProtocolError
    ):  # a member never acknowledges a share that does not match
        Acknowledgement.create(cert, shares[PI(4)], nxt.nodes[PI(4)].identity)
    tracker.add(
        Acknowledgement.create(cert, nxt.sessions[PI(4)].result.share, nxt.nodes[PI(4)].identity),
        PI(4),
    )
    assert tracker.status().deletable


@st.composite
def reshare_cases(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    n = draw(st.integers(3, 7), label="old n")
    t = draw(st.integers(2, n), label="old t")
    f_old = draw(st.integers(0, min(t - 1, n - t)), label="old f")
    new = sorted(
        draw(st.sets(st.integers(1, n + 3), min_size=2, max_size=7), label="new committee")
    )
    t_new = draw(st.integers(2, len(new)), label="new t")
    corrupt_old = draw(
        st.lists(st.integers(1, n), min_size=f_old, max_size=f_old, unique=True), label="corrupt"
    )
    # Corrupt old members that are also new members count against the new committee too.
    in_new = [c for c in corrupt_old if c in new]
    if len(in_new) > t_new - 1 or len(new) - len(in_new) < t_new:
        corrupt_old = [c for c in corrupt_old if c not in new]
    behaviours = {
        c: draw(
            st.builds(
                Misbehaviour,
                wrong_constant=st.booleans(),
                equivocate_deal=st.booleans(),
                bad_share_to=st.frozensets(st.sampled_from(new), max_size=2),
                justification=st.sampled_from(["honest", "wrong", "none"]),
                silent=st.booleans(),
            ),
            label=f"behaviour {c}",
        )
        for c in corrupt_old
    }
    silent = draw(
        st.frozensets(
            st.sampled_from(
                [i for i in range(1, n + 1) if i not in behaviours and i not in new] or [0]
            ),
            max_size=2,
        ),
        label="silent leavers",
    )
    c_new = len([c for c in behaviours if c in new])
    outsider = any(c not in new for c in behaviours)
    k = draw(st.integers(0, allowed_faulty(t_new, c_new, faulty_outsider=outsider)), label="faulty")
    honest_new = [i for i in new if i not in behaviours]
    faulty = draw(st.lists(st.sampled_from(honest_new), max_size=k, unique=True), label="who")
    faults = [
        (
            m,
            draw(st.sampled_from(FAULT_KINDS), label=f"{m} fault"),
            draw(st.integers(0, 8), label=f"{m} from"),
            draw(st.integers(0, 4), label=f"{m} for"),
            draw(st.integers(0, 3), label=f"{m} lost"),
        )
        for m in faulty
    ]
    withhold = any(c in new for c in behaviours) and draw(st.booleans(), label="withhold")
    return (
        n,
        t,
        new,
        t_new,
        Adversary(behaviours),
        frozenset(silent) - {0},
        draw(st.integers(0, 2**16), label="seed"),
        faults,
        withhold,
    )


REFRESH_CORRUPT_45 = Adversary(
    {5: Misbehaviour(bad_share_to=frozenset({1}), justification="none"), 4: Misbehaviour()}
)


@settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(case=reshare_cases())
# A refresh under the attack of test_live.py: member 3 down through the respond phase.
@example(
    case=(
        5,
        3,
        [1, 2, 3, 4, 5],
        3,
        REFRESH_CORRUPT_45,
        frozenset(),
        5,
        [(3, "restart", 3, 3, 0)],
        True,
    )
)
@example(
    case=(
        5,
        3,
        [1, 2, 3, 4, 5],
        3,
        REFRESH_CORRUPT_45,
        frozenset(),
        6,
        [(3, "pause", 3, 3, 0)],
        True,
    )
)
# Paused from just before it would sign: not live, so it does not sign.
@example(
    case=(
        7,
        4,
        [1, 2, 3, 4, 5, 6],
        6,
        Adversary(),
        frozenset(),
        0,
        [(1, "restart", 0, 0, 0), (2, "pause", 7, 0, 0)],
        False,
    )
)
# Just past the bound: t-1 corrupt and two honest members down in one round.
@example(
    case=(
        5,
        3,
        [1, 2, 3, 4, 5],
        3,
        REFRESH_CORRUPT_45,
        frozenset(),
        7,
        [(2, "restart", 3, 3, 0), (3, "pause", 3, 3, 0)],
        True,
    )
)
def test_reshare_keeps_mpk_whatever_t_minus_1_old_members_do(case) -> None:  # type: ignore[no-untyped-def]
    """Besides t-1 corrupt old members, honest new members crash and restart from
    their records, pause or time out locally, and corrupt members withhold partials."""
    n, t, new, t_new, adv, silent, seed, specs, withhold = case
    run, res, shares = genesis(n, t, seed)
    honest_old = n - len(adv.behaviours) - len(silent)
    faults = faults_from(schedule(t_new, 100.0), specs)
    nxt = reshare(
        run,
        res,
        shares,
        new,
        t_new,
        adv,
        seed + 1,
        silent_honest=silent,
        faults=faults,
        withhold=withhold,
    )
    if faults or withhold:
        agreed = check_safety(nxt)
        check_evidence(nxt)
        if agreed is not None:
            assert agreed.mpk == res.mpk
        return
    if honest_old < t:
        # Not enough honest old dealers may remain: then everyone fails alike, never diverges.
        phases = {nxt.sessions[i].phase for i in nxt.honest if i in nxt.config.recipient_indices}
        assert len(phases) == 1
        return
    check_agreement(nxt, expect_mpk=res.mpk)
    check_evidence(nxt)
