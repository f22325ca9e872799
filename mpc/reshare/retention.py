"""When an old share may be deleted after a reshare.

Deletion is the one irreversible step, so an old share is kept until the new
epoch is certified *and* acknowledged by ``min(n', 2t'-1)`` new members. An
acknowledgement is a member's signed statement that it holds a share matching
the certified public polynomial; a member checks ``s_j·g2 == PK_j`` before
signing one. Until then the tracker reports the share as retained and names
whose acknowledgement is missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from mpc.cert import EpochCertificate
from mpc.codec import Message, Size
from mpc.errors import InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.secret import SecretShare
from mpc.sig import CTX_RESHARE_ACK, SigningKey, VerifyKey


def required_acknowledgements(n: int, t: int) -> int:
    """``min(n', 2t'-1)``: with at most ``t'-1`` faulty, at least ``t'`` acknowledgers are honest."""
    return min(n, 2 * t - 1)


@dataclass(frozen=True, slots=True)
class Acknowledgement(Message):
    """Member ``index`` holds a share of epoch ``epoch`` that matches the certified polynomial."""

    TYPE = "reshare/ack"
    epoch: int
    certificate_hash: Annotated[bytes, Size(32)]
    index: int
    signature: Annotated[bytes, Size(64)]

    @staticmethod
    def statement(epoch: int, certificate_hash: bytes, index: int) -> bytes:
        return epoch.to_bytes(8, "big") + certificate_hash + index.to_bytes(4, "big")

    @classmethod
    def create(
        cls, certificate: EpochCertificate, share: SecretShare, key: SigningKey
    ) -> Acknowledgement:
        """Sign an acknowledgement, after checking the share against the certificate."""
        pk = certificate.public_shares().get(share.index)
        if pk is None or share.value.value * G2.generator() != pk:
            raise LocalProtocolError("share does not match the certified public polynomial")
        h = certificate.hash()
        epoch = certificate.transcript.epoch
        sig = key.sign(CTX_RESHARE_ACK, cls.statement(epoch, h, int(share.index)))
        return cls(epoch, h, int(share.index), sig)

    def verify(self, key: VerifyKey) -> None:
        key.verify(
            CTX_RESHARE_ACK,
            self.statement(self.epoch, self.certificate_hash, self.index),
            self.signature,
        )


@dataclass(frozen=True)
class RetentionStatus:
    deletable: bool
    acknowledged: tuple[ParticipantIndex, ...]
    missing: tuple[ParticipantIndex, ...]
    required: int


class RetentionTracker:
    """Tracks acknowledgements of a new epoch for a node that still holds an old share."""

    def __init__(
        self, certificate: EpochCertificate, identities: Mapping[ParticipantIndex, VerifyKey]
    ) -> None:
        self.certificate = certificate
        self._hash = certificate.hash()
        committee = certificate.transcript.committee_indices()
        if set(committee) - set(identities):
            raise LocalProtocolError("identity keys missing for some new members")
        self._identities = {i: identities[i] for i in committee}
        self._acks: dict[ParticipantIndex, Acknowledgement] = {}
        self.required = required_acknowledgements(len(committee), certificate.transcript.threshold)

    def add(self, ack: Acknowledgement, sender: ParticipantIndex) -> None:
        """Record an acknowledgement; raises ``RemoteProtocolError`` for a bad one."""
        idx = ParticipantIndex(ack.index)
        key = self._identities.get(idx)
        if (
            key is None
            or ack.certificate_hash != self._hash
            or ack.epoch != self.certificate.transcript.epoch
        ):
            raise RemoteProtocolError(
                "acknowledgement for another epoch or from a non-member", [sender]
            )
        try:
            ack.verify(key)
        except InvalidSignature as exc:
            raise RemoteProtocolError("bad acknowledgement signature", [sender]) from exc
        self._acks.setdefault(idx, ack)

    def status(self) -> RetentionStatus:
        acked = tuple(sorted(self._acks))
        missing = tuple(i for i in sorted(self._identities) if i not in self._acks)
        return RetentionStatus(len(acked) >= self.required, acked, missing, self.required)
