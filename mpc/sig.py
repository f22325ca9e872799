"""Ed25519 node signatures (RFC 8032 §5.1) with a context prefix per message kind.

Every signature covers ``I2OSP(len(context), 1) || context || message``. Because the
context's length is part of the signed bytes, the framing is injective: a signature
made under one context can never verify under another, whatever the messages are.
A context is a byte string of at most 255 bytes that starts with
:data:`CONTEXT_PREFIX` (``b"quorum-kms/v1/"``) and names the message kind; the
contexts in use are listed in :data:`CONTEXTS`.

A node's identity key must sign only through this module, so that every signature it
ever makes carries one of these framed contexts.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from typing import Final

from cryptography.exceptions import InvalidSignature as _CryptographyInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError

__all__ = [
    "CONTEXTS",
    "CONTEXT_PREFIX",
    "CTX_APP_CERT_RESPONSE",
    "CTX_BROADCAST_DIGEST",
    "CTX_BROADCAST_RELAY",
    "CTX_DKG_DEAL",
    "CTX_DKG_JUSTIFICATION",
    "CTX_DKG_KEY",
    "CTX_DKG_RESPONSE",
    "CTX_GENESIS_ENDORSEMENT",
    "CTX_KEY_RESPONSE",
    "CTX_MEMBERSHIP_PROPOSAL",
    "CTX_MEMBERSHIP_VOTE",
    "CTX_RESHARE_ACK",
    "CTX_RUN_KEY",
    "PUBLIC_KEY_LENGTH",
    "SEED_LENGTH",
    "SIGNATURE_LENGTH",
    "SigningKey",
    "VerifyKey",
    "check_context",
]

SEED_LENGTH: Final = 32
"""RFC 8032 §5.1.5: an Ed25519 private key is a 32-byte seed."""

PUBLIC_KEY_LENGTH: Final = 32
"""RFC 8032 §5.1.2: an encoded Ed25519 public key is 32 bytes."""

SIGNATURE_LENGTH: Final = 64
"""RFC 8032 §5.1.6: an Ed25519 signature is ``R || S``, 64 bytes."""

CONTEXT_PREFIX: Final = b"quorum-kms/v1/"
"""Every signing context starts with this prefix."""

CTX_DKG_DEAL: Final = b"quorum-kms/v1/dkg/deal"
CTX_DKG_RESPONSE: Final = b"quorum-kms/v1/dkg/response"
CTX_DKG_JUSTIFICATION: Final = b"quorum-kms/v1/dkg/justification"
CTX_BROADCAST_DIGEST: Final = b"quorum-kms/v1/broadcast/digest"
CTX_BROADCAST_RELAY: Final = b"quorum-kms/v1/broadcast/relay"
CTX_DKG_KEY: Final = b"quorum-kms/v1/node/dkg-key"
"""A node's identity key signs its X25519 DKG encryption key under this context."""
CTX_RUN_KEY: Final = b"quorum-kms/v1/dkg/run-key"
"""A recipient's identity key signs the X25519 key it uses for one sharing run only."""
CTX_KEY_RESPONSE: Final = b"quorum-kms/v1/kms/key-response"
CTX_APP_CERT_RESPONSE: Final = b"quorum-kms/v1/kms/app-key-cert"
"""A node's identity key signs its partial app-key certificate (``AppKeyCertShare``)."""
CTX_RESHARE_ACK: Final = b"quorum-kms/v1/reshare/ack"
CTX_MEMBERSHIP_PROPOSAL: Final = b"quorum-kms/v1/membership/proposal"
CTX_MEMBERSHIP_VOTE: Final = b"quorum-kms/v1/membership/vote"
CTX_GENESIS_ENDORSEMENT: Final = b"quorum-kms/v1/membership/genesis-endorsement"
"""A genesis member's identity key vouches for a genesis certificate under this context."""

CONTEXTS: Final[Mapping[str, bytes]] = types.MappingProxyType(
    {
        "CTX_DKG_DEAL": CTX_DKG_DEAL,
        "CTX_DKG_RESPONSE": CTX_DKG_RESPONSE,
        "CTX_DKG_JUSTIFICATION": CTX_DKG_JUSTIFICATION,
        "CTX_BROADCAST_DIGEST": CTX_BROADCAST_DIGEST,
        "CTX_BROADCAST_RELAY": CTX_BROADCAST_RELAY,
        "CTX_DKG_KEY": CTX_DKG_KEY,
        "CTX_RUN_KEY": CTX_RUN_KEY,
        "CTX_KEY_RESPONSE": CTX_KEY_RESPONSE,
        "CTX_APP_CERT_RESPONSE": CTX_APP_CERT_RESPONSE,
        "CTX_RESHARE_ACK": CTX_RESHARE_ACK,
        "CTX_MEMBERSHIP_PROPOSAL": CTX_MEMBERSHIP_PROPOSAL,
        "CTX_MEMBERSHIP_VOTE": CTX_MEMBERSHIP_VOTE,
        "CTX_GENESIS_ENDORSEMENT": CTX_GENESIS_ENDORSEMENT,
    }
)
"""Registry of the known signing contexts, by constant name."""

