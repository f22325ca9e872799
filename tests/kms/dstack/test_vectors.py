"""Every published dstack guest-API vector through ``kms.dstack.keys``, plus properties.

Vectors: dstack ``docs/guest-api-v0.md`` (link 0 of GetKey("test", "signing",
secp256k1); the two ``dip1`` report data strings of the ``vms``/``signing`` key) and
``docs/guest-api-v1.md`` (the six derivation rows, the worked claim, its link 0), all
with the fixture app root key ``1a2b…1a2b``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import coincurve
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.dstack import keys
from kms.dstack.keys import SECP256K1_N, DstackError
from mpc.math import G1
from mpc.tkd.ids import KeyId

ROOT = bytes.fromhex("1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b")
V0_LINK0 = bytes.fromhex(
    "c8a3dcf06c4e95bd78a5d7a1c8fcff171fc5848cfae804c6fc11bda4dc5d4062"
    "379995390843827444992c4c0e4bac70f0f878e01b9fc8b98cd7126fe5a3876b01"
)
V1_ROWS = [
    (
        b"",
        "secp256k1",
        "59f60584ce6fd2a3a31997256db9d77322463fc8a6b1520110401bcb1ee92387",
        "0377c7fb050db181d392266a3cee9adb2901c6d665f11bac68be5457f577ba4908",
    ),
    (
        b"",
        "ed25519",
        "b023493030669cf22e9cafa6a464d4cf3ae4edfe5474ec796710f21ea011946d",
        "a3dc149fd5b765eab2eb7d3174fa939e39386898f10b15b7b146f6f1358ecf2a",
    ),
    (
        b"storage-encryption",
        "secp256k1",
        "5510330f86902ddae38c6d89c93a8408019332c17a429e1abd01c4a28d1544a6",
        "03d962450a41748021c8b02787ac36ce642ff0ae25f4c55019eb527e1112cfd764",
    ),
    (
        b"storage-encryption",
        "ed25519",
        "3c4c3ece12fa99ccb93fc0090877f80e70545fdd971e2ac93d3398c4684538d3",
        "2380c4a33a60b60613fa43866421e5b96eb8dcde211317200fd0d41e7e491288",
    ),
    (
        b"a/b/c",
        "secp256k1",
        "7f0973449298085d2d36a3b4c4d3243c100ba1981ffa885fe9e9dee883e69538",
        "02e9b1a61b6d70aa9b241753828c316bf90e33e77b2e113f9ba75a8b6dc3cde5c1",
    ),
    (
        b"k\x00:ey",
        "ed25519",
        "42da8bf0b479ed125c370e3b91f982735bf08ff592abbd586985affa43ee96a1",
        "c833107822b003ff5675b33b90b151d4315c3ab9162b17d876e8dffde41abf9b",
    ),
]
V1_CLAIM = bytes.fromhex(
    "0000001964737461636b2d67756573742d76312d6b65792d636c61696d"
    "00000009736563703235366b31"
    "0000001273746f726167652d656e6372797074696f6e"
    "0000002103d962450a41748021c8b02787ac36ce642ff0ae25f4c55019eb527e1112cfd764"
)
V1_LINK0 = bytes.fromhex(
    "5b6193729ce7976ec67863f21692d4b98c69832698aae8e001a7d33a6f818b6e"
    "46ca950725b6e90e8ca9bcf394abd03ce264bf9b7eec1e91693247f9dd53c26901"
)
DIP1 = {
    "ed25519": b"dip1::ed25519-pk:5Pbre1Amf1hrp2V2bbfKlIfxpQb2pJAmrgmhxgVoG9s\0\0\0\0",
    "secp256k1": b"dip1::secp256k1c-pk:A6t_JdVkVdMAocH3f1f20WGT6JzdntxcXimUtEax8zc9",
}
DIP1_PREFIX = {"ed25519": b"dip1::ed25519-pk:", "secp256k1": b"dip1::secp256k1c-pk:"}
ROOT_PUBLIC = bytes.fromhex("0375427ab8309aad26beea8142edf427674e4544604ae4dc5045108ad21fc8a0db")

roots = st.integers(1, SECP256K1_N - 1).map(lambda k: k.to_bytes(32, "big"))


def _hybrid(pub: bytes) -> bytes:
    """The SEC1 "hybrid" form (06/07 ‖ x ‖ y), which libsecp256k1 parses and dstack does not."""
    full = coincurve.PublicKey(pub).format(compressed=False)
    return bytes([6 + (full[-1] & 1)]) + full[1:]


def _high_s(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + sig[64:]


# --- published vectors ----------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["secp256k1", "k256", ""])
def test_v0_link0_vector(algorithm: str) -> None:
    key, pub, link0 = keys.v0_get_key(ROOT, "test", "signing", algorithm)
    assert link0 == V0_LINK0
    assert key == keys.v0_derive(ROOT, "test")
    assert keys.recover_link(keys.v0_claim("signing", pub), link0) == ROOT_PUBLIC


def test_root_public_of_the_fixture_key() -> None:
    assert keys.root_public(ROOT) == ROOT_PUBLIC


@pytest.mark.parametrize(("domain", "algorithm", "key_hex", "pub_hex"), V1_ROWS)
def test_v1_derivation_rows(domain: bytes, algorithm: str, key_hex: str, pub_hex: str) -> None:
    key, pub, link0 = keys.v1_get_key(ROOT, domain, algorithm)
    assert key.hex() == key_hex
    assert pub.hex() == pub_hex
    assert keys.recover_link(keys.v1_claim(domain, algorithm, pub), link0) == ROOT_PUBLIC


def test_v1_claim_bytes_and_link0_vector() -> None:
    _, pub, link0 = keys.v1_get_key(ROOT, "storage-encryption", "secp256k1")
    assert keys.v1_claim("storage-encryption", "secp256k1", pub) == V1_CLAIM
    assert link0 == V1_LINK0


@pytest.mark.parametrize("algorithm", ["ed25519", "secp256k1"])
def test_dip1_report_data_pins_the_vms_signing_key(algorithm: str) -> None:
    _, pub, _ = keys.v0_get_key(ROOT, "vms", "signing", algorithm)
    text = DIP1_PREFIX[algorithm] + base64.urlsafe_b64encode(pub).rstrip(b"=")
    assert text.ljust(64, b"\0") == DIP1[algorithm]
    # Sign uses the same key, for every mode of the algorithm.
    modes = (
        ["secp256k1", "k256", "secp256k1_prehashed"] if algorithm == "secp256k1" else [algorithm]
    )
    for mode in modes:
        _, sign_pub, sign_link0 = keys.sign(ROOT, mode, bytes(32))
        assert sign_pub == pub
        assert sign_link0 == keys.v0_get_key(ROOT, "vms", "signing", algorithm)[2]


def test_v0_key_is_shared_by_both_curves_and_v1_keys_are_not() -> None:
    assert keys.v0_get_key(ROOT, "x", "", "ed25519")[0] == keys.v0_get_key(ROOT, "x", "", "")[0]
    assert keys.v1_derive(ROOT, "x", "ed25519") != keys.v1_derive(ROOT, "x", "secp256k1")


def test_the_kdfs_are_hkdf_sha256_as_specified() -> None:
    """An independent RFC 5869 HKDF with hmac, over the spec's salts and info."""

    def hkdf(salt: bytes, ikm: bytes, info: bytes) -> bytes:
        prk = hmac.new(salt, ikm, hashlib.sha256).digest()
        return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()

    def lp(x: bytes) -> bytes:
        return struct.pack(">I", len(x)) + x

    assert keys.v0_derive(ROOT, "a/b") == hkdf(b"RATLS", ROOT, b"a/b")
    info = lp(b"dstack-guest-v1-key") + lp(b"ed25519") + lp(b"a/b")
    assert keys.v1_derive(ROOT, "a/b", "ed25519") == hkdf(b"dstack-guest-v1", ROOT, info)


