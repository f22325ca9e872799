"""Feldman verifiable secret sharing in G2 (Feldman 1987) with batched checks.

A dealer with polynomial ``f(x) = Σ a_k·x^k`` publishes ``A_k = a_k·g2``.
Anyone derives participant ``i``'s public share ``PK_i = Σ A_k·i^k`` and
checks a share ``s`` by ``s·g2 == PK_i``.

Batched verification (Bellare–Garay–Rabin small-exponent test): to check many
shares at once, draw 128-bit coefficients ``ρ_j`` that the dealers could not
predict (from a CSPRNG, or a hash of *everything* being checked, commitments
and shares alike) and check the single equation

    (Σ ρ_j·s_j)·g2 == Σ_j ρ_j·(Σ_k x_j^k·A_{j,k})

where each inner sum is evaluated by Horner's rule on the small public index ``x_j``
(``G2.evaluate``) and the outer one is a single multi-scalar multiplication.
Coefficients are odd 128-bit integers (127 random bits), so a false item survives
with probability ≤ 2⁻¹²⁷. When the batch fails, items are checked one by one to
name culprits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mpc.errors import InvalidShare
from mpc.ids import ParticipantIndex
from mpc.math.curve import G2
from mpc.math.fields import R
from mpc.math.poly import Polynomial

BATCH_COEFFICIENT_BITS = 128
_TRANSCRIPT_TAG = b"quorum-kms/v1/vss/batch-coefficients"


def commit(poly: Polynomial) -> list[G2]:
    """Feldman commitments ``A_k = a_k·g2`` (constant-time: coefficients are secret)."""
    g2 = G2.generator()
    return [a * g2 for a in poly.coefficients]


_PUBLIC_SHARE_CACHE: dict[tuple[bytes, int], G2] | None = None


def set_public_share_cache(
    cache: dict[tuple[bytes, int], G2] | None,
) -> dict[tuple[bytes, int], G2] | None:
    """Opt in to sharing computed public shares (``None``: off, the default); returns the
    previous cache. ``public_share`` is a pure function of public data, so a process
    hosting many simulated members (``sim``) may compute each one once."""
    global _PUBLIC_SHARE_CACHE
    previous, _PUBLIC_SHARE_CACHE = _PUBLIC_SHARE_CACHE, cache
    return previous


def public_share(commitments: Sequence[G2], index: int) -> G2:
    """``Σ A_k·index^k``: the public key of ``index``'s share (public data only)."""
    if not commitments:
        raise ValueError("no commitments")
    cache = _PUBLIC_SHARE_CACHE
    if cache is not None:
        key = (b"".join(c.to_bytes() for c in commitments), index)
        hit = cache.get(key)
        if hit is None:
            hit = _public_share(commitments, index)
            cache[key] = hit
        return hit
    return _public_share(commitments, index)


def _public_share(commitments: Sequence[G2], index: int) -> G2:
    return G2.evaluate(commitments, index)


def share_matches(commitments: Sequence[G2], index: int, share: int) -> bool:
    """Whether ``share·g2 == Σ A_k·index^k``."""
    return share % R * G2.generator() == public_share(commitments, index)


@dataclass(frozen=True, slots=True)
class ShareClaim:
    """One share to check: ``dealer`` claims ``share`` is ``f(index)`` for ``commitments``."""

    dealer: ParticipantIndex
    index: ParticipantIndex
    commitments: tuple[G2, ...]
    share: int

    def __repr__(self) -> str:
        return f"ShareClaim(dealer={int(self.dealer)}, index={int(self.index)}, share=<redacted>)"


def transcript_coefficients(claims: Sequence[ShareClaim]) -> list[int]:
    """Fiat–Shamir coefficients: a hash of every commitment and share being checked."""
    h = hashlib.sha512(_TRANSCRIPT_TAG)
    h.update(len(claims).to_bytes(4, "big"))
    for c in claims:
        h.update(int(c.dealer).to_bytes(4, "big") + int(c.index).to_bytes(4, "big"))
        h.update(len(c.commitments).to_bytes(4, "big"))
        for a in c.commitments:
            h.update(a.to_bytes())
        h.update((c.share % R).to_bytes(32, "big"))
    seed = h.digest()
    out = []
    for j in range(len(claims)):
        d = hashlib.sha256(seed + j.to_bytes(4, "big")).digest()
        out.append(int.from_bytes(d[: BATCH_COEFFICIENT_BITS // 8], "big") | 1)
    return out


def rng_coefficients(rng: Callable[[int], bytes], count: int) -> list[int]:
    """Batch coefficients from a CSPRNG."""
    return [int.from_bytes(rng(BATCH_COEFFICIENT_BITS // 8), "big") | 1 for _ in range(count)]


def batch_check(claims: Sequence[ShareClaim], coefficients: Sequence[int]) -> bool:
    """One random-linear-combination check of all claims (see the module docstring)."""
    if len(coefficients) != len(claims):
        raise ValueError("one coefficient per claim")
    if not claims:
        return True
    points: list[G2] = []
    lhs_scalar = 0
    for rho, c in zip(coefficients, claims, strict=True):
        lhs_scalar = (lhs_scalar + rho * c.share) % R
        # Σ_k A_k·x^k: the claim's public share, by Horner's rule on the small public index
        # (and taken from the public-share cache where one is set, as ``share_matches`` does).
        points.append(public_share(c.commitments, int(c.index)))
    # The left side involves secret shares: constant-time blst multiplication.
    return lhs_scalar * G2.generator() == G2.msm(points, list(coefficients))


def verify_shares(
    claims: Sequence[ShareClaim], *, rng: Callable[[int], bytes] | None = None
) -> None:
    """Check every claim with one batched test; raise ``InvalidShare`` naming bad dealers.

    Coefficients come from ``rng`` when given, otherwise from a hash of the
    claims. If the batch fails, each claim is checked alone to find culprits.
    """
    coeffs = rng_coefficients(rng, len(claims)) if rng else transcript_coefficients(claims)
    if batch_check(claims, coeffs):
        return
    bad = [c.dealer for c in claims if not share_matches(c.commitments, c.index, c.share)]
    raise InvalidShare("share does not match the dealer's commitments", bad)