_MAX_CONTEXT_LENGTH: Final = 255


def check_context(context: bytes) -> None:
    """Raise ``ValueError`` unless ``context`` is a well-formed signing context.

    Well-formed: 1 to 255 bytes, starting with :data:`CONTEXT_PREFIX` and naming a
    message kind after it (the bare prefix is refused).
    """
    if not isinstance(context, bytes):
        raise ValueError("signing context must be bytes")
    if not context:
        raise ValueError("signing context must not be empty")
    if len(context) > _MAX_CONTEXT_LENGTH:
        raise ValueError(f"signing context longer than {_MAX_CONTEXT_LENGTH} bytes")
    if not context.startswith(CONTEXT_PREFIX) or len(context) == len(CONTEXT_PREFIX):
        raise ValueError(f"signing context must be {CONTEXT_PREFIX!r} followed by a message kind")


def _framed(context: bytes, message: bytes) -> bytes:
    """``I2OSP(len(context), 1) || context || message``: injective in (context, message)."""
    check_context(context)
    return bytes([len(context)]) + context + bytes(message)


# --- Ed25519 point decoding, RFC 8032 §5.1.3, to refuse invalid and small-order keys ---------

_P: Final = 2**255 - 19
_D: Final = (-121665 * pow(121666, -1, 2**255 - 19)) % (2**255 - 19)
_SQRT_M1: Final = pow(2, (2**255 - 20) // 4, 2**255 - 19)


def _decode_point(data: bytes) -> tuple[int, int] | None:
    """RFC 8032 §5.1.3 point decoding; ``None`` if ``data`` is not a canonical point."""
    y = int.from_bytes(data, "little")
    x_0 = y >> 255
    y &= (1 << 255) - 1
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    vx2 = (v * x * x) % _P
    if vx2 != u:
        if vx2 != (-u) % _P:
            return None
        x = (x * _SQRT_M1) % _P
    if x == 0 and x_0 == 1:
        return None
    if x % 2 != x_0:
        x = _P - x
    return x, y


def _edwards_add(p1: tuple[int, int], p2: tuple[int, int]) -> tuple[int, int]:
    """RFC 8032 §5.1.4 complete addition on ``-x^2 + y^2 = 1 + d x^2 y^2`` (affine)."""
    x1, y1 = p1
    x2, y2 = p2
    t = (_D * x1 * x2 * y1 * y2) % _P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, -1, _P)
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, -1, _P)
    return x3 % _P, y3 % _P


def _has_small_order(point: tuple[int, int]) -> bool:
    """True iff ``[8]point`` is the neutral element ``(0, 1)``: a torsion point."""
    for _ in range(3):
        point = _edwards_add(point, point)
    return point == (0, 1)


POINT_CHECK_CACHE: Final = 4096
"""Public key encodings whose point check (``_point_refusal``) one process remembers."""


@functools.lru_cache(maxsize=POINT_CHECK_CACHE)
def _point_refusal(data: bytes) -> str | None:
    """Why ``data`` is refused as a public key (RFC 8032 §5.1.3 decoding, then the
    small-order check), or ``None``. Pure big-integer arithmetic, about a tenth of a
    millisecond, and the same few identity keys arrive in every message: remembered for
    the last ``POINT_CHECK_CACHE`` encodings (a flood of new ones only evicts)."""
    point = _decode_point(data)
    if point is None:
        return "Ed25519 public key is not a valid curve point"
    if _has_small_order(point):
        return "Ed25519 public key is a small-order point"
    return None


# --- Keys -------------------------------------------------------------------------------------


_KEY_CACHE: dict[bytes, VerifyKey] | None = None

VERIFIED_MEMO_LIMIT: Final = 16_384
"""The most verified signatures one cached key remembers (then it starts afresh)."""


def set_key_cache(cache: dict[bytes, VerifyKey] | None) -> dict[bytes, VerifyKey] | None:
    """Opt in to sharing decoded public keys (``None``: off, the default); returns the
    previous cache. Decoding is pure and keys are immutable, so a process hosting many
    simulated members (``sim``) may decode each identity once.

    A key decoded through the cache also remembers the signatures it has verified
    (``VerifyKey.verify``), so members that share it verify each (message, signature)
    pair once between them."""
    global _KEY_CACHE
    previous, _KEY_CACHE = _KEY_CACHE, cache
    return previous


