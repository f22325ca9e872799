"""Reference conversions between py-ecc (pure Python, slow, independent) and ``mpc.math``.

Loaded by ``conftest.py`` (fixture ``ref``) so the test modules of this
directory share it without ``sys.path`` tricks. Nothing here imports
``mpc``: every helper works on py-ecc objects, integers and bytes, so the
tests compare two independent implementations.

GT byte layout of ``mpc.math.pairing`` (established empirically against
py-ecc and chia_rs 0.53.0 / blst, see ``test_pairing.py``)
---------------------------------------------------------------------------
``pairing(P, Q)`` returns chia_rs' ``GTElement.to_bytes()``, which is a raw
memory copy of blst's ``blst_fp12`` struct, *not* a canonical serialisation:

* 12 base-field coefficients of 48 bytes each, in the tower order
  Fp12 = Fp6[w]/(w² − v), Fp6 = Fp2[v]/(v³ − (1 + u)), Fp2 = Fp[u]/(u² + 1),
  c0 before c1 (before c2) at every level::

      c0.c0.c0, c0.c0.c1, c0.c1.c0, c0.c1.c1, c0.c2.c0, c0.c2.c1,
      c1.c0.c0, c1.c0.c1, c1.c1.c0, c1.c1.c1, c1.c2.c0, c1.c2.c1

  where ``a.b.c`` is Fp12 coefficient ``a`` (of 1, w), Fp6 coefficient ``b``
  (of 1, v, v²), Fp2 coefficient ``c`` (of 1, u);
* each coefficient ``x`` is fully reduced and written as a 48-byte big-endian
  integer. (blst keeps it in Montgomery form, ``x·2³⁸⁴ mod p``, little-endian
  limbs in memory; ``mpc.math.pairing`` converts that layout.) The GT identity
  is therefore ``00…01`` followed by zeros.

The *value* is the cube of the inverse of py-ecc's pairing::

    mpc.math.pairing(P, Q) == gt_bytes(pyecc_fq12_to_tower(pairing_pyecc(Q, P) ** -3))

py-ecc's Miller loop runs over |x| without the final conjugation (x < 0 for
BLS12-381), which inverts the value, and blst's final exponentiation raises
to 3·(p¹² − 1)/r. Both are fixed exponents prime to r, so either is a valid
non-degenerate bilinear pairing; only the bytes differ.
"""

from __future__ import annotations

import hashlib

from py_ecc.bls.g2_primitives import G1_to_pubkey, G2_to_signature
from py_ecc.bls.hash_to_curve import hash_to_G1, hash_to_G2
from py_ecc.optimized_bls12_381 import (
    FQ12,
    G1,
    G2,
    Z1,
    Z2,
    add,
    curve_order,
    field_modulus,
    multiply,
)

P = field_modulus
R = curve_order
MONTGOMERY_R = pow(2, 384, P)
"""blst's Montgomery constant 2³⁸⁴ mod p (six 64-bit limbs)."""
FP_BYTES = 48
GT_BYTES = 12 * FP_BYTES


# --- points -----------------------------------------------------------------


def g1_mul(k: int):
    """py-ecc ``k·G1`` for any integer ``k`` (reduced mod r first)."""
    return multiply(G1, k % R)


def g2_mul(k: int):
    """py-ecc ``k·G2`` for any integer ``k`` (reduced mod r first)."""
    return multiply(G2, k % R)


def g1_bytes(pt) -> bytes:
    """ZCash compressed encoding of a py-ecc G1 point."""
    return bytes(G1_to_pubkey(pt))


def g2_bytes(pt) -> bytes:
    """ZCash compressed encoding of a py-ecc G2 point."""
    return bytes(G2_to_signature(pt))


def g1_msm(points, scalars):
    """``Σ k_i·P_i`` with py-ecc (points are py-ecc G1 points)."""
    acc = Z1
    for pt, k in zip(points, scalars, strict=True):
        acc = add(acc, multiply(pt, k % R))
    return acc


def g2_msm(points, scalars):
    """``Σ k_i·Q_i`` with py-ecc (points are py-ecc G2 points)."""
    acc = Z2
    for pt, k in zip(points, scalars, strict=True):
        acc = add(acc, multiply(pt, k % R))
    return acc


def h2g1(msg: bytes, dst: bytes) -> bytes:
    """py-ecc RFC 9380 ``BLS12381G1_XMD:SHA-256_SSWU_RO_``, compressed (DST ≤ 255 bytes)."""
    return g1_bytes(hash_to_G1(msg, dst, hashlib.sha256))


def h2g2(msg: bytes, dst: bytes) -> bytes:
    """py-ecc RFC 9380 ``BLS12381G2_XMD:SHA-256_SSWU_RO_``, compressed (DST ≤ 255 bytes)."""
    return g2_bytes(hash_to_G2(msg, dst, hashlib.sha256))


# --- ZCash encoding from affine coordinates (independent of any library) ----


def _sign(y: int) -> bool:
    return y > (P - 1) // 2


