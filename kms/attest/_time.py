"""Unix seconds to and from calendar time, without a clock.

Only the proleptic Gregorian calendar in UTC is needed (RFC 3339 for Intel's
collateral JSON, X.680 UTCTime / GeneralizedTime for X.509), so the
conversion is the days-from-civil algorithm (H. Hinnant, "chrono-Compatible
Low-Level Date Algorithms") rather than the ``datetime`` module, which this
package does not import.
"""

from __future__ import annotations

import re

_DAY = 86_400
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z"
)


def days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a Gregorian date."""
    y = year - (month <= 2)
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The Gregorian ``(year, month, day)`` of a day count since 1970-01-01."""
    z = days + 719_468
    era = (z if z >= 0 else z - 146_096) // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _fields(unix_seconds: int) -> tuple[int, int, int, int, int, int]:
    days, secs = divmod(unix_seconds, _DAY)
    year, month, day = civil_from_days(days)
    return year, month, day, secs // 3600, secs // 60 % 60, secs % 60


def rfc3339(unix_seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ``, the form of Intel's ``issueDate`` / ``nextUpdate``."""
    y, mo, d, h, mi, s = _fields(unix_seconds)
    if not 0 <= y <= 9999:
        raise ValueError("time outside years 0000..9999")
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z"


def parse_rfc3339(text: str) -> int:
    """Unix seconds of an RFC 3339 date-time (fractions truncated); ``ValueError`` if malformed."""
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and s <= 60):
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    offset = 0
    zone = m.group(8)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return days_from_civil(y, mo, d) * _DAY + h * 3600 + mi * 60 + s - offset


def asn1_time(unix_seconds: int) -> tuple[str, bool]:
    """The X.509 time text and whether it is a GeneralizedTime (RFC 5280 §4.1.2.5)."""
    y, mo, d, h, mi, s = _fields(unix_seconds)
    if 1950 <= y <= 2049:
        return f"{y % 100:02d}{mo:02d}{d:02d}{h:02d}{mi:02d}{s:02d}Z", False
    if not 0 <= y <= 9999:
        raise ValueError("time outside years 0000..9999")
    return f"{y:04d}{mo:02d}{d:02d}{h:02d}{mi:02d}{s:02d}Z", True