# --- algorithm tables and errors ------------------------------------------------


@pytest.mark.parametrize("algorithm", ["secp256k1_prehashed", "K256", "ed448", "Secp256k1"])
def test_v0_getkey_refuses_other_algorithms(algorithm: str) -> None:
    with pytest.raises(DstackError) as e:
        keys.v0_get_key(ROOT, "p", "q", algorithm)
    assert str(e.value) == "Unsupported algorithm"


@pytest.mark.parametrize("algorithm", ["", "k256", "secp256k1_prehashed", "ED25519", "x"])
def test_v1_getkey_accepts_only_the_two_canonical_names(algorithm: str) -> None:
    with pytest.raises(DstackError) as e:
        keys.v1_get_key(ROOT, "d", algorithm)
    assert "secp256k1" in str(e.value) and "ed25519" in str(e.value)


@pytest.mark.parametrize("scalar", [0, SECP256K1_N, SECP256K1_N + 1, 2**256 - 1])
def test_secp256k1_scalar_out_of_range(scalar: int) -> None:
    with pytest.raises(DstackError) as e:
        keys.public_key("secp256k1", scalar.to_bytes(32, "big"))
    assert str(e.value) == "Failed to parse k256 key"


# --- Sign ---------------------------------------------------------------------


def test_sign_secp256k1_is_sha256_then_low_s_r_s() -> None:
    data = b"hello dstack"
    sig, pub, _ = keys.sign(ROOT, "secp256k1", data)
    assert len(sig) == 64 and int.from_bytes(sig[32:], "big") <= SECP256K1_N // 2
    vms = keys.v0_derive(ROOT, "vms")
    expected = coincurve.PrivateKey(vms).sign_recoverable(hashlib.sha256(data).digest(), None)
    assert sig == expected[:64]
    assert keys.sign(ROOT, "k256", data)[0] == sig
    assert keys.verify("secp256k1", data, sig, pub)
    assert not keys.verify("secp256k1_prehashed", data.ljust(32, b"\0"), sig, pub)


