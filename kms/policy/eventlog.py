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

**Grammar.** Names are free strings and the version-1 digest puts ``:``
between name and payload, so one digest has many readings:
``("compose-hash", H)`` with ``H[0] == 0x3a`` digests like ``("compose-hash:",
H[1:])``. Facts are therefore read only where a reading is forced. RTMR3 is
split into three segments:

1. the *boot prefix*: events 0–4 are exactly ``system-preparing``, ``app-id``,
   ``compose-hash``, ``instance-id``, ``boot-mr-done`` (names matched
   exactly; ``system-preparing`` and ``boot-mr-done`` carry no payload,
   ``app-id`` 20 bytes, ``compose-hash`` 32, ``instance-id`` any length, dstack
   uses 0 or 20). The app id, compose hash and instance id are read here and
   nowhere else (``BOOT_PREFIX``);
2. the *system segment*: the events after the prefix up to and including the
   first ``system-ready``. Each is one of :data:`SYSTEM_EVENTS`, at most once,
   in any order (``UNKNOWN_SYSTEM_EVENT``, ``DUPLICATE_SYSTEM_EVENT``). A log
   may end inside this segment: dstack's initrd asks the KMS for the app keys
   right after ``boot-mr-done`` (``Stage0::setup_fs`` calls
   ``request_app_keys`` after ``measure_app_info``; ``mr-kms`` may already be
   extended during that request's TLS handshake, ``key-provider``,
   ``os-image-hash`` and ``storage-fs`` follow it, ``system-ready`` comes last),
   so ``system-ready`` is not required for a key release;
3. the *app segment*: every event after ``system-ready`` is opaque. It is
   replayed from its digest and never interpreted, so an app that emits its
   own events (any name, any payload, version 1 or 2) still gets keys. A
   version-1 event's digest is recomputed from its name and payload (a
   recorded digest must agree); any other event must carry its 48-byte
   recorded digest, which is replayed as it is.

Every event of the first two segments is a version-1 dstack runtime event
whose name is one fixed string without ``:``. Its pre-image ``u32_le(type) ‖
":" ‖ name ‖ ":" ‖ payload`` therefore has exactly one reading: the name is
the bytes up to the second ``:``. ``("compose-hash:", H[1:])`` is refused
at position 2 (``BOOT_PREFIX``) and anywhere in the system segment
(``UNKNOWN_SYSTEM_EVENT``); an injected ``compose-hash`` after
``system-ready`` is never read.

**Version 2.** dstack's unreleased source (``dstack/cc-eventlog/src/runtime_events.rs``
at commit ``312dc605ebaaf93372534ffb135ea011533d28e9``) digests a version-2 event
as ``SHA-384(JCS({"name", "payload" (hex), "type"}))``, but the same sources
also change the boot sequence (``init-script-hash``, ``gpu-policy-hash`` and
``gpu-attestation`` between ``compose-hash`` and ``instance-id``, from
commits ``f3a5c19e`` and ``c4ea8110``, July–August 2026, in no release), and
the revisions read earlier disagreed on the JSON object's keys. Version-2 events are
therefore not interpreted: in the first two segments they are refused as
``UNSUPPORTED_EVENT``; in the app segment they are opaque like any other.
The supported guests are dstack v0.5.0 to v0.5.11 (tag ``v0.5.11``, commit
``40eaf35e6b3f112998d01569f2a26110baab123b``), whose
``dstack-util/src/system_setup.rs`` emits exactly the prefix above with
version-1 events only; a log from a guest built from later sources is refused
with a typed reason, never misread.

The rules this module applies:

1. The log is a JSON array (at most :data:`MAX_EVENT_LOG_SIZE` bytes and
   :data:`MAX_EVENTS` events) of objects with exactly the keys above; duplicate
   keys, non-integer numbers, bad hex and unknown keys are ``MALFORMED``.
2. Events with ``imr`` 0–2 are boot-time events of RTMR0–2, whose values the
   quote carries and the policy pins directly; they are checked for shape and
   otherwise ignored.
3. Every ``imr = 3`` event has dstack's runtime event type
   (``UNSUPPORTED_EVENT``). A version-1 event's digest is recomputed from its
   name and payload; a non-empty recorded ``digest`` that differs is
   ``DIGEST_MISMATCH``.
4. Replaying the digests from 48 zero bytes must give the quote's RTMR3
   (``REPLAY_MISMATCH``).
5. The three segments above.

:func:`build_event_log` produces a log and its RTMR3 in the same shape, for
tests and the simulated TEE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from mpc.codec import json_nesting_depth
from mpc.errors import LocalProtocolError

from .errors import EventLogError, EventLogFailure

__all__ = [
    "BOOT_PREFIX",
    "COMPOSE_HASH_EVENT",
    "DSTACK_RUNTIME_EVENT_TYPE",
    "MAX_EVENTS",
    "MAX_EVENT_LOG_SIZE",
    "RTMR3_INDEX",
    "RTMR_LENGTH",
    "SYSTEM_EVENTS",
    "LogEvent",
    "ReplayedLog",
    "build_event_log",
    "compose_hash_from_event_log",
    "compose_hash_of",
    "dstack_boot_events",
    "parse_event_log",
    "replay_rtmr3",
    "runtime_event_digest",
    "runtime_event_preimage",
]

