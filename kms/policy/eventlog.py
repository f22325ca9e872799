"""Replay of a dstack RTMR3 event log, and the compose hash it carries.

A dstack CVM's initrd and guest agent extend RTMR3 with *runtime events* and
keep a log of them; the quote signs only the final RTMR3. Replaying the log and
comparing the result with the quote's RTMR3 proves the log is the one that was
measured; the ``compose-hash`` event then names the app's compose file.

Pinned facts (Dstack-TEE/dstack, read from these files):

* ``cc-eventlog/src/runtime_events.rs`` (commit ``270aaf8f71b67fd17db231f7d38a9b09c2b4719a``):
  runtime events have event type ``DSTACK_RUNTIME_EVENT_TYPE = 0x08000001``
  (134217729, "not defined in the TCG specification"). The version-1 digest of
  an event is ``SHA-384(u32_le(0x08000001) ‖ b":" ‖ event_name ‖ b":" ‖ payload)``
  (``RuntimeEvent::hash_input``, test ``v1_digest_unchanged``: "v1 digest must
  be backward compatible"). ``replay_events`` starts from 48 zero bytes and sets
  ``mr = SHA-384(mr ‖ digest)`` for each event in log order.
* ``cc-eventlog/src/tdx.rs`` (commit ``1988d17ea7fab79f5e6fdaacf6c7940e84a50ecc``):
  the JSON event (``TdxEvent``) is an object with ``imr`` (the RTMR index,
  zero-based: runtime events have ``imr = 3``), ``event_type``, ``digest`` (hex;
  may be absent, as serde ``default``), ``event`` (the name), ``event_payload``
  (hex), ``version`` (omitted for version 1) and ``hash_input`` (optional hex of
  the digest pre-image). For a runtime event, ``TdxEvent::digest`` recomputes the
  digest from the name and payload instead of trusting the recorded one.
* ``docs/attestation-tdx.md``: MRTD and RTMR0–2 can be computed from the built
  image; RTMR3 holds the app details (compose hash, instance id, app id, key
  provider) and is verified by replaying the event log.
* ``dstack-util/src/system_setup.rs`` (``measure_app_info``): ``compose_hash =
  sha256_file(app-compose.json)``, and the raw 32-byte digest is the payload of
  ``extend_rtmr3("compose-hash", &compose_hash)``. The initrd extends, in order,
  ``system-preparing``, ``app-id``, ``compose-hash``, ``instance-id``,
  ``boot-mr-done``; later events (``key-provider``, ``os-image-hash``,
  ``mr-kms``, ``system-ready``, events the app emits) follow.
* The dstack Python SDK (``GetQuoteResponse.replay_rtmrs``) replays each RTMR
  from the events whose ``imr`` equals its index, zero-padding a digest shorter
  than 48 bytes (runtime-event digests are always 48).

The tests replay the event log of a real dstack CVM (its tcb_info, published
in near/mpc's attestation tests) to that CVM's RTMR3 and recover its compose
hash as ``SHA-256`` of its ``app-compose.json``: the rule above reproduces
dstack's own output.

dstack has since added an event-log *version 2* (the digest of a JCS JSON
object), but the revisions read disagree on that object's keys
(``{"event","event_type","payload","version"}`` in ``runtime_events.rs`` at the
commit above, ``{"name","payload","type"}`` in the doc comments and tests of
``tdx.rs`` and ``dstack_types``), so it is not pinned here: an RTMR3 event with
``"version": 2`` is refused as ``UNSUPPORTED_EVENT`` rather than guessed at.

The rules this module applies:

1. The log is a JSON array (at most :data:`MAX_EVENT_LOG_SIZE` bytes and
   :data:`MAX_EVENTS` events) of objects with exactly the keys above; duplicate
   keys, non-integer numbers, bad hex and unknown keys are ``MALFORMED``.
2. Events with ``imr`` 0–2 are boot-time events of RTMR0–2, whose values the
   quote carries and the policy pins directly; they are checked for shape and
   otherwise ignored.
3. Every ``imr = 3`` event must be a version-1 runtime event (otherwise
   ``UNSUPPORTED_EVENT``: its digest could not be recomputed, so its payload
   would not be bound). Its digest is recomputed from its name and payload; a
   non-empty recorded ``digest`` that differs is ``DIGEST_MISMATCH``.
4. Replaying the recomputed digests from 48 zero bytes must give the quote's
   RTMR3 (``REPLAY_MISMATCH``).
5. Exactly one ``compose-hash`` event must be present (``MISSING_COMPOSE_HASH``,
   ``DUPLICATE_COMPOSE_HASH``), with a 32-byte payload: that is the compose hash.

:func:`build_event_log` produces a log and its RTMR3 in the same shape, for
tests and the simulated TEE.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from mpc.codec import json_nesting_depth
from mpc.errors import LocalProtocolError

from .errors import EventLogError, EventLogFailure

__all__ = [
    "COMPOSE_HASH_EVENT",
    "DSTACK_RUNTIME_EVENT_TYPE",
    "MAX_EVENTS",
    "MAX_EVENT_LOG_SIZE",
    "RTMR3_INDEX",
    "RTMR_LENGTH",
    "LogEvent",
    "ReplayedLog",
    "build_event_log",
    "compose_hash_from_event_log",
    "compose_hash_of",
    "dstack_boot_events",
    "parse_event_log",
    "replay_rtmr3",
    "runtime_event_digest",
]

DSTACK_RUNTIME_EVENT_TYPE: Final = 0x08000001
"""dstack's event type for runtime events (``cc-eventlog/src/runtime_events.rs``)."""

