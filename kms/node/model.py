"""The node's vocabulary: its configuration, the events its core emits, what it restores.

Every layer around ``kms.node.core.NodeCore`` speaks these types: the core emits
the events, ``kms.node.persist`` maps the persistent ones to store operations and
builds ``Restored`` from a store, ``kms.node.driver`` orders a step's output, and
the trio service and the simulator consume the rest. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from mpc import hpke
from mpc.cert import IDENTITY_MPK, ZERO_HASH, EpochCertificate, RunKind
from mpc.codec import Message
from mpc.dkg import Schedule, SharingConfig, SharingSession
from mpc.dkg.messages import Participant
from mpc.errors import InvalidEncoding, LocalProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import ChainState, MembershipCertificate, WindowSchedule
from mpc.membership.messages import Change
from mpc.secret import RNG, SecretShare
from mpc.sig import SigningKey

CHAIN_RETENTION = 64
"""Epochs of chain links a node keeps (besides genesis), by default."""


def run_key_records(run: bytes) -> bytes:
    """The store run under which a sharing run's key seed is kept, so that it can be
    erased alone, when the run ends (or, for a recipient left without a share, once it
    recovered it or gave up), while the run's other records wait for the epoch."""
    return b"run-key/" + run


def polynomial_records(run: bytes) -> bytes:
    """The store run under which the polynomial this member dealt in a sharing run is
    kept: erased when the run ends, whatever else of the run is kept (in a reshare its
    constant term is this member's old share)."""
    return b"run-poly/" + run


Link = EpochCertificate | MembershipCertificate
GENESIS_ENDORSEMENTS_RUN = b"genesis-endorsements"
"""Run id of the genesis endorsements a node holds (kept across epochs, keyed by signer)."""


# --- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    """What every member must configure identically, plus this node's index."""

    index: ParticipantIndex
    genesis: tuple[Participant, ...]
    threshold: int
    genesis_start: float
    delta: float
    window_period: float = 60.0
    window_length: float = 5.0
    refresh_interval: float = 0.0
    admission_policy_hash: bytes = ZERO_HASH
    admission_policy: bytes = b""
    """The genesis node admission policy (its SHA-256 is ``admission_policy_hash``)."""
    chain_retention: int = CHAIN_RETENTION
    """Epochs of chain links kept besides genesis (a local setting, not agreed)."""
    genesis_mpk: bytes | None = None
    """A pinned genesis master public key: when set, the only genesis this node adopts
    (endorsements are then not needed). Unset: a genesis certificate from a peer needs
    ``threshold`` endorsements by genesis members."""

    def __post_init__(self) -> None:
        if self.window_length <= 0 or self.window_period <= 0:
            raise LocalProtocolError("window length and period must be positive")
        if self.chain_retention < 2:
            raise LocalProtocolError("keep at least the last two epochs of the chain")
        if self.genesis_mpk is not None:
            if self.genesis_mpk == IDENTITY_MPK:
                raise LocalProtocolError("the identity point is not a master public key")
            try:
                G2.from_bytes(self.genesis_mpk)
            except InvalidEncoding as exc:
                raise LocalProtocolError(f"genesis_mpk is not a G2 point: {exc}") from exc

    def genesis_schedule(self, attempt: int) -> Schedule:
        s = Schedule.default(
            self.genesis_start, len(self.genesis), self.threshold, delta=self.delta
        )
        return _nth_attempt(s, attempt)

    def reshare_schedule(self, start: float, n: int, t: int, attempt: int) -> Schedule:
        return _nth_attempt(Schedule.default(start, n, t, delta=self.delta), attempt)

    def window_schedule(self, window: int, reshare_delay: float) -> WindowSchedule:
        return WindowSchedule(
            start=self.genesis_start + window * self.window_period,
            window=self.window_length,
            delta=self.delta,
            sign_window=3 * self.delta,
            reshare_delay=reshare_delay,
        )


# --- checking operator changes ---------------------------------------------------


