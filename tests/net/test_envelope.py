"""The envelope codec: golden bytes for every message type, strict decoding, fuzzing."""

from __future__ import annotations

import json
import subprocess
import sys

import make_golden
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc.codec import MAX_MESSAGE_SIZE, MessageDecodeError, message_types
from mpc.errors import InvalidEncoding
from net.codec import (
    ENVELOPE_VERSION,
    MAX_FRAME_SIZE,
    Envelope,
    EnvelopeError,
    EnvelopeFailure,
    decode_envelope,
    encode_envelope,
    open_envelope,
    seal,
)

make_golden.import_every_mpc_module()
GOLDEN: dict[str, bytes] = {
    k: bytes.fromhex(v) for k, v in json.loads(make_golden.GOLDEN_FILE.read_text()).items()
}


def mpc_message_types() -> dict[str, type]:
    """The wire types of the ``mpc`` protocols (``kms`` registers its own, tested apart)."""
    return {k: v for k, v in message_types().items() if v.__module__.startswith("mpc.")}


MESSAGES = make_golden.golden_messages()
FRAMES = sorted(GOLDEN.values())
REGENERATE = "regenerate with .venv/bin/python tests/net/make_golden.py (a wire-format change)"


V = ENVELOPE_VERSION
"""The version this code speaks (1 was the wire of e1d36d0 and before)."""


