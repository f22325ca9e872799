"""The sharing session's phases: the transition table, and every kind of input in every phase.

The phase table replays one recorded member's inputs (``Traced`` logs every call the mesh
makes) into a fresh session, with one probe message added at a time chosen inside a phase,
and compares what the session does afterwards with a twin replay without the probe:
rejected and ignored input must leave every later step (phase, events, outbox) and the
final result unchanged; early input must be kept for its round; late input must not change
the outcome.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from byzantine import ByzantineSession, Misbehaviour
from dkg_harness import DELTA, Adversary, make_router, schedule, ticks
from mesh import Mesh, Node, make_nodes

from mpc.broadcast import (
    BroadcastPayload,
    DigestRelay,
    Outbound,
    PullRequest,
    RelaySignature,
    SignedDigest,
    session_id,
    statement,
)
from mpc.codec import Message, decode
from mpc.dkg.messages import CertificatePartial, Participant
from mpc.dkg.schedule import Schedule
from mpc.dkg.session import (
    TERMINAL_PHASES,
    TRANSITIONS,
    CertificateCompleted,
    DealerExcluded,
    DealingCompleted,
    Persist,
    Phase,
    ResponderEquivocated,
    SharingConfig,
    SharingFailed,
    SharingFinalized,
    SharingSession,
)
from mpc.errors import InvalidShare, InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex as PI
from mpc.reshare.retention import Acknowledgement
from mpc.secret import SecretShare
from mpc.sig import CTX_BROADCAST_DIGEST, CTX_BROADCAST_RELAY, CTX_DKG_KEY, SigningKey

# --- building and recording runs -------------------------------------------------------


def make_config(
    nodes: dict[PI, Node],
    t: int,
    *,
    kind: str = "dkg",
    dealers: Sequence[int] | None = None,
    recipients: Sequence[int] | None = None,
    attempt: int = 0,
    epoch: int = 0,
    old_threshold: int = 0,
    old_public_polynomial: tuple[Any, ...] = (),
) -> SharingConfig:
    everyone = sorted(int(i) for i in nodes)
    return SharingConfig(
        kind=kind,
        epoch=epoch,
        attempt=attempt,
        dealers=tuple(nodes[PI(i)].participant for i in (dealers or everyone)),
        recipients=tuple(nodes[PI(i)].participant for i in (recipients or everyone)),
        threshold=t,
        schedule=schedule(t),
        old_threshold=old_threshold,
        old_public_polynomial=old_public_polynomial,
    )


def make_session(
    cfg: SharingConfig,
    nodes: dict[PI, Node],
    i: int,
    *,
    behaviour: Misbehaviour | None = None,
    share: SecretShare | None = None,
    persisted: dict[str, bytes] | None = None,
) -> SharingSession:
    """Each member draws from its own seeded stream, so a replay deals the same bytes."""
    node = nodes[PI(i)]
    rng = random.Random(f"rng-{cfg.run_id().hex()}-{i}").randbytes
    if behaviour is not None:
        s = ByzantineSession(cfg, PI(i), node.identity, node.dkg_key, rng=rng, share=share)
        s.behaviour = behaviour
        return s
    return SharingSession(
        cfg, PI(i), node.identity, node.dkg_key, rng=rng, share=share, persisted=persisted
    )


@dataclass(frozen=True)
class Call:
    """One call the shell made: ``advance_time(at)`` or ``receive(peer, decode(data), at)``."""

    at: float
    peer: PI | None = None
    data: bytes | None = None

    @property
    def message(self) -> Message:
        assert self.data is not None
        return decode(self.data)


class Traced:
    """Forwards the sans-I/O contract to a session, logging calls and the phase after each."""

    def __init__(self, session: SharingSession) -> None:
        self.session = session
        self.calls: list[Call] = []
        self.phases: list[Phase] = [session.phase]

    def advance_time(self, now: float) -> None:
        self.calls.append(Call(now))
        try:
            self.session.advance_time(now)
        finally:
            self.phases.append(self.session.phase)

    def receive(self, peer: PI, message: Message, now: float) -> None:
        self.calls.append(Call(now, peer, message.encode()))
        try:
            self.session.receive(peer, message, now)
        finally:
            self.phases.append(self.session.phase)

    def messages_to_send(self) -> list[Outbound]:
        return self.session.messages_to_send()

    def events(self) -> list[Any]:
        return self.session.events()


@dataclass
class Recorded:
    config: SharingConfig
    nodes: dict[PI, Node]
    mesh: Mesh
    traced: dict[PI, Traced]
    corrupt: frozenset[int] = frozenset()

    def session(self, i: int) -> SharingSession:
        return self.traced[PI(i)].session


def record(
    nodes: dict[PI, Node],
    cfg: SharingConfig,
    *,
    adversary: Adversary | None = None,
    seed: int = 0,
    shares: dict[PI, SecretShare] | None = None,
    drop: Callable[[PI, PI, Any], bool] | None = None,
) -> Recorded:
    adversary = adversary or Adversary()
    sessions: dict[PI, Any] = {}
    traced: dict[PI, Traced] = {}
    everyone = sorted({*cfg.dealer_indices, *cfg.recipient_indices})
    for i in everyone:
        share = shares.get(i) if shares else None
        b = adversary.behaviours.get(int(i))
        s = make_session(cfg, nodes, int(i), behaviour=b, share=share)
        if b is None:
            traced[i] = Traced(s)
            sessions[i] = traced[i]
        else:
            sessions[i] = s
    honest = [i for i in everyone if int(i) not in adversary.corrupt]
    router = make_router(adversary, cfg.schedule, honest, seed)

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if drop is not None and drop(sender, to, message):
            return []
        return router(sender, to, message, now)

    mesh = Mesh(sessions, seed=seed, max_delay=DELTA / 3, route=route, ticks=ticks(cfg.schedule))
    mesh.run_until(cfg.schedule.end + 1)
    return Recorded(cfg, nodes, mesh, traced, adversary.corrupt)


# --- observing a session -----------------------------------------------------------------


def norm_event(e: Any) -> tuple[Any, ...]:
    if isinstance(e, Persist):
        return ("persist", e.key, e.data, e.secret)
    if isinstance(e, DealerExcluded):
        return ("excluded", e.dealer, e.reason, e.evidence.encode() if e.evidence else None)
    if isinstance(e, ResponderEquivocated):
        return ("responder-equivocated", e.responder, e.evidence.encode())
    if isinstance(e, SharingFinalized):
        return ("finalized", *norm_result(e.result))
    if isinstance(e, CertificateCompleted):
        return ("certified", e.certificate.encode())
    if isinstance(e, SharingFailed):
        return ("failed", e.reason)
    if isinstance(e, DealingCompleted):
        return ("dealing-completed",)
    raise AssertionError(f"unknown event {e!r}")


def norm_result(r: Any) -> tuple[Any, ...]:
    if r is None:
        return (None,)
    return (
        r.qual,
        r.share.value.value if r.share else None,
        tuple(p.to_bytes() for p in r.public_polynomial),
        r.transcript.encode(),
    )


def summary(s: SharingSession) -> tuple[Any, ...]:
    return (
        s.phase,
        s.failure,
        norm_result(s.result),
        s.certificate.encode() if s.certificate else None,
        tuple(
            (d, e.reason, e.evidence.encode() if e.evidence else None)
            for d, e in sorted(s.excluded.items())
        ),
    )


@dataclass(frozen=True)
class StepOutput:
    phase: Phase
    events: tuple[tuple[Any, ...], ...]
    outbox: tuple[tuple[int, bytes], ...]


def drain(s: SharingSession) -> StepOutput:
    events = [norm_event(e) for e in s.events()]
    outbox = [(int(o.to), o.message.encode()) for o in s.messages_to_send()]
    events += [norm_event(e) for e in s.events()]
    return StepOutput(s.phase, tuple(events), tuple(outbox))


@dataclass
class Replay:
    before: list[StepOutput]
    probe: StepOutput | None
    error: Exception | None
    after: list[StepOutput]
    final: tuple[Any, ...]
    phase_at_probe: Phase


def replay(
    rec: Recorded,
    me: int,
    at: float,
    *,
    probe: tuple[int, Message] | None = None,
    without: Iterable[int] = (),
    calls: Sequence[Call] | None = None,
) -> Replay:
    """Replay member ``me``'s recorded calls into a fresh session; at time ``at`` advance the
    clock and hand it ``probe`` (if any). ``without`` drops recorded calls by position."""
    s = make_session(rec.config, rec.nodes, me)
    log = list(calls if calls is not None else rec.traced[PI(me)].calls)
    skip = set(without)
    before: list[StepOutput] = []
    after: list[StepOutput] = []
    out = before
    probed = False
    probe_out: StepOutput | None = None
    error: Exception | None = None
    phase_at_probe = s.phase

    def step(c: Call) -> None:
        if c.peer is None:
            s.advance_time(c.at)
        else:
            try:
                s.receive(c.peer, c.message, c.at)
            except RemoteProtocolError:
                pass  # recorded input the original also rejected
        out.append(drain(s))

    for k, c in enumerate([*log, Call(float("inf"))]):
        if not probed and c.at > at:
            probed = True
            s.advance_time(at)
            before.append(drain(s))
            phase_at_probe = s.phase
            if probe is not None:
                peer, message = probe
                try:
                    s.receive(PI(peer), decode(message.encode()), at)
                except RemoteProtocolError as exc:
                    error = exc
                probe_out = drain(s)
            out = after
        if k < len(log) and k not in skip:
            step(c)
    return Replay(before, probe_out, error, after, summary(s), phase_at_probe)


# --- the recorded runs the table works on -------------------------------------------------

ME = 1
OUTSIDER = 9


@dataclass
class World:
    """A recorded run of 4 members (t = 2) where byzantine 4 falsely accuses dealer 2, so
    that member 1 sees all three broadcast rounds and certificate partials."""

    rec: Recorded
    other_run: SharingConfig
    messages: dict[str, tuple[int, Message]] = field(default_factory=dict)
    arrival: dict[str, int] = field(default_factory=dict)  # position in member 1's log

    @property
    def cfg(self) -> SharingConfig:
        return self.rec.config

    def key(self, i: int) -> SigningKey:
        return self.rec.nodes[PI(i)].identity

    def round_session(self, name: str, *, other_run: bool = False) -> bytes:
        cfg = self.other_run if other_run else self.cfg
        return session_id(cfg.run_id(), name.encode())

    def signed(self, sender: int, rnd: str, data: bytes, *, other_run: bool = False) -> Any:
        session = self.round_session(rnd, other_run=other_run)
        digest = hashlib.sha256(data).digest()
        sig = self.key(sender).sign(CTX_BROADCAST_DIGEST, statement(session, PI(sender), digest))
        return BroadcastPayload(SignedDigest(session, sender, digest, sig), data)

    def relay_sig(self, p: BroadcastPayload, relayer: int) -> RelaySignature:
        sig = self.key(relayer).sign(CTX_BROADCAST_RELAY, p.header.statement())
        return RelaySignature(relayer, sig)


ROUNDS = ("deal", "respond", "justify")
ROUND_PHASE = {"deal": Phase.DEALING, "respond": Phase.RESPONDING, "justify": Phase.JUSTIFYING}


def cutoff_of(s: Schedule, rnd: str) -> float:
    return {"deal": s.deal_cutoff, "respond": s.respond_cutoff, "justify": s.justify_cutoff}[rnd]


def build_world() -> World:
    nodes = make_nodes(range(1, 5), 21)
    cfg = make_config(nodes, 2)
    adv = Adversary({4: Misbehaviour(false_complaints=frozenset({2}))})
    rec = record(nodes, cfg, adversary=adv, seed=21)
    world = World(rec, replace(cfg, attempt=1))
    for k, c in enumerate(rec.traced[PI(ME)].calls):
        if c.peer is None:
            continue
        m = c.message
        name = None
        if isinstance(m, BroadcastPayload | DigestRelay):
            rnd = next((r for r in ROUNDS if m.header.session == world.round_session(r)), None)
            if rnd is None:
                continue  # the run-key round is probed by its own tests
            if m.header.sender == 2:
                kind = "payload" if isinstance(m, BroadcastPayload) else "relay"
                if (kind, c.peer) in (("payload", 2), ("relay", 3)):
                    name = f"{kind}/{rnd}"
        elif isinstance(m, CertificatePartial):
            name = f"partial/{int(c.peer)}"
        if name is not None and name not in world.messages:
            world.messages[name] = (int(c.peer), m)
            world.arrival[name] = k
    return world


_WORLD: list[World] = []


def world() -> World:
    if not _WORLD:
        _WORLD.append(build_world())
    return _WORLD[0]


def test_the_recorded_run_exercises_every_round() -> None:
    w = world()
    assert sorted(w.messages) == [
        "partial/2",
        "partial/3",
        "payload/deal",
        "payload/justify",
        "payload/respond",
        "relay/deal",
        "relay/justify",
        "relay/respond",
    ]
    x = w.rec.session(ME)
    assert x.phase is Phase.DONE and x.result is not None
    assert x.result.qual == (PI(1), PI(2), PI(3), PI(4))


# --- the phase × input table -----------------------------------------------------------

S = schedule(2)
PROBE_TIME = {
    Phase.WAITING: S.start - 0.5,
    Phase.DEALING: S.start + 1.0,
    Phase.RESPONDING: S.deal_end + 1.0,
    Phase.JUSTIFYING: S.respond_end + 1.0,
    Phase.CERTIFYING: S.justify_end,  # right after the finalize tick, before any partial
    Phase.DONE: S.justify_end + 1.0,
    Phase.FAILED: S.justify_end + 1.0,  # in a replay where member 1 heard nothing
}

REJECTED = "is rejected naming the peer"
IGNORED = "is ignored"
KEPT = "is kept and the result is unchanged"
ANSWERED = "is answered with the payload"


@dataclass(frozen=True)
class Probe:
    name: str
    make: Callable[[World], tuple[int, Message]]
    expect: Callable[[Phase, World, float], str | None]
    """Expected class in a phase at a time, or None where the case does not apply."""
    moves: str | None = None
    """The recorded message this probe delivers at the probe time instead of its own."""


def _before(w: World, name: str, at: float) -> bool:
    """Whether time ``at`` is before member 1 got recorded message ``name``."""
    return at < w.rec.traced[PI(ME)].calls[w.arrival[name]].at


def terminal(phase: Phase) -> bool:
    return phase in TERMINAL_PHASES


def rejected_unless_terminal(phase: Phase, w: World, at: float) -> str:
    return IGNORED if terminal(phase) else REJECTED


def probes_for_round(rnd: str) -> list[Probe]:
    pay, rel = f"payload/{rnd}", f"relay/{rnd}"

    def fresh(w: World) -> BroadcastPayload:
        return w.signed(2, rnd, b"another message from 2")

    def copy_of(name: str) -> Callable[[World], tuple[int, Message]]:
        return lambda w: w.messages[name]

    def duplicate(name: str) -> Callable[[Phase, World, float], str]:
        def expect(phase: Phase, w: World, at: float) -> str:
            if terminal(phase):
                return IGNORED
            return KEPT if _before(w, name, at) else IGNORED

        return expect

    def moved(name: str) -> Callable[[Phase, World, float], str | None]:
        def expect(phase: Phase, w: World, at: float) -> str | None:
            if terminal(phase) or not _before(w, name, at):
                return None
            return KEPT

        return expect

    def late_only(phase: Phase, w: World, at: float) -> str | None:
        if terminal(phase):
            return IGNORED
        return IGNORED if at > cutoff_of(S, rnd) else None  # by the cut-off it would count

    def pull_expect(phase: Phase, w: World, at: float) -> str:
        if terminal(phase):
            return IGNORED
        return IGNORED if _before(w, pay, at) else ANSWERED

    def bad_sender_sig(w: World) -> tuple[int, Message]:
        p = w.messages[pay][1]
        assert isinstance(p, BroadcastPayload)
        h = p.header
        forged = SignedDigest(h.session, h.sender, h.digest, h.signature[:-1] + b"\x00")
        if forged.signature == h.signature:
            forged = replace(forged, signature=h.signature[:-1] + b"\x01")
        return 2, BroadcastPayload(forged, p.payload)

    def relay_with(
        signers: Callable[[World, BroadcastPayload], tuple[RelaySignature, ...]],
    ) -> Callable[[World], tuple[int, Message]]:
        def make(w: World) -> tuple[int, Message]:
            p = fresh(w)
            return 3, DigestRelay(p.header, signers(w, p))

        return make

    def bad_relay_sig(w: World, p: BroadcastPayload) -> tuple[RelaySignature, ...]:
        good = w.relay_sig(p, 3)
        bad = w.relay_sig(p, 4)
        return (good, RelaySignature(4, bad.signature[:-1] + bytes([bad.signature[-1] ^ 1])))

    return [
        Probe(f"a copy of a {rnd} payload", copy_of(pay), duplicate(pay)),
        Probe(f"a {rnd} payload delivered early", copy_of(pay), moved(pay), moves=pay),
        Probe(
            f"a new {rnd} payload after its cut-off",
            lambda w: (2, fresh(w)),
            late_only,
        ),
        Probe(
            f"a {rnd} payload with a bad sender signature", bad_sender_sig, rejected_unless_terminal
        ),
        Probe(
            f"a {rnd} payload of another run",
            lambda w: (2, w.signed(2, rnd, b"other run", other_run=True)),
            rejected_unless_terminal,
        ),
        Probe(f"a copy of a {rnd} relay", copy_of(rel), duplicate(rel)),
        Probe(f"a {rnd} relay delivered early", copy_of(rel), moved(rel), moves=rel),
        Probe(
            f"a {rnd} relay with a bad relay signature",
            relay_with(bad_relay_sig),
            rejected_unless_terminal,
        ),
        Probe(
            f"a {rnd} relay signed by the sender itself",
            relay_with(lambda w, p: (w.relay_sig(p, 3), w.relay_sig(p, 2))),
            rejected_unless_terminal,
        ),
        Probe(
            f"a {rnd} relay without relay signatures",
            relay_with(lambda w, p: ()),
            rejected_unless_terminal,
        ),
        Probe(
            f"a {rnd} relay of another run",
            lambda w: (
                3,
                DigestRelay(
                    (p := w.signed(2, rnd, b"other run", other_run=True)).header,
                    (w.relay_sig(p, 3),),
                ),
            ),
            rejected_unless_terminal,
        ),
        Probe(
            f"a {rnd} pull for a payload member 1 was sent",
            lambda w: (
                3,
                PullRequest(
                    (h := w.messages[pay][1].header).session,  # type: ignore[attr-defined]
                    h.sender,
                    h.digest,
                ),
            ),
            pull_expect,
        ),
        Probe(
            f"a {rnd} pull for an unknown digest",
            lambda w: (3, PullRequest(w.round_session(rnd), 2, bytes(32))),
            lambda phase, w, at: IGNORED,
        ),
        Probe(
            f"a {rnd} pull of another run",
            lambda w: (3, PullRequest(w.round_session(rnd, other_run=True), 2, bytes(32))),
            rejected_unless_terminal,
        ),
    ]


def transcript_hash(w: World) -> bytes:
    res = w.rec.session(ME).result
    assert res is not None
    return res.transcript.hash()


def partial_expect(bad: bool) -> Callable[[Phase, World, float], str]:
    """A partial that is wrong in a way only the transcript reveals: kept unread before
    finalize (dropped silently then), rejected while certifying, ignored once done."""

    def expect(phase: Phase, w: World, at: float) -> str:
        if terminal(phase):
            return IGNORED
        if phase is Phase.CERTIFYING and bad:
            return REJECTED
        return IGNORED

    return expect


def partial_moved(phase: Phase, w: World, at: float) -> str | None:
    if terminal(phase) or not _before(w, "partial/2", at):
        return None
    return KEPT


def partial_copy(phase: Phase, w: World, at: float) -> str:
    if terminal(phase):
        return IGNORED
    return KEPT if _before(w, "partial/2", at) else IGNORED


def with_partial(
    signer: int, th: Callable[[World], bytes], sig: Callable[[World], bytes]
) -> Callable[[World], tuple[int, Message]]:
    return lambda w: (2, CertificatePartial(signer, th(w), sig(w)))


def partial_sig(w: World, name: str) -> bytes:
    m = w.messages[name][1]
    assert isinstance(m, CertificatePartial)
    return m.signature


OTHER_PROBES = [
    Probe("a copy of a certificate partial", lambda w: w.messages["partial/2"], partial_copy),
    Probe(
        "a certificate partial delivered early",
        lambda w: w.messages["partial/2"],
        partial_moved,
        moves="partial/2",
    ),
    Probe(
        "a certificate partial over another transcript",
        with_partial(2, lambda w: bytes(32), lambda w: partial_sig(w, "partial/2")),
        partial_expect(bad=True),
    ),
    Probe(
        "a certificate partial with a bad signature",
        with_partial(2, transcript_hash, lambda w: partial_sig(w, "partial/3")),
        partial_expect(bad=True),
    ),
    Probe(
        "a certificate partial with a malformed signature",
        with_partial(2, transcript_hash, lambda w: b"\xff" * 48),
        partial_expect(bad=True),
    ),
    Probe(
        "a certificate partial for another signer",
        with_partial(3, transcript_hash, lambda w: partial_sig(w, "partial/3")),
        rejected_unless_terminal,
    ),
    Probe(
        "an acknowledgement (a message of another protocol)",
        lambda w: (2, Acknowledgement(0, bytes(32), 2, bytes(64))),
        rejected_unless_terminal,
    ),
    Probe(
        "a deal payload from an index outside the run",
        lambda w: (OUTSIDER, w.messages["payload/deal"][1]),
        lambda phase, w, at: REJECTED,
    ),
]

PROBES = [p for rnd in ROUNDS for p in probes_for_round(rnd)] + OTHER_PROBES
PHASES = list(Phase)


@dataclass(frozen=True)
class TableCase:
    phase: Phase
    probe: Probe
    expected: str

    @property
    def id(self) -> str:
        return f"in {self.phase.name} {self.probe.name} {self.expected}"


def table() -> list[TableCase]:
    """Every phase × probe that applies (moving a message later, or a new message before its
    cut-off, would legitimately change the run and is left out)."""
    w = world()
    cases = []
    for ph in PHASES:
        for pr in PROBES:
            expected = pr.expect(ph, w, PROBE_TIME[ph])
            if expected is not None:
                cases.append(TableCase(ph, pr, expected))
    return cases


def failed_calls(w: World) -> list[Call]:
    """Member 1's clock without a single message: it deals, hears nothing and fails."""
    return [c for c in w.rec.traced[PI(ME)].calls if c.peer is None]


