"""Membership on a devnet in one process while a CVM keeps asking for its app key.

The flows of ``test_membership_live.py``'s scenario, on ``service_devnet.ServiceDevnet``
(every node a real ``NodeService`` from its ``kms.app.devnet`` config and SQLite store, on
``net.memory`` and trio's ``MockClock``): a join request outside the admission policy is
refused; a sixth node joins (the steps of ``kms devnet add-node``); with node 4 offline
node 6 is removed (``kms devnet remove-node``); node 4 comes back; node 5 is removed while
node 3 is stopped in the middle of the reshare and restarted; the threshold changes;
competing proposals. (The stop falls between two steps of node 3's service, not in the
middle of a store write as a SIGKILL may: ``test_devnet.py`` keeps a SIGKILL restart of a
node process, ``tests/kms/store/test_store_crash.py`` kills in the middle of writes.) The master public key and the app key stay the same throughout, and
node 5's old share is then tried against the current epoch, and fails.

The CVM is ``kms.client.http.fetch_keys`` in a worker thread, its HTTP carried to the
nodes' apps (``ServiceDevnet.transport``); the nodes' clock stands still while it fetches.
Operator commands are their admin requests (``kms member propose/approve/list`` send
exactly these) through each node's admin handler.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from devnet_helpers import in_process_devnet
from service_devnet import ServiceDevnet

from kms.app import devnet
from kms.app.operator import propose_request
from kms.client.core import KeyReleaseError
from kms.client.http import chain_from_bytes, fetch_keys
from kms.node.service import share_from_bytes
from kms.store import NodeStore, PassphraseSealer
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import MembershipCertificate
from mpc.membership.messages import ChainUpdate
from mpc.tkd import KeyId, combine, derive_partial, verify_combined, verify_partial


class CVM:
    """Keeps fetching the demo app's key from whoever ``devnet.json`` lists, a second
    apart, until stopped.

    Each fetch runs in a worker thread with the nodes' clock standing still (the
    ``MockClock`` neither runs nor jumps meanwhile), its request dated by the nodes' clock.
    """

    def __init__(self, net: ServiceDevnet, mpk: str, app_id: bytes) -> None:
        self.net = net
        self.mpk = G2.from_bytes(bytes.fromhex(mpk))
        self.app_id = app_id
        self.tee = devnet.simulated_tee(net.directory)
        self.transport = net.transport()
        self.results: list[tuple[int, str]] = []
        self.failures: list[str] = []
        """Rounds in which the CVM got no key, even after retrying."""
        self.retried: list[str] = []
        """First attempts that failed (the test asserts there are none)."""

    async def fetch(self) -> None:
        state = devnet.read_state(self.net.directory)
        urls = {ParticipantIndex(int(n["index"])): n["http_url"] for n in state["nodes"]}
        now = int(self.net.now())
        clock = trio.lowlevel.current_clock()
        assert isinstance(clock, trio.testing.MockClock)
        clock.autojump_threshold = math.inf  # the nodes' clock stands still meanwhile
        try:
            res = await self.net.in_thread(
                lambda: fetch_keys(
                    urls,
                    self.mpk,
                    self.app_id,
                    [("app", 1)],
                    lambda rd: self.tee.quote(rd, **devnet.DEMO_MEASUREMENT),
                    now=now,
                    transport=self.transport,
                )
            )
        finally:
            clock.autojump_threshold = 0
        key = res.derived[("app", 1)].app_key().secret.data
        self.results.append((res.epoch, hashlib.sha256(key).hexdigest()))

    async def run(self) -> None:
        while True:
            for attempt in range(3):
                try:
                    await self.fetch()
                except KeyReleaseError as exc:
                    (self.retried if attempt < 2 else self.failures).append(
                        f"{self.net.now():.1f}: {exc}"
                    )
                    await trio.sleep(1.0)
                    continue
                break
            await trio.sleep(1.0)


def committee_of(st: dict[str, Any]) -> list[int]:
    return [int(m["index"]) for m in st["committee"]]


async def membership_ids(net: ServiceDevnet) -> set[str]:
    """Ids of the proposals certified in node 1's chain (``GET /v1/chain``)."""
    update = ChainUpdate.decode((await net.get(1, "/v1/chain")).content)
    return {
        MembershipCertificate.decode(raw).outcome.proposal.id().hex()
        for kind, raw in zip(update.kinds, update.links, strict=True)
        if kind == "membership"
    }


