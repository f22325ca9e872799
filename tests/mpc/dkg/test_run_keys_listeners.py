"""A leaving dealer listens to the key round: a faulty recipient can hand it a run key
that no relayer sees (``docs/protocols/broadcast.md``, Listeners). The leaving dealer
seals a share to that key; this must not get it excluded, blamed, or make a removal
fail. Every message goes through the codec on the mesh."""

from __future__ import annotations

import random

from dkg_harness import DELTA, Adversary, run_sharing, schedule, ticks
from mesh import Mesh

from mpc.broadcast import BroadcastPayload, session_id
from mpc.dkg.messages import OMITTED_ENC, DealBundle
from mpc.dkg.session import DealerExcluded, Persist, Phase, SharingConfig, SharingSession
from mpc.ids import ParticipantIndex as PI


def _reshare(
    n: int, t: int, corrupt: int, leaving: int, missed: int | None, *, trick: bool, seed: int
):  # type: ignore[no-untyped-def]
    """Reshare from ``1..n`` to everyone but ``leaving`` (threshold ``t`` kept). The
    corrupt member withholds its deal and, with ``trick``, sends its key-round traffic to
    the leaving dealer only. ``missed``: an honest member holding no old share."""
    gen = run_sharing(n, t, Adversary(), seed)
    res = gen.sessions[PI(1)].result
    old = {i: gen.sessions[i].result.share for i in gen.honest}
    if missed is not None:
        old[PI(missed)] = None
    nodes = gen.nodes
    sched = schedule(t, 100.0)
    recipients = [i for i in range(1, n + 1) if i != leaving]
    cfg = SharingConfig(
        kind="reshare",
        epoch=1,
        attempt=0,
        dealers=tuple(nodes[PI(i)].participant for i in range(1, n + 1)),
        recipients=tuple(nodes[PI(i)].participant for i in recipients),
        threshold=t,
        schedule=sched,
        old_threshold=t,
        old_public_polynomial=res.public_polynomial,
        previous_certificate_hash=bytes(32),
        admission_policy_hash=bytes(32),
    )
    rng = random.Random(f"listener-{seed}")
    sessions = {
        PI(i): SharingSession(
            cfg,
            PI(i),
            nodes[PI(i)].identity,
            nodes[PI(i)].dkg_key,
            rng=rng.randbytes,
            share=old[PI(i)],
        )
        for i in range(1, n + 1)
    }
    key_session = session_id(cfg.run_id(), b"key")
    deal_session = session_id(cfg.run_id(), b"deal")

    def route(sender, to, message, now):  # type: ignore[no-untyped-def]
        if int(sender) != corrupt:
            return None
        session = getattr(getattr(message, "header", None), "session", None)
        if trick and session == key_session:
            return None if int(to) == leaving else []
        if session == deal_session:
            return []
        return None

    mesh = Mesh(sessions, seed=seed, max_delay=DELTA / 3, route=route, ticks=ticks(sched))
    mesh.run_until(sched.end + 1)
    return sessions, mesh


def test_a_key_handed_to_a_leaving_dealer_alone_gets_it_neither_excluded_nor_blamed() -> None:
    sessions, mesh = _reshare(4, 3, corrupt=4, leaving=3, missed=None, trick=True, seed=71)
    deal = {e.key: e.data for e in mesh.events[PI(3)] if isinstance(e, Persist)}["deal"]
    bundle = DealBundle.decode(BroadcastPayload.decode(deal).payload)
    # The attack happened: the leaving dealer sealed a share to the corrupt member's key.
    assert next(s for s in bundle.shares if s.recipient == 4).enc != OMITTED_ENC
    for i in (1, 2):
        assert PI(3) not in sessions[PI(i)].excluded, sessions[PI(i)].excluded[PI(3)]
        assert PI(3) in sessions[PI(i)].qualified
        blamed = [e.dealer for e in mesh.events[PI(i)] if isinstance(e, DealerExcluded)]
        assert PI(3) not in blamed


def test_a_removal_with_one_corrupt_member_completes_despite_the_key_trick() -> None:
    """n = 5, t = 3, member 5 corrupt, honest member 4 holds no old share, honest member 3
    is removed: three honest old dealers (the old t) and three honest recipients (t)."""
    for trick in (False, True):
        sessions, _ = _reshare(5, 3, corrupt=5, leaving=3, missed=4, trick=trick, seed=73)
        for i in (1, 2, 4):
            s = sessions[PI(i)]
            assert s.phase is Phase.DONE, (trick, i, s.phase, s.failure)
            assert PI(3) in s.qualified
