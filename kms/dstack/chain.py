"""Verifying a dstack key chain whose link 1 is a committee certificate.

dstack's chain is ``[link 0, link 1]``: link 0 is the app root's recoverable secp256k1
signature over the key claim (``kms.dstack.keys``), link 1 the KMS's signature over
``"dstack-kms-issued" ‖ ":" ‖ app_id ‖ root_public``. With quorum-kms link 1 is the
committee's threshold BLS signature (48 bytes, G1) over that same message under
``DST_APPCERT`` (``mpc.appcert``), checked against the master public key ``MPK``
(the anchor, obtained independently of the agent being checked).

:func:`verify_chain` follows dstack's verification steps: rebuild the claim, recover
the app root from link 0 (high-S refused), rebuild the link-1 message for *this*
``app_id`` and check it under ``MPK``. :func:`verify_app_key_cert` checks a root key's
certificate directly, and optionally the quorum-kms certificate message, which also
binds the root version and the epoch that issued it.
"""

from __future__ import annotations

from collections.abc import Sequence

from kms.dstack.keys import DstackError, recover_link
from mpc import appcert
from mpc.errors import InvalidEncoding
from mpc.math import G1, G2

LINK0_LENGTH = 65
LINK1_LENGTH = G1.SIZE


class ChainError(ValueError):
    """The chain or certificate does not verify; ``str()`` says why."""


def _mpk(mpk: G2 | bytes) -> G2:
    if isinstance(mpk, G2):
        point = mpk
    else:
        try:
            point = G2.from_bytes(bytes(mpk))
        except InvalidEncoding as exc:
            raise ChainError(f"master public key: {exc}") from exc
    if point.is_identity():
        raise ChainError("master public key is the identity")
    return point


def _link1(signature: bytes) -> G1:
    signature = bytes(signature)
    if len(signature) != LINK1_LENGTH:
        raise ChainError(f"link 1 is {LINK1_LENGTH} bytes, got {len(signature)}")
    try:
        point = G1.from_bytes(signature)
    except InvalidEncoding as exc:
        raise ChainError(f"link 1: {exc}") from exc
    if point.is_identity():
        raise ChainError("link 1 is the identity")
    return point


def verify_app_key_cert(
    mpk: G2 | bytes,
    app_id: bytes,
    root_public: bytes,
    link_signature: bytes,
    *,
    version: int | None = None,
    epoch: int | None = None,
    qkms_signature: bytes | None = None,
) -> None:
    """Check that the committee certified ``root_public`` as app ``app_id``'s root key.

    ``link_signature`` (link 1) must verify over ``link_message(app_id, root_public)``.
    With ``qkms_signature``, ``version`` and ``epoch`` are required and the quorum-kms
    certificate message must verify too; ``version``/``epoch`` without it are refused
    (they would be claims nothing checks). Raises ``ChainError``."""
    key = _mpk(mpk)
    try:
        link_msg = appcert.link_message(bytes(app_id), bytes(root_public))
    except ValueError as exc:
        raise ChainError(str(exc)) from exc
    if not appcert.verify(key, link_msg, _link1(link_signature)):
        raise ChainError("link 1 does not verify under the master public key for this app")
    if qkms_signature is None:
        if version is not None or epoch is not None:
            raise ChainError("a version or epoch is checked only with the quorum-kms signature")
        return
    if version is None or epoch is None:
        raise ChainError("the quorum-kms signature needs the version and the epoch")
    try:
        qkms_msg = appcert.qkms_message(bytes(app_id), bytes(root_public), version, epoch)
    except ValueError as exc:
        raise ChainError(str(exc)) from exc
    if not appcert.verify(key, qkms_msg, _link1(qkms_signature)):
        raise ChainError(
            "the quorum-kms certificate does not verify for this app, version and epoch"
        )


def verify_chain(mpk: G2 | bytes, app_id: bytes, *, claim: bytes, chain: Sequence[bytes]) -> bytes:
    """Verify ``[link 0 (65 bytes), link 1 (48 bytes)]`` for ``claim`` and ``app_id``;
    return the app root public key (SEC1 compressed) link 0 recovers to.

    ``claim`` is the rebuilt claim (``keys.v0_claim`` or ``keys.v1_claim``). Raises
    ``ChainError``."""
    if len(chain) != 2:
        raise ChainError(f"a key chain has 2 links, got {len(chain)}")
    link0, link1 = bytes(chain[0]), bytes(chain[1])
    if len(link0) != LINK0_LENGTH:
        raise ChainError(f"link 0 is {LINK0_LENGTH} bytes, got {len(link0)}")
    try:
        root_pub = recover_link(claim, link0)
    except DstackError as exc:
        raise ChainError(f"link 0: {exc}") from exc
    verify_app_key_cert(mpk, app_id, root_pub, link1)
    return root_pub


__all__ = ["LINK0_LENGTH", "LINK1_LENGTH", "ChainError", "verify_app_key_cert", "verify_chain"]
