"""BLS12-381 field constants and scalar-field arithmetic.

Constants from draft-irtf-cfrg-pairing-friendly-curves-11 §4.2.1 (BLS12_381).
Scalars are Python ints reduced mod ``R``; helpers here are pure and
variable-time, so use them on public values (indices, Lagrange coefficients,
public challenge coefficients) or for bookkeeping of secrets that never leave
this process in a timing-observable way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

P = 0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB
"""Base field modulus p."""

R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
"""Order r of G1, G2 and GT (the scalar field)."""

SCALAR_BYTES = 32


def fr(x: int) -> int:
    """Reduce an integer into the scalar field ``[0, R)``."""
    return x % R


def fr_inv(x: int) -> int:
    """Multiplicative inverse mod ``R``; raises ``ZeroDivisionError`` for 0."""
    x %= R
    if x == 0:
        raise ZeroDivisionError("0 has no inverse in the scalar field")
    return pow(x, -1, R)


def scalar_to_bytes(x: int) -> bytes:
    """Big-endian 32-byte encoding of a scalar in ``[0, R)``."""
    return (x % R).to_bytes(SCALAR_BYTES, "big")


def scalar_from_bytes(b: bytes) -> int:
    """Decode a canonical 32-byte big-endian scalar; raises ``ValueError`` if ≥ R."""
    from mpc.errors import InvalidEncoding

    if len(b) != SCALAR_BYTES:
        raise InvalidEncoding(f"scalar must be {SCALAR_BYTES} bytes, got {len(b)}")
    x = int.from_bytes(b, "big")
    if x >= R:
        raise InvalidEncoding("scalar is not reduced mod r")
    return x


def lagrange_coefficients(xs: Sequence[int], at: int = 0) -> list[int]:
    """Lagrange basis coefficients ``λ_i(at)`` for the distinct points ``xs``.

    ``Σ λ_i·f(x_i) = f(at)`` for every polynomial of degree < ``len(xs)``.
    Uses one batched inversion. Raises ``ValueError`` on duplicate points.
    """
    pts = [x % R for x in xs]
    if len(set(pts)) != len(pts):
        raise ValueError("interpolation points must be distinct")
    at %= R
    nums: list[int] = []
    dens: list[int] = []
    for i, xi in enumerate(pts):
        num = 1
        den = 1
        for j, xj in enumerate(pts):
            if i != j:
                num = num * (at - xj) % R
                den = den * (xi - xj) % R
        nums.append(num)
        dens.append(den)
    invs = batch_inverse(dens)
    return [n * d % R for n, d in zip(nums, invs, strict=True)]


def batch_inverse(values: Iterable[int]) -> list[int]:
    """Montgomery's trick: inverses of many non-zero scalars with one inversion."""
    vals = [v % R for v in values]
    if not vals:
        return []
    prefix = [1] * len(vals)
    acc = 1
    for i, v in enumerate(vals):
        if v == 0:
            raise ZeroDivisionError("0 has no inverse in the scalar field")
        prefix[i] = acc
        acc = acc * v % R
    inv = pow(acc, -1, R)
    out = [0] * len(vals)
    for i in range(len(vals) - 1, -1, -1):
        out[i] = inv * prefix[i] % R
        inv = inv * vals[i] % R
    return out
