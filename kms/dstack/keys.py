"""dstack's guest-API key derivations and signature chain, byte for byte (pure; no I/O).

The agent serves dstack's guest API on top of one secp256k1 **app root key** per app.
Everything an app can obtain from it is computed here:

* **v0** (the frozen unversioned API): ``key = HKDF-SHA256(salt = "RATLS", IKM = root,
  info = path, L = 32)``; the algorithm does not enter the derivation (secp256k1 and
  ed25519 share the 32 bytes). Link 0 is the root's recoverable signature over
  ``keccak256(purpose ‖ ":" ‖ lowercase_hex(public_key))``.
* **v1**: ``key = HKDF-SHA256(salt = "dstack-guest-v1", IKM = root, info =
  LP("dstack-guest-v1-key") ‖ LP(algorithm) ‖ LP(domain), L = 32)`` with ``LP(x) =
  u32be(len(x)) ‖ x``; link 0 over ``keccak256(LP("dstack-guest-v1-key-claim") ‖
  LP(algorithm) ‖ LP(domain) ‖ LP(public_key))``.
* the v0 ``Sign`` and ``Verify`` modes.

A link is ``r ‖ s ‖ v`` (65 bytes): ECDSA over secp256k1 of the keccak256 digest,
RFC 6979 nonces, ``s`` low-S normalised, ``v`` the recovery id in 0..3. Link 1 (the
committee's certificate of the root public key) is not made here: see
``mpc.appcert`` and ``kms.dstack.chain``.

The app root itself comes from the committee's threshold key ``σ`` for the app's
``dstack-app-root`` purpose (:func:`app_root_from_sigma`). The agent never writes it,
logs it or serves it; whoever can open its guest socket can still have the committee
release it (docs/dstack.md, "Who holds the guest socket").

:class:`DstackError`'s ``str()`` is the error message dstack's guest API puts in its
``{"error": …}`` body.
"""

from __future__ import annotations

import hashlib
import struct

import coincurve
from Crypto.Hash import keccak
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
"""The order of secp256k1's group."""
_HALF_N = SECP256K1_N // 2

V0_SALT = b"RATLS"
"""dstack's v0 KDF salt (``LEGACY_SALT``)."""
V1_SALT = b"dstack-guest-v1"
"""dstack's v1 KDF salt."""
V1_KEY_TAG = b"dstack-guest-v1-key"
"""First length-prefixed field of the v1 KDF ``info``."""
V1_CLAIM_TAG = b"dstack-guest-v1-key-claim"
"""First length-prefixed field of the v1 link-0 claim."""
APP_ROOT_SALT = b"quorum-kms/v1/dstack/app-root"
"""HKDF salt of the app root key from the threshold key ``σ``."""
ROOT_PURPOSE = "dstack-app-root"
"""The key-release purpose whose ``σ`` the app root is derived from."""

SECP256K1 = "secp256k1"
ED25519 = "ed25519"
PREHASHED = "secp256k1_prehashed"
V1_ALGORITHMS = (SECP256K1, ED25519)

UNSUPPORTED = "Unsupported algorithm"
BAD_K256 = "Failed to parse k256 key"
V1_UNSUPPORTED = "Unsupported algorithm: expected one of secp256k1, ed25519"
SIGNATURE_ERROR = "signature error"
INVALID_PUBLIC_KEY = "invalid public key"

_ED_P = 2**255 - 19
_ED_D = (-121665 * pow(121666, -1, _ED_P)) % _ED_P


class DstackError(ValueError):
    """A guest-API handler failure; ``str()`` is the ``{"error": …}`` text (HTTP 400)."""


def keccak256(data: bytes) -> bytes:
    """Ethereum's Keccak-256 (not SHA3-256)."""
    h = keccak.new(digest_bits=256)
    h.update(bytes(data))
    return h.digest()