TABLE = table()


@pytest.mark.parametrize("case", TABLE, ids=[c.id for c in TABLE])
def test_phase_table(case: TableCase) -> None:
    w = world()
    at = PROBE_TIME[case.phase]
    expected = case.expected
    calls = failed_calls(w) if case.phase is Phase.FAILED else None
    peer, message = case.probe.make(w)
    moved = [w.arrival[case.probe.moves]] if case.probe.moves else []
    twin = replay(w.rec, ME, at, calls=calls)
    run = replay(w.rec, ME, at, probe=(peer, message), without=moved, calls=calls)
    assert run.phase_at_probe is case.phase, "the probe time is not inside the phase"
    assert twin.before == run.before
    if expected == REJECTED:
        assert isinstance(run.error, RemoteProtocolError), run.error
        assert PI(peer) in run.error.culprits
    else:
        assert run.error is None, run.error
    assert run.final == twin.final, "the outcome changed"
    assert run.probe is not None
    if expected in (REJECTED, IGNORED):
        assert run.probe == StepOutput(case.phase, (), ())
        assert run.after == twin.after
    elif expected == ANSWERED:
        assert isinstance(message, PullRequest)
        rnd = next(r for r in ROUNDS if w.round_session(r) == message.session)
        answer = w.messages[f"payload/{rnd}"][1]
        assert run.probe == StepOutput(case.phase, (), ((peer, answer.encode()),))
        assert run.after == twin.after


