"""Devnets of real node processes on loopback, talking real libp2p.

What only real processes show: the genesis DKG of four ``kms node run`` processes over
libp2p, a node killed with SIGKILL after the genesis and restarted from its store, and a
node's prompt clean exit on SIGTERM. The tests share one devnet (``kms.app.devnet.create`` in a module temporary directory),
whose processes the fixture's finalizer stops, whatever happened; on failure pytest shows
the tail of every node's ``node.log``. Each test waits for the committee to agree first,
so they run in any order.

The other devnet scenarios (a late member, a restart at each point of the genesis DKG,
add and remove a member, scheduled refresh, bad input to a live node) run in process in
``test_devnet_in_process.py``: the same node services on their SQLite stores, on
``net.memory`` and virtual time.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devnet_helpers import Devnet, misbehaviour, stop_all

from kms.app import devnet
from kms.app.config import load
from kms.store import NodeStore, PassphraseSealer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """One devnet of 4 nodes (t = 3), started; every process is stopped at the end."""
    d = Devnet.create(
        tmp_path_factory.mktemp("devnet") / "devnet",
        4,
        3,
        delta=0.5,
        start_in=10.0,
        window_period=5.0,
    )
    try:
        d.start()
        yield d
    finally:
        stop_all([d])


def all_epoch(net: Devnet, indices: list[int], epoch: int) -> dict[int, dict[str, Any]] | None:
    """Statuses if every node in ``indices`` is at ``epoch`` with one master key (shares aside)."""
    sts = net.statuses(indices)
    if any(st is None or st.get("epoch") != epoch for st in sts.values()):
        return None
    if len({st["master_public_key"] for st in sts.values()}) != 1:
        return None
    return {i: st for i, st in sts.items() if st}


def assert_no_equivocation(net: Devnet, indices: list[int]) -> None:
    for i in indices:
        reasons = misbehaviour(net.metrics(i))
        bad = {r: v for r, v in reasons.items() if "equivocat" in r.lower()}
        assert not bad, f"node {i} reports equivocation: {bad}\n{net.report()}"


# --- 1. genesis -------------------------------------------------------------------------------


def test_four_node_genesis_dkg(net: Devnet) -> None:
    sts = net.wait_for(
        "epoch 0 with one key and a share at every node",
        lambda: net.converged(net.indices, epoch=0),
        timeout=90,
    )
    state = devnet.read_state(net.directory)
    expected = {int(n["index"]): n["peer_id"] for n in state["nodes"]}
    mpk = sts[1]["master_public_key"]
    assert isinstance(mpk, str) and len(bytes.fromhex(mpk)) == 96  # a compressed G2 point
    for i, st in sts.items():
        assert st["index"] == i
        assert st["peer_id"] == expected[i]
        assert st["epoch"] == 0
        assert st["threshold"] == 3
        assert st["master_public_key"] == mpk
        assert st["has_share"] is True
        assert st["healthy"] is True
        assert {m["index"]: m["peer_id"] for m in st["committee"]} == expected
        assert net.health(i) == 200
    assert_no_equivocation(net, net.indices)


# --- 2. a node killed after the genesis and restarted ---------------------------------------------


def test_sigkill_after_genesis_and_restart(net: Devnet) -> None:
    """SIGKILL, not a clean stop: the restarted process finds its share in its store.
    (A restart at each point of the genesis DKG: ``test_devnet_in_process.py``.)"""
    victim = 4
    sts = net.wait_for(
        "epoch 0 at every node", lambda: net.converged(net.indices, epoch=0), timeout=90
    )
    mpk = sts[1]["master_public_key"]
    net.kill(victim)
    net.start(victim)
    sts = net.wait_for(
        "one epoch-0 key at all four nodes, the restarted one included",
        lambda: all_epoch(net, net.indices, 0),
        timeout=20.0,
    )
    assert all(st["master_public_key"] == mpk for st in sts.values())
    assert all(sts[i]["has_share"] for i in (1, 2, 3))
    assert sts[victim]["has_share"] is True  # restored from the store
    assert_no_equivocation(net, net.indices)
    net.wait_for(
        f"node {victim} to be done with genesis DKG attempts",
        lambda: (net.status(victim) or {}).get("running", "?") is None,
        timeout=20.0,
    )


# --- 3. a node stops within 2 s of SIGTERM, its store closed cleanly ---------------------------

STOP_BOUND = 5.0
"""Seconds a node may take to exit after SIGTERM here (the target is 2 s; the bound catches
hangs without failing on a loaded machine)."""


def open_node_store(config: str) -> NodeStore:
    cfg = load(config)
    assert cfg.passphrase_file is not None
    return NodeStore(cfg.store, PassphraseSealer.from_file(cfg.passphrase_file))


def test_node_exits_promptly_on_sigterm_and_its_store_reopens_intact(net: Devnet) -> None:
    sts = net.wait_for(
        "epoch 0 with a share at every node", lambda: net.converged(net.indices, epoch=0), 90
    )
    config = net.entry(1)["config"]
    with open_node_store(config) as store:  # a second reader while the node runs (WAL)
        before = (store.load_identity(), store.current_epoch(), store.chain())
    assert before[1] is not None and before[1].epoch == 0
    proc = net.procs[1]
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
        took = time.monotonic() - began
        print(f"node exited {took:.2f} s after SIGTERM (exit code {code})")
        assert code == 0, net.log_tail(1)
        assert took < STOP_BOUND, f"node took {took:.2f} s to stop"
        records = net.log_records(1)
        assert [r["msg"] for r in records if r["msg"] in ("node stopping", "node stopped")] == [
            "node stopping",
            "node stopped",
        ]
        db = Path(config).parent / "node.db"
        # The last connection to a WAL database closed cleanly: SQLite checkpointed and
        # removed the WAL (a killed process leaves it behind).
        assert not Path(str(db) + "-wal").exists()
        with open_node_store(config) as store:
            after = (store.load_identity(), store.current_epoch(), store.chain())
            store.audit_verify()
        assert after == before
        assert after[1] is not None
        assert after[1].epoch == 0 and after[1].share is not None and sts[1]["has_share"]
    finally:
        # Back for the other tests of the devnet.
        proc.wait(30)
        net.start(1)
    net.wait_for(
        "node 1 back at epoch 0 with its share",
        lambda: net.converged(net.indices, epoch=0),
        timeout=90,
    )
