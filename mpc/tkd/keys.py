"""Typed keys from a 32-byte app key (docs/crypto.md §Typed keys, derivation version 1).

Each typed key is ``HKDF-SHA256(ikm=app_key, salt="quorum-kms/v1/typed-key",
info="quorum-kms/v1/typed-key/<kind>")``:

* ``aes-256``: 32 bytes used as the key;
* ``x25519``: 32 bytes used as the private scalar (RFC 7748 clamps it);
* ``ed25519``: 32 bytes used as the RFC 8032 seed;
* ``secp256k1``: 48 bytes, big-endian integer mod n (the group order);
  0 is rejected (probability ≈ 2⁻²⁵⁶).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mpc.secret import SecretBytes
from mpc.tkd.derive import AppKey

TYPED_KEY_SALT = b"quorum-kms/v1/typed-key"
TYPED_KEY_INFO_PREFIX = b"quorum-kms/v1/typed-key/"
"""HKDF info of a typed key: this prefix, then the kind (``aes-256``, ``x25519``, …)."""
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _expand(app_key: AppKey, kind: str, length: int) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=TYPED_KEY_SALT,
        info=TYPED_KEY_INFO_PREFIX + kind.encode("ascii"),
    ).derive(app_key.secret.data)


@dataclass(frozen=True, slots=True)
class TypedKeys:
    """The typed keys of one app key. Private halves are ``SecretBytes``."""

    aes256: SecretBytes
    x25519_private: SecretBytes
    x25519_public: bytes
    ed25519_seed: SecretBytes
    ed25519_public: bytes
    secp256k1_private: SecretBytes
    secp256k1_public: bytes
    """33-byte SEC1 compressed."""


def typed_keys(app_key: AppKey) -> TypedKeys:
    """Derive every typed key from ``app_key`` (derivation version 1)."""
    aes = _expand(app_key, "aes-256", 32)
    xsk = _expand(app_key, "x25519", 32)
    xpk = (
        x25519.X25519PrivateKey.from_private_bytes(xsk)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    seed = _expand(app_key, "ed25519", 32)
    epk = (
        ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    k = int.from_bytes(_expand(app_key, "secp256k1", 48), "big") % SECP256K1_N
    if k == 0:  # pragma: no cover - probability 2^-256
        raise ValueError("secp256k1 derivation produced 0")
    spk = (
        ec.derive_private_key(k, ec.SECP256K1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    )
    return TypedKeys(
        aes256=SecretBytes(aes),
        x25519_private=SecretBytes(xsk),
        x25519_public=xpk,
        ed25519_seed=SecretBytes(seed),
        ed25519_public=epk,
        secp256k1_private=SecretBytes(k.to_bytes(32, "big")),
        secp256k1_public=spk,
    )
