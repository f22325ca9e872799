"""Devnets of real node processes on loopback, talking real libp2p.

Every test starts its own committee of ``kms node run`` processes (one
``kms.app.devnet.create`` each) in ``tmp_path`` and stops every process in the
fixture's finalizer, whatever happened; on failure pytest shows the tail of
every node's ``node.log`` (printed by the finalizer). Timings are short
(``delta`` 0.2–0.3 s, genesis 4.5–7 s after the devnet is created, decision
windows every 4–5 s) so that the file runs in a few minutes on two cores.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from devnet_helpers import Devnet, misbehaviour, rejected, stop_all

from kms.app import devnet
from kms.app.setup import join_request
from kms.store import NodeStore, PassphraseSealer
from mpc.broadcast import BroadcastPayload, DigestRelay, SignedDigest
from mpc.dkg.schedule import Schedule
from mpc.membership.messages import ChainRequest, ChainUpdate
from net.codec import ENVELOPE_VERSION, MAX_FRAME_SIZE, Envelope, encode_envelope, open_envelope
from net.errors import FrameTooLarge, PeerUnreachable
from net.libp2p import Libp2pTransport
from net.libp2p.transport import encode_varint, send_raw

pytestmark = pytest.mark.slow

MakeDevnet = Callable[..., Devnet]


@pytest.fixture
def devnets(tmp_path: Path) -> Iterator[MakeDevnet]:
    """A factory of devnets; every process of every one is stopped at the end."""
    nets: list[Devnet] = []

    def make(nodes: int, threshold: int, **kwargs: Any) -> Devnet:
        net = Devnet.create(tmp_path / f"devnet-{len(nets) + 1}", nodes, threshold, **kwargs)
        nets.append(net)
        return net

    try:
        yield make
    finally:
        stop_all(nets)


def all_epoch(net: Devnet, indices: list[int], epoch: int) -> dict[int, dict[str, Any]] | None:
    """Statuses if every node in ``indices`` is at ``epoch`` with one master key (shares aside)."""
    sts = net.statuses(indices)
    if any(st is None or st.get("epoch") != epoch for st in sts.values()):
        return None
    if len({st["master_public_key"] for st in sts.values() if st}) != 1:
        return None
    return {i: st for i, st in sts.items() if st}


def assert_no_equivocation(net: Devnet, indices: list[int]) -> None:
    for i in indices:
        reasons = misbehaviour(net.metrics(i))
        bad = {r: v for r, v in reasons.items() if "equivocat" in r.lower()}
        assert not bad, f"node {i} reports equivocation: {bad}\n{net.report()}"


# --- 1. genesis -------------------------------------------------------------------------------


def test_four_node_genesis_dkg(devnets: MakeDevnet) -> None:
    net = devnets(4, 3, delta=0.2, start_in=5.0, window_period=5.0)
    net.start()
    sts = net.wait_for(
        "epoch 0 with one key and a share at every node",
        lambda: net.converged(net.indices, epoch=0),
        timeout=30,
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


# --- 2. a member down from the start ------------------------------------------------------------


def test_late_member_catches_up_then_gets_a_share(devnets: MakeDevnet) -> None:
    net = devnets(7, 4, delta=0.25, start_in=7.0, window_period=4.0)
    early = [1, 2, 3, 4, 5, 6]
    net.start(*early)
    sts = net.wait_for("epoch 0 at nodes 1-6", lambda: net.converged(early, epoch=0), timeout=40)
    mpk = sts[1]["master_public_key"]
    assert all(len(st["committee"]) == 7 for st in sts.values())

    # Node 7 starts now: it asks its peers for the chain and catches up on epoch 0.
    net.start(7)
    st7 = net.wait_for(
        "node 7 to catch up on epoch 0",
        lambda: s if (s := net.status(7)) and s.get("epoch") == 0 else None,
        timeout=20,
    )
    assert st7["master_public_key"] == mpk
    assert st7["has_share"] is False
    assert [m["index"] for m in st7["committee"]] == list(range(1, 8))
    assert all((net.status(i) or {}).get("epoch") == 0 for i in early)

    # Prompt refresh: node 7 proposes it in its ballots; the others approve it two
    # windows into the epoch; the reshare gives node 7 a share. For that node 7 must
    # not be busy with a DKG of its own: the genesis is over.
    attempt = net.schedule()
    net.wait_for(
        "node 7 to stop running a genesis DKG once it holds epoch 0",
        lambda: (net.status(7) or {}).get("running", "?") is None,
        timeout=(attempt.end - attempt.start) + 5.0,
    )
    reshare = Schedule.default(0.0, 7, 4, delta=net.delta)
    sts = net.wait_for(
        "a later epoch in which node 7 holds a share",
        lambda: net.converged(net.indices, min_epoch=1),
        # Generous: on a loaded 2-core machine a reshare attempt may fail and be retried.
        timeout=8 * net.window_period + 2 * reshare.end + 20.0,
    )
    assert {st["master_public_key"] for st in sts.values()} == {mpk}
    assert_no_equivocation(net, net.indices)


# --- 3. a node killed and restarted at each point of the genesis DKG ---------------------------------


def run_record_keys(db: Path) -> set[str]:
    """Record keys of the node's sharing runs (decision windows left out), read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT run, key FROM records").fetchall()
    finally:
        conn.close()
    return {str(key) for run, key in rows if not bytes(run).startswith(b"window")}


