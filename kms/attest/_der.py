"""A minimal DER encoder (ITU-T X.690 §8 and §10), enough for X.509 certificates and CRLs.

Only what the simulated PKI needs: definite lengths, non-negative INTEGERs,
OBJECT IDENTIFIERs, strings, times, BOOLEAN, ENUMERATED, BIT STRING and
context-specific tags. Everything is encoded canonically, so the same inputs
always give the same bytes.
"""

from __future__ import annotations

from kms.attest._time import asn1_time

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_UTF8_STRING = 0x0C
TAG_PRINTABLE_STRING = 0x13
TAG_UTC_TIME = 0x17
TAG_GENERALIZED_TIME = 0x18
TAG_SEQUENCE = 0x30
TAG_SET = 0x31


def tlv(tag: int, content: bytes) -> bytes:
    """Tag, definite length (X.690 §8.1.3, short form below 128), content."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def integer(value: int) -> bytes:
    """A non-negative INTEGER in minimal two's complement (X.690 §8.3)."""
    if value < 0:
        raise ValueError("only non-negative integers are encoded")
    return tlv(TAG_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def enumerated(value: int) -> bytes:
    if value < 0:
        raise ValueError("only non-negative enumerated values are encoded")
    return tlv(TAG_ENUMERATED, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def boolean(value: bool) -> bytes:
    return tlv(TAG_BOOLEAN, b"\xff" if value else b"\x00")


def octet_string(value: bytes) -> bytes:
    return tlv(TAG_OCTET_STRING, value)


def bit_string(value: bytes, unused_bits: int = 0) -> bytes:
    if not 0 <= unused_bits <= 7:
        raise ValueError("unused bits must be 0..7")
    return tlv(TAG_BIT_STRING, bytes([unused_bits]) + value)


def named_bits(*bits: int) -> bytes:
    """A BIT STRING of named bits (X.690 §11.2.2: trailing zero bits removed)."""
    if not bits:
        return bit_string(b"")
    top = max(bits)
    width = top // 8 + 1
    acc = 0
    for b in bits:
        acc |= 1 << (width * 8 - 1 - b)
    return bit_string(acc.to_bytes(width, "big"), width * 8 - 1 - top)


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER (X.690 §8.19)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"invalid OID {dotted!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return tlv(TAG_OID, bytes(out))


def utf8_string(value: str) -> bytes:
    return tlv(TAG_UTF8_STRING, value.encode())


def printable_string(value: str) -> bytes:
    return tlv(TAG_PRINTABLE_STRING, value.encode("ascii"))


def x509_time(unix_seconds: int) -> bytes:
    """RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050."""
    text, generalized = asn1_time(unix_seconds)
    return tlv(TAG_GENERALIZED_TIME if generalized else TAG_UTC_TIME, text.encode("ascii"))


def sequence(*items: bytes) -> bytes:
    return tlv(TAG_SEQUENCE, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """A SET OF, its elements sorted by encoding (X.690 §11.6)."""
    return tlv(TAG_SET, b"".join(sorted(items)))


def explicit(number: int, content: bytes) -> bytes:
    """A context-specific constructed tag ``[number] EXPLICIT``."""
    return tlv(0xA0 | number, content)


def implicit_primitive(number: int, content: bytes) -> bytes:
    """A context-specific primitive tag ``[number] IMPLICIT`` over primitive content."""
    return tlv(0x80 | number, content)