class ChangeRefused(LocalProtocolError):
    """This node will not propose or approve a change; ``reason`` is a stable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ChangeContext:
    """What a change is judged against: the verified chain and this node's clock."""

    state: ChainState
    chain: tuple[EpochCertificate | MembershipCertificate, ...]
    now: float
    admission_policy: bytes | None
    """The committee-certified node admission policy, when this node knows its bytes."""
    reshare_runs: Mapping[bytes, SharingConfig] = field(default_factory=dict)
    """The configurations of the reshare runs this node took part in, by run id: what
    evidence of a dealer's wrong constant term is judged against."""


ChangeCheck = Callable[[ChangeContext, Change], None]
"""Raises ``ChangeRefused`` for a change this node must not propose or approve."""


# --- events -------------------------------------------------------------------


@dataclass(frozen=True)
class StoreRecord:
    """Persist before sending: ``data`` under ``(run, key)``, sealed when ``secret``."""

    run: bytes
    key: str
    data: bytes = field(repr=False)
    secret: bool


@dataclass(frozen=True)
class EraseRecords:
    """Delete, and overwrite, every record stored under ``run``: after this nothing the
    run recorded (its key seed, deals, dealt polynomial or new share) is left."""

    run: bytes


@dataclass(frozen=True)
class EpochSwitched:
    """A new epoch is certified: store it (one transaction), then serve it."""

    epoch: int
    certificate: EpochCertificate
    share: SecretShare | None
    state: ChainState
    keep_runs: tuple[bytes, ...] = ()
    """Run records that must survive the switch (acknowledgements still in use); the
    records of every other run are of no further use once this event is stored."""


@dataclass(frozen=True)
class LinkCertified:
    """A membership certificate joined the chain: store it."""

    certificate: MembershipCertificate


@dataclass(frozen=True)
class ChainTrimmed:
    """Links before ``position`` (but genesis, at 0) are no longer kept: delete them."""

    position: int


@dataclass(frozen=True)
class ChainReplaced:
    """The chain after genesis is now ``links`` (a catch-up past missing links, or a
    switch to a higher fork): store it in place of the old one before the epoch switch
    that follows. Genesis itself is ``links[0]`` when it was replaced too."""

    links: tuple[Link, ...]


@dataclass(frozen=True)
class RetainedShareDeletable:
    epoch: int


@dataclass(frozen=True)
class MisbehaviourObserved:
    culprit: ParticipantIndex
    reason: str
    evidence: Message | None = None


@dataclass(frozen=True)
class DealerLeftOut:
    """A dealer left out of a sharing run's QUAL for a reason that is not its own doing
    as far as this node can tell (``DealerExcluded.attributable`` is false): it may be
    honest and not live (started late, restarted), or this node's view may be the one
    that is off. Nobody is blamed for it."""

    dealer: ParticipantIndex
    reason: str


@dataclass(frozen=True)
class InputRejected:
    peer: ParticipantIndex
    reason: str


@dataclass(frozen=True)
class ApprovalRefused:
    """A proposal the operator approved failed this node's checks: no approval is sent."""

    proposal_id: bytes
    reason: str
    detail: str


@dataclass(frozen=True)
class SignatureWithheld:
    """This member finalized a sharing run but did not sign its transcript, because it
    was not live through the run (``SharingSession.live``); ``reason`` says what it saw."""

    kind: RunKind
    epoch: int
    attempt: int
    reason: str


@dataclass(frozen=True)
class RunFailed:
    kind: RunKind | str
    """The ``RunKind`` of the sharing run, or ``"window"`` for a decision window."""
    epoch: int
    attempt: int
    reason: str


@dataclass(frozen=True)
class ShareHoldersBelowThreshold:
    """Emitted once per epoch: a grace period after the epoch became ready, this node knows
    fewer than ``threshold`` members that hold a share of it (own share and verified
    acknowledgements). If that is true, no key can be served and the master secret may be
    unrecoverable."""

    epoch: int
    known: tuple[ParticipantIndex, ...]
    threshold: int


@dataclass(frozen=True)
class ShareRefused:
    """A stored share does not match the chain's public share: it is not used."""

    epoch: int
    reason: str