RTMR3_INDEX: Final = 3
"""``imr`` of RTMR3 in dstack's zero-based JSON log."""

RTMR_LENGTH: Final = 48
COMPOSE_HASH_EVENT: Final = "compose-hash"
COMPOSE_HASH_LENGTH: Final = 32

MAX_EVENT_LOG_SIZE: Final = 1024 * 1024
"""Largest event log accepted, in bytes of JSON."""

MAX_EVENTS: Final = 4096
"""Most events accepted in one log (boot-time events included)."""

_REQUIRED_KEYS: Final = frozenset({"imr", "event_type", "event", "event_payload"})
_OPTIONAL_KEYS: Final = frozenset({"digest", "version", "hash_input"})
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")
_U32_MAX: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One parsed event of the log."""

    imr: int
    event_type: int
    name: str
    payload: bytes
    digest: bytes
    """The digest as recorded (possibly empty); for RTMR3 events the replay uses
    :func:`runtime_event_digest` instead."""


@dataclass(frozen=True, slots=True)
class ReplayedLog:
    """An RTMR3 log that replays to ``rtmr3``, and the compose hash it names."""

    rtmr3: bytes
    compose_hash: bytes
    events: tuple[LogEvent, ...]
    """The RTMR3 events, in log order."""


def _fail(reason: EventLogFailure, detail: str) -> EventLogError:
    return EventLogError(reason, detail)


def runtime_event_digest(name: str, payload: bytes) -> bytes:
    """dstack's version-1 runtime event digest:
    ``SHA-384(u32_le(0x08000001) ‖ ":" ‖ name ‖ ":" ‖ payload)``."""
    return hashlib.sha384(
        DSTACK_RUNTIME_EVENT_TYPE.to_bytes(4, "little")
        + b":"
        + name.encode("utf-8")
        + b":"
        + payload
    ).digest()


def _extend(register: bytes, digest: bytes) -> bytes:
    """``SHA-384(register ‖ digest)``, the digest zero-padded to 48 bytes."""
    return hashlib.sha384(register + digest.ljust(RTMR_LENGTH, b"\0")).digest()


def compose_hash_of(app_compose: bytes) -> bytes:
    """dstack's compose hash: ``SHA-256`` of the ``app-compose.json`` file's bytes."""
    return hashlib.sha256(app_compose).digest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _hex(where: str, value: object, *, max_len: int | None = None) -> bytes:
    if not isinstance(value, str) or _HEX_RE.fullmatch(value) is None:
        raise _fail(EventLogFailure.MALFORMED, f"{where}: expected a hex string")
    raw = bytes.fromhex(value)
    if max_len is not None and len(raw) > max_len:
        raise _fail(EventLogFailure.MALFORMED, f"{where}: longer than {max_len} bytes")
    return raw


def _u32(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32_MAX:
        raise _fail(EventLogFailure.MALFORMED, f"{where}: expected an unsigned 32-bit integer")
    return value


def _parse_event(i: int, raw: object) -> LogEvent:
    where = f"event {i}"
    if not isinstance(raw, dict):
        raise _fail(EventLogFailure.MALFORMED, f"{where}: expected an object")
    keys = set(raw)
    if not _REQUIRED_KEYS <= keys:
        missing = ", ".join(sorted(_REQUIRED_KEYS - keys))
        raise _fail(EventLogFailure.MALFORMED, f"{where}: missing {missing}")
    if not keys <= _REQUIRED_KEYS | _OPTIONAL_KEYS:
        unknown = ", ".join(sorted(keys - _REQUIRED_KEYS - _OPTIONAL_KEYS))
        raise _fail(EventLogFailure.MALFORMED, f"{where}: unknown field {unknown}")
    imr = _u32(f"{where}.imr", raw["imr"])
    if imr > RTMR3_INDEX:
        raise _fail(EventLogFailure.MALFORMED, f"{where}.imr: {imr} is not an RTMR index")
    event_type = _u32(f"{where}.event_type", raw["event_type"])
    name = raw["event"]
    if not isinstance(name, str):
        raise _fail(EventLogFailure.MALFORMED, f"{where}.event: expected a string")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _fail(EventLogFailure.MALFORMED, f"{where}.event: not UTF-8") from exc
    payload = _hex(f"{where}.event_payload", raw["event_payload"])
    digest = _hex(f"{where}.digest", raw.get("digest", ""), max_len=RTMR_LENGTH)
    if "hash_input" in raw:
        _hex(f"{where}.hash_input", raw["hash_input"])
    version = raw.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version not in (1, 2):
        raise _fail(EventLogFailure.MALFORMED, f"{where}.version: must be 1 or 2")
    if version == 2 and imr == RTMR3_INDEX:
        raise _fail(
            EventLogFailure.UNSUPPORTED_EVENT,
            f"{where}: dstack event-log version 2 digests are not supported",
        )
    return LogEvent(imr, event_type, name, payload, digest)


MAX_JSON_DEPTH = 8
"""An event log is an array of flat objects: depth 2. Anything much deeper is refused."""


def parse_event_log(log: str | bytes) -> tuple[LogEvent, ...]:
    """Parse a dstack JSON event log (every register) and check its shape.

    Raises ``EventLogError(MALFORMED)`` (or ``UNSUPPORTED_EVENT`` for a
    version-2 RTMR3 event).
    """
    if isinstance(log, bytes | bytearray):
        if len(log) > MAX_EVENT_LOG_SIZE:
            raise _fail(EventLogFailure.MALFORMED, f"larger than {MAX_EVENT_LOG_SIZE} bytes")
        try:
            text = bytes(log).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(EventLogFailure.MALFORMED, "not UTF-8") from exc
    elif isinstance(log, str):
        text = log
    else:
        raise _fail(EventLogFailure.MALFORMED, "the event log must be JSON text")
    if len(text) > MAX_EVENT_LOG_SIZE:
        raise _fail(EventLogFailure.MALFORMED, f"larger than {MAX_EVENT_LOG_SIZE} bytes")
    if json_nesting_depth(text) > MAX_JSON_DEPTH:
        # json.loads recurses in C: deep nesting from a request must never reach it.
        raise _fail(EventLogFailure.MALFORMED, f"nested deeper than {MAX_JSON_DEPTH}")
    try:
        raw = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _fail(EventLogFailure.MALFORMED, f"not JSON: {exc}") from exc
    if not isinstance(raw, list):
        raise _fail(EventLogFailure.MALFORMED, "expected a JSON array of events")
    if len(raw) > MAX_EVENTS:
        raise _fail(EventLogFailure.MALFORMED, f"more than {MAX_EVENTS} events")
    return tuple(_parse_event(i, e) for i, e in enumerate(raw))


def _rtmr3_events(events: Sequence[LogEvent]) -> tuple[LogEvent, ...]:
    out = []
    for i, e in enumerate(events):
        if e.imr != RTMR3_INDEX:
            continue
        if e.event_type != DSTACK_RUNTIME_EVENT_TYPE:
            raise _fail(
                EventLogFailure.UNSUPPORTED_EVENT,
                f"event {i}: RTMR3 event of type {e.event_type:#x} is not a dstack runtime event",
            )
        if e.digest and e.digest != runtime_event_digest(e.name, e.payload):
            raise _fail(
                EventLogFailure.DIGEST_MISMATCH,
                f"event {i} ({e.name!r}): the recorded digest is not the digest of the event",
            )
        out.append(e)
    return tuple(out)


def replay_rtmr3(log: str | bytes, rtmr3: bytes) -> ReplayedLog:
    """Replay ``log`` against the quote's ``rtmr3`` and extract the compose hash.

    Applies the numbered rules of the module docstring; raises
    :class:`~kms.policy.errors.EventLogError`.
    """
    if not isinstance(rtmr3, bytes) or len(rtmr3) != RTMR_LENGTH:
        raise LocalProtocolError(f"rtmr3 must be {RTMR_LENGTH} bytes")
    events = _rtmr3_events(parse_event_log(log))
    register = bytes(RTMR_LENGTH)
    for e in events:
        register = _extend(register, runtime_event_digest(e.name, e.payload))
    if register != rtmr3:
        raise _fail(
            EventLogFailure.REPLAY_MISMATCH,
            f"the {len(events)} RTMR3 events replay to {register.hex()}, "
            f"the quote has {rtmr3.hex()}",
        )
    compose = [e for e in events if e.name == COMPOSE_HASH_EVENT]
    if not compose:
        raise _fail(EventLogFailure.MISSING_COMPOSE_HASH, "no compose-hash event in RTMR3")
    if len(compose) > 1:
        raise _fail(EventLogFailure.DUPLICATE_COMPOSE_HASH, f"{len(compose)} compose-hash events")
    if len(compose[0].payload) != COMPOSE_HASH_LENGTH:
        raise _fail(
            EventLogFailure.MALFORMED,
            f"the compose-hash payload is {len(compose[0].payload)} bytes, "
            f"not {COMPOSE_HASH_LENGTH}",
        )
    return ReplayedLog(rtmr3=rtmr3, compose_hash=compose[0].payload, events=events)


def compose_hash_from_event_log(log: str | bytes, rtmr3: bytes) -> bytes:
    """The compose hash of a log that replays to ``rtmr3`` (see :func:`replay_rtmr3`)."""
    return replay_rtmr3(log, rtmr3).compose_hash


def build_event_log(events: Iterable[tuple[str, bytes]]) -> tuple[str, bytes]:
    """A dstack-shaped JSON RTMR3 log of ``(name, payload)`` runtime events, and the
    RTMR3 it replays to (for tests and the simulated TEE)."""
    entries = []
    register = bytes(RTMR_LENGTH)
    for name, payload in events:
        digest = runtime_event_digest(name, payload)
        register = _extend(register, digest)
        entries.append(
            {
                "imr": RTMR3_INDEX,
                "event_type": DSTACK_RUNTIME_EVENT_TYPE,
                "digest": digest.hex(),
                "event": name,
                "event_payload": payload.hex(),
            }
        )
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False), register


def dstack_boot_events(
    *, app_id: bytes, compose_hash: bytes, instance_id: bytes = b""
) -> list[tuple[str, bytes]]:
    """The RTMR3 events dstack's initrd extends before asking for keys, in order:
    ``system-preparing``, ``app-id``, ``compose-hash``, ``instance-id``, ``boot-mr-done``."""
    if len(compose_hash) != COMPOSE_HASH_LENGTH:
        raise LocalProtocolError(f"compose_hash must be {COMPOSE_HASH_LENGTH} bytes")
    return [
        ("system-preparing", b""),
        ("app-id", app_id),
        (COMPOSE_HASH_EVENT, compose_hash),
        ("instance-id", instance_id),
        ("boot-mr-done", b""),
    ]
