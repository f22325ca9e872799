"""The EIP-2537 model of link-1 verification, evaluated by an independent implementation.

A toy 3-of-4 committee certifies a real app root key with ``mpc.appcert``; the
precompile calls ``kms.dstack.eip2537`` prepares are then run by a small evaluator of
the precompiles' semantics built on py-ecc (a development dependency, used here only):
``BLS12_MAP_FP_TO_G1`` and ``BLS12_G1ADD`` on the hashed message, then
``BLS12_PAIRING_CHECK`` on the 768-byte input. The evaluator itself is pinned to
EIP-2537's own test vectors (``assets/eip-2537``).
"""

from __future__ import annotations

import hashlib

import pytest
from dstack_committee import committee
from py_ecc.bls.hash_to_curve import clear_cofactor_G1, hash_to_field_FQ, map_to_curve_G1
from py_ecc.bls.point_compression import decompress_G1, decompress_G2
from py_ecc.fields import optimized_bls12_381_FQ as FQ
from py_ecc.fields import optimized_bls12_381_FQ2 as FQ2
from py_ecc.fields import optimized_bls12_381_FQ12 as FQ12
from py_ecc.optimized_bls12_381 import (
    Z1,
    Z2,
    add,
    b,
    b2,
    curve_order,
    final_exponentiate,
    is_inf,
    is_on_curve,
    multiply,
    normalize,
)
from py_ecc.optimized_bls12_381.optimized_pairing import miller_loop

from kms.dstack import eip2537, keys
from mpc import appcert
from mpc.math import G1, G2, hash_to_g1
from mpc.math.hash_to_curve import expand_message_xmd

C = committee(n=4, t=3, seed=11)
APP = bytes.fromhex("5a" * 20)
ROOT_PUB = keys.root_public(keys.app_root_from_sigma(bytes(G1.generator().to_bytes()), b"id"))
LINK1, _ = C.certify(APP, ROOT_PUB, 1, 1)
MPK = C.mpk.to_bytes()

# EIP-2537 assets/eip-2537/map_fp_to_G1_bls.json, "bls_g1map_616263".
MAP_VECTOR_IN = (
    "00000000000000000000000000000000147e1ed29f06e4c5079b9d14fc89d2820d32419b990c1c7bb7dbea2a36"
    "a045124b31ffbde7c99329c05c559af1c6cc82"
)
MAP_VECTOR_OUT = (
    "00000000000000000000000000000000009769f3ab59bfd551d53a5f846b9984c59b97d6842b20a2c565baa167"
    "945e3d026a3755b6345df8ec7e6acb6868ae6d000000000000000000000000000000001532c00cf61aa3d0ce3e"
    "5aa20c3b531a2abd2c770a790a2613818303c6b830ffc0ecf6c357af3317b9575c567f11cd2c"
)
# -G2 as EIP-2537's pairing_check_bls.json "bls_pairing_e(G1,G2)*e(G1,-G2)=1" encodes it.
NEG_G2_VECTOR = (
    "00000000000000000000000000000000024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02b4510b647a"
    "e3d1770bac0326a805bbefd48056c8c121bdb80000000000000000000000000000000013e02b6052719f607dac"
    "d3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf11213945d57e5ac7d055d042b7e00000000000000"
    "0000000000000000000d1b3cc2c7027888be51d9ef691d77bcb679afda66c73f17f9ee3837a55024f78c71363275"
    "a75d75d86bab79f74782aa0000000000000000000000000000000013fa4d4a0ad8b1ce186ed5061789213d993923"
    "066dddaf1040bc3ff59f825c78df74f2d75467e25e0f55f8a00fa030ed"
)


class PrecompileError(Exception):
    """The precompile would fail (and burn the call's gas)."""


# --- an evaluator of the precompiles (py-ecc) -------------------------------------


def _fp(data: bytes) -> int:
    if len(data) != 64 or any(data[:16]):
        raise PrecompileError("Fp is 64 bytes, the top 16 zero")
    x = int.from_bytes(data, "big")
    if x >= eip2537.P:
        raise PrecompileError("Fp element not reduced")
    return x


