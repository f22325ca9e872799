"""A member never loses a share it computed for a transcript that may still be certified.

Every node here is a real ``NodeService`` with its SQLite store (``stored_committee``);
messages go over the mesh through the codec; a restart is a new service on the same store.

The attack is the genesis failure seen at scale: some honest signers time out
locally ("too few certificate signatures by the deadline") while the others
certify; the certificate reaches them later through the chain. They must then
adopt the share they computed (and signed with), in process and after a restart.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from mesh import Mesh
from stored_committee import Committee, mesh_for

from kms.node.core import RunFailed, ShareHoldersBelowThreshold
from mpc.cert import EpochCertificate
from mpc.dkg.messages import CertificatePartial
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.math.poly import interpolate_at
from mpc.membership import Refresh
from mpc.membership.messages import ChainUpdate

TIMEOUT = "too few certificate signatures by the deadline"


def carries_epoch(message: Any, epoch: int) -> bool:
    if not isinstance(message, ChainUpdate):
        return False
    for kind, raw in zip(message.kinds, message.links, strict=True):
        if kind == "epoch" and EpochCertificate.decode(raw).transcript.epoch == epoch:
            return True
    return False


class LateSigners:
    """The network of the attack: while ``active``, no certificate partial reaches the
    ``slow`` members (so they time out locally after signing), and no chain link of
    ``epoch`` reaches them before ``hold_until`` (``None``: it never does)."""

    def __init__(self, slow: Sequence[int], epoch: int) -> None:
        self.slow = {PI(i) for i in slow}
        self.epoch = epoch
        self.active = True
        self.hold_until: float | None = None

    def __call__(self, sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if not self.active or to not in self.slow:
            return None
        if isinstance(message, CertificatePartial):
            return []
        if carries_epoch(message, self.epoch):
            if self.hold_until is None:
                return []
            return [max(now, self.hold_until) + 0.1]
        return None


def timed_out(mesh: Mesh, i: int) -> bool:
    return any(isinstance(e, RunFailed) and e.reason == TIMEOUT for e in mesh.events[PI(i)])


def assert_every_t_shares_reconstruct(c: Committee, members: Sequence[int]) -> None:
    mpk = c.core(members[0]).state.mpk
    head = c.core(members[0]).state.certificate.fingerprint()
    for i in members:
        assert c.core(i).state.certificate.fingerprint() == head  # one outcome everywhere
        core = c.core(i)
        assert core.share is not None, f"member {i} holds no share"
        assert core.state.mpk == mpk
    shares = {i: c.core(i).share.value.value for i in members}
    for group in itertools.combinations(members, c.t):
        s = interpolate_at([(i, shares[i]) for i in group])
        assert s * G2.generator() == mpk, group


@pytest.mark.parametrize("chain_first", [False, True])
def test_genesis_signers_that_time_out_adopt_their_share_when_the_certificate_comes_late(
    tmp_path: Path, chain_first: bool
) -> None:
    # chain_first: the certificate reaches 3, 4 and 5 through the chain while their run is
    # still waiting for partials; otherwise only after it failed.
    c = Committee(tmp_path, 5, 3, seed=1)
    route = LateSigners(slow=(3, 4, 5), epoch=0)
    sched = c.configs[PI(1)].genesis_schedule(0)
    route.hold_until = sched.justify_end + 0.5 if chain_first else sched.certify_end + 1.0
    mesh = mesh_for(c, route)
    mesh.run_until(sched.certify_end + 0.5)
    assert c.core(1).state is not None and c.core(2).state is not None
    for i in (3, 4, 5):
        assert timed_out(mesh, i), i  # they signed, then gave up locally
        assert (c.core(i).state is not None) == chain_first
    mesh.run_until(sched.certify_end + 15.0)
    assert_every_t_shares_reconstruct(c, [1, 2, 3, 4, 5])
    # Each knows every member holds a share; none reports the epoch as lost.
    mesh.run_until(sched.certify_end + 30.0)
    for i in range(1, 6):
        st = c.core(i).status()
        assert len(st.share_holders) == 5 and not st.share_holders_below_threshold
    c.close()


def test_genesis_signers_that_time_out_and_restart_adopt_their_persisted_share(
    tmp_path: Path,
) -> None:
    c = Committee(tmp_path, 5, 3, seed=2)
    route = LateSigners(slow=(3, 4, 5), epoch=0)  # the chain never reaches them before
    sched = c.configs[PI(1)].genesis_schedule(0)
    mesh = mesh_for(c, route)
    mesh.run_until(sched.certify_end + 0.5)
    for i in (3, 4, 5):
        assert timed_out(mesh, i) and c.core(i).state is None
    # Restart 3, 4 and 5 from their stores; now the network delivers.
    route.active = False
    c.restart(mesh, [PI(3), PI(4), PI(5)], seed=2)
    mesh.run_until(sched.certify_end + 20.0)
    assert_every_t_shares_reconstruct(c, [1, 2, 3, 4, 5])
    # The shares are stored as the epoch's share: another restart keeps them.
    c.restart(mesh, [PI(3), PI(4), PI(5)], seed=3)
    for i in (3, 4, 5):
        assert c.core(i).share is not None
    c.close()


def refresh_after_genesis(c: Committee, route: LateSigners, mesh: Mesh) -> tuple[float, Any]:
    """Genesis with no interference, then a refresh proposed and approved by everyone;
    returns the reshare's schedule once the change is certified."""
    route.active = False
    mesh.run_until(20.0)
    assert all(c.core(i).state is not None and c.core(i).share is not None for i in range(1, 6))
    mpk = c.core(1).state.mpk
    pid = c.core(1).propose(Refresh())
    for i in (2, 3):
        c.core(i).approve(pid)
    route.active = True
    while c.core(1).state.pending is None:
        mesh.run_until(mesh.now + 1.0)
        assert mesh.now < 200.0
    st = c.core(1).state
    out = st.pending.outcome
    sched = c.configs[PI(1)].reshare_schedule(out.reshare_start, 5, 3, 0)
    return sched.certify_end, mpk