def test_sign_prehashed_needs_exactly_32_bytes() -> None:
    digest = hashlib.sha256(b"m").digest()
    sig, pub, _ = keys.sign(ROOT, "secp256k1_prehashed", digest)
    assert sig == keys.sign(ROOT, "secp256k1", b"m")[0]
    assert keys.verify("secp256k1_prehashed", digest, sig, pub)
    for n in (0, 31, 33, 64):
        with pytest.raises(DstackError) as e:
            keys.sign(ROOT, "secp256k1_prehashed", bytes(n))
        assert str(e.value) == (
            f"Pre-hashed signing requires a 32-byte digest, but received {n} bytes"
        )


def test_sign_ed25519_is_rfc8032() -> None:
    sig, pub, _ = keys.sign(ROOT, "ed25519", b"payload")
    Ed25519PublicKey.from_public_bytes(pub).verify(sig, b"payload")
    assert keys.verify("ed25519", b"payload", sig, pub)
    assert not keys.verify("ed25519", b"payloae", sig, pub)


@pytest.mark.parametrize("algorithm", ["", "secp256k1c", "sha256"])
def test_sign_has_no_default(algorithm: str) -> None:
    with pytest.raises(DstackError) as e:
        keys.sign(ROOT, algorithm, b"x")
    assert str(e.value) == "Unsupported algorithm"


# --- Verify -------------------------------------------------------------------


def test_verify_high_s_is_false_not_an_error() -> None:
    sig, pub, _ = keys.sign(ROOT, "secp256k1", b"m")
    assert keys.verify("secp256k1", b"m", sig, pub)
    assert keys.verify("secp256k1", b"m", _high_s(sig), pub) is False


def test_verify_accepts_an_uncompressed_public_key() -> None:
    sig, pub, _ = keys.sign(ROOT, "secp256k1", b"m")
    full = coincurve.PublicKey(pub).format(compressed=False)
    assert keys.verify("secp256k1", b"m", sig, full)


@pytest.mark.parametrize(
    ("algorithm", "mutate"),
    [
        ("secp256k1", lambda s, p: (s[:63], p)),
        ("secp256k1", lambda s, p: (s + b"\0", p)),
        ("secp256k1", lambda s, p: (bytes(32) + s[32:], p)),
        ("secp256k1", lambda s, p: (s[:32] + bytes(32), p)),
        ("secp256k1", lambda s, p: (SECP256K1_N.to_bytes(32, "big") + s[32:], p)),
        ("secp256k1", lambda s, p: (s, b"\x02" + bytes(32))),
        ("secp256k1", lambda s, p: (s, p[:32])),
        ("secp256k1_prehashed", lambda s, p: (s, b"\x04" + p[1:] + p[1:])),
        ("secp256k1", lambda s, p: (s, _hybrid(p))),
        ("secp256k1", lambda s, p: (s, b"")),
        ("ed25519", lambda s, p: (s, p[:31])),
        ("ed25519", lambda s, p: (s[:63], p)),
        ("", lambda s, p: (s, p)),
        ("rsa", lambda s, p: (s, p)),
    ],
)
def test_verify_malformed_input_is_an_error(algorithm, mutate) -> None:  # type: ignore[no-untyped-def]
    base = "ed25519" if algorithm == "ed25519" else "secp256k1"
    sig, pub, _ = keys.sign(ROOT, base, b"m")
    bad_sig, bad_pub = mutate(sig, pub)
    with pytest.raises(DstackError):
        keys.verify(algorithm, b"m", bad_sig, bad_pub)


