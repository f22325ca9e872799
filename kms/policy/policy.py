"""App policies signed by app owners, the node admission policy, and the policy store.

**Measurements.** A :class:`Measurement` pins the image a CVM runs. Every entry
pins MRTD and RTMR0–2 exactly (48 bytes each): firmware, virtual hardware,
kernel, command line and initrd, which dstack documents as computable from the
built image. It then pins *either* RTMR3 exactly (48 bytes) *or* a dstack
compose hash (32 bytes, ``SHA-256`` of the ``app-compose.json`` file), which is
read from the RTMR3 event log after the log has been replayed against the
quote's RTMR3 (:mod:`kms.policy.eventlog`). Exactly one of the two is set.
There are no wildcards: a wildcard on RTMR0–2 would admit any kernel, and on
dstack RTMR3 also covers a per-instance id, which is why the compose hash form
exists. A policy may list several entries (an image upgrade, several VM sizes)
and may list none (nothing is admitted: a revocation).

**App policy.** :class:`AppPolicy` names the app id, a version, the owner key
that signs it (which must be the app's current owner key per its rotation
chain), the allowed measurements, the allowed TCB statuses (Intel's names, as
``dcap_qvl`` reports them; ``Revoked`` is never allowed), the purposes keys may
be derived for (``[a-z0-9._-]{1,64}``, as in :mod:`mpc.tkd.ids`), the KMS master
public key (96 bytes), and a validity window ``[not_before, expires)`` in Unix
seconds. Sets are sorted and free of duplicates, so a policy has exactly one
encoding. There is no link to the previous version: a node that missed some
versions must still accept the newest one, and the version number already
orders them. :class:`SignedPolicy` adds the owner's Ed25519 signature under
:data:`~kms.policy.app.CTX_APP_POLICY` over the policy's canonical encoding.

**Pins.** Version 2 of the message adds optional :class:`Pins` (TD fields,
MRSERVICETD, system events of RTMR3, GPU attestation fields, a platform
allow-list, minimum key versions, a floor on the TCB evaluation data number;
see ``docs/attestation.md``). A policy without pins encodes as version 1 byte
for byte (``mpc.codec.Since``).

**Expiry.** Every policy expires; ``expires - not_before`` may not exceed
:data:`MAX_LIFETIME` (30 days; the owner's tool uses :data:`DEFAULT_LIFETIME`,
7 days, and renews). A node that never hears of a newer policy revoking a
measurement still stops admitting it when the last policy allowing it expires:
at most ``MAX_LIFETIME + MAX_CLOCK_SKEW`` after that policy was accepted.

**Store.** :class:`PolicyStore` holds, per app, the newest accepted policy and
the owner chain, in memory (the node persists :meth:`PolicyStore.bundles`).
:meth:`PolicyStore.offer` accepts a newer valid policy from anyone and returns
the :class:`PolicyBundle` to pass on; anything else is refused with a reason.
Checks, in order: the very policy already held (``DUPLICATE``, the normal
echo of gossip); well-formed (``MALFORMED``); the rotation chain verifies from
the app id and agrees with the chain held (``ROTATION_*``, ``APP_ID_MISMATCH``);
the policy is signed by the current owner key (``NOT_OWNER``,
``BAD_SIGNATURE``); it names this committee's MPK (``WRONG_MPK``); its version
is greater than the one held (``STALE_VERSION``) by at most the store's
``max_version_step`` (default :data:`MAX_VERSION_STEP`; ``VERSION_JUMP``; the
first version of an app the store does not hold is bounded the same way, from
0, when the caller asks for it with ``bound_first``; a policy whose chain
rotates the app away from the key that signed the policy held is compared
with 0 too: the held policy is void once its signer is rotated away); its lifetime is
at most :data:`MAX_LIFETIME` (``LIFETIME_TOO_LONG``); ``not_before <= now +
MAX_CLOCK_SKEW`` (``NOT_YET_VALID``); ``now < expires`` (``EXPIRED``). A refused
offer leaves the store unchanged.

**Node admission.** :class:`NodeAdmissionPolicy` reuses the measurement and TCB
parts for KMS nodes joining the committee; its :meth:`~NodeAdmissionPolicy.policy_hash`
is ``SHA-256`` of its canonical encoding, the hash that membership changes and
epoch certificates carry.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

from mpc.cert import IDENTITY_MPK
from mpc.codec import MAX_INT, MaxSize, Message, MessageDecodeError, Since, Size
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError
from mpc.sig import PUBLIC_KEY_LENGTH, SIGNATURE_LENGTH, VerifyKey

from .app import (
    APP_ID_LENGTH,
    CTX_APP_POLICY,
    MAX_ROTATIONS,
    OwnerChain,
    OwnerKey,
    RotationRecord,
)
from .errors import PolicyError, PolicyFailure

__all__ = [
    "COMPOSE_HASH_LENGTH",
    "DEFAULT_LIFETIME",
    "KMS_MPK_LENGTH",
    "MAX_CLOCK_SKEW",
    "MAX_LIFETIME",
    "MAX_MEASUREMENTS",
    "MAX_PURPOSES",
    "MAX_VERSION_STEP",
    "MEASUREMENT_LENGTH",
    "TCB_STATUSES",
    "Accepted",
    "AppPolicy",
    "GpuPin",
    "Measurement",
    "MinKeyVersion",
    "NodeAdmissionPolicy",
    "OfferResult",
    "Pins",
    "PlatformPin",
    "PolicyBundle",
    "PolicyRefused",
    "PolicyStore",
    "SignedPolicy",
    "SystemEventPin",
]

MEASUREMENT_LENGTH: Final = 48
"""MRTD and every RTMR are SHA-384 values."""

COMPOSE_HASH_LENGTH: Final = 32
"""A dstack compose hash is a SHA-256 value."""

KMS_MPK_LENGTH: Final = 96
"""The master public key is a compressed BLS12-381 G2 point."""

MAX_MEASUREMENTS: Final = 64
MAX_PURPOSES: Final = 64

DEFAULT_LIFETIME: Final = 7 * 24 * 3600
"""Lifetime the owner's tool gives a policy (7 days)."""

