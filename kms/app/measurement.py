"""Measurement files: one TDX image, as a TOML file, for node and app policies.

Keys ``mr_td``, ``rtmr0``, ``rtmr1``, ``rtmr2`` (hex, 48 bytes each) and either
``rtmr3`` (48 bytes) or ``compose_hash`` (32 bytes, a dstack compose hash): what
``kms.policy.Measurement`` holds. No other key is accepted.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from kms.policy import Measurement, PolicyError

REGISTERS = ("mr_td", "rtmr0", "rtmr1", "rtmr2")


class MeasurementError(ValueError):
    """A measurement file is missing, malformed or incomplete (one line, naming the file)."""


def load_measurement(path: str | Path) -> Measurement:
    """The ``Measurement`` a measurement file describes; ``MeasurementError`` if refused."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise MeasurementError(f"cannot read the measurement file {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MeasurementError(f"{path}: not a TOML measurement file: {exc}") from exc
    allowed = (*REGISTERS, "rtmr3", "compose_hash")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise MeasurementError(f"{path}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")
    missing = [k for k in REGISTERS if k not in doc]
    if missing or ("rtmr3" in doc) == ("compose_hash" in doc):
        raise MeasurementError(
            f"{path}: needs mr_td, rtmr0, rtmr1, rtmr2 and exactly one of rtmr3 and compose_hash"
        )
    values: dict[str, bytes] = {}
    for key, value in doc.items():
        try:
            values[key] = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            values[key] = b""
        size = 32 if key == "compose_hash" else 48
        if len(values[key]) != size:
            raise MeasurementError(f"{path}: {key} must be {size} bytes of hex")
    try:
        measurement = Measurement(**values)
        measurement.validate()
    except (PolicyError, ValueError) as exc:
        raise MeasurementError(f"{path}: {exc}") from exc
    return measurement
