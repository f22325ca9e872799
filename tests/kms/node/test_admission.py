"""Members check a change before they propose or approve it: join quotes, policies, evidence.

A committee of sans-I/O node cores on the mesh, on a Unix-time clock (quotes
and collateral are checked at ``now``), with the checker every node runs
(``kms.node.admission.ChangeChecker``) over a simulated TDX platform.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import pytest
from mesh import Mesh, Node, make_nodes

from kms.attest import INTEL_ROOT_CA, Collateral, Verifier
from kms.attest.simulated import SimulatedTEE
from kms.attest.verify import ADMISSIBLE_STATUSES
from kms.node.admission import AdmissionRefusal, ChangeChecker, join_report_data
from kms.node.core import (
    ApprovalRefused,
    ChangeContext,
    ChangeRefused,
    InputRejected,
    NodeConfig,
    NodeCore,
)
from kms.policy import Measurement, NodeAdmissionPolicy
from mpc import hpke
from mpc.broadcast import EquivocationEvidence, SignedDigest, session_id
from mpc.codec import decode
from mpc.dkg.messages import Participant
from mpc.errors import LocalProtocolError
from mpc.ids import ParticipantIndex as PI
from mpc.membership import (
    AddMember,
    ChangeAdmissionPolicy,
    ChangeThreshold,
    Refresh,
    RemoveMember,
)
from mpc.membership.messages import OutcomePartial
from mpc.sig import CTX_BROADCAST_DIGEST, CTX_DKG_KEY, SigningKey

T0 = 1_750_000_000.0
DELTA = 0.5
NODE = {
    n: bytes([0xA0 + i]) * 48 for i, n in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
ROGUE = {**NODE, "rtmr3": bytes(48)}
ADDRS = ("/ip4/127.0.0.1/tcp/4005/p2p/12D3KooWnew",)


def seeded(label: str) -> Any:
    rnd = random.Random(label)
    return rnd.randbytes


@dataclass
class World:
    nodes: dict[PI, Node]
    cores: dict[PI, NodeCore]
    mesh: Mesh
    tee: SimulatedTEE
    checker: ChangeChecker
    policy: NodeAdmissionPolicy

    def at(self, t: float) -> None:
        self.mesh.run_until(T0 + t)

    def join(self, index: int, measurement: dict[str, bytes] = NODE) -> AddMember:
        """A join request bound to the committee's current chain head (node 1's view)."""
        p = self.nodes[PI(index)].participant
        st = self.cores[PI(1)].state
        assert st is not None
        quote = self.tee.quote(join_report_data(p, ADDRS, st.epoch, st.head_hash), **measurement)
        return AddMember(p, quote, ADDRS, st.epoch, st.head_hash)

    def ctx(self, i: int = 1) -> ChangeContext:
        core = self.cores[PI(i)]
        assert core.state is not None
        return ChangeContext(core.state, tuple(core.chain), T0 + 30, core.admission_policy())


def world(n: int, t: int, seed: int, *, extra: int = 1, unchecked: tuple[int, ...] = ()) -> World:
    tee = SimulatedTEE(seeded(f"tee-{seed}"), now=int(T0))
    collateral = Collateral.coerce(tee.collateral(int(T0), lifetime=86400))
    verifier = Verifier(
        [INTEL_ROOT_CA, tee.root_ca_der],
        simulated_allowed=True,
        allowed_statuses=ADMISSIBLE_STATUSES,
    )
    checker = ChangeChecker(verifier, lambda quote: collateral)
    policy = NodeAdmissionPolicy.build([Measurement.explicit(**NODE)])
    nodes = make_nodes(range(1, n + 1 + extra), seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, n + 1))
    rng = random.Random(seed)
    cores = {}
    for i in range(1, n + 1 + extra):
        cfg = NodeConfig(
            PI(i),
            genesis,
            t,
            genesis_start=T0 + 1.0,
            delta=DELTA,
            window_period=10.0,
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
    ticks = [T0 + k * 0.25 for k in range(4 * 150)]
    mesh = Mesh(cores, seed=seed, max_delay=DELTA / 3, ticks=ticks)
    w = World(nodes, cores, mesh, tee, checker, policy)
    w.at(19.0)
    assert all(cores[PI(i)].state is not None for i in range(1, n + 1))
    return w


@pytest.fixture(scope="module")
def w4() -> World:
    return world(4, 3, seed=71)


def refusal(exc: pytest.ExceptionInfo[ChangeRefused]) -> AdmissionRefusal:
    return AdmissionRefusal(exc.value.reason)


# --- joining -------------------------------------------------------------------------------


def test_an_admitted_quote_binding_the_request_passes(w4: World) -> None:
    w4.checker(w4.ctx(), w4.join(5))
    assert w4.cores[PI(1)].admission_policy() == w4.policy.encode()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("a measurement the policy does not list", AdmissionRefusal.NOT_ADMITTED),
        ("a quote over another node's record", AdmissionRefusal.REPORT_DATA_MISMATCH),
        ("a quote over other addresses", AdmissionRefusal.REPORT_DATA_MISMATCH),
        ("no quote at all", AdmissionRefusal.NO_ATTESTATION),
        ("a quote from an untrusted platform", AdmissionRefusal.QUOTE_REJECTED),
        ("garbage instead of a quote", AdmissionRefusal.QUOTE_REJECTED),
        ("an out-of-date platform", AdmissionRefusal.NOT_ADMITTED),
    ],
)
def test_a_join_outside_the_admission_policy_is_refused(
    w4: World, case: str, expected: AdmissionRefusal
) -> None:
    p5 = w4.nodes[PI(5)].participant
    good = w4.join(5)
    fresh = (good.epoch, good.head)
    if case == "a measurement the policy does not list":
        add = w4.join(5, ROGUE)
    elif case == "a quote over another node's record":
        other = w4.nodes[PI(1)].participant
        add = AddMember(
            p5, w4.tee.quote(join_report_data(other, ADDRS, *fresh), **NODE), ADDRS, *fresh
        )
    elif case == "a quote over other addresses":
        add = AddMember(p5, good.attestation, ("/ip4/10.0.0.9/tcp/1/p2p/12D3KooWevil",), *fresh)
    elif case == "no quote at all":
        add = AddMember(p5, b"", ADDRS, *fresh)
    elif case == "a quote from an untrusted platform":
        stranger = SimulatedTEE(seeded("stranger"), now=int(T0))
        add = AddMember(
            p5, stranger.quote(join_report_data(p5, ADDRS, *fresh), **NODE), ADDRS, *fresh
        )
    elif case == "garbage instead of a quote":
        add = AddMember(p5, b"\x04\x00" + bytes(600), ADDRS, *fresh)
    else:
        old = SimulatedTEE(seeded("tee-71"), now=int(T0), tcb_status="OutOfDate")
        coll = Collateral.coerce(old.collateral(int(T0), lifetime=86400))
        checker = ChangeChecker(
            Verifier(
                [INTEL_ROOT_CA, old.root_ca_der],
                simulated_allowed=True,
                allowed_statuses=ADMISSIBLE_STATUSES,
            ),
            lambda q: coll,
        )
        add = AddMember(p5, old.quote(join_report_data(p5, ADDRS, *fresh), **NODE), ADDRS, *fresh)
        with pytest.raises(ChangeRefused) as exc:
            checker(w4.ctx(), add)
        assert refusal(exc) is expected, exc.value
        return
    with pytest.raises(ChangeRefused) as exc:
        w4.checker(w4.ctx(), add)
    assert refusal(exc) is expected, exc.value


def test_no_known_policy_or_a_malformed_one_admits_nobody(w4: World) -> None:
    ctx = w4.ctx()
    unknown = ChangeContext(ctx.state, ctx.chain, ctx.now, None)
    with pytest.raises(ChangeRefused) as exc:
        w4.checker(unknown, w4.join(5))
    assert refusal(exc) is AdmissionRefusal.NO_ADMISSION_POLICY
    text = ChangeContext(ctx.state, ctx.chain, ctx.now, b"free text policy")
    with pytest.raises(ChangeRefused) as exc:
        w4.checker(text, w4.join(5))
    assert refusal(exc) is AdmissionRefusal.MALFORMED_ADMISSION_POLICY
    with pytest.raises(ChangeRefused) as exc:
        w4.checker(ctx, ChangeAdmissionPolicy(b"not a policy"))
    assert refusal(exc) is AdmissionRefusal.MALFORMED_ADMISSION_POLICY
    w4.checker(ctx, ChangeAdmissionPolicy(w4.policy.encode()))


def test_the_core_refuses_to_propose_a_rogue_join(w4: World) -> None:
    core = w4.cores[PI(2)]
    before = core.status()
    with pytest.raises(ChangeRefused) as exc:
        core.propose(w4.join(5, ROGUE))
    assert refusal(exc) is AdmissionRefusal.NOT_ADMITTED
    assert "measurement" in str(exc.value)
    assert core.status() == before


# --- evidence ------------------------------------------------------------------------------


def equivocation(node: Node) -> EquivocationEvidence:
    sess = session_id(b"membership", b"some window")
    signed = []
    for digest in (b"\x01" * 32, b"\x02" * 32):
        unsigned = SignedDigest(sess, int(node.index), digest, bytes(64))
        sig = node.identity.sign(CTX_BROADCAST_DIGEST, unsigned.statement())
        signed.append(SignedDigest(sess, int(node.index), digest, sig))
    return EquivocationEvidence(signed[0], signed[1])


def test_removal_evidence_is_verified_before_approval(w4: World) -> None:
    ctx = w4.ctx()
    ev = equivocation(w4.nodes[PI(4)])
    id3, id4 = (w4.nodes[PI(i)].participant.identity for i in (3, 4))
    w4.checker(ctx, RemoveMember(4, ev.encode(), id4))
    w4.checker(ctx, RemoveMember(4, b"", id4))  # no evidence: the operators' own decision
    cases = {
        AdmissionRefusal.EVIDENCE_NAMES_ANOTHER_NODE: RemoveMember(3, ev.encode(), id3),
        AdmissionRefusal.MALFORMED_EVIDENCE: RemoveMember(4, b"\x93garbage", id4),
        AdmissionRefusal.UNSUPPORTED_EVIDENCE: RemoveMember(4, ChangeThreshold(2).encode(), id4),
    }
    forged = EquivocationEvidence(
        ev.first,
        SignedDigest(ev.second.session, 4, ev.second.digest, bytes(64)),
    )
    cases[AdmissionRefusal.EVIDENCE_INVALID] = RemoveMember(4, forged.encode(), id4)
    # Node 3 signing "node 4's" digests proves nothing about node 4.
    framed = equivocation(w4.nodes[PI(3)])
    framed4 = EquivocationEvidence(
        SignedDigest(framed.first.session, 4, framed.first.digest, framed.first.signature),
        SignedDigest(framed.second.session, 4, framed.second.digest, framed.second.signature),
    )
    for expected, change in cases.items():
        with pytest.raises(ChangeRefused) as exc:
            w4.checker(ctx, change)
        assert refusal(exc) is expected, (expected, exc.value)
    with pytest.raises(ChangeRefused) as exc:
        w4.checker(ctx, RemoveMember(4, framed4.encode(), id4))
    assert refusal(exc) is AdmissionRefusal.EVIDENCE_INVALID


# --- on the mesh: approvals wait for the check -------------------------------------------------


def test_join_checked_by_every_approver_then_certified() -> None:
    w = world(4, 3, seed=72)
    mpk = w.cores[PI(1)].state.mpk  # type: ignore[union-attr]
    pid = w.cores[PI(1)].propose(w.join(5))
    # Approved before the proposal reached them: each checks it once it arrives.
    assert w.cores[PI(2)].approve(pid) is False
    assert w.cores[PI(3)].approve(pid) is False
    assert w.cores[PI(2)].status().waiting == (pid.hex(),)
    w.at(75.0)
    for i in range(1, 6):
        st = w.cores[PI(i)].state
        assert st is not None and st.epoch == 1, i
        assert [int(x) for x in st.committee.indices] == [1, 2, 3, 4, 5]
        assert st.mpk == mpk
    assert w.cores[PI(5)].share is not None


def test_a_rogue_join_approved_blindly_is_refused_and_never_certified() -> None:
    # Node 1 runs without checks (a careless or malicious operator) and proposes a rogue node.
    w = world(4, 3, seed=73, unchecked=(1,))
    pid = w.cores[PI(1)].propose(w.join(5, ROGUE))
    for i in (2, 3, 4):
        assert w.cores[PI(i)].approve(pid) is False
    w.at(75.0)
    for i in (2, 3, 4):
        refused = [e for e in w.mesh.events[PI(i)] if isinstance(e, ApprovalRefused)]
        assert [(e.proposal_id, e.reason) for e in refused] == [(pid, "not-admitted")], i
        assert w.cores[PI(i)].status().refused == ((pid.hex(), "not-admitted"),)
        st = w.cores[PI(i)].state
        assert st is not None and st.epoch == 0 and st.pending is None
    # Node 5 was never admitted: no member answers it, not even with the chain.
    assert w.cores[PI(5)].state is None
    assert w.cores[PI(5)].share is None
    # The proposal is listed with the proposer's approval only.
    pending = {p[0]: p for p in w.cores[PI(2)].status().pending}
    assert pending[pid.hex()][2] == 1


# --- freshness: a join request is bound to a recent chain head ---------------------------------


def _next_epoch(w: World, change: Any) -> None:
    st = w.cores[PI(1)].state
    assert st is not None
    pid = w.cores[PI(1)].propose(change)
    for i in (2, 3):
        w.cores[PI(i)].approve(pid)
    until = w.mesh.now + 60.0
    w.mesh.ticks = sorted({*w.mesh.ticks, *(w.mesh.now + k * 0.25 for k in range(4 * 61))})
    while w.mesh.now < until:
        w.mesh.run_until(w.mesh.now + 5.0)
        if all(w.cores[PI(i)].state.epoch > st.epoch for i in range(1, 5)):  # type: ignore[union-attr]
            return
    raise AssertionError(f"epoch {st.epoch + 1} was not certified")


def test_an_old_join_request_replayed_after_the_committee_moved_on_is_refused() -> None:
    """Node 5's operator made a join request at epoch 0 that was never used. Three
    epochs later someone replays it: its quote still verifies (same platform, same
    TCB), but it names a chain head three epochs old, and every member refuses it."""
    w = world(4, 3, seed=74)
    old = w.join(5)  # made for epoch 0's head
    w.checker(w.ctx(), old)  # fresh: admitted
    p5 = w.nodes[PI(5)].participant
    unbound = AddMember(p5, w.tee.quote(join_report_data(p5, ADDRS), **NODE), ADDRS)
    for _ in range(3):
        _next_epoch(w, Refresh())
    assert w.cores[PI(1)].state.epoch == 3  # type: ignore[union-attr]
    with pytest.raises(ChangeRefused) as exc:
        w.cores[PI(1)].propose(old)
    assert refusal(exc) is AdmissionRefusal.JOIN_STALE, exc.value
    # A request that names no head at all (the old format) is refused too.
    with pytest.raises(ChangeRefused) as exc:
        w.cores[PI(1)].propose(unbound)
    assert refusal(exc) is AdmissionRefusal.JOIN_UNBOUND, exc.value
    # A request naming a head this chain never had.
    forged = AddMember(p5, old.attestation, ADDRS, 3, bytes(32))
    with pytest.raises(ChangeRefused) as exc:
        w.checker(w.ctx(), forged)
    assert refusal(exc) is AdmissionRefusal.JOIN_UNKNOWN_HEAD
    # A new request, made for the current head, is admitted.
    w.checker(w.ctx(), w.join(5))


# --- an index or identity names one node for the life of the chain --------------------------------


def _record(index: int, identity: SigningKey, seed: str) -> Participant:
    _, dkg_pub = hpke.derive_key_pair(hashlib.sha256(seed.encode()).digest())
    sig = identity.sign(CTX_DKG_KEY, Participant.dkg_key_statement(index, dkg_pub))
    return Participant(index, identity.verify_key().to_bytes(), dkg_pub, sig)


def _bound_join(w: World, p: Participant) -> AddMember:
    st = w.cores[PI(1)].state
    assert st is not None
    quote = w.tee.quote(join_report_data(p, ADDRS, st.epoch, st.head_hash), **NODE)
    return AddMember(p, quote, ADDRS, st.epoch, st.head_hash)


def test_a_removed_members_index_and_identity_are_never_admitted_again() -> None:
    """Node 4 is removed. Its index is then offered to a new, honest node: had it been
    admitted, the removed node could sign an equivocation under its old key as "node 4"
    and the evidence would verify against the first identity that held index 4, so the
    committee would remove the honest newcomer. Neither the index nor the removed
    node's identity is admitted again, and the removed node drops out of the peers."""
    w = world(4, 3, seed=75, extra=0)
    old4 = w.nodes[PI(4)]
    _next_epoch(w, RemoveMember(4))
    core = w.cores[PI(1)]
    assert [int(i) for i in core.state.committee.indices] == [1, 2, 3]  # type: ignore[union-attr]
    # The removed node is no longer a peer: its protocol messages are refused.
    assert PI(4) not in core.participants
    core.events()
    core.receive(PI(4), decode(OutcomePartial(4, bytes(32), bytes(48)).encode()), w.mesh.now)
    assert any(isinstance(e, InputRejected) and e.peer == PI(4) for e in core.events())
    # An honest newcomer offered the removed node's index.
    newcomer = _record(4, SigningKey.from_seed(b"\x44" * 32), "newcomer")
    with pytest.raises(LocalProtocolError):
        core.propose(_bound_join(w, newcomer))
    # Had it been admitted, this is the evidence that would have framed it.
    framed = equivocation(old4)
    ctx = w.ctx()
    with pytest.raises(ChangeRefused):
        w.checker(ctx, RemoveMember(4, framed.encode(), newcomer.identity))
    # The removed node itself, back under a fresh index with its old identity.
    again = _record(6, old4.identity, "again")
    with pytest.raises(LocalProtocolError):
        core.propose(_bound_join(w, again))
    # A fresh node under a fresh index is admitted as usual.
    fresh = _record(7, SigningKey.from_seed(b"\x77" * 32), "fresh")
    assert len(core.propose(_bound_join(w, fresh))) == 32


