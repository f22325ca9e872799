"""The configurations of the sharing runs a node takes part in, from its config and chain.

Genesis attempt ``a`` is the DKG among the configured genesis members on the
``a``-th genesis schedule; reshare attempt ``a`` after a chain state with a
pending certified change goes from that epoch's committee to the one the
change makes, on the ``a``-th slot of the reshare grid the change's outcome
names. Every member computes the same configuration from the same inputs, so
the run ids agree. Genesis configurations are cached (building one checks
every member's key signature), a bounded number of attempts.
"""

from __future__ import annotations

from typing import Protocol

from mpc.cert import RunKind
from mpc.dkg import Schedule, SharingConfig
from mpc.dkg.messages import Participant
from mpc.math import G2
from mpc.membership import ChainState


class RunSchedules(Protocol):
    """The part of ``NodeConfig`` the run configurations read."""

    @property
    def genesis(self) -> tuple[Participant, ...]: ...
    @property
    def threshold(self) -> int: ...
    @property
    def admission_policy_hash(self) -> bytes: ...

    def genesis_schedule(self, attempt: int) -> Schedule: ...
    def reshare_schedule(self, start: float, n: int, t: int, attempt: int) -> Schedule: ...


class SharingConfigs:
    """Builds (and, for genesis, caches) the ``SharingConfig`` of each attempt."""

    def __init__(self, config: RunSchedules, cached: int) -> None:
        self.config = config
        self.cached = cached
        """Genesis configurations kept (the highest attempts)."""
        self._genesis: dict[int, SharingConfig] = {}

    def genesis(self, attempt: int) -> SharingConfig:
        # Built once per attempt: constructing one checks every member's key signature.
        cfg = self._genesis.get(attempt)
        if cfg is None:
            cfg = self._genesis[attempt] = self.make_genesis(attempt)
            while len(self._genesis) > self.cached:
                del self._genesis[min(self._genesis)]
        return cfg

    def make_genesis(self, attempt: int) -> SharingConfig:
        return SharingConfig(
            kind=RunKind.DKG,
            epoch=0,
            attempt=attempt,
            dealers=self.config.genesis,
            recipients=self.config.genesis,
            threshold=self.config.threshold,
            schedule=self.config.genesis_schedule(attempt),
            admission_policy_hash=self.config.admission_policy_hash,
        )

    def reshare(self, st: ChainState, attempt: int) -> SharingConfig | None:
        """The configuration of reshare ``attempt`` after ``st`` (which has a pending change)."""
        if st.pending is None:
            return None
        outcome = st.pending.outcome
        new = st.apply(outcome.proposal.change)
        if new is None:  # pragma: no cover - extend() checked it
            return None
        sched = self.config.reshare_schedule(
            outcome.reshare_start, len(new.members), new.threshold, attempt
        )
        return SharingConfig(
            kind=RunKind.RESHARE,
            epoch=st.epoch + 1,
            attempt=attempt,
            dealers=st.committee.members,
            recipients=new.members,
            threshold=new.threshold,
            schedule=sched,
            admission_policy_hash=new.admission_policy_hash,
            previous_certificate_hash=st.head_hash,
            old_threshold=st.threshold,
            old_public_polynomial=tuple(public_polynomial(st)),
        )


def public_polynomial(st: ChainState) -> list[G2]:
    """The public polynomial ``st``'s certificate fixes (its commitments)."""
    return [G2.from_bytes(b) for b in st.certificate.public_polynomial]