def _g1(data: bytes):  # type: ignore[no-untyped-def]
    if len(data) != 128:
        raise PrecompileError("G1 is 128 bytes")
    if not any(data):
        return Z1
    pt = (FQ(_fp(data[:64])), FQ(_fp(data[64:]))), FQ.one()
    pt = (pt[0][0], pt[0][1], pt[1])
    if not is_on_curve(pt, b):
        raise PrecompileError("G1 point not on the curve")
    return pt


def _g2(data: bytes):  # type: ignore[no-untyped-def]
    if len(data) != 256:
        raise PrecompileError("G2 is 256 bytes")
    if not any(data):
        return Z2
    x = FQ2([_fp(data[:64]), _fp(data[64:128])])
    y = FQ2([_fp(data[128:192]), _fp(data[192:])])
    pt = (x, y, FQ2.one())
    if not is_on_curve(pt, b2):
        raise PrecompileError("G2 point not on the curve")
    return pt


def _enc_g1(pt) -> bytes:  # type: ignore[no-untyped-def]
    if is_inf(pt):
        return bytes(128)
    x, y = normalize(pt)
    return int(x).to_bytes(64, "big") + int(y).to_bytes(64, "big")


def run_map_fp_to_g1(data: bytes) -> bytes:
    return _enc_g1(clear_cofactor_G1(map_to_curve_G1(FQ(_fp(data)))))


def run_g1add(data: bytes) -> bytes:
    if len(data) != 256:
        raise PrecompileError("G1ADD takes 256 bytes")
    return _enc_g1(add(_g1(data[:128]), _g1(data[128:])))


def run_pairing_check(data: bytes) -> bytes:
    if not data or len(data) % 384:
        raise PrecompileError("PAIRING_CHECK takes 384·k bytes, k ≥ 1")
    f = FQ12.one()
    for k in range(0, len(data), 384):
        p, q = _g1(data[k : k + 128]), _g2(data[k + 128 : k + 384])
        if not is_inf(multiply(p, curve_order)) or not is_inf(multiply(q, curve_order)):
            raise PrecompileError("point outside the prime-order subgroup")
        if not is_inf(p) and not is_inf(q):
            f = f * miller_loop(q, p, final_exponentiate=False)
    return bytes(31) + (b"\x01" if final_exponentiate(f) == FQ12.one() else b"\x00")


def contract_verifies(mpk: bytes, app_id: bytes, root_public: bytes, signature: bytes) -> bool:
    """What the contract does: hash the link message with two MAP_FP_TO_G1 and a
    G1ADD, check that the model's H(m) matches, then PAIRING_CHECK."""
    message = appcert.link_message(app_id, root_public)
    u0, u1 = eip2537.map_fp_to_g1_inputs(message)
    h = run_g1add(run_map_fp_to_g1(u0) + run_map_fp_to_g1(u1))
    data = eip2537.link_pairing_input(mpk, app_id, root_public, signature)
    assert len(data) == 2 * eip2537.PAIR_SIZE
    assert data[eip2537.PAIR_SIZE : eip2537.PAIR_SIZE + 128] == h
    return run_pairing_check(data)[-1] == 1


# --- the evaluator is the EIP's ------------------------------------------------------


def test_evaluator_reproduces_eip_vectors() -> None:
    assert run_map_fp_to_g1(bytes.fromhex(MAP_VECTOR_IN)).hex() == MAP_VECTOR_OUT
    g1, g2 = eip2537.encode_g1(G1.generator()), eip2537.encode_g2(G2.generator())
    assert eip2537.NEG_G2.hex() == NEG_G2_VECTOR
    assert run_pairing_check(g1 + g2 + g1 + eip2537.NEG_G2)[-1] == 1
    with pytest.raises(PrecompileError):
        run_map_fp_to_g1(b"\x01" + bytes.fromhex(MAP_VECTOR_IN)[1:])


# --- encodings and the hash steps ----------------------------------------------------


