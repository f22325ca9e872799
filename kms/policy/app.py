"""App identity: owner keys, app ids and the chain of owner rotations.

An app is owned by an Ed25519 key (RFC 8032 through :mod:`mpc.sig`). Its id is
derived from its *first* owner key and never changes::

    app_id = SHA-256(b"quorum-kms/v1/app-id" ‖ first_owner_public_key)[:20]

The 32-byte key has a fixed length, so the concatenation is unambiguous; the
20-byte truncation (the size dstack uses for its own app ids) leaves 160 bits
against finding a key for somebody else's app id. Since the id is derived from
the key, nobody can claim an app without its first owner key, and the id fits
the 1–64 bytes that :mod:`mpc.tkd.ids` allows in key ids.

Ownership moves by **rotation records**. Record number ``k`` (``sequence = k``,
counting from 1) names the app, the key that owned the app before it (the
``previous_key``) and the key that owns it after (the ``next_key``), and is
signed by the previous key under :data:`CTX_OWNER_ROTATION`. The signed bytes
are the record's canonical msgpack encoding without its signature field. A
chain is verified from the app id (:meth:`OwnerChain.verify`): the first record
starts at the key that hashes to the app id, record ``k`` sits at position
``k``, each record is signed by the key the previous record handed over, and a
key never gets the app back once it passed it on. Refused: gaps, forks (two
different records for one sequence number), replays (a record repeated), a
record whose previous key is not the then-current owner, a bad signature, a
record of another app.

The owner key signs only under the contexts in :data:`OWNER_CONTEXTS`.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgpack

from mpc.codec import Message, MessageDecodeError, Size
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError
from mpc.sig import PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH, SigningKey, VerifyKey

from .errors import PolicyError, PolicyFailure

__all__ = [
    "APP_ID_DOMAIN",
    "APP_ID_LENGTH",
    "CTX_APP_POLICY",
    "CTX_DSTACK_ENV",
    "CTX_OWNER_ROTATION",
    "MAX_ROTATIONS",
    "OWNER_CONTEXTS",
    "OwnerChain",
    "OwnerKey",
    "RotationRecord",
    "app_id_from_owner",
]

APP_ID_LENGTH: Final = 20
"""Bytes of an app id: the first 20 bytes of the SHA-256 below."""

APP_ID_DOMAIN: Final = b"quorum-kms/v1/app-id"
"""Domain-separation prefix hashed in front of the first owner key."""

CTX_APP_POLICY: Final = b"quorum-kms/v1/policy/app-policy"
"""Signing context of an app policy (:class:`kms.policy.policy.SignedPolicy`)."""

CTX_OWNER_ROTATION: Final = b"quorum-kms/v1/policy/owner-rotation"
"""Signing context of an owner rotation record."""

CTX_DSTACK_ENV: Final = b"quorum-kms/v1/dstack/env"
"""Signing context of a dstack app's sealed env file (:mod:`kms.agent.envfile`): the
statement is ``app_id ‖ SHA-256(ciphertext)``."""

OWNER_CONTEXTS: Final = (CTX_APP_POLICY, CTX_OWNER_ROTATION, CTX_DSTACK_ENV)
"""The only contexts an owner key signs under."""

MAX_ROTATIONS: Final = 256
"""Longest rotation chain accepted (one rotation a week for about five years)."""


VERIFIED_MEMORY: Final = 4096
"""Public keys decoded, and rotation records whose signature verified, remembered (each)."""


@functools.lru_cache(maxsize=VERIFIED_MEMORY)
def _check_public(owner_public: bytes) -> VerifyKey:
    """Decode a 32-byte Ed25519 public key; ``InvalidEncoding`` if it is not a usable key.

    Decoded keys are remembered (bounded): a point decode costs far more than a lookup,
    and every bundle of an app repeats its owners' keys. A refused key is not kept."""
    return VerifyKey.from_bytes(owner_public)


_verified_records: OrderedDict[RotationRecord, None] = OrderedDict()
verifications = 0
"""Rotation signatures checked (not answered from memory) by this process: a counter."""