# --- targeted checks -------------------------------------------------------------------


def test_rejected_partials_name_the_sender_with_the_right_error() -> None:
    w = world()
    at = PROBE_TIME[Phase.CERTIFYING]
    bad_sig = replay(
        w.rec,
        ME,
        at,
        probe=(2, CertificatePartial(2, transcript_hash(w), partial_sig(w, "partial/3"))),
    )
    assert isinstance(bad_sig.error, InvalidShare) and bad_sig.error.culprits == {PI(2)}
    other = replay(
        w.rec, ME, at, probe=(2, CertificatePartial(2, bytes(32), partial_sig(w, "partial/2")))
    )
    assert type(other.error) is RemoteProtocolError and other.error.culprits == {PI(2)}
    assert "another transcript" in str(other.error)


def test_early_certificate_partials_are_used_once_the_session_finalizes() -> None:
    """Every partial reaches member 1 while it is still dealing; none comes later. It must
    certify with them at the finalize tick, with the same certificate as in the recording."""
    w = world()
    calls = w.rec.traced[PI(ME)].calls
    partials = [
        k for k, c in enumerate(calls) if c.peer and isinstance(c.message, CertificatePartial)
    ]
    assert len(partials) == 2
    early = S.start + 1.0
    moved = [c for k, c in enumerate(calls) if k not in partials]
    k0 = next(k for k, c in enumerate(moved) if c.at > early)
    moved[k0:k0] = [replace(calls[k], at=early) for k in partials]
    r = replay(w.rec, ME, S.justify_end, calls=moved)
    assert r.phase_at_probe is Phase.DONE  # certified at the finalize tick itself
    assert r.final == summary(w.rec.session(ME))