DSTACK_RUNTIME_EVENT_TYPE: Final = 0x08000001
"""dstack's event type for runtime events (``cc-eventlog/src/runtime_events.rs``)."""

RTMR3_INDEX: Final = 3
"""``imr`` of RTMR3 in dstack's zero-based JSON log."""

RTMR_LENGTH: Final = 48
COMPOSE_HASH_EVENT: Final = "compose-hash"
COMPOSE_HASH_LENGTH: Final = 32
APP_ID_EVENT: Final = "app-id"
APP_ID_LENGTH: Final = 20
SYSTEM_READY_EVENT: Final = "system-ready"

BOOT_PREFIX: Final[tuple[tuple[str, int | None], ...]] = (
    ("system-preparing", 0),
    (APP_ID_EVENT, APP_ID_LENGTH),
    (COMPOSE_HASH_EVENT, COMPOSE_HASH_LENGTH),
    ("instance-id", None),
    ("boot-mr-done", 0),
)
"""dstack's boot prefix of RTMR3: each event's exact name and payload length
(``None``: any length)."""

SYSTEM_EVENTS: Final = frozenset(
    {
        "key-provider",
        "os-image-hash",
        "mr-kms",
        "gpu-policy-hash",
        "gpu-attestation",
        "storage-fs",
        SYSTEM_READY_EVENT,
    }
)
"""The only names allowed between the boot prefix and the first ``system-ready``.
``storage-fs`` is emitted there by dstack v0.5.8 and later (``system_setup.rs``)."""

MAX_EVENT_LOG_SIZE: Final = 1024 * 1024
"""Largest event log accepted, in bytes of JSON."""

MAX_EVENTS: Final = 4096
"""Most events accepted in one log (boot-time events included)."""

_REQUIRED_KEYS: Final = frozenset({"imr", "event_type", "event", "event_payload"})
_OPTIONAL_KEYS: Final = frozenset({"digest", "version", "hash_input"})
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_U32_MAX: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One parsed event of the log."""

    imr: int
    event_type: int
    name: str
    payload: bytes
    digest: bytes
    """The digest as recorded (possibly empty); for version-1 RTMR3 events the
    replay uses :func:`runtime_event_digest` instead."""
    version: int = 1


@dataclass(frozen=True, slots=True)
class ReplayedLog:
    """An RTMR3 log that replays to ``rtmr3``, and the facts its first two segments state.

    ``app_id``, ``compose_hash`` and ``instance_id`` come from the boot prefix;
    ``system`` maps each system-segment event's name to its payload (every name
    at most once, ``system-ready`` included when present); ``app_events`` counts
    the opaque events after ``system-ready``.
    """

    rtmr3: bytes
    app_id: bytes
    compose_hash: bytes
    instance_id: bytes
    system: Mapping[str, bytes]
    app_events: int
    events: tuple[LogEvent, ...]
    """The RTMR3 events, in log order."""

    @property
    def system_ready(self) -> bool:
        """True when the log reaches ``system-ready`` (the guest finished booting)."""
        return SYSTEM_READY_EVENT in self.system

    @property
    def os_image_hash(self) -> bytes | None:
        """The ``os-image-hash`` system event's payload, if the log has reached it."""
        return self.system.get("os-image-hash")

    @property
    def key_provider(self) -> bytes | None:
        """The ``key-provider`` system event's payload (dstack: JSON), if present."""
        return self.system.get("key-provider")

    @property
    def gpu_attestation(self) -> bytes | None:
        """The ``gpu-attestation`` system event's payload (dstack: JSON), if present."""
        return self.system.get("gpu-attestation")


def _fail(reason: EventLogFailure, detail: str) -> EventLogError:
    return EventLogError(reason, detail)


def runtime_event_preimage(name: str, payload: bytes) -> bytes:
    """The bytes dstack hashes for a version-1 runtime event:
    ``u32_le(0x08000001) ‖ ":" ‖ name ‖ ":" ‖ payload``."""
    return (
        DSTACK_RUNTIME_EVENT_TYPE.to_bytes(4, "little")
        + b":"
        + name.encode("utf-8")
        + b":"
        + payload
    )


def runtime_event_digest(name: str, payload: bytes) -> bytes:
    """dstack's version-1 runtime event digest: ``SHA-384`` of :func:`runtime_event_preimage`."""
    return hashlib.sha384(runtime_event_preimage(name, payload)).digest()


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
    # A linear scan: a regular expression's repeated group costs memory per character.
    if not isinstance(value, str) or len(value) % 2 or not _HEX_DIGITS.issuperset(value):
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
    return LogEvent(imr, event_type, name, payload, digest, version)


MAX_JSON_DEPTH = 8
"""An event log is an array of flat objects: depth 2. Anything much deeper is refused."""


