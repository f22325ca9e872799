"""The node core's collaborators, each through its own small surface."""

from __future__ import annotations

import pytest

from kms.node.chain_follow import ChainFollower
from kms.node.early import EarlyMessages, approx_size
from kms.node.governance import Governance, prompt_proposal
from kms.node.liveness import Liveness
from kms.node.recovery import take_token
from kms.node.retention import EARLY_ACKS_PER_MEMBER, ShareHolders
from mpc.dkg.session import STALL_FRACTION
from mpc.errors import RemoteProtocolError
from mpc.ids import ParticipantIndex as PI
from mpc.membership import Proposal, Refresh, RemoveMember, link_position, verify_recent
from mpc.membership.messages import ChainRequest
from mpc.membership.testing import forged_chain
from mpc.membership.window import LIVE_GAP_FRACTION
from mpc.reshare import Acknowledgement

DELTA = 1.0


def test_liveness_keeps_the_two_thresholds_apart() -> None:
    live = Liveness(DELTA)
    assert live.sharing_since is None and live.window_since == float("inf")
    live.observe(10.0)
    assert (live.sharing_since, live.window_since) == (10.0, 10.0)
    # A gap between the two thresholds restarts only the sharing runs' count.
    gap = (STALL_FRACTION + LIVE_GAP_FRACTION) / 2 * DELTA
    live.observe(10.0 + gap)
    assert (live.sharing_since, live.window_since) == (10.0 + gap, 10.0)
    # A gap over both restarts both.
    t = 10.0 + gap + 2 * LIVE_GAP_FRACTION * DELTA
    live.observe(t)
    assert (live.sharing_since, live.window_since) == (t, t)
    # Small steps keep both; a time from the past changes nothing.
    live.observe(t + STALL_FRACTION * DELTA / 2)
    live.observe(t - 5.0)
    assert (live.sharing_since, live.window_since) == (t, t)


def test_early_messages_make_room_from_the_senders_own_oldest() -> None:
    early = EarlyMessages()
    a, b = PI(1), PI(2)
    msgs = [ChainRequest(i) for i in range(4)]
    size = approx_size(msgs[0])
    assert early.keep(b, msgs[3], 2, 10 * size) == 0
    assert early.keep(a, msgs[0], 2, 10 * size) == 0
    assert early.keep(a, msgs[1], 2, 10 * size) == 0
    assert early.keep(a, msgs[2], 2, 10 * size) == 1  # a's oldest goes, not b's
    kept = early.take_all()
    assert [(p, m) for _, p, m, _ in kept] == [(b, msgs[3]), (a, msgs[1]), (a, msgs[2])]
    assert early.queues == {} and early.bytes == {}
    seq, peer, msg, sz = kept[0]
    early.put_back(seq, peer, msg, sz)
    early.forget({a})
    assert early.queues == {} and early.bytes == {}


def test_the_deals_budget_refills_at_its_rate() -> None:
    table: dict[PI, tuple[float, float]] = {}
    assert [take_token(table, PI(1), 0.0, 2, 0.5) for _ in range(3)] == [True, True, False]
    assert take_token(table, PI(2), 0.0, 2, 0.5)  # another member's bucket
    assert not take_token(table, PI(1), 1.0, 2, 0.5)
    assert take_token(table, PI(1), 2.0, 2, 0.5)


def test_the_chain_follower_keeps_genesis_and_the_retained_tail() -> None:
    chain = forged_chain(6, n=4, t=3)
    links = list(chain.links)
    follower = ChainFollower()
    assert follower.head_position() == -1 and not follower.is_stale(1)
    states = verify_recent(links, mpk=chain.mpk)
    follower.replace(links, states)
    assert follower.head_position() == link_position(links[-1]) == 12
    first = follower.trim(2)
    assert first == 10  # epochs 5 and 6 kept: from the epoch certificate of 5
    assert follower.links[0] is links[0] and len(follower.links) == 4
    assert sorted(follower.states) == [5, 6]
    assert follower.is_stale(4) and not follower.is_stale(5)
    assert follower.trim(2) is None
    cert = follower.epoch_certificate(6)
    assert cert is not None and cert.transcript.epoch == 6
    assert follower.epoch_certificate(3) is None


