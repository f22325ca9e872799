"""Does a policy admit this CVM? App key release and KMS node admission.

:func:`admits` decides whether an app policy lets a CVM receive the key for one
purpose; :func:`admits_node` whether the node admission policy lets a KMS node
CVM join. Both return ``None`` or raise :class:`~kms.policy.errors.PolicyError`.
The quote itself (signature chain, TDX rather than SGX, collateral) is verified
before, by ``kms.attest``; this module only reads the verified TD fields and
TCB status.

Measurement matching (see :class:`~kms.policy.policy.Measurement`): an entry
matches when MRTD and RTMR0–2 are equal to the TD's and either its RTMR3 is
equal to the TD's, or its compose hash equals the one read from the RTMR3 event
log *after* that log has been replayed against this TD's RTMR3
(:func:`kms.policy.eventlog.replay_rtmr3`). The caller hands over the raw event
log, not a compose hash, so a compose hash never reaches the comparison
without that replay. The log is replayed only when a compose-hash entry's
MRTD and RTMR0–2 match; a log that then fails to verify is
``EVENT_LOG_INVALID`` (chained to the :class:`~kms.policy.errors.EventLogError`),
unless an explicit entry matches anyway.

Checks of :func:`admits`, in order: ``EXPIRED`` (``now >= expires``),
``NOT_YET_VALID`` (``now + max_clock_skew < not_before``),
``VERSION_BELOW_REQUESTED`` (the policy is older than the version the CVM
asked for), ``PURPOSE_NOT_ALLOWED``, ``KEY_VERSION_TOO_OLD``,
``TCB_STATUS_NOT_ALLOWED``, ``PLATFORM_NOT_ALLOWED`` /
``TCB_EVALUATION_TOO_OLD``, ``TD_FIELD_MISMATCH`` (MRSERVICETD must be zero
unless pinned, even without pins), ``MEASUREMENT_MISMATCH`` /
``EVENT_LOG_INVALID``, ``APP_ID_NOT_MEASURED`` (a compose-hash entry matched,
or the release would admit a new app, and RTMR3's ``app-id`` is not the
requested app or there is no log), ``SYSTEM_EVENT_MISMATCH``.
An :class:`Evidence` replays the log at most once for all of a request's
purposes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from mpc.codec import json_nesting_depth
from mpc.errors import LocalProtocolError

from .errors import EventLogError, PolicyError, PolicyFailure
from .eventlog import ReplayedLog, replay_rtmr3
from .policy import (
    MAX_CLOCK_SKEW,
    MEASUREMENT_LENGTH,
    AppPolicy,
    Measurement,
    NodeAdmissionPolicy,
    Pins,
)

__all__ = ["Evidence", "TDMeasurements", "admits", "admits_node", "matching_measurement"]

MEASUREMENT_ZERO = bytes(MEASUREMENT_LENGTH)


class TDMeasurements(Protocol):
    """The measurement registers of a verified TD report (48 bytes each)."""

    @property
    def mr_td(self) -> bytes: ...

    @property
    def rtmr0(self) -> bytes: ...

    @property
    def rtmr1(self) -> bytes: ...

    @property
    def rtmr2(self) -> bytes: ...

    @property
    def rtmr3(self) -> bytes: ...


def _registers(td: TDMeasurements) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    regs = (td.mr_td, td.rtmr0, td.rtmr1, td.rtmr2, td.rtmr3)
    for r in regs:
        if not isinstance(r, bytes) or len(r) != MEASUREMENT_LENGTH:
            raise LocalProtocolError(f"TD registers must be {MEASUREMENT_LENGTH} bytes each")
    return regs


class Evidence:
    """What one request shows: the TD and its RTMR3 event log, replayed at most once.

    :func:`admits` takes it in place of a raw log so that a request naming several
    purposes replays its log once, not once per purpose.
    """

    __slots__ = ("_error", "_log", "_replayed", "td")

    def __init__(self, td: TDMeasurements, event_log: str | bytes | None) -> None:
        self.td = td
        self._log = event_log
        self._replayed: ReplayedLog | None = None
        self._error: PolicyError | None = None

    @property
    def has_log(self) -> bool:
        return self._log is not None

    def replayed(self) -> ReplayedLog:
        """The replayed log; ``PolicyError(EVENT_LOG_INVALID)`` if it does not verify."""
        if self._replayed is None and self._error is None:
            if self._log is None:
                self._error = PolicyError(PolicyFailure.MEASUREMENT_MISMATCH, "no RTMR3 event log")
            else:
                try:
                    self._replayed = replay_rtmr3(self._log, _registers(self.td)[4])
                except EventLogError as exc:
                    error = PolicyError(PolicyFailure.EVENT_LOG_INVALID, str(exc))
                    error.__cause__ = exc
                    self._error = error
        if self._replayed is None:
            raise self._error or PolicyError(PolicyFailure.EVENT_LOG_INVALID, "no replay")
        return self._replayed


def _evidence(td: TDMeasurements, event_log: str | bytes | Evidence | None) -> Evidence:
    return event_log if isinstance(event_log, Evidence) else Evidence(td, event_log)


def matching_measurement(
    measurements: Sequence[Measurement],
    *,
    td: TDMeasurements,
    event_log: str | bytes | Evidence | None = None,
) -> Measurement:
    """The first entry of ``measurements`` that the TD matches.

    Raises ``PolicyError(MEASUREMENT_MISMATCH)`` or ``PolicyError(EVENT_LOG_INVALID)``.
    """
    mr_td, rtmr0, rtmr1, rtmr2, rtmr3 = _registers(td)
    image = [m for m in measurements if m.matches_image(mr_td, rtmr0, rtmr1, rtmr2)]
    for m in image:
        if m.rtmr3 is not None and m.rtmr3 == rtmr3:
            return m
    by_compose = [m for m in image if m.compose_hash is not None]
    if not by_compose:
        raise PolicyError(
            PolicyFailure.MEASUREMENT_MISMATCH,
            "no allowed measurement matches MRTD, RTMR0-2 and RTMR3"
            if not image
            else "the image is allowed but RTMR3 is not",
        )
    evidence = _evidence(td, event_log)
    if not evidence.has_log:
        raise PolicyError(
            PolicyFailure.MEASUREMENT_MISMATCH,
            "the image is allowed by compose hash, but no RTMR3 event log was given",
        )
    compose_hash = evidence.replayed().compose_hash
    for m in by_compose:
        if m.compose_hash == compose_hash:
            return m
    raise PolicyError(
        PolicyFailure.MEASUREMENT_MISMATCH,
        f"compose hash {compose_hash.hex()} is not allowed for this image",
    )


def _td_field(td: object, name: str) -> bytes | None:
    fields = getattr(td, "fields", None)
    value = getattr(fields, name, None) if fields is not None else getattr(td, name, None)
    return value if isinstance(value, bytes) else None


def _check_td_pins(pins: Pins | None, td: object) -> None:
    """MRCONFIGID, MROWNER, MROWNERCONFIG, XFAM and MRSERVICETD (zero unless pinned)."""
    service_td = _td_field(td, "mr_service_td")
    allowed_service_td = (
        MEASUREMENT_ZERO if pins is None or pins.mr_service_td is None else pins.mr_service_td
    )
    if service_td is not None and service_td != allowed_service_td:
        raise PolicyError(
            PolicyFailure.TD_FIELD_MISMATCH,
            f"MRSERVICETD is {service_td.hex()[:32]}..., not allowed",
        )
    if pins is None:
        return
    for name, label in (
        ("mr_config_id", "MRCONFIGID"),
        ("mr_owner", "MROWNER"),
        ("mr_owner_config", "MROWNERCONFIG"),
    ):
        want = getattr(pins, name)
        if want is not None and _td_field(td, name) != want:
            raise PolicyError(PolicyFailure.TD_FIELD_MISMATCH, f"{label} is not the pinned value")
    if pins.mr_service_td is not None and service_td is None:
        raise PolicyError(
            PolicyFailure.TD_FIELD_MISMATCH, "MRSERVICETD is pinned but the TD report has none"
        )
    if pins.xfam_mask is not None and pins.xfam_value is not None:
        xfam = _td_field(td, "xfam")
        if (
            xfam is None
            or bytes(a & b for a, b in zip(xfam, pins.xfam_mask, strict=True)) != pins.xfam_value
        ):
            raise PolicyError(
                PolicyFailure.TD_FIELD_MISMATCH, "XFAM & mask is not the pinned value"
            )


def _check_platform(pins: Pins, td: object) -> None:
    if pins.platforms:
        fmspc = getattr(td, "fmspc", None)
        instance = getattr(td, "platform_instance_id", None)
        try:
            fmspc_bytes = bytes.fromhex(fmspc) if isinstance(fmspc, str) else None
        except ValueError:
            fmspc_bytes = None
        for p in pins.platforms:
            if p.fmspc == fmspc_bytes and p.platform_instance_id in (None, instance):
                break
        else:
            raise PolicyError(
                PolicyFailure.PLATFORM_NOT_ALLOWED,
                f"platform (FMSPC {fmspc}) is not on the policy's allow-list",
            )
    floor = pins.min_tcb_evaluation_data_number
    number = getattr(td, "tcb_evaluation_data_number", None)
    if floor and (not isinstance(number, int) or number < floor):
        raise PolicyError(
            PolicyFailure.TCB_EVALUATION_TOO_OLD,
            f"TCB evaluation data number {number} is below the policy's floor {floor}",
        )


def _gpu_claims(payload: bytes) -> dict[str, object]:
    """dstack's ``gpu-attestation`` payload: one flat JSON object."""
    try:
        text = payload.decode("utf-8")
        flat = json_nesting_depth(text) <= 1
        claims = json.loads(text) if flat else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        claims = None
    if not isinstance(claims, dict):
        raise PolicyError(
            PolicyFailure.SYSTEM_EVENT_MISMATCH, "gpu-attestation is not a JSON object"
        )
    return claims


