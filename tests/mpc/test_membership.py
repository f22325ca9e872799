"""Membership decisions in windows, at most one certified outcome, and the epoch chain."""

from __future__ import annotations

import dataclasses
import random

import pytest
from dkg_harness import Adversary, check_agreement, run_sharing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mesh import Mesh, make_nodes

from mpc.cert import EpochCertificate, sign_partial
from mpc.dkg.messages import Participant
from mpc.errors import InvalidEncoding
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.membership import (
    AddMember,
    ChainError,
    ChangeThreshold,
    DecisionWindow,
    MembershipCertificate,
    OutcomePartial,
    Proposal,
    Refresh,
    RemoveMember,
    WindowPhase,
    WindowSchedule,
    extend,
    genesis_state,
    verify_chain,
)
from mpc.membership.window import OutcomeDecided
from mpc.sig import CTX_DKG_KEY

SCHED = WindowSchedule(start=50.0, window=2.0, delta=1.0, sign_window=3.0, reshare_delay=5.0)


def genesis(n: int = 5, t: int = 3, seed: int = 40):  # type: ignore[no-untyped-def]
    nodes = make_nodes(range(1, n + 4), seed)
    run = run_sharing(n, t, Adversary(), seed, nodes={i: nodes[i] for i in nodes if i <= n})
    res = check_agreement(run)
    cert: EpochCertificate = run.sessions[PI(1)].certificate
    state = genesis_state(res.mpk, cert)
    shares = {i: run.sessions[i].result.share for i in run.honest}
    return run, res, state, shares, nodes


def proposal(state, proposer: int, change, nonce: int = 0) -> Proposal:  # type: ignore[no-untyped-def]
    return Proposal.of(state.epoch, state.head_hash, proposer, nonce.to_bytes(16, "big"), change)


class ByzantineWindow(DecisionWindow):
    """Approves everything it hears of and signs a different outcome as well."""

    def _decide(self) -> None:  # type: ignore[override]
        super()._decide()
        if self._outcome is not None and self._share is not None:
            other = self._outcome.__class__(
                self._outcome.epoch,
                self._outcome.window,
                self._outcome.previous_certificate_hash,
                self._outcome.proposal,
                self._outcome.reshare_start + 999,
            )
            bogus = OutcomePartial(
                int(self.me),
                other.fingerprint(),
                sign_partial(self._share, other.encode()).to_bytes(),
            )
            for i in self.state.committee.indices:
                if i != self.me:
                    from mpc.broadcast import Outbound

                    self._outbox.append(Outbound(i, bogus))


def run_window(state, shares, nodes, ballots, *, byzantine=frozenset(), window=0, seed=0):  # type: ignore[no-untyped-def]
    sessions = {}
    for i in state.committee.indices:
        props, approvals = ballots.get(int(i), ((), ()))
        cls = ByzantineWindow if int(i) in byzantine else DecisionWindow
        sessions[i] = cls(
            state,
            window,
            SCHED,
            i,
            nodes[i].identity,
            shares.get(i),
            proposals=props,
            approvals=approvals,
        )
    f = state.threshold - 1
    # Ticks every Δ/4 from before the start: every member is live through the window.
    ticks = [
        SCHED.start - 1 + k * 0.25 for k in range(int((SCHED.sign_end(f) + 2 - SCHED.start) * 4))
    ]
    mesh = Mesh(sessions, seed=seed, max_delay=0.3, ticks=ticks)
    mesh.run_until(SCHED.sign_end(f) + 1)
    return sessions, mesh


