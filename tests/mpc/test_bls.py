"""Tests for ``mpc.bls``: draft-irtf-cfrg-bls-signature-05, all six BLS12-381 ciphersuites.

* Known answers: every category of the Ethereum BLS test suite v0.1.1
  (``tests/vectors/SOURCES.md`` §1) through ``MinPkPop`` / ``mpc.math``, one test
  per vector file; a drand quicknet beacon round (``MinSigBasic``); the
  EIP-2333 master-key vector for ``key_gen``.
* Cross-checks against py-ecc (pure Python, independent of blst): MinPk schemes
  against ``py_ecc.bls.G2Basic`` / ``G2MessageAugmentation`` /
  ``G2ProofOfPossession``; MinSig schemes against py-ecc's G1 hash-to-curve,
  scalar multiplication, compression and pairing.
* Malformed inputs make every check return ``False`` without raising.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import chia_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc.bls import G2Basic, G2MessageAugmentation, G2ProofOfPossession
from py_ecc.bls.g2_primitives import pubkey_to_G1, signature_to_G2
from py_ecc.bls.hash_to_curve import hash_to_G1
from py_ecc.bls.point_compression import compress_G1, compress_G2, decompress_G1
from py_ecc.fields import optimized_bls12_381_FQ as PyFQ
from py_ecc.fields import optimized_bls12_381_FQ2 as PyFQ2
from py_ecc.optimized_bls12_381 import G2 as PY_G2
from py_ecc.optimized_bls12_381 import add as py_add
from py_ecc.optimized_bls12_381 import b as PY_B1
from py_ecc.optimized_bls12_381 import b2 as PY_B2
from py_ecc.optimized_bls12_381 import field_modulus as PY_P
from py_ecc.optimized_bls12_381 import is_inf as py_is_inf
from py_ecc.optimized_bls12_381 import is_on_curve as py_is_on_curve
from py_ecc.optimized_bls12_381 import multiply as py_multiply
from py_ecc.optimized_bls12_381 import normalize as py_normalize
from py_ecc.optimized_bls12_381 import pairing as py_pairing

from mpc import bls
from mpc.bls import (
    BlsScheme,
    MinPkAug,
    MinPkBasic,
    MinPkPop,
    MinSigAug,
    MinSigBasic,
    MinSigPop,
    PopScheme,
    Variant,
    key_gen,
)
from mpc.errors import InvalidEncoding
from mpc.math import G1, G2, R, hash_to_g1, hash_to_g2

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ethereum-bls12-381-tests-v0.1.1"
CATEGORIES = {
    "aggregate",
    "aggregate_verify",
    "batch_verify",
    "deserialization_G1",
    "deserialization_G2",
    "fast_aggregate_verify",
    "hash_to_G2",
    "sign",
    "verify",
}
H2C_TEST_DST = b"QUUX-V01-CS02-with-BLS12381G2_XMD:SHA-256_SSWU_RO_"

ALL_SCHEMES: list[BlsScheme[Any, Any]] = [
    MinPkBasic,
    MinPkAug,
    MinPkPop,
    MinSigBasic,
    MinSigAug,
    MinSigPop,
]
POP_SCHEMES: list[PopScheme[Any, Any]] = [MinPkPop, MinSigPop]
SCHEME_IDS = [s.name for s in ALL_SCHEMES]

# Few, slow examples: py-ecc is pure Python. No example database in the shared tree.
FEW = settings(max_examples=10, deadline=None, database=None)
SOME = settings(max_examples=20, deadline=None, database=None)

secret_keys = st.integers(min_value=1, max_value=R - 1)
messages = st.binary(max_size=48)


def _h(s: str) -> bytes:
    return bytes.fromhex(s.removeprefix("0x"))


def _cases(category: str) -> list[Any]:
    files = sorted((VECTORS / category).glob("*.json"))
    return [pytest.param(f, id=f.name) for f in files]


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _sk(n: int) -> int:
    return key_gen(hashlib.sha256(b"test_bls key %d" % n).digest())


# --- ciphersuite identifiers -------------------------------------------------


def test_ciphersuite_ids_are_the_drafts() -> None:
    """§4.2.1–§4.2.3, verbatim."""
    assert bls.DST_SIG_BASIC == b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_"
    assert bls.DST_SIG_AUG == b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_AUG_"
    assert bls.DST_SIG_POP == b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
    assert bls.DST_POP_PROOF == b"BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_"
    assert bls.DST_MINSIG_SIG_BASIC == b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_"
    assert bls.DST_MINSIG_SIG_AUG == b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_AUG_"
    assert bls.DST_MINSIG_SIG_POP == b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_"
    assert bls.DST_MINSIG_POP_PROOF == b"BLS_POP_BLS12381G1_XMD:SHA-256_SSWU_RO_POP_"
    assert [s.ciphersuite for s in ALL_SCHEMES] == [
        bls.DST_SIG_BASIC,
        bls.DST_SIG_AUG,
        bls.DST_SIG_POP,
        bls.DST_MINSIG_SIG_BASIC,
        bls.DST_MINSIG_SIG_AUG,
        bls.DST_MINSIG_SIG_POP,
    ]
    assert MinPkPop.pop_ciphersuite == bls.DST_POP_PROOF
    assert MinSigPop.pop_ciphersuite == bls.DST_MINSIG_POP_PROOF
    assert [s.variant for s in ALL_SCHEMES] == [Variant.BASIC, Variant.AUG, Variant.POP] * 2
    assert [(s.public_key_size, s.signature_size) for s in ALL_SCHEMES] == [(48, 96)] * 3 + [
        (96, 48)
    ] * 3
    # Only the PoP schemes expose the PoP operations.
    for s in ALL_SCHEMES:
        has_pop = s.variant is Variant.POP
        for attr in ("pop_prove", "pop_verify", "fast_aggregate_verify"):
            assert hasattr(s, attr) is has_pop


# --- Ethereum BLS vectors (MinPkPop) -----------------------------------------


def test_every_vector_category_is_covered() -> None:
    dirs = {p.name for p in VECTORS.iterdir() if p.is_dir()}
    assert dirs == CATEGORIES
    for category in CATEGORIES:
        assert _cases(category), category


@pytest.mark.parametrize("path", _cases("sign"))
def test_eth_sign(path: Path) -> None:
    case = _load(path)
    sk = int(case["input"]["privkey"], 16)
    msg = _h(case["input"]["message"])
    if case["output"] is None:
        with pytest.raises(ValueError):
            MinPkPop.sign(sk, msg)
        return
    sig = MinPkPop.sign(sk, msg)
    assert sig == _h(case["output"])
    assert MinPkPop.verify(MinPkPop.sk_to_pk(sk), msg, sig)


@pytest.mark.parametrize("path", _cases("verify"))
def test_eth_verify(path: Path) -> None:
    case = _load(path)
    inp = case["input"]
    got = MinPkPop.verify(_h(inp["pubkey"]), _h(inp["message"]), _h(inp["signature"]))
    assert got is case["output"]


@pytest.mark.parametrize("path", _cases("aggregate"))
def test_eth_aggregate(path: Path) -> None:
    case = _load(path)
    sigs = [_h(s) for s in case["input"]]
    if case["output"] is None:
        with pytest.raises(ValueError):
            MinPkPop.aggregate(sigs)
        return
    assert MinPkPop.aggregate(sigs) == _h(case["output"])


@pytest.mark.parametrize("path", _cases("aggregate_verify"))
def test_eth_aggregate_verify(path: Path) -> None:
    case = _load(path)
    inp = case["input"]
    pks = [_h(p) for p in inp["pubkeys"]]
    msgs = [_h(m) for m in inp["messages"]]
    got = MinPkPop.aggregate_verify(pks, msgs, _h(inp["signature"]))
    assert got is case["output"]


@pytest.mark.parametrize("path", _cases("fast_aggregate_verify"))
def test_eth_fast_aggregate_verify(path: Path) -> None:
    case = _load(path)
    inp = case["input"]
    pks = [_h(p) for p in inp["pubkeys"]]
    got = MinPkPop.fast_aggregate_verify(pks, _h(inp["message"]), _h(inp["signature"]))
    assert got is case["output"]


@pytest.mark.parametrize("path", _cases("batch_verify"))
def test_eth_batch_verify(path: Path) -> None:
    case = _load(path)
    inp = case["input"]
    sets = list(zip(inp["pubkeys"], inp["messages"], inp["signatures"], strict=True))
    assert sets
    got = all(MinPkPop.verify(_h(pk), _h(m), _h(s)) for pk, m, s in sets)
    assert got is case["output"]


def _check_deserialization(group: type[G1] | type[G2], encoded: str, ok: bool) -> None:
    data = _h(encoded)
    if ok:
        point = group.from_bytes(data)
        assert point.to_bytes() == data
    else:
        with pytest.raises(InvalidEncoding):
            group.from_bytes(data)


@pytest.mark.parametrize("path", _cases("deserialization_G1"))
def test_eth_deserialization_g1(path: Path) -> None:
    case = _load(path)
    encoded = case["input"]["pubkey"]
    _check_deserialization(G1, encoded, case["output"])
    # KeyValidate additionally refuses the (validly encoded) identity.
    is_identity = path.name == "deserialization_succeeds_infinity_with_true_b_flag.json"
    assert MinPkPop.key_validate(_h(encoded)) is (case["output"] and not is_identity)


@pytest.mark.parametrize("path", _cases("deserialization_G2"))
def test_eth_deserialization_g2(path: Path) -> None:
    case = _load(path)
    encoded = case["input"]["signature"]
    _check_deserialization(G2, encoded, case["output"])
    # The same bytes are a MinSig public key; KeyValidate refuses the identity.
    is_identity = path.name == "deserialization_succeeds_infinity_with_true_b_flag.json"
    assert MinSigPop.key_validate(_h(encoded)) is (case["output"] and not is_identity)


def _py_g2_affine(x: str, y: str) -> tuple[PyFQ2, PyFQ2, PyFQ2]:
    x0, x1 = (int(c, 16) for c in x.split(","))
    y0, y1 = (int(c, 16) for c in y.split(","))
    return (PyFQ2([x0, x1]), PyFQ2([y0, y1]), PyFQ2.one())


@pytest.mark.parametrize("path", _cases("hash_to_G2"))
def test_eth_hash_to_g2(path: Path) -> None:
    case = _load(path)
    msg = case["input"]["msg"].encode()
    expected = _py_g2_affine(case["output"]["x"], case["output"]["y"])
    assert py_is_on_curve(expected, PY_B2)
    z1, z2 = compress_G2(expected)
    ours = hash_to_g2(msg, H2C_TEST_DST).to_bytes()
    assert ours == z1.to_bytes(48, "big") + z2.to_bytes(48, "big")
    # And the other way round: our encoding decodes (py-ecc) to the same affine point.
    assert py_normalize(signature_to_G2(ours)) == py_normalize(expected)


# --- other known answers -----------------------------------------------------

# drand quicknet (chain 52db9ba70e0cc0f6eaf7803dd07447a1f5477735fd3f661792ba94600c84e971,
# scheme "bls-unchained-g1-rfc9380" = MinSigBasic), public /info key and round 1000.
# The beacon message is SHA-256(round as uint64 big-endian); its published randomness
# is SHA-256(signature).
QUICKNET_PK = _h(
    "83cf0f2896adee7eb8b5f01fcad3912212c437e0073e911fb90022d3e760183c8c4b450b6a0a6c3ac6a5776a2d1064510"
    "d1fec758c921cc22b0e17e63aaf4bcb5ed66304de9cf809bd274ca73bab4af5a6e9c76a4bc09e76eae8991ef5ece45a"
)
QUICKNET_ROUND_1000_SIG = _h(
    "b44679b9a59af2ec876b1a6b1ad52ea9b1615fc3982b19576350f93447cb1125e342b73a8dd2bacbe47e4b6b63ed5e39"
)
QUICKNET_ROUND_1000_RANDOMNESS = _h(
    "fe290beca10872ef2fb164d2aa4442de4566183ec51c56ff3cd603d930e54fdd"
)


def _quicknet_msg(round_: int) -> bytes:
    return hashlib.sha256(round_.to_bytes(8, "big")).digest()


def test_drand_quicknet_round_verifies_with_min_sig_basic() -> None:
    assert hashlib.sha256(QUICKNET_ROUND_1000_SIG).digest() == QUICKNET_ROUND_1000_RANDOMNESS
    assert MinSigBasic.key_validate(QUICKNET_PK)
    assert MinSigBasic.verify(QUICKNET_PK, _quicknet_msg(1000), QUICKNET_ROUND_1000_SIG)
    assert not MinSigBasic.verify(QUICKNET_PK, _quicknet_msg(1001), QUICKNET_ROUND_1000_SIG)
    assert not MinSigPop.verify(QUICKNET_PK, _quicknet_msg(1000), QUICKNET_ROUND_1000_SIG)
    assert not MinSigAug.verify(QUICKNET_PK, _quicknet_msg(1000), QUICKNET_ROUND_1000_SIG)
    assert not MinPkBasic.verify(QUICKNET_PK, _quicknet_msg(1000), QUICKNET_ROUND_1000_SIG)


def _g1_torsion_point() -> Any:
    """A point of E1 outside G1 whose order divides the cofactor: ``r·P`` for ``P = (4, y)``."""
    x = PyFQ(4)
    rhs = x**3 + PY_B1
    y = rhs ** ((PY_P + 1) // 4)  # p ≡ 3 (mod 4)
    assert y * y == rhs
    t = py_multiply((x, y, PyFQ.one()), R)
    assert not py_is_inf(t)
    assert py_is_on_curve(t, PY_B1)
    return t


def test_min_sig_rejects_signature_plus_cofactor_torsion() -> None:
    """``σ + T`` with ``T`` of cofactor order satisfies the pairing equation (``e(T, ·) = 1``)
    but is not in G1: the subgroup check of §2.7 step 3 / §5.3 must refuse it."""
    forged_point = py_add(
        decompress_G1(int.from_bytes(QUICKNET_ROUND_1000_SIG, "big")), _g1_torsion_point()
    )
    forged = compress_G1(forged_point).to_bytes(48, "big")
    assert forged != QUICKNET_ROUND_1000_SIG
    with pytest.raises(InvalidEncoding):
        G1.from_bytes(forged)
    assert not MinSigBasic.verify(QUICKNET_PK, _quicknet_msg(1000), forged)
    assert not MinSigBasic.aggregate_verify([QUICKNET_PK], [_quicknet_msg(1000)], forged)
    with pytest.raises(InvalidEncoding):
        MinSigBasic.aggregate([forged])


# --- key_gen (§2.3) -----------------------------------------------------------


def test_key_gen_eip2333_master_key() -> None:
    """EIP-2333 test case 0: ``derive_master_SK(seed)`` is KeyGen with the draft-04 salt."""
    seed = _h(
        "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf14"
        "1630c7a3c4ab7c81b2f001698e7463b04"
    )
    expected = 6083874454709270928345386274498605044986640685124978867557563392430687146096
    assert key_gen(seed) == expected
    for scheme in ALL_SCHEMES:
        assert scheme.key_gen(seed) == expected


@pytest.mark.parametrize(
    ("ikm", "key_info"),
    [
        (bytes(32), b""),
        (bytes(range(32)), b""),
        (b"\xff" * 64, b"key info"),
        (hashlib.sha512(b"ikm").digest(), b"\x00" * 100),
    ],
)
def test_key_gen_matches_py_ecc(ikm: bytes, key_info: bytes) -> None:
    sk = key_gen(ikm, key_info)
    assert sk == G2ProofOfPossession.KeyGen(ikm, key_info)
    assert 1 <= sk < R


@SOME
@given(ikm=st.binary(min_size=32, max_size=80), key_info=st.binary(max_size=40))
def test_key_gen_matches_py_ecc_random(ikm: bytes, key_info: bytes) -> None:
    assert key_gen(ikm, key_info) == G2Basic.KeyGen(ikm, key_info)


def test_key_gen_salt_parameter_matches_chia() -> None:
    """Pre-draft-04 KeyGen (salt ``"BLS-SIG-KEYGEN-SALT-"`` not hashed) is chia's."""
    ikm = bytes(range(7, 39))
    chia_sk = int.from_bytes(bytes(chia_rs.AugSchemeMPL.key_gen(ikm)), "big")
    assert key_gen(ikm, salt=b"BLS-SIG-KEYGEN-SALT-") == chia_sk
    assert key_gen(ikm) != chia_sk
    assert key_gen(ikm, salt=bls.KEYGEN_SALT) == key_gen(ikm)


