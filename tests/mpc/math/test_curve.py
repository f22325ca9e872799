"""G1/G2 points: py-ecc cross-checks, decoding edge cases and the group laws.

Points can be held by blst (results of ``+``/``*``/``from_bytes``), by arkworks
(results of ``msm``) or only as bytes (``generator()``/``identity()``); the
laws are checked with operands drawn from every representation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc.bls.g2_primitives import pubkey_to_G1, signature_to_G2
from py_ecc.bls.point_compression import modular_squareroot_in_FQ2
from py_ecc.optimized_bls12_381 import FQ, FQ2, b, b2, eq, is_inf, is_on_curve, multiply

from mpc.errors import InvalidEncoding
from mpc.math import G1, G2, P, R

ETH = Path(__file__).resolve().parents[2] / "vectors" / "ethereum-bls12-381-tests-v0.1.1"
GROUPS = [G1, G2]
GROUP_IDS = ["G1", "G2"]

SPECIAL_SCALARS = [
    0,
    1,
    -1,
    2,
    R - 1,
    R,
    R + 1,
    -R,
    -(R - 1),
    -(R + 1),
    2 * R,
    2 * R + 3,
    (R - 1) // 2,
    2**255,
    2**256 - 1,
    2**1000 + 7,
    -(2**700) - 5,
]
ANY_SCALAR = st.one_of(
    st.sampled_from(SPECIAL_SCALARS),
    st.integers(min_value=-(2**600), max_value=2**600),
    st.integers(min_value=-(2**64), max_value=2**64),
)
FIELD_SCALAR = st.integers(min_value=0, max_value=R - 1)
REPS = ["blst", "ark", "bytes"]

PYECC = settings(max_examples=25, deadline=None, database=None)
LAWS = settings(max_examples=200, deadline=None, database=None)


# --- representations ----------------------------------------------------------


def as_rep(pt, rep: str):
    """The same point held by the given backend (``bytes``: only the encoding)."""
    cls = type(pt)
    if rep == "blst":
        out = pt * 1
        assert out._e is not None
    elif rep == "ark":
        out = cls.msm([pt], [1])
        assert out._e is None and out._a is not None
    else:
        out = cls._wrap(b=pt.to_bytes())
        assert out._e is None and out._a is None
    return out


def point_strategy(cls, scalars=FIELD_SCALAR):
    return st.builds(
        lambda k, rep: as_rep(k * cls.generator(), rep), scalars, st.sampled_from(REPS)
    )


def ref_mul(ref, cls, k):
    return ref.g1_mul(k) if cls is G1 else ref.g2_mul(k)


def ref_bytes(ref, cls, pt) -> bytes:
    return ref.g1_bytes(pt) if cls is G1 else ref.g2_bytes(pt)


# --- py-ecc cross-checks --------------------------------------------------------


def test_generators_match_pyecc(ref) -> None:
    assert G1.generator().to_bytes() == ref.g1_bytes(ref.g1_mul(1))
    assert G2.generator().to_bytes() == ref.g2_bytes(ref.g2_mul(1))
    assert G1.identity().to_bytes() == ref.g1_bytes(ref.g1_mul(0)) == bytes([0xC0]) + bytes(47)
    assert G2.identity().to_bytes() == ref.g2_bytes(ref.g2_mul(0)) == bytes([0xC0]) + bytes(95)


@pytest.mark.parametrize("k", SPECIAL_SCALARS, ids=lambda k: f"{k:#x}"[:12])
@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_special_scalars_match_pyecc(ref, cls, k: int) -> None:
    expected = ref_bytes(ref, cls, ref_mul(ref, cls, k))
    g = cls.generator()
    assert (k * g).to_bytes() == expected
    assert (g * k).to_bytes() == expected
    assert cls.msm([g], [k]).to_bytes() == expected


def _check_mul_and_codec(ref, cls, k: int) -> None:
    expected_pt = ref_mul(ref, cls, k)
    expected = ref_bytes(ref, cls, expected_pt)
    ours = k * cls.generator()
    # encoding: ours vs py-ecc's compression
    assert ours.to_bytes() == expected
    # our decoder on py-ecc's bytes
    assert cls.from_bytes(expected) == ours
    # py-ecc's decoder on our bytes
    decoded = (pubkey_to_G1 if cls is G1 else signature_to_G2)(ours.to_bytes())
    assert eq(decoded, expected_pt)


@PYECC
@given(k=ANY_SCALAR)
def test_g1_mul_and_encoding_match_pyecc(ref, k: int) -> None:
    _check_mul_and_codec(ref, G1, k)


@PYECC
@given(k=ANY_SCALAR)
def test_g2_mul_and_encoding_match_pyecc(ref, k: int) -> None:
    _check_mul_and_codec(ref, G2, k)


@settings(max_examples=10, deadline=None, database=None)
@given(k=FIELD_SCALAR, m=ANY_SCALAR)
def test_mul_of_non_generator_matches_pyecc(ref, k: int, m: int) -> None:
    for cls in GROUPS:
        base = ref_mul(ref, cls, k)
        expected = ref_bytes(ref, cls, multiply(base, m % R))
        assert (m * (k * cls.generator())).to_bytes() == expected


_MSM_TERMS = st.lists(st.tuples(FIELD_SCALAR, ANY_SCALAR), max_size=4)


def _check_msm(ref, cls, terms) -> None:
    points = [k * cls.generator() for k, _ in terms]
    scalars = [s for _, s in terms]
    ref_points = [ref_mul(ref, cls, k) for k, _ in terms]
    ref_sum = (ref.g1_msm if cls is G1 else ref.g2_msm)(ref_points, scalars)
    got = cls.msm(points, scalars)
    assert got.to_bytes() == ref_bytes(ref, cls, ref_sum)
    # ... and equal to the constant-time blst route.
    acc = cls.identity()
    for pt, s in zip(points, scalars, strict=True):
        acc = acc + s * pt
    assert got == acc


@PYECC
@given(terms=_MSM_TERMS)
def test_g1_msm_matches_pyecc(ref, terms) -> None:
    _check_msm(ref, G1, terms)


@settings(max_examples=8, deadline=None, database=None)
@given(terms=_MSM_TERMS)
def test_g2_msm_matches_pyecc(ref, terms) -> None:
    _check_msm(ref, G2, terms)


# --- decoding: the Ethereum deserialisation vectors ----------------------------


def _eth_cases():
    for cls, name in ((G1, "G1"), (G2, "G2")):
        for path in sorted((ETH / f"deserialization_{name}").glob("*.json")):
            yield pytest.param(cls, path, id=f"{name}-{path.stem}")


def test_eth_vectors_present() -> None:
    assert len(list(_eth_cases())) == 13 + 15


@pytest.mark.parametrize(("cls", "path"), list(_eth_cases()))
def test_eth_deserialization_vectors(cls, path: Path) -> None:
    case = json.loads(path.read_text())
    (hex_input,) = case["input"].values()
    assert not hex_input.startswith("0x")
    data = bytes.fromhex(hex_input)
    if case["output"]:
        pt = cls.from_bytes(data)
        assert pt.to_bytes() == data
        assert pt.is_identity() == ("infinity" in path.stem)
    else:
        with pytest.raises(InvalidEncoding):
            cls.from_bytes(data)


# --- decoding: synthesised edge cases ---------------------------------------------


def test_invalid_encoding_is_a_value_error() -> None:
    assert issubclass(InvalidEncoding, ValueError)
    with pytest.raises(ValueError):  # the subclass relation is the point
        G1.from_bytes(b"")


@pytest.mark.parametrize(
    ("cls", "n"),
    [(G1, n) for n in (0, 1, 47, 49, 95, 96, 97)] + [(G2, n) for n in (0, 1, 48, 95, 97, 192)],
)
def test_wrong_lengths(cls, n: int) -> None:
    gen = (7 * cls.generator()).to_bytes()
    for data in (bytes(n), (gen * 3)[:n], bytes([0xC0]) + bytes(max(n - 1, 0))):
        with pytest.raises(InvalidEncoding):
            cls.from_bytes(data[:n])


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
@pytest.mark.parametrize("bad", [None, "", "c0" + "00" * 47, 0, 123, 1.5, [0xC0] + [0] * 95, ()])
def test_non_bytes_input(cls, bad) -> None:
    with pytest.raises(InvalidEncoding):
        cls.from_bytes(bad)


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_bytes_like_inputs_are_accepted(cls) -> None:
    pt = 5 * cls.generator()
    data = pt.to_bytes()
    assert cls.from_bytes(bytearray(data)) == pt
    assert cls.from_bytes(memoryview(data)) == pt
    assert isinstance(cls.from_bytes(bytearray(data)).to_bytes(), bytes)


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_flag_bits(cls) -> None:
    pt = 11 * cls.generator()
    data = pt.to_bytes()
    assert data[0] & 0x80
    # compression flag cleared
    with pytest.raises(InvalidEncoding):
        cls.from_bytes(bytes([data[0] & 0x7F]) + data[1:])
    # infinity flag set on a non-infinity point
    with pytest.raises(InvalidEncoding):
        cls.from_bytes(bytes([data[0] | 0x40]) + data[1:])
    # flipping the sign flag gives the negated point
    flipped = cls.from_bytes(bytes([data[0] ^ 0x20]) + data[1:])
    assert flipped == -pt
    assert flipped != pt


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_infinity_encodings(cls) -> None:
    n = cls.SIZE
    canonical = bytes([0xC0]) + bytes(n - 1)
    assert cls.from_bytes(canonical) == cls.identity()
    assert cls.from_bytes(canonical).is_identity()
    bad = [
        bytes([0xE0]) + bytes(n - 1),  # infinity with sign flag
        bytes([0x40]) + bytes(n - 1),  # infinity without compression flag
        bytes([0x60]) + bytes(n - 1),
        bytes(n),  # all zero: compression flag missing
    ]
    bad += [bytes([0xC0 | low]) + bytes(n - 1) for low in range(1, 0x20)]
    for pos in range(1, n):
        for value in (0x01, 0x80, 0xFF):
            body = bytearray(canonical)
            body[pos] = value
            bad.append(bytes(body))
    for data in bad:
        with pytest.raises(InvalidEncoding):
            cls.from_bytes(data)


def _set_x_g1(x: int, sign: bool = False) -> bytes:
    out = bytearray(x.to_bytes(48, "big"))
    assert out[0] & 0xE0 == 0
    out[0] |= 0x80 | (0x20 if sign else 0)
    return bytes(out)


def _set_x_g2(c0: int, c1: int, sign: bool = False) -> bytes:
    return _set_x_g1(c1, sign) + c0.to_bytes(48, "big")


@pytest.mark.parametrize("sign", [False, True])
@pytest.mark.parametrize("x", [P, P + 1, P + 2, 2**381 - 1], ids=["p", "p+1", "p+2", "2^381-1"])
def test_g1_x_out_of_range(x: int, sign: bool) -> None:
    with pytest.raises(InvalidEncoding):
        G1.from_bytes(_set_x_g1(x, sign))


@pytest.mark.parametrize("sign", [False, True])
@pytest.mark.parametrize("bad", [P, P + 1, 2**381 - 1], ids=["p", "p+1", "2^381-1"])
@pytest.mark.parametrize("other", [0, 1, 4])
def test_g2_x_out_of_range(bad: int, other: int, sign: bool) -> None:
    with pytest.raises(InvalidEncoding):
        G2.from_bytes(_set_x_g2(bad, other, sign))  # x.c0 ≥ p
    with pytest.raises(InvalidEncoding):
        G2.from_bytes(_set_x_g2(other, bad, sign))  # x.c1 ≥ p
    with pytest.raises(InvalidEncoding):
        G2.from_bytes(_set_x_g2(bad, bad, sign))


def test_g2_c0_half_with_high_bits_set() -> None:
    pt = (3 * G2.generator()).to_bytes()
    for top in (0x20, 0x40, 0x80, 0xE0):
        data = bytearray(pt)
        data[48] |= top
        with pytest.raises(InvalidEncoding):
            G2.from_bytes(bytes(data))


def _points_with_small_coordinate(cls, limit: int, count: int):
    """Subgroup points whose x (G1) / x.c0 and x.c1 (G2) are < ``limit``."""
    out = []
    k = 2
    while len(out) < count:
        pt = k * cls.generator()
        data = pt.to_bytes()
        halves = [int.from_bytes(bytes([data[0] & 0x1F]) + data[1:48], "big")]
        if cls is G2:
            halves.append(int.from_bytes(data[48:], "big"))
        if all(h < limit for h in halves):
            out.append(pt)
        k += 1
    return out


def test_g1_x_plus_p_of_a_valid_point_is_refused() -> None:
    """x + p reduces to a valid x: only the range check can catch it."""
    (pt,) = _points_with_small_coordinate(G1, 2**381 - P, 1)
    data = pt.to_bytes()
    x = int.from_bytes(bytes([data[0] & 0x1F]) + data[1:], "big")
    alias = _set_x_g1(x + P, bool(data[0] & 0x20))
    assert G1.from_bytes(_set_x_g1(x, bool(data[0] & 0x20))) == pt
    with pytest.raises(InvalidEncoding):
        G1.from_bytes(alias)


def test_g2_x_plus_p_of_a_valid_point_is_refused() -> None:
    (pt,) = _points_with_small_coordinate(G2, 2**381 - P, 1)
    data = pt.to_bytes()
    sign = bool(data[0] & 0x20)
    c1 = int.from_bytes(bytes([data[0] & 0x1F]) + data[1:48], "big")
    c0 = int.from_bytes(data[48:], "big")
    assert G2.from_bytes(_set_x_g2(c0, c1, sign)) == pt
    for alias in (_set_x_g2(c0 + P, c1, sign), _set_x_g2(c0, c1 + P, sign)):
        with pytest.raises(InvalidEncoding):
            G2.from_bytes(alias)


def _g1_off_subgroup(ref):
    """The first x ≥ 1 giving a point on E(Fp) (y² = x³ + 4) outside G1, encoded."""
    x = 1
    while True:
        rhs = (x**3 + 4) % P
        y = pow(rhs, (P + 1) // 4, P)
        if y * y % P == rhs:
            pt = (FQ(x), FQ(y), FQ(1))
            assert is_on_curve(pt, b)
            if not is_inf(multiply(pt, R)):
                return ref.encode_g1_affine(x, y), ref.encode_g1_affine(x, P - y)
        x += 1


def _g2_off_subgroup(ref):
    """The first x = (k, 1) giving a point on E'(Fp2) (y² = x³ + 4(1 + u)) outside G2."""
    k = 0
    while True:
        x = FQ2([k, 1])
        y = modular_squareroot_in_FQ2(x**3 + b2)
        if y is not None:
            pt = (x, y, FQ2.one())
            assert is_on_curve(pt, b2)
            if not is_inf(multiply(pt, R)):
                xs = tuple(int(c) for c in x.coeffs)
                return tuple(
                    ref.encode_g2_affine(xs, tuple(int(c) for c in yy.coeffs)) for yy in (y, -y)
                )
        k += 1


