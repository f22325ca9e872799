"""Pairings: ``pairing_check`` relations and the 576-byte GT encoding of ``pairing``.

py-ecc pairings cost ~0.3 s each, so the file computes exactly four of them
(module-scoped fixtures) and derives everything else from those values with
cheap Fp12 arithmetic. The GT byte layout is documented in ``pyecc_ref.py``.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from py_ecc.optimized_bls12_381 import FQ12
from py_ecc.optimized_bls12_381 import pairing as pyecc_pairing

from mpc.math import G1, G2, GT_SIZE, P, R, hash_to_g1, hash_to_g2, pairing, pairing_check

SCALAR = st.integers(min_value=0, max_value=R - 1)
ANY_SCALAR = st.one_of(SCALAR, st.integers(min_value=-(2**300), max_value=2**300))
FAST = settings(max_examples=50, deadline=None, database=None)


def _g1_from(ref, pt) -> G1:
    """A py-ecc G1 point as ours, through its encoding only."""
    return G1.from_bytes(ref.g1_bytes(pt))


def _g2_from(ref, pt) -> G2:
    return G2.from_bytes(ref.g2_bytes(pt))


def _fq12(ref, data: bytes) -> FQ12:
    """Our GT bytes as a py-ecc FQ12 (via the documented layout)."""
    return ref.tower_to_pyecc_fq12(ref.gt_from_bytes(data))


# --- the py-ecc reference values (4 pyecc pairings in total) -------------------


@pytest.fixture(scope="module")
def gen_pairing(ref) -> FQ12:
    """py-ecc ``pairing(G2, G1)`` (1 pairing)."""
    return pyecc_pairing(ref.g2_mul(1), ref.g1_mul(1))


@pytest.fixture(scope="module")
def relations(ref) -> dict:
    """Random points built with py-ecc and their py-ecc pairings (3 pairings).

    (p1, q1), (p2, q2) satisfy e(p1, q1)·e(p2, q2) = 1 by construction of the
    scalars; (p3, q3) is independent, so e(p1, q1)·e(p3, q3) ≠ 1.
    """
    rng = random.Random(0x9380)
    a, b, c, s, t = (rng.randrange(1, R) for _ in range(5))
    d = -a * b * pow(c, -1, R) % R
    pts = {
        "p1": ref.g1_mul(a),
        "q1": ref.g2_mul(b),
        "p2": ref.g1_mul(c),
        "q2": ref.g2_mul(d),
        "p3": ref.g1_mul(s),
        "q3": ref.g2_mul(t),
    }
    out = {"scalars": (a, b, c, d, s, t), "py": pts}
    for i in (1, 2, 3):
        out[f"e{i}"] = pyecc_pairing(pts[f"q{i}"], pts[f"p{i}"])
        out[f"P{i}"] = _g1_from(ref, pts[f"p{i}"])
        out[f"Q{i}"] = _g2_from(ref, pts[f"q{i}"])
    return out


# --- GT encoding vs py-ecc --------------------------------------------------------


def test_gt_size() -> None:
    assert GT_SIZE == 576
    assert len(pairing(G1.generator(), G2.generator())) == GT_SIZE


PINNED_PREFIX = "1250ebd871fc0a92"


def test_generator_pairing_bytes_match_pyecc(ref, gen_pairing: FQ12) -> None:
    got = pairing(G1.generator(), G2.generator())
    assert got == ref.mpc_gt_from_pyecc(gen_pairing)
    # Pinned prefix of the canonical big-endian layout the docs record.
    assert got[:8].hex() == PINNED_PREFIX


def test_gt_layout_is_plain_big_endian(ref, gen_pairing: FQ12) -> None:
    """Pin down the layout precisely by ruling out the obvious alternatives."""
    got = pairing(G1.generator(), G2.generator())
    value = ref.pyecc_fq12_to_tower(ref.pyecc_conjugate(gen_pairing) ** 3)
    plain_be = b"".join(x.to_bytes(48, "big") for x in value)
    plain_le = b"".join(x.to_bytes(48, "little") for x in value)
    mont_be = b"".join((x * ref.MONTGOMERY_R % P).to_bytes(48, "big") for x in value)
    assert got == plain_be
    assert got not in (plain_le, mont_be)
    assert got == ref.gt_bytes(value)
    # and the value really is e^-3 of py-ecc's pairing, not e, e^-1 or e^3
    for other in (gen_pairing, ref.pyecc_conjugate(gen_pairing), gen_pairing**3):
        assert got != ref.gt_bytes(ref.pyecc_fq12_to_tower(other))


def test_random_pairing_bytes_match_pyecc(ref, relations: dict, gen_pairing: FQ12) -> None:
    a, b, _c, _d, s, t = relations["scalars"]
    for i in (1, 2, 3):
        got = pairing(relations[f"P{i}"], relations[f"Q{i}"])
        assert got == ref.mpc_gt_from_pyecc(relations[f"e{i}"])
    # py-ecc is bilinear too: e(aG1, bG2) = e(G1, G2)^(ab)
    assert relations["e1"] == gen_pairing ** (a * b % R)
    assert relations["e3"] == gen_pairing ** (s * t % R)


def test_pairing_check_matches_pyecc_relations(relations: dict) -> None:
    e1, e2, e3 = relations["e1"], relations["e2"], relations["e3"]
    P1, Q1, P2, Q2, P3, Q3 = (relations[k] for k in ("P1", "Q1", "P2", "Q2", "P3", "Q3"))
    one = FQ12.one()
    assert (e1 * e2 == one) is True
    assert pairing_check([(P1, Q1), (P2, Q2)]) is True
    assert pairing_check([(P2, Q2), (P1, Q1)]) is True
    assert (e1 * e3 == one) is False
    assert pairing_check([(P1, Q1), (P3, Q3)]) is False
    assert (e1 == e2) is False
    assert pairing_check([(P1, Q1), (-P2, Q2)]) is False
    # e(P1,Q1)·e(P2,Q2)·e(P3,Q3)·e(-P3,Q3) = 1
    assert pairing_check([(P1, Q1), (P2, Q2), (P3, Q3), (-P3, Q3)]) is True
    assert pairing_check([(P1, Q1), (P2, Q2), (P3, Q3), (P3, -Q3)]) is True
    assert pairing_check([(P1, Q1), (P2, Q2), (P3, Q3), (P3, Q3)]) is False


def test_gt_bytes_multiply_like_gt(ref, relations: dict) -> None:
    """Our bytes, read back with the documented layout, multiply like GT elements."""
    P1, Q1, P2, Q2 = (relations[k] for k in ("P1", "Q1", "P2", "Q2"))
    x1 = _fq12(ref, pairing(P1, Q1))
    x2 = _fq12(ref, pairing(P2, Q2))
    assert x1 * x2 == FQ12.one()
    assert x1 ** (R - 1) * x1 == FQ12.one()
    assert x1 != FQ12.one()
    assert _fq12(ref, pairing(P1 + P1, Q1)) == x1 * x1


# --- GT encoding: structure (no py-ecc pairing) --------------------------------


def test_gt_identity_encoding(ref) -> None:
    g, h = G1.generator(), G2.generator()
    assert ref.GT_ONE[:48] == (1).to_bytes(48, "big")
    assert ref.GT_ONE[48:] == bytes(528)
    for pt_p, pt_q in ((G1.identity(), h), (g, G2.identity()), (G1.identity(), G2.identity())):
        assert pairing(pt_p, pt_q) == ref.GT_ONE
    assert pairing(g, h) != ref.GT_ONE
    assert pairing(R * g, h) == ref.GT_ONE


def test_gt_coefficients_are_reduced_and_in_gt(ref) -> None:
    data = pairing(hash_to_g1(b"a", b"T"), hash_to_g2(b"b", b"T"))
    for i in range(0, GT_SIZE, 48):
        assert int.from_bytes(data[i : i + 48], "big") < P
    x = _fq12(ref, data)
    assert x**R == FQ12.one()
    assert x != FQ12.one()


def test_negation_conjugates(ref) -> None:
    """e(−P, Q) = e(P, Q)⁻¹ = conjugate: tower c1 (the w-part) negated, c0 kept."""
    p, q = hash_to_g1(b"x", b"T"), hash_to_g2(b"y", b"T")
    plus = ref.gt_from_bytes(pairing(p, q))
    minus = ref.gt_from_bytes(pairing(-p, q))
    assert minus[:6] == plus[:6]
    assert minus[6:] == [(-x) % P for x in plus[6:]]
    assert pairing(p, -q) == pairing(-p, q)


@settings(max_examples=25, deadline=None, database=None)
@given(a=ANY_SCALAR, b=ANY_SCALAR)
def test_pairing_bytes_are_bilinear(ref, a: int, b: int) -> None:
    g, h = G1.generator(), G2.generator()
    ab = a * b % R
    v = pairing(a * g, b * h)
    assert v == pairing(ab * g, h) == pairing(g, ab * h)
    assert v == pairing(G1.msm([g], [ab]), h)  # arkworks-held input
    if ab:
        assert _fq12(ref, v) == _fq12(ref, pairing(g, h)) ** ab
    else:
        assert v == ref.GT_ONE


@settings(max_examples=25, deadline=None, database=None)
@given(k1=SCALAR, k2=SCALAR)
def test_pairing_bytes_additive_in_g2(ref, k1: int, k2: int) -> None:
    p = hash_to_g1(b"p", b"T")
    h = G2.generator()
    lhs = _fq12(ref, pairing(p, k1 * h + k2 * h))
    rhs = _fq12(ref, pairing(p, k1 * h)) * _fq12(ref, pairing(p, k2 * h))
    assert lhs == rhs


# --- pairing_check --------------------------------------------------------------


def test_pairing_check_empty_is_true() -> None:
    assert pairing_check([]) is True
    assert pairing_check(()) is True


def test_identity_pairs() -> None:
    g, h = G1.generator(), G2.generator()
    i1, i2 = G1.identity(), G2.identity()
    assert pairing_check([(i1, h)]) is True
    assert pairing_check([(g, i2)]) is True
    assert pairing_check([(i1, i2)]) is True
    assert pairing_check([(g - g, h), (g, h - h)]) is True
    assert pairing_check([(G1.msm([g], [0]), h)]) is True
    assert pairing_check([(g, h)]) is False
    assert pairing_check([(g, h), (i1, h)]) is False
    assert pairing_check([(i1, h), (g, h), (g, i2)]) is False
    assert pairing_check([(i1, h), (g, h), (-g, h), (g, i2)]) is True


@FAST
@given(a=ANY_SCALAR, b=ANY_SCALAR)
def test_bilinearity(a: int, b: int) -> None:
    p, q = G1.generator(), G2.generator()
    assert pairing_check([(a * p, b * q), (-(a * b) * p, q)]) is True
    assert pairing_check([(a * p, b * q), (p, -(a * b) * q)]) is True
    assert pairing_check([(a * p, b * q), (-(a * b + 1) * p, q)]) is False
    assert pairing_check([(a * p, b * q), (-(a * b) * p, 2 * q)]) is (a * b % R == 0)


@settings(max_examples=25, deadline=None, database=None)
@given(msg=st.binary(max_size=16), a=SCALAR, b=SCALAR)
def test_bilinearity_on_hashed_points(msg: bytes, a: int, b: int) -> None:
    p, q = hash_to_g1(msg, b"T1"), hash_to_g2(msg, b"T2")
    assert pairing_check([(a * p, b * q), (-(a * b) * p, q)]) is True
    assert pairing_check([(a * p, q), (p, -a * q)]) is True
    assert pairing_check([(p, q)]) is False


@settings(max_examples=25, deadline=None, database=None)
@given(
    terms=st.lists(st.tuples(SCALAR, SCALAR), min_size=1, max_size=5),
    rep=st.sampled_from(["blst", "ark", "bytes"]),
    bump=st.integers(min_value=1, max_value=R - 1),
)
def test_random_product_relations(terms, rep: str, bump: int) -> None:
    g, h = G1.generator(), G2.generator()
    total = sum(a * b for a, b in terms) % R
    pairs = [(a * g, b * h) for a, b in terms] + [(-total * g, h)]
    if rep == "ark":
        pairs = [(G1.msm([x], [1]), G2.msm([y], [1])) for x, y in pairs]
    elif rep == "bytes":
        pairs = [(G1._wrap(b=x.to_bytes()), G2._wrap(b=y.to_bytes())) for x, y in pairs]
    assert pairing_check(pairs) is True
    x, y = pairs[-1]
    broken = [*pairs[:-1], (x + bump * g, y)]
    assert pairing_check(broken) is False


def test_pairing_check_type_errors() -> None:
    g, h = G1.generator(), G2.generator()
    with pytest.raises(TypeError):
        pairing_check([(h, g)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        pairing_check([(g, g)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        pairing_check([(g.to_bytes(), h)])  # type: ignore[list-item]