def test_key_gen_rehashes_salt_when_sk_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    """§2.3 steps 5–7: an attempt giving SK = 0 (probability ~2⁻²⁵⁵) retries with H(salt)."""
    ikm = bytes(range(32))
    salts: list[bytes] = []
    real_extract, real_expand = bls._hkdf_extract, bls._hkdf_expand

    def extract(salt: bytes, data: bytes) -> bytes:
        salts.append(salt)
        return real_extract(salt, data)

    def expand(prk: bytes, info: bytes, length: int) -> bytes:
        if len(salts) == 1:
            return R.to_bytes(length, "big")  # OS2IP(OKM) mod r == 0
        return real_expand(prk, info, length)

    monkeypatch.setattr(bls, "_hkdf_extract", extract)
    monkeypatch.setattr(bls, "_hkdf_expand", expand)
    sk = key_gen(ikm)
    assert salts == [bls.KEYGEN_SALT, hashlib.sha256(bls.KEYGEN_SALT).digest()]
    monkeypatch.undo()
    assert sk == key_gen(ikm, salt=hashlib.sha256(bls.KEYGEN_SALT).digest())
    assert sk != key_gen(ikm)


@pytest.mark.parametrize("ikm", [b"", bytes(31), "x" * 40, None, 12345])
def test_key_gen_refuses_short_or_non_bytes_ikm(ikm: Any) -> None:
    with pytest.raises(ValueError):
        key_gen(ikm)
    with pytest.raises(ValueError):
        MinSigBasic.key_gen(ikm)


