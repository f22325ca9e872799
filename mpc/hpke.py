"""RFC 9180 Hybrid Public Key Encryption (HPKE), base mode only.

Suite: KEM ``DHKEM(X25519, HKDF-SHA256)`` (kem_id ``0x0020``), KDF ``HKDF-SHA256``
(kdf_id ``0x0001``) and AEAD ``AES-128-GCM`` (``0x0001``) or ``ChaCha20-Poly1305``
(``0x0003``), RFC 9180 §7.1, §7.2 and §7.3.

Built from ``cryptography``'s primitives (X25519, HMAC-SHA256, AES-GCM,
ChaCha20-Poly1305); ``cryptography``'s own HPKE module is deliberately not used so
that the key schedule is visible and checkable against the RFC's test vectors
(RFC 9180 Appendix A.1 and A.2).

No function here draws global randomness: everything that needs random bytes takes
``rng``, a callable returning ``n`` random bytes (``os.urandom`` in production, a
seeded generator in tests).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from mpc.errors import DecryptionError, InvalidEncoding, LocalProtocolError

__all__ = [
    "AEAD",
    "KDF_ID",
    "KEM_ID",
    "MODE_BASE",
    "N_ENC",
    "N_PK",
    "N_SK",
    "KeyScheduleSecrets",
    "PrivateKey",
    "ReceiverContext",
    "Rng",
    "SenderContext",
    "derive_key_pair",
    "generate_key_pair",
    "open",
    "seal",
    "setup_base_receiver",
    "setup_base_sender",
]

Rng = Callable[[int], bytes]
"""A source of randomness: ``rng(n)`` returns ``n`` random bytes."""

MODE_BASE: Final = 0x00
"""RFC 9180 §5 Table 1: ``mode_base``."""

KEM_ID: Final = 0x0020
"""RFC 9180 §7.1 Table 2: ``DHKEM(X25519, HKDF-SHA256)``."""

KDF_ID: Final = 0x0001
"""RFC 9180 §7.2 Table 3: ``HKDF-SHA256``."""

N_SECRET: Final = 32
"""RFC 9180 §7.1 Table 2: ``Nsecret`` of DHKEM(X25519, HKDF-SHA256)."""

N_ENC: Final = 32
"""RFC 9180 §7.1 Table 2: ``Nenc``, the length of an encapsulated key."""

N_PK: Final = 32
"""RFC 9180 §7.1 Table 2: ``Npk``, the length of a serialized public key."""

N_SK: Final = 32
"""RFC 9180 §7.1 Table 2: ``Nsk``, the length of a serialized private key."""

N_H: Final = 32
"""RFC 9180 §7.2 Table 3: ``Nh``, the output length of HKDF-SHA256's Extract."""

_HPKE_VERSION: Final = b"HPKE-v1"
_KEM_SUITE_ID: Final = b"KEM" + KEM_ID.to_bytes(2, "big")
_MAX_EXPAND: Final = 255 * N_H


class AEAD(enum.IntEnum):
    """RFC 9180 §7.3 Table 5: the supported AEAD identifiers."""

    AES_128_GCM = 0x0001
    CHACHA20_POLY1305 = 0x0003

    @property
    def n_k(self) -> int:
        """``Nk``: the length in bytes of the AEAD key (RFC 9180 §7.3)."""
        return 16 if self is AEAD.AES_128_GCM else 32

    @property
    def n_n(self) -> int:
        """``Nn``: the length in bytes of the AEAD nonce (RFC 9180 §7.3)."""
        return 12

    @property
    def n_t(self) -> int:
        """``Nt``: the length in bytes of the AEAD tag (RFC 9180 §7.3)."""
        return 16


def _suite_id(aead: AEAD) -> bytes:
    """RFC 9180 §5.1: ``"HPKE" || I2OSP(kem_id, 2) || I2OSP(kdf_id, 2) || I2OSP(aead_id, 2)``."""
    return (
        b"HPKE"
        + KEM_ID.to_bytes(2, "big")
        + KDF_ID.to_bytes(2, "big")
        + int(aead).to_bytes(2, "big")
    )


