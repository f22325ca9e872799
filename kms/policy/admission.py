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
asked for), ``PURPOSE_NOT_ALLOWED``, ``TCB_STATUS_NOT_ALLOWED``,
``MEASUREMENT_MISMATCH`` / ``EVENT_LOG_INVALID``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mpc.errors import LocalProtocolError

from .errors import EventLogError, PolicyError, PolicyFailure
from .eventlog import replay_rtmr3
from .policy import MAX_CLOCK_SKEW, MEASUREMENT_LENGTH, AppPolicy, Measurement, NodeAdmissionPolicy

__all__ = ["TDMeasurements", "admits", "admits_node", "matching_measurement"]


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


def matching_measurement(
    measurements: Sequence[Measurement],
    *,
    td: TDMeasurements,
    event_log: str | bytes | None = None,
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
    if event_log is None:
        raise PolicyError(
            PolicyFailure.MEASUREMENT_MISMATCH,
            "the image is allowed by compose hash, but no RTMR3 event log was given",
        )
    try:
        compose_hash = replay_rtmr3(event_log, rtmr3).compose_hash
    except EventLogError as exc:
        raise PolicyError(PolicyFailure.EVENT_LOG_INVALID, str(exc)) from exc
    for m in by_compose:
        if m.compose_hash == compose_hash:
            return m
    raise PolicyError(
        PolicyFailure.MEASUREMENT_MISMATCH,
        f"compose hash {compose_hash.hex()} is not allowed for this image",
    )


def admits(
    policy: AppPolicy,
    *,
    td: TDMeasurements,
    tcb_status: str,
    purpose: str,
    now: int,
    event_log: str | bytes | None = None,
    min_version: int = 0,
    max_clock_skew: int = MAX_CLOCK_SKEW,
) -> None:
    """Raise :class:`PolicyError` unless ``policy`` lets this CVM have ``purpose``'s key.

    ``td`` and ``tcb_status`` come from a verified quote, ``event_log`` is the
    request's RTMR3 event log (needed for compose-hash entries), ``min_version``
    the oldest policy version the CVM accepts.
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
    if tcb_status not in policy.allowed_tcb_statuses:
        raise PolicyError(PolicyFailure.TCB_STATUS_NOT_ALLOWED, f"TCB status {tcb_status!r}")
    matching_measurement(policy.measurements, td=td, event_log=event_log)


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