def test_key_gen_key_info_separates() -> None:
    ikm = bytes(range(32))
    assert key_gen(ikm) != key_gen(ikm, b"a") != key_gen(ikm, b"b")
    assert key_gen(bytearray(ikm)) == key_gen(ikm)
    with pytest.raises(ValueError):
        key_gen(ikm, "a")  # type: ignore[arg-type]


# --- sign / sk_to_pk input checks ---------------------------------------------

BAD_SECRET_KEYS: list[Any] = [0, R, R + 1, 2**256, -1, -R + 1, True, False, 1.0, "1", b"\x01", None]


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
@pytest.mark.parametrize("sk", BAD_SECRET_KEYS, ids=repr)
def test_sign_refuses_bad_secret_keys(scheme: BlsScheme[Any, Any], sk: Any) -> None:
    with pytest.raises(ValueError):
        scheme.sign(sk, b"msg")
    with pytest.raises(ValueError):
        scheme.sk_to_pk(sk)
    if isinstance(scheme, PopScheme):
        with pytest.raises(ValueError):
            scheme.pop_prove(sk)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_sign_refuses_non_bytes_messages(scheme: BlsScheme[Any, Any]) -> None:
    for msg in ("text", 5, None, [1, 2]):
        with pytest.raises(ValueError):
            scheme.sign(1, msg)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_extreme_secret_keys(scheme: BlsScheme[Any, Any]) -> None:
    for sk in (1, 2, R - 1):
        pk = scheme.sk_to_pk(sk)
        sig = scheme.sign(sk, b"edge")
        assert scheme.key_validate(pk)
        assert scheme.verify(pk, b"edge", sig)
    # SK = r - 1 gives the negation of SK = 1.
    group = G1 if scheme.public_key_size == 48 else G2
    assert group.from_bytes(scheme.sk_to_pk(R - 1)) == -group.from_bytes(scheme.sk_to_pk(1))


