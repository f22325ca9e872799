"""RFC 9380 hashing: known answers, oversize DSTs, and a cross-check against py-ecc."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.math import G1, G2, expand_message_xmd, hash_to_g1, hash_to_g2
from mpc.math.hash_to_curve import reduce_dst

H2C = Path(__file__).resolve().parents[2] / "vectors" / "cfrg-hash-to-curve-rfc9380"


def _load(name: str) -> dict:
    return json.loads((H2C / name).read_text())


G1_RO = _load("BLS12381G1_XMD_SHA-256_SSWU_RO_.json")
G2_RO = _load("BLS12381G2_XMD_SHA-256_SSWU_RO_.json")
XMD_38 = _load("expand_message_xmd_SHA256_38.json")
XMD_256 = _load("expand_message_xmd_SHA256_256.json")

SLOW = settings(max_examples=10, deadline=None, database=None)


def _fp2(s: str) -> tuple[int, int]:
    c0, c1 = s.split(",")
    return int(c0, 16), int(c1, 16)


def test_vector_files_are_the_expected_suites() -> None:
    assert G1_RO["ciphersuite"] == "BLS12381G1_XMD:SHA-256_SSWU_RO_"
    assert G2_RO["ciphersuite"] == "BLS12381G2_XMD:SHA-256_SSWU_RO_"
    assert len(G1_RO["vectors"]) == 5
    assert len(G2_RO["vectors"]) == 5
    assert len(XMD_38["tests"]) >= 10
    assert len(XMD_256["tests"]) >= 10
    assert len(XMD_256["DST"]) > 255


@pytest.mark.parametrize("vec", G1_RO["vectors"], ids=lambda v: repr(v["msg"][:12]))
def test_hash_to_g1_rfc9380(ref, vec: dict) -> None:
    x, y = int(vec["P"]["x"], 16), int(vec["P"]["y"], 16)
    expected = ref.encode_g1_affine(x, y)
    got = hash_to_g1(vec["msg"].encode(), G1_RO["dst"].encode())
    assert isinstance(got, G1)
    assert got.to_bytes() == expected
    assert got == G1.from_bytes(expected)


@pytest.mark.parametrize("vec", G2_RO["vectors"], ids=lambda v: repr(v["msg"][:12]))
def test_hash_to_g2_rfc9380(ref, vec: dict) -> None:
    expected = ref.encode_g2_affine(_fp2(vec["P"]["x"]), _fp2(vec["P"]["y"]))
    got = hash_to_g2(vec["msg"].encode(), G2_RO["dst"].encode())
    assert isinstance(got, G2)
    assert got.to_bytes() == expected
    assert got == G2.from_bytes(expected)


def test_encoders_agree_with_pyecc_on_vectors(ref) -> None:
    """The affine→bytes helpers are themselves right (checked against py-ecc)."""
    vec = G1_RO["vectors"][1]
    assert ref.encode_g1_affine(int(vec["P"]["x"], 16), int(vec["P"]["y"], 16)) == ref.h2g1(
        vec["msg"].encode(), G1_RO["dst"].encode()
    )
    vec = G2_RO["vectors"][1]
    assert ref.encode_g2_affine(_fp2(vec["P"]["x"]), _fp2(vec["P"]["y"])) == ref.h2g2(
        vec["msg"].encode(), G2_RO["dst"].encode()
    )


@pytest.mark.parametrize(
    ("suite", "vec"),
    [("38", v) for v in XMD_38["tests"]] + [("256", v) for v in XMD_256["tests"]],
    ids=lambda x: x if isinstance(x, str) else f"{x['msg'][:8]!r}-{x['len_in_bytes']}",
)
def test_expand_message_xmd_rfc9380(suite: str, vec: dict) -> None:
    dst = (XMD_38 if suite == "38" else XMD_256)["DST"].encode()
    length = int(vec["len_in_bytes"], 16)
    out = expand_message_xmd(vec["msg"].encode(), dst, length)
    assert out.hex() == vec["uniform_bytes"]
    assert len(out) == length
    # DST_prime = reduced DST ‖ I2OSP(len, 1) (RFC 9380 §5.3.1, §5.3.3).
    reduced = reduce_dst(dst)
    assert (reduced + bytes([len(reduced)])).hex() == vec["DST_prime"]


def test_reduce_dst_boundary() -> None:
    assert reduce_dst(b"a" * 255) == b"a" * 255
    long = b"a" * 256
    assert reduce_dst(long) == hashlib.sha256(b"H2C-OVERSIZE-DST-" + long).digest()


@pytest.mark.parametrize("n", [0, 65536, 255 * 32 + 1])
def test_expand_message_xmd_refuses_bad_lengths(n: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        expand_message_xmd(b"msg", b"DST", n)


def test_expand_message_xmd_max_length() -> None:
    out = expand_message_xmd(b"msg", b"DST", 255 * 32)
    assert len(out) == 255 * 32


@SLOW
@given(
    msg=st.binary(max_size=80),
    dst=st.binary(min_size=1, max_size=300),
    n=st.integers(min_value=1, max_value=255 * 32),
)
def test_expand_message_xmd_matches_pyecc(msg: bytes, dst: bytes, n: int) -> None:
    from py_ecc.bls.hash import expand_message_xmd as pyecc_xmd

    expected = pyecc_xmd(msg, reduce_dst(dst), n, hashlib.sha256)
    assert expand_message_xmd(msg, dst, n) == expected


# --- DSTs longer than 255 bytes (RFC 9380 §5.3.3) -----------------------------

LONG_DSTS = [b"D" * 256, bytes(range(256)) * 2, XMD_256["DST"].encode(), b"x" * 1000]


@pytest.mark.parametrize("dst", LONG_DSTS, ids=lambda d: f"len{len(d)}")
def test_oversize_dst_is_reduced_g1(ref, dst: bytes) -> None:
    reduced = hashlib.sha256(b"H2C-OVERSIZE-DST-" + dst).digest()
    for msg in (b"", b"abc"):
        got = hash_to_g1(msg, dst)
        assert got == hash_to_g1(msg, reduced)
        assert got.to_bytes() == ref.h2g1(msg, reduced)


@pytest.mark.parametrize("dst", LONG_DSTS[:2], ids=lambda d: f"len{len(d)}")
def test_oversize_dst_is_reduced_g2(ref, dst: bytes) -> None:
    reduced = hashlib.sha256(b"H2C-OVERSIZE-DST-" + dst).digest()
    got = hash_to_g2(b"abc", dst)
    assert got == hash_to_g2(b"abc", reduced)
    assert got.to_bytes() == ref.h2g2(b"abc", reduced)


def test_dst_of_255_bytes_is_used_verbatim(ref) -> None:
    dst = bytes(range(255))
    assert hash_to_g1(b"m", dst).to_bytes() == ref.h2g1(b"m", dst)
    assert hash_to_g1(b"m", dst) != hash_to_g1(
        b"m", hashlib.sha256(b"H2C-OVERSIZE-DST-" + dst).digest()
    )


def test_dst_separates_and_inputs_accept_bytes_likes() -> None:
    assert hash_to_g1(b"m", b"A") != hash_to_g1(b"m", b"B")
    assert hash_to_g2(b"m", b"A") != hash_to_g2(b"m", b"B")
    assert hash_to_g1(bytearray(b"m"), bytearray(b"A")) == hash_to_g1(b"m", b"A")
    assert hash_to_g2(memoryview(b"m"), memoryview(b"A")) == hash_to_g2(b"m", b"A")


# --- py-ecc cross-check -------------------------------------------------------

_DST = st.binary(min_size=1, max_size=255)


@settings(max_examples=25, deadline=None, database=None)
@given(msg=st.binary(max_size=200), dst=_DST)
def test_hash_to_g1_matches_pyecc(ref, msg: bytes, dst: bytes) -> None:
    got = hash_to_g1(msg, dst)
    assert got.to_bytes() == ref.h2g1(msg, dst)
    assert not got.is_identity()


@SLOW
@given(msg=st.binary(max_size=200), dst=_DST)
def test_hash_to_g2_matches_pyecc(ref, msg: bytes, dst: bytes) -> None:
    got = hash_to_g2(msg, dst)
    assert got.to_bytes() == ref.h2g2(msg, dst)
    assert not got.is_identity()


@settings(max_examples=50, deadline=None, database=None)
@given(msg=st.binary(max_size=64), dst=_DST)
def test_hash_output_is_a_valid_subgroup_point(msg: bytes, dst: bytes) -> None:
    for point, cls in ((hash_to_g1(msg, dst), G1), (hash_to_g2(msg, dst), G2)):
        # from_bytes runs blst's on-curve and subgroup checks.
        assert cls.from_bytes(point.to_bytes()) == point
        assert not point.is_identity()
