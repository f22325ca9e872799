"""The owner-signed env file of a dstack app (``kms env encrypt``, opened by ``kms agent``).

IBE needs only the public master public key, so anyone can seal a file to an app's env
inbox: the ciphertext alone says nothing about who wrote it. The app's OWNER therefore
signs it: a :class:`SignedEnv` carries the IBE ciphertext, the owner's Ed25519 public key
and its signature under :data:`CTX_DSTACK_ENV` over ``app_id ‖ SHA-256(ciphertext)``
(:func:`statement`). The agent opens the file only when that key is the current owner key
of the app policy it verified at boot (the head of the policy's owner chain), so a key the
owner rotated away from signs nothing the agent accepts. An older file the owner signed
is still accepted (rollback): put a version inside the plaintext.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Final

from kms.policy import OwnerKey
from kms.policy.app import CTX_DSTACK_ENV
from mpc.codec import MaxSize, Message, MessageDecodeError, Size
from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.sig import PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH, VerifyKey

APP_ID_LENGTH: Final = 20
MAX_SEALED: Final = 16 << 20
"""The largest sealed env file accepted (bytes)."""


class EnvSignatureError(ValueError):
    """A signed env file that is malformed, of another app, or not signed by the owner."""


def statement(app_id: bytes, sealed: bytes) -> bytes:
    """What the owner signs: ``app_id ‖ SHA-256(sealed)``."""
    return app_id + hashlib.sha256(sealed).digest()


@dataclass(frozen=True, slots=True)
class SignedEnv(Message):
    """An IBE-sealed env file and its owner's signature (see the module docstring)."""

    TYPE = "dstack/signed-env"
    VERSION = 1
    app_id: Annotated[bytes, Size(APP_ID_LENGTH)]
    sealed: Annotated[bytes, MaxSize(MAX_SEALED)]
    owner_key: Annotated[bytes, Size(PUBLIC_KEY_LENGTH)]
    signature: Annotated[bytes, Size(SIGNATURE_LENGTH)]

    @classmethod
    def sign(cls, owner: OwnerKey, app_id: bytes, sealed: bytes) -> SignedEnv:
        """``sealed`` signed by ``owner`` for app ``app_id`` (20 bytes)."""
        if len(app_id) != APP_ID_LENGTH:
            raise EnvSignatureError(f"an app id is {APP_ID_LENGTH} bytes, not {len(app_id)}")
        signature = owner.sign(CTX_DSTACK_ENV, statement(app_id, sealed))
        return cls(app_id, sealed, owner.public_bytes(), signature)

    def opened_by(self, app_id: bytes, current_owner: bytes) -> bytes:
        """The sealed env, once checked: for ``app_id``, signed by ``current_owner``.
        Raises :class:`EnvSignatureError`."""
        if self.app_id != app_id:
            raise EnvSignatureError(f"the env file is signed for app {self.app_id.hex()}")
        if self.owner_key != current_owner:
            raise EnvSignatureError(
                "the env file is not signed by the app's current owner key "
                f"({self.owner_key.hex()} is not {current_owner.hex()})"
            )
        try:
            VerifyKey.from_bytes(self.owner_key).verify(
                CTX_DSTACK_ENV, statement(self.app_id, self.sealed), self.signature
            )
        except (InvalidSignature, InvalidEncoding) as exc:
            raise EnvSignatureError(f"the owner's signature does not verify: {exc}") from None
        return self.sealed


def read_signed_env(raw: bytes) -> SignedEnv:
    """Decode a signed env file; :class:`EnvSignatureError` when it is not one."""
    try:
        return SignedEnv.decode(raw)
    except (MessageDecodeError, InvalidEncoding, ValueError) as exc:
        raise EnvSignatureError(
            f"not an owner-signed env file (make it with `kms env encrypt --owner-key`): {exc}"
        ) from None