# --- behaviour of the six schemes ----------------------------------------------


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_sign_verify_roundtrip_and_tampering(scheme: BlsScheme[Any, Any]) -> None:
    sk, other = _sk(1), _sk(2)
    pk, other_pk = scheme.sk_to_pk(sk), scheme.sk_to_pk(other)
    assert len(pk) == scheme.public_key_size
    sig = scheme.sign(sk, b"hello")
    assert len(sig) == scheme.signature_size
    assert sig == scheme.sign(sk, b"hello")  # deterministic
    assert scheme.verify(pk, b"hello", sig)
    assert scheme.verify(bytearray(pk), memoryview(b"hello"), bytearray(sig))
    assert not scheme.verify(pk, b"hellp", sig)
    assert not scheme.verify(other_pk, b"hello", sig)
    assert not scheme.verify(pk, b"hello", scheme.sign(other, b"hello"))
    assert not scheme.verify(pk, b"hello", scheme.sign(sk, b"hellp"))
    # Signatures are bound to the ciphersuite: no other scheme accepts them.
    for different in ALL_SCHEMES:
        if different is not scheme:
            assert not different.verify(pk, b"hello", sig)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_aggregate_and_aggregate_verify(scheme: BlsScheme[Any, Any]) -> None:
    sks = [_sk(i) for i in range(3)]
    pks = [scheme.sk_to_pk(k) for k in sks]
    msgs = [b"m0", b"m1", b"m2"]
    sigs = [scheme.sign(k, m) for k, m in zip(sks, msgs, strict=True)]
    agg = scheme.aggregate(sigs)
    assert scheme.aggregate(sigs[::-1]) == agg
    assert scheme.aggregate([sigs[0]]) == sigs[0]
    assert scheme.aggregate_verify(pks, msgs, agg)
    assert scheme.aggregate_verify(pks[:1], msgs[:1], sigs[0])
    assert not scheme.aggregate_verify(pks, [b"m0", b"m1", b"mX"], agg)
    assert not scheme.aggregate_verify(pks[::-1], msgs, agg)
    assert not scheme.aggregate_verify(pks[:2], msgs[:2], agg)
    assert not scheme.aggregate_verify(pks, msgs, scheme.aggregate(sigs[:2]))
    # A signature plus its negation aggregates to the identity.
    group = G2 if scheme.signature_size == 96 else G1
    neg = (-group.from_bytes(sigs[0])).to_bytes()
    assert group.from_bytes(scheme.aggregate([sigs[0], neg])).is_identity()


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_repeated_messages(scheme: BlsScheme[Any, Any]) -> None:
    """Basic refuses repeated messages (§3.1.1); AUG and PoP accept them."""
    sks = [_sk(10), _sk(11)]
    pks = [scheme.sk_to_pk(k) for k in sks]
    agg = scheme.aggregate([scheme.sign(k, b"same") for k in sks])
    assert scheme.aggregate_verify(pks, [b"same", b"same"], agg) is (
        scheme.variant is not Variant.BASIC
    )


