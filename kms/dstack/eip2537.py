"""What a Solidity contract sends to the EIP-2537 precompiles to verify link 1 under ``MPK``.

Link 1 of a dstack key chain served by quorum-kms is the committee's BLS signature
``σ = s·H_APPCERT(m)`` (G1, min-signature orientation) over
``m = "dstack-kms-issued" ‖ ":" ‖ app_id ‖ root_public`` (``mpc.appcert``), and it
verifies when ``e(σ, g2) == e(H_APPCERT(m), MPK)``. On an EVM chain with EIP-2537
(Prague/Pectra; final addresses below) a contract checks it as follows:

1. ``expand_message_xmd`` with SHA-256 over ``m`` and ``DST_APPCERT`` into 128 bytes
   (RFC 9380 §5.3.1; the contract runs SHA-256 itself), split into two 64-byte chunks;
   each chunk, read as a 512-bit big-endian integer, is reduced mod ``p`` (the
   ``MODEXP`` precompile 0x05 with exponent 1 does it) — :func:`hash_to_field`.
2. ``BLS12_MAP_FP_TO_G1`` (0x10) on each reduced element, encoded as a 64-byte ``Fp``
   (:func:`map_fp_to_g1_inputs`); the precompile maps with SSWU and the 11-isogeny
   and clears the cofactor.
3. ``BLS12_G1ADD`` (0x0b) of the two 128-byte outputs gives ``H_APPCERT(m)`` (clearing
   the cofactor commutes with the addition, so this equals RFC 9380's
   ``clear_cofactor(Q0 + Q1)``).
4. ``BLS12_PAIRING_CHECK`` (0x0f) on ``(σ, -g2) ‖ (H_APPCERT(m), MPK)`` — 2 × 384 bytes
   (:func:`pairing_input`) — answers 32 bytes ending in ``01`` for a valid link.

Encodings (EIP-2537 "Fine points and encoding of base elements"): an ``Fp`` element
is 64 bytes big-endian (16 zero bytes, then 48); an ``Fp2`` element ``c0 + c1·v`` is
``encode(c0) ‖ encode(c1)`` — note: the reverse of the compressed (ZCash) order,
which puts ``c1`` first; a G1 point is ``x ‖ y`` (128 bytes), a G2 point ``x ‖ y``
(256 bytes), the point at infinity all zeros. The precompile treats an infinity input
as pairing to 1, so :func:`pairing_input` refuses an identity ``σ`` or ``MPK``: the
contract must too.

This module computes the inputs (decompressing points with its own field arithmetic,
after ``mpc.math`` has checked them); it does not evaluate the precompiles. The tests
evaluate them with an independent implementation (py-ecc).
"""

from __future__ import annotations

import hashlib

from mpc.appcert import DST_APPCERT, appcert_base, link_message
from mpc.errors import InvalidEncoding
from mpc.math import G1, G2

P = 0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB
"""The BLS12-381 base field modulus."""

G1ADD = 0x0B
G1MSM = 0x0C
G2ADD = 0x0D
G2MSM = 0x0E
PAIRING_CHECK = 0x0F
MAP_FP_TO_G1 = 0x10
MAP_FP2_TO_G2 = 0x11
MODEXP = 0x05
"""Precompile addresses (EIP-2537 final; ``MODEXP`` is EIP-198's)."""

FP_SIZE = 64
G1_SIZE = 128
G2_SIZE = 256
PAIR_SIZE = G1_SIZE + G2_SIZE
FIELD_ELEMENT_BYTES = 64
"""RFC 9380's ``L`` for BLS12-381: 64 bytes of ``expand_message_xmd`` per element."""

_HALF = (P - 1) // 2
_G2_X = (
    0x024AA2B2F08F0A91260805272DC51051C6E47AD4FA403B02B4510B647AE3D1770BAC0326A805BBEFD48056C8C121BDB8,
    0x13E02B6052719F607DACD3A088274F65596BD0D09920B61AB5DA61BBDC7F5049334CF11213945D57E5AC7D055D042B7E,
)
_G2_Y = (
    0x0CE5D527727D6E118CC9CDC6DA2E351AADFD9BAA8CBDD3A76D429A695160D12C923AC9CC3BACA289E193548608B82801,
    0x0606C4A02EA734CC32ACD2B02BC28B99CB3E287E85A763AF267492AB572E99AB3F370D275CEC1DA1AAA9075FF05F79BE,
)

