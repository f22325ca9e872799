"""The "backend choice" table: the candidate native BLS12-381 bindings side by side.

pyblst (blst), py_arkworks_bls12381 (arkworks) and chia_rs (blst, Chia's
binding) are called directly, without the ``mpc.math`` wrapper, on the same
inputs. ``n/a`` means the binding exposes no such operation.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

import chia_rs as chia
import py_arkworks_bls12381 as ark
import pyblst as blst

from bench.timing import Budget, Timing, measure
from mpc.bls import DST_SIG_AUG
from mpc.math import G1, G2, R
from mpc.tkd import DST_DERIVE

BACKENDS = ("pyblst", "arkworks", "chia_rs")


@dataclass(frozen=True, slots=True)
class BackendRow:
    operation: str
    timings: dict[str, Timing | None]
    note: str = ""


def rows(budget: Budget, progress: Callable[[str], None]) -> list[BackendRow]:
    """Time each operation in every binding that has it."""
    msg = b"quorum-kms bench message 32 byte"
    k = secrets.randbelow(R - 1) + 1
    small = 3
    g1b, g2b = G1.generator().to_bytes(), G2.generator().to_bytes()
    b1 = blst.BlstP1Element.uncompress(g1b).scalar_mul(k)
    b2 = blst.BlstP2Element.uncompress(g2b).scalar_mul(k)
    a1 = ark.G1Point.from_compressed_bytes(bytes(b1.compress()))
    a2 = ark.G2Point.from_compressed_bytes(bytes(b2.compress()))
    c1 = chia.G1Element.from_bytes(bytes(b1.compress()))
    c2 = chia.G2Element.from_bytes(bytes(b2.compress()))
    ks, kk = ark.Scalar(k), ark.Scalar(small)
    q2_bytes = bytes(b2.compress())

    # e(k·g1, g2)·e(−g1, k·g2) == 1
    bg1 = blst.BlstP1Element.uncompress(g1b)
    bg2 = blst.BlstP2Element.uncompress(g2b)
    neg_bg1 = -bg1

    def blst_check() -> bool:
        acc = blst.miller_loop(b1, bg2) * blst.miller_loop(neg_bg1, b2)
        return bool(blst.final_verify(acc, blst.BlstFP12Element()))

    ag1, ag2 = ark.G1Point(), ark.G2Point()

    def ark_check() -> bool:
        return ark.GT.pairing_check([a1, -ag1], [ag2, a2])

    cg1, cg2 = chia.G1Element.generator(), chia.G2Element.generator()

    def chia_check() -> bool:
        return bool(c1.pair(cg2) == cg1.pair(c2))

    if not (blst_check() and ark_check() and chia_check()):
        raise RuntimeError("backend pairing equation does not hold")

    n_msm = 128
    msm_blst = [
        blst.BlstP2Element.hash_to_group(i.to_bytes(4, "big"), DST_SIG_AUG) for i in range(n_msm)
    ]
    msm_ark = [ark.G2Point.from_compressed_bytes(bytes(p.compress())) for p in msm_blst]
    msm_k = [secrets.randbelow(R) for _ in range(n_msm)]
    msm_ks = [ark.Scalar(x) for x in msm_k]

    def blst_msm() -> object:
        acc = msm_blst[0].scalar_mul(msm_k[0])
        for p, x in zip(msm_blst[1:], msm_k[1:], strict=True):
            acc = acc + p.scalar_mul(x)
        return acc

    cases: list[tuple[str, dict[str, Callable[[], object] | None], str]] = [
        (
            "G1 scalar mul, 255-bit k",
            {"pyblst": lambda: b1.scalar_mul(k), "arkworks": lambda: a1 * ks, "chia_rs": None},
            "chia_rs multiplies only the generator (PrivateKey.get_g1)",
        ),
        (
            "G1 scalar mul, k = 3",
            {
                "pyblst": lambda: b1.scalar_mul(small),
                "arkworks": lambda: a1 * kk,
                "chia_rs": None,
            },
            "arkworks time depends on the scalar; blst's does not",
        ),
        (
            "G2 scalar mul, 255-bit k",
            {"pyblst": lambda: b2.scalar_mul(k), "arkworks": lambda: a2 * ks, "chia_rs": None},
            "",
        ),
        (
            "G2 scalar mul, k = 3",
            {
                "pyblst": lambda: b2.scalar_mul(small),
                "arkworks": lambda: a2 * kk,
                "chia_rs": None,
            },
            "",
        ),
        (
            "G2 decompress + subgroup check",
            {
                "pyblst": lambda: blst.BlstP2Element.uncompress(q2_bytes),
                "arkworks": lambda: ark.G2Point.from_compressed_bytes(q2_bytes),
                "chia_rs": lambda: chia.G2Element.from_bytes(q2_bytes),
            },
            "all three reject a point outside the subgroup",
        ),
        (
            "hash to G1",
            {
                "pyblst": lambda: blst.BlstP1Element.hash_to_group(msg, DST_DERIVE),
                "arkworks": lambda: ark.G1Point.hash_to_curve(msg, DST_DERIVE),
                "chia_rs": None,
            },
            "",
        ),
        (
            "hash to G2",
            {
                "pyblst": lambda: blst.BlstP2Element.hash_to_group(msg, DST_SIG_AUG),
                "arkworks": lambda: ark.G2Point.hash_to_curve(msg, DST_SIG_AUG),
                "chia_rs": lambda: chia.AugSchemeMPL.g2_from_message(msg),
            },
            "chia_rs: fixed DST (its AUG ciphersuite) only",
        ),
        (
            "pairing check, 2 pairs",
            {"pyblst": blst_check, "arkworks": ark_check, "chia_rs": chia_check},
            "chia_rs: two full pairings compared (no product API)",
        ),
        (
            "pairing value e(P, Q) as bytes",
            {
                "pyblst": None,
                "arkworks": None,
                "chia_rs": lambda: c1.pair(cg2).to_bytes(),
            },
            "only chia_rs exposes a GT encoding (576 bytes)",
        ),
        (
            f"G2 MSM, {n_msm} points",
            {
                "pyblst": blst_msm,
                "arkworks": lambda: ark.G2Point.multiexp_unchecked(msm_ark, msm_ks),
                "chia_rs": None,
            },
            "pyblst: Σ k_i·Q_i one by one (no MSM API)",
        ),
    ]
    out = []
    for name, fns, note in cases:
        progress(f"backends: {name}")
        timings = {b: (measure(fn, budget) if fn is not None else None) for b, fn in fns.items()}
        out.append(BackendRow(name, timings, note))
    return out
