"""Joint-Feldman DKG over broadcast with agreement, with up to t-1 byzantine members."""

from __future__ import annotations

import os

from byzantine import Misbehaviour
from dkg_harness import (
    FAULT_KINDS,
    Adversary,
    FaultSpec,
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

from mpc.broadcast import EquivocationEvidence
from mpc.dkg.evidence import InvalidJustificationEvidence
from mpc.dkg.session import Phase, ResponderEquivocated
from mpc.ids import ParticipantIndex as PI

# Scale up for a deeper search: QKMS_PROPERTY_EXAMPLES=500 make test-fast
PROPERTY_EXAMPLES = int(os.environ.get("QKMS_PROPERTY_EXAMPLES", "40"))


def test_clean_dkg_five_of_three() -> None:
    run = run_sharing(5, 3, Adversary(), seed=1)
    res = check_agreement(run)
    assert res.qual == tuple(PI(i) for i in range(1, 6))
    assert all(not run.mesh.rejected[i] for i in run.honest)


def test_equivocating_dealer_is_excluded_with_evidence() -> None:
    run = run_sharing(5, 3, Adversary({2: Misbehaviour(equivocate_deal=True)}), seed=2)
    res = check_agreement(run)
    assert PI(2) not in res.qual
    for i in run.honest:
        ex = run.exclusions(i)[PI(2)]
        assert isinstance(ex.evidence, EquivocationEvidence)
        assert ex.attributable  # a signed proof is the dealer's own doing
    check_evidence(run)


def test_bad_share_answered_correctly_keeps_the_dealer() -> None:
    run = run_sharing(5, 3, Adversary({3: Misbehaviour(bad_share_to=frozenset({1, 2}))}), seed=3)
    res = check_agreement(run)
    assert PI(3) in res.qual


def test_wrong_justification_is_excluded_with_evidence() -> None:
    adv = Adversary({3: Misbehaviour(bad_share_to=frozenset({1}), justification="wrong")})
    run = run_sharing(5, 3, adv, seed=4)
    res = check_agreement(run)
    assert PI(3) not in res.qual
    for i in run.honest:
        assert isinstance(run.exclusions(i)[PI(3)].evidence, InvalidJustificationEvidence)
    check_evidence(run)


def test_missing_justification_excludes_without_evidence() -> None:
    adv = Adversary({4: Misbehaviour(bad_share_to=frozenset({2}), justification="none")})
    run = run_sharing(5, 3, adv, seed=5)
    res = check_agreement(run)
    assert PI(4) not in res.qual
    for i in run.honest:
        ex = run.exclusions(i)[PI(4)]
        assert ex.evidence is None and ex.reason == "no justification"


def test_false_complaints_do_not_exclude_honest_dealers() -> None:
    adv = Adversary({5: Misbehaviour(false_complaints=frozenset({1, 2, 3}))})
    run = run_sharing(5, 3, adv, seed=6)
    res = check_agreement(run)
    assert {PI(1), PI(2), PI(3)} <= set(res.qual)


def test_equivocating_responder_counts_as_complaining_and_is_reported() -> None:
    adv = Adversary({4: Misbehaviour(complain_equivocally=True, justification="none")})
    run = run_sharing(5, 3, adv, seed=7)
    res = check_agreement(run)
    # The responder accused everyone: honest dealers justified and stay.
    assert {PI(1), PI(2), PI(3), PI(5)} <= set(res.qual)
    for i in run.honest:
        reported = [e for e in run.mesh.events[i] if isinstance(e, ResponderEquivocated)]
        assert [e.responder for e in reported] == [PI(4)]
        reported[0].evidence.verify(run.nodes[PI(4)].identity.verify_key())


def test_silent_dealer_is_excluded_everywhere() -> None:
    run = run_sharing(5, 3, Adversary({1: Misbehaviour(silent=True)}), seed=8)
    res = check_agreement(run)
    assert PI(1) not in res.qual


def test_last_moment_delivery_to_few_still_agrees() -> None:
    run = run_sharing(6, 3, Adversary(last_moment=frozenset({2})), seed=9)
    check_agreement(run)


def test_selective_late_relaying_by_colluders_still_agrees() -> None:
    adv = Adversary({1: Misbehaviour(equivocate_deal=True)}, selective_relay=frozenset({1, 2}))
    run = run_sharing(7, 3, adv, seed=10)
    res = check_agreement(run)
    assert PI(1) not in res.qual


def test_garbage_and_replays_change_nothing() -> None:
    clean = run_sharing(4, 2, Adversary(), seed=11)
    noisy = run_sharing(4, 2, Adversary(garbage=frozenset({4})), seed=11)
    check_agreement(noisy)
    assert check_agreement(clean).qual == tuple(PI(i) for i in range(1, 5))


def test_too_few_dealers_fails_for_everyone_at_the_same_deadline() -> None:
    adv = Adversary({1: Misbehaviour(silent=True), 2: Misbehaviour(silent=True)})
    run = run_sharing(4, 3, adv, seed=12)
    for i in run.honest:
        s = run.sessions[i]
        assert s.phase is Phase.FAILED
        assert s.failure == "only 2 qualified dealers, 3 needed"
    nxt = run.config.schedule.next_attempt()
    assert nxt.start >= run.config.schedule.end


BEHAVIOURS = st.builds(
    Misbehaviour,
    bad_share_to=st.frozensets(st.integers(1, 10), max_size=3),
    equivocate_deal=st.booleans(),
    false_complaints=st.frozensets(st.integers(1, 10), max_size=3),
    complain_equivocally=st.booleans(),
    justification=st.sampled_from(["honest", "wrong", "none"]),
    silent=st.booleans(),
)


@st.composite
def dkg_cases(draw: st.DrawFn) -> tuple[int, int, Adversary, int]:
    n = draw(st.integers(2, 10), label="n")
    t = draw(st.integers(2, n), label="t")
    f = draw(st.integers(0, min(t - 1, n - t)), label="f")
    corrupt = draw(
        st.lists(st.integers(1, n), min_size=f, max_size=f, unique=True), label="corrupt"
    )
    behaviours = {}
    last, selective, garbage = set(), set(), set()
    for c in corrupt:
        behaviours[c] = draw(BEHAVIOURS, label=f"behaviour {c}")
        if draw(st.booleans(), label=f"{c} last moment"):
            last.add(c)
        if draw(st.booleans(), label=f"{c} selective relay"):
            selective.add(c)
        if draw(st.booleans(), label=f"{c} garbage"):
            garbage.add(c)
    adv = Adversary(behaviours, frozenset(last), frozenset(selective), frozenset(garbage))
    honest = [i for i in range(1, n + 1) if i not in corrupt]
    k = draw(st.integers(0, allowed_faulty(t, f, faulty_outsider=False)), label="faulty honest")
    faulty = draw(st.lists(st.sampled_from(honest), max_size=k, unique=True), label="who")
    faults: list[FaultSpec] = [
        (
            m,
            draw(st.sampled_from(FAULT_KINDS), label=f"{m} fault"),
            draw(st.integers(0, 8), label=f"{m} from"),
            draw(st.integers(0, 4), label=f"{m} for"),
            draw(st.integers(0, 3), label=f"{m} lost"),
        )
        for m in faulty
    ]
    withhold = bool(corrupt) and draw(st.booleans(), label="withhold partials")
    return n, t, adv, draw(st.integers(0, 2**16), label="seed"), faults, withhold


DKGCase = tuple[int, int, Adversary, int, list[FaultSpec], bool]
CORRUPT_45 = Adversary(
    {5: Misbehaviour(bad_share_to=frozenset({1}), justification="none"), 4: Misbehaviour()}
)


@settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(case=dkg_cases())
# The attack of test_live.py: member 3 down through the respond phase (restarted, or
# paused), t-1 corrupt members that withhold their partials.
@example(case=(5, 3, CORRUPT_45, 7, [(3, "restart", 3, 3, 0)], True))
@example(case=(5, 3, CORRUPT_45, 8, [(3, "pause", 3, 3, 0)], True))
# A signer that times out locally while the others certify; one killed right after signing.
@example(case=(5, 3, CORRUPT_45, 9, [(2, "deaf", 0, 0, 0), (3, "restart", 7, 1, 1)], True))
# Back before the start (live), and killed after signing and never back.
@example(case=(8, 8, Adversary(), 160, [(1, "restart", 0, 0, 0), (2, "restart", 8, 3, 0)], False))
# Paused from just before it would sign: not live, so it does not sign.
@example(case=(9, 9, Adversary(), 0, [(1, "restart", 0, 0, 0), (2, "pause", 7, 0, 0)], False))
# Just past the bound: t-1 corrupt and two honest members down in one round.
@example(case=(5, 3, CORRUPT_45, 10, [(2, "restart", 3, 3, 0), (3, "pause", 3, 3, 0)], True))
@example(case=(7, 3, CORRUPT_45, 11, [(2, "restart", 3, 3, 1), (3, "restart", 3, 3, 2)], True))
def test_honest_members_agree_whatever_t_minus_1_do(case: DKGCase) -> None:
    """Besides t-1 corrupt members, honest members crash and restart from their
    records, pause or time out locally, and corrupt members withhold their partials."""
    n, t, adv, seed, specs, withhold = case
    faults = faults_from(schedule(t), specs)
    run = run_sharing(n, t, adv, seed, faults=faults, withhold=withhold)
    if faults or withhold:
        res_ = check_safety(run)
        check_evidence(run)
        if res_ is None:
            return
        res = res_
    else:
        res = check_agreement(run)
        check_evidence(run)
    for c, b in adv.behaviours.items():
        # Every equivocating dealer is out, whenever both of its deals reached honest
        # members (a last-moment sender may show one version to a few only).
        if b.equivocate_deal and not b.silent and c not in adv.last_moment:
            assert PI(c) not in res.qual
    for i in run.live_recipients():
        for d in res.qual:
            assert d not in run.exclusions(i)


def test_payload_is_pulled_from_an_honest_relayer_when_byzantine_signers_stay_silent() -> None:
    """Regression: a member first hears a digest from byzantine relayers that never answer
    pulls; it must ask the honest relayer whose signature arrives later."""
    adv = Adversary(
        {2: Misbehaviour(false_complaints=frozenset({1})), 1: Misbehaviour()},
        last_moment=frozenset({2}),
    )
    run = run_sharing(6, 3, adv, 0)
    check_agreement(run)
