"""Threshold key derivation (TKD): app keys as threshold BLS evaluations.

Node ``i`` holding share ``s_i`` returns the partial ``P_i = s_i·H(id)`` with
``H = hash_to_g1(id, DST_DERIVE)``. Any ``t`` partials combine by Lagrange
interpolation in the exponent to ``σ = s·H(id)``, checked with one pairing
equation ``e(σ, g2) == e(H, MPK)``. The 32-byte app key is
``HKDF-SHA256(ikm=σ, salt=APP_KEY_SALT, info=id)``; typed keys follow from it
(``mpc.tkd.keys``). Specification: ``docs/crypto.md``.
"""

from mpc.tkd.derive import (
    DST_DERIVE,
    AppKey,
    DerivedPoint,
    Partial,
    combine,
    combine_and_verify,
    derive_partial,
    derive_point_base,
    verify_combined,
    verify_partial,
)
from mpc.tkd.ids import KeyId, encode_id
from mpc.tkd.keys import TypedKeys, typed_keys

__all__ = [
    "DST_DERIVE",
    "AppKey",
    "DerivedPoint",
    "KeyId",
    "Partial",
    "TypedKeys",
    "combine",
    "combine_and_verify",
    "derive_partial",
    "derive_point_base",
    "encode_id",
    "typed_keys",
    "verify_combined",
    "verify_partial",
]
