"""The service keeps its transport's allowed peers: a stranger's frames never reach the node."""

from __future__ import annotations

from pathlib import Path

import trio

from kms.app.testing import local_committee
from mpc.membership.messages import ChainRequest
from net.codec import Envelope, encode_envelope
from net.memory import MemoryTransport
from net.testing import unknown_peer


def test_a_strangers_frames_are_refused_by_the_transport_and_members_still_heard(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with local_committee(tmp_path) as c:
            node = c.services[1]
            transport = node.transport
            assert isinstance(transport, MemoryTransport)
            stranger = unknown_peer(5)
            # A stranger (any key not in the committee) sends a megabyte-size frame, and
            # then a valid-looking chain request claiming to be member 2, over and over.
            big = bytes(1 << 20)
            ask = encode_envelope(Envelope.of(ChainRequest(0), epoch=0, sender=2))
            in_flight = transport.network.statistics().frames_in_flight
            for _ in range(100):
                transport.network.inject(stranger, transport.local_peer, big)
                transport.network.inject(stranger, transport.local_peer, ask)
            assert transport.network.statistics().frames_in_flight == in_flight  # none held
            await trio.sleep(0.2)
            assert transport.statistics().refused_peers == 200
            assert transport.statistics().bytes_received < len(big)  # none of the big frames
            assert node.metrics.rejected["unknown or unauthorised peer"] == 0
            assert node.metrics.messages_out["chain/update"] == 0
            # Member 2's request is taken and answered.
            member = c.services[2].transport
            await member.send(transport.local_peer, ask)
            with trio.fail_after(5):
                while node.metrics.messages_out["chain/update"] == 0:
                    await trio.sleep(0.01)
            assert "refused_peers" in node.metrics_text().replace(
                "qkms_transport_refused_peers_total 200", "refused_peers"
            )

    trio.run(main)


def test_the_rejection_log_table_is_bounded() -> None:
    from kms.node.service import RateLimitedLog

    rl = RateLimitedLog(max_entries=1024)
    for i in range(10_000):
        rl.warn(f"peer-{i}", "unknown or unauthorised peer")
        rl.warn(f"peer-{i}", "unknown or unauthorised peer")  # within the minute: suppressed
    assert len(rl) == 1024
    assert rl.suppressed == 10_000


def test_a_members_digests_in_a_loop_draw_bundles_within_a_byte_budget(tmp_path: Path) -> None:
    """A digest of a few bytes draws up to 32 bundles: the bundles answered to one member's
    digests are metered in bytes. With a budget of 4 bundles' worth and a stopped clock,
    100 empty digests (each asking for everything) draw at most 4 bundles."""
    from kms.app.testing import app_bundle
    from kms.policy import OwnerKey
    from kms.policy.gossip import PolicyDigest

    owners = [OwnerKey.from_seed(bytes([i]) * 32) for i in range(1, 11)]

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            for o in owners:
                s, _ = await c.fetch_keys(o.app_id(), bundle=app_bundle(o, c.mpk).encode())
                assert s.done
            node = c.services[1]
            size = len(app_bundle(owners[0], c.mpk).encode())
            budget = dict(node.GOSSIP_BUDGET)
            budget["digest"] = (1000.0, 1e9)  # the count budget out of the way
            budget["digest-bytes"] = (4.5 * size, 0.0)
            node.GOSSIP_BUDGET = budget
            c.clock.t += 1  # the count budget refills at once; the byte budget does not
            out = node.metrics.messages_out
            await trio.sleep(0.1)
            before = out["kms/policy-announce"]
            digest = encode_envelope(Envelope.of(PolicyDigest(b"", b"", ()), epoch=0, sender=2))
            for _ in range(100):
                await c.services[2].transport.send(node.transport.local_peer, digest)
            received = node.metrics.messages_in
            with trio.fail_after(20):
                while received["kms/policy-digest"] < 100:
                    await trio.sleep(0.05)
            answered = out["kms/policy-announce"] - before
            assert 1 <= answered <= 4, answered
            assert node.metrics.rejected["policy gossip: digest-bytes rate limited"] >= 90, dict(
                node.metrics.rejected
            )

    trio.run(main)
