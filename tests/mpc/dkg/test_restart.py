"""Persistence and restarts: a killed member comes back with what it persisted, and no more.

A member is "killed" at a chosen time: from then on nothing it produces leaves it, nothing
reaches it, and its session is dropped. It is restarted as a new session, with a different
random stream, given every ``Persist`` record it emitted before the kill (the shell stores
them before sending anything of the same step). It must resend the very bytes it had
signed, never sign anything else for a slot, and must not cost the others their run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from byzantine import ByzantineSession, Misbehaviour
from dkg_harness import DELTA, Adversary, check_agreement, run_sharing, schedule, ticks
from mesh import Mesh, Node, make_nodes

from mpc.broadcast import BroadcastPayload, session_id
from mpc.codec import Message, decode
from mpc.dkg.messages import CertificatePartial, DealBundle, JustificationBundle
from mpc.dkg.session import (
    RUN_KEY_RECORD,
    Persist,
    Phase,
    ResponderEquivocated,
    SharingConfig,
    SharingSession,
)
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.math.fields import scalar_to_bytes
from mpc.math.poly import Polynomial
from mpc.membership import (
    DecisionWindow,
    Proposal,
    RemoveMember,
    WindowPhase,
    WindowSchedule,
    genesis_state,
)

VICTIM = PI(2)
ACCUSER = 5  # byzantine: falsely complains about the victim, so the victim must justify


def signed_records(persisted: dict[str, bytes]) -> set[str]:
    """What the member signed or dealt; ``seen/...`` records are what it heard."""
    return {k for k in persisted if not k.startswith("seen/")}


def make_config(nodes: dict[PI, Node], t: int) -> SharingConfig:
    parts = tuple(nodes[i].participant for i in sorted(nodes))
    return SharingConfig(
        kind="dkg",
        epoch=0,
        attempt=0,
        dealers=parts,
        recipients=parts,
        threshold=t,
        schedule=schedule(t),
    )


def make_session(
    cfg: SharingConfig,
    nodes: dict[PI, Node],
    i: PI,
    rng: str,
    *,
    persisted: dict[str, bytes] | None = None,
    behaviour: Misbehaviour | None = None,
) -> SharingSession:
    node = nodes[i]
    draw = random.Random(rng).randbytes
    if behaviour is not None:
        s = ByzantineSession(cfg, i, node.identity, node.dkg_key, rng=draw)
        s.behaviour = behaviour
        return s
    return SharingSession(cfg, i, node.identity, node.dkg_key, rng=draw, persisted=persisted)


@dataclass
class Sent:
    at: float
    to: PI
    data: bytes
    life: int  # 0 before the kill, 1 after the restart

    @property
    def message(self) -> Message:
        return decode(self.data)


@dataclass
class Restart:
    """One run in which ``victim`` is killed at ``kill_at`` and restarted at ``restart_at``."""

    config: SharingConfig
    mesh: Mesh
    victim: PI
    honest: list[PI]  # the others that are honest
    persisted: dict[str, bytes]
    phase_at_kill: Phase
    new: SharingSession
    sent: list[Sent] = field(default_factory=list)

    def slots(self, life: int | None = None) -> dict[bytes, set[bytes]]:
        """The victim's own signed broadcast messages, per round, as sent in ``life``."""
        out: dict[bytes, set[bytes]] = {}
        for s in self.sent:
            m = s.message
            if life not in (None, s.life) or not isinstance(m, BroadcastPayload):
                continue
            if m.header.sender == int(self.victim):
                out.setdefault(m.header.session, set()).add(s.data)
        return out

    def partials(self, life: int) -> set[bytes]:
        return {
            s.data
            for s in self.sent
            if s.life == life and isinstance(s.message, CertificatePartial)
        }

    def round_session(self, name: str) -> bytes:
        return session_id(self.config.run_id(), name.encode())