def parse_event_log(log: str | bytes) -> tuple[LogEvent, ...]:
    """Parse a dstack JSON event log (every register) and check its shape.

    Raises ``EventLogError(MALFORMED)``.
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


def _event_digest(i: int, e: LogEvent) -> bytes:
    """The digest RTMR3 was extended with for event ``i`` (rule 3 of the module docstring)."""
    if e.event_type != DSTACK_RUNTIME_EVENT_TYPE:
        raise _fail(
            EventLogFailure.UNSUPPORTED_EVENT,
            f"event {i}: RTMR3 event of type {e.event_type:#x} is not a dstack runtime event",
        )
    if e.version == 1:
        digest = runtime_event_digest(e.name, e.payload)
        if e.digest and e.digest != digest:
            raise _fail(
                EventLogFailure.DIGEST_MISMATCH,
                f"event {i} ({e.name[:64]!r}): the recorded digest is not the digest of the event",
            )
        return digest
    if len(e.digest) != RTMR_LENGTH:
        raise _fail(
            EventLogFailure.MALFORMED,
            f"event {i}: a version-{e.version} event needs its {RTMR_LENGTH}-byte digest",
        )
    return e.digest


def _boot_prefix(events: Sequence[LogEvent]) -> tuple[bytes, bytes, bytes]:
    """``(app_id, compose_hash, instance_id)`` from events 0–4, or ``BOOT_PREFIX``."""
    if len(events) < len(BOOT_PREFIX):
        raise _fail(
            EventLogFailure.BOOT_PREFIX,
            f"RTMR3 holds {len(events)} events, fewer than dstack's {len(BOOT_PREFIX)}-event "
            "boot prefix",
        )
    for i, (e, (name, length)) in enumerate(zip(events, BOOT_PREFIX, strict=False)):
        if e.version != 1:
            raise _fail(
                EventLogFailure.UNSUPPORTED_EVENT,
                f"RTMR3 event {i}: a version-{e.version} event in the boot prefix",
            )
        if e.name != name:
            raise _fail(
                EventLogFailure.BOOT_PREFIX,
                f"RTMR3 event {i} is {e.name[:64]!r}, dstack's boot prefix has {name!r} there",
            )
        if length is not None and len(e.payload) != length:
            raise _fail(
                EventLogFailure.BOOT_PREFIX,
                f"RTMR3 event {i} ({name}) carries {len(e.payload)} bytes, not {length}",
            )
    return events[1].payload, events[2].payload, events[3].payload


def _system_segment(events: Sequence[LogEvent]) -> tuple[dict[str, bytes], int]:
    """The system events after the boot prefix (name → payload) and how many events
    they span; stops after the first ``system-ready``."""
    system: dict[str, bytes] = {}
    start = len(BOOT_PREFIX)
    for i in range(start, len(events)):
        e = events[i]
        if e.version != 1:
            raise _fail(
                EventLogFailure.UNSUPPORTED_EVENT,
                f"RTMR3 event {i}: a version-{e.version} event before system-ready",
            )
        if e.name not in SYSTEM_EVENTS:
            raise _fail(
                EventLogFailure.UNKNOWN_SYSTEM_EVENT,
                f"RTMR3 event {i} ({e.name[:64]!r}) before system-ready is not a dstack "
                "system event",
            )
        if e.name in system:
            raise _fail(
                EventLogFailure.DUPLICATE_SYSTEM_EVENT,
                f"RTMR3 event {i}: a second {e.name!r} before system-ready",
            )
        system[e.name] = e.payload
        if e.name == SYSTEM_READY_EVENT:
            return system, i + 1 - start
    return system, len(events) - start


def replay_rtmr3(log: str | bytes, rtmr3: bytes) -> ReplayedLog:
    """Replay ``log`` against the quote's ``rtmr3`` and read its boot and system segments.

    Applies the numbered rules of the module docstring; raises
    :class:`~kms.policy.errors.EventLogError`.
    """
    if not isinstance(rtmr3, bytes) or len(rtmr3) != RTMR_LENGTH:
        raise LocalProtocolError(f"rtmr3 must be {RTMR_LENGTH} bytes")
    events = tuple(e for e in parse_event_log(log) if e.imr == RTMR3_INDEX)
    register = bytes(RTMR_LENGTH)
    for i, e in enumerate(events):
        register = _extend(register, _event_digest(i, e))
    if register != rtmr3:
        raise _fail(
            EventLogFailure.REPLAY_MISMATCH,
            f"the {len(events)} RTMR3 events replay to {register.hex()}, "
            f"the quote has {rtmr3.hex()}",
        )
    app_id, compose_hash, instance_id = _boot_prefix(events)
    system, spanned = _system_segment(events)
    return ReplayedLog(
        rtmr3=rtmr3,
        app_id=app_id,
        compose_hash=compose_hash,
        instance_id=instance_id,
        system=MappingProxyType(system),
        app_events=len(events) - len(BOOT_PREFIX) - spanned,
        events=events,
    )


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
