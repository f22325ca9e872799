"""The opt-in caches of pure decodings: off by default, same results when on, failures not cached."""

from __future__ import annotations

import pytest

from mpc.errors import InvalidEncoding
from mpc.math import G2
from mpc.math.curve import set_decode_cache
from mpc.math.vss import public_share, set_public_share_cache
from mpc.sig import SigningKey, VerifyKey, set_key_cache


def test_caches_are_off_by_default() -> None:
    assert set_decode_cache(None) is None
    assert set_public_share_cache(None) is None
    assert set_key_cache(None) is None


def test_decode_cache_shares_points_and_refuses_bad_bytes_every_time() -> None:
    g = G2.generator()
    data = (5 * g).to_bytes()
    cache: dict = {}
    previous = set_decode_cache(cache)
    try:
        a, b = G2.from_bytes(data), G2.from_bytes(data)
        assert a is b and a == 5 * g
        bad = bytes([data[0] ^ 0x80]) + data[1:]
        for _ in range(2):
            with pytest.raises(InvalidEncoding):
                G2.from_bytes(bad)
        assert list(cache) == [data]
    finally:
        set_decode_cache(previous)
    assert G2.from_bytes(data) is not G2.from_bytes(data)


def test_public_share_cache_gives_the_same_points() -> None:
    g = G2.generator()
    commitments = [3 * g, 4 * g, 5 * g]
    plain = public_share(commitments, 7)
    previous = set_public_share_cache({})
    try:
        assert public_share(commitments, 7) == plain
        assert public_share(commitments, 7) is public_share(commitments, 7)
        assert public_share(commitments, 8) != plain
    finally:
        set_public_share_cache(previous)


def test_key_cache_gives_the_same_keys() -> None:
    raw = SigningKey.from_seed(bytes(32)).verify_key().to_bytes()
    previous = set_key_cache({})
    try:
        assert VerifyKey.from_bytes(raw) is VerifyKey.from_bytes(raw)
        with pytest.raises(InvalidEncoding):
            VerifyKey.from_bytes(bytes(31))
    finally:
        set_key_cache(previous)
    assert VerifyKey.from_bytes(raw).to_bytes() == raw
