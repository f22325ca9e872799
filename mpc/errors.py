"""Typed errors shared by the whole ``mpc`` package.

``ProtocolError`` splits into ``LocalProtocolError`` (the caller misused an
API: our bug) and ``RemoteProtocolError`` (a peer misbehaved; ``culprits``
names the participants at fault).
"""

from __future__ import annotations

from collections.abc import Iterable

from mpc.ids import ParticipantIndex


class InvalidEncoding(ValueError):
    """Bytes that do not decode to a valid object (wrong length, bad flags, a
    coordinate out of range, a point off the curve or outside the subgroup)."""


class InvalidSignature(Exception):
    """A signature, proof or authentication tag failed verification."""


class DecryptionError(Exception):
    """A ciphertext failed authentication or could not be decrypted."""


class ProtocolError(Exception):
    """Base class of protocol errors; use one of the two subclasses."""


class LocalProtocolError(ProtocolError):
    """The caller used an API wrongly (a bug on this side)."""


class RemoteProtocolError(ProtocolError):
    """A peer misbehaved. ``culprits`` names every participant at fault."""

    def __init__(self, message: str, culprits: Iterable[ParticipantIndex]) -> None:
        self.culprits: frozenset[ParticipantIndex] = frozenset(culprits)
        named = ", ".join(str(int(c)) for c in sorted(self.culprits))
        super().__init__(f"{message} (culprits: {named})" if named else message)


class InvalidShare(RemoteProtocolError):
    """A share or partial does not match its public commitment."""


class InvalidProofOfPossession(RemoteProtocolError):
    """A proof of possession of a key failed."""


class Equivocation(RemoteProtocolError):
    """A participant signed two different messages for one slot."""


class InvalidComplaint(RemoteProtocolError):
    """A complaint that the accused dealer answered correctly, or malformed."""