@pytest.mark.parametrize("scheme", [MinPkAug, MinSigAug], ids=["MinPkAug", "MinSigAug"])
def test_aug_signs_public_key_prefixed_message(scheme: BlsScheme[Any, Any]) -> None:
    sk = _sk(3)
    pk = scheme.sk_to_pk(sk)
    basic = MinPkBasic if scheme is MinPkAug else MinSigBasic
    hash_group = G2 if scheme is MinPkAug else G1
    sig = scheme.sign(sk, b"m")
    # CoreSign(SK, PK || m) under the AUG DST, recomputed by hand.
    h = hash_to_g2 if hash_group is G2 else hash_to_g1
    assert sig == (h(pk + b"m", scheme.ciphersuite) * sk).to_bytes()
    assert basic.sign(sk, pk + b"m") != sig  # different DST


@pytest.mark.parametrize("scheme", POP_SCHEMES, ids=["MinPkPop", "MinSigPop"])
def test_pop_and_fast_aggregate_verify(scheme: PopScheme[Any, Any]) -> None:
    sks = [_sk(20 + i) for i in range(4)]
    pks = [scheme.sk_to_pk(k) for k in sks]
    proofs = [scheme.pop_prove(k) for k in sks]
    for pk, proof in zip(pks, proofs, strict=True):
        assert scheme.pop_verify(pk, proof)
    assert not scheme.pop_verify(pks[0], proofs[1])
    # A proof is not a signature on the serialized key (different DST) and vice versa.
    assert proofs[0] != scheme.sign(sks[0], pks[0])
    assert not scheme.pop_verify(pks[0], scheme.sign(sks[0], pks[0]))
    agg = scheme.aggregate([scheme.sign(k, b"common") for k in sks])
    assert scheme.fast_aggregate_verify(pks, b"common", agg)
    assert scheme.aggregate_verify(pks, [b"common"] * 4, agg)
    assert not scheme.fast_aggregate_verify(pks, b"other", agg)
    assert not scheme.fast_aggregate_verify(pks[:3], b"common", agg)
    assert not scheme.fast_aggregate_verify([], b"common", agg)
    # Keys summing to the identity are refused (CoreVerify's KeyValidate on the sum).
    group = G1 if scheme.public_key_size == 48 else G2
    neg_pk = (-group.from_bytes(pks[0])).to_bytes()
    sig_group = G2 if scheme.signature_size == 96 else G1
    assert not scheme.fast_aggregate_verify(
        [pks[0], neg_pk], b"common", sig_group.identity().to_bytes()
    )