def app_id_from_owner(owner_public: bytes) -> bytes:
    """The app id of an app whose first owner key is ``owner_public`` (32 bytes).

    ``SHA-256(APP_ID_DOMAIN ‖ owner_public)[:20]``. Raises
    :class:`~mpc.errors.InvalidEncoding` unless ``owner_public`` is a valid
    Ed25519 public key (RFC 8032 §5.1.3, small-order points refused).
    """
    _check_public(owner_public)
    return hashlib.sha256(APP_ID_DOMAIN + owner_public).digest()[:APP_ID_LENGTH]


class OwnerKey:
    """An app owner's Ed25519 signing key. ``repr`` never shows key material."""

    __slots__ = ("_key",)

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def generate(cls, rng: Callable[[int], bytes]) -> OwnerKey:
        """A new owner key from ``rng(32)`` (the OS CSPRNG in production)."""
        return cls(SigningKey.generate(rng))

    @classmethod
    def from_seed(cls, seed: bytes) -> OwnerKey:
        """The owner key with this 32-byte seed (RFC 8032 §5.1.5)."""
        return cls(SigningKey.from_seed(seed))

    def seed_bytes(self) -> bytes:
        """The 32-byte seed, for the owner's own key file."""
        return self._key.seed_bytes()

    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return self._key.verify_key().to_bytes()

    def verify_key(self) -> VerifyKey:
        return self._key.verify_key()

    def app_id(self) -> bytes:
        """The app id this key founds when it is the app's first owner key."""
        return app_id_from_owner(self.public_bytes())

    def sign(self, context: bytes, message: bytes) -> bytes:
        """Sign ``message`` under one of :data:`OWNER_CONTEXTS`.

        Raises :class:`~mpc.errors.LocalProtocolError` for any other context, so an
        owner key never signs anything but policies and rotations.
        """
        if context not in OWNER_CONTEXTS:
            raise LocalProtocolError(f"an owner key does not sign under {context!r}")
        return self._key.sign(context, message)

    def rotate(self, chain: OwnerChain, next_owner: bytes) -> RotationRecord:
        """The record that hands ``chain``'s app from this key (its current owner)
        to ``next_owner``; append it with :meth:`OwnerChain.extend`."""
        if chain.current != self.public_bytes():
            raise LocalProtocolError("only the current owner key can rotate the app")
        unsigned = RotationRecord(
            app_id=chain.app_id,
            sequence=chain.sequence + 1,
            previous_key=self.public_bytes(),
            next_key=next_owner,
            signature=bytes(SIGNATURE_LENGTH),
        )
        try:
            unsigned.validate()
        except MessageDecodeError as exc:
            raise LocalProtocolError(f"invalid rotation: {exc}") from exc
        return RotationRecord(
            app_id=unsigned.app_id,
            sequence=unsigned.sequence,
            previous_key=unsigned.previous_key,
            next_key=unsigned.next_key,
            signature=self.sign(CTX_OWNER_ROTATION, unsigned.signed_bytes()),
        )

    def __repr__(self) -> str:
        return "<redacted>"


