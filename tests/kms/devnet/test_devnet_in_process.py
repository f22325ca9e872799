"""The devnet scenarios of ``test_devnet.py``, in one process: every node a real
``NodeService`` built from its ``kms.app.devnet`` config and SQLite store
(``service_devnet.ServiceDevnet``), on ``net.memory`` and trio's ``MockClock``.

Same committees, same timings (on the nodes' virtual clock), same checks as the
multi-process tests they replace; a restart cancels the node's service and builds a new
one on the same store. ``test_devnet.py`` keeps the real-process, real-libp2p cases: the
genesis DKG, one SIGKILL restart and bad input through libp2p.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from devnet_helpers import add_joining_node, in_process_devnet, misbehaviour, rejected
from service_devnet import ServiceDevnet

from kms.app import devnet
from mpc.broadcast import BroadcastPayload, DigestRelay, SignedDigest
from mpc.dkg.schedule import Schedule
from mpc.membership.messages import ChainRequest, ChainUpdate
from net.codec import ENVELOPE_VERSION, MAX_FRAME_SIZE, Envelope, encode_envelope, open_envelope
from net.errors import FrameTooLarge
from net.memory import MemoryTransport
from net.peerid import peer_id_from_ed25519

Scenario = Callable[[ServiceDevnet], Awaitable[None]]


def run(tmp_path: Path, nodes: int, threshold: int, scenario: Scenario, **kwargs: Any) -> None:
    async def main() -> None:
        async with in_process_devnet(tmp_path / "devnet", nodes, threshold, **kwargs) as net:
            await scenario(net)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def all_epoch(
    net: ServiceDevnet, indices: list[int], epoch: int
) -> dict[int, dict[str, Any]] | None:
    """Statuses if every node in ``indices`` is at ``epoch`` with one master key (shares aside)."""
    sts = await net.statuses(indices)
    if any(st is None or st.get("epoch") != epoch for st in sts.values()):
        return None
    if len({st["master_public_key"] for st in sts.values() if st}) != 1:
        return None
    return {i: st for i, st in sts.items() if st}


async def assert_no_equivocation(net: ServiceDevnet, indices: list[int]) -> None:
    for i in indices:
        reasons = misbehaviour(await net.metrics(i))
        bad = {r: v for r, v in reasons.items() if "equivocat" in r.lower()}
        assert not bad, f"node {i} reports equivocation: {bad}"


# --- a member down from the start ------------------------------------------------------------


def test_late_member_catches_up_then_gets_a_share(tmp_path: Path) -> None:
    async def scenario(net: ServiceDevnet) -> None:
        early = [1, 2, 3, 4, 5, 6]
        await net.start(*early)
        sts = await net.wait_for(
            "epoch 0 at nodes 1-6", lambda: net.converged(early, epoch=0), timeout=40
        )
        mpk = sts[1]["master_public_key"]
        assert all(len(st["committee"]) == 7 for st in sts.values())

        # Node 7 starts now: it asks its peers for the chain and catches up on epoch 0.
        await net.start(7)

        async def seven_at_0() -> dict[str, Any] | None:
            s = await net.status(7)
            return s if s and s.get("epoch") == 0 else None

        st7 = await net.wait_for("node 7 to catch up on epoch 0", seven_at_0, timeout=20)
        assert st7["master_public_key"] == mpk
        assert st7["has_share"] is False
        assert [m["index"] for m in st7["committee"]] == list(range(1, 8))
        for i in early:
            assert (await net.status(i) or {}).get("epoch") == 0

        # Prompt refresh: node 7 proposes it in its ballots; the others approve it two
        # windows into the epoch; the reshare gives node 7 a share. For that node 7 must
        # not be busy with a DKG of its own: the genesis is over.
        attempt = Schedule.default(net.genesis_start, 7, 4, delta=net.delta)

        async def seven_idle() -> bool:
            return (await net.status(7) or {}).get("running", "?") is None

        await net.wait_for(
            "node 7 to stop running a genesis DKG once it holds epoch 0",
            seven_idle,
            timeout=(attempt.end - attempt.start) + 5.0,
        )
        reshare = Schedule.default(0.0, 7, 4, delta=net.delta)
        sts = await net.wait_for(
            "a later epoch in which node 7 holds a share",
            lambda: net.converged(net.indices, min_epoch=1),
            timeout=8 * net.window_period + 2 * reshare.end + 20.0,
        )
        assert {st["master_public_key"] for st in sts.values()} == {mpk}
        await assert_no_equivocation(net, net.indices)

    run(tmp_path, 7, 4, scenario, delta=0.25, start_in=7.0, window_period=4.0)


# --- a node stopped and restarted at each point of the genesis DKG ------------------------------


def run_record_keys(db: Path) -> set[str]:
    """Record keys of the node's sharing runs (decision windows left out), read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT run, key FROM records").fetchall()
    finally:
        conn.close()
    return {str(key) for run, key in rows if not bytes(run).startswith(b"window")}