# --- malformed inputs: checks return False and never raise ----------------------


def _malformed_points(size: int, other_size: int) -> list[Any]:
    return [
        b"",
        bytes(size - 1),
        bytes(size + 1),
        bytes(size),  # compression flag missing
        b"\xff" * size,  # infinity flag with a body
        bytes([0xC0]) + bytes(size - 1),  # identity
        bytes([0x80]) + b"\x11" * (size - 1),  # garbage, most likely off the curve
        bytes([0x9A]) + bytes(size - 1),  # x >= p
        bytes(other_size),
        "c0" + "00" * (size - 1),
        None,
        0,
        [b"\xc0"],
    ]


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_malformed_inputs_return_false(scheme: BlsScheme[Any, Any]) -> None:
    sk = _sk(30)
    pk = scheme.sk_to_pk(sk)
    sig = scheme.sign(sk, b"m")
    pk_size, sig_size = scheme.public_key_size, scheme.signature_size
    bad_pks = _malformed_points(pk_size, sig_size)
    bad_sigs = _malformed_points(sig_size, pk_size)
    # Swapped orientation: a valid point of the other group.
    bad_pks.append(sig)
    bad_sigs.append(pk)
    bad_msgs: list[Any] = ["m", 1, None, [b"m"]]

    for bad in bad_pks:
        assert scheme.key_validate(bad) is False
        assert scheme.verify(bad, b"m", sig) is False
        assert scheme.aggregate_verify([bad], [b"m"], sig) is False
        assert scheme.aggregate_verify([pk, bad], [b"m", b"n"], sig) is False
    for bad in bad_sigs:
        assert scheme.verify(pk, b"m", bad) is False
        assert scheme.aggregate_verify([pk], [b"m"], bad) is False
    for bad in bad_msgs:
        assert scheme.verify(pk, bad, sig) is False
        assert scheme.aggregate_verify([pk], [bad], sig) is False
    for bad_list in (None, pk, b"", "pk", 3, [], {pk: 1}):
        assert scheme.aggregate_verify(bad_list, [b"m"], sig) is False
        assert scheme.aggregate_verify([pk], bad_list, sig) is False
    assert scheme.aggregate_verify([], [], sig) is False
    assert scheme.aggregate_verify([pk], [b"m", b"n"], sig) is False
    assert scheme.aggregate_verify([pk, pk], [b"m"], sig) is False
    assert scheme.key_validate(pk) is True

    if isinstance(scheme, PopScheme):
        proof = scheme.pop_prove(sk)
        for bad in bad_pks:
            assert scheme.pop_verify(bad, proof) is False
            assert scheme.fast_aggregate_verify([bad], b"m", sig) is False
            assert scheme.fast_aggregate_verify([pk, bad], b"m", sig) is False
        for bad in bad_sigs:
            assert scheme.pop_verify(pk, bad) is False
            assert scheme.fast_aggregate_verify([pk], b"m", bad) is False
        for bad in bad_msgs:
            assert scheme.fast_aggregate_verify([pk], bad, sig) is False
        for bad_list in (None, pk, b"", "pk", 3, []):
            assert scheme.fast_aggregate_verify(bad_list, b"m", sig) is False
        assert scheme.pop_verify(pk, proof) is True


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=SCHEME_IDS)
def test_aggregate_refuses_bad_input(scheme: BlsScheme[Any, Any]) -> None:
    sig = scheme.sign(_sk(31), b"m")
    with pytest.raises(ValueError):
        scheme.aggregate([])
    for bad in _malformed_points(scheme.signature_size, scheme.public_key_size):
        if bad == bytes([0xC0]) + bytes(scheme.signature_size - 1):
            continue  # the identity is a valid signature encoding
        with pytest.raises(ValueError):
            scheme.aggregate([sig, bad])
    for bad_list in (None, sig, "sig", 3):
        with pytest.raises(ValueError):
            scheme.aggregate(bad_list)


