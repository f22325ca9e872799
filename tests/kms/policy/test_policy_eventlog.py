"""Replay of dstack RTMR3 event logs (``kms.policy.eventlog``).

``dstack_tcb_info.json`` is the tcb_info of a real dstack CVM (source inside the
file): its RTMR3 and compose hash were produced by dstack itself, so replaying
it checks the pinned digest rule against an independent implementation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.policy import (
    EventLogError,
    EventLogFailure,
    build_event_log,
    compose_hash_from_event_log,
    compose_hash_of,
    dstack_boot_events,
    replay_rtmr3,
)
from kms.policy.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    MAX_EVENT_LOG_SIZE,
    MAX_EVENTS,
    SYSTEM_EVENTS,
    parse_event_log,
    runtime_event_digest,
    runtime_event_preimage,
)
from mpc.errors import LocalProtocolError

VECTOR = json.loads((Path(__file__).parent / "dstack_tcb_info.json").read_text())
REAL_LOG: list[dict[str, Any]] = VECTOR["event_log"]
REAL_RTMR3 = bytes.fromhex(VECTOR["rtmr3"])
REAL_COMPOSE = bytes.fromhex(VECTOR["compose_hash"])

COMPOSE = hashlib.sha256(b'{"manifest_version":2}').digest()
EVENTS = dstack_boot_events(app_id=b"\xaa" * 20, compose_hash=COMPOSE, instance_id=b"\xbb" * 20)
LOG, RTMR3 = build_event_log(EVENTS)


def entries() -> list[dict[str, Any]]:
    return list(json.loads(LOG))


def dump(events: list[dict[str, Any]]) -> str:
    return json.dumps(events)


def refused(log: str | bytes, rtmr3: bytes = RTMR3) -> EventLogFailure:
    with pytest.raises(EventLogError) as info:
        replay_rtmr3(log, rtmr3)
    return info.value.reason


# --- the real dstack log ----------------------------------------------------------------------


def test_the_real_dstack_log_replays_to_its_rtmr3_and_yields_its_compose_hash() -> None:
    replayed = replay_rtmr3(json.dumps(REAL_LOG), REAL_RTMR3)
    assert replayed.compose_hash == REAL_COMPOSE
    assert [e.name for e in replayed.events] == [
        "system-preparing",
        "app-id",
        "compose-hash",
        "instance-id",
        "boot-mr-done",
        "os-image-hash",
        "key-provider",
        "system-ready",
    ]


def test_the_real_compose_hash_is_the_sha256_of_app_compose_json() -> None:
    assert compose_hash_of(VECTOR["app_compose"].encode()) == REAL_COMPOSE


def test_every_recorded_rtmr3_digest_follows_the_pinned_rule() -> None:
    for e in REAL_LOG:
        if e["imr"] == 3:
            assert e["event_type"] == DSTACK_RUNTIME_EVENT_TYPE == 134217729
            expected = runtime_event_digest(e["event"], bytes.fromhex(e["event_payload"]))
            assert expected.hex() == e["digest"]


def test_the_real_log_replays_without_recorded_digests() -> None:
    blank = [{**e, "digest": ""} if e["imr"] == 3 else e for e in REAL_LOG]
    absent = [{k: v for k, v in e.items() if k != "digest"} for e in REAL_LOG]
    assert compose_hash_from_event_log(json.dumps(blank), REAL_RTMR3) == REAL_COMPOSE
    assert compose_hash_from_event_log(json.dumps(absent), REAL_RTMR3) == REAL_COMPOSE


def test_boot_time_events_do_not_enter_the_rtmr3_replay() -> None:
    runtime_only = [e for e in REAL_LOG if e["imr"] == 3]
    assert compose_hash_from_event_log(json.dumps(runtime_only), REAL_RTMR3) == REAL_COMPOSE
    all_boot = parse_event_log(json.dumps(REAL_LOG))
    assert {e.imr for e in all_boot} == {0, 1, 2, 3}


# --- logs built here --------------------------------------------------------------------------


def test_a_built_log_replays_and_yields_its_compose_hash() -> None:
    assert replay_rtmr3(LOG, RTMR3).compose_hash == COMPOSE
    assert replay_rtmr3(LOG.encode(), RTMR3).compose_hash == COMPOSE
    assert [name for name, _ in EVENTS] == [
        "system-preparing",
        "app-id",
        "compose-hash",
        "instance-id",
        "boot-mr-done",
    ]


def test_the_replay_is_the_documented_sha384_chain() -> None:
    register = bytes(48)
    for name, payload in EVENTS:
        register = hashlib.sha384(register + runtime_event_digest(name, payload)).digest()
    assert register == RTMR3


def test_events_the_app_emits_after_boot_are_replayed_too() -> None:
    log, rtmr3 = build_event_log(
        [*EVENTS, ("key-provider", b'{"name":"kms"}'), ("system-ready", b"")]
    )
    assert compose_hash_from_event_log(log, rtmr3) == COMPOSE


# --- refused logs -----------------------------------------------------------------------------


def _tampered_digest() -> tuple[str, bytes]:
    events = entries()
    events[1]["digest"] = "00" * 48
    return dump(events), RTMR3


def _tampered_payload_keeping_digest() -> tuple[str, bytes]:
    events = entries()
    events[2]["event_payload"] = "77" * 32
    return dump(events), RTMR3


def _tampered_payload_without_digest() -> tuple[str, bytes]:
    events = entries()
    events[2]["event_payload"] = "77" * 32
    del events[2]["digest"]
    return dump(events), RTMR3


def _reordered() -> tuple[str, bytes]:
    events = entries()
    events[1], events[2] = events[2], events[1]
    return dump(events), RTMR3


def _dropped() -> tuple[str, bytes]:
    return dump(entries()[:-1]), RTMR3


def _appended() -> tuple[str, bytes]:
    extra, _ = build_event_log([("injected", b"x")])
    return dump(entries() + json.loads(extra)), RTMR3


def _without_compose_hash() -> tuple[str, bytes]:
    return build_event_log([e for e in EVENTS if e[0] != "compose-hash"])


def _two_compose_hashes() -> tuple[str, bytes]:
    return build_event_log([*EVENTS, ("compose-hash", b"\x99" * 32)])


def _short_compose_hash() -> tuple[str, bytes]:
    return build_event_log([("compose-hash", b"\x99" * 31)])


def _foreign_event_type() -> tuple[str, bytes]:
    events = entries()
    events[0]["event_type"] = 0x80000001
    return dump(events), RTMR3


def _version_two() -> tuple[str, bytes]:
    events = entries()
    events[2]["version"] = 2
    return dump(events), RTMR3


REFUSED: list[tuple[str, Callable[[], tuple[str, bytes]], EventLogFailure]] = [
    (
        "a tampered digest does not match its event",
        _tampered_digest,
        EventLogFailure.DIGEST_MISMATCH,
    ),
    (
        "a tampered payload no longer matches its recorded digest",
        _tampered_payload_keeping_digest,
        EventLogFailure.DIGEST_MISMATCH,
    ),
    (
        "a tampered payload without a digest does not replay",
        _tampered_payload_without_digest,
        EventLogFailure.REPLAY_MISMATCH,
    ),
    ("reordered events do not replay", _reordered, EventLogFailure.REPLAY_MISMATCH),
    ("a dropped event does not replay", _dropped, EventLogFailure.REPLAY_MISMATCH),
    ("an injected event does not replay", _appended, EventLogFailure.REPLAY_MISMATCH),
    (
        "a log without compose-hash has no boot prefix",
        _without_compose_hash,
        EventLogFailure.BOOT_PREFIX,
    ),
    (
        "a second compose-hash before system-ready is not a system event",
        _two_compose_hashes,
        EventLogFailure.UNKNOWN_SYSTEM_EVENT,
    ),
    ("a lone compose hash is no boot prefix", _short_compose_hash, EventLogFailure.BOOT_PREFIX),
    (
        "a compose hash of 31 bytes in the boot prefix",
        lambda: build_event_log([*EVENTS[:2], ("compose-hash", b"\x99" * 31), *EVENTS[3:]]),
        EventLogFailure.BOOT_PREFIX,
    ),
    (
        "an app id of 19 bytes",
        lambda: build_event_log([EVENTS[0], ("app-id", b"\x01" * 19), *EVENTS[2:]]),
        EventLogFailure.BOOT_PREFIX,
    ),
    (
        "a payload on system-preparing",
        lambda: build_event_log([("system-preparing", b"x"), *EVENTS[1:]]),
        EventLogFailure.BOOT_PREFIX,
    ),
    (
        "the boot prefix out of order",
        lambda: build_event_log([EVENTS[0], EVENTS[2], EVENTS[1], *EVENTS[3:]]),
        EventLogFailure.BOOT_PREFIX,
    ),
    (
        "an event before the boot prefix",
        lambda: build_event_log([("os-image-hash", b"\x01" * 32), *EVENTS]),
        EventLogFailure.BOOT_PREFIX,
    ),
    (
        "an unknown event before system-ready",
        lambda: build_event_log([*EVENTS, ("my-app-event", b"x"), ("system-ready", b"")]),
        EventLogFailure.UNKNOWN_SYSTEM_EVENT,
    ),
    (
        "a system event twice before system-ready",
        lambda: build_event_log(
            [*EVENTS, ("key-provider", b"a"), ("key-provider", b"b"), ("system-ready", b"")]
        ),
        EventLogFailure.DUPLICATE_SYSTEM_EVENT,
    ),
    (
        "an RTMR3 event of a TCG type is unsupported",
        _foreign_event_type,
        EventLogFailure.UNSUPPORTED_EVENT,
    ),
    (
        "an RTMR3 event of log version 2 is unsupported",
        _version_two,
        EventLogFailure.UNSUPPORTED_EVENT,
    ),
    (
        "a log for another RTMR3 does not replay",
        lambda: (LOG, b"\x01" * 48),
        EventLogFailure.REPLAY_MISMATCH,
    ),
    (
        "the real log against a built RTMR3 does not replay",
        lambda: (json.dumps(REAL_LOG), RTMR3),
        EventLogFailure.REPLAY_MISMATCH,
    ),
]


@pytest.mark.parametrize(("make", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_refused_log(make: Callable[[], tuple[str, bytes]], reason: EventLogFailure) -> None:
    log, rtmr3 = make()
    assert refused(log, rtmr3) is reason


def _with(**changes: object) -> str:
    events = entries()
    events[0].update(changes)
    return dump(events)


def _without(key: str) -> str:
    events = entries()
    del events[0][key]
    return dump(events)


MALFORMED: list[tuple[str, str | bytes]] = [
    ("not JSON", "[{"),
    ("a JSON object, not an array", "{}"),
    ("an event that is not an object", "[1]"),
    ("an event without imr", _without("imr")),
    ("an event without a name", _without("event")),
    ("an event without a payload", _without("event_payload")),
    ("an event with an unknown field", _with(extra=1)),
    ("an event with a duplicate key", LOG.replace('"imr":3,', '"imr":3,"imr":3,', 1)),
    ("an imr beyond RTMR3", _with(imr=4)),
    ("a negative imr", _with(imr=-1)),
    ("a boolean imr", _with(imr=True)),
    ("a fractional event type", _with(event_type=134217729.0)),
    ("an event type over 32 bits", _with(event_type=2**32)),
    ("a name that is not a string", _with(event=7)),
    ("a name with a lone surrogate", LOG.replace('"system-preparing"', '"\\ud800"', 1)),
    ("a payload of odd length", _with(event_payload="abc")),
    ("a payload that is not hex", _with(event_payload="zz")),
    ("a payload with spaces", _with(event_payload="ab cd")),
    ("a digest longer than SHA-384", _with(digest="00" * 49)),
    ("a NaN", _with(event_type=float("nan"))),
    ("a log version 3", _with(version=3)),
    ("a boolean log version", _with(version=True)),
    ("hash_input that is not hex", _with(hash_input="xyz")),
    ("bytes that are not UTF-8", b"\xff[]"),
    ("a log over the size limit", " " * (MAX_EVENT_LOG_SIZE + 1)),
    ("more events than the limit", json.dumps([json.loads(LOG)[0]] * (MAX_EVENTS + 1))),
    ("deep nesting", "[" * 100_000 + "]" * 100_000),
    ("a huge integer", '[{"imr":' + "9" * 5000 + "}]"),
]


@pytest.mark.parametrize("log", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_log(log: str | bytes) -> None:
    assert refused(log) is EventLogFailure.MALFORMED


def test_a_quote_register_of_the_wrong_size_is_a_caller_error() -> None:
    with pytest.raises(LocalProtocolError):
        replay_rtmr3(LOG, RTMR3[:47])


def test_boot_events_need_a_32_byte_compose_hash() -> None:
    with pytest.raises(LocalProtocolError):
        dstack_boot_events(app_id=b"a", compose_hash=b"short")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400), st.binary(max_size=400)))
def test_arbitrary_input_raises_only_event_log_errors(data: str | bytes) -> None:
    try:
        replay_rtmr3(data, RTMR3)
    except EventLogError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(LOG) - 1), st.characters(codec="ascii"))
def test_a_one_character_change_to_a_log_is_refused_or_harmless(index: int, char: str) -> None:
    mutated = LOG[:index] + char + LOG[index + 1 :]
    try:
        result = replay_rtmr3(mutated, RTMR3)
    except EventLogError:
        return
    # Accepted only if the change did not alter what was measured (e.g. hex case).
    assert result.compose_hash == COMPOSE
    assert [(e.name, e.payload) for e in result.events] == EVENTS


# --- one reading per digest -------------------------------------------------------------------

APP_ID = b"\xaa" * 20
ADMITTED = hashlib.sha256(b'{"manifest_version":2,"name":"admitted"}').digest()


def _colon_compose() -> tuple[bytes, bytes]:
    """A compose file whose SHA-256 starts with ':' (about 256 tries) and its hash."""
    for i in range(100_000):
        compose = b'{"manifest_version":2,"name":"evil","nonce":%d}' % i
        digest = hashlib.sha256(compose).digest()
        if digest[0] == ord(":"):
            return compose, digest
    raise AssertionError("no compose hash starting with ':' found")


def test_the_renamed_compose_hash_attack_is_refused() -> None:
    _, evil = _colon_compose()
    measured = [*dstack_boot_events(app_id=APP_ID, compose_hash=evil), ("system-ready", b"")]
    _, rtmr3 = build_event_log([*measured, ("compose-hash", ADMITTED)])
    forged = [
        *measured[:2],
        ("compose-hash:", evil[1:]),  # the same digest as ("compose-hash", evil)
        *measured[3:],
        ("compose-hash", ADMITTED),  # extended by the workload after boot
    ]
    log, forged_rtmr3 = build_event_log(forged)
    assert forged_rtmr3 == rtmr3  # the forged log replays to the quoted RTMR3
    assert refused(log, rtmr3) is EventLogFailure.BOOT_PREFIX
    # Read honestly, the same RTMR3 names the evil compose hash, never the admitted one.
    honest, _ = build_event_log([*measured, ("compose-hash", ADMITTED)])
    assert replay_rtmr3(honest, rtmr3).compose_hash == evil


def test_the_real_log_states_its_app_id_and_system_events() -> None:
    replayed = replay_rtmr3(json.dumps(REAL_LOG), REAL_RTMR3)
    assert replayed.app_id == bytes.fromhex("5b979a9a745405d4de53aae0e2c3a09d24b174a3")
    assert replayed.instance_id == b""
    assert set(replayed.system) == {"os-image-hash", "key-provider", "system-ready"}
    assert replayed.system_ready and replayed.app_events == 0
    assert json.loads(replayed.key_provider or b"")["name"] == "kms"
    assert replayed.os_image_hash == replayed.system["os-image-hash"]
    assert replayed.gpu_attestation is None


def test_a_log_may_end_before_system_ready() -> None:
    # dstack's initrd asks for keys right after boot-mr-done (mr-kms may precede it).
    log, rtmr3 = build_event_log([*EVENTS, ("mr-kms", b"\x01" * 32)])
    replayed = replay_rtmr3(log, rtmr3)
    assert not replayed.system_ready and replayed.system == {"mr-kms": b"\x01" * 32}


def test_app_events_after_system_ready_are_opaque() -> None:
    app = [
        ("compose-hash", b"\x99" * 32),
        ("app-id", b"\x01" * 20),
        ("system-ready", b""),
        ("any:name", b":payload"),
        ("", b""),
    ]
    log, rtmr3 = build_event_log([*EVENTS, ("system-ready", b""), *app])
    replayed = replay_rtmr3(log, rtmr3)
    assert (replayed.compose_hash, replayed.app_id) == (COMPOSE, b"\xaa" * 20)
    assert replayed.app_events == len(app) and replayed.system == {"system-ready": b""}


def test_a_version_two_app_event_is_replayed_from_its_recorded_digest() -> None:
    log, rtmr3 = build_event_log([*EVENTS, ("system-ready", b""), ("v2-event", b"x")])
    events = json.loads(log)
    events[-1].update(version=2, event="renamed", event_payload="")
    assert replay_rtmr3(json.dumps(events), rtmr3).app_events == 1
    del events[-1]["digest"]
    assert refused(json.dumps(events), rtmr3) is EventLogFailure.MALFORMED


_NAME_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs",))
_NAMES = st.one_of(
    st.text(_NAME_CHARS, max_size=24),
    st.sampled_from([n for n, _ in EVENTS] + sorted(SYSTEM_EVENTS)).flatmap(
        lambda n: st.tuples(st.text(":" + n[:3], max_size=3), st.text(":", max_size=2)).map(
            lambda t: t[0] + n + t[1]
        )
    ),
)


def _read(preimage: bytes) -> tuple[int, str, bytes]:
    """The unique reading of a pre-image whose name contains no ':'."""
    head, name, payload = preimage[:4], *preimage[5:].split(b":", 1)
    return int.from_bytes(head, "little"), name.decode("utf-8"), payload


@settings(max_examples=400, deadline=None)
@given(position=st.integers(0, 6), name=_NAMES, payload=st.binary(max_size=40))
def test_every_event_a_fact_is_read_from_has_one_reading(
    position: int, name: str, payload: bytes
) -> None:
    """(type, name, payload) -> pre-image is injective on every event the parser reads a
    fact from: at positions 0-4 and before system-ready; everything else is refused."""
    if position < len(EVENTS):
        events = [*EVENTS[:position], (name, payload), *EVENTS[position + 1 :]]
    else:  # the system segment
        events = [*EVENTS, *[("mr-kms", b"\x01")] * (position == 6), (name, payload)]
    log, rtmr3 = build_event_log(events)
    try:
        replayed = replay_rtmr3(log, rtmr3)
    except EventLogError as exc:
        assert exc.reason in {
            EventLogFailure.BOOT_PREFIX,
            EventLogFailure.UNKNOWN_SYSTEM_EVENT,
            EventLogFailure.DUPLICATE_SYSTEM_EVENT,
        }
        return
    assert ":" not in name
    preimage = runtime_event_preimage(name, payload)
    assert _read(preimage) == (DSTACK_RUNTIME_EVENT_TYPE, name, payload)
    read = replayed.events[len(events) - 1 if position >= len(EVENTS) else position]
    assert (read.name, read.payload) == (name, payload)


@settings(max_examples=300, deadline=None)
@given(
    index=st.integers(0, 7),
    shift=st.integers(-3, 3),
    extra=st.lists(st.tuples(_NAMES, st.binary(max_size=8)), max_size=3),
)
def test_every_accepted_reading_of_a_digest_sequence_states_the_same_facts(
    index: int, shift: int, extra: list[tuple[str, bytes]]
) -> None:
    """Move ':'-separated bytes between one event's name and payload (the same digest):
    whatever the parser accepts states the facts of the honest reading."""
    honest = [
        *dstack_boot_events(app_id=APP_ID, compose_hash=b":" * 32, instance_id=b":" * 3),
        ("key-provider", b':{"name":"kms"}'),
        ("system-ready", b""),
        *extra,
    ]
    log, rtmr3 = build_event_log(honest)
    truth = replay_rtmr3(log, rtmr3)
    index %= len(honest)
    name, payload = honest[index]
    preimage = name.encode() + b":" + payload
    cuts = [i for i, b in enumerate(preimage) if b == ord(":")]
    cut = cuts[(cuts.index(len(name.encode())) + shift) % len(cuts)]
    reading = (preimage[:cut].decode("utf-8", "ignore"), preimage[cut + 1 :])
    if reading[0].encode() != preimage[:cut]:
        return  # not a valid UTF-8 name: it could not be in a JSON log
    forged = [*honest[:index], reading, *honest[index + 1 :]]
    forged_log, forged_rtmr3 = build_event_log(forged)
    assert forged_rtmr3 == rtmr3
    try:
        other = replay_rtmr3(forged_log, rtmr3)
    except EventLogError:
        return
    assert (other.app_id, other.compose_hash, other.instance_id) == (
        truth.app_id,
        truth.compose_hash,
        truth.instance_id,
    )
    assert dict(other.system) == dict(truth.system)


@pytest.mark.parametrize("digit", ["0", "A"])
def test_a_long_hex_payload_costs_memory_in_proportion_to_its_size_only(digit: str) -> None:
    """A log of one event whose payload fills the size limit: telling hex apart is a
    linear scan (a regular expression's repeated group took ~60 bytes per character)."""
    import tracemalloc

    payload = digit * ((MAX_EVENT_LOG_SIZE - 200) // 2 * 2)
    event = {"imr": 3, "event_type": 0x08000001, "event": "x", "event_payload": payload}
    text = json.dumps([event])
    assert len(text) <= MAX_EVENT_LOG_SIZE
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        (parsed,) = parse_event_log(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.payload == bytes.fromhex(payload)
    assert peak - base < 4 * MAX_EVENT_LOG_SIZE, f"peak {(peak - base) >> 10} KiB"


@pytest.mark.parametrize("payload", ["0", "abc", "0x00", "zz", "0 ", "\u0660\u0661", "ab\n"])
def test_a_payload_that_is_not_whole_hex_bytes_is_malformed(payload: str) -> None:
    event = {"imr": 3, "event_type": 0x08000001, "event": "x", "event_payload": payload}
    with pytest.raises(EventLogError) as refused:
        parse_event_log(json.dumps([event]))
    assert refused.value.reason is EventLogFailure.MALFORMED
