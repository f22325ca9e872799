"""Running DKG and reshare attempts on the mesh, with byzantine members, and checking outcomes."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from byzantine import ByzantineSession, Misbehaviour
from forks import Wire, deal_session
from mesh import Mesh, Node, make_nodes

from mpc.broadcast import BroadcastPayload, DigestRelay, EquivocationEvidence, PullRequest
from mpc.dkg.evidence import InvalidJustificationEvidence, ReshareConstantEvidence
from mpc.dkg.messages import CertificatePartial
from mpc.dkg.schedule import Schedule
from mpc.dkg.session import (
    DealerExcluded,
    Persist,
    Phase,
    SharingConfig,
    SharingResult,
    SharingSession,
)
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.math.poly import interpolate_at
from mpc.secret import SecretShare

DELTA = 1.0


def schedule(t: int, start: float = 1.0) -> Schedule:
    return Schedule(
        start=start,
        delta=DELTA,
        deal_window=2,
        respond_window=2,
        justify_window=2,
        certify_window=3,
        f=t - 1,
    )


def ticks(s: Schedule) -> list[float]:
    return [s.start, s.key_end, s.deal_end, s.respond_end, s.justify_end, s.certify_end, s.end]


@dataclass(frozen=True)
class Adversary:
    """Who misbehaves and how; message-level tricks are applied by the router."""

    behaviours: Mapping[int, Misbehaviour] = field(default_factory=dict)
    last_moment: frozenset[int] = frozenset()  # byzantine senders whose payloads reach few, late
    selective_relay: frozenset[int] = frozenset()  # byzantine relayers that relay late to half
    garbage: frozenset[int] = frozenset()  # byzantine nodes that also spray garbage and replays

    @property
    def corrupt(self) -> frozenset[int]:
        return frozenset(self.behaviours) | self.last_moment | self.selective_relay | self.garbage


CRASH_STEP = 1e-6
"""A crash at ``at`` kills the member right after its step at ``at``: of what that step
sent, a random subset is lost; everything after is."""


@dataclass(frozen=True)
class HonestFault:
    """One honest member's bad luck in a run.

    * ``restart``: killed right after its step at ``at`` (a random subset of that
      step's messages is lost), restarted at ``until`` as a new session from its
      persisted records (never, if ``until`` is past the run);
    * ``pause``: stopped from ``at`` to ``until`` (SIGSTOP, a suspended VM): no
      ticks, and what is sent to it waits until it runs again;
    * ``deaf``: no certificate partial reaches it, so it times out locally.
    """

    member: int
    kind: str
    at: float = 0.0
    until: float = 0.0
    drop: int = 0

    def interrupts(self, s: Schedule) -> bool:
        """Not live through the run: down or stopped somewhere before it would sign."""
        if self.kind == "pause":  # stopped before its step at ``at``
            return self.at <= s.justify_end and self.until > s.start
        return self.kind == "restart" and self.at < s.justify_end and self.until > s.start

    def disturbs(self, s: Schedule) -> bool:
        """Down or stopped at some time in the attempt (or deaf to partials)."""
        return self.kind == "deaf" or (self.at < s.end and self.until > s.start)


@dataclass
class Run:
    config: SharingConfig
    sessions: dict[ParticipantIndex, Any]
    mesh: Mesh
    honest: list[ParticipantIndex]
    nodes: dict[ParticipantIndex, Node]
    adversary: Adversary = field(default_factory=Adversary)
    faults: tuple[HonestFault, ...] = ()
    wire: Wire | None = None
    gone: dict[ParticipantIndex, list[Any]] = field(default_factory=dict)
    """Sessions of killed processes (what they did before the crash)."""

    def all_sessions(self, i: ParticipantIndex) -> list[Any]:
        return [*self.gone.get(i, []), *([self.sessions[i]] if i in self.sessions else [])]

    def last(self, i: ParticipantIndex) -> Any:
        """The member's current session, or the one it had when it was killed."""
        return self.all_sessions(i)[-1]

    def live_recipients(self) -> list[ParticipantIndex]:
        """Honest recipients live through the run by the fault plan."""
        s = self.config.schedule
        hit = {f.member for f in self.faults if f.interrupts(s)}
        return [i for i in self.honest if i in self.config.recipient_indices and i not in hit]

    def undisturbed_recipients(self) -> list[ParticipantIndex]:
        s = self.config.schedule
        hit = {f.member for f in self.faults if f.disturbs(s)}
        return [i for i in self.honest if i in self.config.recipient_indices and i not in hit]

    def honest_results(self) -> dict[ParticipantIndex, SharingResult]:
        out = {}
        for i in self.honest:
            r = self.sessions[i].result
            if r is not None:
                out[i] = r
        return out

    def exclusions(self, i: ParticipantIndex) -> dict[ParticipantIndex, DealerExcluded]:
        return dict(self.last(i).excluded) if self.all_sessions(i) else {}


def make_router(adv: Adversary, sched: Schedule, honest: list[ParticipantIndex], seed: int):  # type: ignore[no-untyped-def]
    rnd = random.Random(f"route-{seed}")
    few = honest[: max(1, len(honest) // 3)]

    def route(
        sender: ParticipantIndex, to: ParticipantIndex, message: Any, now: float
    ) -> list[float] | None:
        s = int(sender)
        if s in adv.last_moment and isinstance(message, BroadcastPayload):
            # Reach only a few honest members, a hair before the phase cut-off.
            cutoffs = [
                sched.key_cutoff,
                sched.deal_cutoff,
                sched.respond_cutoff,
                sched.justify_cutoff,
            ]
            cut = min((c for c in cutoffs if c >= now), default=now)
            return [cut - 1e-6] if to in few else []
        if s in adv.selective_relay and isinstance(message, DigestRelay):
            # Relay to half, as late as still useful; nothing to the others.
            k = len(message.relays)
            cutoffs = [
                sched.key_cutoff,
                sched.deal_cutoff,
                sched.respond_cutoff,
                sched.justify_cutoff,
            ]
            cut = min((c for c in cutoffs if c + (k + 1) * DELTA >= now), default=now)
            return [max(now, cut + k * DELTA - 1e-6)] if int(to) % 2 == 0 else []
        answering_pull = isinstance(message, BroadcastPayload) and message.header.sender != s
        if (
            s in adv.corrupt
            and (answering_pull or isinstance(message, PullRequest))
            and rnd.random() < 0.3
        ):
            return []  # byzantine members sometimes ignore pulls or leave them unanswered
        return None

    return route


def run_sharing(
    n: int,
    t: int,
    adv: Adversary,
    seed: int,
    *,
    kind: str = "dkg",
    dealers: list[int] | None = None,
    recipients: list[int] | None = None,
    old: dict[ParticipantIndex, SecretShare] | None = None,
    old_public_polynomial: tuple[G2, ...] = (),
    old_threshold: int = 0,
    epoch: int = 0,
    nodes: dict[ParticipantIndex, Node] | None = None,
    silent_honest: frozenset[int] = frozenset(),
    start: float = 1.0,
    previous_certificate_hash: bytes = bytes(32),
    admission_policy_hash: bytes = bytes(32),
    faults: tuple[HonestFault, ...] = (),
    withhold: bool = False,
) -> Run:
    """One attempt on the mesh. ``faults`` crash, pause or deafen honest members;
    ``withhold``: corrupt members never send their certificate partials (they may
    still complete any transcript later: ``Run.wire`` counts what they could)."""
    dealers = dealers or list(range(1, n + 1))
    recipients = recipients or list(range(1, n + 1))
    everyone = sorted(set(dealers) | set(recipients))
    nodes = nodes or make_nodes(everyone, seed)
    sched = schedule(t, start)
    cfg = SharingConfig(
        kind=kind,
        epoch=epoch,
        attempt=0,
        dealers=tuple(nodes[ParticipantIndex(i)].participant for i in dealers),
        recipients=tuple(nodes[ParticipantIndex(i)].participant for i in recipients),
        threshold=t,
        schedule=sched,
        old_threshold=old_threshold,
        old_public_polynomial=old_public_polynomial,
        previous_certificate_hash=previous_certificate_hash,
        admission_policy_hash=admission_policy_hash,
    )
    rng = random.Random(f"sessions-{seed}")
    sessions: dict[ParticipantIndex, Any] = {}
    for i in everyone:
        idx = ParticipantIndex(i)
        share = old.get(idx) if old else None
        if i in adv.behaviours:
            s = ByzantineSession(
                cfg, idx, nodes[idx].identity, nodes[idx].dkg_key, rng=rng.randbytes, share=share
            )
            s.behaviour = adv.behaviours[i]
        elif i in silent_honest:
            continue  # crashed for the whole run
        else:
            s = SharingSession(
                cfg, idx, nodes[idx].identity, nodes[idx].dkg_key, rng=rng.randbytes, share=share
            )
        sessions[idx] = s
    honest = [
        ParticipantIndex(i) for i in everyone if i not in adv.corrupt and i not in silent_honest
    ]
    wire = Wire(frozenset(honest))
    base = make_router(adv, sched, honest, seed)
    ds = deal_session(cfg)
    crash = {f.member: f for f in faults if f.kind == "restart"}
    deaf = {f.member for f in faults if f.kind == "deaf"}
    drops = {f.member: random.Random(f"crash-{seed}-{f.drop}") for f in crash.values()}
    dead: set[int] = set()
    reborn: set[int] = set()

    def route(
        sender: ParticipantIndex, to: ParticipantIndex, message: Any, now: float
    ) -> list[float] | None:
        s_, f = int(sender), crash.get(int(sender))
        if f is not None and s_ not in reborn and now >= f.at:
            if now >= f.at + CRASH_STEP or drops[s_].random() < 0.5:
                return []  # lost with the process
        wire.observe(sender, message, ds)
        if int(to) in dead:
            return []
        if isinstance(message, CertificatePartial):
            if int(to) in deaf or (withhold and s_ in adv.corrupt):
                return []
        return base(sender, to, message, now)

    mesh = Mesh(
        sessions,
        seed=seed,
        max_delay=DELTA / 3,
        route=route,
        ticks=ticks(sched),
    )
    gone: dict[ParticipantIndex, list[Any]] = {}
    for f in faults:
        idx = ParticipantIndex(f.member)
        if f.kind == "pause":
            mesh.at(f.at, lambda idx=idx, f=f: mesh.asleep.__setitem__(idx, f.until))
        elif f.kind == "restart":

            def kill(idx: ParticipantIndex = idx) -> None:
                dead.add(int(idx))
                if idx in mesh.sessions:
                    gone.setdefault(idx, []).append(mesh.sessions.pop(idx))

            def restart(idx: ParticipantIndex = idx) -> None:
                dead.discard(int(idx))
                reborn.add(int(idx))
                persisted = {e.key: e.data for e in mesh.events[idx] if isinstance(e, Persist)}
                mesh.sessions[idx] = SharingSession(
                    cfg,
                    idx,
                    nodes[idx].identity,
                    nodes[idx].dkg_key,
                    rng=random.Random(f"restart-{seed}-{int(idx)}").randbytes,
                    share=old.get(idx) if old else None,
                    persisted=persisted,
                )

            mesh.at(f.at + CRASH_STEP, kill)
            mesh.at(f.until, restart)
    for b in sorted(adv.garbage):
        for j in honest:
            mesh.inject(
                ParticipantIndex(b), j, random.Random(seed + b).randbytes(80), sched.start + 0.5
            )
            mesh.inject(
                ParticipantIndex(b),
                j,
                b"\x93\xa9bcast/pull\x01\xc4\x20" + bytes(32),
                sched.deal_cutoff,
            )
    mesh.run_until(sched.end + 1)
    return Run(cfg, sessions, mesh, honest, nodes, adv, faults, wire, gone)


def check_safety(run: Run) -> SharingResult | None:
    """Under crashes, restarts, pauses and withheld partials:

    * at most one transcript can be certified from the partials honest members
      released (each corrupt recipient adds one for any transcript), and every
      certificate an honest member completed is over it;
    * the honest recipients live through the run end alike: all fail before
      finalizing, or all hold the same result, signed, with matching shares that
      any ``t`` of reconstruct the MPK's secret (when there are ``t``);
    * liveness: when ``t`` honest recipients were undisturbed through the whole
      attempt and the run finalized, each of them completes the certificate.

    Returns the agreed result, if any."""
    cfg = run.config
    t = cfg.threshold
    assert run.wire is not None
    corrupt = [c for c in run.adversary.corrupt if ParticipantIndex(c) in cfg.recipient_indices]
    certifiable = run.wire.certifiable(len(corrupt), t)
    assert len(certifiable) <= 1, f"{len(certifiable)} transcripts certifiable"
    live = run.live_recipients()
    results = {i: run.last(i).result for i in live}
    agreed = next((r for r in results.values() if r is not None), None)
    certificates = [
        s.certificate
        for i in run.honest
        for s in run.all_sessions(i)
        if getattr(s, "certificate", None) is not None
    ]
    if agreed is None:
        assert not certificates or certifiable
        for c in certificates:
            assert c.transcript.hash() in certifiable
        return None
    h = agreed.transcript.hash()
    assert certifiable in ([], [h])
    for c in certificates:
        assert c.transcript == agreed.transcript
        c.verify(agreed.mpk)
    for i, r in results.items():
        assert r is not None, (i, run.last(i).failure)
        assert r.transcript == agreed.transcript, i
        assert run.last(i).withheld is None, i
        assert r.share is not None
        assert r.share.value.value * G2.generator() == agreed.public_shares[i]
    shares = [(int(i), r.share.value.value) for i, r in results.items()]  # type: ignore[union-attr]
    if len(shares) >= t:
        secret = interpolate_at(shares[:t], 0)
        assert secret * G2.generator() == agreed.mpk
        assert interpolate_at(shares[-t:], 0) == secret
    steady = run.undisturbed_recipients()
    if len(steady) >= t:
        for i in steady:
            assert run.sessions[i].phase is Phase.DONE, (i, run.sessions[i].failure)
    return agreed


def check_agreement(run: Run, *, expect_mpk: G2 | None = None) -> SharingResult:
    """All honest recipients finished with the same QUAL, MPK and certificate, and any
    t honest shares reconstruct a secret whose public key is the MPK."""
    cfg = run.config
    honest_recipients = [i for i in run.honest if i in cfg.recipient_indices]
    results = {i: run.sessions[i].result for i in honest_recipients}
    failures = {
        i: run.sessions[i].failure
        for i in honest_recipients
        if run.sessions[i].phase is not Phase.DONE
    }
    assert not failures, failures
    first = results[honest_recipients[0]]
    assert first is not None
    for i, r in results.items():
        assert r is not None, i
        assert r.qual == first.qual, (i, r.qual, first.qual)
        assert r.mpk == first.mpk
        assert r.public_polynomial == first.public_polynomial
        assert run.sessions[i].certificate is not None
        run.sessions[i].certificate.verify(first.mpk)
    if expect_mpk is not None:
        assert first.mpk == expect_mpk
    shares = [(i, results[i].share.value.value) for i in honest_recipients]  # type: ignore[union-attr]
    t = cfg.threshold
    secret = interpolate_at(shares[:t], 0)
    assert secret * G2.generator() == first.mpk
    assert interpolate_at(shares[-t:], 0) == secret
    for i, s in shares:
        assert s * G2.generator() == first.public_shares[i]
    return first


def check_evidence(run: Run) -> None:
    """Every excluded dealer's evidence (where given) verifies with public data only."""
    cfg = run.config
    for i in run.honest:
        if i not in cfg.recipient_indices:
            continue
        for dealer, ex in run.exclusions(i).items():
            key = run.nodes[dealer].identity.verify_key()
            ev = ex.evidence
            if isinstance(ev, EquivocationEvidence):
                ev.verify(key)
            elif isinstance(ev, InvalidJustificationEvidence):
                ev.verify(key, run=cfg.run_id())
            elif isinstance(ev, ReshareConstantEvidence):
                ev.verify(key, cfg.old_public_share(dealer), run=cfg.run_id())


FAULT_KINDS = ("restart", "pause", "deaf")
DOWN_FOR = (0.3, 1.0, 3.0, 8.0, 1000.0)
"""How long a fault lasts: from a short stall (above Δ/4) to past the run's end."""


def fault_times(s: Schedule) -> list[float]:
    """Step boundaries and a moment inside every phase: where a fault may begin."""
    half = s.delta / 2
    return [
        s.start - 0.5,
        s.start,
        s.start + half,
        s.deal_end,
        s.deal_end + half,
        s.respond_end,
        s.respond_end + half,
        s.justify_end,
        s.justify_end + half,
    ]


FaultSpec = tuple[int, str, int, int, int]
"""(member, kind, index into ``fault_times``, index into ``DOWN_FOR``, drop seed)."""


def faults_from(s: Schedule, specs: list[FaultSpec]) -> tuple[HonestFault, ...]:
    times = fault_times(s)
    return tuple(
        HonestFault(m, kind, times[k % len(times)], times[k % len(times)] + DOWN_FOR[d], drop)
        for m, kind, k, d, drop in specs
    )


def allowed_faulty(t: int, corrupt_relayers: int, *, faulty_outsider: bool) -> int:
    """Honest members that may be down or stopped in one round while the live ones
    still agree: relayers other than a slot's sender that are corrupt or not live
    number at most ``t - 1`` (docs/protocols/broadcast.md). With every faulty sender a
    relayer that is ``t - corrupt``; with a corrupt sender outside the relayers (a
    leaving dealer) one fewer."""
    return max(0, t - corrupt_relayers - (1 if faulty_outsider else 0))
