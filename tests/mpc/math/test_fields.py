"""Scalar-field helpers: Lagrange coefficients, batch inversion, scalar encoding."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mpc.errors import InvalidEncoding
from mpc.math import G1, P, R
from mpc.math.fields import (
    SCALAR_BYTES,
    batch_inverse,
    fr,
    fr_inv,
    lagrange_coefficients,
    scalar_from_bytes,
    scalar_to_bytes,
)

FR = st.integers(min_value=0, max_value=R - 1)
NONZERO = st.integers(min_value=1, max_value=R - 1)
ANY_INT = st.integers(min_value=-(2**600), max_value=2**600)
MANY = settings(max_examples=200, deadline=None, database=None)


def test_constants() -> None:
    # draft-irtf-cfrg-pairing-friendly-curves-11 §4.2.1, from the parameter x.
    x = -0xD201000000010000
    assert R == x**4 - x**2 + 1
    assert (x - 1) ** 2 * R % 3 == 0
    assert P == (x - 1) ** 2 * R // 3 + x
    assert P.bit_length() == 381
    assert R.bit_length() == 255
    assert pow(2, P - 1, P) == 1
    assert pow(3, R - 1, R) == 1


def _poly_eval(coeffs: list[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % R
    return acc


@st.composite
def _interpolation_case(draw):
    n = draw(st.integers(min_value=1, max_value=12))
    xs = draw(st.lists(st.one_of(st.integers(1, 50), FR), min_size=n, max_size=n, unique=True))
    coeffs = draw(st.lists(FR, min_size=n, max_size=n))  # degree < n
    return xs, coeffs


@MANY
@given(case=_interpolation_case())
def test_lagrange_interpolates_at_zero(case) -> None:
    xs, coeffs = case
    lam = lagrange_coefficients(xs)
    assert len(lam) == len(xs)
    assert all(0 <= v < R for v in lam)
    assert sum(v * _poly_eval(coeffs, x) for v, x in zip(lam, xs, strict=True)) % R == coeffs[0]
    assert lam == lagrange_coefficients(xs, at=0)


@MANY
@given(case=_interpolation_case(), at=ANY_INT)
def test_lagrange_interpolates_anywhere(case, at: int) -> None:
    xs, coeffs = case
    lam = lagrange_coefficients(xs, at=at)
    got = sum(v * _poly_eval(coeffs, x) for v, x in zip(lam, xs, strict=True)) % R
    assert got == _poly_eval(coeffs, at % R)
    assert sum(lam) % R == 1  # interpolating the constant 1


@given(xs=st.lists(FR, min_size=1, max_size=8, unique=True), data=st.data())
@settings(max_examples=50, deadline=None, database=None)
def test_lagrange_at_a_node_is_a_unit_vector(xs: list[int], data) -> None:
    i = data.draw(st.integers(0, len(xs) - 1))
    lam = lagrange_coefficients(xs, at=xs[i])
    assert lam == [1 if j == i else 0 for j in range(len(xs))]


def test_lagrange_small_known_answer() -> None:
    # Shares at 1, 2, 3 of f(x) = 5 + 3x + 2x²: λ(0) = (3, −3, 1).
    assert lagrange_coefficients([1, 2, 3]) == [3, R - 3, 1]
    assert lagrange_coefficients([7]) == [1]
    assert lagrange_coefficients([7], at=123) == [1]
    assert lagrange_coefficients([]) == []


def test_lagrange_on_group_elements() -> None:
    """The way threshold signing uses it: combine public partials in the exponent."""
    g = G1.generator()
    coeffs = [11, 22, 33]
    xs = [2, 5, 9]
    partials = [_poly_eval(coeffs, x) * g for x in xs]
    lam = lagrange_coefficients(xs)
    assert G1.msm(partials, lam) == coeffs[0] * g


@pytest.mark.parametrize(
    "xs",
    [[1, 1], [1, 2, 1], [0, R], [5, 5 + R], [3, -(R - 3)], [1, 2, 3, 2]],
    ids=str,
)
def test_lagrange_duplicates_raise(xs: list[int]) -> None:
    with pytest.raises(ValueError, match="distinct"):
        lagrange_coefficients(xs)
    with pytest.raises(ValueError, match="distinct"):
        lagrange_coefficients(xs, at=17)


@MANY
@given(values=st.lists(st.one_of(NONZERO, ANY_INT), max_size=20))
def test_batch_inverse_matches_pow(values: list[int]) -> None:
    assume(all(v % R for v in values))
    invs = batch_inverse(values)
    assert invs == [pow(v, -1, R) for v in values]
    assert invs == [fr_inv(v) for v in values]
    assert all(v * i % R == 1 for v, i in zip(values, invs, strict=True))


def test_batch_inverse_accepts_iterables() -> None:
    assert batch_inverse([]) == []
    assert batch_inverse(iter([1, 2])) == [1, pow(2, -1, R)]
    assert batch_inverse(x for x in (R - 1,)) == [R - 1]


@pytest.mark.parametrize(
    "values", [[0], [1, 0], [0, 1], [2, R], [3, -R, 4], [5, 6, 2 * R]], ids=str
)
def test_batch_inverse_zero_raises(values: list[int]) -> None:
    with pytest.raises(ZeroDivisionError):
        batch_inverse(values)


@pytest.mark.parametrize("x", [0, R, -R, 5 * R])
def test_fr_inv_zero_raises(x: int) -> None:
    with pytest.raises(ZeroDivisionError):
        fr_inv(x)


@MANY
@given(x=ANY_INT)
def test_fr_and_fr_inv(x: int) -> None:
    assert fr(x) == x % R
    if x % R:
        assert fr_inv(x) * x % R == 1


@MANY
@given(x=ANY_INT)
def test_scalar_bytes_round_trip(x: int) -> None:
    data = scalar_to_bytes(x)
    assert len(data) == SCALAR_BYTES == 32
    assert data == (x % R).to_bytes(32, "big")
    assert scalar_from_bytes(data) == x % R


@pytest.mark.parametrize(
    "value", [R, R + 1, 2 * R, 2**256 - 1, 2**255], ids=["r", "r+1", "2r", "2^256-1", "2^255"]
)
def test_scalar_from_bytes_refuses_unreduced(value: int) -> None:
    with pytest.raises(InvalidEncoding):
        scalar_from_bytes(value.to_bytes(32, "big"))


def test_scalar_from_bytes_accepts_the_range_ends() -> None:
    assert scalar_from_bytes(bytes(32)) == 0
    assert scalar_from_bytes((R - 1).to_bytes(32, "big")) == R - 1


@pytest.mark.parametrize("n", [0, 1, 16, 31, 33, 48, 64])
def test_scalar_from_bytes_refuses_wrong_lengths(n: int) -> None:
    with pytest.raises(InvalidEncoding):
        scalar_from_bytes(bytes(n))
    with pytest.raises(ValueError):  # InvalidEncoding is a ValueError
        scalar_from_bytes(b"\x01" * n)