def run_with_restart(
    kill_at: float,
    restart_at: float,
    *,
    n: int = 5,
    t: int = 3,
    seed: int = 0,
    accuser: int | None = ACCUSER,
) -> Restart:
    nodes = make_nodes(range(1, n + 1), seed)
    cfg = make_config(nodes, t)
    behaviours = {PI(accuser): Misbehaviour(false_complaints=frozenset({2}))} if accuser else {}
    sessions: dict[PI, Any] = {
        i: make_session(cfg, nodes, i, f"first-{seed}-{int(i)}", behaviour=behaviours.get(i))
        for i in sorted(nodes)
    }
    sent: list[Sent] = []
    state = {"life": 0, "dead": False}

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if sender == VICTIM:
            if state["life"] == 0 and now >= kill_at:
                return []  # killed before this left the machine
            sent.append(Sent(now, to, message.encode(), state["life"]))
        if to == VICTIM and state["dead"]:
            return []
        return None

    mesh = Mesh(sessions, seed=seed, max_delay=DELTA / 3, route=route, ticks=ticks(cfg.schedule))
    mesh.run_until(kill_at)
    state["dead"] = True
    old = mesh.sessions.pop(VICTIM)
    phase_at_kill = old.phase
    persisted = {e.key: e.data for e in mesh.events[VICTIM] if isinstance(e, Persist)}
    mesh.run_until(restart_at)
    state["dead"] = False
    state["life"] = 1
    new = make_session(cfg, nodes, VICTIM, f"after-the-restart-{seed}", persisted=persisted)
    mesh.sessions[VICTIM] = new
    mesh.run_until(cfg.schedule.end + 1)
    honest = [i for i in sorted(nodes) if i != VICTIM and i not in behaviours]
    return Restart(cfg, mesh, VICTIM, honest, persisted, phase_at_kill, new, sent)


def never_an_equivocator(run: Restart) -> None:
    """No slot of the victim ever went out with two different messages, and no honest
    member holds anything against it but, possibly, a missing message."""
    for session_bytes, versions in run.slots().items():
        assert len(versions) == 1, f"two messages signed for one slot {session_bytes.hex()}"
    assert len(run.partials(0) | run.partials(1)) <= 1
    for i in run.honest:
        ex = run.mesh.sessions[i].excluded.get(run.victim)
        assert ex is None or "equivocated" not in ex.reason, ex
        assert ex is None or ex.evidence is None, ex
        equiv = [e for e in run.mesh.events[i] if isinstance(e, ResponderEquivocated)]
        assert all(e.responder != run.victim for e in equiv)


def others_agree(run: Restart) -> Any:
    """Every other honest member finished with the same QUAL, MPK and certificate."""
    results = {i: run.mesh.sessions[i] for i in run.honest}
    first = results[run.honest[0]]
    assert first.phase is Phase.DONE, first.failure
    for s in results.values():
        assert s.phase is Phase.DONE, s.failure
        assert s.result.qual == first.result.qual
        assert s.certificate == first.certificate
    first.certificate.verify(first.result.mpk)
    # The victim itself never ends with anything else than what the others certified.
    assert run.new.phase in (Phase.DONE, Phase.FAILED)
    if run.new.certificate is not None:
        assert run.new.certificate == first.certificate
    return first.result


S = schedule(3)

OWN_DEAL_VIEW = (
    "bug: _after_responses honours complaints only against dealers in the session's view of "
    "the deal round, and a restart loses that view (its resent deal is past the cut-off, or "
    "within Δ of it, so it never counts again in its own view), so the restarted dealer drops "
    "the complaints against itself and never justifies, though it has its persisted deal and "
    "polynomial; it is excluded though honest"
)


@dataclass(frozen=True)
class Kill:
    name: str
    phase: Phase
    kill_at: float
    restart_at: float

    @property
    def before_the_deal_cutoff(self) -> bool:
        return self.restart_at <= S.deal_cutoff


KILLS = [
    # Back as the run starts, so it hears every run key: a member that misses them deals
    # from a view of the keys the others do not share, and its deal is left out.
    Kill("killed before dealing, back in time to deal", Phase.WAITING, S.start - 0.5, S.start),
    Kill(
        "killed after dealing, back early in the deal phase",
        Phase.DEALING,
        S.key_end + 0.2,
        S.key_end + 0.5,
    ),
    Kill(
        "killed after dealing, back just before the deal cut-off",
        Phase.DEALING,
        S.deal_cutoff - 0.5,
        S.deal_cutoff - 0.1,
    ),
    Kill("killed after responding", Phase.RESPONDING, S.deal_end + 0.2, S.deal_end + 0.5),
    Kill("killed after justifying", Phase.JUSTIFYING, S.respond_end + 0.2, S.respond_end + 0.5),
    Kill(
        "killed after signing its certificate partial",
        Phase.CERTIFYING,
        S.justify_end + 1e-6,
        S.justify_end + 0.5,
    ),
    Kill("killed after the run", Phase.DONE, S.justify_end + 1.5, S.justify_end + 2.0),
]


