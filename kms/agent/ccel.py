"""A bounded parser of the TDX boot-time event log (the ACPI ``CCEL`` table's log area).

A TDX guest's firmware records what it extends into RTMR0–2 in the CC event log, which
Linux exposes as ``/sys/firmware/acpi/tables/data/CCEL``. The format is the TCG PC Client
*crypto-agile* event log:

1. one header event in the legacy SHA-1 layout: ``imr_index u32``, ``event_type u32``,
   a 20-byte digest, ``event_size u32`` and ``event_size`` bytes of a
   ``TCG_EfiSpecIdEvent`` (16-byte signature ``"Spec ID Event03\\0"``, platform class
   u32, three version bytes, ``uintn_size`` u8, ``algorithm_count`` u32, then
   ``(algorithm_id u16, digest_size u16)`` per algorithm, ``vendor_info_size`` u8 and the
   vendor info);
2. ``TCG_PCR_EVENT2`` records: ``imr_index u32``, ``event_type u32``, ``digest_count
   u32``, ``(algorithm_id u16, digest)`` per digest (its size from the header's table),
   ``event_size u32`` and the event data.

All integers are little-endian. The log ends at an ``imr_index`` of ``0xFFFFFFFF``, at
the end of the data, or where only padding (all ``0xFF`` or all zero bytes) is left:
the kernel exposes the whole log area, not only the used part.

What this module makes of it (dstack's ``TdxEvent`` JSON shape): ``imr = imr_index − 1``
(index 1 is RTMR0; index 0 is MRTD, which no JSON event describes, and is skipped as
dstack skips it), the event's SHA-384 digest (algorithm ``0x000C``, 48 bytes; a log
without SHA-384 is refused), ``event = ""`` and the event data as ``event_payload``.
``EV_NO_ACTION`` records (event type 3) are informational and never extended into a
register (TCG PC Client profile), so they are skipped too: replaying the kept events'
digests gives the registers.

Everything is bounded: the input size (:data:`MAX_CCEL_SIZE`), the number of events
(:data:`MAX_CCEL_EVENTS`) and the number of algorithms; every length is checked against
the bytes left. Any violation is a :class:`CcelError` naming the offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "EV_NO_ACTION",
    "MAX_CCEL_EVENTS",
    "MAX_CCEL_SIZE",
    "SHA384_ALGORITHM",
    "SPEC_ID_SIGNATURE",
    "CcelError",
    "CcelEvent",
    "parse_ccel",
]

MAX_CCEL_SIZE: Final = 4 * 1024 * 1024
"""Largest CCEL accepted, in bytes (the log area a TDX firmware reserves is far smaller)."""

MAX_CCEL_EVENTS: Final = 4096
"""Most records accepted (the same bound as a dstack JSON event log's)."""

MAX_ALGORITHMS: Final = 16
SHA384_ALGORITHM: Final = 0x000C
SHA384_SIZE: Final = 48
EV_NO_ACTION: Final = 0x3
SPEC_ID_SIGNATURE: Final = b"Spec ID Event03\0"
END_MARKER: Final = 0xFFFFFFFF
MAX_IMR_INDEX: Final = 4
"""``imr_index`` 1–4 are RTMR0–3."""


class CcelError(ValueError):
    """The CCEL is truncated, oversized or malformed (the message names the offset)."""


@dataclass(frozen=True, slots=True)
class CcelEvent:
    """One boot-time event of the log, in dstack's zero-based terms."""

    imr: int
    """RTMR index: ``imr_index − 1``."""
    event_type: int
    digest: bytes
    """The SHA-384 digest extended into the register (48 bytes)."""
    data: bytes
    """The event data (dstack's ``event_payload``)."""

    def to_json(self) -> dict[str, object]:
        """dstack's ``TdxEvent`` JSON object of this event (full digest, hex payload)."""
        return {
            "imr": self.imr,
            "event_type": self.event_type,
            "digest": self.digest.hex(),
            "event": "",
            "event_payload": self.data.hex(),
        }


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CcelError(
                f"truncated at offset {self.pos}: {what} needs {n} bytes, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def rest_is_padding(self) -> bool:
        rest = self.data[self.pos :]
        return not rest.strip(b"\xff") or not rest.strip(b"\0")


def _spec_id(r: _Reader) -> dict[int, int]:
    """The header event; returns the digest size of each algorithm it declares."""
    r.u32("header imr_index")
    r.u32("header event_type")
    r.take(20, "header SHA-1 digest")
    size = r.u32("header event_size")
    body = _Reader(r.take(size, "the spec id event"))
    if body.take(16, "spec id signature") != SPEC_ID_SIGNATURE:
        raise CcelError("offset 32: not a crypto-agile log (no 'Spec ID Event03' header)")
    body.u32("platform class")
    body.take(3, "spec version")
    body.u8("uintn size")
    count = body.u32("algorithm count")
    if not 1 <= count <= MAX_ALGORITHMS:
        raise CcelError(f"the header declares {count} digest algorithms")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg, digest_size = body.u16("algorithm id"), body.u16("digest size")
        if alg in sizes or not 1 <= digest_size <= 64:
            raise CcelError(f"the header declares algorithm {alg:#06x} badly")
        sizes[alg] = digest_size
    body.take(body.u8("vendor info size"), "vendor info")
    if sizes.get(SHA384_ALGORITHM) != SHA384_SIZE:
        raise CcelError("the log carries no SHA-384 digests (TDX extends RTMRs with SHA-384)")
    return sizes


def parse_ccel(data: bytes) -> list[CcelEvent]:
    """The events of a CCEL log area that extend RTMR0–3, in log order.

    Raises :class:`CcelError` for a log larger than :data:`MAX_CCEL_SIZE`, one that ends
    inside a record, has more than :data:`MAX_CCEL_EVENTS` records, declares no SHA-384
    digests, gives a record digests other than the declared algorithms, or names an IMR
    past RTMR3.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("the CCEL must be bytes")
    data = bytes(data)
    if len(data) > MAX_CCEL_SIZE:
        raise CcelError(f"{len(data)} bytes, more than the {MAX_CCEL_SIZE} accepted")
    r = _Reader(data)
    sizes = _spec_id(r)
    events: list[CcelEvent] = []
    records = 0
    while r.pos < len(data) and not r.rest_is_padding():
        start = r.pos
        imr_index = r.u32("imr_index")
        if imr_index == END_MARKER:
            break
        records += 1
        if records > MAX_CCEL_EVENTS:
            raise CcelError(f"more than {MAX_CCEL_EVENTS} events")
        event_type = r.u32("event_type")
        count = r.u32("digest count")
        if count != len(sizes):
            raise CcelError(
                f"offset {start}: the event carries {count} digests, the header declares "
                f"{len(sizes)} algorithms"
            )
        digests: dict[int, bytes] = {}
        for _ in range(count):
            alg = r.u16("digest algorithm")
            if alg not in sizes or alg in digests:
                raise CcelError(f"offset {start}: digest algorithm {alg:#06x} not declared once")
            digests[alg] = r.take(sizes[alg], "digest")
        payload = r.take(r.u32("event_size"), "event data")
        if imr_index > MAX_IMR_INDEX:
            raise CcelError(f"offset {start}: imr_index {imr_index} is not an RTMR")
        if imr_index == 0 or event_type == EV_NO_ACTION:
            continue
        events.append(CcelEvent(imr_index - 1, event_type, digests[SHA384_ALGORITHM], payload))
    return events