MAX_LIFETIME: Final = 30 * 24 * 3600
"""Longest ``expires - not_before`` a node accepts (30 days)."""

MAX_VERSION_STEP: Final = 1000
"""Largest version increase a node accepts over the version it holds."""

MAX_CLOCK_SKEW: Final = 300
"""Seconds a policy's ``not_before`` may lie ahead of a node's clock."""

TCB_STATUSES: Final = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
    }
)
"""TCB statuses a policy may allow: Intel's names as ``dcap_qvl`` reports them.
``Revoked`` is deliberately absent."""

_PURPOSE_RE = re.compile(r"[a-z0-9._-]{1,64}")

_Hash48 = Annotated[bytes, Size(MEASUREMENT_LENGTH)]


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise MessageDecodeError(f"{where}: {message}")


def _check_bytes(where: str, value: object, size: int) -> None:
    _require(isinstance(value, bytes) and len(value) == size, where, f"must be {size} bytes")


def _check_u32(where: str, value: object) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT,
        where,
        "must be an unsigned 32-bit integer",
    )


def _check_sorted_unique(where: str, keys: Sequence[Any]) -> None:
    _require(
        all(a < b for a, b in itertools.pairwise(keys)),
        where,
        "must be sorted and free of duplicates",
    )


def _as_tuple(where: str, value: object, limit: int) -> tuple[object, ...]:
    if not isinstance(value, tuple):
        raise MessageDecodeError(f"{where}: must be a tuple")
    _require(len(value) <= limit, where, f"more than {limit} entries")
    return value


@dataclass(frozen=True, slots=True)
class Measurement(Message):
    """An allowed image: MRTD and RTMR0–2, plus RTMR3 *or* a dstack compose hash."""

    TYPE = "policy/measurement"
    mr_td: _Hash48
    rtmr0: _Hash48
    rtmr1: _Hash48
    rtmr2: _Hash48
    rtmr3: Annotated[bytes | None, Size(MEASUREMENT_LENGTH)] = None
    compose_hash: Annotated[bytes | None, Size(COMPOSE_HASH_LENGTH)] = None

    @classmethod
    def explicit(
        cls, *, mr_td: bytes, rtmr0: bytes, rtmr1: bytes, rtmr2: bytes, rtmr3: bytes
    ) -> Measurement:
        """An entry pinning all five registers."""
        return cls(mr_td, rtmr0, rtmr1, rtmr2, rtmr3=rtmr3)

    @classmethod
    def compose(
        cls, *, mr_td: bytes, rtmr0: bytes, rtmr1: bytes, rtmr2: bytes, compose_hash: bytes
    ) -> Measurement:
        """An entry pinning the OS image (MRTD, RTMR0–2) and a dstack compose hash."""
        return cls(mr_td, rtmr0, rtmr1, rtmr2, compose_hash=compose_hash)

    def validate(self) -> None:
        for name in ("mr_td", "rtmr0", "rtmr1", "rtmr2"):
            _check_bytes(f"{self.TYPE}.{name}", getattr(self, name), MEASUREMENT_LENGTH)
        _require(
            (self.rtmr3 is None) != (self.compose_hash is None),
            self.TYPE,
            "exactly one of rtmr3 and compose_hash must be set",
        )
        if self.rtmr3 is not None:
            _check_bytes(f"{self.TYPE}.rtmr3", self.rtmr3, MEASUREMENT_LENGTH)
        if self.compose_hash is not None:
            _check_bytes(f"{self.TYPE}.compose_hash", self.compose_hash, COMPOSE_HASH_LENGTH)

    def matches_image(self, mr_td: bytes, rtmr0: bytes, rtmr1: bytes, rtmr2: bytes) -> bool:
        """True iff MRTD and RTMR0–2 equal the pinned values."""
        return (self.mr_td, self.rtmr0, self.rtmr1, self.rtmr2) == (mr_td, rtmr0, rtmr1, rtmr2)