def lp(data: bytes) -> bytes:
    """``u32be(len(data)) ‖ data``."""
    if len(data) > 0xFFFFFFFF:
        raise DstackError("field longer than 2^32 - 1 bytes")
    return struct.pack(">I", len(data)) + bytes(data)


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(bytes(ikm))


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _check_root(root: bytes) -> bytes:
    root = bytes(root)
    if len(root) != 32 or not 1 <= int.from_bytes(root, "big") < SECP256K1_N:
        raise DstackError(BAD_K256)
    return root


# --- derivations --------------------------------------------------------------


def v0_derive(root: bytes, path: str | bytes) -> bytes:
    """``HKDF-SHA256(salt = "RATLS", IKM = root, info = path, L = 32)``."""
    return _hkdf(_check_root(root), V0_SALT, _as_bytes(path))


def v1_info(domain: str | bytes, algorithm: str) -> bytes:
    """``LP("dstack-guest-v1-key") ‖ LP(algorithm) ‖ LP(domain)``."""
    return lp(V1_KEY_TAG) + lp(algorithm.encode()) + lp(_as_bytes(domain))


def check_v1_algorithm(algorithm: str) -> str:
    """v1 takes ``secp256k1`` or ``ed25519`` only: no default, no alias."""
    if algorithm not in V1_ALGORITHMS:
        raise DstackError(V1_UNSUPPORTED)
    return algorithm


def v1_derive(root: bytes, domain: str | bytes, algorithm: str) -> bytes:
    """``HKDF-SHA256(salt = "dstack-guest-v1", IKM = root, info = v1_info(domain, alg))``."""
    check_v1_algorithm(algorithm)
    return _hkdf(_check_root(root), V1_SALT, v1_info(domain, algorithm))


def normalize_v0_algorithm(algorithm: str) -> str:
    """v0 ``GetKey``'s table: ``k256`` and ``""`` are secp256k1; ``ed25519``; anything
    else (``secp256k1_prehashed`` included) is ``Unsupported algorithm``."""
    if algorithm in ("secp256k1", "k256", ""):
        return SECP256K1
    if algorithm == ED25519:
        return ED25519
    raise DstackError(UNSUPPORTED)


