"""The envelope around every protocol message on the wire.

A frame on a :class:`~net.transport.Transport` is one envelope, the canonical
msgpack array::

    [version, kind, epoch, sender, payload]

``version`` is :data:`ENVELOPE_VERSION`; ``kind`` is the ``TYPE`` of a
registered :mod:`mpc.codec` message; ``epoch`` the sender's epoch;
``sender`` the participant index the sender *claims* (0 for a node that is
not a member yet); ``payload`` the canonical encoding of the message.

The claimed ``sender`` is not authentication: the transport reports the
authenticated peer id with every frame, and the receiver must check that it
is the peer bound to ``sender`` before it believes the claim.

Decoding is strict, like :mod:`mpc.codec`: anything but the canonical
encoding of a well-formed envelope raises :class:`EnvelopeError` (an
``mpc.errors.InvalidEncoding``) whose ``reason`` says which check failed.
:func:`open_envelope` also decodes the payload, which raises
``mpc.codec.MessageDecodeError`` (an ``InvalidEncoding`` too).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

import msgpack

# Every mpc wire message registers itself with ``mpc.codec`` when its module is
# imported; import them all here so that which kinds an envelope may carry does
# not depend on what else the process happened to import.
import mpc.broadcast
import mpc.cert
import mpc.dkg.evidence
import mpc.dkg.messages
import mpc.membership.messages
import mpc.reshare.retention
from mpc.codec import MAX_MESSAGE_SIZE, Message, MessageDecodeError, decode, is_message_type
from mpc.errors import InvalidEncoding

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_FRAME_SIZE",
    "Envelope",
    "EnvelopeError",
    "EnvelopeFailure",
    "MessageDecodeError",
    "decode_envelope",
    "encode_envelope",
    "open_envelope",
    "seal",
]

_REGISTERED_MODULES: Final = (
    mpc.broadcast,
    mpc.cert,
    mpc.dkg.evidence,
    mpc.dkg.messages,
    mpc.membership.messages,
    mpc.reshare.retention,
)

ENVELOPE_VERSION: Final = 2
"""The wire protocol version this code speaks, and the only one it accepts.

