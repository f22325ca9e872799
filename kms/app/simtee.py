"""A simulated TDX platform kept in a directory (``kms tee init``), and measurement files.

A **TEE directory** holds:

* ``seed`` (mode 0600): 32 random bytes (hex) and the creation time (Unix seconds).
  Everything else is rebuilt from it, so whoever reads it can mint quotes that every
  node configured with this TEE's ``root.der`` accepts: development only;
* ``root.der``: the simulated Intel root CA (``[node] simulated_root_ca``);
* ``collateral.json``: collateral for the simulated platform, valid 30 days from the
  creation time (``[node] collateral_file``);
* ``node.measurement.toml`` and ``app.measurement.toml``: random registers for a
  simulated KMS node image and a simulated app image.

A **measurement file** is TOML with ``mr_td``, ``rtmr0``, ``rtmr1``, ``rtmr2`` (48 bytes,
hex) and exactly one of ``rtmr3`` (48 bytes) or ``compose_hash`` (32 bytes): what a
:class:`kms.policy.Measurement` holds. Any other key is an error naming it.

The simulated TEE quotes a measurement with ``rtmr3`` as it stands. For a ``compose_hash``
measurement it boots like dstack: it builds the RTMR3 event log of the boot events
(``system-preparing``, ``app-id``, ``compose-hash``, ``instance-id``, ``boot-mr-done``,
:func:`kms.policy.dstack_boot_events`) for the app asked about, quotes the RTMR3 that log
replays to, and hands the log to the client (:func:`cvm_quote_source`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kms.attest.simulated import SimulatedTEE
from kms.policy import Measurement, build_event_log, dstack_boot_events
from kms.secretfile import write_secret

SEED_FILE = "seed"
ROOT_FILE = "root.der"
COLLATERAL_FILE = "collateral.json"
NODE_MEASUREMENT_FILE = "node.measurement.toml"
APP_MEASUREMENT_FILE = "app.measurement.toml"
COLLATERAL_LIFETIME = 30 * 86400
REGISTERS = ("mr_td", "rtmr0", "rtmr1", "rtmr2")
SIZES = {"mr_td": 48, "rtmr0": 48, "rtmr1": 48, "rtmr2": 48, "rtmr3": 48, "compose_hash": 32}


class TEEError(ValueError):
    """A TEE directory or a measurement file that cannot be used (the message says why)."""


def seed_path(tee_dir: Path) -> Path:
    """The seed file of ``tee_dir``; a devnet directory (whose TEE is ``simulated-tee/``)
    is accepted too, as devnet configs made before TEE directories name it."""
    tee_dir = Path(tee_dir)
    if not (tee_dir / SEED_FILE).exists() and (tee_dir / "simulated-tee" / SEED_FILE).exists():
        return tee_dir / "simulated-tee" / SEED_FILE
    return tee_dir / SEED_FILE


def node_measurement(tee_dir: Path) -> Measurement | None:
    """The TEE directory's ``node.measurement.toml`` (None when it has none, as in TEE
    directories of devnets made before measurement files)."""
    path = seed_path(tee_dir).parent / NODE_MEASUREMENT_FILE
    return load_measurement(path) if path.exists() else None


def load(tee_dir: Path) -> SimulatedTEE:
    """The simulated TDX platform of ``tee_dir``, rebuilt from its seed (reproducible)."""
    path = seed_path(tee_dir)
    try:
        raw = path.read_text().split()
        seed, now = bytes.fromhex(raw[0]), int(raw[1])
    except FileNotFoundError:
        raise TEEError(
            f"{tee_dir} is not a TEE directory (no {SEED_FILE}): run `kms tee init`"
        ) from None
    except (OSError, ValueError, IndexError) as exc:
        raise TEEError(f"cannot read {path}: {exc}") from None
    counter = [0]

    def rng(n: int) -> bytes:
        out = b""
        while len(out) < n:
            counter[0] += 1
            out += hashlib.sha256(seed + counter[0].to_bytes(8, "big")).digest()
        return out[:n]

    return SimulatedTEE(rng, now=now)


def random_measurement() -> dict[str, bytes]:
    """Random 48-byte registers (mr_td, rtmr0..rtmr3), from the OS CSPRNG."""
    return {name: secrets.token_bytes(48) for name in (*REGISTERS, "rtmr3")}


def measurement_toml(registers: dict[str, bytes]) -> str:
    lines = ["# A TDX measurement: MRTD and RTMR0-2, and RTMR3 or a dstack compose hash (hex)."]
    for name in (*REGISTERS, "rtmr3", "compose_hash"):
        if registers.get(name) is not None:
            lines.append(f'{name} = "{registers[name].hex()}"')
    return "\n".join(lines) + "\n"


def init(
    tee_dir: Path,
    *,
    node_measurement: dict[str, bytes] | None = None,
    app_measurement: dict[str, bytes] | None = None,
    now: int | None = None,
) -> dict[str, Any]:
    """Create a TEE directory (see the module docstring); refuses one that has a seed.

    The measurement files get the registers given, random ones otherwise."""
    tee_dir = Path(tee_dir)
    if (tee_dir / SEED_FILE).exists():
        raise TEEError(f"{tee_dir / SEED_FILE} exists: this is a TEE directory already")
    try:
        tee_dir.mkdir(parents=True, exist_ok=True)
        created = int(time.time()) if now is None else now
        write_secret(tee_dir / SEED_FILE, f"{secrets.token_hex(32)} {created}\n", replace=False)
        tee = load(tee_dir)
        (tee_dir / ROOT_FILE).write_bytes(tee.root_ca_der)
        collateral = tee.collateral(created, lifetime=COLLATERAL_LIFETIME)
        (tee_dir / COLLATERAL_FILE).write_text(json.dumps(collateral))
        node_m = node_measurement or random_measurement()
        app_m = app_measurement or random_measurement()
        (tee_dir / NODE_MEASUREMENT_FILE).write_text(measurement_toml(node_m))
        (tee_dir / APP_MEASUREMENT_FILE).write_text(measurement_toml(app_m))
    except OSError as exc:
        raise TEEError(f"cannot create the TEE directory {tee_dir}: {exc}") from None
    return {
        "dir": str(tee_dir.resolve()),
        "root_ca": str((tee_dir / ROOT_FILE).resolve()),
        "collateral": str((tee_dir / COLLATERAL_FILE).resolve()),
        "collateral_expires": created + COLLATERAL_LIFETIME,
        "node_measurement": str((tee_dir / NODE_MEASUREMENT_FILE).resolve()),
        "app_measurement": str((tee_dir / APP_MEASUREMENT_FILE).resolve()),
    }


def measurement_from_table(table: dict[str, Any], where: str) -> Measurement:
    """A measurement from a TOML table (see the module docstring); ``TEEError`` naming
    ``where`` and the key otherwise."""
    for key in table:
        if key not in SIZES:
            raise TEEError(
                f"{where}: unknown key {key!r} (a measurement has mr_td, rtmr0, rtmr1, "
                "rtmr2 and rtmr3 or compose_hash)"
            )
    values: dict[str, bytes] = {}
    for key, value in table.items():
        try:
            raw = bytes.fromhex(value) if isinstance(value, str) else None
        except ValueError:
            raw = None
        if raw is None or len(raw) != SIZES[key]:
            raise TEEError(f"{where}: {key} must be {SIZES[key]} bytes in hex")
        values[key] = raw
    for key in REGISTERS:
        if key not in values:
            raise TEEError(f"{where}: {key} is missing")
    if ("rtmr3" in values) == ("compose_hash" in values):
        raise TEEError(f"{where}: give exactly one of rtmr3 and compose_hash")
    if "rtmr3" in values:
        return Measurement.explicit(**values)
    return Measurement.compose(**values)


def load_measurement(path: Path) -> Measurement:
    """The measurement in a measurement file; ``TEEError`` naming the file and the key."""
    try:
        table = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise TEEError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TEEError(f"{path}: not TOML: {exc}") from None
    return measurement_from_table(table, str(path))


def registers(m: Measurement) -> dict[str, bytes]:
    """The five registers of an explicit measurement (``rtmr3`` set)."""
    if m.rtmr3 is None:
        raise TEEError("the measurement pins a compose hash: its RTMR3 comes from an event log")
    return {
        "mr_td": m.mr_td,
        "rtmr0": m.rtmr0,
        "rtmr1": m.rtmr1,
        "rtmr2": m.rtmr2,
        "rtmr3": m.rtmr3,
    }


def quote_source(tee_dir: Path, measurement: Measurement) -> Callable[[bytes], bytes]:
    """Quotes of a TD with ``measurement`` (RTMR3 pinned) on the simulated TEE of ``tee_dir``."""
    tee = load(tee_dir)
    regs = registers(measurement)

    def quote(report_data: bytes) -> bytes:
        return bytes(
            tee.quote(
                report_data,
                mr_td=regs["mr_td"],
                rtmr0=regs["rtmr0"],
                rtmr1=regs["rtmr1"],
                rtmr2=regs["rtmr2"],
                rtmr3=regs["rtmr3"],
            )
        )

    return quote


@dataclass(frozen=True)
class SimulatedCVM:
    """A CVM on the simulated TEE: its quotes and the RTMR3 event log it sends (empty for
    a measurement that pins RTMR3)."""

    quote: Callable[[bytes], bytes]
    event_log: bytes


def cvm_quote_source(
    tee_dir: Path, measurement: Measurement, app_id: bytes, *, instance_id: bytes = b""
) -> SimulatedCVM:
    """The simulated CVM of app ``app_id`` running ``measurement``.

    With a compose hash, it boots like dstack: its RTMR3 is the replay of the boot
    events (app id, compose hash, ``instance_id``, empty by default) and it sends that log."""
    if measurement.compose_hash is None:
        return SimulatedCVM(quote_source(tee_dir, measurement), b"")
    log, rtmr3 = build_event_log(
        dstack_boot_events(
            app_id=app_id, compose_hash=measurement.compose_hash, instance_id=instance_id
        )
    )
    explicit = Measurement.explicit(
        mr_td=measurement.mr_td,
        rtmr0=measurement.rtmr0,
        rtmr1=measurement.rtmr1,
        rtmr2=measurement.rtmr2,
        rtmr3=rtmr3,
    )
    return SimulatedCVM(quote_source(tee_dir, explicit), log.encode())