KILL_POINTS = ["before-deal", "after-deal", "after-respond", "after-justify", "after-finalize"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_and_restart_during_genesis(devnets: MakeDevnet, point: str) -> None:
    net = devnets(4, 3, delta=0.3, start_in=5.0, window_period=5.0)
    victim = 4
    db = net.config_path(victim).parent / "node.db"
    s = net.schedule()
    net.start()
    net.wait_for("HTTP at every node", lambda: all(net.status(i) for i in net.indices), 20)

    if point == "before-deal":
        net.wait_until(s.start - 0.8)
        assert time.time() < s.start - 0.2, "the nodes booted too slowly for this case"
        net.kill(victim)
        assert "deal" not in run_record_keys(db)
        net.wait_until(s.deal_cutoff + 0.05)
        net.start(victim)
    elif point == "after-deal":
        net.wait_for("node 4 to store its deal", lambda: "deal" in run_record_keys(db), 10, 0.02)
        net.kill(victim)
        killed = time.time()
        assert killed < s.deal_cutoff, "node 4 dealt too late for this case"
        assert "response" not in run_record_keys(db)
        net.start(victim)
        assert time.time() < s.deal_cutoff
    elif point == "after-respond":
        net.wait_for(
            "node 4 to store its response", lambda: "response" in run_record_keys(db), 15, 0.02
        )
        net.kill(victim)
        assert time.time() < s.respond_cutoff, "node 4 responded too late for this case"
        net.start(victim)
        assert time.time() < s.respond_cutoff
    elif point == "after-justify":
        net.wait_until(s.respond_end + 0.3)
        net.kill(victim)
        assert "response" in run_record_keys(db)
        net.start(victim)
        assert time.time() < s.justify_cutoff
    else:
        net.wait_for(
            "node 4 to certify epoch 0",
            lambda: (net.status(victim) or {}).get("epoch") == 0,
            timeout=30,
        )
        net.kill(victim)
        net.start(victim)

    sts = net.wait_for(
        "one epoch-0 key at all four nodes, the restarted one included",
        lambda: all_epoch(net, net.indices, 0),
        timeout=max(20.0, s.end - time.time() + 15.0),
    )
    assert all(st["master_public_key"] == sts[1]["master_public_key"] for st in sts.values())
    assert all(sts[i]["has_share"] for i in (1, 2, 3))
    if point == "after-finalize":
        assert sts[victim]["has_share"] is True  # restored from the store
    assert_no_equivocation(net, net.indices)
    # A node restarted before the end of the run has lost the deals it had received and
    # may end it without a share (a prompt refresh gives it one later); it must not go
    # on running genesis attempts of its own once it holds epoch 0.
    net.wait_for(
        f"node {victim} to be done with genesis DKG attempts",
        lambda: (net.status(victim) or {}).get("running", "?") is None,
        timeout=max(5.0, s.next_attempt().end - time.time() + 3.0),
    )
    print(f"{point}: node {victim} has a share after its restart: {sts[victim]['has_share']}")


# --- 4. reshare 4 -> 5 -> 4 through the admin channel ---------------------------------------------


def test_add_then_remove_a_member_over_the_admin_channel(devnets: MakeDevnet) -> None:
    net = devnets(4, 3, delta=0.2, start_in=5.0, window_period=5.0)
    five = net.add_node(5)
    net.start()
    sts = net.wait_for(
        "epoch 0 at nodes 1-4", lambda: net.converged([1, 2, 3, 4], epoch=0), timeout=30
    )
    mpk = sts[1]["master_public_key"]

    jr = join_request(
        Path(five["config"]),
        committee_url=net.url(1),
        quote=devnet.quote_source(Path(five["config"])),
    )
    assert jr["index"] == 5 and jr["addresses"] == [five["multiaddr"]]
    jr_file = net.directory / "join-5.json"
    jr_file.write_text(json.dumps(jr))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "kms.cli",
            "member",
            "propose",
            "--config",
            str(net.config_path(1)),
            "add",
            "--join-request",
            str(jr_file),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    pid = json.loads(out.stdout)["proposal_id"]
    for i in (2, 3):
        assert net.admin(i, {"op": "approve", "proposal_id": pid})["ok"] is True

    sts = net.wait_for(
        "epoch 1 with a committee of 5",
        lambda: net.converged([1, 2, 3, 4, 5], epoch=1, committee=[1, 2, 3, 4, 5]),
        timeout=45,
    )
    assert {st["master_public_key"] for st in sts.values()} == {mpk}
    assert all(st["threshold"] == 3 for st in sts.values())

    reply = net.admin(1, {"op": "propose", "change": "remove", "index": 5})
    assert reply["ok"], reply
    for i in (2, 3):
        assert net.admin(i, {"op": "approve", "proposal_id": reply["proposal_id"]})["ok"] is True
    sts = net.wait_for(
        "epoch 2 with committee 1-4",
        lambda: net.converged([1, 2, 3, 4], epoch=2, committee=[1, 2, 3, 4]),
        timeout=45,
    )
    assert {st["master_public_key"] for st in sts.values()} == {mpk}
    # The removed member follows the chain but holds no share of the new epoch.
    st5 = net.wait_for(
        "node 5 to see its removal",
        lambda: s if (s := net.status(5)) and s.get("epoch") == 2 else None,
        timeout=15,
    )
    assert st5["has_share"] is False
    assert st5["master_public_key"] == mpk
    assert [m["index"] for m in st5["committee"]] == [1, 2, 3, 4]
    assert_no_equivocation(net, net.indices)


# --- 5. scheduled refresh ----------------------------------------------------------------------------


def test_scheduled_refresh(devnets: MakeDevnet) -> None:
    net = devnets(3, 2, delta=0.2, start_in=4.5, window_period=4.0, refresh_interval=2.0)
    net.start()
    sts = net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=30)
    mpk = sts[1]["master_public_key"]
    assert all(st["last_refresh"] is None for st in sts.values())
    sts = net.wait_for(
        "a refreshed epoch at every node",
        lambda: (
            c
            if (c := net.converged(net.indices, min_epoch=1))
            and all(st["last_refresh"] is not None for st in c.values())
            else None
        ),
        timeout=40,
    )
    assert {st["master_public_key"] for st in sts.values()} == {mpk}
    assert all(len(st["committee"]) == 3 for st in sts.values())
    assert_no_equivocation(net, net.indices)


