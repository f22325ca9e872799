"""dstack guest API key derivations (v0 and v1) and link-0 signatures.

Minimal implementation of the calls the guest API server makes; the full module
(with chain verification helpers and every vector) replaces this one.
"""

from __future__ import annotations

import hashlib
import struct

from coincurve import PrivateKey, PublicKey
from Crypto.Hash import keccak
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
V1_ALGORITHMS = ("secp256k1", "ed25519")


class DstackError(ValueError):
    """A request the dstack guest API refuses; ``str()`` is the spec's error text."""


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def _hkdf(salt: bytes, ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _lp(x: bytes) -> bytes:
    return struct.pack(">I", len(x)) + x


def normalize_v0_algorithm(algorithm: str) -> str:
    if algorithm in ("", "secp256k1", "k256"):
        return "secp256k1"
    if algorithm == "ed25519":
        return "ed25519"
    raise DstackError("Unsupported algorithm")


def v0_derive(root: bytes, path: str) -> bytes:
    return _hkdf(b"RATLS", root, path.encode())


def v1_derive(root: bytes, domain: str | bytes, algorithm: str) -> bytes:
    d = domain.encode() if isinstance(domain, str) else domain
    return _hkdf(
        b"dstack-guest-v1", root, _lp(b"dstack-guest-v1-key") + _lp(algorithm.encode()) + _lp(d)
    )


def public_key(algorithm: str, key: bytes) -> bytes:
    if algorithm == "ed25519":
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return (
            Ed25519PrivateKey.from_private_bytes(key)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
    k = int.from_bytes(key, "big")
    if not 1 <= k < SECP256K1_N:
        raise DstackError("Failed to parse k256 key")
    return PrivateKey(key).public_key.format(compressed=True)


def v0_claim(purpose: str, pub: bytes) -> bytes:
    return f"{purpose}:{pub.hex()}".encode()


def v1_claim(domain: str | bytes, algorithm: str, pub: bytes) -> bytes:
    d = domain.encode() if isinstance(domain, str) else domain
    return _lp(b"dstack-guest-v1-key-claim") + _lp(algorithm.encode()) + _lp(d) + _lp(pub)


def sign_link(root: bytes, claim: bytes) -> bytes:
    return PrivateKey(root).sign_recoverable(keccak256(claim), hasher=None)


def root_public(root: bytes) -> bytes:
    return PrivateKey(root).public_key.format(compressed=True)


def v0_get_key(root: bytes, path: str, purpose: str, algorithm: str) -> tuple[bytes, bytes, bytes]:
    alg = normalize_v0_algorithm(algorithm)
    key = v0_derive(root, path)
    pub = public_key(alg, key)
    return key, pub, sign_link(root, v0_claim(purpose, pub))


def v1_get_key(root: bytes, domain: str | bytes, algorithm: str) -> tuple[bytes, bytes, bytes]:
    if algorithm not in V1_ALGORITHMS:
        raise DstackError("Unsupported algorithm: expected one of secp256k1, ed25519")
    key = v1_derive(root, domain, algorithm)
    pub = public_key(algorithm, key)
    return key, pub, sign_link(root, v1_claim(domain, algorithm, pub))


def sign(root: bytes, algorithm: str, data: bytes) -> tuple[bytes, bytes, bytes]:
    base = {"secp256k1": "secp256k1", "k256": "secp256k1", "secp256k1_prehashed": "secp256k1"}
    base["ed25519"] = "ed25519"
    if algorithm not in base:
        raise DstackError("Unsupported algorithm")
    key, pub, link0 = v0_get_key(root, "vms", "signing", base[algorithm])
    if algorithm == "ed25519":
        return Ed25519PrivateKey.from_private_bytes(key).sign(data), pub, link0
    if algorithm == "secp256k1_prehashed":
        if len(data) != 32:
            raise DstackError(
                f"Pre-hashed signing requires a 32-byte digest, but received {len(data)} bytes"
            )
        digest = data
    else:
        digest = hashlib.sha256(data).digest()
    return PrivateKey(key).sign_recoverable(digest, hasher=None)[:64], pub, link0


def verify(algorithm: str, data: bytes, sig: bytes, pub: bytes) -> bool:
    if algorithm == "ed25519":
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(sig, data)
        except InvalidSignature:
            return False
        except ValueError as e:
            raise DstackError("Invalid public key") from e
        return True
    if algorithm not in ("secp256k1", "k256", "secp256k1_prehashed"):
        raise DstackError("Unsupported algorithm")
    if len(sig) != 64:
        raise DstackError("Invalid signature")
    try:
        key = PublicKey(pub)
    except ValueError as e:
        raise DstackError("Invalid public key") from e
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        raise DstackError("Invalid signature")
    if s > SECP256K1_N // 2:
        return False
    if algorithm == "secp256k1_prehashed":
        if len(data) < 16:
            return False
        digest = data[:32].rjust(32, b"\0")
    else:
        digest = hashlib.sha256(data).digest()
    der = encode_dss_signature(r, s)
    return key.verify(der, digest, hasher=None)
