"""Key request and response schemas shared by the node and the CVM client.

A CVM asks for its keys with a ``KeyRequest``: the ``KeyRequestBody`` (app id,
purposes with versions, one ephemeral HPKE public key per committee index,
timestamp, nonce, minimum policy version, epoch, and the hash of the app's
policy bundle when the request carries or names one) plus the TDX quote,
when the app's policy uses a compose hash the RTMR3 event log, and
optionally the app's signed policy bundle: a node that has not admitted the
app admits it on the first release this bundle's policy allows. The quote's
64-byte ``report_data`` is ``SHA-512(body.encode())``, which binds every
field of the body to the attested CVM.

Node ``i`` answers each purpose with a ``KeyShareResponse``: its partial
``s_i·H(id)`` HPKE-encrypted to ephemeral key ``i`` and signed by its
identity over ``(request hash, purpose, version, epoch, index, enc,
ciphertext)``. A wrong or undecryptable partial, together with the private
half of ephemeral key ``i`` and the request, is third-party evidence against
node ``i`` that reveals nothing about any other node's partial.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated

from mpc.codec import MaxSize, Message, MessageDecodeError, Size
from mpc.errors import InvalidSignature
from mpc.sig import CTX_APP_CERT_RESPONSE, CTX_KEY_RESPONSE, VerifyKey
from mpc.tkd import KeyId

MAX_QUOTE = 16 * 1024
MAX_EVENT_LOG = 256 * 1024
MAX_PURPOSES = 16
MAX_BUNDLE = 64 * 1024
"""Largest encoded policy bundle a key request may carry."""
BUNDLE_HASH_DOMAIN = b"quorum-kms/v1/policy/bundle-hash"
"""Domain tag of :func:`bundle_hash`."""
RELEASE_INFO = b"quorum-kms/v1/key-release"


@dataclass(frozen=True, slots=True)
class PurposeVersion(Message):
    TYPE = "kms/purpose"
    purpose: Annotated[str, MaxSize(64)]
    version: int

    def key_id(self, app_id: bytes) -> KeyId:
        return KeyId(app_id, self.purpose, self.version)


@dataclass(frozen=True, slots=True)
class EphemeralKey(Message):
    TYPE = "kms/ephemeral-key"
    index: int
    public_key: Annotated[bytes, Size(32)]


def bundle_hash(encoded_bundle: bytes) -> bytes:
    """``SHA-256(BUNDLE_HASH_DOMAIN ‖ encoded bundle)``: how a key request names its app's
    signed policy bundle (``kms.policy.PolicyBundle``)."""
    return hashlib.sha256(BUNDLE_HASH_DOMAIN + encoded_bundle).digest()


@dataclass(frozen=True, slots=True)
class KeyRequestBody(Message):
    """What the quote binds. Version 2 added ``policy_hash``: the :func:`bundle_hash` of the
    policy bundle the request carries or names (empty: the node's own policy)."""

    TYPE = "kms/key-request-body"
    VERSION = 2
    app_id: Annotated[bytes, MaxSize(64)]
    purposes: Annotated[tuple[PurposeVersion, ...], MaxSize(MAX_PURPOSES)]
    ephemeral_keys: Annotated[tuple[EphemeralKey, ...], MaxSize(1024)]
    timestamp: int
    nonce: Annotated[bytes, Size(16)]
    min_policy_version: int
    epoch: int
    policy_hash: Annotated[bytes, MaxSize(32)] = b""

    def validate(self) -> None:
        if not self.app_id:
            raise MessageDecodeError("kms/key-request-body: empty app id")
        if len(self.policy_hash) not in (0, 32):
            raise MessageDecodeError("kms/key-request-body: policy_hash is 0 or 32 bytes")
        if not self.purposes:
            raise MessageDecodeError("kms/key-request-body: no purpose")
        idx = [k.index for k in self.ephemeral_keys]
        if idx != sorted(set(idx)) or not idx:
            raise MessageDecodeError(
                "kms/key-request-body: ephemeral keys sorted by distinct index"
            )
        pv = [(p.purpose, p.version) for p in self.purposes]
        if len(set(pv)) != len(pv):
            raise MessageDecodeError("kms/key-request-body: a purpose twice")
        for p in self.purposes:
            try:
                p.key_id(self.app_id)
            except ValueError as exc:
                raise MessageDecodeError(f"kms/key-request-body: {exc}") from exc

    def report_data(self) -> bytes:
        """What the quote's 64-byte report data must be."""
        return hashlib.sha512(self.encode()).digest()

    def ephemeral_key(self, index: int) -> bytes | None:
        for k in self.ephemeral_keys:
            if k.index == index:
                return k.public_key
        return None


@dataclass(frozen=True, slots=True)
class KeyRequest(Message):
    """Version 2 added ``bundle``: the app's encoded signed policy bundle, or empty. When
    set, ``body.policy_hash`` must be its :func:`bundle_hash`."""

    TYPE = "kms/key-request"
    VERSION = 2
    body: KeyRequestBody
    quote: Annotated[bytes, MaxSize(MAX_QUOTE)]
    event_log: Annotated[bytes, MaxSize(MAX_EVENT_LOG)] = b""
    bundle: Annotated[bytes, MaxSize(MAX_BUNDLE)] = b""

    def validate(self) -> None:
        if self.bundle and bundle_hash(self.bundle) != self.body.policy_hash:
            raise MessageDecodeError(
                "kms/key-request: body.policy_hash is not the hash of the bundle carried"
            )

    def request_hash(self) -> bytes:
        """Names the request in signatures and audit records (quote included)."""
        return hashlib.sha256(self.encode()).digest()


def release_info(request_hash: bytes, purpose: PurposeVersion, epoch: int, index: int) -> bytes:
    """HPKE info (and AAD) of one encrypted partial: binds it to everything it answers."""
    return (
        RELEASE_INFO
        + request_hash
        + purpose.encode()
        + epoch.to_bytes(4, "big")
        + index.to_bytes(4, "big")
    )


@dataclass(frozen=True, slots=True)
class KeyShareResponse(Message):
    """One node's encrypted partial for one purpose, signed by its identity."""

    TYPE = "kms/key-share"
    request_hash: Annotated[bytes, Size(32)]
    purpose: PurposeVersion
    epoch: int
    index: int
    enc: Annotated[bytes, Size(32)]
    ciphertext: Annotated[bytes, Size(48 + 16)]
    signature: Annotated[bytes, Size(64)]

    def statement(self) -> bytes:
        return (
            self.request_hash
            + self.purpose.encode()
            + self.epoch.to_bytes(4, "big")
            + self.index.to_bytes(4, "big")
            + self.enc
            + self.ciphertext
        )

    def verify(self, identity: VerifyKey) -> None:
        """Raise ``InvalidSignature`` unless node ``index``'s identity signed this."""
        identity.verify(CTX_KEY_RESPONSE, self.statement(), self.signature)


@dataclass(frozen=True, slots=True)
class KeyResponse(Message):
    TYPE = "kms/key-response"
    shares: Annotated[tuple[KeyShareResponse, ...], MaxSize(MAX_PURPOSES)]


@dataclass(frozen=True, slots=True)
class KeyRefusal(Message):
    """A refusal with a reason code from ``kms.node.release.KeyRefusalReason`` and a message."""

    TYPE = "kms/key-refusal"
    reason: Annotated[str, MaxSize(64)]
    detail: Annotated[str, MaxSize(512)]


@dataclass(frozen=True, slots=True)
class WrongPartialEvidence(Message):
    """A CVM's proof that node ``index`` sent a wrong or undecryptable partial.

    ``ephemeral_private`` is the private half of ephemeral key ``index`` only;
    it decrypts nothing but node ``index``'s answer.
    """

    TYPE = "evidence/wrong-partial"
    request: KeyRequest
    response: KeyShareResponse
    ephemeral_private: Annotated[bytes, Size(32)]


# --- app-key certificates (``POST /v1/app-key-cert``) ----------------------------------------

ROOT_PUBLIC_LENGTH = 33
"""A dstack app root public key: secp256k1, SEC1 compressed."""
CERT_PARTIAL_LENGTH = 48
"""A partial BLS signature ``s_i·H_APPCERT(m)``: a compressed G1 point."""


@dataclass(frozen=True, slots=True)
class AppKeyCertBody(Message):
    """What the quote of an app-key certificate request binds: the app, the root version,
    the root public key to certify, and the freshness and policy fields of a key request.

    Its encoding starts with its own ``TYPE``, so ``SHA-512(body)`` of a certificate
    request never equals that of a key request: a quote made for one is refused for
    the other (``report-data-mismatch``)."""

    TYPE = "kms/app-key-cert-body"
    app_id: Annotated[bytes, MaxSize(64)]
    version: int
    root_public: Annotated[bytes, Size(ROOT_PUBLIC_LENGTH)]
    timestamp: int
    nonce: Annotated[bytes, Size(16)]
    epoch: int
    min_policy_version: int
    policy_hash: Annotated[bytes, MaxSize(32)] = b""

    def validate(self) -> None:
        t = self.TYPE
        if not self.app_id:
            raise MessageDecodeError(f"{t}: empty app id")
        if len(self.policy_hash) not in (0, 32):
            raise MessageDecodeError(f"{t}: policy_hash is 0 or 32 bytes")
        if not 0 <= self.version < 2**32:
            raise MessageDecodeError(f"{t}: version is a u32")
        if not 0 <= self.epoch < 2**64:
            raise MessageDecodeError(f"{t}: epoch is a u64")
        if not valid_root_public(self.root_public):
            raise MessageDecodeError(f"{t}: root_public is not a compressed secp256k1 point")

    def report_data(self) -> bytes:
        """What the quote's 64-byte report data must be."""
        return hashlib.sha512(self.encode()).digest()


SECP256K1_P = 2**256 - 2**32 - 977
"""The field prime of secp256k1 (``y² = x³ + 7``)."""


def valid_root_public(data: bytes) -> bool:
    """``data`` is a 33-byte SEC1 compressed point on secp256k1: prefix 2 or 3, ``x``
    below the field prime and ``x³ + 7`` a square (Euler's criterion), so it decompresses."""
    if len(data) != ROOT_PUBLIC_LENGTH or data[0] not in (2, 3):
        return False
    x = int.from_bytes(data[1:], "big")
    if x >= SECP256K1_P:
        return False
    rhs = (pow(x, 3, SECP256K1_P) + 7) % SECP256K1_P
    return rhs == 0 or pow(rhs, (SECP256K1_P - 1) // 2, SECP256K1_P) == 1


@dataclass(frozen=True, slots=True)
class AppKeyCertRequest(Message):
    """An attested request to certify an app root key: the body, the TDX quote whose
    report data is ``SHA-512(body)``, the RTMR3 event log, and optionally the app's
    signed policy bundle (``body.policy_hash`` must then be its :func:`bundle_hash`)."""

    TYPE = "kms/app-key-cert-request"
    body: AppKeyCertBody
    quote: Annotated[bytes, MaxSize(MAX_QUOTE)]
    event_log: Annotated[bytes, MaxSize(MAX_EVENT_LOG)] = b""
    bundle: Annotated[bytes, MaxSize(MAX_BUNDLE)] = b""

    def validate(self) -> None:
        if self.bundle and bundle_hash(self.bundle) != self.body.policy_hash:
            raise MessageDecodeError(
                "kms/app-key-cert-request: body.policy_hash is not the hash of the bundle carried"
            )

    def request_hash(self) -> bytes:
        """Names the request in signatures and audit records (quote included)."""
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True, slots=True)
class AppKeyCertShare(Message):
    """One node's partial app-key certificate, signed by its identity under
    ``CTX_APP_CERT_RESPONSE``: ``link_partial`` over ``mpc.appcert.link_message(app_id,
    root_public)`` and ``qkms_partial`` over ``qkms_message(app_id, root_public, version,
    epoch)``, both ``s_index·H_APPCERT(m)``."""

    TYPE = "kms/app-key-cert-share"
    request_hash: Annotated[bytes, Size(32)]
    app_id: Annotated[bytes, MaxSize(64)]
    version: int
    epoch: int
    index: int
    root_public: Annotated[bytes, Size(ROOT_PUBLIC_LENGTH)]
    link_partial: Annotated[bytes, Size(CERT_PARTIAL_LENGTH)]
    qkms_partial: Annotated[bytes, Size(CERT_PARTIAL_LENGTH)]
    signature: Annotated[bytes, Size(64)]

    def statement(self) -> bytes:
        """The signed bytes: the share's encoding with an all-zero signature (every field
        of fixed length or length-prefixed by msgpack, so the framing is unambiguous)."""
        return AppKeyCertShare(
            self.request_hash,
            self.app_id,
            self.version,
            self.epoch,
            self.index,
            self.root_public,
            self.link_partial,
            self.qkms_partial,
            bytes(64),
        ).encode()

    def verify(self, identity: VerifyKey) -> None:
        """Raise ``InvalidSignature`` unless node ``index``'s identity signed this."""
        identity.verify(CTX_APP_CERT_RESPONSE, self.statement(), self.signature)


@dataclass(frozen=True, slots=True)
class WrongCertPartialEvidence(Message):
    """A client's proof that node ``share.index`` signed a wrong partial app-key
    certificate: the request and the node's signed share. Partials are public values, so
    anyone holding the verified chain can check it (``kms.evidence``)."""

    TYPE = "evidence/wrong-cert-partial"
    request: AppKeyCertRequest
    share: AppKeyCertShare


__all__ = [
    "BUNDLE_HASH_DOMAIN",
    "CERT_PARTIAL_LENGTH",
    "MAX_BUNDLE",
    "ROOT_PUBLIC_LENGTH",
    "AppKeyCertBody",
    "AppKeyCertRequest",
    "AppKeyCertShare",
    "EphemeralKey",
    "InvalidSignature",
    "KeyRefusal",
    "KeyRequest",
    "KeyRequestBody",
    "KeyResponse",
    "KeyShareResponse",
    "PurposeVersion",
    "WrongCertPartialEvidence",
    "WrongPartialEvidence",
    "bundle_hash",
    "release_info",
    "valid_root_public",
]
