"""Running DKG and reshare attempts on the mesh, with byzantine members, and checking outcomes."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from byzantine import ByzantineSession, Misbehaviour
from mesh import Mesh, Node, make_nodes

from mpc.broadcast import BroadcastPayload, DigestRelay, EquivocationEvidence, PullRequest
from mpc.dkg.evidence import InvalidJustificationEvidence, ReshareConstantEvidence
from mpc.dkg.schedule import Schedule
from mpc.dkg.session import (
    DealerExcluded,
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


@dataclass
class Run:
    config: SharingConfig
    sessions: dict[ParticipantIndex, Any]
    mesh: Mesh
    honest: list[ParticipantIndex]
    nodes: dict[ParticipantIndex, Node]

    def honest_results(self) -> dict[ParticipantIndex, SharingResult]:
        out = {}
        for i in self.honest:
            r = self.sessions[i].result
            if r is not None:
                out[i] = r
        return out

    def exclusions(self, i: ParticipantIndex) -> dict[ParticipantIndex, DealerExcluded]:
        return dict(self.sessions[i].excluded)


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
) -> Run:
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
    mesh = Mesh(
        sessions,
        seed=seed,
        max_delay=DELTA / 3,
        route=make_router(adv, sched, honest, seed),
        ticks=ticks(sched),
    )
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
    return Run(cfg, sessions, mesh, honest, nodes)


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
