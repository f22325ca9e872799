"""The dealer-tamper hook: honest answers change nothing; each deviation is caught by the others.

Every run goes through the real sessions on the mesh (messages encoded, decoded and
delivered with delays); only the tampered member is given ``tamper=``.
"""

from __future__ import annotations

import random
from typing import Any

from dkg_harness import schedule, ticks
from mesh import Mesh, make_nodes

from mpc.dkg import DealerTamper, HonestDealer
from mpc.dkg.evidence import InvalidJustificationEvidence
from mpc.dkg.messages import JustificationBundle, Response, ResponseBundle, RevealedShare
from mpc.dkg.session import (
    DealerExcluded,
    Persist,
    ResponderEquivocated,
    SharingConfig,
    SharingSession,
)
from mpc.ids import ParticipantIndex as PI
from mpc.math import R
from mpc.math.fields import scalar_from_bytes, scalar_to_bytes

N, T, BENT = 5, 3, PI(2)


class Draws:
    """An rng that records how many bytes each call drew."""

    def __init__(self, seed: str) -> None:
        self._rnd = random.Random(seed)
        self.calls: list[int] = []

    def __call__(self, n: int) -> bytes:
        self.calls.append(n)
        return self._rnd.randbytes(n)


def run(tamper: DealerTamper | None, seed: int = 7) -> tuple[Mesh, dict[PI, Draws], list[Any]]:
    nodes = make_nodes(range(1, N + 1), seed)
    sched = schedule(T)
    parts = tuple(nodes[PI(i)].participant for i in range(1, N + 1))
    cfg = SharingConfig(
        kind="dkg",
        epoch=0,
        attempt=0,
        dealers=parts,
        recipients=parts,
        threshold=T,
        schedule=sched,
    )
    draws = {PI(i): Draws(f"rng-{seed}-{i}") for i in range(1, N + 1)}
    sessions = {
        PI(i): SharingSession(
            cfg,
            PI(i),
            nodes[PI(i)].identity,
            nodes[PI(i)].dkg_key,
            rng=draws[PI(i)],
            tamper=tamper if PI(i) == BENT else None,
        )
        for i in range(1, N + 1)
    }
    wire: list[Any] = []

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        wire.append((int(sender), int(to), message.encode(), now))
        return None

    mesh = Mesh(sessions, seed=seed, max_delay=0.3, route=route, ticks=ticks(sched))
    mesh.run_until(sched.end + 1)
    return mesh, draws, wire


def excluded(mesh: Mesh, at: PI) -> dict[PI, DealerExcluded]:
    return {e.dealer: e for e in mesh.events[at] if isinstance(e, DealerExcluded)}


def honest() -> list[PI]:
    return [PI(i) for i in range(1, N + 1) if PI(i) != BENT]


def test_honest_answers_take_the_honest_path_byte_for_byte() -> None:
    plain, plain_draws, plain_wire = run(None)
    bent, bent_draws, bent_wire = run(HonestDealer())
    assert bent_wire == plain_wire  # every message, to whom and when
    assert {i: d.calls for i, d in bent_draws.items()} == {
        i: d.calls for i, d in plain_draws.items()
    }
    assert bent.events == plain.events
    assert all(s.result is not None and BENT in s.result.qual for s in bent.sessions.values())


class BadShares(HonestDealer):
    def __init__(self, justify: str) -> None:
        self.justify = justify

    def share_offset(self, config: SharingConfig, recipient: int) -> int:
        return 5 if recipient in (3, 4) else 0

    def justification(
        self, config: SharingConfig, bundle: JustificationBundle
    ) -> JustificationBundle | None:
        if self.justify == "none":
            return None
        if self.justify == "wrong":
            return JustificationBundle(bundle.dealer, bundle.shares[:-1])
        return bundle


def test_bad_shares_answered_honestly_keep_the_dealer() -> None:
    mesh, _, _ = run(BadShares("honest"))
    for i in honest():
        assert BENT not in excluded(mesh, i)
        result = mesh.sessions[i].result
        assert result is not None and BENT in result.qual
    # The complainers got their correct shares from the justification.
    assert len({mesh.sessions[i].result.mpk.to_bytes() for i in honest()}) == 1  # type: ignore[union-attr]


def test_bad_shares_without_justification_exclude_the_dealer() -> None:
    mesh, _, _ = run(BadShares("none"))
    for i in honest():
        assert excluded(mesh, i)[BENT].reason == "no justification"


def test_bad_shares_with_a_partial_justification_exclude_the_dealer() -> None:
    mesh, _, _ = run(BadShares("wrong"))
    for i in honest():
        assert excluded(mesh, i)[BENT].reason.startswith("malformed justification")


def test_bad_shares_are_never_persisted_as_the_polynomial() -> None:
    mesh, _, _ = run(BadShares("honest"))
    keys = [e.key for e in mesh.events[BENT] if isinstance(e, Persist)]
    assert "deal" in keys and "polynomial" not in keys


class Equivocate(HonestDealer):
    def equivocates_deal(self, config: SharingConfig) -> bool:
        return True


def test_an_equivocated_deal_excludes_the_dealer() -> None:
    mesh, _, _ = run(Equivocate())
    for i in honest():
        assert excluded(mesh, i)[BENT].reason == "equivocated deal"
        result = mesh.sessions[i].result
        assert result is not None and BENT not in result.qual


class EquivocalResponses(HonestDealer):
    def response(
        self, config: SharingConfig, bundle: ResponseBundle
    ) -> ResponseBundle | tuple[ResponseBundle, ResponseBundle]:
        me = bundle.responder
        return (
            ResponseBundle(me, tuple(Response(r.dealer, False) for r in bundle.responses)),
            ResponseBundle(me, tuple(Response(r.dealer, True) for r in bundle.responses)),
        )


def test_equivocated_responses_are_seen_and_answered() -> None:
    mesh, _, _ = run(EquivocalResponses())
    for i in honest():
        seen = [e.responder for e in mesh.events[i] if isinstance(e, ResponderEquivocated)]
        assert seen == [BENT]
        result = mesh.sessions[i].result
        assert result is not None and set(honest()) <= set(result.qual)


class FalseComplaint(HonestDealer):
    def response(
        self, config: SharingConfig, bundle: ResponseBundle
    ) -> ResponseBundle | tuple[ResponseBundle, ResponseBundle]:
        return ResponseBundle(
            bundle.responder,
            tuple(Response(r.dealer, r.complaint or r.dealer == 1) for r in bundle.responses),
        )


def test_a_false_complaint_is_answered_and_keeps_the_accused() -> None:
    mesh, _, _ = run(FalseComplaint())
    for i in honest():
        assert PI(1) not in excluded(mesh, i)
        result = mesh.sessions[i].result
        assert result is not None and PI(1) in result.qual


def test_wrongly_revealed_shares_leave_evidence() -> None:
    class Off(BadShares):
        def justification(
            self, config: SharingConfig, bundle: JustificationBundle
        ) -> JustificationBundle | None:
            return JustificationBundle(
                bundle.dealer,
                tuple(
                    RevealedShare(
                        s.recipient, scalar_to_bytes((scalar_from_bytes(s.share) + 1) % R)
                    )
                    for s in bundle.shares
                ),
            )

    mesh, _, _ = run(Off("wrong"))
    for i in honest():
        ev = excluded(mesh, i)[BENT]
        assert isinstance(ev.evidence, InvalidJustificationEvidence)
