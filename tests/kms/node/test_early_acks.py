"""Early acknowledgements: one corrupt member flooding an honest member with
acknowledgements of epochs it has not certified yet cannot push out a genuine one, nor
make the node report a certified epoch with fewer than t share holders when every
honest member holds its share. Every honest message is delivered within Δ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stored_committee import DELTA, Committee, mesh_for

from kms.node.core import ShareHoldersBelowThreshold
from mpc.dkg.messages import CertificatePartial
from mpc.ids import ParticipantIndex as PI
from mpc.membership.messages import ChainUpdate
from mpc.reshare import Acknowledgement


def test_a_flood_of_early_acknowledgements_raises_no_false_alarm(tmp_path: Path) -> None:
    c = Committee(tmp_path, 3, 2, seed=41)  # 1, 2 honest; 3 corrupt
    sched = c.configs[PI(1)].genesis_schedule(0)

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if isinstance(message, CertificatePartial) and to == PI(1):
            if sender == PI(3):
                return []  # the corrupt member withholds its partial from 1
            return [now + 0.9 * DELTA]  # honest 2 -> 1: slow but within Δ
        if isinstance(message, ChainUpdate) and to == PI(1):
            return [now + 0.9 * DELTA]  # slow but within Δ
        return None

    mesh = mesh_for(c, route)
    t = sched.justify_end
    while c.core(2).state is None:
        t += 0.01
        mesh.run_until(t)
    mesh.run_until(t + 0.4 * DELTA)  # 2's acknowledgement has reached 1 (early: 1 has no chain)
    assert c.core(1).state is None and len(c.core(1)._early_acks) >= 1
    # Corrupt 3 floods 1100 bogus acknowledgements of epoch 5 and of the next epoch.
    junk = [Acknowledgement(e, bytes(32), 3, bytes(64)).encode() for e in (5, 1)]
    for k in range(1100):
        mesh.inject(PI(3), PI(1), junk[k % 2], mesh.now + 0.00001 * (k + 1))
    mesh.run_until(sched.certify_end + 20 * DELTA)
    s1 = c.core(1).status()
    s2 = c.core(2).status()
    assert s1.has_share and s2.has_share  # both honest members hold their shares
    assert PI(2) in s1.share_holders
    assert not s1.share_holders_below_threshold
    assert not any(isinstance(e, ShareHoldersBelowThreshold) for e in mesh.events[PI(1)])
    c.close()
