"""Containers for secret values: they never print, compare in constant time.

A share, a polynomial coefficient or a derived key is held in one of these so
that a stray ``repr`` / log line / exception message shows ``<redacted>``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from mpc.ids import ParticipantIndex
from mpc.math.fields import R

RNG = Callable[[int], bytes]
"""A source of random bytes: ``rng(n)`` returns ``n`` bytes. ``os.urandom`` in
production; a seeded generator only in tests and the simulator."""


def random_scalar(rng: RNG) -> int:
    """A uniform non-zero scalar: 64 random bytes reduced mod r (bias < 2⁻²⁵⁰)."""
    while True:
        x = int.from_bytes(rng(64), "big") % R
        if x:
            return x


@dataclass(frozen=True, slots=True)
class SecretScalar:
    """A secret element of the scalar field."""

    value: int = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.value, int) or not 0 <= self.value < R:
            raise ValueError("secret scalar must be an int in [0, r)")

    def __repr__(self) -> str:
        return "<redacted>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretScalar):
            return NotImplemented
        return hmac.compare_digest(self.value.to_bytes(32, "big"), other.value.to_bytes(32, "big"))

    def __hash__(self) -> int:
        raise TypeError("secret scalars are not hashable")


@dataclass(frozen=True, slots=True)
class SecretShare:
    """Participant ``index``'s Shamir share ``f(index)`` of a secret."""

    index: ParticipantIndex
    value: SecretScalar

    def __post_init__(self) -> None:
        if not isinstance(self.index, int) or not 1 <= self.index < R:
            raise ValueError("share index must be a positive integer")

    def __repr__(self) -> str:
        return f"SecretShare(index={int(self.index)}, value=<redacted>)"


@dataclass(frozen=True, slots=True)
class SecretBytes:
    """Secret key material (an app key, a typed private key)."""

    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return "<redacted>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self.data, other.data)

    def __hash__(self) -> int:
        raise TypeError("secret bytes are not hashable")

    def __len__(self) -> int:
        return len(self.data)