@dataclass(frozen=True, slots=True)
class RotationRecord(Message):
    """``previous_key`` hands app ``app_id`` to ``next_key``; rotation number ``sequence``.

    ``signature`` is by ``previous_key`` under :data:`CTX_OWNER_ROTATION` over
    :meth:`signed_bytes`.
    """

    TYPE = "policy/owner-rotation"
    app_id: Annotated[bytes, Size(APP_ID_LENGTH)]
    sequence: int
    previous_key: Annotated[bytes, Size(PUBLIC_KEY_LENGTH)]
    next_key: Annotated[bytes, Size(PUBLIC_KEY_LENGTH)]
    signature: Annotated[bytes, Size(SIGNATURE_LENGTH)]

    def validate(self) -> None:
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int):
            raise MessageDecodeError(f"{self.TYPE}: sequence must be an int")
        if not 1 <= self.sequence <= MAX_ROTATIONS:
            raise MessageDecodeError(f"{self.TYPE}: sequence must be in 1..{MAX_ROTATIONS}")
        for name, value, size in (
            ("app_id", self.app_id, APP_ID_LENGTH),
            ("previous_key", self.previous_key, PUBLIC_KEY_LENGTH),
            ("next_key", self.next_key, PUBLIC_KEY_LENGTH),
            ("signature", self.signature, SIGNATURE_LENGTH),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise MessageDecodeError(f"{self.TYPE}: {name} must be {size} bytes")
        if self.previous_key == self.next_key:
            raise MessageDecodeError(f"{self.TYPE}: a rotation must change the key")
        for name, key in (("previous_key", self.previous_key), ("next_key", self.next_key)):
            try:
                _check_public(key)
            except InvalidEncoding as exc:
                raise MessageDecodeError(f"{self.TYPE}: {name}: {exc}") from exc

    def signed_bytes(self) -> bytes:
        """The canonical encoding of ``[TYPE, VERSION, app_id, sequence, previous_key,
        next_key]``: the record without its signature."""
        return bytes(msgpack.packb(self.to_wire()[:-1], use_bin_type=True))

    def verify_signature(self) -> None:
        """Raise ``PolicyError(BAD_SIGNATURE)`` unless ``previous_key`` signed the record.

        A record whose signature verified is remembered (bounded, least recently used
        first out), so an app's chain costs its signature checks once, not per bundle."""
        global verifications
        if self in _verified_records:
            _verified_records.move_to_end(self)
            return
        verifications += 1
        try:
            _check_public(self.previous_key).verify(
                CTX_OWNER_ROTATION, self.signed_bytes(), self.signature
            )
        except (InvalidSignature, InvalidEncoding) as exc:
            raise PolicyError(
                PolicyFailure.BAD_SIGNATURE, f"rotation {self.sequence}: {exc}"
            ) from exc
        _verified_records[self] = None
        while len(_verified_records) > VERIFIED_MEMORY:
            _verified_records.popitem(last=False)


@dataclass(frozen=True, slots=True)
class OwnerChain:
    """A verified owner history: the first owner key and the rotations after it.

    Build one with :meth:`genesis`, :meth:`from_records` or :meth:`extend`; each
    of them checks everything, so an ``OwnerChain`` obtained that way is valid.
    """

    app_id: bytes
    first_owner: bytes
    records: tuple[RotationRecord, ...] = ()

    @property
    def current(self) -> bytes:
        """The current owner's 32-byte public key."""
        return self.records[-1].next_key if self.records else self.first_owner

    @property
    def sequence(self) -> int:
        """The number of rotations so far (0 for an app still with its first owner)."""
        return len(self.records)

    def owners(self) -> tuple[bytes, ...]:
        """Every key that has owned the app, oldest first."""
        return (self.first_owner, *(r.next_key for r in self.records))

    @classmethod
    def genesis(cls, first_owner: bytes) -> OwnerChain:
        """The chain of a new app: its id is derived from ``first_owner``."""
        try:
            app_id = app_id_from_owner(first_owner)
        except InvalidEncoding as exc:
            raise PolicyError(PolicyFailure.MALFORMED, f"first owner key: {exc}") from exc
        return cls(app_id, first_owner, ())

    @classmethod
    def from_records(
        cls,
        app_id: bytes,
        rotations: Sequence[RotationRecord],
        *,
        first_owner: bytes | None = None,
    ) -> OwnerChain:
        """Verify ``rotations`` from ``app_id`` and return the chain.

        The first owner key is the first record's ``previous_key``; with no records
        it must be given as ``first_owner`` (when both are present they must agree).
        Either way it must hash to ``app_id``. Raises :class:`PolicyError`.
        """
        rotations = tuple(rotations)
        if len(rotations) > MAX_ROTATIONS:
            raise PolicyError(PolicyFailure.MALFORMED, f"more than {MAX_ROTATIONS} rotations")
        for record in rotations:
            if record.app_id != app_id:
                raise PolicyError(
                    PolicyFailure.APP_ID_MISMATCH, f"rotation {record.sequence} is for another app"
                )
        if rotations:
            if rotations[0].sequence != 1:
                raise PolicyError(
                    PolicyFailure.ROTATION_GAP,
                    f"the chain starts at rotation {rotations[0].sequence}, not 1",
                )
            genesis = rotations[0].previous_key
            if first_owner is not None and first_owner != genesis:
                raise PolicyError(
                    PolicyFailure.NOT_OWNER, "the chain does not start at the given first owner"
                )
        elif first_owner is None:
            raise LocalProtocolError("first_owner is needed when there are no rotations")
        else:
            genesis = first_owner
        chain = cls._genesis_for(app_id, genesis)
        for record in rotations:
            chain = chain.extend(record)
        return chain

    @classmethod
    def verify(
        cls,
        app_id: bytes,
        rotations: Sequence[RotationRecord],
        *,
        first_owner: bytes | None = None,
    ) -> VerifyKey:
        """Verify the chain from ``app_id`` and return the current owner key.

        See :meth:`from_records`; raises :class:`PolicyError`.
        """
        return VerifyKey.from_bytes(
            cls.from_records(app_id, rotations, first_owner=first_owner).current
        )

    @classmethod
    def _genesis_for(cls, app_id: bytes, first_owner: bytes) -> OwnerChain:
        chain = cls.genesis(first_owner)
        if chain.app_id != app_id:
            raise PolicyError(
                PolicyFailure.NOT_OWNER, "the first owner key does not derive this app id"
            )
        return chain

    def extend(self, record: RotationRecord) -> OwnerChain:
        """The chain with ``record`` appended, after checking it. Raises :class:`PolicyError`."""
        try:
            record.validate()
        except MessageDecodeError as exc:
            raise PolicyError(PolicyFailure.MALFORMED, str(exc)) from exc
        if record.app_id != self.app_id:
            raise PolicyError(
                PolicyFailure.APP_ID_MISMATCH, f"rotation {record.sequence} is for another app"
            )
        expected = self.sequence + 1
        if record.sequence < expected:
            earlier = self.records[record.sequence - 1]
            if earlier == record:
                raise PolicyError(
                    PolicyFailure.ROTATION_REPLAY, f"rotation {record.sequence} repeated"
                )
            raise PolicyError(
                PolicyFailure.ROTATION_FORK, f"two different rotations {record.sequence}"
            )
        if record.sequence > expected:
            raise PolicyError(
                PolicyFailure.ROTATION_GAP,
                f"rotation {record.sequence} follows rotation {self.sequence}",
            )
        if record.previous_key != self.current:
            raise PolicyError(
                PolicyFailure.ROTATION_WRONG_SIGNER,
                f"rotation {record.sequence} is not from the current owner key",
            )
        record.verify_signature()
        if record.next_key in self.owners():
            raise PolicyError(
                PolicyFailure.ROTATION_KEY_REUSED,
                f"rotation {record.sequence} returns the app to a former owner key",
            )
        return OwnerChain(self.app_id, self.first_owner, (*self.records, record))

    def merge(self, other: OwnerChain) -> OwnerChain:
        """The longer of two verified chains of one app when one extends the other.

        Raises ``PolicyError(ROTATION_FORK)`` when they diverge: the owner key
        (or a thief holding it) signed two different successors.
        """
        if other.app_id != self.app_id:
            raise PolicyError(PolicyFailure.APP_ID_MISMATCH, "chains of different apps")
        if other.first_owner != self.first_owner:
            raise PolicyError(PolicyFailure.ROTATION_FORK, "chains with different first owners")
        for mine, theirs in zip(self.records, other.records, strict=False):
            if mine != theirs:
                raise PolicyError(
                    PolicyFailure.ROTATION_FORK,
                    f"two different rotations {mine.sequence}",
                )
        return other if other.sequence > self.sequence else self
