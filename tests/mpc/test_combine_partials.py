"""``combine_partials``: one pairing check on the happy path, every refusal kept.

The combination of the first ``t`` partials is checked under the master public key;
only when it fails are the partials checked one by one, so a bad partial is still
named, fewer than ``t`` still refused, and public shares that do not match the key
still refused.
"""

from __future__ import annotations

import random

import pytest

from mpc.cert import combine_partials, sign_partial, verify_cert_signature
from mpc.errors import InvalidShare, InvalidSignature, LocalProtocolError
from mpc.ids import ParticipantIndex as PI
from mpc.math import G1, G2
from mpc.math.fields import R
from mpc.math.poly import Polynomial
from mpc.secret import SecretScalar, SecretShare

MESSAGE = b"an epoch transcript"
N, T = 7, 5


def _committee(seed: int) -> tuple[dict[PI, G1], dict[PI, G2], G2]:
    rng = random.Random(seed)
    poly = Polynomial([rng.randrange(1, R) for _ in range(T)])
    shares = {PI(i): SecretShare(PI(i), SecretScalar(poly(i))) for i in range(1, N + 1)}
    partials = {i: sign_partial(s, MESSAGE) for i, s in shares.items()}
    public = {i: s.value.value * G2.generator() for i, s in shares.items()}
    return partials, public, poly.coefficients[0] * G2.generator()


def test_any_t_valid_partials_give_the_same_signature() -> None:
    partials, public, mpk = _committee(1)
    first = combine_partials(MESSAGE, partials, public, T, mpk)
    assert verify_cert_signature(MESSAGE, first, mpk)
    last = {i: partials[i] for i in sorted(partials)[-T:]}
    assert combine_partials(MESSAGE, last, public, T, mpk) == first


def test_a_bad_partial_among_the_first_t_is_named() -> None:
    partials, public, mpk = _committee(2)
    partials[PI(2)] = partials[PI(2)] + G1.generator()
    with pytest.raises(InvalidShare) as err:
        combine_partials(MESSAGE, partials, public, T, mpk)
    assert err.value.culprits == {PI(2)}


def test_a_partial_without_a_public_share_is_named() -> None:
    partials, public, mpk = _committee(3)
    del public[PI(1)]
    with pytest.raises(InvalidShare) as err:
        combine_partials(MESSAGE, partials, public, T, mpk)
    assert err.value.culprits == {PI(1)}


def test_a_bad_partial_past_the_first_t_does_not_block_the_certificate() -> None:
    partials, public, mpk = _committee(4)
    partials[PI(N)] = partials[PI(N)] + G1.generator()
    sig = combine_partials(MESSAGE, partials, public, T, mpk)
    assert verify_cert_signature(MESSAGE, sig, mpk)


def test_fewer_than_t_partials_are_refused() -> None:
    partials, public, mpk = _committee(5)
    few = {i: partials[i] for i in sorted(partials)[: T - 1]}
    with pytest.raises(LocalProtocolError):
        combine_partials(MESSAGE, few, public, T, mpk)


def test_public_shares_of_another_key_are_refused() -> None:
    partials, public, _ = _committee(6)
    _, _, other_mpk = _committee(7)
    with pytest.raises(InvalidSignature):
        combine_partials(MESSAGE, partials, public, T, other_mpk)
