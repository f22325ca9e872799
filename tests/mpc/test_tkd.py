"""Threshold key derivation: any t partials agree, t-1 do not, bad partials are named."""

from __future__ import annotations

import hashlib
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.errors import InvalidEncoding, InvalidShare, LocalProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2, R, hash_to_g1, pairing_check
from mpc.math.poly import Polynomial
from mpc.secret import SecretScalar, SecretShare
from mpc.tkd import (
    DST_DERIVE,
    DerivedPoint,
    KeyId,
    Partial,
    combine,
    combine_and_verify,
    derive_partial,
    derive_point_base,
    encode_id,
    typed_keys,
    verify_combined,
    verify_partial,
)
from mpc.tkd.ids import ID_MAGIC

CERT_DST = b"QUORUM-KMS-V01-CERT-BLS12381G1_XMD:SHA-256_SSWU_RO_"


class Committee:
    def __init__(self, n: int, t: int, seed: int) -> None:
        rnd = random.Random(seed)
        self.n, self.t = n, t
        self.poly = Polynomial([rnd.randrange(1, R) for _ in range(t)])
        self.secret = self.poly(0)
        self.mpk = self.secret * G2.generator()
        self.shares = {
            ParticipantIndex(i): SecretShare(ParticipantIndex(i), SecretScalar(self.poly(i)))
            for i in range(1, n + 1)
        }
        self.public_shares = {i: s.value.value * G2.generator() for i, s in self.shares.items()}

    def partials(self, key_id: KeyId) -> dict[ParticipantIndex, Partial]:
        return {i: derive_partial(s, key_id) for i, s in self.shares.items()}


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(min_value=2, max_value=7),
    data=st.data(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_t_partials_give_the_undivided_key(n: int, data: st.DataObject, seed: int) -> None:
    t = data.draw(st.integers(min_value=2, max_value=n), label="t")
    c = Committee(n, t, seed)
    key_id = KeyId(b"app-" + seed.to_bytes(5, "big"), "disk", 3)
    partials = c.partials(key_id)
    undivided = c.secret * derive_point_base(key_id)
    subset = data.draw(st.permutations(sorted(partials)), label="order")[:t]
    derived = combine_and_verify([partials[i] for i in subset], key_id, c.mpk, c.public_shares, t)
    assert derived.point == undivided
    assert derived.app_key() == DerivedPoint(key_id, undivided).app_key()
    # t-1 partials interpolate to a different point, which fails the MPK check.
    fewer = combine([partials[i] for i in subset[: t - 1]], t - 1)
    assert fewer != undivided
    assert not verify_combined(fewer, key_id, c.mpk)


def test_every_subset_of_three_of_five_agrees() -> None:
    c = Committee(5, 3, 7)
    key_id = KeyId(b"every-subset")
    partials = c.partials(key_id)
    keys = {
        combine_and_verify([partials[i] for i in s], key_id, c.mpk, c.public_shares, 3)
        .app_key()
        .secret.data
        for s in itertools.combinations(sorted(partials), 3)
    }
    assert len(keys) == 1


@pytest.mark.parametrize("bad", [1, 2, 3, 4, 5])
def test_a_single_wrong_partial_is_named(bad: int) -> None:
    c = Committee(5, 3, 11)
    key_id = KeyId(b"tamper")
    partials = c.partials(key_id)
    wrong = partials[ParticipantIndex(bad)]
    tampered = Partial(wrong.index, wrong.point + G1.generator())
    honest = [partials[ParticipantIndex(i)] for i in (1, 2, 3, 4, 5) if i != bad][:2]
    with pytest.raises(InvalidShare) as info:
        combine_and_verify([tampered, *honest], key_id, c.mpk, c.public_shares, 3)
    assert info.value.culprits == frozenset({ParticipantIndex(bad)})


def test_partial_from_outside_the_committee_is_refused() -> None:
    c = Committee(3, 2, 3)
    key_id = KeyId(b"outsider")
    p = c.partials(key_id)
    stranger = Partial(ParticipantIndex(9), p[ParticipantIndex(1)].point)
    with pytest.raises(InvalidShare) as info:
        combine_and_verify([p[ParticipantIndex(1)], stranger], key_id, c.mpk, c.public_shares, 2)
    assert info.value.culprits == frozenset({ParticipantIndex(9)})


def test_inconsistent_public_shares_are_not_blamed_on_a_node() -> None:
    c = Committee(3, 2, 5)
    key_id = KeyId(b"mpk-mismatch")
    p = c.partials(key_id)
    other_mpk = 12345 * G2.generator()
    with pytest.raises(InvalidEncoding):
        combine_and_verify(list(p.values()), key_id, other_mpk, c.public_shares, 2)


def test_combine_refuses_misuse() -> None:
    c = Committee(3, 2, 1)
    p = list(c.partials(KeyId(b"misuse")).values())
    with pytest.raises(LocalProtocolError):
        combine(p[:1], 2)
    with pytest.raises(LocalProtocolError):
        combine([p[0], p[0]], 2)


def test_partials_verify_against_public_shares() -> None:
    c = Committee(4, 3, 2)
    key_id = KeyId(b"pp")
    for i, p in c.partials(key_id).items():
        assert verify_partial(p, key_id, c.public_shares[i])
        other = c.public_shares[ParticipantIndex(1 + int(i) % 4)]
        assert not verify_partial(p, key_id, other)


def test_derived_point_never_verifies_as_a_certificate() -> None:
    """Key release hands out s·H_DERIVE(m) for chosen m; under the cert tag it must fail."""
    c = Committee(3, 2, 99)
    message = b"epoch certificate bytes"
    key_id = KeyId(message[:64])
    derived = c.secret * derive_point_base(key_id)
    g2 = G2.generator()
    for m in (message, key_id.encode()):
        assert not pairing_check([(derived, -g2), (hash_to_g1(m, CERT_DST), c.mpk)])
    assert derive_point_base(key_id) != hash_to_g1(key_id.encode(), CERT_DST)
    assert DST_DERIVE != CERT_DST


@settings(max_examples=300, deadline=None)
@given(
    a=st.tuples(
        st.binary(min_size=1, max_size=64),
        st.from_regex(r"[a-z0-9._-]{1,64}", fullmatch=True),
        st.integers(0, 2**32 - 1),
    ),
    b=st.tuples(
        st.binary(min_size=1, max_size=64),
        st.from_regex(r"[a-z0-9._-]{1,64}", fullmatch=True),
        st.integers(0, 2**32 - 1),
    ),
)
def test_id_encoding_is_injective(a: tuple[bytes, str, int], b: tuple[bytes, str, int]) -> None:
    ea, eb = encode_id(*a), encode_id(*b)
    assert (ea == eb) == (a == b)
    assert KeyId.decode(ea) == KeyId(*a)


def test_id_encoding_is_fixed() -> None:
    assert encode_id(b"\x01\x02", "app", 1) == ID_MAGIC + bytes.fromhex("010201020361707000000001")


@pytest.mark.parametrize(
    ("app_id", "purpose", "version"),
    [
        (b"", "app", 1),
        (b"x" * 65, "app", 1),
        (b"a", "", 1),
        (b"a", "UPPER", 1),
        (b"a", "a" * 65, 1),
        (b"a", "app", -1),
        (b"a", "app", 2**32),
        (b"a", "app", True),
        ("text", "app", 1),
    ],
)
def test_invalid_ids_are_refused(app_id: bytes, purpose: str, version: int) -> None:
    with pytest.raises(ValueError):
        KeyId(app_id, purpose, version)


@pytest.mark.parametrize(
    "data",
    [b"", ID_MAGIC, ID_MAGIC + b"\x02", encode_id(b"a") + b"\x00", encode_id(b"abc")[:-1]],
)
def test_malformed_id_bytes_raise(data: bytes) -> None:
    with pytest.raises(InvalidEncoding):
        KeyId.decode(data)


def test_typed_keys_are_deterministic_and_distinct() -> None:
    c = Committee(3, 2, 4)
    app = DerivedPoint(KeyId(b"typed"), c.secret * derive_point_base(KeyId(b"typed"))).app_key()
    k1, k2 = typed_keys(app), typed_keys(app)
    assert k1 == k2
    values = [
        k1.aes256.data,
        k1.x25519_private.data,
        k1.ed25519_seed.data,
        k1.secp256k1_private.data,
    ]
    assert len(set(values)) == 4
    assert len(k1.secp256k1_public) == 33 and k1.secp256k1_public[0] in (2, 3)
    other = DerivedPoint(
        KeyId(b"typed", "app", 2), c.secret * derive_point_base(KeyId(b"typed", "app", 2))
    )
    assert typed_keys(other.app_key()).aes256 != k1.aes256


def test_typed_key_derivation_known_answer() -> None:
    """Pins derivation version 1: a change here changes every app's keys."""
    key_id = KeyId(b"kat-app", "app", 1)
    sigma = 0x1234567 * derive_point_base(key_id)
    app = DerivedPoint(key_id, sigma).app_key()
    keys = typed_keys(app)
    digest = hashlib.sha256(
        app.secret.data
        + keys.aes256.data
        + keys.x25519_public
        + keys.ed25519_public
        + keys.secp256k1_public
    ).hexdigest()
    assert digest == KAT_DIGEST


KAT_DIGEST = "fe656c3234383d84a746bc60a82cbda3a30f8860e9cbbeefdfc0d0cc87d82af4"


def test_secrets_are_redacted() -> None:
    c = Committee(3, 2, 8)
    key_id = KeyId(b"redact")
    share = c.shares[ParticipantIndex(1)]
    derived = DerivedPoint(key_id, c.secret * derive_point_base(key_id))
    secret_hex = format(share.value.value, "x")
    for obj in (
        share,
        share.value,
        derived,
        derived.app_key(),
        typed_keys(derived.app_key()),
        c.poly,
    ):
        text = repr(obj) + str(obj)
        assert secret_hex not in text
        assert "redacted" in text
    with pytest.raises(TypeError):
        hash(share.value)
