"""Distributed key generation and resharing: one sans-I/O sharing session.

``SharingSession`` with ``SharingConfig(kind=RunKind.DKG)`` is Joint-Feldman DKG;
with ``kind=RunKind.RESHARE`` it moves the master secret to a new committee (or
refreshes the same one) without changing the master public key.
"""

from mpc.cert import RunKind
from mpc.dkg.schedule import Schedule
from mpc.dkg.session import (
    TERMINAL_PHASES,
    TRANSITIONS,
    CertificateCompleted,
    DealerExcluded,
    DealerTamper,
    DealingCompleted,
    HonestDealer,
    Persist,
    Phase,
    ResponderEquivocated,
    SharingConfig,
    SharingFailed,
    SharingFinalized,
    SharingResult,
    SharingSession,
    SigningWithheld,
)

__all__ = [
    "TERMINAL_PHASES",
    "TRANSITIONS",
    "CertificateCompleted",
    "DealerExcluded",
    "DealerTamper",
    "DealingCompleted",
    "HonestDealer",
    "Persist",
    "Phase",
    "ResponderEquivocated",
    "RunKind",
    "Schedule",
    "SharingConfig",
    "SharingFailed",
    "SharingFinalized",
    "SharingResult",
    "SharingSession",
    "SigningWithheld",
]