def test_junk_early_partials_from_one_member_do_not_push_out_the_others() -> None:
    w = world()
    calls = w.rec.traced[PI(ME)].calls
    partials = [
        k for k, c in enumerate(calls) if c.peer and isinstance(c.message, CertificatePartial)
    ]
    early = S.start + 1.0
    n = len(w.cfg.recipients)
    junk = [  # byzantine member 4, whose own partials are junk anyway
        Call(early, PI(4), CertificatePartial(4, bytes([k]) * 32, bytes(48)).encode())
        for k in range(2 * n)
    ]
    rest = [c for k, c in enumerate(calls) if k not in partials]
    k0 = next(k for k, c in enumerate(rest) if c.at > early)
    rest[k0:k0] = junk + [replace(calls[k], at=early + 0.01) for k in partials]
    r = replay(w.rec, ME, S.justify_end, calls=rest)
    assert r.final == summary(w.rec.session(ME))
    assert r.phase_at_probe is Phase.DONE


def test_a_message_from_outside_the_run_does_not_even_move_the_clock() -> None:
    w = world()
    s = make_session(w.cfg, w.rec.nodes, ME)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive(PI(OUTSIDER), w.messages["payload/deal"][1], S.start + 0.5)
    assert info.value.culprits == {PI(OUTSIDER)}
    assert s.phase is Phase.WAITING and s.events() == [] and s.messages_to_send() == []