# --- the joiner's HTTP URL (AddMember version 3) -----------------------------------------------


def test_the_quote_binds_the_joiners_url_and_an_old_request_still_passes(w4: World) -> None:
    """The URL is bound like the addresses: a request whose URL was changed after the
    quote was made is refused; a version-2 request (no URL, quoted as before) passes."""
    from mpc.codec import MessageDecodeError

    p5 = w4.nodes[PI(5)].participant
    st = w4.cores[PI(1)].state
    assert st is not None
    url = "https://kms5.example.org:8443"
    fresh = (st.epoch, st.head_hash)
    quote = w4.tee.quote(join_report_data(p5, ADDRS, *fresh, url), **NODE)
    add = AddMember(p5, quote, ADDRS, *fresh, url)
    assert add.wire_version() == 3 and decode(add.encode()) == add
    w4.checker(w4.ctx(), add)
    moved = AddMember(p5, quote, ADDRS, *fresh, "https://attacker.example.org")
    with pytest.raises(ChangeRefused) as exc:
        w4.checker(w4.ctx(), moved)
    assert refusal(exc) is AdmissionRefusal.REPORT_DATA_MISMATCH
    dropped = AddMember(p5, quote, ADDRS, *fresh)  # the URL stripped: version 2
    with pytest.raises(ChangeRefused) as exc:
        w4.checker(w4.ctx(), dropped)
    assert refusal(exc) is AdmissionRefusal.REPORT_DATA_MISMATCH
    old = w4.join(5)  # quoted over the version-2 encoding, as before the URL existed
    assert old.wire_version() == 2 and join_report_data(p5, ADDRS, *fresh) == join_report_data(
        p5, ADDRS, *fresh, ""
    )
    w4.checker(w4.ctx(), old)
    for bad in ("javascript:alert(1)", "http://", "http://a b", "ftp://x"):
        with pytest.raises(MessageDecodeError):
            decode(AddMember(p5, quote, ADDRS, *fresh, bad).encode())