def save(net: ServiceDevnet) -> None:
    devnet.write_state(net.directory, net.state)


async def propose_and_approve(
    net: ServiceDevnet, request: dict[str, Any], exclude: int
) -> tuple[str, dict[str, Any]]:
    """``kms.app.devnet.propose_and_approve``: propose at one live member, approve at every
    other live member, the flow's starting status."""
    sts = {i: await net.status(i) for i in net.indices}
    ref = max(
        (s for s in sts.values() if s and s.get("epoch") is not None),
        key=lambda s: int(s["epoch"]),
    )
    members = set(committee_of(ref))
    voters = [i for i in net.indices if i in members and sts[i] and i != exclude]
    assert len(voters) >= int(ref["threshold"]), voters
    reply = net.admin(voters[0], {"op": "propose", **request})
    assert reply["ok"], reply
    pid = str(reply["proposal_id"])
    for i in voters[1:]:
        net.admin(i, {"op": "approve", "proposal_id": pid})
    return pid, ref


async def epoch_after(
    net: ServiceDevnet, epoch: int, committee: list[int], timeout: float
) -> dict[int, dict[str, Any]]:
    """``kms.app.devnet``'s wait of add-node and remove-node: a later epoch with
    ``committee`` at every member that answers, and enough of them with a share."""

    async def check() -> dict[int, dict[str, Any]] | None:
        sts = {}
        for i in committee:
            st = await net.status(i)
            if st is None:
                continue
            if st.get("epoch") is None or st["epoch"] <= epoch or committee_of(st) != committee:
                return None
            sts[i] = st
        if not sts:
            return None
        holders = sum(1 for st in sts.values() if st.get("has_share"))
        return sts if holders >= max(int(st["threshold"]) for st in sts.values()) else None

    return dict(await net.wait_for(f"an epoch after {epoch} with {committee}", check, timeout))


async def add_node(net: ServiceDevnet) -> dict[str, Any]:
    """The steps of ``kms devnet add-node`` (``kms.app.devnet.add_node``): init the node,
    start it, its join request (quote over its record, addresses and the chain head),
    proposed at one member and approved at the others, until the new committee holds
    shares of the new epoch."""
    save(net)
    entry = devnet.init_joining_node(net.directory)
    index = int(entry["index"])
    net.add_entry(entry)
    save(net)
    await net.start(index)
    cfg = Path(entry["config"])
    jr = net.join_request(index, member=1, quote=devnet.quote_source(cfg))
    pid, ref = await propose_and_approve(net, {"change": "add", "join_request": jr}, index)
    committee = sorted([*committee_of(ref), index])
    sts = await epoch_after(net, int(ref["epoch"]), committee, 120)
    st = sts[index]
    return {
        "index": index,
        "epoch": st["epoch"],
        "committee": committee,
        "master_public_key": st["master_public_key"],
    }


async def remove_node(net: ServiceDevnet, index: int) -> dict[str, Any]:
    """The steps of ``kms devnet remove-node``: the other members remove it, then it stops."""
    pid, ref = await propose_and_approve(net, {"change": "remove", "index": index}, index)
    committee = [i for i in committee_of(ref) if i != index]
    sts = await epoch_after(net, int(ref["epoch"]), committee, 120)
    if index in net.running:
        await net.stop(index)
    gone = net.entry(index)
    net.state["nodes"] = [n for n in net.state["nodes"] if int(n["index"]) != index]
    net.state.setdefault("removed", []).append(gone)
    save(net)
    return {"epoch": sts[committee[0]]["epoch"], "committee": committee}


