"""Hashing to G1 and G2 (RFC 9380) and ``expand_message_xmd``.

Suites ``BLS12381G1_XMD:SHA-256_SSWU_RO_`` and ``BLS12381G2_XMD:SHA-256_SSWU_RO_``
(RFC 9380 §8.8.1, §8.8.2), computed by blst. A DST longer than 255 bytes is
first replaced by ``SHA-256("H2C-OVERSIZE-DST-" ‖ DST)`` (RFC 9380 §5.3.3),
since blst refuses long tags.
"""

from __future__ import annotations

import hashlib

import pyblst as _blst

from mpc.math.curve import G1, G2

MAX_DST_LEN = 255
_OVERSIZE_PREFIX = b"H2C-OVERSIZE-DST-"


def reduce_dst(dst: bytes) -> bytes:
    """RFC 9380 §5.3.3: hash a DST longer than 255 bytes down to 32 bytes."""
    if len(dst) > MAX_DST_LEN:
        return hashlib.sha256(_OVERSIZE_PREFIX + dst).digest()
    return dst


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 §5.3.1 ``expand_message_xmd`` with SHA-256 (long DSTs per §5.3.3)."""
    b_in_bytes, s_in_bytes = 32, 64
    dst = reduce_dst(dst)
    ell = -(-len_in_bytes // b_in_bytes)
    if ell > 255 or len_in_bytes > 65535 or len_in_bytes <= 0:
        raise ValueError("requested output length is out of range for expand_message_xmd")
    dst_prime = dst + bytes([len(dst)])
    z_pad = bytes(s_in_bytes)
    l_i_b_str = len_in_bytes.to_bytes(2, "big")
    msg_prime = z_pad + msg + l_i_b_str + b"\x00" + dst_prime
    b0 = hashlib.sha256(msg_prime).digest()
    b1 = hashlib.sha256(b0 + b"\x01" + dst_prime).digest()
    out = [b1]
    prev = b1
    for i in range(2, ell + 1):
        prev = hashlib.sha256(
            bytes(x ^ y for x, y in zip(b0, prev, strict=True)) + bytes([i]) + dst_prime
        ).digest()
        out.append(prev)
    return b"".join(out)[:len_in_bytes]


def _check_bytes(msg: bytes, dst: bytes) -> None:
    if not isinstance(msg, bytes | bytearray | memoryview):
        raise TypeError("hash_to_curve: msg must be bytes")
    if not isinstance(dst, bytes | bytearray | memoryview) or not dst:
        raise TypeError("hash_to_curve: dst must be non-empty bytes")


def hash_to_g1(msg: bytes, dst: bytes) -> G1:
    """RFC 9380 §3 ``hash_to_curve`` into G1 (suite ``BLS12381G1_XMD:SHA-256_SSWU_RO_``)."""
    _check_bytes(msg, dst)
    e = _blst.BlstP1Element.hash_to_group(bytes(msg), reduce_dst(bytes(dst)))
    return G1._wrap(e=e)


def hash_to_g2(msg: bytes, dst: bytes) -> G2:
    """RFC 9380 §3 ``hash_to_curve`` into G2 (suite ``BLS12381G2_XMD:SHA-256_SSWU_RO_``)."""
    _check_bytes(msg, dst)
    e = _blst.BlstP2Element.hash_to_group(bytes(msg), reduce_dst(bytes(dst)))
    return G2._wrap(e=e)