def test_verify_ed25519_off_curve_key_is_an_error() -> None:
    # y = 2 is not the y coordinate of any Edwards25519 point.
    pub = (2).to_bytes(32, "little")
    assert not keys._ed25519_point_ok(pub)
    with pytest.raises(DstackError):
        keys.verify("ed25519", b"m", bytes(64), pub)


def test_verify_prehashed_pads_truncates_and_swallows_short_data() -> None:
    vms = coincurve.PrivateKey(keys.v0_derive(ROOT, "vms"))
    pub = vms.public_key.format()
    x = bytes(range(1, 21))  # 20 bytes: zero-padded on the left
    sig = vms.sign_recoverable(bytes(12) + x, None)[:64]
    assert keys.verify("secp256k1_prehashed", x, sig, pub)
    assert keys.verify("secp256k1_prehashed", bytes(12) + x + b"tail", sig, pub)  # truncated
    short = bytes(range(1, 16))  # 15 bytes: below 16, valid false even though it matches
    sig = vms.sign_recoverable(bytes(17) + short, None)[:64]
    assert keys.verify("secp256k1_prehashed", b"\0" + short, sig, pub)
    assert keys.verify("secp256k1_prehashed", short, sig, pub) is False


# --- the app root ---------------------------------------------------------------


def test_app_root_from_sigma_is_the_specified_hkdf() -> None:
    sigma = (G1.generator() * 12345).to_bytes()
    key_id = KeyId(bytes(range(20)), keys.ROOT_PURPOSE, 1).encode()
    prk = hmac.new(b"quorum-kms/v1/dstack/app-root", sigma, hashlib.sha256).digest()
    expected = hmac.new(prk, key_id + bytes(4) + b"\x01", hashlib.sha256).digest()
    root = keys.app_root_from_sigma(sigma, key_id)
    assert root == expected  # counter 0 is in range here
    assert (
        keys.app_root_from_sigma(sigma, KeyId(bytes(range(20)), keys.ROOT_PURPOSE, 2).encode())
        != root
    )
    with pytest.raises(ValueError):
        keys.app_root_from_sigma(sigma[:47], key_id)


# --- properties -------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(root=roots, path=st.text(max_size=20), purpose=st.text(max_size=20), ed=st.booleans())
def test_link0_recovers_the_root_and_is_low_s(
    root: bytes, path: str, purpose: str, ed: bool
) -> None:
    alg = "ed25519" if ed else "secp256k1"
    _, pub, link0 = keys.v0_get_key(root, path, purpose, alg)
    assert len(link0) == 65 and link0[64] in (0, 1, 2, 3)
    assert int.from_bytes(link0[32:64], "big") <= SECP256K1_N // 2
    assert keys.recover_link(keys.v0_claim(purpose, pub), link0) == keys.root_public(root)
    with pytest.raises(DstackError):
        keys.recover_link(keys.v0_claim(purpose, pub), _high_s(link0))
    _, pub1, link1 = keys.v1_get_key(root, path, alg)
    assert keys.recover_link(keys.v1_claim(path, alg, pub1), link1) == keys.root_public(root)


@settings(max_examples=30, deadline=None)
@given(root=roots, data=st.binary(max_size=64), mode=st.sampled_from(["secp256k1", "k256"]))
def test_sign_is_always_low_s(root: bytes, data: bytes, mode: str) -> None:
    sig, pub, _ = keys.sign(root, mode, data)
    assert int.from_bytes(sig[32:], "big") <= SECP256K1_N // 2
    assert keys.verify(mode, data, sig, pub)


@settings(max_examples=100, deadline=None)
@given(
    purpose=st.binary(max_size=120),
    domain=st.binary(max_size=40),
    ed=st.booleans(),
    pub=st.binary(min_size=32, max_size=32),
)
def test_a_v0_claim_never_equals_a_v1_claim(
    purpose: bytes, domain: bytes, ed: bool, pub: bytes
) -> None:
    alg = "ed25519" if ed else "secp256k1"
    v1_pub = pub if ed else b"\x02" + pub
    v1 = keys.v1_claim(domain, alg, v1_pub)
    assert keys.v0_claim(purpose, v1_pub) != v1
    # The strongest forgery: a purpose that is the v1 claim minus what v0 appends.
    suffix = b":" + v1_pub.hex().encode()
    forged = v1[: len(v1) - len(suffix)]
    assert keys.v0_claim(forged, v1_pub) != v1
