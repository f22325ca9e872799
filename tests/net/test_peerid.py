"""``net.peerid`` against libp2p's own peer ids and the ``base58`` package."""

from __future__ import annotations

import base58
import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.peer.id import ID

from mpc.errors import InvalidEncoding
from mpc.sig import SigningKey
from net.peerid import b58decode, b58encode, ed25519_from_peer_id, peer_id_from_ed25519


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_matches_libp2p(seed: bytes) -> None:
    public = SigningKey.from_seed(seed).verify_key().to_bytes()
    key_pair = create_new_key_pair(seed)
    assert key_pair.public_key.to_bytes() == public
    expected = ID.from_pubkey(key_pair.public_key).to_base58()
    assert peer_id_from_ed25519(public) == expected
    assert ed25519_from_peer_id(expected) == public


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_of_any_32_bytes_matches_libp2p(key: bytes) -> None:
    # The id is defined for the encoding, whether or not it is a valid point.
    libp2p_id = ID.from_pubkey(Ed25519PublicKey.from_bytes(key)).to_base58()
    assert peer_id_from_ed25519(key) == libp2p_id
    assert ed25519_from_peer_id(libp2p_id) == key


def test_known_peer_id() -> None:
    # RFC 8032 §7.1 test 1's public key.
    key = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    peer_id = peer_id_from_ed25519(key)
    assert peer_id.startswith("12D3KooW")
    assert peer_id == ID(bytes.fromhex("002408011220") + key).to_base58()


@given(st.binary(max_size=64))
def test_base58_matches_the_base58_package(data: bytes) -> None:
    text = b58encode(data)
    assert text == base58.b58encode(data).decode()
    assert b58decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0OIl",  # not in the alphabet
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # a SHA-256 (RSA-style) peer id
        "1" + peer_id_from_ed25519(bytes(32)),  # a leading zero byte
        peer_id_from_ed25519(bytes(32))[:-1],
        "x" * 100,
    ],
)
def test_rejects_what_is_not_an_ed25519_peer_id(text: str) -> None:
    with pytest.raises(InvalidEncoding):
        ed25519_from_peer_id(text)


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33)])
def test_rejects_a_key_of_the_wrong_length(key: bytes) -> None:
    with pytest.raises(InvalidEncoding):
        peer_id_from_ed25519(key)