def public_key(algorithm: str, key: bytes) -> bytes:
    """The public key of a derived key: SEC1 compressed (33 bytes) for secp256k1, the
    RFC 8032 raw key (32 bytes) for ed25519. A secp256k1 scalar 0 or ≥ n fails with
    ``Failed to parse k256 key``."""
    key = bytes(key)
    if len(key) != 32:
        raise DstackError(BAD_K256 if algorithm == SECP256K1 else "Key is incorrect")
    if algorithm == SECP256K1:
        if not 1 <= int.from_bytes(key, "big") < SECP256K1_N:
            raise DstackError(BAD_K256)
        return coincurve.PrivateKey(key).public_key.format(compressed=True)
    if algorithm == ED25519:
        return (
            Ed25519PrivateKey.from_private_bytes(key)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
    raise DstackError(UNSUPPORTED)


def root_public(root: bytes) -> bytes:
    """The app root's SEC1 compressed public key (33 bytes)."""
    return coincurve.PrivateKey(_check_root(root)).public_key.format(compressed=True)


# --- link 0 -------------------------------------------------------------------


def v0_claim(purpose: str | bytes, pub: bytes) -> bytes:
    """``purpose ‖ ":" ‖ lowercase_hex(pub)`` (UTF-8 text)."""
    return _as_bytes(purpose) + b":" + bytes(pub).hex().encode()


def v1_claim(domain: str | bytes, algorithm: str, pub: bytes) -> bytes:
    """``LP("dstack-guest-v1-key-claim") ‖ LP(algorithm) ‖ LP(domain) ‖ LP(pub)``."""
    return lp(V1_CLAIM_TAG) + lp(algorithm.encode()) + lp(_as_bytes(domain)) + lp(bytes(pub))


def sign_link(root: bytes, claim: bytes) -> bytes:
    """``r ‖ s ‖ v`` over ``keccak256(claim)`` with the root (RFC 6979, low-S)."""
    sig = coincurve.PrivateKey(_check_root(root)).sign_recoverable(keccak256(claim), hasher=None)
    return bytes(sig)


def _scalars(sig: bytes) -> tuple[int, int]:
    return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")


def recover_link(claim: bytes, sig65: bytes) -> bytes:
    """The SEC1 compressed key that made link ``sig65`` over ``keccak256(claim)``.

    Refuses a length other than 65, ``v`` outside 0..3, ``r`` or ``s`` zero or ≥ n,
    and a high-S ``s`` (a malleated copy of a valid link)."""
    sig65 = bytes(sig65)
    if len(sig65) != 65:
        raise DstackError(f"a link is 65 bytes, got {len(sig65)}")
    r, s = _scalars(sig65)
    if not (1 <= r < SECP256K1_N and 1 <= s < SECP256K1_N):
        raise DstackError(SIGNATURE_ERROR)
    if s > _HALF_N:
        raise DstackError("high-S signature")
    if sig65[64] > 3:
        raise DstackError(f"recovery id {sig65[64]} (0-3)")
    try:
        key = coincurve.PublicKey.from_signature_and_message(sig65, keccak256(claim), hasher=None)
    except ValueError as exc:
        raise DstackError("no key recovers from this link") from exc
    return key.format(compressed=True)


# --- GetKey -------------------------------------------------------------------


def v0_get_key(
    root: bytes, path: str | bytes, purpose: str | bytes, algorithm: str
) -> tuple[bytes, bytes, bytes]:
    """v0 ``GetKey``: ``(key, public key, link 0)``."""
    alg = normalize_v0_algorithm(algorithm)
    key = v0_derive(root, path)
    pub = public_key(alg, key)
    return key, pub, sign_link(root, v0_claim(purpose, pub))


def v1_get_key(root: bytes, domain: str | bytes, algorithm: str) -> tuple[bytes, bytes, bytes]:
    """v1 ``GetKey``: ``(key, public key, link 0)``."""
    key = v1_derive(root, domain, algorithm)
    pub = public_key(algorithm, key)
    return key, pub, sign_link(root, v1_claim(domain, algorithm, pub))


# --- v0 Sign and Verify -------------------------------------------------------


def _alias(algorithm: str) -> str:
    return SECP256K1 if algorithm == "k256" else algorithm


def sign(root: bytes, algorithm: str, data: bytes) -> tuple[bytes, bytes, bytes]:
    """v0 ``Sign``: ``(signature (64), public key, link 0 of ("vms", "signing"))``.

    The key is ``GetKey(path="vms", purpose="signing", algorithm=base)``; no default
    (an empty algorithm derives, then fails with ``Unsupported algorithm``).
    ``secp256k1``: SHA-256 of ``data``, ``r ‖ s`` low-S; ``secp256k1_prehashed``: ``data``
    is the 32-byte digest; ``ed25519``: RFC 8032. The response's chain is
    ``[signature, link 0, link 1]``."""
    alg = _alias(algorithm)
    key, pub, link0 = v0_get_key(root, "vms", "signing", SECP256K1 if alg == PREHASHED else alg)
    data = bytes(data)
    if alg == ED25519:
        return Ed25519PrivateKey.from_private_bytes(key).sign(data), pub, link0
    if alg == SECP256K1:
        digest = hashlib.sha256(data).digest()
    elif alg == PREHASHED:
        if len(data) != 32:
            raise DstackError(
                f"Pre-hashed signing requires a 32-byte digest, but received {len(data)} bytes"
            )
        digest = data
    else:
        raise DstackError(UNSUPPORTED)
    sig = coincurve.PrivateKey(key).sign_recoverable(digest, hasher=None)[:64]
    return bytes(sig), pub, link0


def _ed25519_point_ok(pub: bytes) -> bool:
    """Whether 32 bytes decompress to an Edwards point (the y coordinate's x exists)."""
    y = int.from_bytes(pub, "little") & ((1 << 255) - 1)
    y %= _ED_P
    u = (y * y - 1) % _ED_P
    v = (_ED_D * y * y + 1) % _ED_P
    x2 = u * pow(v, -1, _ED_P) % _ED_P
    return x2 == 0 or pow(x2, (_ED_P - 1) // 2, _ED_P) == 1


def verify(algorithm: str, data: bytes, sig: bytes, pub: bytes) -> bool:
    """v0 ``Verify``. Malformed input (unknown algorithm, a public key that is not a
    point, a signature that is not 64 bytes or whose ``r``/``s`` is 0 or ≥ n) raises
    ``DstackError`` (HTTP 400); a high-S secp256k1 signature is ``False``.
    ``secp256k1_prehashed`` takes ``data`` as the digest: fewer than 16 bytes is
    ``False``, shorter than 32 is zero-padded on the left, longer is truncated to its
    leftmost 32 bytes."""
    alg = _alias(algorithm)
    data, sig, pub = bytes(data), bytes(sig), bytes(pub)
    if alg == ED25519:
        if len(pub) != 32:
            raise DstackError(INVALID_PUBLIC_KEY)
        if not _ed25519_point_ok(pub) or len(sig) != 64:
            raise DstackError(SIGNATURE_ERROR)
        try:
            Ed25519PublicKey.from_public_bytes(pub).verify(sig, data)
        except (InvalidSignature, ValueError):
            return False
        return True
    if alg not in (SECP256K1, PREHASHED):
        raise DstackError(UNSUPPORTED)
    if (len(pub), pub[:1]) not in ((33, b"\x02"), (33, b"\x03"), (65, b"\x04")):
        raise DstackError(SIGNATURE_ERROR)  # SEC1 compressed or uncompressed only
    try:
        key = coincurve.PublicKey(pub)
    except ValueError as exc:
        raise DstackError(SIGNATURE_ERROR) from exc
    if len(sig) != 64:
        raise DstackError(SIGNATURE_ERROR)
    r, s = _scalars(sig)
    if not (1 <= r < SECP256K1_N and 1 <= s < SECP256K1_N):
        raise DstackError(SIGNATURE_ERROR)
    if s > _HALF_N:
        return False
    if alg == SECP256K1:
        digest = hashlib.sha256(data).digest()
    else:
        if len(data) < 16:
            return False
        digest = data[:32].rjust(32, b"\0")
    return bool(key.verify(encode_dss_signature(r, s), digest, hasher=None))


# --- the app root from the threshold key --------------------------------------


def app_root_from_sigma(sigma: bytes, key_id: bytes) -> bytes:
    """The app root scalar from ``σ = s·H_DERIVE(KeyId(A, "dstack-app-root", v))``.

    ``for counter in 0, 1, …: k = HKDF-SHA256(ikm = σ, salt = APP_ROOT_SALT,
    info = key_id ‖ u32be(counter), L = 32)``; the first ``k`` with ``1 ≤ k < n``."""
    sigma = bytes(sigma)
    if len(sigma) != 48:
        raise ValueError(f"σ is a 48-byte compressed G1 point, got {len(sigma)} bytes")
    for counter in range(2**32):
        k = _hkdf(sigma, APP_ROOT_SALT, bytes(key_id) + struct.pack(">I", counter))
        if 1 <= int.from_bytes(k, "big") < SECP256K1_N:
            return k
    raise ValueError("no app root below the group order")  # pragma: no cover - 2^-128 each


__all__ = [
    "APP_ROOT_SALT",
    "ED25519",
    "PREHASHED",
    "ROOT_PURPOSE",
    "SECP256K1",
    "SECP256K1_N",
    "V0_SALT",
    "V1_CLAIM_TAG",
    "V1_KEY_TAG",
    "V1_SALT",
    "DstackError",
    "app_root_from_sigma",
    "check_v1_algorithm",
    "keccak256",
    "lp",
    "normalize_v0_algorithm",
    "public_key",
    "recover_link",
    "root_public",
    "sign",
    "sign_link",
    "v0_claim",
    "v0_derive",
    "v0_get_key",
    "v1_claim",
    "v1_derive",
    "v1_get_key",
    "v1_info",
    "verify",
]