RESTART_POINTS = ["before-deal", "after-deal", "after-respond", "after-justify", "after-finalize"]


@pytest.mark.parametrize("point", RESTART_POINTS)
def test_restart_during_genesis(tmp_path: Path, point: str) -> None:
    async def scenario(net: ServiceDevnet) -> None:
        victim = 4
        db = net.store_path(victim)
        s = Schedule.default(net.genesis_start, net.n, net.threshold, delta=net.delta)
        await net.start()

        async def every_status() -> bool:
            return all([await net.status(i) for i in net.indices])

        await net.wait_for("HTTP at every node", every_status, 20)

        if point == "before-deal":
            await net.wait_until(s.start - 0.8)
            assert net.now() < s.start - 0.2, "the nodes booted too slowly for this case"
            await net.stop(victim)
            assert "deal" not in run_record_keys(db)
            await net.wait_until(s.deal_cutoff + 0.05)
            await net.start(victim)
        elif point == "after-deal":
            await net.wait_for(
                "node 4 to store its deal", lambda: "deal" in run_record_keys(db), 10, 0.02
            )
            await net.stop(victim)
            assert net.now() < s.deal_cutoff, "node 4 dealt too late for this case"
            assert "response" not in run_record_keys(db)
            await net.start(victim)
            assert net.now() < s.deal_cutoff
        elif point == "after-respond":
            await net.wait_for(
                "node 4 to store its response",
                lambda: "response" in run_record_keys(db),
                15,
                0.02,
            )
            await net.stop(victim)
            assert net.now() < s.respond_cutoff, "node 4 responded too late for this case"
            await net.start(victim)
            assert net.now() < s.respond_cutoff
        elif point == "after-justify":
            await net.wait_until(s.respond_end + 0.3)
            await net.stop(victim)
            assert "response" in run_record_keys(db)
            await net.start(victim)
            assert net.now() < s.justify_cutoff
        else:

            async def certified() -> bool:
                return (await net.status(victim) or {}).get("epoch") == 0

            await net.wait_for("node 4 to certify epoch 0", certified, timeout=30)
            await net.stop(victim)
            await net.start(victim)

        sts = await net.wait_for(
            "one epoch-0 key at all four nodes, the restarted one included",
            lambda: all_epoch(net, net.indices, 0),
            timeout=max(20.0, s.end - net.now() + 15.0),
        )
        assert all(st["master_public_key"] == sts[1]["master_public_key"] for st in sts.values())
        assert all(sts[i]["has_share"] for i in (1, 2, 3))
        if point == "after-finalize":
            assert sts[victim]["has_share"] is True  # restored from the store
        await assert_no_equivocation(net, net.indices)
        # A node restarted before the end of the run has lost the deals it had received
        # and may end it without a share (a prompt refresh gives it one later); it must
        # not go on running genesis attempts of its own once it holds epoch 0.

        async def victim_idle() -> bool:
            return (await net.status(victim) or {}).get("running", "?") is None

        await net.wait_for(
            f"node {victim} to be done with genesis DKG attempts",
            victim_idle,
            timeout=max(5.0, s.next_attempt().end - net.now() + 3.0),
        )
        print(f"{point}: node {victim} has a share after its restart: {sts[victim]['has_share']}")

    run(tmp_path, 4, 3, scenario, delta=0.3, start_in=5.0, window_period=5.0)


# --- reshare 4 -> 5 -> 4 through the admin channel ---------------------------------------------