def test_a_proposal_with_t_approvals_is_certified_and_extends_the_chain() -> None:
    run, res, state, shares, nodes = genesis()
    p = proposal(state, 1, AddMember(nodes[PI(6)].participant, b"quote"))
    ballots = {1: ((p,), (p.id(),)), 2: ((), (p.id(),)), 3: ((), (p.id(),))}
    sessions, _ = run_window(state, shares, nodes, ballots)
    certs = {s.certificate.fingerprint() for s in sessions.values() if s.certificate}
    assert len(certs) == 1
    cert = sessions[PI(1)].certificate
    after = extend(state, cert)
    assert after.pending == cert
    # The reshare to the new committee, bound to the membership certificate.
    nxt = run_sharing(
        6,
        3,
        Adversary(),
        41,
        kind="reshare",
        dealers=[1, 2, 3, 4, 5],
        recipients=[1, 2, 3, 4, 5, 6],
        old=shares,
        old_public_polynomial=res.public_polynomial,
        old_threshold=3,
        epoch=1,
        nodes={i: nodes[i] for i in nodes if i <= 6},
        start=cert.outcome.reshare_start,
        previous_certificate_hash=cert.hash(),
    )
    check_agreement(nxt, expect_mpk=res.mpk)
    e1 = nxt.sessions[PI(6)].certificate
    final = verify_chain([run.sessions[PI(1)].certificate, cert, e1], mpk=res.mpk)
    assert final.epoch == 1 and [int(i) for i in final.committee.indices] == [1, 2, 3, 4, 5, 6]
    assert final.public_shares[PI(6)] == nxt.sessions[PI(6)].result.public_shares[PI(6)]
    # And from a pinned checkpoint instead of genesis.
    assert verify_chain([cert, e1], checkpoint=state).epoch == 1


def test_t_minus_1_approvals_decide_nothing_and_nothing_carries_over() -> None:
    _run, _res, state, shares, nodes = genesis()
    p = proposal(state, 2, RemoveMember(5))
    sessions, _ = run_window(state, shares, nodes, {2: ((p,), (p.id(),)), 3: ((), (p.id(),))})
    assert all(s.phase is WindowPhase.NO_DECISION for s in sessions.values())
    tally = sessions[PI(1)].tally
    assert all(s.tally.approvals == tally.approvals for s in sessions.values())
    # A window is self-contained: one more approval alone in the next window decides nothing...
    sessions2, _ = run_window(state, shares, nodes, {4: ((), (p.id(),))}, window=1)
    assert all(s.phase is WindowPhase.NO_DECISION for s in sessions2.values())
    # ...while members that re-send their standing intent in it reach t approvals there.
    again = {2: ((p,), (p.id(),)), 3: ((), (p.id(),)), 4: ((), (p.id(),))}
    sessions3, _ = run_window(state, shares, nodes, again, window=2)
    assert all(s.phase is WindowPhase.DECIDED for s in sessions3.values())
    assert sessions3[PI(1)].certificate.outcome.proposal == p
    assert sessions3[PI(1)].certificate.outcome.window == 2


def test_competing_proposals_exactly_one_wins_by_the_fixed_order() -> None:
    _run, _res, state, shares, nodes = genesis()
    refresh = proposal(state, 1, Refresh())
    grow = proposal(state, 2, ChangeThreshold(4))
    both = tuple(sorted((refresh.id(), grow.id())))
    ballots = {1: ((refresh,), both), 2: ((grow,), both), 3: ((), both), 4: ((), both)}
    sessions, _ = run_window(state, shares, nodes, ballots)
    outcomes = {s.certificate.outcome.proposal.id() for s in sessions.values()}
    assert outcomes == {grow.id()}  # operator changes come before refresh


def test_byzantine_minority_cannot_certify_two_outcomes() -> None:
    _run, _res, state, shares, nodes = genesis()
    p = proposal(state, 4, Refresh())
    ballots = {4: ((p,), (p.id(),)), 5: ((), (p.id(),)), 1: ((), (p.id(),))}
    sessions, mesh = run_window(state, shares, nodes, ballots, byzantine=frozenset({4, 5}))
    honest = [PI(1), PI(2), PI(3)]
    certs = {sessions[i].certificate.fingerprint() for i in honest}
    assert len(certs) == 1
    decided = {sessions[i].outcome for i in honest}
    assert len(decided) == 1 and sessions[PI(1)].certificate.outcome in decided
    # The byzantine partials over another outcome were refused wherever they arrived in time.
    refused = [e for i in honest for e in mesh.rejected[i] if "another outcome" in str(e)]
    assert all(e.culprits <= {PI(4), PI(5)} for e in refused)