class VerifyKey:
    """An Ed25519 public key (RFC 8032 §5.1.5); compares and hashes by its encoding."""

    __slots__ = ("_bytes", "_key", "_verified")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self._bytes = key.public_bytes_raw()
        # Only on keys shared through the opt-in key cache (``set_key_cache``): the
        # ``signature || framed message`` strings that verified. Ed25519 verification
        # is a deterministic function of (key, message, signature), so answering a
        # repeat of exactly those bytes from here gives the verdict a new check would;
        # a failure is never remembered (it is checked again, and fails again), and
        # the signature's fixed length makes the concatenation injective.
        self._verified: set[bytes] | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> VerifyKey:
        """Decode a 32-byte public key (RFC 8032 §5.1.3).

        Raises :class:`~mpc.errors.InvalidEncoding` on a wrong length, a non-canonical
        or off-curve encoding, or a small-order point (whose signatures would not bind
        the message).
        """
        if not isinstance(data, bytes) or len(data) != PUBLIC_KEY_LENGTH:
            raise InvalidEncoding(f"Ed25519 public key must be {PUBLIC_KEY_LENGTH} bytes")
        if type(data) is not bytes:
            # The object's own contents, once, for both the point check and the key: a
            # subclass's ``__bytes__``, ``__hash__`` or ``__eq__`` is not consulted.
            data = bytes(memoryview(data))
        cache = _KEY_CACHE
        if cache is not None:
            hit = cache.get(data)
            if hit is None:
                hit = cls._decode(data)
                hit._verified = set()
                cache[data] = hit
            return hit
        return cls._decode(data)

    @classmethod
    def _decode(cls, data: bytes) -> VerifyKey:
        refused = _point_refusal(data)
        if refused is not None:
            raise InvalidEncoding(refused)
        try:
            key = Ed25519PublicKey.from_public_bytes(data)
        except ValueError as exc:
            raise InvalidEncoding("Ed25519 public key rejected") from exc
        return cls(key)

    def to_bytes(self) -> bytes:
        """The 32-byte encoding (RFC 8032 §5.1.2)."""
        return self._bytes

    def verify(self, context: bytes, message: bytes, signature: bytes) -> None:
        """Verify ``signature`` over ``message`` under ``context`` (RFC 8032 §5.1.7).

        Returns ``None`` on success and raises :class:`~mpc.errors.InvalidSignature`
        otherwise; an ill-formed ``context`` raises ``ValueError`` (a caller bug).
        """
        framed = _framed(context, message)
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LENGTH:
            raise InvalidSignature(f"Ed25519 signature must be {SIGNATURE_LENGTH} bytes")
        verified = self._verified
        if verified is not None:
            seen = signature + framed
            if seen in verified:
                return
        try:
            self._key.verify(signature, framed)
        except _CryptographyInvalidSignature as exc:
            raise InvalidSignature("Ed25519 signature verification failed") from exc
        if verified is not None:
            if len(verified) >= VERIFIED_MEMO_LIMIT:
                verified.clear()  # bounded; a cleared entry is only verified again
            verified.add(seen)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyKey):
            return NotImplemented
        return self._bytes == other._bytes

    def __hash__(self) -> int:
        return hash((VerifyKey, self._bytes))

    def __repr__(self) -> str:
        return f"VerifyKey({self._bytes.hex()})"


class SigningKey:
    """An Ed25519 private key (RFC 8032 §5.1.5) held as its 32-byte seed.

    ``repr`` never shows key material.
    """

    __slots__ = ("_key", "_verify_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self._verify_key = VerifyKey(key.public_key())

    @classmethod
    def generate(cls, rng: Callable[[int], bytes]) -> SigningKey:
        """A new key from the seed ``rng(32)``; ``rng`` returns ``n`` random bytes.

        Raises :class:`~mpc.errors.LocalProtocolError` if ``rng`` returns the wrong
        number of bytes.
        """
        seed = rng(SEED_LENGTH)
        if not isinstance(seed, bytes) or len(seed) != SEED_LENGTH:
            raise LocalProtocolError(f"rng must return exactly {SEED_LENGTH} bytes")
        return cls.from_seed(seed)

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key with the given 32-byte seed (RFC 8032 §5.1.5).

        Raises :class:`~mpc.errors.InvalidEncoding` if ``seed`` is not 32 bytes.
        """
        if not isinstance(seed, bytes) or len(seed) != SEED_LENGTH:
            raise InvalidEncoding(f"Ed25519 seed must be {SEED_LENGTH} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed_bytes(self) -> bytes:
        """The 32-byte seed."""
        return self._key.private_bytes_raw()

    def verify_key(self) -> VerifyKey:
        """The matching public key."""
        return self._verify_key

    def sign(self, context: bytes, message: bytes) -> bytes:
        """Sign ``I2OSP(len(context), 1) || context || message`` (RFC 8032 §5.1.6).

        Returns the 64-byte signature; an ill-formed ``context`` raises ``ValueError``.
        """
        return self._key.sign(_framed(context, message))

    def __repr__(self) -> str:
        return "<redacted>"