def test_reshare_signers_that_time_out_adopt_their_share_when_the_certificate_comes_late(
    tmp_path: Path,
) -> None:
    c = Committee(tmp_path, 5, 3, seed=3, period=20.0)
    route = LateSigners(slow=(3, 4, 5), epoch=1)
    mesh = mesh_for(c, route)
    certify_end, mpk = refresh_after_genesis(c, route, mesh)
    route.hold_until = certify_end + 1.0
    mesh.run_until(certify_end + 0.5)
    assert c.core(1).state.epoch == 1
    for i in (3, 4, 5):
        assert timed_out(mesh, i) and c.core(i).state.epoch == 0
    mesh.run_until(certify_end + 15.0)
    assert all(c.core(i).state.epoch == 1 for i in range(1, 6))
    assert_every_t_shares_reconstruct(c, [1, 2, 3, 4, 5])
    assert c.core(1).state.mpk == mpk
    c.close()


def test_reshare_signers_that_time_out_and_restart_adopt_their_persisted_share(
    tmp_path: Path,
) -> None:
    c = Committee(tmp_path, 5, 3, seed=4, period=20.0)
    route = LateSigners(slow=(3, 4, 5), epoch=1)
    mesh = mesh_for(c, route)
    certify_end, mpk = refresh_after_genesis(c, route, mesh)
    mesh.run_until(certify_end + 0.5)
    for i in (3, 4, 5):
        assert timed_out(mesh, i) and c.core(i).state.epoch == 0
    route.active = False
    c.restart(mesh, [PI(3), PI(4), PI(5)], seed=4)
    # A restarted member asks every member for the chain on start.
    mesh.run_until(certify_end + 20.0)
    assert all(c.core(i).state.epoch == 1 for i in range(1, 6))
    assert_every_t_shares_reconstruct(c, [1, 2, 3, 4, 5])
    assert c.core(1).state.mpk == mpk
    c.close()


def test_an_epoch_with_fewer_than_t_known_share_holders_is_reported_once(
    tmp_path: Path,
) -> None:
    # Members 3, 4 and 5 sign genesis and time out locally; then their data directories
    # are wiped (what the operator guide says never to do). Only 1 and 2 hold shares of
    # the certified epoch: 2 < t = 3, and every member that knows it says so.
    c = Committee(tmp_path, 5, 3, seed=5)
    route = LateSigners(slow=(3, 4, 5), epoch=0)
    sched = c.configs[PI(1)].genesis_schedule(0)
    mesh = mesh_for(c, route)
    mesh.run_until(sched.certify_end + 0.5)
    assert c.core(1).state is not None
    assert not c.core(1).status().share_holders_below_threshold  # within the grace period
    route.active = False
    c.wipe(mesh, [PI(3), PI(4), PI(5)], seed=5)
    mesh.run_until(sched.certify_end + 40.0)
    for i in range(1, 6):
        st = c.core(i).status()
        assert st.epoch == 0
        assert st.share_holders == (PI(1), PI(2)), (i, st.share_holders)
        assert st.share_holders_below_threshold
        assert len(below(mesh, i)) == 1  # logged once
        assert below(mesh, i)[0].known == (PI(1), PI(2))
    metrics = c.nodes[PI(1)].service.metrics_text()
    assert "qkms_share_holders_below_threshold 1" in metrics
    assert "qkms_known_share_holders 2" in metrics
    assert c.nodes[PI(1)].service.status()["share_holders_below_threshold"] is True
    c.close()


def below(mesh: Mesh, i: int) -> list[ShareHoldersBelowThreshold]:
    return [e for e in mesh.events[PI(i)] if isinstance(e, ShareHoldersBelowThreshold)]