def test_on_curve_but_not_in_subgroup(ref) -> None:
    for data in _g1_off_subgroup(ref):
        with pytest.raises(InvalidEncoding, match="subgroup"):
            G1.from_bytes(data)
    for data in _g2_off_subgroup(ref):
        with pytest.raises(InvalidEncoding, match="subgroup"):
            G2.from_bytes(data)


def test_not_on_curve() -> None:
    x = next(x for x in range(1, 100) if pow((x**3 + 4) % P, (P - 1) // 2, P) == P - 1)
    with pytest.raises(InvalidEncoding, match="not on the curve"):
        G1.from_bytes(_set_x_g1(x))
    k = next(k for k in range(100) if modular_squareroot_in_FQ2(FQ2([k, 1]) ** 3 + b2) is None)
    with pytest.raises(InvalidEncoding, match="not on the curve"):
        G2.from_bytes(_set_x_g2(k, 1))


@PYECC
@given(data=st.binary(min_size=48, max_size=48))
def test_random_g1_bytes_agree_with_pyecc(data: bytes) -> None:
    """Any 48 bytes: we accept iff py-ecc decodes a point of the subgroup."""
    from py_ecc.bls.g2_primitives import subgroup_check

    data = bytes([data[0] | 0x80]) + data[1:]
    try:
        ref_ok = subgroup_check(pubkey_to_G1(data))
    except ValueError:
        ref_ok = False
    try:
        ok = G1.from_bytes(data).to_bytes() == data
    except InvalidEncoding:
        ok = False
    assert ok == ref_ok


# --- API misuse -----------------------------------------------------------------


def test_points_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError):
        G1()
    with pytest.raises(TypeError):
        G2()


def test_groups_do_not_mix() -> None:
    g1, g2 = G1.generator(), G2.generator()
    assert g1 != g2
    assert (g1 == g2) is False
    with pytest.raises(TypeError):
        g1 + g2  # type: ignore[operator]
    with pytest.raises(TypeError):
        g2 - g1  # type: ignore[operator]
    with pytest.raises(TypeError):
        g1 + g1.to_bytes()  # type: ignore[operator]


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_non_integer_scalars_are_refused(cls) -> None:
    g = cls.generator()
    for bad in (1.0, "2", None, True, b"\x01"):
        with pytest.raises(TypeError):
            g * bad  # type: ignore[operator]
        with pytest.raises(TypeError):
            bad * g  # type: ignore[operator]


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_msm_edge_cases(cls) -> None:
    g = cls.generator()
    assert cls.msm([], []).is_identity()
    with pytest.raises(ValueError, match="as many"):
        cls.msm([g, g], [1])
    with pytest.raises(ValueError, match="as many"):
        cls.msm([g], [])
    assert cls.msm([g, g], [0, R]).is_identity()
    assert cls.msm([cls.identity(), g], [5, 3]) == 3 * g
    assert cls.msm([g, -g], [7, 7]).is_identity()
    assert cls.msm([g], [-1]) == -g


@settings(max_examples=25, deadline=None, database=None)
@given(
    ks=st.lists(st.integers(0, R - 1), min_size=1, max_size=12),
    x=st.one_of(st.integers(0, 300), st.integers(-5, -1), st.integers(R - 3, 2**300)),
    group=st.sampled_from(GROUPS),
)
def test_evaluate_is_the_sum_of_powers(ks: list[int], x: int, group) -> None:
    """Horner's rule gives Σ C_k·x^k: the same point as the multi-exponentiation by the
    powers and as the constant-time route, for small, negative and out-of-range x."""
    g = group.generator()
    coefficients = [k * g for k in ks]
    powers = [pow(x, k, R) for k in range(len(ks))]
    got = group.evaluate(coefficients, x)
    assert got == group.msm(coefficients, powers)
    assert got == (sum(k * p for k, p in zip(ks, powers, strict=True)) % R) * g


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_evaluate_edge_cases(cls) -> None:
    g = cls.generator()
    assert cls.evaluate([], 7).is_identity()
    assert cls.evaluate([3 * g], 99) == 3 * g  # a constant
    assert cls.evaluate([3 * g, 5 * g], 0) == 3 * g  # x = 0: the constant term
    assert cls.evaluate([cls.identity(), g, cls.identity()], 4) == 4 * g
    assert cls.evaluate([g, g], R - 1).is_identity()  # 1 + (r - 1) = 0 mod r
    other = G2 if cls is G1 else G1
    with pytest.raises(TypeError, match="cannot evaluate"):
        cls.evaluate([other.generator()], 2)  # no arithmetic, still refused
    with pytest.raises(TypeError, match="cannot evaluate"):
        cls.evaluate([g, other.generator()], 2)


# --- algebraic laws (fast backends, many examples) --------------------------------


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
@pytest.mark.parametrize("rep", REPS)
def test_representations_behave_the_same(cls, rep: str) -> None:
    base = 1234567 * cls.generator()
    pt = as_rep(base, rep)
    assert pt == base
    assert hash(pt) == hash(base)
    assert pt.to_bytes() == base.to_bytes()
    assert (pt + pt) == 2 * base
    assert -pt == (R - 1) * base
    assert pt - pt == cls.identity()
    assert (3 * pt) == base + base + base
    assert not pt.is_identity()
    assert as_rep(cls.identity(), rep).is_identity()
    assert as_rep(cls.identity(), rep) + pt == base
    assert -as_rep(cls.identity(), rep) == cls.identity()


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_generator_is_shared_and_identity_is_bytes_held(cls) -> None:
    assert cls.generator() is cls.generator()  # decoded once, immutable
    assert cls.identity()._e is None and cls.identity()._a is None
    assert cls.generator() == cls.from_bytes(cls.generator().to_bytes())
    assert cls.identity() == cls.from_bytes(cls.identity().to_bytes())


def _laws(cls, x, y, z, a: int, c: int) -> None:
    zero = cls.identity()
    # commutativity and associativity
    assert x + y == y + x
    assert (x + y) + z == x + (y + z)
    # identity and inverse
    assert x + zero == x == zero + x
    assert x - x == zero
    assert x + (-x) == zero
    neg = -x
    assert -neg == x
    assert x - y == x + (-y)
    # scalar multiplication
    assert a * (x + y) == a * x + a * y
    assert (a + c) * x == a * x + c * x
    assert ((a + c) % R) * x == a * x + c * x
    assert (a * c) * x == a * (c * x)
    assert (-a) * x == -(a * x)
    assert a * x == x * a
    assert R * x == zero
    assert (R + a) * x == a * x
    assert 0 * x == zero
    assert 1 * x == x
    assert a * zero == zero


@LAWS
@given(x=point_strategy(G1), y=point_strategy(G1), z=point_strategy(G1), a=ANY_SCALAR, c=ANY_SCALAR)
def test_g1_group_laws(x, y, z, a: int, c: int) -> None:
    _laws(G1, x, y, z, a, c)


@LAWS
@given(x=point_strategy(G2), y=point_strategy(G2), z=point_strategy(G2), a=ANY_SCALAR, c=ANY_SCALAR)
def test_g2_group_laws(x, y, z, a: int, c: int) -> None:
    _laws(G2, x, y, z, a, c)


def _eq_hash_codec(cls, k: int, j: int, rep1: str, rep2: str) -> None:
    g = cls.generator()
    p1 = as_rep(k * g, rep1)
    p2 = as_rep(j * g, rep2)
    same = (k - j) % R == 0
    assert (p1 == p2) is same
    assert (p1 != p2) is not same
    if same:
        assert hash(p1) == hash(p2)
        assert p1.to_bytes() == p2.to_bytes()
    assert len({p1, p2, as_rep(p1, rep2)}) == (1 if same else 2)
    for pt in (p1, p2):
        data = pt.to_bytes()
        assert isinstance(data, bytes) and len(data) == cls.SIZE
        back = cls.from_bytes(data)
        assert back == pt and back.to_bytes() == data
        assert pt.is_identity() == (data == bytes([0xC0]) + bytes(cls.SIZE - 1))


_NEAR = st.one_of(FIELD_SCALAR, st.sampled_from(SPECIAL_SCALARS))


@LAWS
@given(
    k=_NEAR, d=st.sampled_from([0, 1, R, -R, 5]), r1=st.sampled_from(REPS), r2=st.sampled_from(REPS)
)
def test_g1_eq_hash_roundtrip(k: int, d: int, r1: str, r2: str) -> None:
    _eq_hash_codec(G1, k, k + d, r1, r2)


@LAWS
@given(
    k=_NEAR, d=st.sampled_from([0, 1, R, -R, 5]), r1=st.sampled_from(REPS), r2=st.sampled_from(REPS)
)
def test_g2_eq_hash_roundtrip(k: int, d: int, r1: str, r2: str) -> None:
    _eq_hash_codec(G2, k, k + d, r1, r2)


@settings(max_examples=40, deadline=None, database=None)
@given(
    terms=st.lists(st.tuples(FIELD_SCALAR, ANY_SCALAR, st.sampled_from(REPS)), max_size=6),
    cls=st.sampled_from(GROUPS),
)
def test_msm_of_mixed_representations(terms, cls) -> None:
    g = cls.generator()
    points = [as_rep(k * g, rep) for k, _, rep in terms]
    scalars = [s for _, s, _ in terms]
    got = cls.msm(points, scalars)
    assert got._e is None  # arkworks-held
    expected_scalar = sum(k * s for k, s, _ in terms) % R
    expected = expected_scalar * g  # blst-held
    assert got == expected
    assert hash(got) == hash(expected)
    assert got.to_bytes() == expected.to_bytes()
    # arkworks + arkworks, arkworks + blst, blst + arkworks
    assert got + got == 2 * expected
    assert got + expected == expected + got == 2 * expected
    assert got - expected == cls.identity()
    assert 3 * got == got + got + got
    assert cls.msm([got, expected], [1, -1]).is_identity()


@pytest.mark.parametrize("cls", GROUPS, ids=GROUP_IDS)
def test_mul_does_not_mutate_operands(cls) -> None:
    g = cls.generator()
    pt = 9 * g
    before = pt.to_bytes()
    _ = pt + pt, 3 * pt, -pt, cls.msm([pt], [4])
    assert pt.to_bytes() == before
    assert g.to_bytes() == cls.generator().to_bytes()