def test_invalid_changes_never_win() -> None:
    _run, _res, state, shares, nodes = genesis()
    bad = [
        proposal(state, 1, RemoveMember(9)),  # not a member
        proposal(state, 1, ChangeThreshold(6), 1),  # t > n
        proposal(state, 1, AddMember(nodes[PI(2)].participant, b""), 2),  # already a member
        Proposal.of(state.epoch + 1, state.head_hash, 1, bytes(16), Refresh()),  # wrong epoch
    ]
    ids = tuple(sorted(p.id() for p in bad))
    ballots = {i: ((tuple(bad) if i == 1 else ()), ids) for i in (1, 2, 3, 4, 5)}
    sessions, _ = run_window(state, shares, nodes, ballots)
    assert all(s.phase is WindowPhase.NO_DECISION for s in sessions.values())


def _chain():  # type: ignore[no-untyped-def]
    run, res, state, shares, nodes = genesis(4, 2, seed=44)
    p = proposal(state, 1, Refresh())
    ids = (p.id(),)
    sessions, _ = run_window(state, shares, nodes, {1: ((p,), ids), 2: ((), ids)})
    m0 = sessions[PI(1)].certificate
    nxt = run_sharing(
        4,
        2,
        Adversary(),
        45,
        kind="reshare",
        old=shares,
        old_public_polynomial=res.public_polynomial,
        old_threshold=2,
        epoch=1,
        nodes={i: nodes[i] for i in nodes if i <= 4},
        start=m0.outcome.reshare_start,
        previous_certificate_hash=m0.hash(),
    )
    e1 = nxt.sessions[PI(1)].certificate
    return res.mpk, [run.sessions[PI(1)].certificate, m0, e1]


def test_chain_verifier_accepts_the_real_chain_and_rejects_every_tampered_link() -> None:
    mpk, chain = _chain()
    assert verify_chain(chain, mpk=mpk).epoch == 1
    g, m0, e1 = chain
    with pytest.raises(ChainError):
        verify_chain(chain, mpk=7 * G2.generator())  # another pinned key
    # Genesis and a recent tail: the head is checked directly under the pinned key.
    assert verify_chain([g, e1], mpk=mpk).epoch == 1
    with pytest.raises(ChainError):
        verify_chain([g, e1, m0], mpk=mpk)  # a link that does not follow the tail
    with pytest.raises(ChainError):
        verify_chain([g, m0, m0], mpk=mpk)  # a replayed membership certificate
    with pytest.raises(ChainError):
        verify_chain([g, m0, e1, m0], mpk=mpk)  # an old certificate replayed in a later epoch
    with pytest.raises(ChainError):
        verify_chain([m0, e1], mpk=mpk)  # no genesis
    with pytest.raises(ChainError):
        verify_chain([g, g], mpk=mpk)
    # Every single bit of every link's signature, and a field of each transcript.
    for k, link in enumerate(chain):
        raw = bytearray(link.signature)
        raw[10] ^= 1
        forged = link.__class__(
            *(getattr(link, f) for f in link.__dataclass_fields__ if f != "signature"),
            signature=bytes(raw),
        )  # type: ignore[call-arg]
        tampered = list(chain)
        tampered[k] = forged
        with pytest.raises((ChainError, InvalidEncoding)):
            verify_chain(tampered, mpk=mpk)
    import dataclasses

    bumped = dataclasses.replace(
        m0, outcome=dataclasses.replace(m0.outcome, reshare_start=m0.outcome.reshare_start + 1)
    )
    with pytest.raises(ChainError):
        verify_chain([g, bumped, e1], mpk=mpk)
    wrong_epoch = dataclasses.replace(e1, transcript=dataclasses.replace(e1.transcript, epoch=2))
    with pytest.raises(ChainError):
        verify_chain([g, m0, wrong_epoch], mpk=mpk)
    other_attempt = dataclasses.replace(
        e1, transcript=dataclasses.replace(e1.transcript, attempt=1)
    )
    with pytest.raises(ChainError):
        verify_chain([g, m0, other_attempt], mpk=mpk)