# --- 6. bad input to a live node ----------------------------------------------------------------------


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


def test_bad_input_to_a_live_node(devnets: MakeDevnet) -> None:
    net = devnets(3, 2, delta=0.2, start_in=4.5, window_period=4.0)
    net.start()
    sts = net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=30)
    mpk = sts[1]["master_public_key"]

    # Two refreshes through the admin channel, so that an epoch-0 envelope is old.
    for epoch in (1, 2):
        reply = net.admin(1, {"op": "propose", "change": "refresh"})
        assert reply["ok"], reply
        assert net.admin(2, {"op": "approve", "proposal_id": reply["proposal_id"]})["ok"] is True
        net.wait_for(
            f"epoch {epoch}", lambda e=epoch: net.converged(net.indices, epoch=e), timeout=40
        )

    node1 = net.entry(1)
    node2 = net.entry(2)
    net.stop(2)  # from now on, this test speaks as node 2
    with NodeStore(
        net.config_path(2).parent / "node.db",
        PassphraseSealer.from_file(net.config_path(2).parent.with_suffix(".passphrase")),
    ) as store:
        ident = store.load_identity()
    assert ident is not None
    seed2 = ident[0]
    listen2 = node2["multiaddr"].rsplit("/p2p/", 1)[0]

    def snapshot() -> tuple[int, str, dict[str, float]]:
        st = net.status(1)
        assert st is not None and net.health(1) == 200, net.report()
        return st["epoch"], st["master_public_key"], rejected(net.metrics(1))

    epoch0, key0, before = snapshot()
    assert epoch0 == 2 and key0 == mpk

    def expect(reason: str, what: str, timeout: float = 10.0) -> None:
        """Node 1, still healthy and unchanged, counted one more rejection for ``reason``.

        The metric label is the reason without its culprit list or details
        (envelope failures keep their kind: "envelope: malformed").
        """
        nonlocal before

        def counted() -> dict[str, float] | None:
            epoch, key, after = snapshot()
            assert (epoch, key) == (epoch0, key0), f"{what} changed node 1's state"
            grew = {
                r: v
                for r, v in after.items()
                if (r == reason or r.startswith(reason + " (")) and v > before.get(r, 0.0)
            }
            return after if grew else None

        before = net.wait_for(f"node 1 to reject {what} as {reason!r}", counted, timeout)

    peer1 = node1["peer_id"]
    request = ChainRequest(0)

    async def main() -> None:
        async with (
            Libp2pTransport(secrets.token_bytes(32), "/ip4/127.0.0.1/tcp/0") as stranger,
            Libp2pTransport(seed2, listen2) as member,
        ):
            stranger.add_peer(peer1, [node1["multiaddr"]])
            member.add_peer(peer1, [node1["multiaddr"]])
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

            async def check(reason: str, what: str, timeout: float = 10.0) -> None:
                await trio.to_thread.run_sync(expect, reason, what, timeout)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect)

                # An unknown peer (a fresh identity) with a well-formed envelope: node 1
                # closes its connection right after the Noise handshake, before any
                # stream is read, so the frame never leaves the stranger.
                with pytest.raises(PeerUnreachable):
                    await stranger.send(
                        peer1, encode_envelope(Envelope.of(request, epoch=2, sender=0))
                    )

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

                # Over the size limit: the transport refuses to send it at all...
                with pytest.raises(FrameTooLarge):
                    await member.send(peer1, bytes(MAX_FRAME_SIZE + 1))
                # ...and a raw length prefix over the limit makes node 1 drop the stream.
                await send_raw(member, peer1, encode_varint(MAX_FRAME_SIZE + 1) + b"\x00" * 64)

                # A valid envelope that claims to come from node 3.
                await member.send(peer1, encode_envelope(Envelope.of(request, epoch=2, sender=3)))
                await check("envelope names another sender", "a forged sender index")

                # An envelope for an old epoch (any message but a chain request, which a
                # member that missed epochs must be able to send).
                stale = ChainUpdate((), ())
                await member.send(peer1, encode_envelope(Envelope.of(stale, epoch=0, sender=2)))
                await check("message for an old epoch", "an old-epoch envelope")

                # A genuine broadcast message that node 1 sent to node 2 in a decision
                # window, with one signature byte flipped, sent back while the window runs
                # (node 1 keeps messages for sessions it does not run yet, unjudged, so a
                # message that arrives after its window closed is retried with a newer one).
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

    trio.run(main)

    epoch, key, after = snapshot()
    assert (epoch, key) == (epoch0, key0)
    assert after == before, "the replayed genuine message was refused"
    print("node 1 rejected inputs:", after)
    reasons = {
        rec.get("reason") for rec in net.log_records(1) if rec.get("msg") == "input rejected"
    }
    for reason in ("envelope: malformed", "envelope: unknown-kind", "envelope: unknown-version"):
        assert reason in reasons, f"no log line for {reason!r}: {sorted(map(str, reasons))}"
    assert net.converged([1, 3], epoch=2) is not None
