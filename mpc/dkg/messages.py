"""Payloads of the sharing protocols (DKG and resharing) and the participant record.

These travel inside ``mpc.broadcast`` messages (deal, response, justification)
or point to point (certificate partials, acknowledgements).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from mpc.broadcast import BroadcastPayload
from mpc.codec import MaxSize, Message, MessageDecodeError, Size
from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2
from mpc.participant import MAX_PARTICIPANTS, Participant
from mpc.sig import CTX_RUN_KEY, SigningKey, VerifyKey

OMITTED_ENC = bytes(32)
"""``EncryptedShare.enc`` of a share a dealer could not encrypt: its recipient has no
agreed run key. The all-zero X25519 point is never an HPKE encapsulation."""


@dataclass(frozen=True, slots=True)
class RunKey(Message):
    """A recipient's X25519 encryption key for one sharing run, signed by its identity.

    Fresh for every run (every attempt), erased when the run ends: a later
    compromise of the member opens none of the run's recorded deals.
    """

    TYPE = "dkg/run-key"
    run: Annotated[bytes, Size(32)]
    index: int
    key: Annotated[bytes, Size(32)]
    signature: Annotated[bytes, Size(64)]

    @staticmethod
    def statement(run: bytes, index: int, key: bytes) -> bytes:
        return run + index.to_bytes(4, "big") + key

    @classmethod
    def create(cls, run: bytes, index: int, key: bytes, identity: SigningKey) -> RunKey:
        return cls(run, index, key, identity.sign(CTX_RUN_KEY, cls.statement(run, index, key)))

    def verify(self, identity: VerifyKey) -> None:
        """Raise ``InvalidSignature`` unless ``identity`` signed this key for this run."""
        identity.verify(CTX_RUN_KEY, self.statement(self.run, self.index, self.key), self.signature)


@dataclass(frozen=True, slots=True)
class EncryptedShare(Message):
    """A share sealed to the recipient's run key; ``enc == OMITTED_ENC`` (and an all-zero
    ``ciphertext``) when the recipient has no agreed run key."""

    TYPE = "dkg/encrypted-share"
    recipient: int
    enc: Annotated[bytes, Size(32)]
    ciphertext: Annotated[bytes, Size(48)]


@dataclass(frozen=True, slots=True)
class DealBundle(Message):
    """A dealer's commitments in G2 and every recipient's encrypted share."""

    TYPE = "dkg/deal"
    dealer: int
    commitments: Annotated[tuple[bytes, ...], MaxSize(MAX_PARTICIPANTS)]
    shares: Annotated[tuple[EncryptedShare, ...], MaxSize(MAX_PARTICIPANTS)]

    def validate(self) -> None:
        for c in self.commitments:
            if len(c) != G2.SIZE:
                raise MessageDecodeError("dkg/deal: commitment of the wrong size")
        recipients = [s.recipient for s in self.shares]
        if recipients != sorted(set(recipients)):
            raise MessageDecodeError("dkg/deal: shares must be sorted by distinct recipient")

    def commitments_hash(self) -> bytes:
        return hashlib.sha256(b"".join(self.commitments)).digest()


@dataclass(frozen=True, slots=True)
class Response(Message):
    TYPE = "dkg/response"
    dealer: int
    complaint: bool


@dataclass(frozen=True, slots=True)
class ResponseBundle(Message):
    """A recipient's verdict on every delivered deal: ok or complaint."""

    TYPE = "dkg/responses"
    responder: int
    responses: Annotated[tuple[Response, ...], MaxSize(MAX_PARTICIPANTS)]

    def validate(self) -> None:
        dealers = [r.dealer for r in self.responses]
        if dealers != sorted(set(dealers)):
            raise MessageDecodeError("dkg/responses: responses must be sorted by distinct dealer")


@dataclass(frozen=True, slots=True)
class RevealedShare(Message):
    TYPE = "dkg/revealed-share"
    recipient: int
    share: Annotated[bytes, Size(32)]


@dataclass(frozen=True, slots=True)
class JustificationBundle(Message):
    """An accused dealer reveals, in clear, the shares of everyone who complained."""

    TYPE = "dkg/justification"
    dealer: int
    shares: Annotated[tuple[RevealedShare, ...], MaxSize(MAX_PARTICIPANTS)]

    def validate(self) -> None:
        recipients = [s.recipient for s in self.shares]
        if recipients != sorted(set(recipients)):
            raise MessageDecodeError(
                "dkg/justification: shares must be sorted by distinct recipient"
            )


@dataclass(frozen=True, slots=True)
class CertificatePartial(Message):
    """A member's BLS partial signature, with its new share, over a transcript."""

    TYPE = "cert/partial"
    signer: int
    transcript_hash: Annotated[bytes, Size(32)]
    signature: Annotated[bytes, Size(48)]


@dataclass(frozen=True, slots=True)
class DealsRequest(Message):
    """Ask a member for the certified deals of run ``run``: a member that holds no share
    of the certified epoch recovers its share from them (``mpc.dkg.recovery``)."""

    TYPE = "dkg/deals-request"
    run: Annotated[bytes, Size(32)]


@dataclass(frozen=True, slots=True)
class DealsAnswer(Message):
    """The answer: the run's qualified dealers, their signed deal-round payloads and
    their signed justify-round payloads (as the broadcast delivered them). Nothing in it
    is trusted: the receiver checks every signature and every share against the
    certificate."""

    TYPE = "dkg/deals"
    run: Annotated[bytes, Size(32)]
    qual: Annotated[tuple[int, ...], MaxSize(MAX_PARTICIPANTS)]
    deals: Annotated[tuple[BroadcastPayload, ...], MaxSize(MAX_PARTICIPANTS)]
    justifications: Annotated[tuple[BroadcastPayload, ...], MaxSize(MAX_PARTICIPANTS)]

    def validate(self) -> None:
        if list(self.qual) != sorted(set(self.qual)):
            raise MessageDecodeError("dkg/deals: qualified dealers must be sorted and distinct")

    def payload_bytes(self) -> int:
        """The size of the signed payloads it carries (what the answer bound counts)."""
        return sum(len(p.payload) + 128 for p in (*self.deals, *self.justifications))


def decode_points_g2(raw: tuple[bytes, ...]) -> list[G2]:
    """Decode a tuple of G2 encodings; raises ``InvalidEncoding``."""
    return [G2.from_bytes(b) for b in raw]


def decode_g1(raw: bytes) -> G1:
    return G1.from_bytes(raw)


__all__ = [
    "OMITTED_ENC",
    "CertificatePartial",
    "DealBundle",
    "EncryptedShare",
    "InvalidEncoding",
    "InvalidSignature",
    "JustificationBundle",
    "Participant",
    "ParticipantIndex",
    "Response",
    "ResponseBundle",
    "RevealedShare",
    "RunKey",
]
