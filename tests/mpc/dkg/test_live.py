"""A member that was not live through a run never signs its transcript.

The attack (n = 5, t = 3, corrupt {4, 5}): dealer 5 sends a bad share to member 1 and
never justifies, so every live member excludes it. Member 3 held every deal but was
down through the respond phase; restarted after it, it sees no complaint, keeps
dealer 5 and computes another polynomial. If it signed that transcript, the corrupt
members' two partials would complete a second genesis certificate under another MPK,
and by withholding theirs from the honest transcript they would leave that one the
only certificate.
"""

from __future__ import annotations

import random
from typing import Any

from byzantine import ByzantineSession, Misbehaviour
from dkg_harness import DELTA, schedule
from forks import Wire, deal_session, forge
from mesh import Mesh, make_nodes

from mpc.dkg.session import Persist, Phase, SharingConfig, SharingSession, SigningWithheld
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.math.poly import interpolate_at

N, T = 5, 3
CORRUPT = (PI(4), PI(5))
BAD_DEALER = PI(5)
VICTIM_OF_BAD_SHARE = PI(1)
RESTARTED = PI(3)


def run_attack(seed: int = 0, *, restart: bool = True):  # type: ignore[no-untyped-def]
    nodes = make_nodes(range(1, N + 1), seed)
    parts = tuple(nodes[i].participant for i in sorted(nodes))
    sched = schedule(T)
    cfg = SharingConfig(
        kind="dkg", epoch=0, attempt=0, dealers=parts, recipients=parts, threshold=T, schedule=sched
    )
    # Down from just before the deals are decided (it holds every deal) to just
    # after the respond phase.
    kill_at = sched.deal_end - 0.2 if restart else float("inf")
    restart_at = sched.respond_end + 0.2
    rng = random.Random(f"attack-{seed}")
    sessions: dict[PI, Any] = {}
    for i in sorted(nodes):
        node = nodes[i]
        if i == BAD_DEALER:
            s = ByzantineSession(cfg, i, node.identity, node.dkg_key, rng=rng.randbytes)
            s.behaviour = Misbehaviour(
                bad_share_to=frozenset({int(VICTIM_OF_BAD_SHARE)}), justification="none"
            )
        else:
            s = SharingSession(cfg, i, node.identity, node.dkg_key, rng=rng.randbytes)
        sessions[i] = s
    honest = frozenset(i for i in nodes if i not in CORRUPT)
    wire = Wire(honest)
    state = {"dead": False, "life": 0}
    ds = deal_session(cfg)

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if sender == RESTARTED and state["life"] == 0 and now >= kill_at:
            return []  # killed: nothing more leaves the old process
        if to == RESTARTED and state["dead"]:
            return []
        wire.observe(sender, message, ds)
        if sender in CORRUPT and message.__class__.__name__ == "CertificatePartial":
            return []  # the corrupt members withhold their partials from the honest transcript
        return None

    mesh = Mesh(sessions, seed=seed, max_delay=DELTA / 3, route=route)
    if not restart:
        mesh.run_until(sched.end + 1)
        return cfg, nodes, mesh, wire, sessions[RESTARTED]
    mesh.run_until(kill_at)
    state["dead"] = True
    mesh.sessions.pop(RESTARTED)
    persisted = {e.key: e.data for e in mesh.events[RESTARTED] if isinstance(e, Persist)}
    mesh.run_until(restart_at)
    state["dead"] = False
    state["life"] = 1
    node = nodes[RESTARTED]
    new = SharingSession(
        cfg,
        RESTARTED,
        node.identity,
        node.dkg_key,
        rng=random.Random("after-restart").randbytes,
        persisted=persisted,
    )
    mesh.sessions[RESTARTED] = new
    mesh.events[RESTARTED] = []
    mesh.run_until(sched.end + 1)
    return cfg, nodes, mesh, wire, new


def test_a_member_restarted_across_the_respond_phase_does_not_sign_a_second_genesis() -> None:
    cfg, nodes, mesh, wire, restarted = run_attack()
    live = [PI(1), PI(2)]
    # The live honest members excluded the bad dealer and agree.
    for i in live:
        s = mesh.sessions[i]
        assert s.result is not None and BAD_DEALER not in s.result.qual
    agreed = mesh.sessions[PI(1)].result
    assert mesh.sessions[PI(2)].result.transcript == agreed.transcript
    # The restarted member's view kept the bad dealer: another transcript, another MPK.
    assert restarted.result is not None
    assert BAD_DEALER in restarted.result.qual
    assert restarted.result.mpk != agreed.mpk
    # Nothing the honest members released lets the corrupt members certify that
    # transcript, or anything but the agreed one.
    fork = restarted.result.transcript.hash()
    corrupt = {i: nodes[i] for i in CORRUPT}
    forged = forge(cfg, wire, corrupt, fork)
    assert forged is None, (
        f"second genesis certificate under MPK {forged.transcript.mpk.hex()[:16]}…"
    )
    assert wire.certifiable(len(CORRUPT), T) in ([], [agreed.transcript.hash()])
    # Because it was not live through the run, and did not sign.
    assert not restarted.live
    assert RESTARTED not in wire.partials.get(fork, {})
    assert restarted.withheld is not None
    assert any(isinstance(e, SigningWithheld) for e in mesh.events[RESTARTED])
    # It still computed and persisted its share of what it saw (to adopt later if that
    # is what gets certified), and that share is consistent with its own polynomial.
    stored = [e for e in mesh.events[RESTARTED] if isinstance(e, Persist) and e.key == "share"]
    assert stored and stored[0].secret
    share = restarted.result.share
    assert share is not None
    assert share.value.value * G2.generator() == restarted.result.public_shares[RESTARTED]


def test_the_live_members_shares_reconstruct_the_agreed_mpk() -> None:
    _, _, mesh, _, _ = run_attack(seed=1)
    agreed = mesh.sessions[PI(1)].result
    shares = []
    for i in (PI(1), PI(2), PI(4)):  # 4 is corrupt but ran the honest code: its share is real
        r = mesh.sessions[i].result
        assert r.transcript == agreed.transcript
        shares.append((int(i), r.share.value.value))
    assert interpolate_at(shares, 0) * G2.generator() == agreed.mpk


def test_a_member_live_through_the_whole_run_signs() -> None:
    # Control: the same attack without the restart; every honest member signs the one
    # agreed transcript and no other is certifiable.
    cfg, nodes, mesh, wire, _ = run_attack(restart=False)
    agreed = mesh.sessions[PI(1)].result.transcript.hash()
    for i in (PI(1), PI(2), PI(3)):
        s = mesh.sessions[i]
        assert s.live and s.withheld is None
        assert i in wire.partials[agreed]
    assert s.phase is Phase.DONE
    assert wire.certifiable(len(CORRUPT), T) == [agreed]
