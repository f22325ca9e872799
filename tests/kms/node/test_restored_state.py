"""What a node restores from its store, and what a node does without a share.

* a crash between the dealt polynomial's record and the deal's does not crash-loop the node;
* a restored share that does not match the chain is refused (status, metrics, no keys);
* a retained old share restored after a restart is still tracked and deleted in the end;
* a removed member that holds no share does not crash its node.

Nodes are real services with their stores (``stored_committee``) on the mesh.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stored_committee import Committee, mesh_for

from kms.node.core import (
    InputRejected,
    RetainedShareDeletable,
    RunFailed,
    ShareRefused,
    StoreRecord,
    polynomial_records,
)
from kms.node.service import share_to_bytes
from kms.store import NodeStore, TEESealer
from mpc.broadcast import BroadcastPayload
from mpc.dkg.messages import DealBundle
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.math.poly import interpolate_at
from mpc.membership import Refresh, RemoveMember
from mpc.reshare import Acknowledgement
from mpc.secret import SecretScalar, SecretShare


def test_a_crash_between_the_polynomial_and_the_deal_record_does_not_crash_loop(
    tmp_path: Path,
) -> None:
    c = Committee(tmp_path, 3, 2, seed=11)
    deal_at = c.configs[PI(3)].genesis_schedule(0).key_end
    # Node 3 deals; its process dies after the polynomial's record reached the disk and
    # before the deal's did (the deal was never sent).
    core = c.core(3)
    core.advance_time(deal_at)
    records = [e for e in core.events() if isinstance(e, StoreRecord)]
    poly = next(r for r in records if r.key == "polynomial")
    assert any(r.key == "deal" for r in records)
    c.stores[PI(3)].put_record(poly.run, poly.key, poly.data, secret=True)
    mesh = mesh_for(c, lambda *a: None)
    c.restart(mesh, [PI(3)], seed=11)
    mesh.run_until(25.0)
    assert all(c.core(i).state is not None and c.core(i).share is not None for i in (1, 2, 3))
    # The deal that went out commits to the stored polynomial.
    deals = [e for e in mesh.events[PI(3)] if isinstance(e, StoreRecord) and e.key == "deal"]
    # The polynomial is kept under a store run of its own, erased when the run ends.
    assert len(deals) == 1 and poly.run == polynomial_records(deals[0].run)
    bundle = DealBundle.decode(BroadcastPayload.decode(deals[0].data).payload)
    coeffs = [int.from_bytes(poly.data[k : k + 32], "big") for k in range(0, len(poly.data), 32)]
    assert G2.from_bytes(bundle.commitments[0]) == coeffs[0] * G2.generator()
    st = c.core(1).state
    s = interpolate_at([(i, c.core(i).share.value.value) for i in (1, 3)])
    assert s * G2.generator() == st.mpk
    c.close()


def test_a_restored_share_that_does_not_match_the_chain_is_refused(tmp_path: Path) -> None:
    c = Committee(tmp_path, 3, 2, seed=12)
    mesh = mesh_for(c, lambda *a: None)
    mesh.run_until(25.0)
    st = c.core(2).state
    assert c.core(2).share is not None
    # Node 2's store is rebuilt holding the chain but another share (a swapped or
    # corrupted file): the node must not use it.
    c.stores[PI(2)].close()
    path = tmp_path / "node2.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store = NodeStore(path, TEESealer(lambda: bytes(32)))
    store.save_identity(*c.seeds[PI(2)])
    wrong = SecretShare(PI(2), SecretScalar(c.core(1).share.value.value))
    store.switch_epoch(
        0,
        st.certificate.encode(),
        share_to_bytes(wrong),
        b"".join(st.certificate.public_polynomial),
        b"".join(p.encode() for p in st.committee.members),
    )
    c.stores[PI(2)] = store
    c.restart(mesh, [PI(2)], seed=12)
    node = c.nodes[PI(2)]
    assert node.core.share is None
    status = node.service.status()
    assert status["has_share"] is False
    assert "does not match the chain's public share" in status["share_error"]
    assert "qkms_share_refused 1" in node.service.metrics_text()
    assert any(isinstance(e, ShareRefused) for e in node.core.events())
    c.close()


def test_a_retained_share_restored_after_a_restart_is_still_tracked_and_deleted(
    tmp_path: Path,
) -> None:
    c = Committee(tmp_path, 4, 2, seed=13, period=20.0)
    hold = {"on": False}

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        # Node 1 gets no acknowledgement from 3 or 4 before its restart.
        if (
            hold["on"]
            and to == PI(1)
            and sender in (PI(3), PI(4))
            and isinstance(message, Acknowledgement)
        ):
            return []
        return None

    mesh = mesh_for(c, route)
    mesh.run_until(20.0)
    pid = c.core(1).propose(Refresh())
    c.core(2).approve(pid)
    hold["on"] = True
    while not (c.core(1).state.epoch == 1 and c.core(4).state.epoch == 1):
        mesh.run_until(mesh.now + 1.0)
        assert mesh.now < 200.0
    mesh.run_until(mesh.now + 3.0)
    assert c.stores[PI(1)].retained_shares() == [0]
    # min(n, 2t-1) = 3 acknowledgements are needed; node 1 has its own and node 2's.
    assert c.core(1).status().retained == ((0, (PI(3), PI(4))),)
    c.restart(mesh, [PI(1)], seed=13)
    assert c.core(1).status().retained == ((0, (PI(3), PI(4))),)  # rebuilt from the store
    hold["on"] = False
    mesh.run_until(mesh.now + 10.0)
    assert any(isinstance(e, RetainedShareDeletable) for e in mesh.events[PI(1)])
    assert c.stores[PI(1)].retained_shares() == []
    assert c.core(1).status().retained == ()
    c.close()


def test_a_removed_member_without_a_share_does_not_crash_its_node(tmp_path: Path) -> None:
    c = Committee(tmp_path, 5, 3, seed=14, period=20.0)
    mesh = mesh_for(c, lambda *a: None)
    mesh.run_until(20.0)
    mpk = c.core(1).state.mpk
    # Node 5 lost its share (its data directory was restored without it): it restarts
    # with the chain and no share.
    st = c.core(5).state
    c.stores[PI(5)].close()
    path = tmp_path / "node5.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store = NodeStore(path, TEESealer(lambda: bytes(32)))
    store.save_identity(*c.seeds[PI(5)])
    store.switch_epoch(
        0,
        st.certificate.encode(),
        None,
        b"".join(st.certificate.public_polynomial),
        b"".join(p.encode() for p in st.committee.members),
    )
    c.stores[PI(5)] = store
    c.restart(mesh, [PI(5)], seed=14)
    assert c.core(5).share is None
    # The committee removes it; the reshare that follows has it as a dealer with no share.
    pid = c.core(1).propose(RemoveMember(5))
    for i in (2, 3):
        c.core(i).approve(pid)
    mesh.run_until(90.0)  # raised out of the node before
    for i in (1, 2, 3, 4):
        st = c.core(i).state
        assert st.epoch == 1 and [int(x) for x in st.committee.indices] == [1, 2, 3, 4]
    assert c.core(5).state.epoch == 1 and c.core(5).share is None
    s = interpolate_at([(i, c.core(i).share.value.value) for i in (1, 2, 4)])
    assert s * G2.generator() == mpk
    assert not any(
        isinstance(e, RunFailed | InputRejected) and "own old share" in str(e)
        for e in mesh.events[PI(5)]
    )
    c.close()


def test_node_init_keeps_the_passphrase_outside_the_data_directory(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import tomllib

    from typer.testing import CliRunner

    from kms.cli import app
    from kms.store import PassphraseSealer, SealError

    def open_store(directory: Path) -> NodeStore:
        node = tomllib.loads((directory / "node.toml").read_text())["node"]
        if "passphrase_file" in node:
            return NodeStore(
                directory / "node.db",
                PassphraseSealer.from_file(directory / node["passphrase_file"]),
            )
        return NodeStore(directory / "node.db", PassphraseSealer.from_env(node["passphrase_env"]))

    runner = CliRunner()
    node = tmp_path / "data" / "n1"
    result = runner.invoke(app, ["node", "init", "--dir", str(node), "--json"])
    assert result.exit_code == 0, result.output
    secret = (tmp_path / "data" / "n1.passphrase").read_text().strip()
    assert len(secret) == 64
    # A copy of the data directory alone holds no passphrase.
    for f in node.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    with open_store(node) as store:
        assert store.load_identity() is not None
    # Or from an environment variable: no passphrase file at all.
    env_node = tmp_path / "data" / "n2"
    monkeypatch.setenv("N2_PASSPHRASE", "x" * 40)
    result = runner.invoke(
        app, ["node", "init", "--dir", str(env_node), "--passphrase-env", "N2_PASSPHRASE"]
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "data" / "n2.passphrase").exists()
    with open_store(env_node) as store:
        assert store.load_identity() is not None
    monkeypatch.setenv("N2_PASSPHRASE", "y" * 40)
    try:
        open_store(env_node).close()
        raise AssertionError("a wrong passphrase opened the store")
    except SealError:
        pass
