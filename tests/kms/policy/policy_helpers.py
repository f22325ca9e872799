"""Shared fixtures for the ``kms.policy`` tests: owners, measurements, policies, TDs."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from kms.policy import (
    AppPolicy,
    Measurement,
    OwnerChain,
    OwnerKey,
    RotationRecord,
    SignedPolicy,
)

MPK = bytes(range(96))
OTHER_MPK = bytes(reversed(range(96)))
NOW = 1_750_000_000
DAY = 24 * 3600

MR_TD = b"\x11" * 48
RTMR0 = b"\x22" * 48
RTMR1 = b"\x33" * 48
RTMR2 = b"\x44" * 48
RTMR3 = b"\x55" * 48
COMPOSE_HASH = b"\x66" * 32


def rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


def owner(seed: int) -> OwnerKey:
    return OwnerKey.generate(rng(seed))


@dataclass(frozen=True)
class TD:
    """A TD report's registers, shaped like ``kms.policy.TDMeasurements``."""

    mr_td: bytes = MR_TD
    rtmr0: bytes = RTMR0
    rtmr1: bytes = RTMR1
    rtmr2: bytes = RTMR2
    rtmr3: bytes = RTMR3


EXPLICIT = Measurement.explicit(mr_td=MR_TD, rtmr0=RTMR0, rtmr1=RTMR1, rtmr2=RTMR2, rtmr3=RTMR3)
BY_COMPOSE = Measurement.compose(
    mr_td=MR_TD, rtmr0=RTMR0, rtmr1=RTMR1, rtmr2=RTMR2, compose_hash=COMPOSE_HASH
)


def make_policy(
    key: OwnerKey,
    *,
    app_id: bytes | None = None,
    version: int = 1,
    measurements: tuple[Measurement, ...] = (EXPLICIT,),
    kms_mpk: bytes = MPK,
    not_before: int = NOW,
    expires: int | None = None,
    tcb: tuple[str, ...] = ("UpToDate",),
    purposes: tuple[str, ...] = ("app",),
) -> AppPolicy:
    return AppPolicy.build(
        app_id=key.app_id() if app_id is None else app_id,
        version=version,
        owner_key=key.public_bytes(),
        measurements=measurements,
        kms_mpk=kms_mpk,
        not_before=not_before,
        expires=expires,
        allowed_tcb_statuses=tcb,
        purposes=purposes,
    )


def signed(key: OwnerKey, **kwargs: object) -> SignedPolicy:
    return make_policy(key, **kwargs).sign(key)  # type: ignore[arg-type]


def rotation_chain(keys: list[OwnerKey]) -> tuple[OwnerChain, list[RotationRecord]]:
    """The chain handing the app of ``keys[0]`` to ``keys[1]``, then ``keys[2]``, …"""
    chain = OwnerChain.genesis(keys[0].public_bytes())
    records = []
    for current, nxt in itertools.pairwise(keys):
        record = current.rotate(chain, nxt.public_bytes())
        chain = chain.extend(record)
        records.append(record)
    return chain, records