NodeEvent = (
    StoreRecord
    | EraseRecords
    | EpochSwitched
    | LinkCertified
    | ChainTrimmed
    | ChainReplaced
    | RetainedShareDeletable
    | MisbehaviourObserved
    | DealerLeftOut
    | InputRejected
    | ApprovalRefused
    | RunFailed
    | SignatureWithheld
    | ShareHoldersBelowThreshold
    | ShareRefused
)


@dataclass(frozen=True)
class Restored:
    """What a node had on disk: its chain, its current share, retained shares and run records."""

    chain: tuple[Link, ...] = ()
    share: SecretShare | None = None
    retained: Mapping[int, SecretShare] = field(default_factory=dict)
    records: Callable[[bytes], Mapping[str, bytes]] = lambda run: {}
    admission_policy: bytes | None = None
    """The bytes of the last certified admission-policy change, kept apart from the chain
    (its link may be older than the epochs the node keeps)."""


@dataclass(frozen=True)
class NodeStatus:
    epoch: int | None
    threshold: int | None
    committee: tuple[ParticipantIndex, ...]
    mpk: bytes | None
    has_share: bool
    running: RunKind | None
    """The kind of the sharing run going on, if any."""
    pending: tuple[tuple[str, str, int], ...]
    """Pending proposals: (id hex, kind, approvals)."""
    retained: tuple[tuple[int, tuple[ParticipantIndex, ...]], ...]
    """Retained old shares: (epoch, indices whose acknowledgement is missing)."""
    last_refresh: float | None
    refused: tuple[tuple[str, str], ...] = ()
    """Approvals this node refused after checking the proposal: (id hex, reason)."""
    waiting: tuple[str, ...] = ()
    """Approved proposal ids not seen yet (checked and sent once they are)."""
    share_holders: tuple[ParticipantIndex, ...] = ()
    """Members known to hold a share of the current epoch (own share, acknowledgements)."""
    share_holders_below_threshold: bool = False
    """The grace period is over and fewer than ``threshold`` share holders are known."""
    share_error: str | None = None
    """Why a stored share was refused (it does not match the chain's public share)."""
    locked: str | None = None
    """The proposal id of the outcome this member signed in this epoch (its lock), if any."""
    phase: str = "restoring"
    """The node's ``kms.node.phase.NodePhase`` value."""


@dataclass(frozen=True)
class RunProgress:
    """The sharing run a node is in and its phase (``NodeCore.run_progress``)."""

    kind: RunKind
    epoch: int
    attempt: int
    phase: str
    """A ``mpc.dkg.session.Phase`` value."""


def _nth_attempt(first: Schedule, attempt: int) -> Schedule:
    """The schedule of ``attempt``: each attempt starts at the (rounded up) end of the one
    before, so from the second on they follow a grid of whole seconds (constant time)."""
    if attempt <= 0:
        return first
    second = first.next_attempt()
    step = second.next_attempt().start - second.start
    return dataclasses.replace(second, start=second.start + (attempt - 1) * step)


# --- injection points ------------------------------------------------------------


class SessionFactory(Protocol):
    """Builds the sharing session of one run (``NodeCore(session_factory=...)``).

    The default is ``SharingSession`` itself. The simulator passes a factory that
    records every session a node starts and, on a corrupt node, builds the
    adversary's session (``sim.nodes.session_factory``). The arguments are exactly
    those of ``SharingSession``: the run's configuration, this member's index and
    keys, its randomness, its share (in a reshare), the run's persisted records and
    since when the node has been live."""

    def __call__(
        self,
        config: SharingConfig,
        me: ParticipantIndex,
        identity_key: SigningKey,
        dkg_key: hpke.PrivateKey,
        *,
        rng: RNG,
        share: SecretShare | None,
        persisted: Mapping[str, bytes],
        live_since: float | None,
    ) -> SharingSession: ...


class NodeView(Protocol):
    """What every step of the core reads of the node (``NodeCore``): its index, its
    configuration and the verified state of its head. Each step's port adds its own."""

    @property
    def me(self) -> ParticipantIndex: ...
    @property
    def config(self) -> NodeConfig: ...
    @property
    def state(self) -> ChainState | None: ...