async def scenario(net: ServiceDevnet, nursery: trio.Nursery) -> None:
    await net.start()
    sts = await net.wait_for("epoch 0 at all five", lambda: net.converged(net.indices, epoch=0), 40)
    mpk = sts[1]["master_public_key"]
    app = devnet.register_demo_app(net.directory, mpk, admin=net.admin_by_config)
    net.state.update(master_public_key=mpk, apps={"demo": app})
    save(net)
    cvm = CVM(net, mpk, bytes.fromhex(app))
    cvm_scope = trio.CancelScope()

    async def keep_fetching() -> None:
        with cvm_scope:
            await cvm.run()

    nursery.start_soon(keep_fetching)
    await net.wait_for("the CVM's first key", lambda: cvm.results, 30)

    # A join request whose quote shows a node image outside the admission policy
    # (``kms member propose add --join-request``).
    rogue = devnet.init_joining_node(net.directory, 9)
    net.add_entry(rogue)
    jr = net.join_request(
        9,
        member=1,
        quote=devnet.quote_source(Path(rogue["config"]), devnet.ROGUE_NODE_MEASUREMENT),
    )
    net.state["nodes"] = [n for n in net.state["nodes"] if int(n["index"]) != 9]
    save(net)
    jr_file = net.directory / "rogue-join.json"
    jr_file.write_text(json.dumps(jr))
    reply = net.admin(1, propose_request("add", None, jr_file, None))
    assert reply["ok"] is False, reply
    assert reply["reason"] == "not-admitted", reply
    assert "measurement" in reply["error"]
    listed = net.admin(1, {"op": "status"})["status"]  # ``kms member list``
    assert listed["pending_proposals"] == [], listed

    # 5 -> 6: the whole join flow on the running devnet.
    added = await add_node(net)
    assert added["index"] == 6 and added["committee"] == [1, 2, 3, 4, 5, 6]
    assert added["master_public_key"] == mpk
    sts = await net.wait_for(
        "epoch 1 at all six", lambda: net.converged(net.indices, epoch=1, share=None), 40
    )
    assert all(st["master_public_key"] == mpk for st in sts.values())
    listed = net.admin(6, {"op": "status"})["status"]
    assert listed["epoch"] == 1 and listed["threshold"] == 3, listed
    assert committee_of(listed) == [1, 2, 3, 4, 5, 6]

    # 6 -> 5 with node 4 offline during the reshare; it catches up when it returns.
    await net.stop(4)
    removed = await remove_node(net, 6)
    assert removed["committee"] == [1, 2, 3, 4, 5] and removed["epoch"] == 2
    assert 6 not in net.indices
    await net.start(4)

    async def four_at_2() -> dict[str, Any] | None:
        s = await net.status(4)
        return s if s and s.get("epoch") == 2 else None

    st4 = await net.wait_for("node 4 to catch up on epoch 2", four_at_2, 30)
    assert st4["master_public_key"] == mpk and committee_of(st4) == [1, 2, 3, 4, 5]
    # It missed the reshare, so it has no share: it asks for a prompt refresh.
    sts = await net.wait_for(
        "a prompt refresh that gives node 4 a share",
        lambda: net.converged([1, 2, 3, 4, 5], min_epoch=3),
        60,
    )
    assert all(st["last_refresh"] is not None for st in sts.values())
    refreshed = sts[1]["epoch"]

    # 5 -> 4: node 5 leaves (stopped first, so its store keeps its share), and node 3
    # is stopped in the middle of the reshare and restarted at once.
    async def five_holds() -> bool:
        s = await net.status(5)
        return bool(s and s.get("epoch") == refreshed and s.get("has_share"))

    await net.wait_for("node 5 to hold a share of the refreshed epoch", five_holds, 30)
    old5 = net.config_path(5).parent
    await net.stop(5)
    reply = net.admin(1, {"op": "propose", "change": "remove", "index": 5})
    assert reply["ok"], reply
    pid = reply["proposal_id"]
    for i in (2, 3):
        assert net.admin(i, {"op": "approve", "proposal_id": pid})["ok"] is True
    listed = net.admin(1, {"op": "status"})["status"]
    assert pid in [p["id"] for p in listed["pending_proposals"]], listed

    async def three_reshares() -> bool:
        return (await net.status(3) or {}).get("running") == "reshare"

    await net.wait_for("node 3 to run the reshare", three_reshares, 40, 0.05)
    await net.stop(3)
    await net.start(3)
    sts = await net.wait_for(
        "the next epoch with committee 1-4 at nodes 1-4",
        lambda: net.converged(
            [1, 2, 3, 4], epoch=refreshed + 1, committee=[1, 2, 3, 4], share=None
        ),
        60,
    )
    assert {st["master_public_key"] for st in sts.values()} == {mpk}
    assert sum(st["has_share"] for st in sts.values()) >= 3
    # Node 3 may have lost its share with the reshare: a prompt refresh restores it.
    sts = await net.wait_for(
        "every member of 1-4 with a share",
        lambda: net.converged([1, 2, 3, 4], min_epoch=refreshed + 1, committee=[1, 2, 3, 4]),
        60,
    )
    settled = sts[1]["epoch"]

    # Threshold 3 -> 2 (``kms member propose threshold 2`` and two approvals).
    proposed = net.admin(2, propose_request("threshold", "2", None, None))
    assert proposed["ok"], proposed
    for i in (1, 4):
        approved = net.admin(i, {"op": "approve", "proposal_id": proposed["proposal_id"]})
        assert approved["ok"] is True, approved

    async def threshold_2() -> dict[int, dict[str, Any]] | None:
        c = await net.converged([1, 2, 3, 4], epoch=settled + 1, share=None)
        return c if c and all(st["threshold"] == 2 for st in c.values()) else None

    sts = await net.wait_for("the next epoch with threshold 2", threshold_2, 60)
    assert {st["master_public_key"] for st in sts.values()} == {mpk}
    # Two competing proposals, each with enough approvals (t = 2): exactly one is
    # certified; the loser, bound to the old epoch, is dropped and certified in a later
    # window once proposed again. A proposal only its proposer approves never takes effect.
    lone = net.admin(4, propose_request("remove", "1", None, None))
    assert lone["ok"], lone
    refresh = net.admin(1, propose_request("refresh", None, None, None))
    assert refresh["ok"], refresh
    raise_t = net.admin(3, propose_request("threshold", "3", None, None))
    assert raise_t["ok"], raise_t
    for i, prop in ((2, refresh), (2, raise_t)):
        approved = net.admin(i, {"op": "approve", "proposal_id": prop["proposal_id"]})
        assert approved["ok"], approved
    base = settled + 1
    await net.wait_for(
        "one of the two certified",
        lambda: net.converged([1, 2, 3, 4], epoch=base + 1, share=None),
        60,
    )
    certified = await membership_ids(net)
    ids = {refresh["proposal_id"], raise_t["proposal_id"]}
    assert len(certified & ids) == 1, (certified, ids)
    loser = "threshold" if refresh["proposal_id"] in certified else "refresh"
    again = net.admin(
        1,
        propose_request("threshold", "3", None, None)
        if loser == "threshold"
        else propose_request("refresh", None, None, None),
    )
    assert again["ok"], again
    # Approved by t members of the new epoch (t is 3 if the threshold change won):
    # nobody approves a refresh just because it was proposed.
    for i in (2, 3):
        approved = net.admin(i, {"op": "approve", "proposal_id": again["proposal_id"]})
        assert approved["ok"], approved
    sts = await net.wait_for(
        "the re-proposed change certified in a later epoch",
        lambda: net.converged([1, 2, 3, 4], epoch=base + 2, share=None),
        60,
    )
    assert again["proposal_id"] in await membership_ids(net)
    assert lone["proposal_id"] not in await membership_ids(net)
    assert all(st["threshold"] == 3 for st in sts.values())
    assert all(committee_of(st) == [1, 2, 3, 4] for st in sts.values())

    seen = len(cvm.results)
    last = base + 2
    await net.wait_for(
        "a key from the last epoch", lambda: any(e == last for e, _ in cvm.results[seen:]), 30
    )
    cvm_scope.cancel()

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
    chain = chain_from_bytes(
        (await net.get(1, "/v1/chain")).content, G2.from_bytes(bytes.fromhex(mpk))
    )
    assert chain.epoch == last and ParticipantIndex(5) not in chain.public_shares
    key_id = KeyId(bytes.fromhex(app), "app", 1)
    partial5 = derive_partial(stale, key_id)
    assert not any(verify_partial(partial5, key_id, pk) for pk in chain.public_shares.values())
    cur1 = net.running[1].store.current_epoch()
    assert cur1 is not None and cur1.epoch == last and cur1.share is not None
    partial1 = derive_partial(share_from_bytes(cur1.share), key_id)
    assert verify_partial(partial1, key_id, chain.public_shares[ParticipantIndex(1)])
    assert not verify_combined(combine([partial1, partial5], 2), key_id, chain.mpk)
    print(
        f"membership flows: {len(cvm.results)} keys fetched, "
        f"epochs {sorted({e for e, _ in cvm.results})}, retried first attempts: {cvm.retried}"
    )


@pytest.mark.slow
@pytest.mark.parallel
def test_join_leave_threshold_while_a_cvm_keeps_its_key(tmp_path: Path) -> None:
    """Long (many reshares) but computing only, on virtual time: ``parallel``."""

    async def main() -> None:
        async with (
            in_process_devnet(
                tmp_path / "devnet", 5, 3, delta=0.2, start_in=5.0, window_period=4.0
            ) as net,
            trio.open_nursery() as nursery,
        ):
            await scenario(net, nursery)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
