"""What one peer can make a node hold or send: removed members, chain requests, early messages.

Each test is an attack through ``NodeCore.receive`` with real (codec
round-tripped) messages, on a committee that ran its genesis on the mesh.
"""

from __future__ import annotations

import hashlib
import os

from test_core import committee, run

from kms.node.core import InputRejected
from mpc.broadcast import BroadcastPayload, DigestRelay, PullRequest, SignedDigest
from mpc.codec import Message, decode
from mpc.ids import ParticipantIndex as PI
from mpc.membership import DecisionWindow, RemoveMember
from mpc.membership.messages import ChainRequest, ChainUpdate


def wire(message: Message) -> Message:
    """What the receiver gets: the message after the codec."""
    return decode(message.encode())


def chain_answers(core, to: int) -> int:  # type: ignore[no-untyped-def]
    return sum(
        1
        for ob in core.messages_to_send()
        if int(ob.to) == to and isinstance(ob.message, ChainUpdate)
    )


def test_a_removed_member_asking_for_the_chain_in_a_loop_is_metered_and_else_ignored() -> None:
    _nodes, cores = committee(5, 3, seed=2)
    mesh = run(cores, 19.0)
    pid = cores[PI(2)].propose(RemoveMember(5))
    for i in (1, 3):
        cores[PI(i)].approve(pid)
    mesh.run_until(60.0)
    core = cores[PI(1)]
    assert core.state.epoch == 1 and PI(5) not in core.state.committee.indices
    core.events()
    core.messages_to_send()
    now = mesh.now
    # The removed member asks for the whole chain as fast as it can.
    for _ in range(1000):
        core.receive(PI(5), wire(ChainRequest(0)), now, sender_epoch=1)
    answered = chain_answers(core, 5)
    assert 1 <= answered <= 8, answered  # a recently removed member may still catch up
    rejected = [e for e in core.events() if isinstance(e, InputRejected)]
    assert len(rejected) == 1000 - answered
    assert all("rate limited" in e.reason for e in rejected)
    # Anything else from it is refused: it is no longer a member.
    relay = DigestRelay(SignedDigest(bytes(32), 5, bytes(32), bytes(64)), ())
    core.receive(PI(5), wire(relay), now, sender_epoch=1)
    refused = [e.reason for e in core.events() if isinstance(e, InputRejected)]
    assert len(refused) == 1 and "not a member" in refused[0]
    # The budget refills slowly: a minute later, a few more answers, not a thousand.
    for _ in range(1000):
        core.receive(PI(5), wire(ChainRequest(0)), now + 60.0, sender_epoch=1)
    assert 1 <= chain_answers(core, 5) <= 8
    # A current member is metered the same way, independently of the removed one.
    for _ in range(1000):
        core.receive(PI(2), wire(ChainRequest(0)), now + 60.0, sender_epoch=1)
    assert 1 <= chain_answers(core, 2) <= 8


def test_one_member_flooding_early_messages_does_not_crowd_out_the_others() -> None:
    nodes, cores = committee(5, 3, seed=7)
    mesh = run(cores, 19.0)
    core = cores[PI(1)]
    st = core.state
    assert st is not None and st.epoch == 0
    cfg = core.config
    w = int((mesh.now - cfg.genesis_start) // cfg.window_period) + 1
    sched = cfg.window_schedule(w, reshare_delay=2 * cfg.delta)
    # Member 2's clock runs a little ahead: its ballot for the next window reaches member 1
    # before member 1 opened that window, so member 1 keeps it for later.
    early = DecisionWindow(st, w, sched, PI(2), nodes[PI(2)].identity, None)
    early.advance_time(sched.start)
    ballot = [ob.message for ob in early.messages_to_send() if int(ob.to) == 1]
    assert len(ballot) == 1 and isinstance(ballot[0], BroadcastPayload)
    core.messages_to_send()
    core.events()
    t0 = sched.start - 0.2
    core.receive(PI(2), wire(ballot[0]), t0, sender_epoch=0)
    # Member 5 floods member 1 with messages for sessions that do not exist (yet).
    for k in range(6000):
        junk = PullRequest(os.urandom(32), 5, k.to_bytes(32, "big"))
        core.receive(PI(5), wire(junk), t0, sender_epoch=0)
    for _ in range(40):
        payload = os.urandom(1 << 20)
        header = SignedDigest(os.urandom(32), 5, hashlib.sha256(payload).digest(), bytes(64))
        core.receive(PI(5), wire(BroadcastPayload(header, payload)), t0, sender_epoch=0)
    flood_rejected = [e for e in core.events() if isinstance(e, InputRejected)]
    # Member 1 opens the window: member 2's ballot is taken from the early messages and
    # member 1 relays its digest to everyone, as it would have on time.
    core.advance_time(sched.start + 0.05)
    relays = [
        ob
        for ob in core.messages_to_send()
        if isinstance(ob.message, DigestRelay) and ob.message.header.sender == 2
    ]
    assert sorted(int(ob.to) for ob in relays) == [2, 3, 4, 5]
    # What member 5 sent beyond its own quota was dropped and counted against it alone.
    assert flood_rejected and all(e.peer == PI(5) for e in flood_rejected)
