"""BLS12-381 math: the frozen public API over the native backends.

``G1``, ``G2`` (points), ``hash_to_g1``, ``hash_to_g2`` (RFC 9380) and
``pairing_check`` are what other code and outside checks rely on.
"""

from mpc.math.curve import G1, G2
from mpc.math.fields import P, R
from mpc.math.hash_to_curve import expand_message_xmd, hash_to_g1, hash_to_g2
from mpc.math.pairing import GT_SIZE, pairing, pairing_check

__all__ = [
    "G1",
    "G2",
    "GT_SIZE",
    "P",
    "R",
    "expand_message_xmd",
    "hash_to_g1",
    "hash_to_g2",
    "pairing",
    "pairing_check",
]