def test_add_then_remove_a_member_over_the_admin_channel(tmp_path: Path) -> None:
    async def scenario(net: ServiceDevnet) -> None:
        five = add_joining_node(net, 5)
        await net.start()
        sts = await net.wait_for(
            "epoch 0 at nodes 1-4", lambda: net.converged([1, 2, 3, 4], epoch=0), timeout=30
        )
        mpk = sts[1]["master_public_key"]

        jr = net.join_request(5, member=1, quote=devnet.quote_source(net.config_path(5)))
        assert jr["index"] == 5 and jr["addresses"] == [five["multiaddr"]]
        reply = net.admin(1, {"op": "propose", "change": "add", "join_request": jr})
        assert reply["ok"], reply
        pid = reply["proposal_id"]
        for i in (2, 3):
            assert net.admin(i, {"op": "approve", "proposal_id": pid})["ok"] is True

        sts = await net.wait_for(
            "epoch 1 with a committee of 5",
            lambda: net.converged([1, 2, 3, 4, 5], epoch=1, committee=[1, 2, 3, 4, 5]),
            timeout=45,
        )
        assert {st["master_public_key"] for st in sts.values()} == {mpk}
        assert all(st["threshold"] == 3 for st in sts.values())

        reply = net.admin(1, {"op": "propose", "change": "remove", "index": 5})
        assert reply["ok"], reply
        for i in (2, 3):
            assert (
                net.admin(i, {"op": "approve", "proposal_id": reply["proposal_id"]})["ok"] is True
            )
        sts = await net.wait_for(
            "epoch 2 with committee 1-4",
            lambda: net.converged([1, 2, 3, 4], epoch=2, committee=[1, 2, 3, 4]),
            timeout=45,
        )
        assert {st["master_public_key"] for st in sts.values()} == {mpk}

        # The removed member follows the chain but holds no share of the new epoch.
        async def five_at_2() -> dict[str, Any] | None:
            s = await net.status(5)
            return s if s and s.get("epoch") == 2 else None

        st5 = await net.wait_for("node 5 to see its removal", five_at_2, timeout=15)
        assert st5["has_share"] is False
        assert st5["master_public_key"] == mpk
        assert [m["index"] for m in st5["committee"]] == [1, 2, 3, 4]
        await assert_no_equivocation(net, net.indices)

    run(tmp_path, 4, 3, scenario, delta=0.2, start_in=5.0, window_period=5.0)


# --- scheduled refresh ----------------------------------------------------------------------------


def test_scheduled_refresh(tmp_path: Path) -> None:
    async def scenario(net: ServiceDevnet) -> None:
        await net.start()
        sts = await net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=30)
        mpk = sts[1]["master_public_key"]
        assert all(st["last_refresh"] is None for st in sts.values())

        async def refreshed() -> dict[int, dict[str, Any]] | None:
            c = await net.converged(net.indices, min_epoch=1)
            return c if c and all(st["last_refresh"] is not None for st in c.values()) else None

        sts = await net.wait_for("a refreshed epoch at every node", refreshed, timeout=40)
        assert {st["master_public_key"] for st in sts.values()} == {mpk}
        assert all(len(st["committee"]) == 3 for st in sts.values())
        await assert_no_equivocation(net, net.indices)

    run(tmp_path, 3, 2, scenario, delta=0.2, start_in=4.5, window_period=4.0, refresh_interval=2.0)


# --- bad input to a live node ----------------------------------------------------------------------


