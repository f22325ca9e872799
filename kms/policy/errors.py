"""Typed failures of app policies, owner rotations, admission and RTMR3 event logs.

Every refusal carries a reason from an enum, in the style of cryptography's
``_Reasons``: callers branch on ``error.reason``, never on the message text.
``PolicyError`` covers signed policies, owner-rotation chains and admission;
``EventLogError`` covers the replay of a dstack RTMR3 event log.
"""

from __future__ import annotations

import enum

__all__ = ["EventLogError", "EventLogFailure", "PolicyError", "PolicyFailure"]


class PolicyFailure(enum.Enum):
    """Why a policy, a rotation chain or an admission was refused."""

    MALFORMED = "malformed"
    """The document breaks the schema (sizes, ordering, character sets, unknown values)."""
    BAD_SIGNATURE = "bad_signature"
    """A policy or rotation signature does not verify under the key it names."""
    NOT_OWNER = "not_owner"
    """The policy is signed by a key that is not the app's current owner key."""
    APP_ID_MISMATCH = "app_id_mismatch"
    """A rotation record names a different app than the policy."""
    ROTATION_GAP = "rotation_gap"
    """A rotation record skips a sequence number."""
    ROTATION_FORK = "rotation_fork"
    """Two different rotation records claim the same sequence number."""
    ROTATION_REPLAY = "rotation_replay"
    """A rotation record appears again after its place in the chain."""
    ROTATION_WRONG_SIGNER = "rotation_wrong_signer"
    """A rotation record's previous key is not the then-current owner key."""
    ROTATION_KEY_REUSED = "rotation_key_reused"
    """A rotation hands ownership to a key that already owned the app."""
    DUPLICATE = "duplicate"
    """The very policy already held: the normal echo of gossip, not a fault (do not relay)."""
    STALE_VERSION = "stale_version"
    """The policy's version is not greater than the one held."""
    VERSION_JUMP = "version_jump"
    """The policy's version exceeds the held one by more than ``MAX_VERSION_STEP``."""
    EXPIRED = "expired"
    """The policy's expiry is not in the future."""
    LIFETIME_TOO_LONG = "lifetime_too_long"
    """``expires - not_before`` exceeds ``MAX_LIFETIME``."""
    NOT_YET_VALID = "not_yet_valid"
    """``not_before`` is later than now plus the allowed clock skew."""
    WRONG_MPK = "wrong_mpk"
    """The policy names a different KMS master public key than this committee's."""
    MEASUREMENT_MISMATCH = "measurement_mismatch"
    """No allowed measurement matches the CVM's registers (or replayed compose hash)."""
    TCB_STATUS_NOT_ALLOWED = "tcb_status_not_allowed"
    """The quote's TCB status is not among the allowed ones."""
    PURPOSE_NOT_ALLOWED = "purpose_not_allowed"
    """The requested purpose is not among the policy's purposes."""
    VERSION_BELOW_REQUESTED = "version_below_requested"
    """The policy held is older than the minimum version the CVM asked for."""
    EVENT_LOG_INVALID = "event_log_invalid"
    """A compose-hash measurement could match, but the RTMR3 event log does not verify."""
    APP_ID_NOT_MEASURED = "app_id_not_measured"
    """A compose-hash entry matched, but RTMR3's ``app-id`` event names another app."""
    TD_FIELD_MISMATCH = "td_field_mismatch"
    """MRCONFIGID, MROWNER, MROWNERCONFIG, XFAM or MRSERVICETD differs from the pin
    (MRSERVICETD must be zero unless pinned)."""
    SYSTEM_EVENT_MISMATCH = "system_event_mismatch"
    """A pinned system-segment event of RTMR3 (or a ``gpu-attestation`` field) is
    absent or differs."""
    PLATFORM_NOT_ALLOWED = "platform_not_allowed"
    """The quote's platform (PCK FMSPC, platform instance id) is not on the allow-list."""
    KEY_VERSION_TOO_OLD = "key_version_too_old"
    """The requested key version is below the policy's minimum for that purpose."""
    TCB_EVALUATION_TOO_OLD = "tcb_evaluation_too_old"
    """The collateral's TCB evaluation data number is below the policy's floor."""
    APP_FROZEN = "app_frozen"
    """The app is frozen: two different rotations from one owner key were seen (a fork)."""
    UNKNOWN_APP = "unknown_app"
    """The node has not admitted the app: the policy was kept in its bounded cache only."""
    TOO_MANY_ROTATIONS = "too_many_rotations"
    """A bundle of an app the node has not admitted carries more rotations than it accepts."""
    REJECTED_BRANCH = "rejected_branch"
    """The bundle's chain is a branch of a fork the operator resolved against."""


class PolicyError(Exception):
    """A policy, rotation chain or admission refused, with a typed ``reason``."""

    def __init__(self, reason: PolicyFailure, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


class EventLogFailure(enum.Enum):
    """Why an RTMR3 event log was refused."""

    MALFORMED = "malformed"
    """Not a JSON list of events of dstack's shape, or over the size limits."""
    UNSUPPORTED_EVENT = "unsupported_event"
    """An RTMR3 event whose digest rule is not pinned (not a dstack runtime event),
    or a dstack event-log version-2 event where facts are read (before ``system-ready``)."""
    DIGEST_MISMATCH = "digest_mismatch"
    """An event's recorded digest differs from the digest of its own fields."""
    REPLAY_MISMATCH = "replay_mismatch"
    """Replaying the events does not reproduce the quote's RTMR3."""
    BOOT_PREFIX = "boot_prefix"
    """RTMR3's first five events are not exactly dstack's boot prefix
    (``system-preparing, app-id, compose-hash, instance-id, boot-mr-done``, with
    their payload lengths)."""
    UNKNOWN_SYSTEM_EVENT = "unknown_system_event"
    """An event between the boot prefix and ``system-ready`` is not a known system event."""
    DUPLICATE_SYSTEM_EVENT = "duplicate_system_event"
    """A system event appears twice before ``system-ready``."""


class EventLogError(Exception):
    """An RTMR3 event log refused, with a typed ``reason``."""

    def __init__(self, reason: EventLogFailure, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
