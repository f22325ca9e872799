"""Epoch certificates: threshold BLS signatures under the master public key.

Every member of a new epoch signs the epoch transcript with its new share,
``σ_i = s_i·H_CERT(transcript)`` in G1 (the min-signature orientation: the
master public key is in G2). Any ``t`` valid partials combine by Lagrange
interpolation into ``σ = s·H_CERT(transcript)``, checked with
``e(σ, g2) == e(H_CERT(transcript), MPK)``. The signed bytes are the
canonical encoding of the transcript, which begins with its kind and version.
``DST_CERT`` differs from ``DST_DERIVE``, so a key handed out by key release
never verifies as a certificate.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from mpc.codec import MaxSize, Message, MessageDecodeError, Size, decode
from mpc.errors import InvalidEncoding, InvalidShare, InvalidSignature, LocalProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2, hash_to_g1, pairing_check
from mpc.math.fields import lagrange_coefficients
from mpc.math.vss import public_share
from mpc.memo import BytesMemo, IdentityMemo
from mpc.participant import MAX_PARTICIPANTS, Participant
from mpc.secret import SecretShare

DST_CERT = b"QUORUM-KMS-V01-CERT-BLS12381G1_XMD:SHA-256_SSWU_RO_"
ZERO_HASH = bytes(32)
IDENTITY_MPK = G2.identity().to_bytes()
"""The encoding of the point at infinity in G2: never a master public key."""


class IdentityMasterKey(InvalidSignature, ValueError):
    """The point at infinity offered as a master public key.

    Under it every certificate check passes with the identity signature and every
    derived key is a public constant, so it is refused wherever an MPK is read.
    """


def check_mpk(mpk: G2 | bytes) -> None:
    """Raise ``IdentityMasterKey`` if ``mpk`` (a point or its encoding) is the identity."""
    raw = mpk if isinstance(mpk, bytes) else mpk.to_bytes()
    if raw == IDENTITY_MPK:
        raise IdentityMasterKey("the identity point is not a master public key")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash_points(points: Sequence[bytes]) -> bytes:
    return sha256(b"".join(points))


def hash_indices(indices: Sequence[int]) -> bytes:
    return sha256(b"".join(int(i).to_bytes(4, "big") for i in sorted(indices)))


class RunKind(enum.StrEnum):
    """Which sharing run made an epoch: the genesis DKG or a reshare (a refresh included).

    A ``StrEnum``: on the wire, in run ids and in labels it is exactly the string
    it always was (``"dkg"``, ``"reshare"``).
    """

    DKG = "dkg"
    RESHARE = "reshare"


def _sha256_of_encoding(message: Message) -> bytes:
    return sha256(message.encode())


encoding_digest: IdentityMemo[Message, bytes] = IdentityMemo(_sha256_of_encoding)
"""``sha256(message.encode())``, remembered per (frozen, immutable) message object:
transcripts and certificates are hashed on every chain update, acknowledgement and
endorsement that names them (``mpc.memo``)."""


@dataclass(frozen=True, slots=True)
class EpochTranscript(Message):
    """What an epoch certificate certifies.

    ``kind`` is ``RunKind.DKG`` for the genesis epoch and ``RunKind.RESHARE`` after it
    (any other value is refused when decoding).
    """

    TYPE = "cert/epoch"
    kind: RunKind
    epoch: int
    attempt: int
    mpk: Annotated[bytes, Size(96)]
    threshold: int
    committee: Annotated[tuple[Participant, ...], MaxSize(MAX_PARTICIPANTS)]
    qual_hash: Annotated[bytes, Size(32)]
    public_polynomial_hash: Annotated[bytes, Size(32)]
    admission_policy_hash: Annotated[bytes, Size(32)]
    previous_certificate_hash: Annotated[bytes, Size(32)]

    def validate(self) -> None:
        if self.kind not in (RunKind.DKG, RunKind.RESHARE):
            raise MessageDecodeError("cert/epoch: unknown kind")
        idx = [p.index for p in self.committee]
        if idx != sorted(set(idx)):
            raise MessageDecodeError("cert/epoch: committee must be sorted by distinct index")
        if not 2 <= self.threshold <= len(self.committee):
            raise MessageDecodeError("cert/epoch: threshold out of range")
        if self.epoch < 0 or self.attempt < 0:
            raise MessageDecodeError("cert/epoch: negative epoch or attempt")
        if self.mpk == IDENTITY_MPK:
            raise MessageDecodeError("cert/epoch: the identity point is not a master public key")

    def hash(self) -> bytes:
        return encoding_digest(self)

    def committee_indices(self) -> list[ParticipantIndex]:
        return [ParticipantIndex(p.index) for p in self.committee]


@dataclass(frozen=True, slots=True)
class EpochCertificate(Message):
    """A transcript, the public polynomial it commits to, and the threshold signature."""

    TYPE = "cert/epoch-certificate"
    transcript: EpochTranscript
    public_polynomial: Annotated[tuple[bytes, ...], MaxSize(MAX_PARTICIPANTS)]
    signature: Annotated[bytes, Size(48)]

    def validate(self) -> None:
        if len(self.public_polynomial) != self.transcript.threshold:
            raise MessageDecodeError("cert: public polynomial degree does not match t")
        if hash_points(self.public_polynomial) != self.transcript.public_polynomial_hash:
            raise MessageDecodeError("cert: public polynomial does not match its hash")
        if self.public_polynomial[0] != self.transcript.mpk:
            raise MessageDecodeError("cert: public polynomial's constant term is not the MPK")

    def hash(self) -> bytes:
        return encoding_digest(self)

    def fingerprint(self) -> bytes:
        return encoding_digest(self)  # ``Message.fingerprint``, remembered

    @classmethod
    def decode(cls, data: bytes) -> EpochCertificate:
        """``Message.decode``, remembered by the full bytes: every chain update repeats
        the links (``mpc.memo``; bytes that fail to decode are decoded again)."""
        return _certificate_decodes(data)

    def verify(self, mpk: G2) -> None:
        """Check the signature under a *pinned* ``mpk``; raises ``InvalidSignature``
        (``IdentityMasterKey`` for the identity point)."""
        check_mpk(mpk)
        if self.transcript.mpk != mpk.to_bytes():
            raise InvalidSignature("certificate is for another master public key")
        try:
            sig = G1.from_bytes(self.signature)
        except InvalidEncoding as exc:
            raise InvalidSignature("malformed certificate signature") from exc
        if not verify_cert_signature(self.transcript.encode(), sig, mpk):
            raise InvalidSignature("certificate signature does not verify")

    def public_shares(self) -> dict[ParticipantIndex, G2]:
        poly = [G2.from_bytes(b) for b in self.public_polynomial]
        return {i: public_share(poly, i) for i in self.transcript.committee_indices()}


def _decode_certificate(data: bytes) -> EpochCertificate:
    msg = decode(data)
    if not isinstance(msg, EpochCertificate):
        raise MessageDecodeError(f"expected {EpochCertificate.TYPE}, got {msg.TYPE}")
    return msg


_certificate_decodes: BytesMemo[EpochCertificate] = BytesMemo(_decode_certificate, limit=256)


def cert_base(message: bytes) -> G1:
    return hash_to_g1(message, DST_CERT)


def sign_partial(share: SecretShare, message: bytes) -> G1:
    """``s_i·H_CERT(message)`` (constant time in the share)."""
    return share.value.value * cert_base(message)


def verify_cert_signature(message: bytes, sig: G1, pk: G2) -> bool:
    return pairing_check([(sig, -G2.generator()), (cert_base(message), pk)])


def combine_partials(
    message: bytes,
    partials: Mapping[ParticipantIndex, G1],
    public_shares: Mapping[ParticipantIndex, G2],
    threshold: int,
    mpk: G2,
) -> G1:
    """Combine ``threshold`` partials into a signature that verifies under ``mpk``.

    The first ``threshold`` partials (by index) are combined and the result checked
    under ``mpk``: one pairing check, and a threshold BLS signature is unique, so any
    ``threshold`` valid partials give these very bytes. Only if that check fails are
    the partials checked one by one against their public shares, and ``InvalidShare``
    names the bad ones (callers check partials as they arrive, so this is the rare
    path: a partial that entered without a check).
    """
    if len(partials) >= threshold:
        chosen = sorted(partials)[:threshold]
        if all(i in public_shares for i in chosen):
            lams = lagrange_coefficients([int(i) for i in chosen], 0)
            sig = G1.msm([partials[i] for i in chosen], lams)
            if verify_cert_signature(message, sig, mpk):
                return sig
    bad = [
        i
        for i, p in sorted(partials.items())
        if i not in public_shares or not verify_cert_signature(message, p, public_shares[i])
    ]
    if bad:
        raise InvalidShare("certificate partial does not verify", bad)
    if len(partials) < threshold:
        raise LocalProtocolError(f"need {threshold} partials, have {len(partials)}")
    # Every partial verifies against its public share, yet they do not combine to a
    # signature under ``mpk``: the public shares do not match ``mpk``.
    raise InvalidSignature("combined certificate does not verify")
