"""Bounded memos of pure functions of immutable inputs: speed only, never another answer.

A node (and the simulator, which hosts many nodes in one process) hashes, encodes
and decodes the same certificates again and again: every chain update carries the
whole chain, and every acknowledgement and endorsement names a certificate by hash.
These memos answer a repeat from the first computation. Each one is only ever put
in front of a function whose result depends on nothing but its input, and whose
input cannot change:

* ``IdentityMemo`` keys a frozen message by the object itself. The entry holds a
  reference to the object, so its ``id`` cannot be reused while the entry exists,
  and a hit requires ``entry is obj``.
* ``BytesMemo`` keys by the full input bytes (a ``bytes`` copy, so a caller's
  buffer changing later cannot change a key). Only successful results are kept:
  input that raises is computed again, and raises again.

Both are bounded (``limit`` entries; full, they start afresh), so memory stays
bounded whatever a peer sends, and neither reads a clock or draws randomness.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from mpc.codec import Message

K = TypeVar("K")
V = TypeVar("V")
M = TypeVar("M", bound="Message")

DEFAULT_LIMIT = 1024


class IdentityMemo(Generic[K, V]):
    """``fn(obj)`` for immutable ``obj``, remembered per object (see the module docstring)."""

    __slots__ = ("_entries", "_fn", "_limit")

    def __init__(self, fn: Callable[[K], V], limit: int = DEFAULT_LIMIT) -> None:
        self._fn = fn
        self._entries: dict[int, tuple[K, V]] = {}
        self._limit = limit

    def __call__(self, obj: K) -> V:
        entry = self._entries.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        value = self._fn(obj)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[id(obj)] = (obj, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


class BytesMemo(Generic[V]):
    """``fn(data)`` remembered by the full bytes of ``data``; failures are not remembered."""

    __slots__ = ("_entries", "_fn", "_limit")

    def __init__(self, fn: Callable[[bytes], V], limit: int = DEFAULT_LIMIT) -> None:
        self._fn = fn
        self._entries: dict[bytes, V] = {}
        self._limit = limit

    def __call__(self, data: bytes) -> V:
        if not isinstance(data, bytes | bytearray | memoryview):
            return self._fn(data)  # not bytes: whatever ``fn`` says (it refuses it)
        key = bytes(data)
        try:
            return self._entries[key]
        except KeyError:
            pass
        value = self._fn(key)  # raises on bad input: nothing is stored
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[key] = value
        return value

    def clear(self) -> None:
        self._entries.clear()


def decoder(cls: type[M], limit: int = DEFAULT_LIMIT) -> BytesMemo[M]:
    """``cls.decode``, remembered by the full bytes: the members of one run decode the
    same broadcast payloads (decoding is strict and pure: ``mpc.codec``)."""
    return BytesMemo(cls.decode, limit)


__all__ = ["DEFAULT_LIMIT", "BytesMemo", "IdentityMemo", "decoder"]