def _check_measurements(where: str, measurements: object) -> None:
    encodings = []
    for m in _as_tuple(where, measurements, MAX_MEASUREMENTS):
        if not isinstance(m, Measurement):
            raise MessageDecodeError(f"{where}: entries must be measurements")
        m.validate()
        encodings.append(m.encode())
    _check_sorted_unique(where, encodings)


def _check_tcb_statuses(where: str, statuses: object) -> None:
    items = _as_tuple(where, statuses, len(TCB_STATUSES))
    for s in items:
        _require(s in TCB_STATUSES, where, f"unknown or forbidden TCB status {s!r}")
    _check_sorted_unique(where, items)


def _sorted_measurements(measurements: Iterable[Measurement]) -> tuple[Measurement, ...]:
    unique = {m.encode(): m for m in measurements}
    return tuple(unique[k] for k in sorted(unique))


FMSPC_LENGTH: Final = 6
PLATFORM_INSTANCE_ID_LENGTH: Final = 16
XFAM_LENGTH: Final = 8
MAX_PLATFORMS: Final = 1024
MAX_SYSTEM_EVENT_PINS: Final = 8
MAX_PIN_PAYLOAD: Final = 1024
PINNABLE_SYSTEM_EVENTS: Final = frozenset(
    {"key-provider", "os-image-hash", "mr-kms", "gpu-policy-hash"}
)
"""System-segment events a policy may pin byte for byte (``gpu-attestation`` is
pinned by field, :class:`GpuPin`)."""
GPU_CC_MODES: Final = frozenset({"on", "off", "devtools"})
"""The confidential-computing modes an NVIDIA GPU reports (``nvidia-smi conf-compute``)."""
MAX_GPU_DEVICES: Final = 64


@dataclass(frozen=True, slots=True)
class SystemEventPin(Message):
    """A system-segment event of RTMR3 that must be present with exactly this payload."""

    TYPE = "policy/system-event-pin"
    name: Annotated[str, MaxSize(32)]
    payload: Annotated[bytes, MaxSize(MAX_PIN_PAYLOAD)]

    def validate(self) -> None:
        _require(
            self.name in PINNABLE_SYSTEM_EVENTS,
            f"{self.TYPE}.name",
            f"must be one of {sorted(PINNABLE_SYSTEM_EVENTS)}",
        )
        _require(
            isinstance(self.payload, bytes) and len(self.payload) <= MAX_PIN_PAYLOAD,
            f"{self.TYPE}.payload",
            f"must be at most {MAX_PIN_PAYLOAD} bytes",
        )


@dataclass(frozen=True, slots=True)
class GpuPin(Message):
    """Requires a ``gpu-attestation`` system event; each set field must equal the one in
    its JSON payload (dstack's payload: ``version``, ``provider``, ``devices``,
    ``cc_mode``, ``devtools``, ``evidence_sha256``). ``min_devices`` is a floor."""

    TYPE = "policy/gpu-pin"
    cc_mode: Annotated[str | None, MaxSize(16)] = None
    devtools: bool | None = None
    min_devices: int = 1

    def validate(self) -> None:
        t = self.TYPE
        _require(
            self.cc_mode is None or self.cc_mode in GPU_CC_MODES,
            f"{t}.cc_mode",
            f"must be one of {sorted(GPU_CC_MODES)}",
        )
        _require(
            self.devtools is None or isinstance(self.devtools, bool),
            f"{t}.devtools",
            "must be a bool",
        )
        _require(
            isinstance(self.min_devices, int)
            and not isinstance(self.min_devices, bool)
            and 1 <= self.min_devices <= MAX_GPU_DEVICES,
            f"{t}.min_devices",
            f"must be 1..{MAX_GPU_DEVICES}",
        )