# --- cross-checks against py-ecc: MinPk ------------------------------------------

PY_MINPK = {
    "MinPkBasic": (MinPkBasic, G2Basic),
    "MinPkAug": (MinPkAug, G2MessageAugmentation),
    "MinPkPop": (MinPkPop, G2ProofOfPossession),
}


@FEW
@given(sk=secret_keys, msg=messages)
def test_min_pk_keys_and_signatures_match_py_ecc(sk: int, msg: bytes) -> None:
    pk = G2Basic.SkToPk(sk)
    for ours, theirs in PY_MINPK.values():
        assert ours.sk_to_pk(sk) == pk
        assert ours.sign(sk, msg) == theirs.Sign(sk, msg)
    assert MinPkPop.pop_prove(sk) == G2ProofOfPossession.PopProve(sk)


@FEW
@given(sks=st.lists(secret_keys, min_size=1, max_size=4), msg=messages)
def test_min_pk_aggregate_matches_py_ecc(sks: list[int], msg: bytes) -> None:
    sigs = [MinPkBasic.sign(k, msg + bytes([i])) for i, k in enumerate(sks)]
    assert MinPkBasic.aggregate(sigs) == G2Basic.Aggregate(sigs)


@pytest.mark.parametrize("name", list(PY_MINPK))
def test_min_pk_verify_agrees_with_py_ecc(name: str) -> None:
    ours, theirs = PY_MINPK[name]
    sk = _sk(40)
    pk = ours.sk_to_pk(sk)
    sig = theirs.Sign(sk, b"cross-check")
    for msg, expected in ((b"cross-check", True), (b"cross-chock", False)):
        assert ours.verify(pk, msg, sig) is expected
        assert theirs.Verify(pk, msg, sig) is expected


@pytest.mark.parametrize("name", list(PY_MINPK))
def test_min_pk_aggregate_verify_agrees_with_py_ecc(name: str) -> None:
    ours, theirs = PY_MINPK[name]
    sks = [_sk(41), _sk(42)]
    pks = [ours.sk_to_pk(k) for k in sks]
    msgs = [b"first", b"second"]
    agg = ours.aggregate([ours.sign(k, m) for k, m in zip(sks, msgs, strict=True)])
    assert ours.aggregate_verify(pks, msgs, agg) is True
    assert theirs.AggregateVerify(pks, msgs, agg) is True
    swapped = msgs[::-1]
    assert ours.aggregate_verify(pks, swapped, agg) is False
    assert theirs.AggregateVerify(pks, swapped, agg) is False
    # Repeated messages: the basic scheme refuses before any pairing.
    same = ours.aggregate([ours.sign(k, b"x") for k in sks])
    expected = name != "MinPkBasic"
    assert ours.aggregate_verify(pks, [b"x", b"x"], same) is expected
    if not expected:
        assert theirs.AggregateVerify(pks, [b"x", b"x"], same) is False


def test_min_pk_pop_and_fast_aggregate_verify_agree_with_py_ecc() -> None:
    sks = [_sk(43), _sk(44), _sk(45)]
    pks = [MinPkPop.sk_to_pk(k) for k in sks]
    proof = MinPkPop.pop_prove(sks[0])
    assert MinPkPop.pop_verify(pks[0], proof) is True
    assert G2ProofOfPossession.PopVerify(pks[0], proof) is True
    assert MinPkPop.pop_verify(pks[1], proof) is False
    assert G2ProofOfPossession.PopVerify(pks[1], proof) is False
    agg = G2ProofOfPossession.Aggregate([G2ProofOfPossession.Sign(k, b"block") for k in sks])
    assert MinPkPop.aggregate([MinPkPop.sign(k, b"block") for k in sks]) == agg
    assert MinPkPop.fast_aggregate_verify(pks, b"block", agg) is True
    assert G2ProofOfPossession.FastAggregateVerify(pks, b"block", agg) is True
    assert MinPkPop.fast_aggregate_verify(pks[:2], b"block", agg) is False
    assert G2ProofOfPossession.FastAggregateVerify(pks[:2], b"block", agg) is False


def test_min_pk_aug_matches_chia() -> None:
    """chia_rs' ``AugSchemeMPL`` is the MinPk message-augmentation suite."""
    sks = [chia_rs.AugSchemeMPL.key_gen(bytes([i]) * 32) for i in range(1, 4)]
    ints = [int.from_bytes(bytes(k), "big") for k in sks]
    msgs = [b"a", b"b", b"a"]
    chia_sigs = [chia_rs.AugSchemeMPL.sign(k, m) for k, m in zip(sks, msgs, strict=True)]
    for k, i, m, s in zip(sks, ints, msgs, chia_sigs, strict=True):
        assert MinPkAug.sk_to_pk(i) == bytes(k.get_g1())
        assert MinPkAug.sign(i, m) == bytes(s)
    agg = bytes(chia_rs.AugSchemeMPL.aggregate(chia_sigs))
    assert MinPkAug.aggregate([bytes(s) for s in chia_sigs]) == agg
    assert MinPkAug.aggregate_verify([bytes(k.get_g1()) for k in sks], msgs, agg)