# --- the transition table --------------------------------------------------------------


def edges_of(phases: Sequence[Phase]) -> list[tuple[Phase, Phase]]:
    return [(a, b) for a, b in itertools.pairwise(phases) if a is not b]


def reshare_run() -> Recorded:
    nodes = make_nodes(range(1, 5), 31)
    genesis = record(nodes, make_config(nodes, 2), seed=31)
    res = genesis.session(1).result
    assert res is not None
    shares = {i: genesis.session(int(i)).result.share for i in nodes}  # type: ignore[union-attr]
    cfg = make_config(
        nodes,
        2,
        kind="reshare",
        recipients=[1, 2, 3],
        epoch=1,
        old_threshold=2,
        old_public_polynomial=res.public_polynomial,
    )
    return record(nodes, cfg, seed=32, shares=shares)  # type: ignore[arg-type]


def no_partials(sender: PI, to: PI, message: Any) -> bool:
    return isinstance(message, CertificatePartial)


def dkg_run(
    n: int, t: int, seed: int, adversary: Adversary | None = None, **kw: Any
) -> Callable[[], Recorded]:
    def run() -> Recorded:
        nodes = make_nodes(range(1, n + 1), seed)
        return record(nodes, make_config(nodes, t), adversary=adversary, seed=seed, **kw)

    return run