@pytest.mark.parametrize("kill", KILLS, ids=[k.name for k in KILLS])
def test_a_restarted_member_resends_the_same_bytes_and_never_signs_anew(kill: Kill) -> None:
    run = run_with_restart(kill.kill_at, kill.restart_at)
    assert run.phase_at_kill is kill.phase
    before, after = run.slots(0), run.slots(1)
    for slot, versions in after.items():
        if slot in before:
            assert versions == before[slot], "a resent message differs from the original"
    never_an_equivocator(run)
    others_agree(run)
    if kill.phase is not Phase.WAITING:
        assert run.slots(0)[run.round_session("deal")] == after[run.round_session("deal")]


EARLY_KILLS = [
    pytest.param(
        k,
        id=k.name,
        marks=[],
    )
    for k in KILLS
    if k.before_the_deal_cutoff
]


@pytest.mark.parametrize("kill", EARLY_KILLS)
def test_a_member_killed_and_back_before_the_deal_cutoff_stays_in_qual(kill: Kill) -> None:
    """Even when falsely accused (so it must justify after its restart)."""
    run = run_with_restart(kill.kill_at, kill.restart_at)
    result = others_agree(run)
    assert run.victim in result.qual


def open_slots(run: Restart, restart_at: float) -> set[str]:
    """Rounds the victim had signed for whose broadcast was still running at the restart."""
    ends = {"deal": S.deal_end, "respond": S.respond_end, "justify": S.justify_end}
    before = run.slots(0)
    return {r for r, end in ends.items() if run.round_session(r) in before and restart_at < end}


RESEND_KILLS = [
    pytest.param(
        k,
        id=k.name,
        marks=[],
    )
    for k in KILLS
]


@pytest.mark.parametrize("kill", RESEND_KILLS)
def test_a_restarted_member_resends_every_slot_still_open(kill: Kill) -> None:
    run = run_with_restart(kill.kill_at, kill.restart_at)
    after = run.slots(1)
    for name in open_slots(run, kill.restart_at):
        assert after.get(run.round_session(name)) == run.slots(0)[run.round_session(name)], name


def test_a_dealer_that_crashed_before_sending_its_justification_still_justifies() -> None:
    # Killed at the respond-phase end: the justification is persisted but never leaves.
    run = run_with_restart(S.respond_end, S.respond_end + 0.5)
    assert "justification" in run.persisted
    assert run.round_session("justify") not in run.slots(0)
    never_an_equivocator(run)
    result = others_agree(run)
    assert run.victim in result.qual


def test_a_member_that_crashed_before_sending_its_partial_still_lets_the_run_certify() -> None:
    run = run_with_restart(S.justify_end, S.justify_end + 0.5, n=3, t=3, accuser=None)
    assert "certificate-partial" in run.persisted
    assert run.partials(0) == set()
    assert run.partials(1) == {run.persisted["certificate-partial"]}
    others_agree(run)


def test_a_dealer_restarted_without_its_polynomial_in_memory_justifies_from_the_record() -> None:
    """Restarted right after dealing (no message lost): the polynomial is gone from memory,
    and the justification must reveal the shares of the persisted one."""
    run = run_with_restart(S.key_end + 1e-9, S.key_end + 2e-9)
    assert signed_records(run.persisted) == {RUN_KEY_RECORD, "run-key", "polynomial", "deal"}
    justification_matches_the_record(run)
    never_an_equivocator(run)
    result = others_agree(run)
    assert run.victim in result.qual
    assert run.new.phase is Phase.DONE  # it lost nothing, so it finishes with the others
    for i in run.honest:
        assert run.victim not in run.mesh.sessions[i].excluded


def justification_matches_the_record(run: Restart) -> None:
    raw = run.persisted["polynomial"]
    poly = Polynomial([int.from_bytes(raw[k : k + 32], "big") for k in range(0, len(raw), 32)])
    (just,) = run.slots(1)[run.round_session("justify")]
    bundle = JustificationBundle.decode(BroadcastPayload.decode(just).payload)
    assert {s.recipient for s in bundle.shares} == {ACCUSER}
    for s in bundle.shares:
        assert s.share == scalar_to_bytes(poly(s.recipient))


