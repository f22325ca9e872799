"""The main table: ``mpc`` (native backends) against the py-ecc reference.

Every row times the project's own API (``mpc.math``, ``mpc.tkd``,
``mpc.math.vss``, ``mpc.ibe``, ``mpc.hpke``) and, where it is meaningful, the
same computation in py-ecc (``py_ecc.optimized_bls12_381`` and ``py_ecc.bls``).
py-ecc is pure Python and 100–1000× slower, so its side runs fewer iterations,
a smaller size scaled up linearly, or is an estimate from measured parts; the
row's note says which.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from py_ecc.bls.g2_primitives import pubkey_to_G1, signature_to_G2, subgroup_check
from py_ecc.bls.hash_to_curve import hash_to_G1, hash_to_G2
from py_ecc.optimized_bls12_381 import G2 as PYECC_G2
from py_ecc.optimized_bls12_381 import Z2, add, eq, multiply, pairing

from bench.timing import Budget, Timing, format_seconds, measure
from mpc import hpke, ibe
from mpc.bls import DST_SIG_POP
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2, R, hash_to_g1, hash_to_g2, pairing_check
from mpc.math.fields import lagrange_coefficients
from mpc.math.poly import Polynomial
from mpc.math.vss import ShareClaim, commit, verify_shares
from mpc.secret import SecretScalar, SecretShare, random_scalar
from mpc.tkd import DST_DERIVE, DerivedPoint, KeyId, Partial, combine_and_verify, derive_partial

PARTIAL_TARGET = 0.3e-3
COMBINE_T3_TARGET = 3e-3
VSS_TARGET = 1.0

VSS_DEALS = 64
VSS_DEGREE = 42
VSS_RECIPIENT = ParticipantIndex(17)


@dataclass(frozen=True, slots=True)
class Profile:
    """How much time the run may spend; ``--quick`` picks the small one."""

    name: str
    fast: Budget
    """Native-backend rows."""
    ref: Budget
    """py-ecc rows costing up to ~100 ms a call."""
    slow_ref: Budget
    """py-ecc rows costing ~0.2–1 s a call."""
    vss_fast: Budget
    msm_ref_size: int
    vss_ref_deals: int


FULL = Profile(
    "full",
    fast=Budget(0.6, 5000, 5),
    ref=Budget(1.0, 20),
    slow_ref=Budget(1.6, 3),
    vss_fast=Budget(3.0, 7, 3),
    msm_ref_size=8,
    vss_ref_deals=2,
)
QUICK = Profile(
    "quick",
    fast=Budget(0.08, 400, 3),
    ref=Budget(0.12, 3),
    slow_ref=Budget(0.1, 1),
    vss_fast=Budget(0.1, 1),
    msm_ref_size=2,
    vss_ref_deals=1,
)


@dataclass(frozen=True, slots=True)
class Reference:
    """The py-ecc side of a row: seconds per operation and how it was obtained."""

    seconds: float
    iterations: str
    approximate: bool = False
    """Extrapolated from a smaller size or estimated from measured parts."""


@dataclass(frozen=True, slots=True)
class Row:
    operation: str
    fast: Timing
    reference: Reference | None
    note: str = ""
    target: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.reference is None:
            return None
        return self.reference.seconds / self.fast.median

    @property
    def target_met(self) -> bool | None:
        if self.target is None:
            return None
        return self.fast.median <= self.target


def _measured(t: Timing) -> Reference:
    return Reference(t.median, str(t.iterations))


# --- py-ecc reference helpers ---------------------------------------------------


def _pyecc_g1(data: bytes):
    """py-ecc decompression plus the subgroup check its decompress does not do."""
    pt = pubkey_to_G1(data)
    if not subgroup_check(pt):
        raise ValueError("not in G1")
    return pt


def _pyecc_g2(data: bytes):
    pt = signature_to_G2(data)
    if not subgroup_check(pt):
        raise ValueError("not in G2")
    return pt


# --- the rows -------------------------------------------------------------------


def rows(profile: Profile, progress: Callable[[str], None]) -> list[Row]:
    """Time every operation of the main table."""
    out: list[Row] = []
    msg = b"quorum-kms bench message 32 byte"
    k = secrets.randbelow(R - 1) + 1
    p1 = hash_to_g1(b"bench point 1", DST_DERIVE)
    q2 = hash_to_g2(b"bench point 2", DST_SIG_POP)
    p1_ref = pubkey_to_G1(p1.to_bytes())
    q2_ref = signature_to_G2(q2.to_bytes())
    fast, ref, slow_ref = profile.fast, profile.ref, profile.slow_ref

    # Scalar multiplication.
    progress("scalar multiplication")
    g1_mul_ref = measure(lambda: multiply(p1_ref, k), ref)
    out.append(
        Row("G1 scalar mul k·P", measure(lambda: k * p1, fast), _measured(g1_mul_ref), "blst")
    )
    g2_mul_ref = measure(lambda: multiply(q2_ref, k), ref)
    out.append(
        Row("G2 scalar mul k·Q", measure(lambda: k * q2, fast), _measured(g2_mul_ref), "blst")
    )

    # Hash to curve (RFC 9380, SHA-256, SSWU, random oracle).
    progress("hash to curve")
    h2g1_ref = measure(lambda: hash_to_G1(msg, DST_DERIVE, hashlib.sha256), ref)
    out.append(
        Row(
            "hash to G1 (32-byte msg)",
            measure(lambda: hash_to_g1(msg, DST_DERIVE), fast),
            _measured(h2g1_ref),
            "RFC 9380 _RO_",
        )
    )
    h2g2_ref = measure(lambda: hash_to_G2(msg, DST_SIG_POP, hashlib.sha256), ref)
    out.append(
        Row(
            "hash to G2 (32-byte msg)",
            measure(lambda: hash_to_g2(msg, DST_SIG_POP), fast),
            _measured(h2g2_ref),
            "RFC 9380 _RO_",
        )
    )

    # A two-pair product check: e(σ, −g2)·e(H, MPK) == 1.
    progress("pairing check")
    s = secrets.randbelow(R - 1) + 1
    mpk = s * G2.generator()
    sigma = s * p1
    neg_g2 = -G2.generator()
    pairs = [(sigma, neg_g2), (p1, mpk)]
    if not pairing_check(pairs):
        raise RuntimeError("benchmark pairing equation does not hold")
    mpk_ref = multiply(PYECC_G2, s)
    sigma_ref = multiply(p1_ref, s)
    out.append(
        Row(
            "pairing check, 2 pairs",
            measure(lambda: pairing_check(pairs), fast),
            _measured(
                measure(
                    lambda: pairing(PYECC_G2, sigma_ref) == pairing(mpk_ref, p1_ref),
                    slow_ref,
                )
            ),
            "py-ecc: 2 full pairings + compare",
        )
    )

    # Decoding with every check.
    progress("decoding")
    b1, b2 = p1.to_bytes(), q2.to_bytes()
    g1_dec_ref = measure(lambda: _pyecc_g1(b1), ref)
    out.append(
        Row(
            "decode G1 + subgroup check",
            measure(lambda: G1.from_bytes(b1), fast),
            _measured(g1_dec_ref),
            "py-ecc: decompress + explicit r·P == 0 check (its decompress has none)",
        )
    )
    g2_dec_ref = measure(lambda: _pyecc_g2(b2), ref)
    out.append(
        Row(
            "decode G2 + subgroup check",
            measure(lambda: G2.from_bytes(b2), fast),
            _measured(g2_dec_ref),
            "py-ecc: decompress + explicit r·P == 0 check (its decompress has none)",
        )
    )

    # Multi-scalar multiplication over public G2 points.
    progress("multi-scalar multiplication")
    pts = [hash_to_g2(i.to_bytes(4, "big"), DST_SIG_POP) for i in range(128)]
    ks = [secrets.randbelow(R) for _ in range(128)]
    n_ref = profile.msm_ref_size
    pts_ref = [signature_to_G2(p.to_bytes()) for p in pts[:n_ref]]

    def msm_ref() -> object:
        acc = Z2
        for pt, kk in zip(pts_ref, ks, strict=False):
            acc = add(acc, multiply(pt, kk))
        return acc

    msm_ref_t = measure(msm_ref, slow_ref)
    for n in (32, 128):
        scale = n / n_ref
        out.append(
            Row(
                f"G2 MSM, {n} points",
                measure(lambda n=n: G2.msm(pts[:n], ks[:n]), fast),
                Reference(msm_ref_t.median * scale, f"{msm_ref_t.iterations} (n={n_ref})", True),
                f"arkworks Pippenger, arkworks views cached; reference: Σ multiply at n={n_ref}, "
                f"{format_seconds(msm_ref_t.median)}, ×{scale:g} linear",
            )
        )

    # Threshold key derivation: a node's partial.
    progress("TKD partial")
    key_id = KeyId(b"bench-app", "app", 1)
    share = SecretShare(ParticipantIndex(1), SecretScalar(k))
    enc_id = key_id.encode()
    out.append(
        Row(
            "TKD partial s_i·H(id) (node)",
            measure(lambda: derive_partial(share, key_id), fast),
            _measured(
                measure(lambda: multiply(hash_to_G1(enc_id, DST_DERIVE, hashlib.sha256), k), ref)
            ),
            "hash to G1 + constant-time mul; NEAR TKD: 0.78 ms/node (Rust, 7 parties)",
            PARTIAL_TARGET,
        )
    )

    # Threshold key derivation: the client's combine and verify.
    for t in (3, 7, 16):
        progress(f"TKD combine-and-verify t={t}")
        poly = Polynomial([secrets.randbelow(R - 1) + 1 for _ in range(t)])
        mpk_t = G2.from_bytes((poly(0) * G2.generator()).to_bytes())
        idx = [ParticipantIndex(i) for i in range(1, t + 1)]
        shares = {i: SecretShare(i, SecretScalar(poly(i))) for i in idx}
        public_shares = {i: shares[i].value.value * G2.generator() for i in idx}
        partial_bytes = [(i, derive_partial(shares[i], key_id).to_bytes()) for i in idx]

        def client(
            partial_bytes: list[tuple[ParticipantIndex, bytes]] = partial_bytes,
            mpk_t: G2 = mpk_t,
            public_shares: dict[ParticipantIndex, G2] = public_shares,
            t: int = t,
        ) -> DerivedPoint:
            partials = [Partial.from_bytes(i, b) for i, b in partial_bytes]
            return combine_and_verify(partials, key_id, mpk_t, public_shares, t)

        client()  # raises if the committee is inconsistent
        mpk_t_ref = _pyecc_g2(mpk_t.to_bytes())
        lams = lagrange_coefficients([int(i) for i in idx])

        def client_ref(
            partial_bytes: list[tuple[ParticipantIndex, bytes]] = partial_bytes,
            mpk_t_ref: object = mpk_t_ref,
            lams: list[int] = lams,
        ) -> bool:
            acc = None
            for (_, b), lam in zip(partial_bytes, lams, strict=True):
                term = multiply(_pyecc_g1(b), lam)
                acc = term if acc is None else add(acc, term)
            h = hash_to_G1(enc_id, DST_DERIVE, hashlib.sha256)
            return pairing(PYECC_G2, acc) == pairing(mpk_t_ref, h)

        out.append(
            Row(
                f"TKD combine + verify, t={t} (client)",
                measure(client, fast),
                _measured(measure(client_ref, slow_ref, warmup=False)),
                f"decode {t} partials, Lagrange MSM, hash, 2-pair check",
                COMBINE_T3_TARGET if t == 3 else None,
            )
        )

    out.append(_vss_row(profile, progress))

    # IBE to an app.
    progress("IBE")
    pt64 = os.urandom(64)
    inbox = ibe.inbox_key_id(b"bench-app")
    derived = DerivedPoint(inbox, s * hash_to_g1(inbox.encode(), DST_DERIVE))
    ct = ibe.encrypt(mpk, inbox, pt64, rng=os.urandom)
    if ibe.decrypt(derived, mpk, ct) != pt64:
        raise RuntimeError("IBE round trip failed")
    one_pairing = measure(lambda: pairing(mpk_ref, p1_ref), slow_ref)
    enc_est = h2g1_ref.median + 2 * g2_mul_ref.median + one_pairing.median
    dec_est = g2_dec_ref.median + one_pairing.median
    out.append(
        Row(
            "IBE encrypt 64 B",
            measure(lambda: ibe.encrypt(mpk, inbox, pt64, rng=os.urandom), fast),
            Reference(enc_est, "est.", True),
            f"estimate: py-ecc hash to G1 + 2 G2 mul + 1 pairing ({format_seconds(one_pairing.median)}, "
            f"{one_pairing.iterations} it.)",
        )
    )
    out.append(
        Row(
            "IBE decrypt 64 B",
            measure(lambda: ibe.decrypt(derived, mpk, ct), fast),
            Reference(dec_est, "est.", True),
            "estimate: py-ecc G2 decode + subgroup check + 1 pairing",
        )
    )

    # HPKE (no pairing involved; py-ecc has nothing to compare).
    progress("HPKE")
    sk, pk = hpke.generate_key_pair(os.urandom)
    info, aad = b"quorum-kms bench", b"aad"
    enc, hct = hpke.seal(pk, info, aad, pt64, rng=os.urandom)
    out.append(
        Row(
            "HPKE seal 64 B",
            measure(lambda: hpke.seal(pk, info, aad, pt64, rng=os.urandom), fast),
            None,
            "X25519, HKDF-SHA256, ChaCha20-Poly1305; no py-ecc reference",
        )
    )
    out.append(
        Row(
            "HPKE open 64 B",
            measure(lambda: hpke.open(enc, sk, info, aad, hct), fast),
            None,
            "no py-ecc reference",
        )
    )
    return out


def _vss_row(profile: Profile, progress: Callable[[str], None]) -> Row:
    """64 deals of degree 42 checked by one recipient, decoding included."""
    progress(f"VSS: dealing {VSS_DEALS} polynomials of degree {VSS_DEGREE}")
    polys = [
        Polynomial.random(VSS_DEGREE, lambda: random_scalar(os.urandom)) for _ in range(VSS_DEALS)
    ]
    wire = [[a.to_bytes() for a in commit(poly)] for poly in polys]
    shares = [poly(VSS_RECIPIENT) for poly in polys]

    def recipient() -> None:
        claims = [
            ShareClaim(
                ParticipantIndex(d + 1),
                VSS_RECIPIENT,
                tuple(G2.from_bytes(b) for b in wire[d]),
                shares[d],
            )
            for d in range(VSS_DEALS)
        ]
        verify_shares(claims)

    progress("VSS: batched verification")
    fast = measure(recipient, profile.vss_fast)

    progress("VSS: py-ecc per-share reference")
    deals = profile.vss_ref_deals
    x = int(VSS_RECIPIENT)

    def recipient_ref() -> None:
        for d in range(deals):
            coms = [_pyecc_g2(b) for b in wire[d]]
            acc = Z2
            for a in reversed(coms):  # Horner in the exponent: Σ A_k·x^k
                acc = add(multiply(acc, x), a)
            if not eq(multiply(PYECC_G2, shares[d]), acc):
                raise RuntimeError("reference rejected a valid share")

    t0 = measure(recipient_ref, Budget(0.0, 1), warmup=False)
    scale = VSS_DEALS / deals
    return Row(
        f"VSS batch verify {VSS_DEALS} deals, degree {VSS_DEGREE} (recipient)",
        fast,
        Reference(t0.median * scale, f"1 ({deals} deal{_s(deals)})", True),
        f"incl. decoding {VSS_DEALS}×{VSS_DEGREE + 1} G2 points; transcript-hash coefficients; "
        f"reference: per-share check of {deals} deal{_s(deals)}, {format_seconds(t0.median)}, ×{scale:g}",
        VSS_TARGET,
    )


def _s(n: int) -> str:
    return "" if n == 1 else "s"
