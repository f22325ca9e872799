"""Each deal is decoded, and a recipient's own share opened and checked, as the deal round
accepts it; the end of the deal phase only reads the verdicts.

Every member ends the deal phase at the same instant. With all the deals' work there
(n - 1 deals of t commitments: decoding, HPKE, the check against the commitments), many
members on few CPUs each went longer than Δ/4 without running and counted themselves as
stalled (``SharingSession.live``), so none signed the transcript. What must not change is
every verdict: the same complaints, QUAL, key and shares as when the work was done at the
end, with dealers that send bad shares, equivocate or deal nothing.
"""

from __future__ import annotations

import pytest
from byzantine import Misbehaviour
from dkg_harness import Adversary, check_agreement, run_sharing

from mpc import hpke
from mpc.dkg import session as session_module
from mpc.dkg.session import SharingSession
from mpc.ids import ParticipantIndex as PI

ADVERSARY = Adversary(
    behaviours={
        5: Misbehaviour(bad_share_to=frozenset({1, 2}), justification="wrong"),
        6: Misbehaviour(equivocate_deal=True),
        7: Misbehaviour(silent=True),
    }
)


def _outcome(run) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    res = check_agreement(run)
    excluded = {int(i): sorted(int(d) for d in run.exclusions(i)) for i in run.honest}
    shares = {int(i): run.sessions[i].result.share.value.value for i in run.honest}
    return res.qual, res.mpk, excluded, shares


def test_the_end_of_the_deal_phase_opens_no_share_and_gives_the_same_verdicts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_open = hpke.open
    at_end: list[int] = []
    ahead: list[int] = []
    in_end = [False]

    def counting_open(*args, **kwargs):  # type: ignore[no-untyped-def]
        (at_end if in_end[0] else ahead).append(1)
        return real_open(*args, **kwargs)

    real_end = SharingSession._end_deal_phase

    def end(self: SharingSession) -> None:
        in_end[0] = True
        try:
            real_end(self)
        finally:
            in_end[0] = False

    monkeypatch.setattr(session_module.hpke, "open", counting_open)
    monkeypatch.setattr(SharingSession, "_end_deal_phase", end)
    run = run_sharing(7, 4, ADVERSARY, seed=11)
    ahead_outcome = _outcome(run)
    # Four honest recipients opened the shares of six dealers that dealt (one deal of the
    # equivocating dealer's two each, at least) as the deals arrived, none at the end.
    assert at_end == [] and len(ahead) >= 4 * 6
    qual, _mpk, excluded, _shares = ahead_outcome
    # The bad-share dealer was complained about (and its justification failed).
    assert 5 not in qual and 7 not in qual
    assert all({5, 7} <= set(ex) for ex in excluded.values())

    # The same run with nothing done ahead: every verdict the same.
    monkeypatch.setattr(SharingSession, "_open_deal", lambda self, dealer, payload: None)
    at_end.clear()
    assert _outcome(run_sharing(7, 4, ADVERSARY, seed=11)) == ahead_outcome
    assert at_end  # this time the end of the phase opened them


def test_a_deal_accepted_after_the_deal_phase_is_not_opened_ahead() -> None:
    run = run_sharing(4, 3, Adversary(), seed=3)
    check_agreement(run)
    for i in run.honest:
        s = run.sessions[i]
        s._open_deal(PI(1), b"\x00" * 10)  # after the phase: ignored, nothing kept
        assert s._opened == {}
