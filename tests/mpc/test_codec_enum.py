"""``enum.Enum`` fields in the wire codec.

An enum field encodes as its member's value, byte for byte what a plain ``str``
or ``int`` field holding that value encodes as, and decodes to the member. A
value naming no member, or of the wrong wire type, is a ``MessageDecodeError``
(an ``InvalidEncoding``), in msgpack and in JSON alike; nothing else escapes.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc.cert import ZERO_HASH, EpochTranscript, RunKind
from mpc.codec import Message, MessageDecodeError, decode, decode_json
from mpc.errors import InvalidEncoding
from mpc.membership.messages import ChainUpdate, LinkKind
from mpc.membership.testing import ForgedChain, participants


def golden_transcript(epoch: int = 0) -> EpochTranscript:
    chain = ForgedChain(5, (5, 3), participants(3))
    return chain.epoch_certificate(epoch, 0, ZERO_HASH).transcript


class Colour(enum.StrEnum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 7


class Plain(enum.Enum):
    """A plain ``Enum`` (not a ``str``/``int`` subclass) with string values."""

    ONE = "one"
    TWO = "two"


@dataclass(frozen=True, slots=True)
class _Enums(Message):
    TYPE = "test/enums"
    colour: Colour
    level: Level
    plain: Plain
    colours: tuple[Colour, ...]
    maybe: Level | None = None


class _MixedValues(enum.Enum):
    A = "a"
    B = 2


@dataclass(frozen=True, slots=True)
class _BadSchema(Message):
    TYPE = "test/enum-mixed"
    value: _MixedValues


def packb(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


EXAMPLE = _Enums(Colour.GREEN, Level.HIGH, Plain.TWO, (Colour.RED, Colour.GREEN), Level.LOW)


def test_an_enum_field_encodes_as_its_value() -> None:
    assert EXAMPLE.encode() == packb(["test/enums", 1, "green", 7, "two", ["red", "green"], 1])
    assert EXAMPLE.to_json() == {
        "@type": "test/enums",
        "@version": 1,
        "colour": "green",
        "level": 7,
        "plain": "two",
        "colours": ["red", "green"],
        "maybe": 1,
    }


def test_an_enum_field_decodes_to_the_member() -> None:
    for m in (EXAMPLE, _Enums(Colour.RED, Level.LOW, Plain.ONE, ())):
        for got in (decode(m.encode()), decode_json(json.dumps(m.to_json()))):
            assert got == m
            assert isinstance(got, _Enums)
            assert got.colour is m.colour and got.level is m.level and got.plain is m.plain
            assert all(type(c) is Colour for c in got.colours)
            assert got.maybe is m.maybe


def test_an_epoch_transcript_kind_is_the_same_bytes_as_the_string() -> None:
    """The wire of ``cert/epoch`` is unchanged: a ``RunKind`` is its string on the wire."""
    tr = golden_transcript()
    assert tr.kind is RunKind.DKG
    wire = msgpack.unpackb(tr.encode())
    assert wire[2] == tr.kind.value and type(wire[2]) is str
    assert EpochTranscript.decode(tr.encode()).kind is tr.kind


BAD: list[tuple[str, list[Any], str]] = [
    ("a string naming no member", ["test/enums", 1, "blue", 7, "two", [], None], "unknown Colour"),
    ("a member's name, not its value", ["test/enums", 1, "RED", 7, "two", [], None], "Colour"),
    ("bytes for a str enum", ["test/enums", 1, b"red", 7, "two", [], None], "expected a string"),
    ("an int for a str enum", ["test/enums", 1, 1, 7, "two", [], None], "expected a string"),
    ("an int naming no member", ["test/enums", 1, "red", 2, "two", [], None], "unknown Level"),
    ("a bool for an int enum", ["test/enums", 1, "red", True, "two", [], None], "expected an int"),
    ("a str for an int enum", ["test/enums", 1, "red", "7", "two", [], None], "expected an int"),
    ("a plain enum's unknown value", ["test/enums", 1, "red", 7, "three", [], None], "Plain"),
    ("an unknown item in a tuple", ["test/enums", 1, "red", 7, "one", ["red", "x"], None], "[1]"),
    ("a bool in an optional int enum", ["test/enums", 1, "red", 7, "one", [], False], "int"),
]


@pytest.mark.parametrize(
    ("wire", "reason"), [(w, r) for _, w, r in BAD], ids=[n for n, _, _ in BAD]
)
def test_an_unknown_or_mistyped_enum_value_is_rejected(wire: list[Any], reason: str) -> None:
    with pytest.raises(MessageDecodeError, match=None) as info:
        decode(packb(wire))
    assert reason in str(info.value)
    assert isinstance(info.value, InvalidEncoding)


def test_an_unknown_enum_value_is_rejected_in_json() -> None:
    obj = EXAMPLE.to_json()
    for field, value in (("colour", "blue"), ("level", 3), ("plain", 1), ("colours", ["x"])):
        with pytest.raises(MessageDecodeError):
            decode_json(json.dumps({**obj, field: value}))


def test_an_unknown_chain_link_kind_is_rejected() -> None:
    good = ChainUpdate((LinkKind.EPOCH, LinkKind.MEMBERSHIP), (b"a", b"b"))
    assert ChainUpdate.decode(good.encode()) == good
    assert packb(["chain/update", 1, ["epoch", "membership"], [b"a", b"b"]]) == good.encode()
    for kinds in (["epoch", "genesis"], ["EPOCH", "membership"], [b"epoch", "membership"]):
        with pytest.raises(MessageDecodeError):
            decode(packb(["chain/update", 1, kinds, [b"a", b"b"]]))


def test_an_enum_with_mixed_value_types_is_a_schema_error() -> None:
    with pytest.raises(TypeError, match="all str or all int"):
        _BadSchema(_MixedValues.A).encode()


# --- properties ----------------------------------------------------------------------


enums = st.builds(
    _Enums,
    st.sampled_from(Colour),
    st.sampled_from(Level),
    st.sampled_from(Plain),
    st.lists(st.sampled_from(Colour), max_size=5).map(tuple),
    st.none() | st.sampled_from(Level),
)


@settings(max_examples=200, deadline=None)
@given(enums)
def test_every_value_round_trips(m: _Enums) -> None:
    data = m.encode()
    assert decode(data) == m
    assert decode_json(json.dumps(m.to_json())) == m
    raw = msgpack.unpackb(data)
    assert raw[2:6] == [m.colour.value, m.level.value, m.plain.value, [c.value for c in m.colours]]


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=30).filter(lambda s: s not in {"red", "green"}),
        st.integers(-(2**40), 2**40),
        st.binary(max_size=10),
        st.booleans(),
        st.none(),
        st.floats(allow_nan=False),
    )
)
def test_any_other_value_of_a_str_enum_is_rejected(value: Any) -> None:
    with pytest.raises(MessageDecodeError):
        decode(packb(["test/enums", 1, value, 7, "two", [], None]))


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.integers(-(2**63), 2**64 - 1).filter(lambda i: i not in (1, 7)),
        st.booleans(),
        st.text(max_size=5),
        st.floats(allow_nan=False),
    )
)
def test_any_other_value_of_an_int_enum_is_rejected(value: Any) -> None:
    with pytest.raises(MessageDecodeError):
        decode(packb(["test/enums", 1, "red", value, "two", [], None]))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(list(RunKind)))
def test_a_string_or_the_member_encode_alike(kind: RunKind) -> None:
    tr = golden_transcript(0 if kind is RunKind.DKG else 1)
    a = EpochTranscript(**{**_fields(tr), "kind": kind})
    b = EpochTranscript(**{**_fields(tr), "kind": kind.value})  # type: ignore[arg-type]
    assert a.encode() == b.encode()
    assert EpochTranscript.decode(b.encode()).kind is kind


def _fields(m: Message) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}  # type: ignore[arg-type]
