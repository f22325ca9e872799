"""Identity-based encryption to an app (Boneh–Franklin style, on the TKD keys).

Anyone holding the master public key ``MPK`` encrypts to an app's *inbox*
offline; only a holder of ``σ = s·H(id)`` for the inbox's key id (a CVM whose
app policy lists the inbox's purpose) decrypts. Specification:
``docs/crypto.md`` §IBE.

**Inboxes.** ``σ`` for a key id is exactly what key release hands a CVM for
that id's purpose, and the app key is derived from it. So IBE encrypts only
to key ids whose purpose is ``"ibe." + inbox`` (:func:`inbox_key_id`): purposes
reserved for decryption, which an app's policy grants only by listing them.
A CVM admitted for ``sign`` gets ``s·H(app, "sign", v)`` and cannot read
the ``app`` inbox, ``(app, "ibe.app", v)``. :func:`decrypt` still opens
ciphertexts made before the reservation, to any purpose.

Encrypt::

    r  = OS2IP(SHA-512("quorum-kms/v1/ibe/hedge" ‖ rng(64) ‖ MPK ‖ u16 len(id) ‖ id
                       ‖ u64 len(plaintext) ‖ plaintext)) mod q   (redrawn if 0)
    U  = r·g2
    K  = e(H(id), r·MPK)                      (576-byte GT encoding)
    k, nonce = HKDF-SHA256(ikm = K ‖ U ‖ id ‖ MPK, salt = "quorum-kms/v1/ibe",
                           info = "quorum-kms/v1/ibe/aead-key") → 32 + 12 bytes
    header = "QKIBE" ‖ 0x01 ‖ U (96) ‖ u16 len(id) ‖ id
    ct = ChaCha20-Poly1305(k, nonce, plaintext, aad = header)

Decrypt recomputes ``K = e(σ, U) = e(H, g2)^{rs}``. Each key is used once
(``r`` is fresh), so the derived nonce never repeats under a key.

``r`` is *hedged*: it hashes the caller's randomness together with the
plaintext, the identity and ``MPK``. With a good ``rng`` it is uniform; with a
repeating or constant one, two different plaintexts (or identities) still get
different ``r``, hence different ``U``, AEAD keys and nonces. The worst case
of a broken ``rng`` is then deterministic encryption: it shows only that
two ciphertexts carry the same plaintext to the same identity. Decryption
does not depend on how ``r`` was chosen, so the format is unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mpc.errors import DecryptionError, InvalidEncoding
from mpc.math import G2, R, pairing
from mpc.secret import RNG
from mpc.tkd import DerivedPoint, KeyId, derive_point_base

MAGIC = b"QKIBE"
FORMAT_VERSION = 1
_KDF_SALT = b"quorum-kms/v1/ibe"
_KDF_INFO = b"quorum-kms/v1/ibe/aead-key"
INBOX_PREFIX = "ibe."
"""Purposes that start with this are reserved for IBE decryption (an app's inboxes)."""
DEFAULT_INBOX = "app"
HEDGE_TAG = b"quorum-kms/v1/ibe/hedge"
"""SHA-512 prefix of the hedged ephemeral scalar ``r``."""
_HEDGE_RANDOM_LEN = 64
_TAG_LEN = 16


def inbox_key_id(app_id: bytes, inbox: str = DEFAULT_INBOX, version: int = 1) -> KeyId:
    """The key id of ``app_id``'s inbox ``inbox``: purpose ``"ibe." + inbox``.

    ``inbox`` is 1–60 characters of ``[a-z0-9._-]``; raises ``ValueError``.
    """
    if not isinstance(inbox, str) or not inbox:
        raise ValueError("inbox must be a non-empty string")
    return KeyId(app_id, INBOX_PREFIX + inbox, version)


def is_inbox(key_id: KeyId) -> bool:
    """True iff ``key_id``'s purpose is reserved for IBE decryption."""
    return key_id.purpose.startswith(INBOX_PREFIX) and len(key_id.purpose) > len(INBOX_PREFIX)


@dataclass(frozen=True, slots=True)
class Header:
    """The authenticated header of an IBE ciphertext."""

    u: G2
    key_id: KeyId

    def encode(self) -> bytes:
        kid = self.key_id.encode()
        return (
            MAGIC + bytes([FORMAT_VERSION]) + self.u.to_bytes() + len(kid).to_bytes(2, "big") + kid
        )


def _split(ciphertext: bytes) -> tuple[Header, bytes, bytes]:
    """Parse ``header ‖ body``; raises ``InvalidEncoding``."""
    base = len(MAGIC) + 1
    if len(ciphertext) < base + G2.SIZE + 2 + _TAG_LEN or not ciphertext.startswith(MAGIC):
        raise InvalidEncoding("not a quorum-kms IBE ciphertext")
    if ciphertext[len(MAGIC)] != FORMAT_VERSION:
        raise InvalidEncoding(f"unsupported IBE format version {ciphertext[len(MAGIC)]}")
    u = G2.from_bytes(ciphertext[base : base + G2.SIZE])
    if u.is_identity():
        raise InvalidEncoding("IBE ephemeral point is the identity")
    pos = base + G2.SIZE
    n = int.from_bytes(ciphertext[pos : pos + 2], "big")
    kid_bytes = ciphertext[pos + 2 : pos + 2 + n]
    if len(kid_bytes) != n:
        raise InvalidEncoding("truncated IBE header")
    key_id = KeyId.decode(kid_bytes)
    header_len = pos + 2 + n
    return Header(u, key_id), ciphertext[:header_len], ciphertext[header_len:]


def _aead_key(k: bytes, header: Header, mpk: G2) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=44, salt=_KDF_SALT, info=_KDF_INFO).derive(
        k + header.u.to_bytes() + header.key_id.encode() + mpk.to_bytes()
    )
    return okm[:32], okm[32:]