# --- HKDF-SHA256 (RFC 5869) and the labeled variants of RFC 9180 §4 --------------------------


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def _extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 9180 §4 ``Extract(salt, ikm)``: HKDF-Extract (RFC 5869 §2.2).

    An empty salt is equivalent to ``Nh`` zero bytes: HMAC zero-pads its key.
    """
    return _hmac_sha256(salt, ikm)


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 9180 §4 ``Expand(prk, info, L)``: HKDF-Expand (RFC 5869 §2.3)."""
    if not 0 <= length <= _MAX_EXPAND:
        raise LocalProtocolError(f"HKDF-Expand length {length} outside [0, {_MAX_EXPAND}]")
    okm = b""
    block = b""
    counter = 1
    while len(okm) < length:
        block = _hmac_sha256(prk, block + info + bytes([counter]))
        okm += block
        counter += 1
    return okm[:length]


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """RFC 9180 §4 ``LabeledExtract``: ``Extract(salt, "HPKE-v1" || suite_id || label || ikm)``."""
    return _extract(salt, _HPKE_VERSION + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    """RFC 9180 §4 ``LabeledExpand``.

    ``Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id || label || info, L)``.
    """
    if not 0 <= length <= _MAX_EXPAND:
        raise LocalProtocolError(f"LabeledExpand length {length} outside [0, {_MAX_EXPAND}]")
    labeled_info = length.to_bytes(2, "big") + _HPKE_VERSION + suite_id + label + info
    return _expand(prk, labeled_info, length)


# --- DHKEM(X25519, HKDF-SHA256), RFC 9180 §4.1 -------------------------------------------------


class PrivateKey:
    """An X25519 private key of ``DHKEM(X25519, HKDF-SHA256)`` (RFC 9180 §4.1, §7.1).

    ``repr`` never shows key material.
    """

    __slots__ = ("_key", "_public")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self._public = key.public_key().public_bytes_raw()

    @classmethod
    def from_private_bytes(cls, data: bytes) -> PrivateKey:
        """RFC 9180 §7.1.2 ``DeserializePrivateKey``: 32 raw bytes (RFC 7748 §5).

        Raises :class:`~mpc.errors.InvalidEncoding` if ``data`` is not ``Nsk`` = 32 bytes.
        """
        if len(data) != N_SK:
            raise InvalidEncoding(f"X25519 private key must be {N_SK} bytes, got {len(data)}")
        return cls(X25519PrivateKey.from_private_bytes(bytes(data)))

    def public_bytes(self) -> bytes:
        """RFC 9180 §7.1.1 ``SerializePublicKey``: the 32-byte X25519 public key."""
        return self._public

    def private_bytes(self) -> bytes:
        """RFC 9180 §7.1.2 ``SerializePrivateKey``: the raw 32 bytes.

        Only for deliberate disclosure (e.g. a client revealing a key as evidence).
        """
        return self._key.private_bytes_raw()

    def _dh(self, pk: X25519PublicKey) -> bytes:
        """RFC 9180 §4.1 ``DH(skX, pkY)``; raises ``ValueError`` on the all-zero output
        (RFC 9180 §7.1.4)."""
        shared = self._key.exchange(pk)
        if shared == bytes(len(shared)):  # defence in depth; cryptography already refuses
            raise ValueError("X25519 produced the all-zero shared secret")
        return shared

    def __repr__(self) -> str:
        return "<redacted>"


def derive_key_pair(ikm: bytes) -> tuple[PrivateKey, bytes]:
    """RFC 9180 §7.1.3 ``DeriveKeyPair(ikm)`` for X25519.

    ``dkp_prk = LabeledExtract("", "dkp_prk", ikm)``,
    ``sk = LabeledExpand(dkp_prk, "sk", "", Nsk)``, with
    ``suite_id = "KEM" || I2OSP(kem_id, 2)`` (RFC 9180 §4.1).

    ``ikm`` must be at least ``Nsk`` = 32 bytes (the RFC asks for at least ``Nsk``
    bytes of entropy); shorter input raises :class:`~mpc.errors.LocalProtocolError`.
    Returns the private key and the 32-byte serialized public key.
    """
    if len(ikm) < N_SK:
        raise LocalProtocolError(f"DeriveKeyPair ikm must be at least {N_SK} bytes")
    dkp_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"dkp_prk", ikm)
    sk = _labeled_expand(_KEM_SUITE_ID, dkp_prk, b"sk", b"", N_SK)
    key = PrivateKey.from_private_bytes(sk)
    return key, key.public_bytes()


