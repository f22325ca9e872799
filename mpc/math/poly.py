"""Polynomials over the scalar field: Shamir sharing (Shamir 1979) and interpolation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mpc.ids import ParticipantIndex
from mpc.math.fields import R, lagrange_coefficients


class Polynomial:
    """``f(x) = Σ a_k·x^k`` over Z_r. Coefficients are secret: the repr is redacted."""

    __slots__ = ("_coeffs",)

    def __init__(self, coefficients: Sequence[int]) -> None:
        if not coefficients:
            raise ValueError("a polynomial needs at least one coefficient")
        self._coeffs = tuple(c % R for c in coefficients)

    @classmethod
    def random(
        cls, degree: int, sample: Callable[[], int], *, constant: int | None = None
    ) -> Polynomial:
        """A uniformly random polynomial of ``degree``; ``constant`` fixes ``f(0)``."""
        if degree < 0:
            raise ValueError("degree must be non-negative")
        coeffs = [sample() for _ in range(degree + 1)]
        if constant is not None:
            coeffs[0] = constant % R
        return cls(coeffs)

    @property
    def degree(self) -> int:
        return len(self._coeffs) - 1

    @property
    def coefficients(self) -> tuple[int, ...]:
        return self._coeffs

    def __call__(self, x: int) -> int:
        """Horner evaluation at ``x``."""
        acc = 0
        for c in reversed(self._coeffs):
            acc = (acc * x + c) % R
        return acc

    def __add__(self, other: Polynomial) -> Polynomial:
        n = max(len(self._coeffs), len(other._coeffs))
        a = self._coeffs + (0,) * (n - len(self._coeffs))
        b = other._coeffs + (0,) * (n - len(other._coeffs))
        return Polynomial([x + y for x, y in zip(a, b, strict=True)])

    def __repr__(self) -> str:
        return f"Polynomial(degree={self.degree}, coefficients=<redacted>)"


def interpolate_at(points: Sequence[tuple[ParticipantIndex, int]], at: int = 0) -> int:
    """Value at ``at`` of the unique polynomial through ``points`` (Lagrange)."""
    xs = [int(x) for x, _ in points]
    lams = lagrange_coefficients(xs, at)
    return sum(lam * y for lam, (_, y) in zip(lams, points, strict=True)) % R
