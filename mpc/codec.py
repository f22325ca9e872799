"""Typed wire messages with one canonical msgpack encoding.

A message is a frozen dataclass deriving from ``Message`` with a registered
``TYPE`` name and a ``VERSION``. It encodes as the msgpack array
``[TYPE, VERSION, field₁, field₂, …]`` in declaration order; nested messages
are arrays of the same shape. Supported field types: ``int`` (not ``bool``),
``bool``, ``bytes``, ``str``, ``enum.Enum`` classes whose values are all ``str``
or all ``int``, ``tuple[T, ...]``, nested ``Message`` classes and ``T | None``.
``Annotated[bytes, Size(n)]`` fixes a length, ``MaxSize(n)`` bounds one.

An enum field encodes as its member's value, exactly as a plain ``str`` or
``int`` field holding that value would (so turning a string field into an enum
changes no byte), and decodes to the member; a value that names no member, or
of the wrong type, is refused like any other malformed field.

Decoding is strict: the bytes must be exactly the canonical encoding of the
decoded value (re-encoding must reproduce them), types must match, lengths
must hold, and then the message's own ``validate()`` runs. Every failure
raises ``MessageDecodeError`` (an ``InvalidEncoding``) with a reason.

A field added after version 1 is annotated ``Since(n)`` and has a default:
a value whose ``Since`` fields all hold their defaults encodes exactly as the
older version did (so signatures over stored older encodings still verify),
and one that sets them encodes as the newest version that defines them.
Decoding accepts every version from 1 to ``VERSION`` for such a class and
refuses a newer version tag on a value the older one could carry
(non-canonical).

Every message also has a JSON form for HTTP clients that cannot speak
msgpack: an object ``{"@type": TYPE, "@version": VERSION, field: value, …}``
(the ``@`` keys can never clash with a field name)
with ``bytes`` as lowercase hex strings and nested messages as objects of the
same shape. ``decode_json`` maps it onto the wire form and decodes that, so
both forms pass the same checks; hashes and signatures are always over the
msgpack encoding, which the JSON form determines exactly.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self, Union, get_args, get_origin

import msgpack

from mpc.errors import InvalidEncoding

MAX_MESSAGE_SIZE = 4 * 1024 * 1024
"""No protocol message may exceed this (a DKG deal for n = 256, t = 171 is about 44 KB)."""

MAX_ITEMS = 4096
MAX_INT = 2**32 - 1
"""Every integer field is an unsigned 32-bit value (indices, epochs, attempts, Unix
seconds until 2106), so fixed-width statements built from them never overflow."""


class MessageDecodeError(InvalidEncoding):
    """Bytes that are not the canonical encoding of a valid known message."""


@dataclass(frozen=True, slots=True)
class Size:
    """``Annotated[bytes, Size(n)]``: exactly ``n`` bytes."""

    n: int


@dataclass(frozen=True, slots=True)
class Since:
    """``Annotated[T, Since(n)]``: a field added in version ``n`` (it needs a default)."""

    n: int


@dataclass(frozen=True, slots=True)
class MaxSize:
    """``Annotated[bytes | str | tuple, MaxSize(n)]``: at most ``n`` bytes or items."""

    n: int


_REGISTRY: dict[str, type[Message]] = {}
_HINTS: dict[type, list[tuple[str, Any]]] = {}


class Message:
    """Base of every wire message. Subclasses are frozen dataclasses."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("TYPE")
        if name is not None:
            prev = _REGISTRY.get(name)
            # ``dataclass(slots=True)`` re-creates the class: same module and name is fine.
            if prev is not None and (prev.__module__, prev.__qualname__) != (
                cls.__module__,
                cls.__qualname__,
            ):
                raise TypeError(f"message type {name!r} registered twice")
            _REGISTRY[name] = cls

    def validate(self) -> None:
        """Semantic checks beyond the schema; raise ``MessageDecodeError``."""

    def wire_version(self) -> int:
        """The version this value encodes as: the oldest that can carry it (``Since``)."""
        since = _since(type(self))
        if not since:
            return self.VERSION
        defaults = {f.name: f.default for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        used = [n for name, n in since.items() if getattr(self, name) != defaults[name]]
        return max(used, default=1)

    def to_wire(self) -> list[Any]:
        version = self.wire_version()
        return [
            self.TYPE,
            version,
            *(enc(getattr(self, n)) for n, enc in _plan(type(self), version, False)),
        ]

    def encode(self) -> bytes:
        """The canonical msgpack encoding."""
        return bytes(msgpack.packb(self.to_wire(), use_bin_type=True))

    def fingerprint(self) -> bytes:
        """SHA-256 of the canonical encoding."""
        return hashlib.sha256(self.encode()).digest()

    def to_json(self) -> dict[str, Any]:
        """The JSON form (see the module docstring)."""
        version = self.wire_version()
        out: dict[str, Any] = {"@type": self.TYPE, "@version": version}
        for n, enc in _plan(type(self), version, True):
            out[n] = enc(getattr(self, n))
        return out

    @classmethod
    def decode_json(cls, data: bytes | str) -> Self:
        """Decode the JSON form of exactly this message type."""
        msg = decode_json(data)
        if not isinstance(msg, cls):
            raise MessageDecodeError(f"expected {cls.TYPE}, got {msg.TYPE}")
        return msg

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode ``data`` as exactly this message type."""
        msg = decode(data)
        if not isinstance(msg, cls):
            raise MessageDecodeError(f"expected {cls.TYPE}, got {msg.TYPE}")
        return msg

    @classmethod
    def from_wire(cls, raw: Any) -> Self:
        if not isinstance(raw, list) or len(raw) < 2:
            raise MessageDecodeError(f"{cls.__name__}: not a message array")
        if raw[0] != cls.TYPE:
            raise MessageDecodeError(f"expected {cls.TYPE}, got {raw[0]!r}")
        since = _since(cls)
        if since:
            ok = isinstance(raw[1], int) and not isinstance(raw[1], bool)
            ok = ok and 1 <= raw[1] <= cls.VERSION
        else:
            ok = raw[1] == cls.VERSION and not isinstance(raw[1], bool)
        if not ok:
            raise MessageDecodeError(f"{cls.TYPE}: unsupported version {raw[1]!r}")
        fields = _fields(cls, raw[1])
        if len(raw) != 2 + len(fields):
            raise MessageDecodeError(
                f"{cls.TYPE}: expected {len(fields)} fields, got {len(raw) - 2}"
            )
        values = {
            n: _from_wire(v, t, f"{cls.TYPE}.{n}")
            for (n, t), v in zip(fields, raw[2:], strict=True)
        }
        try:
            msg = cls(**values)
        except (TypeError, ValueError) as exc:
            raise MessageDecodeError(f"{cls.TYPE}: {exc}") from exc
        if since and msg.wire_version() != raw[1]:
            raise MessageDecodeError(
                f"{cls.TYPE}: version {raw[1]} of a version-{msg.wire_version()} value (non-canonical)"
            )
        msg.validate()
        return msg


def message_types() -> dict[str, type[Message]]:
    """Every registered message type by name."""
    return dict(sorted(_REGISTRY.items()))


def is_message_type(kind: str) -> bool:
    """Whether ``kind`` names a registered message type (without copying the registry)."""
    return kind in _REGISTRY


def decode(data: bytes) -> Message:
    """Decode any registered message; raises ``MessageDecodeError``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageDecodeError("message must be bytes")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageDecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_MESSAGE_SIZE,
            max_str_len=MAX_MESSAGE_SIZE,
            max_array_len=MAX_ITEMS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise MessageDecodeError(f"malformed msgpack: {type(exc).__name__}") from exc
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise MessageDecodeError("not a message array")
    cls = _REGISTRY.get(raw[0])
    if cls is None:
        raise MessageDecodeError(f"unknown message type {raw[0][:40]!r}")
    msg = cls.from_wire(raw)
    if msg.encode() != data:
        raise MessageDecodeError(f"{cls.TYPE}: non-canonical encoding")
    return msg


MAX_JSON_DEPTH = 16
"""The deepest message nests a few levels; JSON nested deeper is refused unparsed."""


def json_nesting_depth(text: str) -> int:
    """Maximum nesting of ``[``/``{`` outside JSON strings (a linear scan, no recursion).

    ``json.loads`` recurses in C: input from the network is measured with
    this before it is parsed, so deep nesting can never exhaust the stack.
    """
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def decode_json(data: bytes | str) -> Message:
    """Decode any registered message from its JSON form; raises ``MessageDecodeError``."""
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) > 2 * MAX_MESSAGE_SIZE + 1024:
            raise MessageDecodeError("JSON message too large")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MessageDecodeError("JSON message is not UTF-8") from exc
    elif isinstance(data, str):
        text = data
    else:
        raise MessageDecodeError("JSON message must be bytes or text")
    if len(text) > 2 * MAX_MESSAGE_SIZE + 1024:
        raise MessageDecodeError("JSON message too large")
    if json_nesting_depth(text) > MAX_JSON_DEPTH:
        raise MessageDecodeError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise MessageDecodeError(f"malformed JSON: {exc.__class__.__name__}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("@type"), str):
        raise MessageDecodeError('a JSON message is an object with a string "@type"')
    cls = _REGISTRY.get(obj["@type"])
    if cls is None:
        raise MessageDecodeError(f"unknown message type {obj['@type'][:40]!r}")
    return cls.from_wire(_json_message_to_wire(obj, cls, cls.TYPE))


def _json_message_to_wire(obj: Any, cls: type[Message], where: str) -> list[Any]:
    if not isinstance(obj, dict):
        raise MessageDecodeError(f"{where}: expected an object")
    version = obj.get("@version")
    ok = isinstance(version, int) and not isinstance(version, bool) and 1 <= version <= cls.VERSION
    fields = _fields(cls, version if ok and _since(cls) else None)
    names = {"@type", "@version", *(n for n, _ in fields)}
    extra = sorted(k for k in obj if k not in names)
    if extra:
        raise MessageDecodeError(f"{where}: unknown fields {extra[:5]}")
    missing = [n for n, _ in fields if n not in obj]
    if missing:
        raise MessageDecodeError(f"{where}: missing fields {missing}")
    return [
        obj.get("@type"),
        obj.get("@version"),
        *(_json_to_wire(obj[n], t, f"{where}.{n}") for n, t in fields),
    ]


def _json_to_wire(raw: Any, tp: Any, where: str) -> Any:
    """Map a JSON value onto the wire form of ``tp``; ``from_wire`` then checks it all."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _json_to_wire(raw, get_args(tp)[0], where)
    if origin in (Union, types.UnionType):
        if raw is None:
            return None
        inner = next(a for a in get_args(tp) if a is not type(None))
        return _json_to_wire(raw, inner, where)
    if origin is tuple:
        if not isinstance(raw, list):
            raise MessageDecodeError(f"{where}: expected a list")
        if len(raw) > MAX_ITEMS:
            raise MessageDecodeError(f"{where}: more than {MAX_ITEMS} items")
        inner = get_args(tp)[0]
        return [_json_to_wire(v, inner, f"{where}[{i}]") for i, v in enumerate(raw)]
    if isinstance(tp, type) and issubclass(tp, Message):
        if isinstance(raw, dict) and raw.get("@type") != tp.TYPE:
            raise MessageDecodeError(f"{where}: expected {tp.TYPE}, got {raw.get('@type')!r}")
        return _json_message_to_wire(raw, tp, where)
    if tp is bytes:
        if not isinstance(raw, str) or len(raw) % 2 or raw != raw.lower():
            raise MessageDecodeError(f"{where}: expected lowercase hex")
        try:
            return bytes.fromhex(raw)
        except ValueError as exc:
            raise MessageDecodeError(f"{where}: expected lowercase hex") from exc
    return raw


# --- schema machinery --------------------------------------------------------


def _fields(cls: type, version: int | None = None) -> list[tuple[str, Any]]:
    """The fields of ``cls`` in declaration order; with ``version``, only those it defines."""
    cached = _HINTS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        cached = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
        _HINTS[cls] = cached
    if version is None:
        return cached
    since = _since(cls)
    return [(n, t) for n, t in cached if since.get(n, 1) <= version]


_SINCE: dict[type, dict[str, int]] = {}


def _since(cls: type) -> dict[str, int]:
    """Field name → the version that added it, for fields annotated ``Since(n)``."""
    cached = _SINCE.get(cls)
    if cached is None:
        cached = {}
        for name, tp in _fields(cls):
            if get_origin(tp) is Annotated:
                for extra in get_args(tp)[1:]:
                    if isinstance(extra, Since):
                        cached[name] = extra.n
        _SINCE[cls] = cached
    return cached


def _to_wire(value: Any, tp: Any, *, as_json: bool = False) -> Any:
    """A field's wire value; ``as_json``: its JSON form (bytes as hex, messages as objects)."""
    return _encoder(tp, as_json)(value)


_ENCODERS: dict[tuple[Any, bool], Callable[[Any], Any]] = {}
_PLANS: dict[tuple[type, int, bool], list[tuple[str, Callable[[Any], Any]]]] = {}


def _identity(value: Any) -> Any:
    return value


def _encoder(tp: Any, as_json: bool) -> Callable[[Any], Any]:
    """The encoder for values of type ``tp``, built once per type (encoding is hot)."""
    key = (tp, as_json)
    fn = _ENCODERS.get(key)
    if fn is None:
        fn = _ENCODERS[key] = _make_encoder(tp, as_json)
    return fn


def _make_encoder(tp: Any, as_json: bool) -> Callable[[Any], Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        return _encoder(get_args(tp)[0], as_json)
    if origin in (Union, types.UnionType):
        inner = _encoder(next(a for a in get_args(tp) if a is not type(None)), as_json)
        return lambda v: None if v is None else inner(v)
    if origin is tuple:
        item = _encoder(get_args(tp)[0], as_json)
        if item is _identity:
            return list
        return lambda v: [item(x) for x in v]
    if isinstance(tp, type) and issubclass(tp, Message):
        if as_json:
            return lambda v: v.to_json()
        return lambda v: v.to_wire()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        _enum_value_type(tp)  # refuse an unsupported enum when the schema is first used
        return _enum_value
    if as_json and tp is bytes:
        return lambda v: bytes(v).hex()
    return _identity


def _enum_value(value: Any) -> Any:
    # A non-member passes through unchanged, so a test can build an off-schema value;
    # decoding refuses it.
    return value.value if isinstance(value, enum.Enum) else value


_ENUM_VALUE_TYPES: dict[type, type] = {}


def _enum_value_type(tp: type[enum.Enum]) -> type:
    """``str`` or ``int``: the one type of every value of ``tp`` (a schema bug otherwise)."""
    vt = _ENUM_VALUE_TYPES.get(tp)
    if vt is None:
        kinds = {str if isinstance(m.value, str) else int for m in tp}
        ok = all(
            isinstance(m.value, str) or (isinstance(m.value, int) and type(m.value) is not bool)
            for m in tp
        )
        if not ok or len(kinds) != 1:
            raise TypeError(f"enum {tp.__name__}: values must be all str or all int")
        if kinds == {int} and not all(0 <= m.value <= MAX_INT for m in tp):
            raise TypeError(f"enum {tp.__name__}: int values must be unsigned 32-bit")
        vt = _ENUM_VALUE_TYPES[tp] = kinds.pop()
    return vt


def _enum_from_wire(raw: Any, tp: type[enum.Enum], where: str) -> enum.Enum:
    vt = _enum_value_type(tp)
    if vt is str and not isinstance(raw, str):
        raise MessageDecodeError(f"{where}: expected a string ({tp.__name__})")
    if vt is int and (not isinstance(raw, int) or isinstance(raw, bool)):
        raise MessageDecodeError(f"{where}: expected an int ({tp.__name__})")
    member = tp._value2member_map_.get(raw)
    if member is None:
        shown = raw[:40] if isinstance(raw, str) else raw
        raise MessageDecodeError(f"{where}: unknown {tp.__name__} value {shown!r}")
    return member


def _plan(cls: type, version: int, as_json: bool) -> list[tuple[str, Callable[[Any], Any]]]:
    """The fields ``version`` of ``cls`` defines, each with its encoder."""
    key = (cls, version, as_json)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = [(n, _encoder(t, as_json)) for n, t in _fields(cls, version)]
    return plan


def _from_wire(raw: Any, tp: Any, where: str) -> Any:
    limit: Size | MaxSize | None = None
    if get_origin(tp) is Annotated:
        tp, *extras = get_args(tp)
        limit = next((e for e in extras if isinstance(e, Size | MaxSize)), None)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if raw is None:
            return None
        inner = next(a for a in get_args(tp) if a is not type(None))
        return _from_wire(raw, Annotated[inner, limit] if limit else inner, where)
    if origin is tuple:
        if not isinstance(raw, list):
            raise MessageDecodeError(f"{where}: expected a list")
        _check_len(len(raw), limit, where)
        inner = get_args(tp)[0]
        return tuple(_from_wire(v, inner, f"{where}[{i}]") for i, v in enumerate(raw))
    if isinstance(tp, type) and issubclass(tp, Message):
        return tp.from_wire(raw)
    if tp is bool:
        if not isinstance(raw, bool):
            raise MessageDecodeError(f"{where}: expected a bool")
        return raw
    if tp is int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise MessageDecodeError(f"{where}: expected an int")
        if not 0 <= raw <= MAX_INT:
            raise MessageDecodeError(f"{where}: integer out of range")
        return raw
    if tp is bytes:
        if not isinstance(raw, bytes):
            raise MessageDecodeError(f"{where}: expected bytes")
        _check_len(len(raw), limit, where)
        return raw
    if tp is str:
        if not isinstance(raw, str):
            raise MessageDecodeError(f"{where}: expected a string")
        try:
            encoded = raw.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, which a JSON escape can carry
            raise MessageDecodeError(f"{where}: not valid Unicode (lone surrogate)") from exc
        _check_len(len(encoded), limit, where)
        return raw
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_from_wire(raw, tp, where)
    raise TypeError(f"unsupported field type {tp!r} at {where}")  # schema bug, not input


def _check_len(n: int, limit: Size | MaxSize | None, where: str) -> None:
    if isinstance(limit, Size) and n != limit.n:
        raise MessageDecodeError(f"{where}: expected {limit.n} bytes, got {n}")
    if isinstance(limit, MaxSize) and n > limit.n:
        raise MessageDecodeError(f"{where}: {n} exceeds the limit of {limit.n}")