RUNS: dict[str, Callable[[], Recorded]] = {
    "a clean run": dkg_run(4, 2, 1),
    "a run with false complaints": lambda: world().rec,
    "a run with an equivocating dealer and a wrong justification": dkg_run(
        5,
        3,
        2,
        Adversary(
            {
                2: Misbehaviour(equivocate_deal=True),
                4: Misbehaviour(bad_share_to=frozenset({1}), justification="wrong"),
            }
        ),
    ),
    "a run with equivocating responses and selective relaying": dkg_run(
        6,
        3,
        3,
        Adversary(
            {5: Misbehaviour(complain_equivocally=True, justification="none")},
            selective_relay=frozenset({5, 6}),
            last_moment=frozenset({6}),
        ),
    ),
    "a run with too few dealers": dkg_run(
        4, 3, 4, Adversary({1: Misbehaviour(silent=True), 2: Misbehaviour(silent=True)})
    ),
    "a run where no partial arrives": dkg_run(4, 2, 5, drop=no_partials),
    "a reshare where a dealer leaves": reshare_run,
}

_RUN_CACHE: dict[str, Recorded] = {}


def recorded(name: str) -> Recorded:
    if name not in _RUN_CACHE:
        _RUN_CACHE[name] = RUNS[name]()
    return _RUN_CACHE[name]


