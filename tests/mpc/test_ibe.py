"""IBE to an app: round trips, binds the id and MPK, and detects any tampering."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import ibe
from mpc.errors import DecryptionError, InvalidEncoding
from mpc.math import G2, R
from mpc.tkd import DerivedPoint, KeyId, derive_point_base

SECRET = 0x5EC12E7 * 7919 % R
MPK = SECRET * G2.generator()


def derived_for(key_id: KeyId, secret: int = SECRET) -> DerivedPoint:
    return DerivedPoint(key_id, secret * derive_point_base(key_id))


def seeded(seed: int):  # type: ignore[no-untyped-def]
    rnd = random.Random(seed)
    return lambda n: rnd.randbytes(n)


@settings(max_examples=15, deadline=None)
@given(pt=st.binary(max_size=300), seed=st.integers(0, 2**32))
def test_round_trip(pt: bytes, seed: int) -> None:
    key_id = KeyId(b"ibe-app", "secrets", 2)
    ct = ibe.encrypt(MPK, key_id, pt, rng=seeded(seed))
    assert ibe.read_header(ct).key_id == key_id
    assert ibe.decrypt(derived_for(key_id), MPK, ct) == pt


def test_fresh_randomness_per_message() -> None:
    key_id = KeyId(b"ibe-app")
    a = ibe.encrypt(MPK, key_id, b"same", rng=seeded(1))
    b = ibe.encrypt(MPK, key_id, b"same", rng=seeded(2))
    assert a != b


def test_every_byte_flip_is_detected() -> None:
    key_id = KeyId(b"tamper-app")
    ct = ibe.encrypt(MPK, key_id, b"attack at dawn", rng=seeded(3))
    d = derived_for(key_id)
    for pos in range(len(ct)):
        for bit in (0x01, 0x80):
            bad = bytearray(ct)
            bad[pos] ^= bit
            with pytest.raises(DecryptionError):
                ibe.decrypt(d, MPK, bytes(bad))


def test_truncation_and_extension_are_detected() -> None:
    key_id = KeyId(b"len-app")
    ct = ibe.encrypt(MPK, key_id, b"payload", rng=seeded(4))
    d = derived_for(key_id)
    for bad in (ct[:-1], ct + b"\x00", ct[:50], b"", b"QKIBE"):
        with pytest.raises(DecryptionError):
            ibe.decrypt(d, MPK, bad)


def test_wrong_key_wrong_id_wrong_mpk() -> None:
    key_id = KeyId(b"app-a", "app", 1)
    ct = ibe.encrypt(MPK, key_id, b"for a", rng=seeded(5))
    with pytest.raises(DecryptionError):  # another app's derived key
        ibe.decrypt(derived_for(KeyId(b"app-b", "app", 1)), MPK, ct)
    with pytest.raises(DecryptionError):  # another version
        ibe.decrypt(derived_for(KeyId(b"app-a", "app", 2)), MPK, ct)
    with pytest.raises(DecryptionError):  # a derived point under another master secret
        ibe.decrypt(derived_for(key_id, SECRET + 1), MPK, ct)
    with pytest.raises(DecryptionError):  # the right sigma but the wrong MPK in the KDF
        ibe.decrypt(derived_for(key_id), 2 * MPK, ct)


def test_identity_mpk_and_identity_u_are_refused() -> None:
    key_id = KeyId(b"id-app")
    with pytest.raises(InvalidEncoding):
        ibe.encrypt(G2.identity(), key_id, b"x", rng=seeded(6))
    ct = ibe.encrypt(MPK, key_id, b"x", rng=seeded(6))
    forged = ct[:6] + G2.identity().to_bytes() + ct[6 + 96 :]
    with pytest.raises(DecryptionError):
        ibe.decrypt(derived_for(key_id), MPK, forged)


def test_format_layout() -> None:
    key_id = KeyId(b"fmt")
    ct = ibe.encrypt(MPK, key_id, b"abc", rng=seeded(7))
    kid = key_id.encode()
    assert ct[:5] == b"QKIBE" and ct[5] == 1
    assert G2.from_bytes(ct[6:102]) == ibe.read_header(ct).u
    assert int.from_bytes(ct[102:104], "big") == len(kid)
    assert ct[104 : 104 + len(kid)] == kid
    assert len(ct) == 104 + len(kid) + 3 + 16