def encode_g1_affine(x: int, y: int) -> bytes:
    """ZCash compressed G1 encoding of the affine point (x, y).

    Compression flag 0x80 always; sign flag 0x20 iff y > (p − 1)/2.
    """
    flags = 0x80 | (0x20 if _sign(y) else 0)
    out = bytearray(x.to_bytes(FP_BYTES, "big"))
    out[0] |= flags
    return bytes(out)


def encode_g2_affine(x: tuple[int, int], y: tuple[int, int]) -> bytes:
    """ZCash compressed G2 encoding of the affine point (x, y), coordinates as (c0, c1).

    Bytes are ``x.c1 ‖ x.c0`` with the flags in the top bits of the first byte;
    the sign flag is that of y.c1, or of y.c0 when y.c1 == 0 (y is
    lexicographically the larger of ±y, comparing c1 first).
    """
    sign = _sign(y[1]) if y[1] != 0 else _sign(y[0])
    flags = 0x80 | (0x20 if sign else 0)
    out = bytearray(x[1].to_bytes(FP_BYTES, "big") + x[0].to_bytes(FP_BYTES, "big"))
    out[0] |= flags
    return bytes(out)


# --- GT ---------------------------------------------------------------------


def pyecc_fq12_to_tower(f: FQ12) -> list[int]:
    """Rewrite a py-ecc FQ12 element in the Fp2/Fp6/Fp12 tower basis.

    py-ecc represents Fp12 as Fp[w]/(w¹² − 2w⁶ + 2): an element is Σ a_i·w^i
    (i = 0..11, a_i ∈ Fp) and its Fp2 is embedded by u = w⁶ − 1, so
    w⁶ = 1 + u = ξ and u² = w¹² − 2w⁶ + 1 = −1. The tower uses the same w with
    v = w², v³ = ξ. Writing i = 2m + k (k ∈ {0, 1}, m ∈ 0..5):

        w^i = w^k · v^m            for m < 3
        w^i = w^k · v^(m−3) · ξ    for m ≥ 3

    hence the Fp2 coefficient of w^k·v^m (m < 3) is
    ``a_{2m+k} + a_{2m+k+6}·(1 + u)``, i.e. ``c0 = a_{2m+k} + a_{2m+k+6}`` and
    ``c1 = a_{2m+k+6}``.

    Returns the 12 Fp integers in the order c0.c0.c0, c0.c0.c1, c0.c1.c0, …,
    c1.c2.c1 (Fp12 index k, then Fp6 index m, then Fp2 index).
    """
    a = [int(c) % P for c in f.coeffs]
    out: list[int] = []
    for k in range(2):
        for m in range(3):
            i = 2 * m + k
            out += [(a[i] + a[i + 6]) % P, a[i + 6]]
    return out


def tower_to_pyecc_fq12(coeffs: list[int]) -> FQ12:
    """Inverse of :func:`pyecc_fq12_to_tower`."""
    a = [0] * 12
    for k in range(2):
        for m in range(3):
            idx = 2 * (3 * k + m)
            c0, c1 = coeffs[idx], coeffs[idx + 1]
            i = 2 * m + k
            a[i + 6] = c1 % P
            a[i] = (c0 - c1) % P
    return FQ12(a)


def gt_bytes(tower: list[int]) -> bytes:
    """Serialise 12 tower coefficients the way ``mpc.math.pairing`` returns them.

    Each coefficient fully reduced, 48-byte big-endian, in tower order (see the
    module docstring).
    """
    if len(tower) != 12:
        raise ValueError("an Fp12 element has 12 Fp coefficients")
    return b"".join((x % P).to_bytes(FP_BYTES, "big") for x in tower)


def gt_from_bytes(data: bytes) -> list[int]:
    """Inverse of :func:`gt_bytes`: the 12 tower coefficients (as ordinary residues)."""
    if len(data) != GT_BYTES:
        raise ValueError("GT encoding is 576 bytes")
    return [int.from_bytes(data[i : i + FP_BYTES], "big") for i in range(0, GT_BYTES, FP_BYTES)]


def pyecc_conjugate(f: FQ12) -> FQ12:
    """``f^(p⁶)``: w ↦ −w, i.e. negate the odd-power coefficients (the inverse on GT)."""
    return FQ12([(-int(c) if i % 2 else int(c)) % P for i, c in enumerate(f.coeffs)])


def mpc_gt_from_pyecc(e: FQ12) -> bytes:
    """The bytes ``mpc.math.pairing(P, Q)`` returns, from ``e = py_ecc pairing(Q, P)``.

    ``mpc`` (blst) value = conj(e)³ = e⁻³ on GT; then :func:`gt_bytes` layout.
    """
    c = pyecc_conjugate(e)
    return gt_bytes(pyecc_fq12_to_tower(c * c * c))


GT_ONE = gt_bytes([1] + [0] * 11)
"""The encoding of the identity of GT (1 as 48 big-endian bytes, then zeros)."""
