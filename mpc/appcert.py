"""App-key certificates: threshold BLS signatures over an app's dstack root public key.

A dstack CVM's key chain has a second link: the KMS vouches that a secp256k1 public
key is the root key of an app. dstack signs it with one KMS root key; here the
committee signs it as it signs everything, with the master secret ``s`` in G1 (the
min-signature orientation: ``MPK`` is in G2), under a hash-to-curve tag of its own,
``DST_APPCERT``. Every value the committee signs under ``MPK`` is also an IBE
decryption key for its message under that tag, so the tag is used for nothing else
(``DST_DERIVE`` for key release and IBE, ``DST_CERT`` for epoch and membership
certificates).

Two messages are signed for each certified key:

* the **link** message, dstack's own bytes: ``"dstack-kms-issued" ‖ ":" ‖ app_id ‖
  sec1_compressed(pk)`` (:func:`link_message`), whose signature is served as
  ``signature_chain[1]``;
* the **quorum-kms** message, which also names the root key's version and the epoch
  that issued it: ``"quorum-kms/v1/dstack/app-key-cert" ‖ u8 len(app_id) ‖ app_id ‖
  pk (33 bytes) ‖ u32 version ‖ u64 epoch`` (:func:`qkms_message`).

The two never share bytes: they start with different prefixes. Node ``i`` signs with
its share, ``σ_i = s_i·H_APPCERT(m)``; any ``t`` valid partials combine by Lagrange
interpolation into ``σ = s·H_APPCERT(m)``, checked with ``e(σ, g2) == e(H_APPCERT(m),
MPK)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mpc.errors import InvalidEncoding, InvalidShare, LocalProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2, hash_to_g1, pairing_check
from mpc.math.fields import lagrange_coefficients
from mpc.secret import SecretShare

DST_APPCERT = b"QUORUM-KMS-V01-APPCERT-BLS12381G1_XMD:SHA-256_SSWU_RO_"
"""Hash-to-G1 tag of app-key certificates, and of nothing else."""
LINK_PREFIX = b"dstack-kms-issued"
"""dstack's prefix of the KMS-issued link (``signature_chain[1]``), followed by ``:``."""
QKMS_CERT_TAG = b"quorum-kms/v1/dstack/app-key-cert"
"""First bytes of the quorum-kms certificate message, which binds version and epoch."""
ROOT_PUBLIC_LENGTH = 33
"""A secp256k1 public key, SEC1 compressed."""
MAX_APP_ID = 64


def _check(app_id: bytes, root_public: bytes) -> None:
    if not 1 <= len(app_id) <= MAX_APP_ID:
        raise ValueError(f"app id of {len(app_id)} bytes (1-{MAX_APP_ID})")
    if len(root_public) != ROOT_PUBLIC_LENGTH or root_public[0] not in (2, 3):
        raise ValueError("the root public key is a 33-byte SEC1 compressed secp256k1 key")


def link_message(app_id: bytes, root_public: bytes) -> bytes:
    """dstack's link-1 message: ``"dstack-kms-issued" ‖ ":" ‖ app_id ‖ pk``."""
    _check(app_id, root_public)
    return LINK_PREFIX + b":" + bytes(app_id) + bytes(root_public)


def qkms_message(app_id: bytes, root_public: bytes, version: int, epoch: int) -> bytes:
    """The quorum-kms certificate message: tag, app id (length-prefixed), key, ``u32``
    version, ``u64`` epoch."""
    _check(app_id, root_public)
    if not 0 <= version < 2**32:
        raise ValueError("version is a u32")
    if not 0 <= epoch < 2**64:
        raise ValueError("epoch is a u64")
    return (
        QKMS_CERT_TAG
        + bytes([len(app_id)])
        + bytes(app_id)
        + bytes(root_public)
        + version.to_bytes(4, "big")
        + epoch.to_bytes(8, "big")
    )


def appcert_base(message: bytes) -> G1:
    """``H_APPCERT(message)``."""
    return hash_to_g1(message, DST_APPCERT)


@dataclass(frozen=True, slots=True)
class CertPartial:
    """Node ``index``'s partial signature ``s_index·H_APPCERT(m)`` (public once sent)."""

    index: ParticipantIndex
    point: G1 = field(repr=False)

    def to_bytes(self) -> bytes:
        return self.point.to_bytes()

    @classmethod
    def from_bytes(cls, index: ParticipantIndex, data: bytes) -> CertPartial:
        """Decode with every point check; raises ``InvalidEncoding``."""
        return cls(index, G1.from_bytes(bytes(data)))


def sign_partial(share: SecretShare, message: bytes) -> CertPartial:
    """This node's partial over ``message`` with its share (constant time in the share)."""
    return CertPartial(share.index, share.value.value * appcert_base(message))


def verify(mpk: G2, message: bytes, signature: G1 | bytes) -> bool:
    """``e(σ, g2) == e(H_APPCERT(m), MPK)``. A signature that does not decode, or the
    identity (which verifies only under an identity MPK, refused elsewhere), is false."""
    if isinstance(signature, bytes | bytearray):
        try:
            signature = G1.from_bytes(bytes(signature))
        except InvalidEncoding:
            return False
    if signature.is_identity() or mpk.is_identity():
        return False
    return pairing_check([(signature, -G2.generator()), (appcert_base(message), mpk)])


def verify_partial(partial: CertPartial, message: bytes, public_share: G2) -> bool:
    """``e(σ_i, g2) == e(H_APPCERT(m), PK_i)``."""
    return pairing_check([(partial.point, -G2.generator()), (appcert_base(message), public_share)])


def combine(partials: Sequence[CertPartial], threshold: int) -> G1:
    """Lagrange-combine the ``threshold`` partials of lowest index into ``s·H_APPCERT(m)``."""
    if threshold < 1:
        raise LocalProtocolError("threshold must be at least 1")
    if len(partials) < threshold:
        raise LocalProtocolError(f"need {threshold} partials, got {len(partials)}")
    chosen = sorted(partials, key=lambda p: int(p.index))[:threshold]
    indices = [int(p.index) for p in chosen]
    if len(set(indices)) != len(indices):
        raise LocalProtocolError("partials from the same index twice")
    return G1.msm([p.point for p in chosen], lagrange_coefficients(indices, 0))


def combine_and_verify(
    partials: Sequence[CertPartial],
    message: bytes,
    mpk: G2,
    public_shares: Mapping[ParticipantIndex, G2],
    threshold: int,
) -> G1:
    """Combine ``threshold`` partials and check the signature under ``MPK``.

    On failure every partial is checked against its node's public share and
    ``InvalidShare`` names the bad indices. A partial from an index without a public
    share is refused; if every partial verifies but the combination does not, the
    public shares are inconsistent with ``MPK`` (``InvalidEncoding``)."""
    unknown = [p.index for p in partials if p.index not in public_shares]
    if unknown:
        raise InvalidShare("partial from an index outside the committee", unknown)
    sigma = combine(partials, threshold)
    if verify(mpk, message, sigma):
        return sigma
    bad = [p.index for p in partials if not verify_partial(p, message, public_shares[p.index])]
    if not bad:
        raise InvalidEncoding("public shares are inconsistent with the master public key")
    raise InvalidShare("partial does not match the node's public share", bad)


__all__ = [
    "DST_APPCERT",
    "LINK_PREFIX",
    "QKMS_CERT_TAG",
    "ROOT_PUBLIC_LENGTH",
    "CertPartial",
    "appcert_base",
    "combine",
    "combine_and_verify",
    "link_message",
    "qkms_message",
    "sign_partial",
    "verify",
    "verify_partial",
]
