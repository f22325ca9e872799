"""The per-peer caps' bounds hold for the largest messages the codec can make at n = 4…64."""

from __future__ import annotations

import hashlib
import os

import pytest

from kms.node.limits import deal_bytes, peer_queue_bytes, relay_bytes, round_bytes
from mpc.broadcast import BroadcastPayload, DigestRelay, RelaySignature, SignedDigest
from mpc.dkg.messages import DealBundle, EncryptedShare
from net.codec import Envelope, encode_envelope


def framed(message: BroadcastPayload | DigestRelay, sender: int) -> int:
    env = Envelope.of(message, epoch=2**32, sender=sender)
    return len(encode_envelope(env))


@pytest.mark.parametrize(("n", "t"), [(4, 3), (16, 11), (32, 22), (64, 43), (64, 64)])
def test_a_deal_and_a_relay_fit_their_bounds(n: int, t: int) -> None:
    deal = DealBundle(
        n,
        tuple(os.urandom(96) for _ in range(t)),
        tuple(EncryptedShare(i, os.urandom(32), os.urandom(48)) for i in range(1, n + 1)),
    ).encode()
    header = SignedDigest(os.urandom(32), n, hashlib.sha256(deal).digest(), os.urandom(64))
    payload = framed(BroadcastPayload(header, deal), n)
    assert payload <= deal_bytes(n, t), (payload, deal_bytes(n, t))
    # A relay carries at most f + 1 = t relay signatures (from distinct relayers).
    relays = tuple(RelaySignature(i, os.urandom(64)) for i in range(1, t + 1))
    relay = framed(DigestRelay(header, relays), n)
    assert relay <= relay_bytes(t), (relay, relay_bytes(t))
    assert round_bytes(n, t) < peer_queue_bytes(n, t)
    print(
        f"n = {n}, t = {t}: deal frame {payload} B (bound {deal_bytes(n, t)}),"
        f" relay frame {relay} B (bound {relay_bytes(t)})"
    )
