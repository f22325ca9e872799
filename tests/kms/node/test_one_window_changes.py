"""A change the operators approve before a decision window is certified in that window.

The operators act the way the operator guide says: one proposes, the others approve
the id it printed, all before window ``w`` opens, some before the proposal has even
reached their node. The committee is sans-I/O node cores on the mesh, each checking
the change (``kms.node.admission.ChangeChecker``: the join quote against the admission
policy) before approving it, as a real node does. The change must be decided and
certified in ``w`` itself, not one window later, and the reshare must follow.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pytest
from mesh import Mesh, Node, make_nodes

from kms.attest import INTEL_ROOT_CA, Collateral, Verifier
from kms.attest.simulated import SimulatedTEE
from kms.attest.verify import ADMISSIBLE_STATUSES
from kms.node.admission import ChangeChecker, join_report_data
from kms.node.core import ApprovalRefused, InputRejected, LinkCertified, NodeConfig, NodeCore
from kms.node.governance import NOTICED_PER_MEMBER
from kms.policy import Measurement, NodeAdmissionPolicy
from mpc.ids import ParticipantIndex as PI
from mpc.membership import AddMember, ChangeThreshold, Proposal, ProposalNotice
from mpc.membership.messages import MembershipCertificate

T0 = 1_750_000_000.0
GENESIS_START = T0 + 1.0
PERIOD = 10.0
DELTA = 0.5
NODE = {
    n: bytes([0xA0 + i]) * 48 for i, n in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
ROGUE = {**NODE, "rtmr3": bytes(48)}
ADDRS = ("/ip4/127.0.0.1/tcp/4005/p2p/12D3KooWnew",)


@dataclass
class World:
    nodes: dict[PI, Node]
    cores: dict[PI, NodeCore]
    mesh: Mesh
    tee: SimulatedTEE

    def at(self, t: float) -> None:
        self.mesh.run_until(T0 + t)

    def join(self, index: int, measurement: dict[str, bytes] = NODE) -> AddMember:
        p = self.nodes[PI(index)].participant
        st = self.cores[PI(1)].state
        assert st is not None
        quote = self.tee.quote(join_report_data(p, ADDRS, st.epoch, st.head_hash), **measurement)
        return AddMember(p, quote, ADDRS, st.epoch, st.head_hash)

    def certificates(self, i: int) -> list[MembershipCertificate]:
        return [e.certificate for e in self.mesh.events[PI(i)] if isinstance(e, LinkCertified)]


def world(seed: int, n: int = 4, t: int = 3, *, unchecked: tuple[int, ...] = ()) -> World:
    rnd = random.Random(f"tee-{seed}")
    tee = SimulatedTEE(rnd.randbytes, now=int(T0))
    collateral = Collateral.coerce(tee.collateral(int(T0), lifetime=86400))
    verifier = Verifier(
        [INTEL_ROOT_CA, tee.root_ca_der],
        simulated_allowed=True,
        allowed_statuses=ADMISSIBLE_STATUSES,
    )
    checker = ChangeChecker(verifier, lambda quote: collateral)
    policy = NodeAdmissionPolicy.build([Measurement.explicit(**NODE)])
    nodes = make_nodes(range(1, n + 2), seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, n + 1))
    rng = random.Random(seed)
    cores = {}
    for i in range(1, n + 2):
        cfg = NodeConfig(
            PI(i),
            genesis,
            t,
            genesis_start=GENESIS_START,
            delta=DELTA,
            window_period=PERIOD,
            window_length=2.0,
            admission_policy_hash=hashlib.sha256(policy.encode()).digest(),
            admission_policy=policy.encode(),
        )
        cores[PI(i)] = NodeCore(
            cfg,
            nodes[PI(i)].identity,
            nodes[PI(i)].dkg_key,
            rng=rng.randbytes,
            check=None if i in unchecked else checker,
        )
    mesh = Mesh(cores, seed=seed, max_delay=DELTA / 3, ticks=[T0 + k * 0.25 for k in range(400)])
    w = World(nodes, cores, mesh, tee)
    w.at(19.0)
    assert all(cores[PI(i)].state is not None for i in range(1, n + 1))
    return w


def window_of(t: float) -> int:
    return int((T0 + t - GENESIS_START) // PERIOD)


def sign_end(w: int, t: int = 3) -> float:
    """Seconds after ``T0`` at which window ``w``'s signing deadline falls."""
    cfg_window, f = 2.0, t - 1
    return GENESIS_START - T0 + w * PERIOD + cfg_window + (f + 1) * DELTA + 3 * DELTA


