"""App policies signed by app owners, and the KMS node admission policy.

* :mod:`kms.policy.app`: owner keys, app ids, owner rotation chains;
* :mod:`kms.policy.policy`: measurements, signed app policies, the node
  admission policy and the in-memory :class:`PolicyStore`;
* :mod:`kms.policy.eventlog`: dstack RTMR3 event-log replay and compose hash;
* :mod:`kms.policy.admission`: whether a policy admits a CVM;
* :mod:`kms.policy.registry`: the apps a node has admitted, their owner chains
  and version floors, and the bounded cache of unadmitted bundles;
* :mod:`kms.policy.errors`: ``PolicyError`` and ``EventLogError`` with their reasons.

Pure code: time comes in as ``now`` (Unix seconds), randomness as ``rng``.
"""

from __future__ import annotations

from .admission import Evidence, TDMeasurements, admits, admits_node, matching_measurement
from .app import (
    APP_ID_LENGTH,
    CTX_APP_POLICY,
    CTX_OWNER_ROTATION,
    OwnerChain,
    OwnerKey,
    RotationRecord,
    app_id_from_owner,
)
from .approot import ROOT_PURPOSE, root_version
from .errors import EventLogError, EventLogFailure, PolicyError, PolicyFailure
from .eventlog import (
    ReplayedLog,
    build_event_log,
    compose_hash_from_event_log,
    compose_hash_of,
    dstack_boot_events,
    replay_rtmr3,
)
from .policy import (
    DEFAULT_LIFETIME,
    MAX_CLOCK_SKEW,
    MAX_LIFETIME,
    MAX_VERSION_STEP,
    TCB_STATUSES,
    Accepted,
    AppPolicy,
    GpuPin,
    Measurement,
    MinKeyVersion,
    NodeAdmissionPolicy,
    OfferResult,
    Pins,
    PlatformPin,
    PolicyBundle,
    PolicyRefused,
    PolicyStore,
    SignedPolicy,
    SystemEventPin,
)

__all__ = [
    "APP_ID_LENGTH",
    "CTX_APP_POLICY",
    "CTX_OWNER_ROTATION",
    "DEFAULT_LIFETIME",
    "MAX_CLOCK_SKEW",
    "MAX_LIFETIME",
    "MAX_VERSION_STEP",
    "ROOT_PURPOSE",
    "TCB_STATUSES",
    "Accepted",
    "AppPolicy",
    "EventLogError",
    "EventLogFailure",
    "Evidence",
    "GpuPin",
    "Measurement",
    "MinKeyVersion",
    "NodeAdmissionPolicy",
    "OfferResult",
    "OwnerChain",
    "OwnerKey",
    "Pins",
    "PlatformPin",
    "PolicyBundle",
    "PolicyError",
    "PolicyFailure",
    "PolicyRefused",
    "PolicyStore",
    "ReplayedLog",
    "RotationRecord",
    "SignedPolicy",
    "SystemEventPin",
    "TDMeasurements",
    "admits",
    "admits_node",
    "app_id_from_owner",
    "build_event_log",
    "compose_hash_from_event_log",
    "compose_hash_of",
    "dstack_boot_events",
    "matching_measurement",
    "replay_rtmr3",
    "root_version",
]
