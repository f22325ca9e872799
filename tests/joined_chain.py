"""A chain in which node 6 joined a 5-member committee with a certified URL (for the
tests of ``certified_urls`` and of the client's URL search)."""

from __future__ import annotations

import dataclasses

from dkg_harness import Adversary, check_agreement, run_sharing
from mesh import Mesh, make_nodes

from mpc.cert import EpochCertificate
from mpc.ids import ParticipantIndex as PI
from mpc.membership import (
    AddMember,
    ChainState,
    DecisionWindow,
    MembershipCertificate,
    Proposal,
    WindowSchedule,
    genesis_state,
    verify_chain,
)

SCHED = WindowSchedule(start=50.0, window=2.0, delta=1.0, sign_window=3.0, reshare_delay=5.0)
URL = "https://node6.example:8443"


def joined() -> tuple[EpochCertificate, ChainState, MembershipCertificate]:
    """Node 6 admitted with ``URL`` to a 5-member committee (t = 3): the genesis
    certificate, the state after the reshare, and the certified ``AddMember``."""
    nodes = make_nodes(range(1, 8), 40)
    run = run_sharing(5, 3, Adversary(), 40, nodes={i: nodes[i] for i in nodes if i <= 5})
    res = check_agreement(run)
    g: EpochCertificate = run.sessions[PI(1)].certificate
    state = genesis_state(res.mpk, g)
    shares = {i: run.sessions[i].result.share for i in run.honest}
    add = AddMember(nodes[PI(6)].participant, b"quote", url=URL)
    p = Proposal.of(state.epoch, state.head_hash, 1, bytes(16), add)
    ballots = {1: ((p,), (p.id(),)), 2: ((), (p.id(),)), 3: ((), (p.id(),))}
    sessions = {
        i: DecisionWindow(
            state,
            0,
            SCHED,
            i,
            nodes[i].identity,
            shares.get(i),
            proposals=ballots.get(int(i), ((), ()))[0],
            approvals=ballots.get(int(i), ((), ()))[1],
        )
        for i in state.committee.indices
    }
    ticks = [
        SCHED.start - 1 + k * 0.25 for k in range(int((SCHED.sign_end(2) + 2 - SCHED.start) * 4))
    ]
    Mesh(sessions, seed=0, max_delay=0.3, ticks=ticks).run_until(SCHED.sign_end(2) + 1)
    cert = sessions[PI(1)].certificate
    assert cert is not None
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
    final = verify_chain([g, cert, nxt.sessions[PI(6)].certificate], mpk=res.mpk)
    return g, final, cert


def forged(cert: MembershipCertificate, k: int) -> MembershipCertificate:
    """``cert`` with another URL: node 6's public record, a valid G1 point as signature,
    a signature that does not verify."""
    add = cert.outcome.proposal.change
    assert isinstance(add, AddMember)
    prop = dataclasses.replace(
        cert.outcome.proposal, add=dataclasses.replace(add, url=f"http://x{k}.example")
    )
    return dataclasses.replace(cert, outcome=dataclasses.replace(cert.outcome, proposal=prop))