def test_certificates_survive_the_codec() -> None:
    mpk, chain = _chain()
    decoded = [type(link).decode(link.encode()) for link in chain]
    assert verify_chain(decoded, mpk=mpk).epoch == 1
    assert isinstance(decoded[1], MembershipCertificate)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(data=st.data())
def test_at_most_one_outcome_per_window_with_t_minus_1_byzantine(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 6), label="n")
    t = data.draw(st.integers(2, n), label="t")
    _run, _res, state, shares, nodes = genesis(
        n, t, seed=data.draw(st.integers(0, 999), label="seed")
    )
    f = data.draw(st.integers(0, min(t - 1, n - t)), label="f")
    byz = frozenset(
        data.draw(st.lists(st.integers(1, n), min_size=f, max_size=f, unique=True), label="byz")
    )
    props = [
        proposal(state, 1 + k % n, ch, k)
        for k, ch in enumerate([Refresh(), ChangeThreshold(2), RemoveMember(n)])
    ]
    rnd = random.Random(data.draw(st.integers(0, 999), label="votes"))
    ballots = {}
    for i in range(1, n + 1):
        mine = tuple(p for p in props if p.proposer == i)
        approve = tuple(sorted(p.id() for p in props if i in byz or rnd.random() < 0.7))
        ballots[i] = (mine, approve)
    sessions, mesh = run_window(state, shares, nodes, ballots, byzantine=byz)
    honest = [PI(i) for i in range(1, n + 1) if i not in byz]
    phases = {sessions[i].phase for i in honest}
    assert len(phases) == 1
    certs = {sessions[i].certificate.fingerprint() for i in honest if sessions[i].certificate}
    assert len(certs) <= 1
    decided = {sessions[i].outcome for i in honest}
    assert len(decided) == 1
    decisions = [e for i in honest for e in mesh.events[i] if isinstance(e, OutcomeDecided)]
    assert len({d.outcome for d in decisions}) <= 1


def test_a_window_never_admits_an_index_or_identity_the_chain_used() -> None:
    """Nodes 6 and 7 were members in earlier epochs (the chain's history says so): a
    proposal to add a node under index 6, or under node 7's identity, never wins even
    with every approval; nor does a removal naming another identity than the member's."""
    _run, _res, state, shares, nodes = genesis()
    used = dataclasses.replace(
        state,
        used_indices=state.used_indices | {6, 7},
        used_identities=state.used_identities
        | {nodes[PI(6)].participant.identity, nodes[PI(7)].participant.identity},
    )
    n8 = nodes[PI(8)].participant
    p7 = nodes[PI(7)].participant
    sig = nodes[PI(7)].identity.sign(CTX_DKG_KEY, Participant.dkg_key_statement(8, p7.dkg_key))
    stolen = Participant(8, p7.identity, p7.dkg_key, sig)  # node 7's identity, index 8
    stolen.check()
    bad = [
        proposal(used, 1, AddMember(nodes[PI(6)].participant, b"")),
        proposal(used, 1, AddMember(stolen, b""), 1),
        proposal(used, 1, RemoveMember(5, b"", n8.identity), 2),
    ]
    assert all(used.apply(p.change) is None for p in bad)
    assert state.apply(bad[0].change) is not None  # fine without that history
    ids = tuple(sorted(p.id() for p in bad))
    ballots = {i: ((tuple(bad) if i == 1 else ()), ids) for i in (1, 2, 3, 4, 5)}
    sessions, _ = run_window(used, shares, nodes, ballots)
    assert all(s.phase is WindowPhase.NO_DECISION for s in sessions.values())
