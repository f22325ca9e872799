"""A stranger with a fresh Noise key cannot make a libp2p node read, buffer or deliver anything.

The node allows only its committee (``set_allowed_peers``, kept up to date by
the service). A real py-libp2p host with a key nobody knows dials it, opens
streams and writes maximal frames; a member sends at the same time.
"""

from __future__ import annotations

from typing import Any

import trio

from mpc.ids import PeerId
from mpc.sig import SigningKey
from net.errors import PeerUnreachable
from net.libp2p import Libp2pTransport
from net.libp2p.transport import encode_varint
from net.peerid import peer_id_from_ed25519


def seed(n: int) -> bytes:
    return bytes([n]) * 32


def peer(n: int) -> PeerId:
    return peer_id_from_ed25519(SigningKey.from_seed(seed(n)).verify_key().to_bytes())


async def _raw_stream_flood(stranger: Any, target: Libp2pTransport, frames: int) -> str:
    """Dial ``target`` from a bare py-libp2p host and write ``frames`` maximal frames."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo
    from multiaddr import Multiaddr

    (addr,) = target.listen_addrs()
    info = PeerInfo(ID.from_base58(target.local_peer), [Multiaddr(addr.split("/p2p/")[0])])
    try:
        await stranger.connect(info)
        stream = await stranger.new_stream(info.peer_id, [TProtocol("/quorum-kms/1.0.0")])
        big = encode_varint(target.max_frame_size) + bytes(target.max_frame_size)
        for _ in range(frames):
            await stream.write(big)
    except Exception as exc:  # refused: the connection was closed under it
        return type(exc).__name__
    return "written"


def test_a_stranger_is_refused_after_the_handshake_and_members_are_unaffected() -> None:
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.network.config import RetryConfig
    from multiaddr import Multiaddr

    async def main() -> None:
        async with Libp2pTransport(seed(1)) as member, Libp2pTransport(seed(2)) as node:
            if hasattr(node, "set_allowed_peers"):
                node.set_allowed_peers([member.local_peer])
            member.add_peer(node.local_peer, node.listen_addrs())
            # A stranger through this project's transport ...
            async with Libp2pTransport(seed(9)) as stranger:
                stranger.add_peer(node.local_peer, node.listen_addrs())
                refused = 0
                for _ in range(3):
                    try:
                        await stranger.send(node.local_peer, bytes(stranger.max_frame_size))
                    except PeerUnreachable:
                        refused += 1
                assert refused == 3
            # ... and through a bare py-libp2p host that opens a stream itself.
            key_pair = create_new_key_pair(seed(10))
            bare = new_host(key_pair=key_pair)
            network: Any = bare.get_network()
            network.retry_config = RetryConfig(max_retries=0)
            got: list[tuple[PeerId, int]] = []

            async def drain() -> None:
                while True:
                    sender, frame = await node.receive()
                    got.append((sender, len(frame)))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                async with bare.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                    with trio.fail_after(20):
                        outcome = await _raw_stream_flood(bare, node, frames=4)
                    # Meanwhile a member's frames arrive as usual.
                    start = trio.current_time()
                    for i in range(20):
                        await member.send(node.local_peer, b"member %d" % i)
                    with trio.fail_after(5):
                        while len([g for g in got if g[0] == member.local_peer]) < 20:
                            await trio.sleep(0.01)
                    assert trio.current_time() - start < 5
                nursery.cancel_scope.cancel()
            assert outcome != "written", outcome
            strangers = {g[0] for g in got} - {member.local_peer}
            assert strangers == set(), strangers
            stats = node.statistics()
            assert stats.bytes_received == sum(n for s, n in got if s == member.local_peer)
            assert stats.refused_peers >= 2
            assert peer(9) not in node.connected_peers()

    trio.run(main)
