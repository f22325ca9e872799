"""A member that floods a decision window with early outcome partials crowds out nobody.

Outcome partials that arrive before a member has decided the window are kept
for later. An attacker who is a member may send as many as it likes (each
names it as the signer, so each passes the sender check); the honest members'
early partials must still be kept, or a member that decides a little later
than the others never collects ``t`` signatures.
"""

from __future__ import annotations

from typing import Any

from mesh import Mesh
from test_membership import SCHED, genesis, proposal

from mpc.broadcast import Outbound
from mpc.ids import ParticipantIndex as PI
from mpc.membership import DecisionWindow, OutcomePartial, Refresh, WindowPhase

LAG = 0.9
"""How much later than the others the slow member sees time (Δ = 1: within a Δ)."""


class Lagging:
    """A member whose clock runs ``LAG`` behind: it decides after the others sent partials."""

    def __init__(self, inner: DecisionWindow) -> None:
        self.inner = inner

    def receive(self, peer: PI, message: Any, now: float) -> None:
        self.inner.receive(peer, message, now - LAG)

    def advance_time(self, now: float) -> None:
        self.inner.advance_time(now - LAG)

    def messages_to_send(self) -> list[Outbound]:
        return self.inner.messages_to_send()

    def events(self) -> list[Any]:
        return self.inner.events()


def _run(flood: int) -> tuple[dict[PI, DecisionWindow], Mesh]:
    _run_, _res, state, shares, nodes = genesis(5, 3, seed=40)
    p = proposal(state, 2, Refresh())
    ids = (p.id(),)
    ballots = {1: ((), ids), 2: ((p,), ids), 3: ((), ids), 4: ((), ids)}
    windows = {
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
    sessions: dict[PI, Any] = dict(windows)
    sessions[PI(1)] = Lagging(windows[PI(1)])
    f = state.threshold - 1
    ticks = [SCHED.start + k * 0.1 for k in range(int((SCHED.sign_end(f) + 2 - SCHED.start) * 10))]
    mesh = Mesh(sessions, seed=3, max_delay=0.3, ticks=ticks)
    # Member 5 floods member 1 with partials over outcomes nobody decided, early in the window.
    for k in range(flood):
        junk = OutcomePartial(5, k.to_bytes(32, "big"), bytes(48))
        mesh.inject(PI(5), PI(1), junk.encode(), at=SCHED.start + 0.5)
    mesh.run_until(SCHED.sign_end(f) + 2)
    return windows, mesh


def test_honest_early_partials_survive_a_flood_from_one_member() -> None:
    windows, _ = _run(flood=1000)
    # The slow member decided after members 2..4 had sent their partials: those were early.
    assert all(w.phase is WindowPhase.DECIDED for w in windows.values())
    assert windows[PI(1)].certificate is not None
    fps = {w.certificate.fingerprint() for w in windows.values() if w.certificate}
    assert len(fps) == 1


def test_without_a_flood_the_slow_member_certifies_too() -> None:
    windows, _ = _run(flood=0)
    assert windows[PI(1)].phase is WindowPhase.DECIDED