def _draw(rng: Rng, n: int) -> bytes:
    out = rng(n)
    if not isinstance(out, bytes) or len(out) != n:
        raise LocalProtocolError(f"rng must return exactly {n} bytes")
    return out


def generate_key_pair(rng: Rng) -> tuple[PrivateKey, bytes]:
    """RFC 9180 §4 ``GenerateKeyPair()``: ``DeriveKeyPair(rng(32))`` (§7.1.3)."""
    return derive_key_pair(_draw(rng, N_SK))


def _deserialize_public_key(data: bytes) -> X25519PublicKey:
    """RFC 9180 §7.1.1 ``DeserializePublicKey``; raises :class:`~mpc.errors.InvalidEncoding`."""
    if len(data) != N_PK:
        raise InvalidEncoding(f"X25519 public key must be {N_PK} bytes, got {len(data)}")
    return X25519PublicKey.from_public_bytes(bytes(data))


def _extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    """RFC 9180 §4.1 ``ExtractAndExpand(dh, kem_context)``."""
    eae_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, N_SECRET)


def _encap(pk_r: bytes, ikm_e: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 §4.1 ``Encap(pkR)`` with the ephemeral key from ``DeriveKeyPair(ikm_e)``.

    Returns ``(shared_secret, enc)``. A public key of the wrong length, or one that
    yields the all-zero DH output (a small-order point, RFC 9180 §7.1.4), raises
    :class:`~mpc.errors.InvalidEncoding`.
    """
    pk = _deserialize_public_key(pk_r)
    sk_e, enc = derive_key_pair(ikm_e)
    try:
        dh = sk_e._dh(pk)
    except ValueError as exc:
        raise InvalidEncoding("recipient public key is a small-order X25519 point") from exc
    kem_context = enc + bytes(pk_r)
    return _extract_and_expand(dh, kem_context), enc


def _decap(enc: bytes, sk_r: PrivateKey) -> bytes:
    """RFC 9180 §4.1 ``Decap(enc, skR)``.

    ``enc`` of the wrong length raises :class:`~mpc.errors.InvalidEncoding`; an ``enc``
    yielding the all-zero DH output (RFC 9180 §7.1.4) raises
    :class:`~mpc.errors.DecryptionError`.
    """
    pk_e = _deserialize_public_key(enc)
    try:
        dh = sk_r._dh(pk_e)
    except ValueError as exc:
        raise DecryptionError("encapsulated key is a small-order X25519 point") from exc
    kem_context = bytes(enc) + sk_r.public_bytes()
    return _extract_and_expand(dh, kem_context)


# --- Key schedule and encryption contexts, RFC 9180 §5.1 - §5.3 ------------------------------


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class KeyScheduleSecrets:
    """The intermediate values of RFC 9180 §5.1 ``KeySchedule``, for known-answer tests.

    Obtained only through ``secrets_for_testing()`` on a context; ``repr`` is redacted.
    """

    shared_secret: bytes
    key_schedule_context: bytes
    secret: bytes
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes

    def __repr__(self) -> str:
        return "KeyScheduleSecrets(<redacted>)"


def _key_schedule(shared_secret: bytes, info: bytes, aead: AEAD) -> KeyScheduleSecrets:
    """RFC 9180 §5.1 ``KeySchedule`` for ``mode_base`` (``psk = psk_id = ""``)."""
    suite_id = _suite_id(aead)
    psk_id_hash = _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite_id, b"", b"info_hash", bytes(info))
    context = bytes([MODE_BASE]) + psk_id_hash + info_hash
    secret = _labeled_extract(suite_id, shared_secret, b"secret", b"")
    return KeyScheduleSecrets(
        shared_secret=shared_secret,
        key_schedule_context=context,
        secret=secret,
        key=_labeled_expand(suite_id, secret, b"key", context, aead.n_k),
        base_nonce=_labeled_expand(suite_id, secret, b"base_nonce", context, aead.n_n),
        exporter_secret=_labeled_expand(suite_id, secret, b"exp", context, N_H),
    )


class _Context:
    """RFC 9180 §5.2 encryption context shared by sender and receiver."""

    __slots__ = ("_aead", "_cipher", "_secrets", "_seq", "_suite_id")

    def __init__(self, secrets: KeyScheduleSecrets, aead: AEAD) -> None:
        self._aead = AEAD(aead)
        self._suite_id = _suite_id(self._aead)
        self._secrets = secrets
        self._cipher: AESGCM | ChaCha20Poly1305 = (
            AESGCM(secrets.key) if self._aead is AEAD.AES_128_GCM else ChaCha20Poly1305(secrets.key)
        )
        self._seq = 0

    @property
    def aead(self) -> AEAD:
        """The AEAD algorithm of this context."""
        return self._aead

    @property
    def seq(self) -> int:
        """The sequence number of the next message (RFC 9180 §5.2)."""
        return self._seq

    def _max_seq(self) -> int:
        return (1 << (8 * self._aead.n_n)) - 1

    def _next_nonce(self) -> bytes:
        """RFC 9180 §5.2 ``ComputeNonce(seq)``: ``base_nonce XOR I2OSP(seq, Nn)``.

        Raises :class:`~mpc.errors.LocalProtocolError` once the sequence number would
        overflow (``MessageLimitReachedError``); checked *before* the AEAD is used so
        no nonce is ever reused.
        """
        if self._seq >= self._max_seq():
            raise LocalProtocolError("HPKE context sequence number exhausted")
        base = self._secrets.base_nonce
        seq_bytes = self._seq.to_bytes(len(base), "big")
        return bytes(a ^ b for a, b in zip(base, seq_bytes, strict=True))

    def export(self, exporter_context: bytes, length: int) -> bytes:
        """RFC 9180 §5.3 ``Context.Export``.

        ``LabeledExpand(exporter_secret, "sec", exporter_context, L)`` with
        ``0 <= L <= 255 * Nh``; an out-of-range ``length`` raises
        :class:`~mpc.errors.LocalProtocolError`.
        """
        return _labeled_expand(
            self._suite_id, self._secrets.exporter_secret, b"sec", bytes(exporter_context), length
        )

    def secrets_for_testing(self) -> KeyScheduleSecrets:
        """The key-schedule secrets, for RFC 9180 Appendix A known-answer tests only."""
        return self._secrets

    def _set_seq_for_testing(self, seq: int) -> None:
        """Jump the sequence number. Tests only: reusing a sequence number reuses a nonce."""
        if not 0 <= seq <= self._max_seq():
            raise LocalProtocolError("sequence number out of range")
        self._seq = seq

    def __repr__(self) -> str:
        return f"{type(self).__name__}(aead={self._aead.name}, seq={self._seq}, secrets=<redacted>)"


class SenderContext(_Context):
    """RFC 9180 §5.2 sender context: ``seal`` and ``export``."""

    __slots__ = ()

    def seal(self, aad: bytes, pt: bytes) -> bytes:
        """RFC 9180 §5.2 ``ContextS.Seal(aad, pt)``; advances the sequence number."""
        nonce = self._next_nonce()
        ct = self._cipher.encrypt(nonce, bytes(pt), bytes(aad))
        self._seq += 1
        return ct


class ReceiverContext(_Context):
    """RFC 9180 §5.2 receiver context: ``open`` and ``export``."""

    __slots__ = ()

    def open(self, aad: bytes, ct: bytes) -> bytes:
        """RFC 9180 §5.2 ``ContextR.Open(aad, ct)``.

        Raises :class:`~mpc.errors.DecryptionError` on authentication failure; the
        sequence number advances only on success.
        """
        nonce = self._next_nonce()
        if len(ct) < self._aead.n_t:
            raise DecryptionError("ciphertext shorter than the AEAD tag")
        try:
            pt = self._cipher.decrypt(nonce, bytes(ct), bytes(aad))
        except InvalidTag as exc:
            raise DecryptionError("HPKE ciphertext failed authentication") from exc
        self._seq += 1
        return pt


def setup_base_sender(
    pk_r: bytes,
    info: bytes,
    *,
    rng: Rng,
    aead: AEAD = AEAD.CHACHA20_POLY1305,
    ikm_e: bytes | None = None,
) -> tuple[bytes, SenderContext]:
    """RFC 9180 §5.1.1 ``SetupBaseS(pkR, info)``.

    The ephemeral key is ``DeriveKeyPair(ikm_e)`` (RFC 9180 §7.1.3) if ``ikm_e`` is
    given (known-answer tests), else ``DeriveKeyPair(rng(32))``. Returns
    ``(enc, context)``. Raises :class:`~mpc.errors.InvalidEncoding` if ``pk_r`` is
    not 32 bytes or is a small-order point (RFC 9180 §7.1.4).
    """
    aead = AEAD(aead)
    seed = _draw(rng, N_SK) if ikm_e is None else bytes(ikm_e)
    shared_secret, enc = _encap(pk_r, seed)
    return enc, SenderContext(_key_schedule(shared_secret, info, aead), aead)


def setup_base_receiver(
    enc: bytes,
    sk_r: PrivateKey,
    info: bytes,
    *,
    aead: AEAD = AEAD.CHACHA20_POLY1305,
) -> ReceiverContext:
    """RFC 9180 §5.1.1 ``SetupBaseR(enc, skR, info)``.

    Raises :class:`~mpc.errors.InvalidEncoding` if ``enc`` is not 32 bytes, and
    :class:`~mpc.errors.DecryptionError` if it is a small-order point (RFC 9180 §7.1.4).
    """
    aead = AEAD(aead)
    shared_secret = _decap(enc, sk_r)
    return ReceiverContext(_key_schedule(shared_secret, info, aead), aead)


def seal(
    pk_r: bytes,
    info: bytes,
    aad: bytes,
    pt: bytes,
    *,
    rng: Rng,
    aead: AEAD = AEAD.CHACHA20_POLY1305,
) -> tuple[bytes, bytes]:
    """RFC 9180 §6.1 single-shot ``SealBase(pkR, info, aad, pt)``: returns ``(enc, ct)``."""
    enc, ctx = setup_base_sender(pk_r, info, rng=rng, aead=aead)
    return enc, ctx.seal(aad, pt)


def open(
    enc: bytes,
    sk_r: PrivateKey,
    info: bytes,
    aad: bytes,
    ct: bytes,
    *,
    aead: AEAD = AEAD.CHACHA20_POLY1305,
) -> bytes:
    """RFC 9180 §6.1 single-shot ``OpenBase(enc, skR, info, aad, ct)``.

    Raises :class:`~mpc.errors.DecryptionError` on failure.
    """
    return setup_base_receiver(enc, sk_r, info, aead=aead).open(aad, ct)