def test_governance_intent_round_trips_and_clears() -> None:
    chain = forged_chain(1, n=4, t=3)
    st = verify_recent(list(chain.links), mpk=chain.mpk)[-1]
    gov = Governance()
    mine = Proposal.of(st.epoch, st.head_hash, 1, b"\x01" * 16, RemoveMember(4))
    gov.proposals[mine.id()] = mine
    gov.approvals.add(mine.id())
    other = prompt_proposal(st, PI(2))
    gov.deferred.add(other.id())
    key, data = gov.intent_record()
    assert key == "intent-000000" and gov.intent_seq == 1
    again = Governance()
    again.restore({key: data}, None, st.head_hash, 1)
    assert again.proposals == {mine.id(): mine} and again.approvals == {mine.id()}
    assert again.deferred == {other.id()} and again.intent_seq == 1
    # A deferred approval is released once its proposal shows up in a window.
    assert list(again.deferred_seen()) == []
    again.note_window({other.id(): other}, {other.id(): {1, 2}})
    assert list(again.deferred_seen()) == [(other.id(), other)]
    assert again.deferred == set() and again.counts == {other.id(): 2}
    assert other.change == Refresh()
    again.clear()
    assert (again.proposals, again.approvals, again.seen, again.intent_seq) == ({}, set(), {}, 0)


def test_share_holders_bound_early_acknowledgements_per_member() -> None:
    chain = forged_chain(2, n=4, t=3)
    states = verify_recent(list(chain.links), mpk=chain.mpk)
    st1, st2 = states[1], states[2]
    holders = ShareHolders({})
    cert2 = st2.certificate
    ack = Acknowledgement(epoch=2, certificate_hash=cert2.hash(), index=2, signature=bytes(64))
    for _ in range(EARLY_ACKS_PER_MEMBER):
        holders.keep_early(PI(2), ack, st1)
    with pytest.raises(RemoteProtocolError, match="too many early"):
        holders.keep_early(PI(2), ack, st1)
    holders.keep_early(PI(3), ack, st1)  # another member's quota
    far = Acknowledgement(epoch=3, certificate_hash=cert2.hash(), index=2, signature=bytes(64))
    with pytest.raises(RemoteProtocolError, match="too far ahead"):
        holders.keep_early(PI(2), far, states[0])
    # Once epoch 2 is certified here, they are due; nothing for later epochs stays behind.
    assert len(holders.early_due(st2)) == EARLY_ACKS_PER_MEMBER + 1
    assert list(holders.early) == []
    # A forged acknowledgement (no valid signature) is refused and names no holder.
    with pytest.raises(RemoteProtocolError):
        holders.take(PI(2), ack, st2)
    assert holders.holders == {}


def test_sharing_configs_cache_genesis_attempts_and_follow_the_schedule() -> None:
    from mesh import make_nodes

    from kms.node.core import NodeConfig
    from kms.node.runs import SharingConfigs

    nodes = make_nodes(range(1, 5), 7)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, 5))
    cfg = NodeConfig(PI(1), genesis, 3, genesis_start=1.0, delta=DELTA)
    configs = SharingConfigs(cfg, cached=2)
    first = configs.genesis(0)
    assert configs.genesis(0) is first  # built once
    assert first.kind == "dkg" and first.dealers == genesis and first.threshold == 3
    assert first.schedule == cfg.genesis_schedule(0)
    assert configs.genesis(1).run_id() != first.run_id()
    configs.genesis(2)
    assert configs.genesis(0) is not first and configs.genesis(0) == first  # evicted, rebuilt
    chain = forged_chain(1, n=4, t=3)
    st = verify_recent(list(chain.links), mpk=chain.mpk)[-1]
    assert configs.reshare(st, 0) is None  # no change pending