def test_a_dealer_restarted_in_the_respond_phase_still_justifies() -> None:
    """Killed right after sending its response and back at once: it misses none of the
    responses (the accuser's complaint included), only its memory of the deal round."""
    run = run_with_restart(S.deal_end + 1e-6, S.deal_end + 2e-6)
    assert signed_records(run.persisted) == {
        RUN_KEY_RECORD,
        "run-key",
        "polynomial",
        "deal",
        "response",
    }
    never_an_equivocator(run)
    result = others_agree(run)
    assert run.victim in result.qual
    justification_matches_the_record(run)


def test_a_dealer_restarted_after_the_respond_phase_still_justifies() -> None:
    # Killed once the complaint has surely arrived (delays are below Δ/3).
    run = run_with_restart(S.deal_end + 0.4, S.respond_end + 0.5)
    assert "polynomial" in run.persisted and "justification" not in run.persisted
    never_an_equivocator(run)
    result = others_agree(run)
    assert run.victim in result.qual
    justification_matches_the_record(run)


def test_a_dealer_that_crashed_between_its_polynomial_and_its_deal_deals_consistently() -> None:
    """Only the polynomial was stored (so nothing was sent): the restarted dealer deals that
    polynomial (a store refuses a second, different value for the record) and justifies
    from it."""
    nodes = make_nodes(range(1, 6), 3)
    cfg = make_config(nodes, 3)
    first = make_session(cfg, nodes, VICTIM, "first")
    first.start(S.start)
    first.advance_time(S.key_end)
    stale = {e.key: e.data for e in first.events() if isinstance(e, Persist)}
    first.messages_to_send()  # never sent: the shell had stored only the polynomial
    sessions: dict[PI, Any] = {
        i: make_session(
            cfg,
            nodes,
            i,
            f"second-{int(i)}",
            behaviour=Misbehaviour(false_complaints=frozenset({2})) if i == ACCUSER else None,
        )
        for i in sorted(nodes)
        if i != VICTIM
    }
    sessions[VICTIM] = make_session(
        cfg, nodes, VICTIM, "second", persisted={"polynomial": stale["polynomial"]}
    )
    mesh = Mesh(sessions, seed=3, max_delay=DELTA / 3, ticks=ticks(cfg.schedule))
    mesh.run_until(cfg.schedule.end + 1)
    fresh = [e for e in mesh.events[VICTIM] if isinstance(e, Persist) and e.key == "polynomial"]
    assert fresh == []  # no second value for the stored record
    deals = [e for e in mesh.events[VICTIM] if isinstance(e, Persist) and e.key == "deal"]
    assert len(deals) == 1
    bundle = DealBundle.decode(BroadcastPayload.decode(deals[0].data).payload)
    constant = int.from_bytes(stale["polynomial"][:32], "big")
    assert G2.from_bytes(bundle.commitments[0]) == constant * G2.generator()
    honest = [PI(1), PI(3), PI(4)]
    for i in honest:
        assert mesh.sessions[i].phase is Phase.DONE
        assert VICTIM in mesh.sessions[i].result.qual
    assert mesh.sessions[VICTIM].certificate == mesh.sessions[PI(1)].certificate


def test_persist_records_precede_the_messages_they_cover() -> None:
    """Every signed message a member sends was handed to the shell as a Persist record in
    the same step or earlier, with the exact bytes that go out."""
    nodes = make_nodes(range(1, 6), 4)
    cfg = make_config(nodes, 3)
    s = make_session(cfg, nodes, VICTIM, "p")
    accuser = make_session(
        cfg, nodes, PI(ACCUSER), "a", behaviour=Misbehaviour(false_complaints=frozenset({2}))
    )
    others = {i: make_session(cfg, nodes, i, f"o{int(i)}") for i in (PI(1), PI(3), PI(4))}
    sessions: dict[PI, Any] = {VICTIM: s, PI(ACCUSER): accuser, **others}
    stored: set[bytes] = set()
    keys: list[str] = []
    checked = 0

    class Shell:
        """Stores Persist records first, then checks what is sent against them."""

        def __init__(self, inner: SharingSession) -> None:
            self.inner = inner

        def advance_time(self, now: float) -> None:
            self.inner.advance_time(now)

        def receive(self, peer: PI, message: Message, now: float) -> None:
            self.inner.receive(peer, message, now)

        def events(self) -> list[Any]:
            out = self.inner.events()
            for e in out:
                if isinstance(e, Persist):
                    stored.add(e.data)
                    keys.append(e.key)
            return out

        def messages_to_send(self) -> list[Any]:
            nonlocal checked
            self.events()  # the shell stores before it sends
            out = self.inner.messages_to_send()
            for o in out:
                m = o.message
                own = isinstance(m, BroadcastPayload) and m.header.sender == int(VICTIM)
                if own or isinstance(m, CertificatePartial):
                    assert m.encode() in stored, type(m).__name__
                    checked += 1
            return out

    sessions[VICTIM] = Shell(s)
    mesh = Mesh(sessions, seed=4, max_delay=DELTA / 3, ticks=ticks(cfg.schedule))
    mesh.run_until(cfg.schedule.end + 1)
    assert [k for k in keys if not k.startswith("seen/")] == [
        RUN_KEY_RECORD,
        "run-key",
        "polynomial",
        "deal",
        "response",
        "justification",
        "share",
        "certificate-partial",
    ]
    assert checked >= 4 * 4
    secret = {e.key for e in mesh.events[VICTIM] if isinstance(e, Persist) and e.secret}
    assert secret == {RUN_KEY_RECORD, "polynomial", "share"}


