"""Pairings on BLS12-381: product checks (blst) and GT values (chia_rs, blst-based)."""

from __future__ import annotations

from collections.abc import Sequence

import chia_rs as _chia
import pyblst as _blst

from mpc.math.curve import G1, G2

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


def pairing(p: G1, q: G2) -> bytes:
    """The value ``e(P, Q)`` in GT as 576 bytes (blst's Fp12 layout, see docs/crypto.md).

    The layout is the 12 Fp coefficients, each 48-byte big-endian, in the order
    of the tower Fp12 = Fp6[w]/(w²-v), Fp6 = Fp2[v]/(v³-(u+1)), Fp2 = Fp[u]/(u²+1),
    with Fp12 = c0 + c1·w, Fp6 = c0 + c1·v + c2·v², Fp2 = c0 + c1·u, written
    c0 before c1 at every level (so the first 48 bytes are c0.c0.c0).
    """
    g1 = _chia.G1Element.from_bytes_unchecked(p.to_bytes())
    g2 = _chia.G2Element.from_bytes_unchecked(q.to_bytes())
    out = bytes(g1.pair(g2).to_bytes())
    if len(out) != GT_SIZE:  # pragma: no cover - guarded backend contract
        raise RuntimeError("unexpected GT encoding length")
    return out