@pytest.mark.parametrize("name", list(RUNS))
def test_honest_sessions_move_only_along_the_table(name: str) -> None:
    rec = recorded(name)
    for i, tr in rec.traced.items():
        for a, b in edges_of(tr.phases):
            assert b in TRANSITIONS[a], (int(i), a, b)
        first_terminal = next(k for k, p in enumerate(tr.phases) if p in TERMINAL_PHASES)
        assert len(set(tr.phases[first_terminal:])) == 1, "a terminal phase was left"


def observed_edges() -> set[tuple[Phase, Phase]]:
    return {
        e for name in RUNS for tr in recorded(name).traced.values() for e in edges_of(tr.phases)
    }


def test_the_runs_reach_every_end() -> None:
    ends = {tr.session.phase for name in RUNS for tr in recorded(name).traced.values()}
    assert ends == {Phase.DONE, Phase.FAILED}
    # Honest members' reasons: a corrupt member's own view (a run key it sent at the last
    # moment, say) may differ from everyone else's.
    reasons = {
        tr.session.failure
        for name in RUNS
        for i, tr in recorded(name).traced.items()
        if int(i) not in recorded(name).corrupt
    } - {None}
    assert reasons == {
        "only 2 qualified dealers, 3 needed",
        "too few certificate signatures by the deadline",
    }


def table_edges() -> set[tuple[Phase, Phase]]:
    return {(a, b) for a, bs in TRANSITIONS.items() for b in bs}


LOCAL_ERROR_EDGES = {(p, Phase.FAILED) for p in Phase if p not in TERMINAL_PHASES}
"""Edges a local error may take; no mesh run takes them unless it fails just then."""


def test_every_edge_of_the_table_is_taken_by_some_run() -> None:
    """Regression: the table used to list DEALING→DONE and RESPONDING→DONE, which no code
    path takes, so the generated diagram showed impossible edges."""
    assert table_edges() - observed_edges() - LOCAL_ERROR_EDGES == set()


def test_the_runs_cover_the_protocol_edges() -> None:
    assert observed_edges() == {
        (Phase.WAITING, Phase.DEALING),
        (Phase.DEALING, Phase.RESPONDING),
        (Phase.RESPONDING, Phase.JUSTIFYING),
        (Phase.JUSTIFYING, Phase.CERTIFYING),
        (Phase.JUSTIFYING, Phase.DONE),  # a dealer that leaves, in a reshare
        (Phase.JUSTIFYING, Phase.FAILED),  # too few qualified dealers
        (Phase.CERTIFYING, Phase.DONE),
        (Phase.CERTIFYING, Phase.FAILED),  # too few partials by the deadline
    }


def foreign_records(cfg: SharingConfig, nodes: dict[PI, Node]) -> dict[str, bytes]:
    """Member 1's deal for this run, but a response signed for another run: what a shell
    that mixed up two attempts' records would hand a restarted session."""
    first = make_session(cfg, nodes, 1)
    first.start(cfg.schedule.start)
    records = {e.key: e.data for e in first.events() if isinstance(e, Persist)}
    other = replace(cfg, attempt=1)
    session = session_id(other.run_id(), b"respond")
    data = b"a response of another run"
    digest = hashlib.sha256(data).digest()
    key = nodes[PI(1)].identity
    sig = key.sign(CTX_BROADCAST_DIGEST, statement(session, PI(1), digest))
    records["response"] = BroadcastPayload(SignedDigest(session, 1, digest, sig), data).encode()
    return records