@pytest.mark.parametrize("approve_first", [True, False], ids=["approved-unseen", "seen-first"])
def test_approvals_before_the_window_certify_the_change_in_that_window(
    approve_first: bool,
) -> None:
    w = world(seed=91)
    mpk = w.cores[PI(1)].state.mpk  # type: ignore[union-attr]
    # Window 2 opens at T0 + 21; everyone acts at T0 + 19.2..19.8, before it.
    nxt = window_of(21.0)
    assert window_of(19.8) < nxt
    pid = w.cores[PI(1)].propose(w.join(5))
    if approve_first:
        # Approved the moment the id was printed, before the proposal reached them.
        assert w.cores[PI(2)].approve(pid) is False
        assert w.cores[PI(3)].approve(pid) is False
        assert w.cores[PI(2)].status().waiting == (pid.hex(),)
        w.at(19.8)
    else:
        w.at(19.6)
        w.cores[PI(2)].approve(pid)
        w.cores[PI(3)].approve(pid)
        w.at(19.8)
    w.at(sign_end(nxt) + DELTA)
    for i in (1, 2, 3, 4):
        certs = w.certificates(i)
        assert len(certs) == 1, (i, [c.outcome.window for c in certs])
        assert certs[0].outcome.window == nxt
        assert certs[0].outcome.proposal.id() == pid
        st = w.cores[PI(i)].state
        assert st is not None and st.pending is not None
    # Then the reshare follows from the certificate: node 5 is in, with the same key.
    w.at(sign_end(nxt) + 25.0)
    for i in range(1, 6):
        st = w.cores[PI(i)].state
        assert st is not None and st.epoch == 1, i
        assert [int(x) for x in st.committee.indices] == [1, 2, 3, 4, 5]
        assert st.mpk == mpk
    assert w.cores[PI(5)].share is not None


def test_a_rogue_proposal_approved_blindly_is_still_refused_before_the_window() -> None:
    # Node 1 runs without checks and proposes a node outside the admission policy; the
    # others approve the id blindly. They check what reaches them and refuse it.
    w = world(seed=92, unchecked=(1,))
    pid = w.cores[PI(1)].propose(w.join(5, ROGUE))
    for i in (2, 3, 4):
        assert w.cores[PI(i)].approve(pid) is False
    w.at(sign_end(window_of(21.0)) + 2 * PERIOD)
    for i in (2, 3, 4):
        refused = [e for e in w.mesh.events[PI(i)] if isinstance(e, ApprovalRefused)]
        assert [(e.proposal_id, e.reason) for e in refused] == [(pid, "not-admitted")], i
        st = w.cores[PI(i)].state
        assert st is not None and st.epoch == 0 and st.pending is None
    assert not any(w.certificates(i) for i in range(1, 5))


def test_a_threshold_change_approved_before_the_window_takes_one_window() -> None:
    w = world(seed=93)
    pid = w.cores[PI(4)].propose(ChangeThreshold(2))
    for i in (1, 3):
        w.cores[PI(i)].approve(pid)
    nxt = window_of(21.0)
    w.at(sign_end(nxt) + DELTA)
    certs = w.certificates(2)
    assert [c.outcome.window for c in certs] == [nxt]
    assert certs[0].outcome.proposal.id() == pid
    members = {PI(i) for i in range(1, 5)}
    rejected = [e for e in w.mesh.events[PI(2)] if isinstance(e, InputRejected)]
    assert not [e for e in rejected if e.peer in members]


# --- what a corrupt member can do with proposal notices -----------------------------------------


def test_a_notice_of_another_members_proposal_is_rejected() -> None:
    """Member 4 passes off a proposal as member 1's: refused, and not taken for it."""
    w = world(seed=94)
    st = w.cores[PI(1)].state
    assert st is not None
    forged = Proposal.of(st.epoch, st.head_hash, 1, bytes(16), w.join(5))
    assert w.cores[PI(2)].approve(forged.id()) is False
    w.mesh.inject(PI(4), PI(2), ProposalNotice(forged).encode(), T0 + 19.1)
    w.at(19.5)
    rejected = [e for e in w.mesh.events[PI(2)] if isinstance(e, InputRejected) and e.peer == 4]
    assert [e.reason for e in rejected] == [
        "proposal notice for another member's proposal (culprits: 4)"
    ]
    assert w.cores[PI(2)].status().waiting == (forged.id().hex(),)


def test_a_member_flooding_notices_crowds_out_only_its_own() -> None:
    """Member 4 sends hundreds of its own proposals after member 1's: member 1's stays
    known, and the change approved before the window is still certified in it."""
    w = world(seed=95)
    pid = w.cores[PI(1)].propose(ChangeThreshold(2))
    w.at(19.3)
    st = w.cores[PI(1)].state
    assert st is not None
    for k in range(300):
        junk = Proposal.of(st.epoch, st.head_hash, 4, k.to_bytes(16, "big"), w.join(5))
        w.mesh.inject(PI(4), PI(2), ProposalNotice(junk).encode(), T0 + 19.4)
    w.at(19.5)
    # Memory stays bounded: member 4 holds its own slots only.
    assert len(w.cores[PI(2)].governance.noticed[4]) == NOTICED_PER_MEMBER
    assert w.cores[PI(2)].approve(pid) is True  # known from member 1's notice, checked now
    assert w.cores[PI(3)].approve(pid) is True
    nxt = window_of(21.0)
    w.at(sign_end(nxt) + DELTA)
    assert [c.outcome.window for c in w.certificates(2)] == [nxt]
