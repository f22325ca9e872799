"""A member paused after it finalized a refresh attempt deals in the next attempt when it
wakes; the polynomial it dealt (whose constant term is its old share) must be gone when
the run ends, not kept with the higher attempt's records for the fork choice.

Real ``NodeService``s with their SQLite stores (``tests/stored_committee.py``), every
message through the codec; n = 4, t = 3, all honest. A mobile adversary reads members 3
and 4 in epoch 0 (t-1) and member 1 in epoch 1 after its retained share is released:
within the per-epoch bound, it must not find a third epoch-0 share.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from stored_committee import Committee, StoredNode, mesh_for

from mpc.dkg.session import Phase
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.math.poly import interpolate_at
from mpc.membership import Refresh


@pytest.mark.parametrize("seed", [7, 8])
def test_a_higher_attempts_dealt_polynomial_is_erased_when_the_run_ends(
    tmp_path: Path, seed: int
) -> None:
    c = Committee(tmp_path, 4, 3, seed=seed, period=20.0)
    mesh = mesh_for(c, lambda s, to, m, now: None)
    mesh.run_until(20.0)
    assert all(c.core(i).share is not None for i in range(1, 5))
    mpk = c.core(1).state.mpk
    # The adversary reads members 3 and 4 in epoch 0: t - 1 of them.
    epoch0 = {i: c.core(i).share.value.value for i in (3, 4)}
    share1 = c.core(1).share.value.value  # only to show what a leaked record would give

    pid = c.core(1).propose(Refresh())
    for i in (2, 3):
        c.core(i).approve(pid)
    while c.core(1).state.pending is None:
        mesh.run_until(mesh.now + 1.0)
        assert mesh.now < 200.0
    st = c.core(1).state
    s1 = c.core(1)._reshare_config(st, 1).schedule
    wake = math.ceil((s1.key_end + 0.01) * 2) / 2  # on both tick grids
    old_public_share_1 = st.public_shares[PI(1)]

    # Pause member 1 right after the step in which it finalized attempt 0 (and signed).
    node1: StoredNode = c.nodes[PI(1)]
    paused = []
    plain = node1.advance_time

    def advance_time(now: float) -> None:
        plain(now)
        run = node1.core._run
        if (
            not paused
            and run is not None
            and run.config.epoch == 1
            and run.config.attempt == 0
            and run.phase is Phase.CERTIFYING
        ):
            paused.append(now)
            mesh.asleep[PI(1)] = wake

    node1.advance_time = advance_time  # type: ignore[method-assign]
    while not paused:
        mesh.run_until(mesh.now + 0.5)
        assert mesh.now < 300.0
    mesh.run_until(wake + 30.0)

    core1 = c.core(1)
    assert core1.state.epoch == 1 and core1.state.certificate.transcript.attempt == 0
    assert core1.share is not None
    assert not core1.retained_epochs and c.stores[PI(1)].retained_shares() == []
    assert all(c.core(i).state.epoch == 1 for i in range(1, 5))

    # The adversary reads member 1 now (epoch 1, retained share released): its store.
    store = c.stores[PI(1)]
    found = []
    for run in store.runs():
        for key, raw in store.records(run).items():
            if len(raw) >= 32:
                a0 = int.from_bytes(raw[:32], "big")
                if a0 * G2.generator() == old_public_share_1:
                    found.append((run, key))
    assert found == [], "a record still holds member 1's epoch-0 share"
    # What such a record would give: with members 3 and 4's epoch-0 shares, ``s``.
    secret = interpolate_at([(PI(1), share1), (PI(3), epoch0[3]), (PI(4), epoch0[4])])
    assert secret * G2.generator() == mpk
    c.close()