def test_a_local_error_fails_the_session_along_an_edge_of_the_table() -> None:
    """Regression: ``_enter`` used to let FAILED follow any phase while the table had no
    WAITING/DEALING/RESPONDING→FAILED edge."""
    nodes = make_nodes(range(1, 5), 6)
    cfg = make_config(nodes, 2)
    tr = Traced(make_session(cfg, nodes, 1, persisted=foreign_records(cfg, nodes)))
    tr.advance_time(cfg.schedule.start)
    assert tr.session.phase is Phase.DEALING
    with pytest.raises(LocalProtocolError):
        tr.advance_time(cfg.schedule.deal_end)
    assert tr.phases[-2:] == [Phase.DEALING, Phase.FAILED]
    for a, b in edges_of(tr.phases):
        assert b in TRANSITIONS[a], (a, b)


def test_a_local_error_fails_the_session_for_good() -> None:
    nodes = make_nodes(range(1, 5), 6)
    cfg = make_config(nodes, 2)
    s = make_session(cfg, nodes, 1, persisted=foreign_records(cfg, nodes))
    s.start(cfg.schedule.start)
    with pytest.raises(LocalProtocolError):
        s.advance_time(cfg.schedule.deal_end)
    assert s.phase is Phase.FAILED and s.failure == "local error"
    s.advance_time(cfg.schedule.end + 1)
    s.receive(PI(2), Acknowledgement(0, bytes(32), 2, bytes(64)), cfg.schedule.end + 2)
    assert s.phase is Phase.FAILED and s.result is None


# --- configuration checks --------------------------------------------------------------


def participant(i: int, seed: int, *, signed_index: int | None = None) -> Participant:
    rnd = random.Random(f"participant-{i}-{seed}")
    ident = SigningKey.from_seed(rnd.randbytes(32))
    dkg_pub = rnd.randbytes(32)
    idx = i if signed_index is None else signed_index
    sig = ident.sign(CTX_DKG_KEY, Participant.dkg_key_statement(idx, dkg_pub))
    return Participant(i, ident.verify_key().to_bytes(), dkg_pub, sig)


P = [participant(i, 0) for i in range(1, 6)]


def config_with(**changes: Any) -> SharingConfig:
    base: dict[str, Any] = {
        "kind": "dkg",
        "epoch": 0,
        "attempt": 0,
        "dealers": tuple(P[:4]),
        "recipients": tuple(P[:4]),
        "threshold": 3,
        "schedule": schedule(3),
    }
    base.update(changes)
    return SharingConfig(**base)


def swapped_signature(p: Participant) -> Participant:
    other = participant(p.index, 99)  # signed by a different identity
    return replace(p, dkg_key_signature=other.dkg_key_signature)


CONFIG_CASES: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("a threshold of 1 is refused", {"threshold": 1, "schedule": schedule(1)}, LocalProtocolError),
    (
        "a threshold above n is refused",
        {"threshold": 5, "schedule": schedule(5)},
        LocalProtocolError,
    ),
    ("f other than t - 1 is refused", {"schedule": schedule(2)}, LocalProtocolError),
    ("f of 0 with t = 3 is refused", {"schedule": schedule(1)}, LocalProtocolError),
    (
        "unsorted participants are refused",
        {"dealers": (P[1], P[0], P[2], P[3]), "recipients": (P[1], P[0], P[2], P[3])},
        LocalProtocolError,
    ),
    (
        "a duplicate participant is refused",
        {"dealers": (P[0], P[1], P[1], P[3]), "recipients": (P[0], P[1], P[1], P[3])},
        LocalProtocolError,
    ),
    ("no participants are refused", {"dealers": (), "recipients": ()}, LocalProtocolError),
    (
        "an index bound to two identities is refused",
        {"recipients": (participant(1, 7), *P[1:4])},
        LocalProtocolError,
    ),
    (
        "a DKG whose dealers are not its recipients is refused",
        {"dealers": tuple(P[:4]), "recipients": (*P[:3], P[4])},
        LocalProtocolError,
    ),
    ("an unknown kind is refused", {"kind": "refresh"}, LocalProtocolError),
    (
        "a DKG key signed by another identity is refused",
        {
            "dealers": (swapped_signature(P[0]), *P[1:4]),
            "recipients": (swapped_signature(P[0]), *P[1:4]),
        },
        InvalidSignature,
    ),
    (
        "a DKG key vouched for under another index is refused",
        {
            "dealers": (participant(1, 0, signed_index=2), *P[1:4]),
            "recipients": (participant(1, 0, signed_index=2), *P[1:4]),
        },
        InvalidSignature,
    ),
]


@pytest.mark.parametrize(
    ("changes", "error"), [(c, e) for _, c, e in CONFIG_CASES], ids=[n for n, _, _ in CONFIG_CASES]
)
def test_sharing_config_checks(changes: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        config_with(**changes)
    assert type(info.value) is error, repr(info.value)


def test_a_valid_config_is_accepted() -> None:
    cfg = config_with()
    assert cfg.dealer_indices == [PI(1), PI(2), PI(3), PI(4)]