@dataclass(frozen=True, slots=True)
class PlatformPin(Message):
    """An allowed platform: the PCK certificate's FMSPC and, optionally, its platform
    instance id (one physical multi-package platform)."""

    TYPE = "policy/platform-pin"
    fmspc: Annotated[bytes, Size(FMSPC_LENGTH)]
    platform_instance_id: Annotated[bytes | None, Size(PLATFORM_INSTANCE_ID_LENGTH)] = None

    def validate(self) -> None:
        _check_bytes(f"{self.TYPE}.fmspc", self.fmspc, FMSPC_LENGTH)
        if self.platform_instance_id is not None:
            _check_bytes(
                f"{self.TYPE}.platform_instance_id",
                self.platform_instance_id,
                PLATFORM_INSTANCE_ID_LENGTH,
            )


@dataclass(frozen=True, slots=True)
class MinKeyVersion(Message):
    """The oldest key version a purpose may still be derived for."""

    TYPE = "policy/min-key-version"
    purpose: Annotated[str, MaxSize(64)]
    min_version: int

    def validate(self) -> None:
        _require(
            _PURPOSE_RE.fullmatch(self.purpose) is not None, f"{self.TYPE}.purpose", "bad purpose"
        )
        _check_u32(f"{self.TYPE}.min_version", self.min_version)


@dataclass(frozen=True, slots=True)
class Pins(Message):
    """What an app policy may pin beyond the image (see ``docs/attestation.md``).

    Every field is optional; ``None`` or empty pins nothing, except MRSERVICETD:
    a TD report that carries it (report 1.5) must carry zeros unless
    ``mr_service_td`` names the service TD allowed.
    """

    TYPE = "policy/pins"
    mr_config_id: Annotated[bytes | None, Size(MEASUREMENT_LENGTH)] = None
    mr_owner: Annotated[bytes | None, Size(MEASUREMENT_LENGTH)] = None
    mr_owner_config: Annotated[bytes | None, Size(MEASUREMENT_LENGTH)] = None
    xfam_mask: Annotated[bytes | None, Size(XFAM_LENGTH)] = None
    xfam_value: Annotated[bytes | None, Size(XFAM_LENGTH)] = None
    mr_service_td: Annotated[bytes | None, Size(MEASUREMENT_LENGTH)] = None
    system_events: Annotated[tuple[SystemEventPin, ...], MaxSize(MAX_SYSTEM_EVENT_PINS)] = ()
    gpu: GpuPin | None = None
    platforms: Annotated[tuple[PlatformPin, ...], MaxSize(MAX_PLATFORMS)] = ()
    min_key_versions: Annotated[tuple[MinKeyVersion, ...], MaxSize(MAX_PURPOSES)] = ()
    min_tcb_evaluation_data_number: int = 0

    def validate(self) -> None:
        t = self.TYPE
        for name, size in (
            ("mr_config_id", MEASUREMENT_LENGTH),
            ("mr_owner", MEASUREMENT_LENGTH),
            ("mr_owner_config", MEASUREMENT_LENGTH),
            ("xfam_mask", XFAM_LENGTH),
            ("xfam_value", XFAM_LENGTH),
            ("mr_service_td", MEASUREMENT_LENGTH),
        ):
            if getattr(self, name) is not None:
                _check_bytes(f"{t}.{name}", getattr(self, name), size)
        _require(
            (self.xfam_mask is None) == (self.xfam_value is None),
            t,
            "xfam_mask and xfam_value are set together",
        )
        if self.xfam_mask is not None and self.xfam_value is not None:
            _require(
                bytes(a & b for a, b in zip(self.xfam_value, self.xfam_mask, strict=True))
                == self.xfam_value,
                t,
                "xfam_value has bits outside xfam_mask",
            )
        groups: tuple[tuple[str, type[Message], int], ...] = (
            ("system_events", SystemEventPin, MAX_SYSTEM_EVENT_PINS),
            ("platforms", PlatformPin, MAX_PLATFORMS),
            ("min_key_versions", MinKeyVersion, MAX_PURPOSES),
        )
        for name, kind, limit in groups:
            for item in _as_tuple(f"{t}.{name}", getattr(self, name), limit):
                if not isinstance(item, kind):
                    raise MessageDecodeError(f"{t}.{name}: entries must be {kind.TYPE}")
                item.validate()
        if self.gpu is not None:
            _require(isinstance(self.gpu, GpuPin), f"{t}.gpu", "must be a GPU pin")
            self.gpu.validate()
        _check_sorted_unique(f"{t}.system_events", [e.name for e in self.system_events])
        _check_sorted_unique(f"{t}.platforms", [p.encode() for p in self.platforms])
        _check_sorted_unique(f"{t}.min_key_versions", [m.purpose for m in self.min_key_versions])
        _check_u32(f"{t}.min_tcb_evaluation_data_number", self.min_tcb_evaluation_data_number)

    @classmethod
    def build(cls, **kwargs: Any) -> Pins:
        """Pins with their sets sorted; raises ``PolicyError(MALFORMED)``."""
        for key, sort_key in (
            ("system_events", lambda e: e.name),
            ("platforms", lambda p: p.encode()),
            ("min_key_versions", lambda m: m.purpose),
        ):
            if key in kwargs:
                kwargs[key] = tuple(sorted(kwargs[key], key=sort_key))
        pins = cls(**kwargs)
        try:
            pins.validate()
        except MessageDecodeError as exc:
            raise _malformed(exc) from exc
        return pins

    def min_key_version(self, purpose: str) -> int:
        return next((m.min_version for m in self.min_key_versions if m.purpose == purpose), 0)


