"""A committee member's public record: index, identity key and DKG key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from mpc.codec import Message, MessageDecodeError, Size
from mpc.sig import CTX_DKG_KEY, VerifyKey

MAX_PARTICIPANTS = 1024


@dataclass(frozen=True, slots=True)
class Participant(Message):
    """A committee member: its index bound to its identity key and DKG key.

    ``dkg_key_signature`` is the identity key's signature over
    ``(index, dkg_key)`` under ``CTX_DKG_KEY``, so a dealer encrypts shares
    only to a key the member itself vouched for.
    """

    TYPE = "participant"
    index: int
    identity: Annotated[bytes, Size(32)]
    dkg_key: Annotated[bytes, Size(32)]
    dkg_key_signature: Annotated[bytes, Size(64)]

    def validate(self) -> None:
        if not 1 <= self.index <= 2**31:
            raise MessageDecodeError("participant index out of range")

    @staticmethod
    def dkg_key_statement(index: int, dkg_key: bytes) -> bytes:
        return index.to_bytes(4, "big") + dkg_key

    def verify_key(self) -> VerifyKey:
        return VerifyKey.from_bytes(self.identity)

    def check(self) -> None:
        """Raise ``InvalidSignature``/``InvalidEncoding`` unless the DKG key is vouched for."""
        self.verify_key().verify(
            CTX_DKG_KEY, self.dkg_key_statement(self.index, self.dkg_key), self.dkg_key_signature
        )