def hedged_scalar(mpk: G2, key_id: KeyId, plaintext: bytes, rng: RNG) -> int:
    """The ephemeral scalar ``r``: ``rng``'s bytes hashed with the plaintext, id and ``MPK``.

    A non-zero scalar, uniform if ``rng`` is; distinct for distinct
    ``(plaintext, id, MPK)`` even if ``rng`` repeats itself.
    """
    kid = key_id.encode()
    while True:
        h = hashlib.sha512(HEDGE_TAG)
        h.update(rng(_HEDGE_RANDOM_LEN))
        h.update(mpk.to_bytes())
        h.update(len(kid).to_bytes(2, "big"))
        h.update(kid)
        h.update(len(plaintext).to_bytes(8, "big"))
        h.update(plaintext)
        r = int.from_bytes(h.digest(), "big") % R
        if r:
            return r


def encrypt(mpk: G2, key_id: KeyId, plaintext: bytes, *, rng: RNG) -> bytes:
    """Encrypt ``plaintext`` to the inbox ``key_id`` under the master public key alone.

    ``key_id`` must be an inbox (:func:`inbox_key_id`), else ``ValueError``:
    encrypting to an ordinary purpose would let every CVM that gets that
    purpose's keys read the message. ``rng`` is the OS CSPRNG
    (``os.urandom``) in production; ``r`` is hedged with the plaintext and
    the id (:func:`hedged_scalar`), so a weak ``rng`` never makes two
    different messages share a key and nonce.
    """
    if not is_inbox(key_id):
        raise ValueError(
            f"IBE encrypts to an inbox (purpose {INBOX_PREFIX}<name>), not to purpose "
            f"{key_id.purpose!r}: that purpose's key holders could read it"
        )
    if mpk.is_identity():
        raise InvalidEncoding("the master public key is the identity")
    plaintext = bytes(plaintext)
    r = hedged_scalar(mpk, key_id, plaintext, rng)
    header = Header(r * G2.generator(), key_id)
    k = pairing(derive_point_base(key_id), r * mpk)
    key, nonce = _aead_key(k, header, mpk)
    hdr = header.encode()
    return hdr + ChaCha20Poly1305(key).encrypt(nonce, plaintext, hdr)


def read_header(ciphertext: bytes) -> Header:
    """The key id and ephemeral point of a ciphertext (to know which key to fetch)."""
    return _split(ciphertext)[0]


def decrypt(derived: DerivedPoint, mpk: G2, ciphertext: bytes) -> bytes:
    """Decrypt with ``σ`` for the ciphertext's id; raises ``DecryptionError``."""
    try:
        header, hdr, body = _split(ciphertext)
    except InvalidEncoding as exc:
        raise DecryptionError(f"malformed ciphertext: {exc}") from exc
    if header.key_id != derived.key_id:
        raise DecryptionError("ciphertext is for a different (app, purpose, version)")
    k = pairing(derived.point, header.u)
    key, nonce = _aead_key(k, header, mpk)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, hdr)
    except InvalidTag as exc:
        raise DecryptionError("authentication failed") from exc
