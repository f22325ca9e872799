"""Membership on a live devnet: node processes over real libp2p on loopback.

One devnet of five nodes goes through the operators' flows while a CVM keeps
asking for its app key: a join request outside the admission policy is
refused over the CLI; ``kms devnet add-node`` adds a sixth node; with node 4
offline, ``kms devnet remove-node`` removes node 6; node 4 comes back; node 5
is removed while node 3 is killed in the middle of the reshare and restarted;
the threshold changes over the CLI. The master public key and the app key
stay the same throughout, and node 5's old share is then tried against the
current epoch, and fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from devnet_helpers import Devnet, stop_all

from kms.app import devnet
from kms.app.setup import join_request
from kms.client.core import KeyReleaseError
from kms.client.http import fetch_chain, fetch_keys
from kms.node.service import share_from_bytes
from kms.store import NodeStore, PassphraseSealer
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.tkd import KeyId, combine, derive_partial, verify_combined, verify_partial

pytestmark = pytest.mark.slow


def kms(*args: str, timeout: float = 180.0) -> tuple[int, dict[str, Any]]:
    """Run ``kms ARGS --json``; the exit code and the one JSON line it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "kms.cli", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, (out.stdout, out.stderr)
    return out.returncode, json.loads(lines[0])


class CVM(threading.Thread):
    """Keeps fetching the demo app's key from whoever devnet.json lists, until stopped."""

    def __init__(self, directory: Path, mpk: str, app_id: bytes) -> None:
        super().__init__(daemon=True)
        self.directory = directory
        self.mpk = G2.from_bytes(bytes.fromhex(mpk))
        self.app_id = app_id
        self.tee = devnet.simulated_tee(directory)
        self.results: list[tuple[int, str]] = []
        self.failures: list[str] = []
        """Rounds in which the CVM got no key, even after retrying."""
        self.retried: list[str] = []
        """First attempts that failed (the test asserts there are none); a CVM would
        retry a second later."""
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for attempt in range(3):
                state = devnet.read_state(self.directory)
                urls = {ParticipantIndex(int(n["index"])): n["http_url"] for n in state["nodes"]}
                try:
                    res = fetch_keys(
                        urls,
                        self.mpk,
                        self.app_id,
                        [("app", 1)],
                        lambda rd: self.tee.quote(rd, **devnet.DEMO_MEASUREMENT),
                    )
                except KeyReleaseError as exc:
                    (self.retried if attempt < 2 else self.failures).append(
                        f"{time.time():.1f}: {exc}"
                    )
                    self.halt.wait(1.0)
                    continue
                key = res.derived[("app", 1)].app_key().secret.data
                self.results.append((res.epoch, hashlib.sha256(key).hexdigest()))
                break
            self.halt.wait(0.5)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Devnet]:
    d = Devnet.create(tmp_path / "devnet", 5, 3, delta=0.2, start_in=5.0, window_period=4.0)
    try:
        yield d
    finally:
        stop_all([d])
        # Nodes the CLI started (add-node) are not this process's children.
        state = devnet.read_state(d.directory)
        for n in state["nodes"] + state.get("removed", []):
            if n.get("pid") and int(n["index"]) not in d.procs:
                try:
                    os.kill(int(n["pid"]), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def membership_ids(net: Devnet) -> set[str]:
    """Ids of the proposals certified in node 1's chain (``GET /v1/chain``)."""
    import httpx

    from mpc.membership import MembershipCertificate
    from mpc.membership.messages import ChainUpdate

    url = devnet.node_entry(devnet.read_state(net.directory), 1)["http_url"]
    update = ChainUpdate.decode(httpx.get(url + "/v1/chain", timeout=5).content)
    return {
        MembershipCertificate.decode(raw).outcome.proposal.id().hex()
        for kind, raw in zip(update.kinds, update.links, strict=True)
        if kind == "membership"
    }


def committee_of(st: dict[str, Any]) -> list[int]:
    return [int(m["index"]) for m in st["committee"]]


def test_join_leave_threshold_while_a_cvm_keeps_its_key(net: Devnet) -> None:
    started = time.time()
    net.start()
    sts = net.wait_for("epoch 0 at all five", lambda: net.converged(net.indices, epoch=0), 40)
    mpk = sts[1]["master_public_key"]
    app = devnet.register_demo_app(net.directory, mpk)
    net.state.update(master_public_key=mpk, apps={"demo": app})
    devnet.write_state(net.directory, net.state)
    cvm = CVM(net.directory, mpk, bytes.fromhex(app))
    cvm.start()
    net.wait_for("the CVM's first key", lambda: cvm.results, 30)
    config = {i: str(net.config_path(i)) for i in net.indices}

    def reload() -> None:
        net.state = devnet.read_state(net.directory)

    try:
        # A join request whose quote shows a node image outside the admission policy.
        rogue = devnet.init_joining_node(net.directory, 9)
        jr = join_request(
            Path(rogue["config"]),
            committee_url=net.url(1),
            quote=devnet.quote_source(Path(rogue["config"]), devnet.ROGUE_NODE_MEASUREMENT),
        )
        jr_file = net.directory / "rogue-join.json"
        jr_file.write_text(json.dumps(jr))
        code, reply = kms(
            "member", "propose", "--config", config[1], "add", "--join-request", str(jr_file)
        )
        assert code == 1 and reply["ok"] is False, reply
        assert reply["reason"] == "not-admitted", reply
        assert "measurement" in reply["error"]
        code, listed = kms("member", "list", "--config", config[1])
        assert code == 0 and listed["pending_proposals"] == [], listed

        # 5 -> 6: the whole join flow on the running devnet.
        code, added = kms("devnet", "add-node", "--dir", str(net.directory))
        assert code == 0, added
        assert added["index"] == 6 and added["committee"] == [1, 2, 3, 4, 5, 6]
        assert added["master_public_key"] == mpk
        reload()
        config[6] = str(net.config_path(6))
        sts = net.wait_for(
            "epoch 1 at all six", lambda: net.converged(net.indices, epoch=1, share=None), 40
        )
        assert all(st["master_public_key"] == mpk for st in sts.values())
        code, listed = kms("member", "list", "--config", config[6])
        assert code == 0 and listed["epoch"] == 1 and listed["threshold"] == 3, listed
        assert [m["index"] for m in listed["committee"]] == [1, 2, 3, 4, 5, 6]

        # 6 -> 5 with node 4 offline during the reshare; it catches up when it returns.
        net.stop(4)
        code, removed = kms("devnet", "remove-node", "--dir", str(net.directory), "6")
        assert code == 0, removed
        assert removed["committee"] == [1, 2, 3, 4, 5] and removed["epoch"] == 2
        reload()
        assert 6 not in net.indices
        net.start(4)
        st4 = net.wait_for(
            "node 4 to catch up on epoch 2",
            lambda: s if (s := net.status(4)) and s.get("epoch") == 2 else None,
            30,
        )
        assert st4["master_public_key"] == mpk and committee_of(st4) == [1, 2, 3, 4, 5]
        # It missed the reshare, so it has no share: it asks for a prompt refresh.
        sts = net.wait_for(
            "a prompt refresh that gives node 4 a share",
            lambda: net.converged([1, 2, 3, 4, 5], min_epoch=3),
            60,
        )
        assert all(st["last_refresh"] is not None for st in sts.values())
        refreshed = sts[1]["epoch"]

        # 5 -> 4: node 5 leaves (stopped first, so its store keeps its share), and
        # node 3 is killed in the middle of the reshare and restarted at once.
        net.wait_for(
            "node 5 to hold a share of the refreshed epoch",
            lambda: (s := net.status(5)) and s.get("epoch") == refreshed and s.get("has_share"),
            30,
        )
        old5 = net.config_path(5).parent
        net.stop(5)
        reply = net.admin(1, {"op": "propose", "change": "remove", "index": 5})
        assert reply["ok"], reply
        pid = reply["proposal_id"]
        for i in (2, 3):
            assert net.admin(i, {"op": "approve", "proposal_id": pid})["ok"] is True
        code, listed = kms("member", "list", "--config", config[1])
        assert pid in [p["id"] for p in listed["pending_proposals"]], listed
        net.wait_for(
            "node 3 to run the reshare",
            lambda: (net.status(3) or {}).get("running") == "reshare",
            40,
            0.05,
        )
        net.kill(3)
        net.start(3)
        sts = net.wait_for(
            "the next epoch with committee 1-4 at nodes 1-4",
            lambda: net.converged(
                [1, 2, 3, 4], epoch=refreshed + 1, committee=[1, 2, 3, 4], share=None
            ),
            60,
        )
        assert {st["master_public_key"] for st in sts.values()} == {mpk}
        assert sum(st["has_share"] for st in sts.values()) >= 3
        # Node 3 may have lost its share with the reshare: a prompt refresh restores it.
        sts = net.wait_for(
            "every member of 1-4 with a share",
            lambda: net.converged([1, 2, 3, 4], min_epoch=refreshed + 1, committee=[1, 2, 3, 4]),
            60,
        )
        settled = sts[1]["epoch"]

        # Threshold 3 -> 2 over the CLI.
        code, proposed = kms("member", "propose", "--config", config[2], "threshold", "2")
        assert code == 0, proposed
        for i in (1, 4):
            code, approved = kms(
                "member", "approve", "--config", config[i], proposed["proposal_id"]
            )
            assert code == 0 and approved["approved"] == proposed["proposal_id"], approved
        sts = net.wait_for(
            "the next epoch with threshold 2",
            lambda: (
                c
                if (c := net.converged([1, 2, 3, 4], epoch=settled + 1, share=None))
                and all(st["threshold"] == 2 for st in c.values())
                else None
            ),
            60,
        )
        assert {st["master_public_key"] for st in sts.values()} == {mpk}
        # Two competing proposals, each with enough approvals (t = 2): exactly one is
        # certified; the loser, bound to the old epoch, is dropped and certified in a
        # later window once proposed again. A proposal only its proposer approves
        # never takes effect.
        code, lone = kms("member", "propose", "--config", config[4], "remove", "1")
        assert code == 0, lone
        code, refresh = kms("member", "propose", "--config", config[1], "refresh")
        assert code == 0, refresh
        code, raise_t = kms("member", "propose", "--config", config[3], "threshold", "3")
        assert code == 0, raise_t
        for i, prop in ((2, refresh), (2, raise_t)):
            code, approved = kms("member", "approve", "--config", config[i], prop["proposal_id"])
            assert code == 0, approved
        base = settled + 1
        net.wait_for(
            "one of the two certified",
            lambda: net.converged([1, 2, 3, 4], epoch=base + 1, share=None),
            60,
        )
        certified = membership_ids(net)
        ids = {refresh["proposal_id"], raise_t["proposal_id"]}
        assert len(certified & ids) == 1, (certified, ids)
        loser = "threshold" if refresh["proposal_id"] in certified else "refresh"
        args = ["threshold", "3"] if loser == "threshold" else ["refresh"]
        code, again = kms("member", "propose", "--config", config[1], *args)
        assert code == 0, again
        # Approved by t members of the new epoch (t is 3 if the threshold change won):
        # nobody approves a refresh just because it was proposed.
        for i in (2, 3):
            code, approved = kms("member", "approve", "--config", config[i], again["proposal_id"])
            assert code == 0, approved
        sts = net.wait_for(
            "the re-proposed change certified in a later epoch",
            lambda: net.converged([1, 2, 3, 4], epoch=base + 2, share=None),
            60,
        )
        assert again["proposal_id"] in membership_ids(net)
        assert lone["proposal_id"] not in membership_ids(net)
        assert all(st["threshold"] == 3 for st in sts.values())
        assert all(committee_of(st) == [1, 2, 3, 4] for st in sts.values())

        seen = len(cvm.results)
        last = base + 2
        net.wait_for(
            "a key from the last epoch", lambda: any(e == last for e, _ in cvm.results[seen:]), 30
        )
    finally:
        cvm.halt.set()
        cvm.join(timeout=30)

    # The CVM got one and the same key all along, from every epoch, with no failure.
    assert not cvm.failures, cvm.failures
    # Not even a first attempt failed: the client combines partials of the epoch before
    # its chain's while members switch, so a CVM sees no gap.
    assert not cvm.retried, cvm.retried
    assert {fp for _, fp in cvm.results} == {cvm.results[0][1]}
    assert {e for e, _ in cvm.results} >= {0, 1, last}, sorted({e for e, _ in cvm.results})

    # Node 5's last share, taken from its store, is of no use in the last epoch.
    with NodeStore(
        old5 / "node.db", PassphraseSealer.from_file(old5.with_name(old5.name + ".passphrase"))
    ) as store:
        cur = store.current_epoch()
        assert cur is not None and cur.share is not None
        assert cur.epoch == refreshed
        stale = share_from_bytes(cur.share)
    chain, _ = fetch_chain([n["http_url"] for n in net.nodes], G2.from_bytes(bytes.fromhex(mpk)))
    assert chain.epoch == last and ParticipantIndex(5) not in chain.public_shares
    key_id = KeyId(bytes.fromhex(app), "app", 1)
    partial5 = derive_partial(stale, key_id)
    assert not any(verify_partial(partial5, key_id, pk) for pk in chain.public_shares.values())
    with NodeStore(
        net.config_path(1).parent / "node.db",
        PassphraseSealer.from_file(net.config_path(1).parent.with_suffix(".passphrase")),
    ) as store:
        cur1 = store.current_epoch()
        assert cur1 is not None and cur1.epoch == last and cur1.share is not None
        share1 = share_from_bytes(cur1.share)
    partial1 = derive_partial(share1, key_id)
    assert verify_partial(partial1, key_id, chain.public_shares[ParticipantIndex(1)])
    assert not verify_combined(combine([partial1, partial5], 2), key_id, chain.mpk)
    print(
        f"membership flows: {time.time() - started:.0f} s, {len(cvm.results)} keys fetched, "
        f"epochs {sorted({e for e, _ in cvm.results})}, retried first attempts: {cvm.retried}"
    )
