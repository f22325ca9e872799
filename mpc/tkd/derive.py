"""Partials, combination and verification of derived app points (docs/crypto.md §TKD)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mpc.errors import InvalidEncoding, InvalidShare, LocalProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2, hash_to_g1, pairing_check
from mpc.math.fields import lagrange_coefficients
from mpc.secret import SecretBytes, SecretShare
from mpc.tkd.ids import KeyId

DST_DERIVE = b"QUORUM-KMS-V01-DERIVE-BLS12381G1_XMD:SHA-256_SSWU_RO_"
"""Hash-to-G1 tag of app key derivation and of the IBE identity."""

APP_KEY_SALT = b"quorum-kms/v1/app-key"
APP_KEY_LEN = 32


def derive_point_base(key_id: KeyId) -> G1:
    """``H(id) = hash_to_g1(encode(id), DST_DERIVE)``."""
    return hash_to_g1(key_id.encode(), DST_DERIVE)


@dataclass(frozen=True, slots=True)
class Partial:
    """Node ``index``'s partial ``s_index·H(id)``. A partial alone reveals nothing
    useful, but it is still key material in transit: its repr is redacted."""

    index: ParticipantIndex
    point: G1 = field(repr=False)

    def to_bytes(self) -> bytes:
        return self.point.to_bytes()

    @classmethod
    def from_bytes(cls, index: ParticipantIndex, data: bytes) -> Partial:
        return cls(index, G1.from_bytes(data))


@dataclass(frozen=True, slots=True)
class DerivedPoint:
    """The combined ``σ = s·H(id)``: the root of one app key. Secret."""

    key_id: KeyId
    point: G1 = field(repr=False)

    def __repr__(self) -> str:
        return f"DerivedPoint(key_id={self.key_id!r}, point=<redacted>)"

    def app_key(self) -> AppKey:
        """``HKDF-SHA256(ikm=σ, salt=APP_KEY_SALT, info=encode(id))``, 32 bytes."""
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=APP_KEY_LEN,
            salt=APP_KEY_SALT,
            info=self.key_id.encode(),
        ).derive(self.point.to_bytes())
        return AppKey(self.key_id, SecretBytes(okm))


@dataclass(frozen=True, slots=True)
class AppKey:
    """A 32-byte app key for one ``(app_id, purpose, version)``."""

    key_id: KeyId
    secret: SecretBytes


def derive_partial(share: SecretShare, key_id: KeyId) -> Partial:
    """A node's partial ``s_i·H(id)`` (constant-time in the share)."""
    return Partial(share.index, share.value.value * derive_point_base(key_id))


def combine(partials: Sequence[Partial], threshold: int) -> G1:
    """Lagrange-combine exactly ``threshold`` partials (public data) into ``s·H(id)``."""
    if threshold < 1:
        raise LocalProtocolError("threshold must be at least 1")
    if len(partials) < threshold:
        raise LocalProtocolError(f"need {threshold} partials, got {len(partials)}")
    chosen = sorted(partials, key=lambda p: int(p.index))[:threshold]
    indices = [int(p.index) for p in chosen]
    if len(set(indices)) != len(indices):
        raise LocalProtocolError("partials from the same index twice")
    lams = lagrange_coefficients(indices, 0)
    return G1.msm([p.point for p in chosen], lams)


def verify_combined(sigma: G1, key_id: KeyId, mpk: G2) -> bool:
    """``e(σ, g2) == e(H(id), MPK)``, as one product check."""
    return pairing_check([(sigma, -G2.generator()), (derive_point_base(key_id), mpk)])


def verify_partial(partial: Partial, key_id: KeyId, public_share: G2) -> bool:
    """``e(P_i, g2) == e(H(id), PK_i)``."""
    h = derive_point_base(key_id)
    return pairing_check([(partial.point, -G2.generator()), (h, public_share)])


def combine_and_verify(
    partials: Sequence[Partial],
    key_id: KeyId,
    mpk: G2,
    public_shares: Mapping[ParticipantIndex, G2],
    threshold: int,
) -> DerivedPoint:
    """Combine ``threshold`` partials and check the result against ``MPK``.

    On failure every partial is checked against its node's public share and
    ``InvalidShare`` names the bad indices; the caller drops them and asks
    other nodes. A partial from an index without a public share is refused.
    """
    unknown = [p.index for p in partials if p.index not in public_shares]
    if unknown:
        raise InvalidShare("partial from an index outside the committee", unknown)
    sigma = combine(partials, threshold)
    if verify_combined(sigma, key_id, mpk):
        return DerivedPoint(key_id, sigma)
    bad = [p.index for p in partials if not verify_partial(p, key_id, public_shares[p.index])]
    if not bad:
        # Every partial matches its public share, so the public shares
        # themselves are inconsistent with MPK: not a node's fault we can name.
        raise InvalidEncoding("public shares are inconsistent with the master public key")
    raise InvalidShare("partial does not match the node's public share", bad)
