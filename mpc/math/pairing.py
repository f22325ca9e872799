"""Pairings on BLS12-381: product checks (blst) and GT values (chia_rs, blst-based)."""

from __future__ import annotations

from collections.abc import Sequence

import chia_rs as _chia
import pyblst as _blst

from mpc.math.curve import G1, G2
from mpc.math.fields import P

GT_SIZE = 576


def pairing_check(pairs: Sequence[tuple[G1, G2]]) -> bool:
    """Whether ``Π e(P_i, Q_i)`` is the identity of GT (``True`` for no pairs).

    One Miller loop per pair and a single final exponentiation. Pairs with an
    identity point contribute 1 and are skipped.
    """
    acc: _blst.BlstFP12Element | None = None
    for p, q in pairs:
        if not isinstance(p, G1) or not isinstance(q, G2):
            raise TypeError("pairing_check takes (G1, G2) pairs")
        if p.is_identity() or q.is_identity():
            continue
        m = _blst.miller_loop(p._blst_elem(), q._blst_elem())
        acc = m if acc is None else acc * m
    if acc is None:
        return True
    return bool(_blst.final_verify(acc, _blst.BlstFP12Element()))


_FP_BYTES = 48
_MONTGOMERY_R_INV = pow(2**384, -1, P)


def _canonical_gt(raw: bytes) -> bytes:
    """blst's in-memory Fp12 (Montgomery form, little-endian limbs) → canonical bytes."""
    return b"".join(
        (int.from_bytes(raw[i : i + _FP_BYTES], "little") * _MONTGOMERY_R_INV % P).to_bytes(
            _FP_BYTES, "big"
        )
        for i in range(0, GT_SIZE, _FP_BYTES)
    )


def pairing(p: G1, q: G2) -> bytes:
    """The value ``e(P, Q)`` in GT as 576 canonical bytes (docs/crypto.md, "GT encoding").

    Twelve Fp coefficients, each 48-byte big-endian and fully reduced, in the
    tower order Fp12 = Fp6[w]/(w²-v), Fp6 = Fp2[v]/(v³-(u+1)), Fp2 = Fp[u]/(u²+1),
    writing c0 before c1 at every level: c0.c0.c0, c0.c0.c1, c0.c1.c0, …, c1.c2.c1.
    The value is blst's optimal ate pairing (its final exponentiation, which
    equals py-ecc's ``pairing(Q, P) ** -3``; ``tests/mpc/math`` checks this).
    chia_rs exposes blst's raw ``blst_fp12`` memory (Montgomery form,
    little-endian limbs); it is converted here so the bytes do not depend on
    the host or the backend.
    """
    if not isinstance(p, G1) or not isinstance(q, G2):
        raise TypeError("pairing takes a G1 and a G2 point")
    g1 = _chia.G1Element.from_bytes_unchecked(p.to_bytes())
    g2 = _chia.G2Element.from_bytes_unchecked(q.to_bytes())
    raw = bytes(g1.pair(g2).to_bytes())
    if len(raw) != GT_SIZE:  # pragma: no cover - guarded backend contract
        raise RuntimeError("unexpected GT encoding length")
    out = _canonical_gt(raw)
    if out == _GT_ZERO:  # pragma: no cover - a GT element is never zero
        raise RuntimeError("backend returned an invalid GT element")
    return out


_GT_ZERO = bytes(GT_SIZE)
GT_ONE = (1).to_bytes(_FP_BYTES, "big") + bytes(GT_SIZE - _FP_BYTES)

# The conversion above assumes blst's little-endian limbs (x86-64, AArch64).
# Refuse to run on a host where the identity does not come out as 1.
if pairing(G1.identity(), G2.generator()) != GT_ONE:  # pragma: no cover - unsupported host
    raise ImportError("unsupported host byte order for the GT encoding")
