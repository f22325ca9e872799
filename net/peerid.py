"""libp2p peer ids for Ed25519 identity keys, without libp2p.

A libp2p peer id (https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md)
is a multihash of the protobuf-encoded public key. Keys of at most 42 bytes
encoded use the *identity* multihash, so for an Ed25519 key the peer id bytes
are::

    00 24                  identity multihash, digest length 36
    08 01                  PublicKey.Type = Ed25519 (field 1, varint 1)
    12 20 ‖ key            PublicKey.Data (field 2, 32 bytes)

and the textual peer id is their base58btc encoding (``12D3KooW…``).
"""

from __future__ import annotations

from mpc.errors import InvalidEncoding
from mpc.ids import PeerId

__all__ = ["ED25519_PEER_ID_PREFIX", "ed25519_from_peer_id", "peer_id_from_ed25519"]

ED25519_PEER_ID_PREFIX = bytes.fromhex("002408011220")
"""Identity multihash header and protobuf header of a 32-byte Ed25519 public key."""

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Base58btc (the Bitcoin alphabet); each leading zero byte becomes a ``1``."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    digits = []
    while n:
        n, r = divmod(n, 58)
        digits.append(_ALPHABET[r])
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises ``InvalidEncoding`` on a foreign character."""
    n = 0
    for c in text:
        digit = _INDEX.get(c)
        if digit is None:
            raise InvalidEncoding(f"not a base58btc character: {c!r}")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + n.to_bytes((n.bit_length() + 7) // 8, "big")


def peer_id_from_ed25519(public_key: bytes) -> PeerId:
    """The libp2p peer id of a 32-byte Ed25519 public key (RFC 8032 §5.1.2 encoding)."""
    if not isinstance(public_key, bytes) or len(public_key) != 32:
        raise InvalidEncoding("an Ed25519 public key is 32 bytes")
    return PeerId(b58encode(ED25519_PEER_ID_PREFIX + public_key))


def ed25519_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inside ``peer_id``.

    Raises ``InvalidEncoding`` unless ``peer_id`` is the canonical base58btc text
    of an identity-multihash Ed25519 peer id (other key types hash their key, so
    it cannot be recovered from the id).
    """
    if not isinstance(peer_id, str) or len(peer_id) > 64:
        raise InvalidEncoding("not an Ed25519 peer id")
    raw = b58decode(peer_id)
    if len(raw) != len(ED25519_PEER_ID_PREFIX) + 32 or not raw.startswith(ED25519_PEER_ID_PREFIX):
        raise InvalidEncoding("not an Ed25519 peer id")
    if b58encode(raw) != peer_id:
        raise InvalidEncoding("non-canonical base58 peer id")
    return raw[len(ED25519_PEER_ID_PREFIX) :]
