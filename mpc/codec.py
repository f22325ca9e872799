"""Typed wire messages with one canonical msgpack encoding.

A message is a frozen dataclass deriving from ``Message`` with a registered
``TYPE`` name and a ``VERSION``. It encodes as the msgpack array
``[TYPE, VERSION, field₁, field₂, …]`` in declaration order; nested messages
are arrays of the same shape. Supported field types: ``int`` (not ``bool``),
``bool``, ``bytes``, ``str``, ``tuple[T, ...]``, nested ``Message`` classes and
``T | None``. ``Annotated[bytes, Size(n)]`` fixes a length, ``MaxSize(n)``
bounds one.

Decoding is strict: the bytes must be exactly the canonical encoding of the
decoded value (re-encoding must reproduce them), types must match, lengths
must hold, and then the message's own ``validate()`` runs. Every failure
raises ``MessageDecodeError`` (an ``InvalidEncoding``) with a reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
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

    def to_wire(self) -> list[Any]:
        return [
            self.TYPE,
            self.VERSION,
            *(_to_wire(getattr(self, n), t) for n, t in _fields(type(self))),
        ]

    def encode(self) -> bytes:
        """The canonical msgpack encoding."""
        return bytes(msgpack.packb(self.to_wire(), use_bin_type=True))

    def fingerprint(self) -> bytes:
        """SHA-256 of the canonical encoding."""
        return hashlib.sha256(self.encode()).digest()

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
        if raw[1] != cls.VERSION or isinstance(raw[1], bool):
            raise MessageDecodeError(f"{cls.TYPE}: unsupported version {raw[1]!r}")
        fields = _fields(cls)
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
        msg.validate()
        return msg


def message_types() -> dict[str, type[Message]]:
    """Every registered message type by name."""
    return dict(sorted(_REGISTRY.items()))


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


# --- schema machinery --------------------------------------------------------


def _fields(cls: type) -> list[tuple[str, Any]]:
    cached = _HINTS.get(cls)
    if cached is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        cached = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
        _HINTS[cls] = cached
    return cached


def _to_wire(value: Any, tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        return _to_wire(value, get_args(tp)[0])
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        inner = next(a for a in get_args(tp) if a is not type(None))
        return _to_wire(value, inner)
    if origin is tuple:
        inner = get_args(tp)[0]
        return [_to_wire(v, inner) for v in value]
    if isinstance(tp, type) and issubclass(tp, Message):
        return value.to_wire()
    return value


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
        _check_len(len(raw.encode("utf-8")), limit, where)
        return raw
    raise TypeError(f"unsupported field type {tp!r} at {where}")  # schema bug, not input


def _check_len(n: int, limit: Size | MaxSize | None, where: str) -> None:
    if isinstance(limit, Size) and n != limit.n:
        raise MessageDecodeError(f"{where}: expected {limit.n} bytes, got {n}")
    if isinstance(limit, MaxSize) and n > limit.n:
        raise MessageDecodeError(f"{where}: {n} exceeds the limit of {limit.n}")
