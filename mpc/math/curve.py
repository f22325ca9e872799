"""The BLS12-381 groups G1 and G2 behind one backend-neutral API.

Backends (measured in ``bench/``; reasons in ``docs/design.md``):

* **blst** (``pyblst``) holds every point by default. Its scalar
  multiplication is constant-time, so secret scalars (shares, polynomial
  coefficients, IBE randomness) only ever meet blst.
* **arkworks** (``py_arkworks_bls12381``) runs multi-scalar multiplication
  over *public* points and scalars (commitments, batch-verification
  coefficients, Lagrange combination of public partials). Its scalar
  multiplication is variable-time: never hand it a secret.

Encoding is the ZCash compressed form (draft-irtf-cfrg-pairing-friendly-curves-11
Appendix C): 48 bytes for G1, 96 for G2, with the compression flag, the
infinity flag (the infinity point has exactly one encoding) and the sign flag
in the top three bits. ``from_bytes`` checks the flags and coordinate range
itself and then lets blst check the curve equation and the subgroup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

import py_arkworks_bls12381 as _ark
import pyblst as _blst

from mpc.errors import InvalidEncoding
from mpc.math.fields import P, R

_C_FLAG = 0x80
_I_FLAG = 0x40
_S_FLAG = 0x20

_G1_GENERATOR = bytes.fromhex(
    "97f1d3a73197d7942695638c4fa9ac0fc3688c4f9774b905a14e3a3f171bac586c55e83ff97a1aeffb3af00adb22c6bb"
)
_G2_GENERATOR = bytes.fromhex(
    "93e02b6052719f607dacd3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf11213945d57e5ac7d055d042b7e"
    "024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02b4510b647ae3d1770bac0326a805bbefd48056c8c121bdb8"
)


_GENERATORS: dict[type, _Point] = {}

_DECODE_CACHE: dict[bytes, _Point] | None = None


def set_decode_cache(cache: dict[bytes, _Point] | None) -> dict[bytes, _Point] | None:
    """Opt in to sharing decoded points (``None``: off, the default); returns the previous one.

    Decoding is pure and points are immutable, so a process that hosts many
    simulated members (``sim``) may decode each distinct encoding once and
    share the result. Keys are the encodings (48 or 96 bytes, so G1 and G2
    never collide); only successful decodes are stored.
    """
    global _DECODE_CACHE
    previous, _DECODE_CACHE = _DECODE_CACHE, cache
    return previous


class _Point:
    """A point of a prime-order group; subclasses fix the group."""

    __slots__ = ("_a", "_b", "_e")

    SIZE: ClassVar[int]
    _BLST: ClassVar[type[_blst.BlstP1Element] | type[_blst.BlstP2Element]]
    _ARK: ClassVar[type[_ark.G1Point] | type[_ark.G2Point]]
    _GEN: ClassVar[bytes]

    # Exactly one of the three is set at construction; the others are filled
    # lazily. ``_b`` is always the canonical compressed encoding.
    _e: _blst.BlstP1Element | _blst.BlstP2Element | None
    _a: _ark.G1Point | _ark.G2Point | None
    _b: bytes | None

    def __init__(self) -> None:
        raise TypeError(f"use {type(self).__name__}.from_bytes/generator/identity")

    @classmethod
    def _wrap(
        cls,
        e: _blst.BlstP1Element | _blst.BlstP2Element | None = None,
        a: _ark.G1Point | _ark.G2Point | None = None,
        b: bytes | None = None,
    ) -> Self:
        self = object.__new__(cls)
        self._e = e
        self._a = a
        self._b = b
        return self

    # --- construction -------------------------------------------------------

    @classmethod
    def generator(cls) -> Self:
        """The standard generator (draft-irtf-cfrg-pairing-friendly-curves-11 §4.2.1).

        One shared instance per group, decoded once: points are immutable.
        """
        g = _GENERATORS.get(cls)
        if g is None:
            g = cls._wrap(e=cls._BLST.uncompress(cls._GEN), b=cls._GEN)
            _GENERATORS[cls] = g
        return g  # type: ignore[return-value]

    @classmethod
    def identity(cls) -> Self:
        """The point at infinity."""
        return cls._wrap(b=bytes([_C_FLAG | _I_FLAG]) + bytes(cls.SIZE - 1))

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode a compressed point with every check; raises ``InvalidEncoding``.

        Refuses a wrong length, a missing compression flag, a non-canonical
        infinity (infinity flag with the sign flag or a non-zero body), a
        coordinate ≥ p, a point not on the curve and a point outside the
        prime-order subgroup.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidEncoding(f"{cls.__name__} encoding must be bytes")
        data = bytes(data)
        cache = _DECODE_CACHE
        if cache is not None:
            hit = cache.get(data)
            if hit is not None and type(hit) is cls:
                return hit
            point = cls._decode(data)
            cache[data] = point
            return point
        return cls._decode(data)

    @classmethod
    def _decode(cls, data: bytes) -> Self:
        if len(data) != cls.SIZE:
            raise InvalidEncoding(
                f"{cls.__name__} encoding must be {cls.SIZE} bytes, got {len(data)}"
            )
        flags = data[0]
        if not flags & _C_FLAG:
            raise InvalidEncoding("compression flag not set")
        if flags & _I_FLAG:
            if flags & _S_FLAG or flags & 0x1F or any(data[1:]):
                raise InvalidEncoding("non-canonical encoding of the point at infinity")
            return cls.identity()
        body = bytes([flags & 0x1F]) + data[1:]
        for k in range(0, cls.SIZE, 48):
            if int.from_bytes(body[k : k + 48], "big") >= P:
                raise InvalidEncoding("coordinate is not reduced mod p")
        try:
            e = cls._BLST.uncompress(data)
        except ValueError as exc:
            reason = (
                "point not in the prime-order subgroup"
                if "GROUP" in str(exc)
                else "point not on the curve"
            )
            raise InvalidEncoding(reason) from exc
        return cls._wrap(e=e, b=data)

    # --- backend views (lazy) -----------------------------------------------

    def _blst_elem(self) -> _blst.BlstP1Element | _blst.BlstP2Element:
        if self._e is None:
            # The bytes were produced by a backend or already validated.
            self._e = self._BLST.uncompress(self.to_bytes())
        return self._e

    def _ark_elem(self) -> _ark.G1Point | _ark.G2Point:
        if self._a is None:
            self._a = self._ARK.from_compressed_bytes_unchecked(self.to_bytes())
        return self._a

    def to_bytes(self) -> bytes:
        """Canonical compressed encoding."""
        if self._b is None:
            if self._e is not None:
                self._b = bytes(self._e.compress())
            elif self._a is not None:
                self._b = bytes(self._a.to_compressed_bytes())
            else:  # pragma: no cover - construction always sets one view
                raise RuntimeError("point without a representation")
        return self._b

    # --- group law ----------------------------------------------------------

    def is_identity(self) -> bool:
        return self.to_bytes()[0] & _I_FLAG != 0

    def _check_same(self, other: object) -> _Point:
        if type(other) is not type(self):
            raise TypeError(f"cannot combine {type(self).__name__} with {type(other).__name__}")
        if not isinstance(other, _Point):  # pragma: no cover - narrowed above
            raise TypeError("not a point")
        return other

    def __add__(self, other: Self) -> Self:
        o = self._check_same(other)
        if self._e is None and o._e is None and self._a is not None and o._a is not None:
            return self._wrap(a=self._a + o._a)  # type: ignore[operator]
        return self._wrap(e=self._blst_elem() + o._blst_elem())

    def __neg__(self) -> Self:
        if self._e is None and self._a is not None:
            return self._wrap(a=-self._a)
        return self._wrap(e=-self._blst_elem())

    def __sub__(self, other: Self) -> Self:
        return self + (-other)

    def __mul__(self, k: int) -> Self:
        """Constant-time (blst) multiplication by ``k mod r``."""
        if not isinstance(k, int) or isinstance(k, bool):
            return NotImplemented
        return self._wrap(e=self._blst_elem().scalar_mul(k % R))

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self) or not isinstance(other, _Point):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.to_bytes()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_bytes().hex()[:16]}…)"

    # --- public-data multi-scalar multiplication ---------------------------

    @classmethod
    def msm(cls, points: Sequence[Self], scalars: Sequence[int]) -> Self:
        """``Σ k_i·P_i`` over **public** points and scalars (variable time).

        Uses arkworks' Pippenger multi-exponentiation. Never pass secret
        scalars: use ``k * P`` for those.
        """
        if len(points) != len(scalars):
            raise ValueError("msm needs as many scalars as points")
        if not points:
            return cls.identity()
        arks = [p._ark_elem() for p in points]
        ks = [_ark.Scalar(k % R) for k in scalars]
        return cls._wrap(a=cls._ARK.multiexp_unchecked(arks, ks))  # type: ignore[arg-type]

    @classmethod
    def evaluate(cls, coefficients: Sequence[Self], x: int) -> Self:
        """``Σ C_k·x^k`` over **public** points ``C_k`` and a public ``x`` (variable time).

        Horner's rule on arkworks points: ``t - 1`` multiplications by ``x`` itself, whose
        cost follows its bit length (a member index is a few bits), instead of one
        multi-exponentiation by the full-size powers ``x^k mod r``: about a tenth of the
        work for the public shares of a committee's indices. Never pass a secret.
        """
        if not coefficients:
            return cls.identity()
        for c in coefficients:
            if type(c) is not cls:
                raise TypeError(f"cannot evaluate {type(c).__name__} points as {cls.__name__}")
        k = _ark.Scalar(x % R)
        acc = coefficients[-1]._ark_elem()
        for c in reversed(coefficients[:-1]):
            acc = acc * k + c._ark_elem()  # type: ignore[operator]
        return cls._wrap(a=acc)


class G1(_Point):
    """A point of G1 (48-byte compressed encoding)."""

    __slots__ = ()
    SIZE = 48
    _BLST = _blst.BlstP1Element
    _ARK = _ark.G1Point
    _GEN = _G1_GENERATOR


class G2(_Point):
    """A point of G2 (96-byte compressed encoding)."""

    __slots__ = ()
    SIZE = 96
    _BLST = _blst.BlstP2Element
    _ARK = _ark.G2Point
    _GEN = _G2_GENERATOR