def _malformed(exc: MessageDecodeError) -> PolicyError:
    return PolicyError(PolicyFailure.MALFORMED, str(exc))


@dataclass(frozen=True, slots=True)
class AppPolicy(Message):
    """What an app's owner allows: see the module docstring for every field."""

    TYPE = "policy/app"
    app_id: Annotated[bytes, Size(APP_ID_LENGTH)]
    version: int
    owner_key: Annotated[bytes, Size(PUBLIC_KEY_LENGTH)]
    measurements: Annotated[tuple[Measurement, ...], MaxSize(MAX_MEASUREMENTS)]
    allowed_tcb_statuses: Annotated[tuple[str, ...], MaxSize(len(TCB_STATUSES))]
    purposes: Annotated[tuple[str, ...], MaxSize(MAX_PURPOSES)]
    kms_mpk: Annotated[bytes, Size(KMS_MPK_LENGTH)]
    not_before: int
    expires: int
    pins: Annotated[Pins | None, Since(2)] = None
    """Version 2: optional pins beyond the image; a policy without them encodes as
    version 1, byte for byte."""

    VERSION = 2

    @classmethod
    def build(
        cls,
        *,
        app_id: bytes,
        version: int,
        owner_key: bytes,
        measurements: Iterable[Measurement],
        kms_mpk: bytes,
        not_before: int,
        expires: int | None = None,
        allowed_tcb_statuses: Iterable[str] = ("UpToDate",),
        purposes: Iterable[str] = ("app",),
        pins: Pins | None = None,
    ) -> AppPolicy:
        """A valid policy with its sets sorted and de-duplicated.

        ``expires`` defaults to ``not_before + DEFAULT_LIFETIME``. Raises
        ``PolicyError(MALFORMED)`` if the result would not decode.
        """
        policy = cls(
            app_id=app_id,
            version=version,
            owner_key=owner_key,
            measurements=_sorted_measurements(measurements),
            allowed_tcb_statuses=tuple(sorted(set(allowed_tcb_statuses))),
            purposes=tuple(sorted(set(purposes))),
            kms_mpk=kms_mpk,
            not_before=not_before,
            expires=not_before + DEFAULT_LIFETIME if expires is None else expires,
            pins=pins,
        )
        try:
            policy.validate()
        except MessageDecodeError as exc:
            raise _malformed(exc) from exc
        return policy

    def validate(self) -> None:
        t = self.TYPE
        _check_bytes(f"{t}.app_id", self.app_id, APP_ID_LENGTH)
        _check_u32(f"{t}.version", self.version)
        _require(self.version >= 1, f"{t}.version", "must be at least 1")
        _check_bytes(f"{t}.owner_key", self.owner_key, PUBLIC_KEY_LENGTH)
        try:
            VerifyKey.from_bytes(self.owner_key)
        except InvalidEncoding as exc:
            raise MessageDecodeError(f"{t}.owner_key: {exc}") from exc
        _check_measurements(f"{t}.measurements", self.measurements)
        _check_tcb_statuses(f"{t}.allowed_tcb_statuses", self.allowed_tcb_statuses)
        for p in _as_tuple(f"{t}.purposes", self.purposes, MAX_PURPOSES):
            _require(
                isinstance(p, str) and _PURPOSE_RE.fullmatch(p) is not None,
                f"{t}.purposes",
                "each purpose must be 1..64 characters of [a-z0-9._-]",
            )
        _check_sorted_unique(f"{t}.purposes", self.purposes)
        _check_bytes(f"{t}.kms_mpk", self.kms_mpk, KMS_MPK_LENGTH)
        _require(
            self.kms_mpk != IDENTITY_MPK,
            f"{t}.kms_mpk",
            "the identity point is not a master public key",
        )
        _check_u32(f"{t}.not_before", self.not_before)
        _check_u32(f"{t}.expires", self.expires)
        _require(self.expires > self.not_before, t, "expires must be after not_before")
        if self.pins is not None:
            _require(isinstance(self.pins, Pins), f"{t}.pins", "not pins")
            self.pins.validate()

    @property
    def lifetime(self) -> int:
        """``expires - not_before``, in seconds."""
        return self.expires - self.not_before

    def is_expired(self, now: int) -> bool:
        """True once ``now >= expires``."""
        return now >= self.expires

    def sign(self, owner: OwnerKey) -> SignedPolicy:
        """Sign this policy with ``owner``, whose public key must be ``owner_key``."""
        if owner.public_bytes() != self.owner_key:
            raise LocalProtocolError("the policy names a different owner key")
        try:
            self.validate()
        except MessageDecodeError as exc:
            raise _malformed(exc) from exc
        return SignedPolicy(self, owner.sign(CTX_APP_POLICY, self.encode()))


