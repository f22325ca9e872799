"""Feldman commitments and batched share verification."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.errors import InvalidShare
from mpc.ids import ParticipantIndex
from mpc.math import G2, R
from mpc.math.poly import Polynomial, interpolate_at
from mpc.math.vss import (
    ShareClaim,
    batch_check,
    commit,
    public_share,
    share_matches,
    transcript_coefficients,
    verify_shares,
)


def deals(n_dealers: int, degree: int, recipient: int, seed: int) -> list[ShareClaim]:
    rnd = random.Random(seed)
    out = []
    for d in range(1, n_dealers + 1):
        f = Polynomial([rnd.randrange(R) for _ in range(degree + 1)])
        out.append(
            ShareClaim(
                ParticipantIndex(d), ParticipantIndex(recipient), tuple(commit(f)), f(recipient)
            )
        )
    return out


@settings(max_examples=20, deadline=None)
@given(degree=st.integers(0, 6), seed=st.integers(0, 2**32), x=st.integers(1, 1000))
def test_public_share_matches_the_share(degree: int, seed: int, x: int) -> None:
    rnd = random.Random(seed)
    f = Polynomial([rnd.randrange(R) for _ in range(degree + 1)])
    c = commit(f)
    assert c[0] == f(0) * G2.generator()
    assert public_share(c, x) == f(x) * G2.generator()
    assert share_matches(c, x, f(x))
    assert not share_matches(c, x, f(x) + 1)


@settings(max_examples=20, deadline=None)
@given(degree=st.integers(0, 5), seed=st.integers(0, 2**32), data=st.data())
def test_any_degree_plus_one_shares_interpolate(
    degree: int, seed: int, data: st.DataObject
) -> None:
    rnd = random.Random(seed)
    f = Polynomial([rnd.randrange(R) for _ in range(degree + 1)])
    xs = data.draw(
        st.lists(st.integers(1, 50), min_size=degree + 1, max_size=degree + 1, unique=True)
    )
    pts = [(ParticipantIndex(x), f(x)) for x in xs]
    assert interpolate_at(pts, 0) == f(0)
    if degree > 0:
        assert interpolate_at(pts[:-1], 0) != f(0)


def test_batch_accepts_honest_deals() -> None:
    claims = deals(8, 4, 3, seed=1)
    verify_shares(claims)
    verify_shares(claims, rng=random.Random(2).randbytes)


@pytest.mark.parametrize("bad_dealers", [(1,), (4,), (2, 7), (1, 2, 3, 4, 5, 6, 7, 8)])
def test_batch_names_every_bad_dealer(bad_dealers: tuple[int, ...]) -> None:
    claims = deals(8, 4, 5, seed=3)
    claims = [
        ShareClaim(c.dealer, c.index, c.commitments, c.share + 1) if c.dealer in bad_dealers else c
        for c in claims
    ]
    with pytest.raises(InvalidShare) as info:
        verify_shares(claims)
    assert info.value.culprits == frozenset(ParticipantIndex(d) for d in bad_dealers)


def test_errors_that_cancel_under_fixed_coefficients_are_caught() -> None:
    """Two dealers shift shares by +δ and -δ: an unweighted sum would pass."""
    claims = deals(4, 2, 2, seed=5)
    delta = 987654321
    claims[0] = ShareClaim(
        claims[0].dealer, claims[0].index, claims[0].commitments, claims[0].share + delta
    )
    claims[1] = ShareClaim(
        claims[1].dealer, claims[1].index, claims[1].commitments, claims[1].share - delta
    )
    assert batch_check(claims, [1] * len(claims))  # the naive check is fooled
    assert not batch_check(claims, transcript_coefficients(claims))
    with pytest.raises(InvalidShare) as info:
        verify_shares(claims)
    assert info.value.culprits == {ParticipantIndex(1), ParticipantIndex(2)}


def test_transcript_coefficients_bind_commitments_and_shares() -> None:
    claims = deals(3, 2, 1, seed=6)
    base = transcript_coefficients(claims)
    moved = [
        ShareClaim(claims[0].dealer, claims[0].index, claims[0].commitments, claims[0].share + 1),
        *claims[1:],
    ]
    assert transcript_coefficients(moved) != base
    swapped = [
        ShareClaim(claims[0].dealer, claims[0].index, claims[1].commitments, claims[0].share),
        *claims[1:],
    ]
    assert transcript_coefficients(swapped) != base
    assert all(0 < c < 2**128 for c in base)


def test_secret_containers_do_not_print() -> None:
    claim = deals(1, 1, 1, seed=7)[0]
    assert format(claim.share, "x") not in repr(claim)
    f = Polynomial([123456789, 987654321])
    assert "123456789" not in repr(f)