def test_point_encodings_match_py_ecc_decompression() -> None:
    for k in (1, 2, 12345, curve_order - 1):
        p1 = (G1.generator() * k).to_bytes()
        x, y = normalize(decompress_G1(int.from_bytes(p1, "big")))  # type: ignore[arg-type]
        assert eip2537.encode_g1(p1) == int(x).to_bytes(64, "big") + int(y).to_bytes(64, "big")
        p2 = (G2.generator() * k).to_bytes()
        z = int.from_bytes(p2[:48], "big"), int.from_bytes(p2[48:], "big")
        x2, y2 = normalize(decompress_G2(z))  # type: ignore[arg-type]
        want = b"".join(int(c).to_bytes(64, "big") for c in (*x2.coeffs, *y2.coeffs))
        assert eip2537.encode_g2(p2) == want
    assert eip2537.encode_g1(G1.identity()) == bytes(128)
    assert eip2537.encode_g2(G2.identity()) == bytes(256)


def test_hash_steps_equal_rfc9380() -> None:
    message = appcert.link_message(APP, ROOT_PUB)
    dst = appcert.DST_APPCERT
    assert eip2537.expand_message_xmd(message, dst, 128) == expand_message_xmd(message, dst, 128)
    u = hash_to_field_FQ(message, 2, dst, hashlib.sha256)
    assert eip2537.hash_to_field(message) == (int(u[0]), int(u[1]))
    u0, u1 = eip2537.map_fp_to_g1_inputs(message)
    h = run_g1add(run_map_fp_to_g1(u0) + run_map_fp_to_g1(u1))
    assert h == eip2537.hashed_message(message) == eip2537.encode_g1(hash_to_g1(message, dst))


# --- a real certificate ----------------------------------------------------------------


def test_a_real_certificate_verifies_through_the_precompiles() -> None:
    assert contract_verifies(MPK, APP, ROOT_PUB, LINK1)


def test_wrong_app_id_or_key_is_rejected() -> None:
    assert not contract_verifies(MPK, bytes.fromhex("5b" + "5a" * 19), ROOT_PUB, LINK1)
    other = keys.root_public(bytes.fromhex("22" * 32))
    assert not contract_verifies(MPK, APP, other, LINK1)


def test_flipped_bits_are_rejected() -> None:
    good = eip2537.link_pairing_input(MPK, APP, ROOT_PUB, LINK1)
    # a bit of y of σ: the point leaves the curve; a bit of H(m): likewise.
    for offset in (127, eip2537.PAIR_SIZE + 100):
        bad = bytearray(good)
        bad[offset] ^= 1
        with pytest.raises(PrecompileError):
            run_pairing_check(bytes(bad))
    # a bit of the link message: a different, valid H(m); the check answers 0.
    message = bytearray(appcert.link_message(APP, ROOT_PUB))
    message[-1] ^= 1
    data = eip2537.pairing_input(MPK, bytes(message), LINK1)
    assert run_pairing_check(data) == bytes(32)


def test_identity_signature_or_mpk_is_refused_before_the_call() -> None:
    with pytest.raises(ValueError):
        eip2537.link_pairing_input(MPK, APP, ROOT_PUB, G1.identity().to_bytes())
    with pytest.raises(ValueError):
        eip2537.link_pairing_input(G2.identity().to_bytes(), APP, ROOT_PUB, LINK1)
    # what the precompile itself would say to an identity σ with an identity H: 1
    ones = bytes(128) + eip2537.NEG_G2
    assert run_pairing_check(ones)[-1] == 1


def test_fp2_square_roots() -> None:
    """Both branches of the p ≡ 3 (mod 4) square root, and a non-square."""
    p = eip2537.P
    assert eip2537._sqrt_fp2((p - 1, 0)) in ((0, 1), (0, p - 1))  # √-1 = ±v
    assert eip2537._sqrt_fp2((p - 5, 0)) is not None  # -5 ∈ Fp: a square in Fp2
    for r in ((3, 7), (p - 2, 11), (12345, 0), (0, 99)):
        a = eip2537._mul2(r, r)
        root = eip2537._sqrt_fp2(a)
        assert root is not None and eip2537._mul2(root, root) == a
    assert eip2537._sqrt_fp2((1, 1)) is None  # norm 2, not a square mod p (p ≡ 3 mod 8)
