"""Third-party-checkable evidence of misbehaviour in the sharing protocols.

Only what anyone can check with public data is evidence: an equivocation
pair (``mpc.broadcast.EquivocationEvidence``); a justification whose revealed
share fails the dealer's own signed commitments; and, in a reshare, a dealer
whose signed constant-term commitment differs from its public share. A
missing message excludes its sender everywhere but is not evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from mpc.broadcast import BroadcastPayload, EquivocationEvidence, session_id
from mpc.codec import Message, MessageDecodeError, Size
from mpc.dkg.messages import DealBundle, JustificationBundle
from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.math.fields import scalar_from_bytes
from mpc.math.vss import share_matches
from mpc.sig import CTX_BROADCAST_DIGEST, VerifyKey


def _check_signed(payload: BroadcastPayload, key: VerifyKey, run: bytes, phase: bytes) -> None:
    """The dealer signed ``payload`` in phase ``phase`` of run ``run`` (and no other)."""
    if payload.header.session != session_id(run, phase):
        raise InvalidSignature("the signed message belongs to another run or phase")
    key.verify(CTX_BROADCAST_DIGEST, payload.header.statement(), payload.header.signature)


@dataclass(frozen=True, slots=True)
class InvalidJustificationEvidence(Message):
    """The dealer's signed deal and its signed justification revealing a bad share."""

    TYPE = "evidence/invalid-justification"
    run: Annotated[bytes, Size(32)]
    deal: BroadcastPayload
    justification: BroadcastPayload
    recipient: int

    @property
    def culprit(self) -> ParticipantIndex:
        return ParticipantIndex(self.deal.header.sender)

    def verify(self, dealer_key: VerifyKey, *, run: bytes) -> None:
        """Raise ``InvalidSignature`` unless this proves the dealer revealed a bad share
        in run ``run`` (the verifier's own id of a run it knows took place)."""
        if self.run != run:
            raise InvalidSignature("evidence is about another run")
        if self.deal.header.sender != self.justification.header.sender:
            raise InvalidSignature("deal and justification are from different dealers")
        _check_signed(self.deal, dealer_key, run, b"deal")
        _check_signed(self.justification, dealer_key, run, b"justify")
        try:
            deal = DealBundle.decode(self.deal.payload)
            just = JustificationBundle.decode(self.justification.payload)
            commitments = [G2.from_bytes(c) for c in deal.commitments]
            revealed = {s.recipient: s.share for s in just.shares}
            share = scalar_from_bytes(revealed[self.recipient])
        except (KeyError, InvalidEncoding) as exc:
            raise InvalidSignature(f"evidence does not hold together: {exc}") from exc
        if not commitments or share_matches(commitments, self.recipient, share):
            raise InvalidSignature("the revealed share matches the commitments")


@dataclass(frozen=True, slots=True)
class ReshareConstantEvidence(Message):
    """A reshare dealer's signed deal whose constant term is not its public share."""

    TYPE = "evidence/reshare-constant"
    run: Annotated[bytes, Size(32)]
    deal: BroadcastPayload

    @property
    def culprit(self) -> ParticipantIndex:
        return ParticipantIndex(self.deal.header.sender)

    def verify(self, dealer_key: VerifyKey, public_share: G2, *, run: bytes) -> None:
        """``run`` is the id of the reshare (``SharingConfig.run_id()``) and
        ``public_share`` comes from the old epoch's certified public polynomial."""
        if self.run != run:
            raise InvalidSignature("evidence is about another run")
        _check_signed(self.deal, dealer_key, run, b"deal")
        try:
            deal = DealBundle.decode(self.deal.payload)
        except MessageDecodeError as exc:
            raise InvalidSignature("deal does not decode") from exc
        if deal.commitments and deal.commitments[0] == public_share.to_bytes():
            raise InvalidSignature("the constant term matches the public share")


Evidence = EquivocationEvidence | InvalidJustificationEvidence | ReshareConstantEvidence


def evidence_kind(ev: Evidence) -> str:
    return ev.TYPE.removeprefix("evidence/")