Fp2 = tuple[int, int]


# --- field elements -----------------------------------------------------------


def encode_fp(x: int) -> bytes:
    """64 bytes big-endian: 16 zero bytes, then the 48-byte element."""
    if not 0 <= x < P:
        raise ValueError("not an element of Fp")
    return x.to_bytes(FP_SIZE, "big")


def encode_fp2(x: Fp2) -> bytes:
    """``encode(c0) ‖ encode(c1)`` for ``c0 + c1·v``."""
    return encode_fp(x[0]) + encode_fp(x[1])


def _mul2(a: Fp2, b: Fp2) -> Fp2:
    return ((a[0] * b[0] - a[1] * b[1]) % P, (a[0] * b[1] + a[1] * b[0]) % P)


def _pow2(a: Fp2, e: int) -> Fp2:
    result: Fp2 = (1, 0)
    while e:
        if e & 1:
            result = _mul2(result, a)
        a = _mul2(a, a)
        e >>= 1
    return result


def _sqrt_fp(a: int) -> int | None:
    y = pow(a, (P + 1) // 4, P)
    return y if y * y % P == a % P else None


def _sqrt_fp2(a: Fp2) -> Fp2 | None:
    """A square root in ``Fp2 = Fp[v]/(v² + 1)`` (p ≡ 3 mod 4; Adj and
    Rodríguez-Henríquez, Algorithm 9), or ``None``."""
    a1 = _pow2(a, (P - 3) // 4)
    alpha = _mul2(_mul2(a1, a1), a)
    x0 = _mul2(a1, a)
    if alpha == (P - 1, 0):
        x = _mul2((0, 1), x0)
    else:
        x = _mul2(_pow2(((1 + alpha[0]) % P, alpha[1]), (P - 1) // 2), x0)
    return x if _mul2(x, x) == (a[0] % P, a[1] % P) else None


# --- points -------------------------------------------------------------------


def g1_affine(point: G1 | bytes) -> tuple[int, int] | None:
    """Affine ``(x, y)`` of a G1 point (``None`` for the identity). Bytes are decoded
    by ``mpc.math`` first, with every check (raises ``InvalidEncoding``)."""
    data = (point if isinstance(point, G1) else G1.from_bytes(bytes(point))).to_bytes()
    if data[0] & 0x40:
        return None
    x = int.from_bytes(bytes([data[0] & 0x1F]) + data[1:], "big")
    y = _sqrt_fp((pow(x, 3, P) + 4) % P)
    if y is None:  # pragma: no cover - mpc.math accepted the point
        raise InvalidEncoding("point not on the curve")
    if bool(data[0] & 0x20) != (y > _HALF):
        y = P - y
    return x, y


def g2_affine(point: G2 | bytes) -> tuple[Fp2, Fp2] | None:
    """Affine ``(x, y)`` of a G2 point, ``Fp2`` as ``(c0, c1)`` (``None`` for the
    identity). The compressed form stores ``x.c1`` first."""
    data = (point if isinstance(point, G2) else G2.from_bytes(bytes(point))).to_bytes()
    if data[0] & 0x40:
        return None
    x1 = int.from_bytes(bytes([data[0] & 0x1F]) + data[1:48], "big")
    x0 = int.from_bytes(data[48:], "big")
    x = (x0, x1)
    rhs = _mul2(_mul2(x, x), x)
    y = _sqrt_fp2(((rhs[0] + 4) % P, (rhs[1] + 4) % P))
    if y is None:  # pragma: no cover - mpc.math accepted the point
        raise InvalidEncoding("point not on the curve")
    largest = y[1] > _HALF if y[1] else y[0] > _HALF
    if bool(data[0] & 0x20) != largest:
        y = ((P - y[0]) % P, (P - y[1]) % P)
    return x, y


def encode_g1(point: G1 | bytes) -> bytes:
    """The 128-byte EIP-2537 encoding ``x ‖ y`` (all zeros for the identity)."""
    xy = g1_affine(point)
    return bytes(G1_SIZE) if xy is None else encode_fp(xy[0]) + encode_fp(xy[1])


def encode_g2(point: G2 | bytes) -> bytes:
    """The 256-byte EIP-2537 encoding ``x.c0 ‖ x.c1 ‖ y.c0 ‖ y.c1`` (zeros for the identity)."""
    xy = g2_affine(point)
    return bytes(G2_SIZE) if xy is None else encode_fp2(xy[0]) + encode_fp2(xy[1])


NEG_G2 = encode_fp2(_G2_X) + encode_fp2((P - _G2_Y[0], P - _G2_Y[1]))
"""``-g2``, encoded: the constant a contract hard-codes."""


# --- hash to G1 -----------------------------------------------------------------


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 §5.3.1 with SHA-256 (``b_in_bytes = 32``, ``s_in_bytes = 64``)."""
    if len(dst) > 255 or length > 255 * 32 or length > 0xFFFF:
        raise ValueError("DST over 255 bytes or output too long")
    dst_prime = bytes(dst) + bytes([len(dst)])
    b0 = hashlib.sha256(
        bytes(64) + bytes(msg) + length.to_bytes(2, "big") + b"\0" + dst_prime
    ).digest()
    blocks = [hashlib.sha256(b0 + b"\x01" + dst_prime).digest()]
    while 32 * len(blocks) < length:
        prev = bytes(x ^ y for x, y in zip(b0, blocks[-1], strict=True))
        blocks.append(hashlib.sha256(prev + bytes([len(blocks) + 1]) + dst_prime).digest())
    return b"".join(blocks)[:length]


def hash_to_field(message: bytes, dst: bytes = DST_APPCERT) -> tuple[int, int]:
    """``(u0, u1)``: two 64-byte chunks of ``expand_message_xmd``, each mod ``p``."""
    uniform = expand_message_xmd(message, dst, 2 * FIELD_ELEMENT_BYTES)
    return (
        int.from_bytes(uniform[:FIELD_ELEMENT_BYTES], "big") % P,
        int.from_bytes(uniform[FIELD_ELEMENT_BYTES:], "big") % P,
    )


def map_fp_to_g1_inputs(message: bytes, dst: bytes = DST_APPCERT) -> tuple[bytes, bytes]:
    """The two 64-byte inputs of the ``BLS12_MAP_FP_TO_G1`` calls."""
    u0, u1 = hash_to_field(message, dst)
    return encode_fp(u0), encode_fp(u1)


def hashed_message(message: bytes) -> bytes:
    """``H_APPCERT(m)`` encoded (128 bytes): what ``G1ADD`` of the two map outputs returns
    (``mpc.appcert.appcert_base``, the one place the tag is hashed to the curve)."""
    return encode_g1(appcert_base(message))


# --- the pairing check ----------------------------------------------------------


def pairing_input(mpk: G2 | bytes, message: bytes, signature: G1 | bytes) -> bytes:
    """``encode(σ) ‖ encode(-g2) ‖ encode(H(m)) ‖ encode(MPK)`` (768 bytes): the input
    of ``BLS12_PAIRING_CHECK`` that answers 1 iff ``e(σ, g2) == e(H(m), MPK)``.

    Raises ``ValueError`` (``InvalidEncoding``) for a point that does not decode, and
    for an identity ``σ`` or ``MPK``, which the precompile would accept."""
    sig = encode_g1(signature)
    key = encode_g2(mpk)
    if sig == bytes(G1_SIZE) or key == bytes(G2_SIZE):
        raise InvalidEncoding("the identity is neither a signature nor a master public key")
    return sig + NEG_G2 + hashed_message(message) + key


def link_pairing_input(
    mpk: G2 | bytes, app_id: bytes, root_public: bytes, signature: G1 | bytes
) -> bytes:
    """:func:`pairing_input` for link 1 of app ``app_id``'s root key ``root_public``."""
    return pairing_input(mpk, link_message(app_id, root_public), signature)


__all__ = [
    "G1ADD",
    "G1MSM",
    "G1_SIZE",
    "G2ADD",
    "G2MSM",
    "G2_SIZE",
    "MAP_FP2_TO_G2",
    "MAP_FP_TO_G1",
    "MODEXP",
    "NEG_G2",
    "PAIRING_CHECK",
    "PAIR_SIZE",
    "P",
    "encode_fp",
    "encode_fp2",
    "encode_g1",
    "encode_g2",
    "expand_message_xmd",
    "g1_affine",
    "g2_affine",
    "hash_to_field",
    "hashed_message",
    "link_pairing_input",
    "map_fp_to_g1_inputs",
    "pairing_input",
]