def test_bad_input_to_a_live_node(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Node 1 of a live committee at epoch 2 gets, from node 2's peer id (node 2 stopped,
    this test speaks for it) and from a stranger, frames that are not valid envelopes,
    forged senders, old epochs, a flipped signature byte and a replay: it counts and logs
    each rejection, and its state does not change. (What libp2p itself refuses, a
    stranger after the Noise handshake and an over-long length prefix, is shown by
    ``tests/net/test_libp2p_gate.py`` and ``tests/net/test_transport.py``.)"""
    caplog.set_level(logging.WARNING, logger="quorum_kms.node")

    async def scenario(net: ServiceDevnet) -> None:
        await net.start()
        sts = await net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=30)
        mpk = sts[1]["master_public_key"]

        # Two refreshes through the admin channel, so that an epoch-0 envelope is old.
        for epoch in (1, 2):
            reply = net.admin(1, {"op": "propose", "change": "refresh"})
            assert reply["ok"], reply
            assert (
                net.admin(2, {"op": "approve", "proposal_id": reply["proposal_id"]})["ok"] is True
            )
            await net.wait_for(
                f"epoch {epoch}",
                lambda e=epoch: net.converged(net.indices, epoch=e),  # type: ignore[misc]
                timeout=40,
            )

        peer1 = net.service(1).transport.local_peer
        peer2 = net.service(2).transport.local_peer
        await net.stop(2)  # from now on, this test speaks as node 2

        async def snapshot() -> tuple[int, str, dict[str, float]]:
            st = await net.status(1)
            assert st is not None and await net.health(1) == 200
            return st["epoch"], st["master_public_key"], rejected(await net.metrics(1))

        epoch0, key0, before = await snapshot()
        assert epoch0 == 2 and key0 == mpk

        async def check(reason: str, what: str, timeout: float = 10.0) -> None:
            """Node 1, still healthy and unchanged, counted one more rejection for
            ``reason`` (the metric label: the reason without culprits or details)."""
            nonlocal before

            async def counted() -> dict[str, float] | None:
                epoch, key, after = await snapshot()
                assert (epoch, key) == (epoch0, key0), f"{what} changed node 1's state"
                grew = {
                    r: v
                    for r, v in after.items()
                    if (r == reason or r.startswith(reason + " (")) and v > before.get(r, 0.0)
                }
                return after if grew else None

            before = await net.wait_for(
                f"node 1 to reject {what} as {reason!r}", counted, timeout, poll=0.01
            )

        request = ChainRequest(0)
        stranger_id = peer_id_from_ed25519(
            secrets.token_bytes(32)  # not a key anyone registered
        )
        async with (
            MemoryTransport(net.network, stranger_id) as stranger,
            MemoryTransport(net.network, peer2) as member,
        ):
            captured: list[BroadcastPayload | DigestRelay] = []

            async def collect() -> None:
                while True:
                    _, frame = await member.receive()
                    try:
                        _, msg = open_envelope(frame)
                    except ValueError:
                        continue
                    if isinstance(msg, BroadcastPayload | DigestRelay):
                        captured.append(msg)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)

                # An unknown peer with a well-formed envelope: node 1's transport refuses
                # the frame (only the committee is allowed); nothing is counted by the node.
                refused = net.running[1].transport.statistics().refused_peers
                await stranger.send(peer1, encode_envelope(Envelope.of(request, epoch=2, sender=0)))
                await net.wait_for(
                    "node 1's transport to refuse the stranger",
                    lambda: net.running[1].transport.statistics().refused_peers > refused,
                    5.0,
                    0.01,
                )
                epoch, key, after = await snapshot()
                assert (epoch, key, after) == (epoch0, key0, before)

                # A known member, with frames that are not valid envelopes.
                await member.send(peer1, b"\xc1 not msgpack at all")
                await check("envelope: malformed", "garbage bytes")
                await member.send(
                    peer1, frame_of(ENVELOPE_VERSION, "no/such-kind", 2, 2, request.encode())
                )
                await check("envelope: unknown-kind", "an unknown kind")
                await member.send(
                    peer1, frame_of(ENVELOPE_VERSION + 1, request.TYPE, 2, 2, request.encode())
                )
                await check("envelope: unknown-version", "an unknown version")

                # Over the size limit: the transport refuses to send it at all.
                with pytest.raises(FrameTooLarge):
                    await member.send(peer1, bytes(MAX_FRAME_SIZE + 1))

                # A valid envelope that claims to come from node 3.
                await member.send(peer1, encode_envelope(Envelope.of(request, epoch=2, sender=3)))
                await check("envelope names another sender", "a forged sender index")

                # An envelope for an old epoch (any message but a chain request, which a
                # member that missed epochs must be able to send).
                stale = ChainUpdate((), ())
                await member.send(peer1, encode_envelope(Envelope.of(stale, epoch=0, sender=2)))
                await check("message for an old epoch", "an old-epoch envelope")

                # A genuine broadcast message that node 1 sent to node 2 in a decision
                # window, with one signature byte flipped, sent back while the window runs.
                with trio.fail_after(6 * net.window_period):
                    while True:
                        while not captured:
                            await trio.sleep(0.01)
                        genuine = captured[-1]
                        captured.clear()
                        bad = flip_signature(genuine)
                        await member.send(
                            peer1, encode_envelope(Envelope.of(bad, epoch=2, sender=2))
                        )
                        try:
                            await check(
                                "bad sender signature on a digest", "a flipped signature byte", 3.0
                            )
                        except AssertionError:
                            continue
                        break

                # The genuine message itself, replayed: nothing changes, nothing is refused.
                await member.send(peer1, encode_envelope(Envelope.of(genuine, epoch=2, sender=2)))
                await trio.sleep(1.0)
                nursery.cancel_scope.cancel()

        epoch, key, after = await snapshot()
        assert (epoch, key) == (epoch0, key0)
        assert after == before, "the replayed genuine message was refused"
        reasons = {
            getattr(rec, "fields", {}).get("reason")
            for rec in caplog.records
            if rec.getMessage() == "input rejected"
        }
        for reason in (
            "envelope: malformed",
            "envelope: unknown-kind",
            "envelope: unknown-version",
        ):
            assert reason in reasons, f"no log line for {reason!r}: {sorted(map(str, reasons))}"
        assert await net.converged([1, 3], epoch=2) is not None

    run(tmp_path, 3, 2, scenario, delta=0.2, start_in=4.5, window_period=4.0)


def frame_of(version: int, kind: str, epoch: int, sender: int, payload: bytes) -> bytes:
    """An envelope as the wire carries it, without the checks of ``encode_envelope``."""
    return bytes(msgpack.packb([version, kind, epoch, sender, payload], use_bin_type=True))


def flip_signature(message: BroadcastPayload | DigestRelay) -> BroadcastPayload | DigestRelay:
    h = message.header
    sig = bytes([h.signature[0] ^ 0x01]) + h.signature[1:]
    header = SignedDigest(h.session, h.sender, h.digest, sig)
    if isinstance(message, BroadcastPayload):
        return BroadcastPayload(header, message.payload)
    return DigestRelay(header, message.relays)