# --- the membership decision window -----------------------------------------------------

WSCHED = WindowSchedule(start=50.0, window=2.0, delta=1.0, sign_window=3.0, reshare_delay=5.0)


def genesis(seed: int = 40) -> tuple[Any, dict[PI, Any], dict[PI, Node]]:
    nodes = make_nodes(range(1, 6), seed)
    run = run_sharing(5, 3, Adversary(), seed, nodes=nodes)
    res = check_agreement(run)
    state = genesis_state(res.mpk, run.sessions[PI(1)].certificate)
    shares = {i: run.sessions[i].result.share for i in run.honest}
    return state, shares, nodes


def test_a_restarted_decision_window_resends_the_same_ballot() -> None:
    state, shares, nodes = genesis()
    p = Proposal.of(state.epoch, state.head_hash, 2, bytes(16), RemoveMember(5))
    q = Proposal.of(state.epoch, state.head_hash, 2, b"\x01" * 16, RemoveMember(4))
    ballots = {1: ((), (p.id(),)), 2: ((p,), (p.id(),)), 3: ((), (p.id(),))}
    f = state.threshold - 1

    def window(i: PI, **kw: Any) -> DecisionWindow:
        props, approvals = ballots.get(int(i), ((), ()))
        kw.setdefault("proposals", props)
        kw.setdefault("approvals", approvals)
        return DecisionWindow(state, 0, WSCHED, i, nodes[i].identity, shares.get(i), **kw)

    sent: list[tuple[int, bytes]] = []
    life = {"n": 0, "dead": False}

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if sender == PI(2) and isinstance(message, BroadcastPayload):
            sent.append((life["n"], message.encode()))
        if to == PI(2) and life["dead"]:
            return []
        return None

    sessions: dict[PI, Any] = {i: window(i) for i in state.committee.indices}
    mesh = Mesh(
        sessions,
        seed=5,
        max_delay=0.3,
        route=route,
        # Dense ticks: a member whose clock jumps inside a window is not live through it.
        ticks=[
            WSCHED.start - 1 + k * 0.25
            for k in range(int((WSCHED.sign_end(f) + 3 - WSCHED.start) * 4))
        ],
    )
    mesh.run_until(WSCHED.start + 0.5)
    life["dead"] = True
    mesh.sessions.pop(PI(2))
    persisted = {e.key: e.data for e in mesh.events[PI(2)] if isinstance(e, Persist)}
    assert set(persisted) == {"ballot"}
    mesh.run_until(WSCHED.start + 1.0)
    life["dead"] = False
    life["n"] = 1
    # After the restart the node would now propose and approve something else: it must not.
    mesh.sessions[PI(2)] = window(PI(2), proposals=(q,), approvals=(q.id(),), persisted=persisted)
    mesh.run_until(WSCHED.sign_end(f) + 1)
    own = {
        life_n: {d for n, d in sent if n == life_n and decode(d).header.sender == 2}  # type: ignore[attr-defined]
        for life_n in (0, 1)
    }
    assert len(own[0]) == 1 and own[1] == own[0]
    assert own[0] == {persisted["ballot"]}
    for i in state.committee.indices:
        w = mesh.sessions[i]
        if i == PI(2):
            continue
        assert w.phase is WindowPhase.DECIDED
        assert w.certificate.outcome.proposal == p
        assert PI(2) in w.tally.approvals[p.id()]  # its ballot counted: no equivocation
        assert q.id() not in w.tally.proposals