@dataclass(frozen=True, slots=True)
class SignedPolicy(Message):
    """An app policy and its owner's signature (see :meth:`AppPolicy.sign`)."""

    TYPE = "policy/signed-app"
    policy: AppPolicy
    signature: Annotated[bytes, Size(SIGNATURE_LENGTH)]

    def validate(self) -> None:
        _require(isinstance(self.policy, AppPolicy), f"{self.TYPE}.policy", "not an app policy")
        self.policy.validate()
        _check_bytes(f"{self.TYPE}.signature", self.signature, SIGNATURE_LENGTH)

    def verify_signature(self) -> None:
        """Raise ``PolicyError(BAD_SIGNATURE)`` unless ``policy.owner_key`` signed it."""
        try:
            VerifyKey.from_bytes(self.policy.owner_key).verify(
                CTX_APP_POLICY, self.policy.encode(), self.signature
            )
        except (InvalidSignature, InvalidEncoding) as exc:
            raise PolicyError(PolicyFailure.BAD_SIGNATURE, str(exc)) from exc


@dataclass(frozen=True, slots=True)
class PolicyBundle(Message):
    """What nodes pass to each other: a signed policy and its app's rotation chain."""

    TYPE = "policy/bundle"
    signed: SignedPolicy
    rotations: Annotated[tuple[RotationRecord, ...], MaxSize(MAX_ROTATIONS)] = ()

    def validate(self) -> None:
        _require(isinstance(self.signed, SignedPolicy), f"{self.TYPE}.signed", "not a policy")
        self.signed.validate()
        for r in _as_tuple(f"{self.TYPE}.rotations", self.rotations, MAX_ROTATIONS):
            if not isinstance(r, RotationRecord):
                raise MessageDecodeError(f"{self.TYPE}.rotations: not a rotation")
            r.validate()


@dataclass(frozen=True, slots=True)
class NodeAdmissionPolicy(Message):
    """Which KMS node CVMs may join the committee: measurements and TCB statuses."""

    TYPE = "policy/node-admission"
    measurements: Annotated[tuple[Measurement, ...], MaxSize(MAX_MEASUREMENTS)]
    allowed_tcb_statuses: Annotated[tuple[str, ...], MaxSize(len(TCB_STATUSES))]

    @classmethod
    def build(
        cls,
        measurements: Iterable[Measurement],
        allowed_tcb_statuses: Iterable[str] = ("UpToDate",),
    ) -> NodeAdmissionPolicy:
        """A valid policy with its sets sorted and de-duplicated."""
        policy = cls(_sorted_measurements(measurements), tuple(sorted(set(allowed_tcb_statuses))))
        try:
            policy.validate()
        except MessageDecodeError as exc:
            raise _malformed(exc) from exc
        return policy

    def validate(self) -> None:
        _check_measurements(f"{self.TYPE}.measurements", self.measurements)
        _check_tcb_statuses(f"{self.TYPE}.allowed_tcb_statuses", self.allowed_tcb_statuses)

    def policy_hash(self) -> bytes:
        """``SHA-256`` of the canonical encoding; equals
        ``ChangeAdmissionPolicy(policy=self.encode()).policy_hash()``."""
        return hashlib.sha256(self.encode()).digest()


# --- the store -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The offer was accepted: pass ``bundle`` on to the other nodes."""

    app_id: bytes
    version: int
    previous_version: int | None
    bundle: PolicyBundle


@dataclass(frozen=True, slots=True)
class PolicyRefused:
    """The offer was refused; the store is unchanged."""

    reason: PolicyFailure
    detail: str = ""


OfferResult = Accepted | PolicyRefused


@dataclass(frozen=True, slots=True)
class _Entry:
    chain: OwnerChain
    signed: SignedPolicy