# --- cross-checks against py-ecc: MinSig -----------------------------------------


def _py_g2_pk(sk: int) -> tuple[Any, bytes]:
    point = py_multiply(PY_G2, sk)
    z1, z2 = compress_G2(point)
    return point, z1.to_bytes(48, "big") + z2.to_bytes(48, "big")


def _py_g1_sign(sk: int, msg: bytes, dst: bytes) -> bytes:
    return compress_G1(py_multiply(hash_to_G1(msg, dst, hashlib.sha256), sk)).to_bytes(48, "big")


@SOME
@given(sk=secret_keys, msg=messages)
def test_min_sig_keys_and_signatures_match_py_ecc(sk: int, msg: bytes) -> None:
    _, pk = _py_g2_pk(sk)
    for scheme in (MinSigBasic, MinSigAug, MinSigPop):
        assert scheme.sk_to_pk(sk) == pk
    assert MinSigBasic.sign(sk, msg) == _py_g1_sign(sk, msg, bls.DST_MINSIG_SIG_BASIC)
    assert MinSigAug.sign(sk, msg) == _py_g1_sign(sk, pk + msg, bls.DST_MINSIG_SIG_AUG)
    assert MinSigPop.sign(sk, msg) == _py_g1_sign(sk, msg, bls.DST_MINSIG_SIG_POP)
    assert MinSigPop.pop_prove(sk) == _py_g1_sign(sk, pk, bls.DST_MINSIG_POP_PROOF)


@FEW
@given(sks=st.lists(secret_keys, min_size=1, max_size=4), msg=messages)
def test_min_sig_aggregate_matches_py_ecc(sks: list[int], msg: bytes) -> None:
    sigs = [MinSigBasic.sign(k, msg + bytes([i])) for i, k in enumerate(sks)]
    total = decompress_G1(int.from_bytes(sigs[0], "big"))
    for s in sigs[1:]:
        total = py_add(total, decompress_G1(int.from_bytes(s, "big")))
    assert MinSigBasic.aggregate(sigs) == compress_G1(total).to_bytes(48, "big")


def test_min_sig_pairing_equation_in_py_ecc() -> None:
    """``e(σ, P2) == e(H(m), PK)`` computed by py-ecc for signatures made by ``mpc.bls``."""
    sk = _sk(50)
    pk_point, pk = _py_g2_pk(sk)
    assert MinSigBasic.sk_to_pk(sk) == pk
    sig = MinSigBasic.sign(sk, b"beacon")
    sig_point = decompress_G1(int.from_bytes(sig, "big"))
    h = hash_to_G1(b"beacon", bls.DST_MINSIG_SIG_BASIC, hashlib.sha256)
    # py-ecc's pairing takes (G2 point, G1 point).
    assert py_pairing(PY_G2, sig_point) == py_pairing(pk_point, h)
    assert MinSigBasic.verify(pk, b"beacon", sig)
    assert not MinSigBasic.verify(pk, b"beacon?", sig)


def test_min_sig_aggregate_pairing_equation_in_py_ecc() -> None:
    """``e(σ_agg, P2) == e(H(PK_1 || m_1), PK_1) · e(H(PK_2 || m_2), PK_2)`` for MinSigAug."""
    sks = [_sk(51), _sk(52)]
    keys = [_py_g2_pk(k) for k in sks]
    msgs = [b"one", b"two"]
    agg = MinSigAug.aggregate([MinSigAug.sign(k, m) for k, m in zip(sks, msgs, strict=True)])
    lhs = py_pairing(PY_G2, decompress_G1(int.from_bytes(agg, "big")))
    rhs = py_pairing(
        keys[0][0], hash_to_G1(keys[0][1] + msgs[0], bls.DST_MINSIG_SIG_AUG, hashlib.sha256)
    ) * py_pairing(
        keys[1][0], hash_to_G1(keys[1][1] + msgs[1], bls.DST_MINSIG_SIG_AUG, hashlib.sha256)
    )
    assert lhs == rhs
    pks = [k[1] for k in keys]
    assert MinSigAug.aggregate_verify(pks, msgs, agg)
    assert not MinSigAug.aggregate_verify(pks, msgs[::-1], agg)


def test_min_pk_public_key_decodes_in_py_ecc() -> None:
    sk = _sk(53)
    pk = MinPkPop.sk_to_pk(sk)
    assert py_normalize(pubkey_to_G1(pk)) == py_normalize(pubkey_to_G1(G2Basic.SkToPk(sk)))