def _check_system_pins(pins: Pins, evidence: Evidence) -> None:
    if not pins.system_events and pins.gpu is None:
        return
    if not evidence.has_log:
        raise PolicyError(
            PolicyFailure.SYSTEM_EVENT_MISMATCH, "system events are pinned: no event log"
        )
    system = evidence.replayed().system
    for pin in pins.system_events:
        if system.get(pin.name) != pin.payload:
            raise PolicyError(
                PolicyFailure.SYSTEM_EVENT_MISMATCH,
                f"{pin.name} is {'absent' if pin.name not in system else 'not the pinned value'}",
            )
    gpu = pins.gpu
    if gpu is not None:
        payload = system.get("gpu-attestation")
        if payload is None:
            raise PolicyError(PolicyFailure.SYSTEM_EVENT_MISMATCH, "no gpu-attestation event")
        claims = _gpu_claims(payload)
        devices = claims.get("devices")
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < gpu.min_devices:
            raise PolicyError(
                PolicyFailure.SYSTEM_EVENT_MISMATCH, f"gpu-attestation devices {devices!r}"
            )
        for name in ("cc_mode", "devtools"):
            want = getattr(gpu, name)
            if want is not None and (
                claims.get(name) != want or type(claims.get(name)) is not type(want)
            ):
                raise PolicyError(
                    PolicyFailure.SYSTEM_EVENT_MISMATCH, f"gpu-attestation {name} is not {want!r}"
                )