1 was the wire up to and including ``e1d36d0``; 2 is the release after it (new
messages and fields). A frame of any other version is refused with
``EnvelopeFailure.UNKNOWN_VERSION`` before anything after the version is read,
so the nodes of one committee must all run one version (``docs/operator-guide.md``,
"Upgrading")."""
MAX_FRAME_SIZE: Final = MAX_MESSAGE_SIZE + 1024
"""The largest frame: a maximal message plus room for the envelope around it."""

_MAX_UINT64: Final = 2**64 - 1
_MAX_KIND: Final = 64
_FIELDS: Final = 5


class EnvelopeFailure(enum.Enum):
    """Why a frame is not a valid envelope (cryptography's ``_Reasons`` style)."""

    MALFORMED = "malformed"
    """Not msgpack, not a 5-element array, a field of the wrong type or range,
    trailing bytes, or a payload whose message type differs from ``kind``."""
    OVERSIZE = "oversize"
    """The frame exceeds ``MAX_FRAME_SIZE`` or the payload ``MAX_MESSAGE_SIZE``."""
    UNKNOWN_VERSION = "unknown-version"
    UNKNOWN_KIND = "unknown-kind"
    """``kind`` is not a registered ``mpc.codec`` message type."""
    NON_CANONICAL = "non-canonical"
    """Valid content, but not encoded the one canonical way."""


class EnvelopeError(InvalidEncoding):
    """A frame that is not the canonical encoding of a valid envelope."""

    def __init__(self, reason: EnvelopeFailure, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {detail}")


@dataclass(frozen=True, slots=True)
class Envelope:
    version: int
    kind: str
    epoch: int
    sender: int
    payload: bytes

    @classmethod
    def of(cls, message: Message, *, epoch: int, sender: int) -> Envelope:
        """The current-version envelope carrying ``message``."""
        return cls(ENVELOPE_VERSION, message.TYPE, epoch, sender, message.encode())


def _check(env: Envelope) -> None:
    """Every check that does not depend on the bytes; raises ``EnvelopeError``."""
    if type(env.version) is not int:
        raise EnvelopeError(EnvelopeFailure.MALFORMED, "version must be an int")
    if env.version != ENVELOPE_VERSION:
        raise EnvelopeError(EnvelopeFailure.UNKNOWN_VERSION, f"version {env.version}")
    if type(env.kind) is not str or len(env.kind) > _MAX_KIND:
        raise EnvelopeError(EnvelopeFailure.MALFORMED, "kind must be a short string")
    for name in ("epoch", "sender"):
        value = getattr(env, name)
        if type(value) is not int or not 0 <= value <= _MAX_UINT64:
            raise EnvelopeError(EnvelopeFailure.MALFORMED, f"{name} must be a uint64")
    if type(env.payload) is not bytes:
        raise EnvelopeError(EnvelopeFailure.MALFORMED, "payload must be bytes")
    if len(env.payload) > MAX_MESSAGE_SIZE:
        raise EnvelopeError(EnvelopeFailure.OVERSIZE, f"payload of {len(env.payload)} bytes")
    if not is_message_type(env.kind):
        raise EnvelopeError(EnvelopeFailure.UNKNOWN_KIND, f"kind {env.kind[:_MAX_KIND]!r}")


def _pack(env: Envelope) -> bytes:
    wire = [env.version, env.kind, env.epoch, env.sender, env.payload]
    return bytes(msgpack.packb(wire, use_bin_type=True))


def encode_envelope(envelope: Envelope) -> bytes:
    """The canonical encoding; raises ``EnvelopeError`` for an envelope no peer would accept."""
    _check(envelope)
    frame = _pack(envelope)
    if len(frame) > MAX_FRAME_SIZE:  # pragma: no cover - the payload bound keeps it below
        raise EnvelopeError(EnvelopeFailure.OVERSIZE, f"frame of {len(frame)} bytes")
    return frame


def seal(message: Message, *, epoch: int, sender: int) -> bytes:
    """``encode_envelope(Envelope.of(message, epoch=epoch, sender=sender))``."""
    return encode_envelope(Envelope.of(message, epoch=epoch, sender=sender))


def _peek_version(frame: bytes) -> int | None:
    """The first element of the frame's top-level array if it is an int, else ``None``."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(frame), 1))
    unpacker.feed(frame)
    try:
        if unpacker.read_array_header() < 1:
            return None
        first = unpacker.unpack()
    except Exception:  # not an array, truncated, garbage: the full decode says which
        return None
    return first if type(first) is int else None


def decode_envelope(frame: bytes) -> Envelope:
    """Decode a frame; raises ``EnvelopeError`` (with a ``reason``) on anything else."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise EnvelopeError(EnvelopeFailure.MALFORMED, "a frame is bytes")
    frame = bytes(frame)
    if len(frame) > MAX_FRAME_SIZE:
        raise EnvelopeError(EnvelopeFailure.OVERSIZE, f"frame of {len(frame)} bytes")
    # The version comes first, so that a later version may change everything after it.
    version = _peek_version(frame)
    if version is not None and version != ENVELOPE_VERSION:
        raise EnvelopeError(EnvelopeFailure.UNKNOWN_VERSION, f"version {version}")
    try:
        raw: object = msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_FRAME_SIZE,  # an oversize payload is reported as OVERSIZE below
            max_str_len=_MAX_KIND,
            max_array_len=_FIELDS,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise EnvelopeError(
            EnvelopeFailure.MALFORMED, f"not msgpack ({type(exc).__name__})"
        ) from exc
    if not isinstance(raw, list):
        raise EnvelopeError(EnvelopeFailure.MALFORMED, "not an envelope array")
    if len(raw) != _FIELDS:
        raise EnvelopeError(EnvelopeFailure.MALFORMED, f"{len(raw)} fields, expected {_FIELDS}")
    envelope = Envelope(*raw)
    _check(envelope)
    if _pack(envelope) != frame:
        raise EnvelopeError(EnvelopeFailure.NON_CANONICAL, "re-encoding differs")
    return envelope


def open_envelope(frame: bytes) -> tuple[Envelope, Message]:
    """Decode the envelope and its payload, and check that the payload is of ``kind``.

    Raises ``EnvelopeError`` for the envelope and ``MessageDecodeError`` for the payload.
    """
    envelope = decode_envelope(frame)
    message = decode(envelope.payload)
    if message.TYPE != envelope.kind:
        raise EnvelopeError(
            EnvelopeFailure.MALFORMED, f"kind {envelope.kind!r} carries a {message.TYPE!r}"
        )
    return envelope, message