class PolicyStore:
    """The newest accepted policy and the owner chain of every app (pure, in memory).

    ``kms_mpk`` is this committee's master public key: a policy naming any other
    is refused. Time is passed in as ``now`` (Unix seconds); nothing here reads a
    clock.
    """

    __slots__ = ("_entries", "_kms_mpk", "_skew", "_step")

    def __init__(
        self,
        kms_mpk: bytes,
        *,
        max_clock_skew: int = MAX_CLOCK_SKEW,
        max_version_step: int = MAX_VERSION_STEP,
    ) -> None:
        if not isinstance(kms_mpk, bytes) or len(kms_mpk) != KMS_MPK_LENGTH:
            raise LocalProtocolError(f"kms_mpk must be {KMS_MPK_LENGTH} bytes")
        if kms_mpk == IDENTITY_MPK:
            raise LocalProtocolError("kms_mpk: the identity point is not a master public key")
        if max_clock_skew < 0:
            raise LocalProtocolError("max_clock_skew must not be negative")
        if max_version_step < 1:
            raise LocalProtocolError("max_version_step must be at least 1")
        self._kms_mpk = kms_mpk
        self._skew = max_clock_skew
        self._step = max_version_step
        self._entries: dict[bytes, _Entry] = {}

    @property
    def kms_mpk(self) -> bytes:
        return self._kms_mpk

    @property
    def max_version_step(self) -> int:
        return self._step

    # --- offers ---

    def offer(
        self,
        signed: SignedPolicy,
        *,
        now: int,
        rotations: Sequence[RotationRecord] = (),
        bound_first: bool = False,
        floor: int = 0,
    ) -> OfferResult:
        """Accept ``signed`` if it is a newer valid policy, whoever sent it.

        ``rotations`` is the app's owner chain from its first owner (empty while
        the first owner still holds the app). Returns :class:`Accepted` (relay its
        ``bundle``) or :class:`PolicyRefused` with the first failed check's reason.
        """
        try:
            chain = self.check(
                signed, now=now, rotations=rotations, bound_first=bound_first, floor=floor
            )
        except PolicyError as exc:
            return PolicyRefused(exc.reason, exc.detail)
        app_id = signed.policy.app_id
        held = self._entries.get(app_id)
        self._entries[app_id] = _Entry(chain, signed)
        return Accepted(
            app_id=app_id,
            version=signed.policy.version,
            previous_version=None if held is None else held.signed.policy.version,
            bundle=PolicyBundle(signed, chain.records),
        )

    def offer_bundle(
        self, bundle: PolicyBundle, *, now: int, bound_first: bool = False, floor: int = 0
    ) -> OfferResult:
        """:meth:`offer` for a bundle received from another node."""
        return self.offer(
            bundle.signed,
            now=now,
            rotations=bundle.rotations,
            bound_first=bound_first,
            floor=floor,
        )

    def check(
        self,
        signed: SignedPolicy,
        *,
        now: int,
        rotations: Sequence[RotationRecord] = (),
        bound_first: bool = False,
        floor: int = 0,
    ) -> OwnerChain:
        """Run every check of :meth:`offer` without changing the store.

        With ``bound_first`` the first version of an app the store does not hold
        is bounded too (at most ``max_version_step``, as if version 0 were held).
        ``floor`` is the app's durable version floor (the highest version ever
        accepted for it): a version must exceed it and be within the step of it,
        whatever is held, a rotation included.
        Returns the owner chain the store would hold; raises :class:`PolicyError`.
        """
        _check_now(now)
        if (
            isinstance(signed, SignedPolicy)
            and isinstance(signed.policy, AppPolicy)
            and isinstance(signed.policy.app_id, bytes)
        ):
            known = self._entries.get(signed.policy.app_id)
            if known is not None and known.signed == signed:
                raise PolicyError(PolicyFailure.DUPLICATE, "this policy is already held")
        chain = self._check_authentic(signed, rotations)
        policy = signed.policy
        held = self._entries.get(policy.app_id)
        held_version = 0 if held is None else held.signed.policy.version
        if (
            held is not None
            and chain.sequence > held.chain.sequence
            and held.signed.policy.owner_key != chain.current
        ):
            # The offered chain rotates the app away from the key that signed the policy
            # held: that policy is void, whatever its version, and the new owner's
            # policy replaces it (its version bounded from 0).
            held_version = 0
        held_version = max(held_version, floor)
        if policy.version <= held_version:
            raise PolicyError(
                PolicyFailure.STALE_VERSION,
                f"version {policy.version} is not newer than {held_version}",
            )
        if (
            held is not None or bound_first or floor > 0
        ) and policy.version - held_version > self._step:
            raise PolicyError(
                PolicyFailure.VERSION_JUMP,
                f"version {policy.version} jumps more than {self._step} past {held_version}",
            )
        if policy.lifetime > MAX_LIFETIME:
            raise PolicyError(
                PolicyFailure.LIFETIME_TOO_LONG,
                f"lifetime {policy.lifetime} s exceeds {MAX_LIFETIME} s",
            )
        if policy.not_before > now + self._skew:
            raise PolicyError(
                PolicyFailure.NOT_YET_VALID, f"valid from {policy.not_before}, now is {now}"
            )
        if policy.is_expired(now):
            raise PolicyError(PolicyFailure.EXPIRED, f"expired at {policy.expires}, now is {now}")
        return chain

    def _check_authentic(
        self, signed: SignedPolicy, rotations: Sequence[RotationRecord]
    ) -> OwnerChain:
        """Structure, owner chain, owner, signature and MPK: everything but time and version."""
        if not isinstance(signed, SignedPolicy):
            raise PolicyError(PolicyFailure.MALFORMED, "not a signed policy")
        try:
            signed.validate()
        except MessageDecodeError as exc:
            raise _malformed(exc) from exc
        policy = signed.policy
        held = self._entries.get(policy.app_id)
        if rotations:
            offered = OwnerChain.from_records(policy.app_id, rotations)
            chain = offered if held is None else held.chain.merge(offered)
        elif held is not None:
            chain = held.chain  # no rotations offered: a prefix of any chain held
        else:
            chain = OwnerChain.from_records(policy.app_id, (), first_owner=policy.owner_key)
        if policy.owner_key != chain.current:
            raise PolicyError(
                PolicyFailure.NOT_OWNER,
                f"signed by a key that is not the owner after {chain.sequence} rotation(s)",
            )
        signed.verify_signature()
        if policy.kms_mpk != self._kms_mpk:
            raise PolicyError(PolicyFailure.WRONG_MPK, "the policy names another master key")
        return chain

    def restore(self, bundle: PolicyBundle) -> None:
        """Load a bundle the node persisted, expired or not.

        Checks the signature, owner chain and MPK but not time, so that a restarted
        node keeps the versions it had accepted. Raises :class:`PolicyError`.
        """
        chain = self._check_authentic(bundle.signed, bundle.rotations)
        held = self._entries.get(bundle.signed.policy.app_id)
        if held is not None and held.signed.policy.version >= bundle.signed.policy.version:
            raise PolicyError(PolicyFailure.STALE_VERSION, "a newer policy is already held")
        self._entries[bundle.signed.policy.app_id] = _Entry(chain, bundle.signed)

    def replace(self, bundle: PolicyBundle) -> None:
        """Hold ``bundle`` for its app whatever is held now (the operator resolving a fork).

        Checks the bundle's own chain, owner, signature and MPK, not the held chain.
        Raises :class:`PolicyError`.
        """
        app_id = bundle.signed.policy.app_id
        held = self._entries.pop(app_id, None)
        try:
            chain = self._check_authentic(bundle.signed, bundle.rotations)
        except PolicyError:
            if held is not None:
                self._entries[app_id] = held
            raise
        self._entries[app_id] = _Entry(chain, bundle.signed)

    def check_authentic(
        self, signed: SignedPolicy, rotations: Sequence[RotationRecord] = ()
    ) -> OwnerChain:
        """Structure, owner chain (merged with the one held), owner, signature and MPK.

        Everything :meth:`check` does but time and version; raises :class:`PolicyError`.
        """
        return self._check_authentic(signed, rotations)

    # --- queries ---

    def current(self, app_id: bytes, now: int) -> AppPolicy | None:
        """The app's policy if one is held and unexpired at ``now``, else ``None``."""
        _check_now(now)
        entry = self._entries.get(app_id)
        if entry is None or entry.signed.policy.is_expired(now):
            return None
        return entry.signed.policy

    def held(self, app_id: bytes) -> SignedPolicy | None:
        """The newest accepted policy of the app, even if it has expired."""
        entry = self._entries.get(app_id)
        return None if entry is None else entry.signed

    def version(self, app_id: bytes) -> int | None:
        """The version held for the app (expired or not), or ``None``."""
        entry = self._entries.get(app_id)
        return None if entry is None else entry.signed.policy.version

    def owner_chain(self, app_id: bytes) -> OwnerChain | None:
        """The verified owner chain held for the app."""
        entry = self._entries.get(app_id)
        return None if entry is None else entry.chain

    def bundle(self, app_id: bytes) -> PolicyBundle | None:
        """What to send a node that asks for the app's policy."""
        entry = self._entries.get(app_id)
        return None if entry is None else PolicyBundle(entry.signed, entry.chain.records)

    def bundles(self) -> tuple[PolicyBundle, ...]:
        """Every held policy with its chain, sorted by app id (what the node persists)."""
        return tuple(
            PolicyBundle(self._entries[a].signed, self._entries[a].chain.records)
            for a in sorted(self._entries)
        )

    def app_ids(self) -> tuple[bytes, ...]:
        return tuple(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


def _check_now(now: int) -> None:
    if isinstance(now, bool) or not isinstance(now, int) or now < 0:
        raise LocalProtocolError("now must be a non-negative int (Unix seconds)")