def admits(
    policy: AppPolicy,
    *,
    td: TDMeasurements,
    tcb_status: str,
    purpose: str,
    now: int,
    event_log: str | bytes | Evidence | None = None,
    min_version: int = 0,
    max_clock_skew: int = MAX_CLOCK_SKEW,
    key_version: int | None = None,
    app_id: bytes | None = None,
    require_app_id: bool = False,
) -> Measurement:
    """Raise :class:`PolicyError` unless ``policy`` lets this CVM have ``purpose``'s key;
    return the measurement entry that matched.

    ``td`` and ``tcb_status`` come from a verified quote (pins beyond the registers
    read its ``fields``, ``fmspc``, ``platform_instance_id`` and
    ``tcb_evaluation_data_number``), ``event_log`` is the request's RTMR3 event
    log or an :class:`Evidence` shared by the request's purposes, ``min_version``
    the oldest policy version the CVM accepts, ``key_version`` the requested key
    version, ``app_id`` the app the CVM asked for (default: the policy's).

    RTMR3's boot-prefix ``app-id`` must be that app when the matched entry pins a
    compose hash, and for any entry when ``require_app_id`` (a release that would
    admit a new app): ``APP_ID_NOT_MEASURED`` otherwise, a missing log included.
    """
    if policy.is_expired(now):
        raise PolicyError(PolicyFailure.EXPIRED, f"expired at {policy.expires}, now is {now}")
    if now + max_clock_skew < policy.not_before:
        raise PolicyError(
            PolicyFailure.NOT_YET_VALID, f"valid from {policy.not_before}, now is {now}"
        )
    if policy.version < min_version:
        raise PolicyError(
            PolicyFailure.VERSION_BELOW_REQUESTED,
            f"policy version {policy.version} is older than the requested {min_version}",
        )
    if purpose not in policy.purposes:
        raise PolicyError(PolicyFailure.PURPOSE_NOT_ALLOWED, f"purpose {purpose!r}")
    pins = policy.pins
    if pins is not None and key_version is not None and key_version < pins.min_key_version(purpose):
        raise PolicyError(
            PolicyFailure.KEY_VERSION_TOO_OLD,
            f"key version {key_version} of {purpose!r} is below {pins.min_key_version(purpose)}",
        )
    if tcb_status not in policy.allowed_tcb_statuses:
        raise PolicyError(PolicyFailure.TCB_STATUS_NOT_ALLOWED, f"TCB status {tcb_status!r}")
    if pins is not None:
        _check_platform(pins, td)
    _check_td_pins(pins, td)
    evidence = _evidence(td, event_log)
    matched = matching_measurement(policy.measurements, td=td, event_log=evidence)
    if matched.compose_hash is not None or require_app_id:
        wanted = policy.app_id if app_id is None else app_id
        if not evidence.has_log:
            raise PolicyError(
                PolicyFailure.APP_ID_NOT_MEASURED,
                f"no RTMR3 event log to show app-id {wanted.hex()}",
            )
        measured = evidence.replayed().app_id
        if measured != wanted:
            raise PolicyError(
                PolicyFailure.APP_ID_NOT_MEASURED,
                f"RTMR3's app-id is {measured.hex()}, the request is for {wanted.hex()}",
            )
    if pins is not None:
        _check_system_pins(pins, evidence)
    return matched


def admits_node(
    policy: NodeAdmissionPolicy,
    *,
    td: TDMeasurements,
    tcb_status: str,
    event_log: str | bytes | None = None,
) -> None:
    """Raise :class:`PolicyError` unless the node admission policy admits this KMS node CVM."""
    if tcb_status not in policy.allowed_tcb_statuses:
        raise PolicyError(PolicyFailure.TCB_STATUS_NOT_ALLOWED, f"TCB status {tcb_status!r}")
    matching_measurement(policy.measurements, td=td, event_log=event_log)