def packb(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def refresh_payload() -> bytes:
    return MESSAGES["member/refresh"].encode()


# --- golden bytes --------------------------------------------------------------------


def test_every_registered_kind_has_a_golden_envelope() -> None:
    missing = sorted(set(mpc_message_types()) - set(GOLDEN))
    assert missing == [], (
        f"no golden envelope for {missing}: add them to make_golden.py, {REGENERATE}"
    )


def test_golden_envelopes_are_up_to_date() -> None:
    assert make_golden.golden_envelopes() == GOLDEN, REGENERATE


def test_net_codec_alone_registers_every_mpc_message_type() -> None:
    # A process that imports only net.codec must know every kind, whatever else it imports.
    script = "import net.codec, mpc.codec; print(' '.join(sorted(k for k, v in mpc.codec.message_types().items() if v.__module__.startswith('mpc.'))))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == sorted(mpc_message_types())


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_golden_envelope_opens_to_its_message(kind: str) -> None:
    envelope, message = open_envelope(GOLDEN[kind])
    assert envelope == Envelope(ENVELOPE_VERSION, kind, 7, 3, MESSAGES[kind].encode())
    assert message == MESSAGES[kind]
    assert encode_envelope(envelope) == GOLDEN[kind]


def test_envelope_layout() -> None:
    frame = seal(MESSAGES["member/refresh"], epoch=1, sender=2)
    assert msgpack.unpackb(frame) == [V, "member/refresh", 1, 2, refresh_payload()]
    assert frame == packb([V, "member/refresh", 1, 2, refresh_payload()])


# --- strict decoding -----------------------------------------------------------------


def bad(reason: EnvelopeFailure, frame: bytes) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decode_envelope(frame)
    assert caught.value.reason is reason, caught.value
    assert isinstance(caught.value, InvalidEncoding)


@pytest.mark.parametrize(
    ("name", "reason", "wire"),
    [
        ("garbage", EnvelopeFailure.MALFORMED, b"\xc1"),
        ("empty", EnvelopeFailure.MALFORMED, b""),
        ("a map", EnvelopeFailure.MALFORMED, packb({"version": 1})),
        ("an empty array", EnvelopeFailure.MALFORMED, packb([])),
        ("too few fields", EnvelopeFailure.MALFORMED, packb([V, "member/refresh", 1, 2])),
        ("a bool version", EnvelopeFailure.MALFORMED, packb([True, "member/refresh", 1, 2, b""])),
        ("a str payload", EnvelopeFailure.MALFORMED, packb([V, "member/refresh", 1, 2, "x"])),
        ("a bytes kind", EnvelopeFailure.MALFORMED, packb([V, b"member/refresh", 1, 2, b""])),
        ("a negative epoch", EnvelopeFailure.MALFORMED, packb([V, "member/refresh", -1, 2, b""])),
        ("a bool sender", EnvelopeFailure.MALFORMED, packb([V, "member/refresh", 1, False, b""])),
        (
            "the next version",
            EnvelopeFailure.UNKNOWN_VERSION,
            packb([V + 1, "member/refresh", 1, 2, b""]),
        ),
        (
            "version 1",
            EnvelopeFailure.UNKNOWN_VERSION,
            packb([1, "member/refresh", 1, 2, refresh_payload()]),
        ),
        (
            "the next version, other shape",
            EnvelopeFailure.UNKNOWN_VERSION,
            packb([V + 1, {"any": "thing"}]),
        ),
        ("version 0", EnvelopeFailure.UNKNOWN_VERSION, packb([0, "member/refresh", 1, 2, b""])),
        ("an unknown kind", EnvelopeFailure.UNKNOWN_KIND, packb([V, "no/such", 1, 2, b""])),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_decode_rejects(name: str, reason: EnvelopeFailure, wire: bytes) -> None:
    bad(reason, wire)


def test_decode_rejects_trailing_bytes() -> None:
    bad(EnvelopeFailure.MALFORMED, seal(MESSAGES["member/refresh"], epoch=1, sender=2) + b"\x00")


@pytest.mark.parametrize(
    "wire",
    [
        # epoch 1 as a uint16 instead of a positive fixint
        bytes([0x95, V]) + b"\xaemember/refresh\xcd\x00\x01\x02",
        # the kind as str8 instead of fixstr
        bytes([0x95, V]) + b"\xd9\x0emember/refresh\x01\x02",
        # the array as array16 instead of fixarray
        b"\xdc\x00\x05" + bytes([V]) + b"\xaemember/refresh\x01\x02",
    ],
)
def test_decode_rejects_non_canonical_encodings(wire: bytes) -> None:
    assert msgpack.unpackb(wire + packb(refresh_payload()))[1] == "member/refresh"
    bad(EnvelopeFailure.NON_CANONICAL, wire + packb(refresh_payload()))


def test_oversize() -> None:
    bad(EnvelopeFailure.OVERSIZE, bytes(MAX_FRAME_SIZE + 1))
    huge = Envelope(V, "member/refresh", 0, 0, bytes(MAX_MESSAGE_SIZE + 1))
    with pytest.raises(EnvelopeError) as caught:
        encode_envelope(huge)
    assert caught.value.reason is EnvelopeFailure.OVERSIZE
    # A payload of the maximal message size fits in a frame.
    frame = encode_envelope(
        Envelope(V, "member/refresh", 2**64 - 1, 2**64 - 1, bytes(MAX_MESSAGE_SIZE))
    )
    assert len(frame) <= MAX_FRAME_SIZE
    assert decode_envelope(frame).epoch == 2**64 - 1
    bad(EnvelopeFailure.OVERSIZE, packb([V, "member/refresh", 1, 2, bytes(MAX_MESSAGE_SIZE + 1)]))


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (Envelope(V + 1, "member/refresh", 0, 0, b""), EnvelopeFailure.UNKNOWN_VERSION),
        (Envelope(1, "member/refresh", 0, 0, b""), EnvelopeFailure.UNKNOWN_VERSION),
        (Envelope(V, "no/such", 0, 0, b""), EnvelopeFailure.UNKNOWN_KIND),
        (Envelope(V, "member/refresh", -1, 0, b""), EnvelopeFailure.MALFORMED),
        (Envelope(V, "member/refresh", 0, 2**64, b""), EnvelopeFailure.MALFORMED),
        (Envelope(V, "member/refresh", 0, 0, "text"), EnvelopeFailure.MALFORMED),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_what_no_peer_would_accept(
    envelope: Envelope, reason: EnvelopeFailure
) -> None:
    with pytest.raises(EnvelopeError) as caught:
        encode_envelope(envelope)
    assert caught.value.reason is reason


def test_open_checks_that_the_payload_is_of_its_kind() -> None:
    frame = encode_envelope(Envelope(V, "member/threshold", 0, 0, refresh_payload()))
    decode_envelope(frame)  # the envelope alone is fine
    with pytest.raises(EnvelopeError) as caught:
        open_envelope(frame)
    assert caught.value.reason is EnvelopeFailure.MALFORMED


def test_open_reports_a_bad_payload_as_a_message_decode_error() -> None:
    frame = encode_envelope(Envelope(V, "member/refresh", 0, 0, b"\x92\xaemember/refresh\x02"))
    with pytest.raises(MessageDecodeError):
        open_envelope(frame)


# --- fuzzing -------------------------------------------------------------------------


def only_invalid_encoding(frame: bytes) -> None:
    """Decoding ``frame`` either works or raises one of the two typed errors."""
    try:
        open_envelope(frame)
    except (EnvelopeError, MessageDecodeError):
        pass
    try:
        decode_envelope(frame)
    except EnvelopeError:
        pass


@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_invalid_encoding(frame: bytes) -> None:
    only_invalid_encoding(frame)


@given(
    st.sampled_from(sorted(GOLDEN)),
    st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=4),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_only_raise_invalid_encoding(
    kind: str, edits: list[tuple[int, int]]
) -> None:
    frame = bytearray(GOLDEN[kind])
    for position, value in edits:
        frame[position % len(frame)] = value
    only_invalid_encoding(bytes(frame))


@given(st.sampled_from(FRAMES), st.integers(0, 2**16), st.binary(max_size=8))
def test_truncated_and_spliced_frames_only_raise_invalid_encoding(
    frame: bytes, cut: int, insert: bytes
) -> None:
    cut %= len(frame) + 1
    only_invalid_encoding(frame[:cut])
    only_invalid_encoding(frame[:cut] + insert + frame[cut:])


@given(
    st.one_of(
        st.integers(-(2**63), 2**64 - 1),  # what msgpack can encode
        st.booleans(),
        st.none(),
        st.binary(max_size=8),
        st.text(max_size=8),
    ),
    st.integers(0, 4),
    st.sampled_from(FRAMES),
)
def test_fields_of_any_type_only_raise_invalid_encoding(
    value: object, field: int, frame: bytes
) -> None:
    wire = msgpack.unpackb(frame)
    wire[field] = value
    only_invalid_encoding(packb(wire))
