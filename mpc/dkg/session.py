"""The sharing session: Joint-Feldman DKG and resharing as one sans-I/O machine.

Both protocols run the same four phases over ``mpc.broadcast``:

1. **deal**: each recipient first broadcasts a ``RunKey``, a fresh X25519 key
   for this run only, signed by its identity key; once the run keys are
   agreed (``key_end``), each dealer broadcasts one signed ``DealBundle``:
   Feldman commitments in G2 to a polynomial of degree ``t-1`` plus every
   recipient's share, HPKE-encrypted to that recipient's agreed run key (a
   recipient without one gets no share). In a DKG the constant
   term is random; in a reshare it is the dealer's own share ``s_i``, so the
   constant commitment must equal the dealer's certified public share ``PK_i``.
2. **respond**: each recipient checks its shares (one batched check) and
   broadcasts a ``ResponseBundle``: ok or complaint per delivered deal.
   A responder whose bundle equivocates counts as complaining about everyone.
3. **justify**: an accused dealer reveals the disputed shares in clear.
4. **finalize**: ``QUAL`` = dealers with one well-formed deal and no unanswered
   or failed complaint. DKG: share = Σ shares, public polynomial = Σ
   commitments. Reshare: the same with Lagrange coefficients over ``QUAL``
   (the master public key is unchanged). Members sign the epoch transcript
   with the new share; ``t`` signatures make the epoch certificate.

Contract (STYLE.md): ``receive``, ``advance_time``, ``messages_to_send``,
``events``, ``phase``. The shell must store every ``Persist`` event before
sending the messages produced in the same step; a restarted session given
those records resends the same bytes and never signs anew for a slot.

Tests and the simulator bend one member through the documented dealer-tamper
hook, ``SharingSession(..., tamper=DealerTamper)`` (see its section below).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mpc import hpke
from mpc.broadcast import (
    BroadcastConfig,
    BroadcastPayload,
    BroadcastRound,
    DigestRelay,
    EquivocationEvidence,
    Outbound,
    PullRequest,
    SlotOutcome,
    SlotStatus,
    session_id,
)
from mpc.cert import (
    ZERO_HASH,
    EpochCertificate,
    EpochTranscript,
    RunKind,
    combine_partials,
    hash_indices,
    hash_points,
    sign_partial,
    verify_cert_signature,
)
from mpc.codec import Message, MessageDecodeError
from mpc.dkg.evidence import Evidence, InvalidJustificationEvidence, ReshareConstantEvidence
from mpc.dkg.messages import (
    OMITTED_ENC,
    CertificatePartial,
    DealBundle,
    DealsAnswer,
    EncryptedShare,
    JustificationBundle,
    Participant,
    Response,
    ResponseBundle,
    RevealedShare,
    RunKey,
)
from mpc.dkg.schedule import Schedule
from mpc.errors import (
    DecryptionError,
    InvalidEncoding,
    InvalidShare,
    InvalidSignature,
    LocalProtocolError,
    RemoteProtocolError,
)
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2, R
from mpc.math.fields import lagrange_coefficients, scalar_from_bytes, scalar_to_bytes
from mpc.math.poly import Polynomial
from mpc.math.vss import (
    ShareClaim,
    batch_check,
    commit,
    public_share,
    share_matches,
    transcript_coefficients,
    verify_shares,
)
from mpc.memo import decoder
from mpc.secret import RNG, SecretScalar, SecretShare, random_scalar
from mpc.sig import SigningKey, VerifyKey

SHARE_INFO = b"quorum-kms/v1/dkg/share"
_ROUND_NAMES = ("key", "deal", "respond", "justify")

# Every member of a run decodes the same broadcast payloads: each distinct encoding is
# decoded once (``mpc.memo``: keyed by the full bytes; bytes that fail are decoded again).
_DECODE_RunKey = decoder(RunKey)
_DECODE_DealBundle = decoder(DealBundle, limit=256)


@dataclass(frozen=True, slots=True)
class _OpenedDeal:
    bundle: DealBundle
    points: tuple[G2, ...]
    checked: bool
    """Whether this member's share was opened and checked ahead; if not (not a recipient,
    or the run keys not yet fixed), the end of the deal phase does it."""
    share: int | None = None
    """If checked: this member's share if it opened and matched its commitments, else None."""


_DECODE_ResponseBundle = decoder(ResponseBundle)
_DECODE_JustificationBundle = decoder(JustificationBundle, limit=256)


class _KeysMismatch(MessageDecodeError):
    """A deal that seals or omits shares against the agreed run keys."""


STALL_FRACTION = 0.25
"""A gap longer than ``STALL_FRACTION · Δ`` between two consecutive times a member
observes (its ticks and receipts) means it was not live: stopped, paused, suspended
or stalled. See ``SharingSession.live``."""
POLYNOMIAL_RECORD = "polynomial"
"""The secret record holding the polynomial this member dealt; reused if it restarts
before its deal is out, and erased with the run key when the run ends."""
RUN_KEY_RECORD = "run-key-seed"
"""The secret record holding the seed of this member's run key. The node must erase
it when the run ends (done or failed): after that the run's deals open for nobody."""


class Phase(enum.Enum):
    WAITING = "waiting"
    DEALING = "dealing"
    RESPONDING = "responding"
    JUSTIFYING = "justifying"
    CERTIFYING = "certifying"
    DONE = "done"
    FAILED = "failed"


TERMINAL_PHASES = frozenset({Phase.DONE, Phase.FAILED})

# The one table of allowed transitions; docs/protocols/sharing.md is generated from it.
TRANSITIONS: dict[Phase, tuple[Phase, ...]] = {
    # Every non-terminal phase may end in FAILED: a local error fails the session.
    Phase.WAITING: (Phase.DEALING, Phase.FAILED),
    Phase.DEALING: (Phase.RESPONDING, Phase.FAILED),
    Phase.RESPONDING: (Phase.JUSTIFYING, Phase.FAILED),
    Phase.JUSTIFYING: (Phase.CERTIFYING, Phase.DONE, Phase.FAILED),
    Phase.CERTIFYING: (Phase.DONE, Phase.FAILED),
    Phase.DONE: (),
    Phase.FAILED: (),
}


# --- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class SharingConfig:
    """Everything the members of one run must agree on before it starts."""

    kind: RunKind
    """``RunKind.DKG`` or ``RunKind.RESHARE`` (the string values are accepted and converted)."""
    epoch: int
    attempt: int
    dealers: tuple[Participant, ...]
    recipients: tuple[Participant, ...]
    threshold: int
    """``t`` of the new sharing (degree ``t-1``)."""
    schedule: Schedule
    admission_policy_hash: bytes = ZERO_HASH
    previous_certificate_hash: bytes = ZERO_HASH
    old_threshold: int = 0
    """Reshare only: the dealers' threshold (how many qualified dealers are needed)."""
    old_public_polynomial: tuple[G2, ...] = ()
    """Reshare only: the certified public polynomial of the old epoch."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", RunKind(self.kind))
        except ValueError:
            raise LocalProtocolError("kind must be dkg or reshare") from None
        for group in (self.dealers, self.recipients):
            idx = [p.index for p in group]
            if idx != sorted(set(idx)) or not idx:
                raise LocalProtocolError(
                    "participants must be non-empty and sorted by distinct index"
                )
        both = {p.index: p for p in self.dealers}
        for p in self.recipients:
            if p.index in both and both[p.index] != p:
                raise LocalProtocolError(f"index {p.index} is bound to two different identities")
        if not 2 <= self.threshold <= len(self.recipients):
            raise LocalProtocolError("need 2 ≤ t ≤ n")
        if self.schedule.f != self.threshold - 1:
            raise LocalProtocolError("the broadcast must tolerate t-1 faulty recipients")
        if self.kind is RunKind.DKG:
            if [p.index for p in self.dealers] != [p.index for p in self.recipients]:
                raise LocalProtocolError("a DKG's dealers are its recipients")
        else:
            if not 2 <= self.old_threshold <= len(self.dealers):
                raise LocalProtocolError("reshare needs 2 ≤ old t ≤ old n")
            if len(self.old_public_polynomial) != self.old_threshold:
                raise LocalProtocolError("old public polynomial must have old-t coefficients")
        for p in (*self.dealers, *self.recipients):
            p.check()  # each DKG key is vouched for by its identity

    @property
    def dealer_indices(self) -> list[ParticipantIndex]:
        return [ParticipantIndex(p.index) for p in self.dealers]

    @property
    def recipient_indices(self) -> list[ParticipantIndex]:
        return [ParticipantIndex(p.index) for p in self.recipients]

    @property
    def mpk(self) -> G2 | None:
        return self.old_public_polynomial[0] if self.old_public_polynomial else None

    def run_id(self) -> bytes:
        parts = [
            self.kind.value.encode(),
            self.epoch.to_bytes(8, "big"),
            self.attempt.to_bytes(8, "big"),
            self.threshold.to_bytes(4, "big"),
            self.old_threshold.to_bytes(4, "big"),
            b"".join(p.encode() for p in self.dealers),
            b"".join(p.encode() for p in self.recipients),
            hash_points([g.to_bytes() for g in self.old_public_polynomial]),
            self.admission_policy_hash,
            self.previous_certificate_hash,
            self.schedule.encode(),
        ]
        return session_id(*parts)

    def old_public_share(self, index: ParticipantIndex) -> G2:
        return public_share(list(self.old_public_polynomial), int(index))


# --- events -------------------------------------------------------------------


@dataclass(frozen=True)
class Persist:
    """Store ``data`` under ``key`` (sealed when ``secret``) before sending anything."""

    key: str
    data: bytes = field(repr=False)
    secret: bool = False


@dataclass(frozen=True)
class DealerExcluded:
    dealer: ParticipantIndex
    reason: str
    evidence: Evidence | None = None
    attributable: bool = True
    """Whether the exclusion is the dealer's own doing as far as this member can tell:
    ``False`` when an honest dealer could have earned it by not being live (a deal that
    does not match the agreed run keys, judged by a member that was up through the key
    round), or when this member judged from a view that need not be the agreed one (it
    was not live; sharing.md, "Live members"). Evidence, a signed proof, always counts."""


@dataclass(frozen=True)
class ResponderEquivocated:
    responder: ParticipantIndex
    evidence: EquivocationEvidence


@dataclass(frozen=True)
class SharingResult:
    qual: tuple[ParticipantIndex, ...]
    share: SecretShare | None
    public_polynomial: tuple[G2, ...]
    public_shares: Mapping[ParticipantIndex, G2]
    transcript: EpochTranscript

    @property
    def mpk(self) -> G2:
        return self.public_polynomial[0]


@dataclass(frozen=True)
class SharingFinalized:
    result: SharingResult


@dataclass(frozen=True)
class CertificateCompleted:
    certificate: EpochCertificate


@dataclass(frozen=True)
class DealingCompleted:
    """A dealer that is not a recipient has done its part."""


@dataclass(frozen=True)
class SharingFailed:
    reason: str


@dataclass(frozen=True)
class SigningWithheld:
    """This member finalized but was not live through the run, so it does not sign.

    It keeps (and persists) the share it computed: if a certificate over the same
    transcript arrives, from the others' partials or later through the chain, the
    share matches it."""

    reason: str


Event = (
    Persist
    | DealerExcluded
    | ResponderEquivocated
    | SharingFinalized
    | CertificateCompleted
    | DealingCompleted
    | SharingFailed
    | SigningWithheld
)


# --- the dealer-tamper hook -----------------------------------------------------

# The dealer-tamper hook: the one documented way to bend a sharing session.
#
# Tests and the simulator need a member that deals wrong shares, equivocates,
# complains falsely or justifies wrongly, while everything else about it stays
# the real ``SharingSession``. They pass ``SharingSession(..., tamper=...)`` an
# object with the methods of ``DealerTamper``. Each method gets what it needs as
# arguments and returns a plain value; the session itself still builds the
# polynomials, seals the shares, signs and sends. ``tamper=None`` (the default)
# is the honest member, and so is a tamper whose every answer is the honest one
# (``HonestDealer``): the session then takes exactly the honest path, with the
# same random draws in the same order.
#
# What a tampered member does differently (see ``SharingSession._deal`` and
# ``_broadcast_own``):
#
# - a deal with a nonzero share offset, constant offset or equivocation is built
#   from a fresh polynomial (a reshare's constant term plus ``constant_offset``;
#   a DKG's constant term is then ``constant_offset`` itself), each recipient's
#   share off by its ``share_offset``. Its polynomial is not persisted, and a
#   restarted member deals anew instead of resending its stored deal. An
#   equivocated deal is two such deals from two polynomials, not persisted, the
#   first sent to the first half of the other members of the deal round's
#   audience, the second to the rest, each directly (not through the round);
# - a response is replaced by what ``response`` returns; a pair is an equivocated
#   response, sent like an equivocated deal and not persisted;
# - a justification is replaced by what ``justification`` returns; ``None``
#   withholds it.


class DealerTamper(Protocol):
    """How a corrupt member deviates in a sharing run; every method may answer honestly."""

    def share_offset(self, config: SharingConfig, recipient: int) -> int:
        """Added (mod r) to the share dealt to ``recipient``; 0 deals the correct share."""
        ...

    def constant_offset(self, config: SharingConfig) -> int:
        """Added (mod r) to the constant term of the dealt polynomial; 0 keeps it."""
        ...

    def equivocates_deal(self, config: SharingConfig) -> bool:
        """Whether to sign two different deals, one for each half of the audience."""
        ...

    def response(
        self, config: SharingConfig, bundle: ResponseBundle
    ) -> ResponseBundle | tuple[ResponseBundle, ResponseBundle]:
        """The response to send instead of the honest ``bundle``; a pair equivocates
        (the first to the first half of the audience, the second to the rest)."""
        ...

    def justification(
        self, config: SharingConfig, bundle: JustificationBundle
    ) -> JustificationBundle | None:
        """The justification to send instead of the honest ``bundle``; ``None`` withholds it."""
        ...


class HonestDealer:
    """A ``DealerTamper`` that answers honestly everywhere; subclass it to deviate in one place."""

    def share_offset(self, config: SharingConfig, recipient: int) -> int:
        return 0

    def constant_offset(self, config: SharingConfig) -> int:
        return 0

    def equivocates_deal(self, config: SharingConfig) -> bool:
        return False

    def response(
        self, config: SharingConfig, bundle: ResponseBundle
    ) -> ResponseBundle | tuple[ResponseBundle, ResponseBundle]:
        return bundle

    def justification(
        self, config: SharingConfig, bundle: JustificationBundle
    ) -> JustificationBundle | None:
        return bundle


# --- the session ----------------------------------------------------------------


class SharingSession:
    """One member's view of one DKG or reshare attempt."""

    def __init__(
        self,
        config: SharingConfig,
        me: ParticipantIndex,
        identity_key: SigningKey,
        dkg_key: hpke.PrivateKey,
        *,
        rng: RNG,
        share: SecretShare | None = None,
        persisted: Mapping[str, bytes] | None = None,
        live_since: float | None = None,
        tamper: DealerTamper | None = None,
    ) -> None:
        """``live_since``: the time since which the caller (the node core) has seen
        its own ticks without a stall; by default, the first time this session sees.
        A session built by a restarted process passes the restart time.

        ``tamper``: how a corrupt member deviates, for tests and the simulator only
        (``DealerTamper``); ``None`` is the honest member."""
        self.config = config
        sc = config.schedule  # frozen: its deadlines, read on every tick, computed once
        self._deadlines = (
            sc.start,
            sc.key_end,
            sc.deal_end,
            sc.respond_end,
            sc.justify_end,
            sc.certify_end,
        )
        self._tamper = tamper
        self.me = me
        self._key = identity_key
        # ``dkg_key`` (the member's long-lived key) is checked but protects no share:
        # shares go to a fresh key per run (``RunKey``).
        self._rng = rng
        self._persisted = dict(persisted or {})
        self.is_dealer = me in config.dealer_indices
        self.is_recipient = me in config.recipient_indices
        if not (self.is_dealer or self.is_recipient):
            raise LocalProtocolError("this node takes no part in the run")
        mine = next(p for p in (*config.dealers, *config.recipients) if p.index == me)
        if mine.identity != identity_key.verify_key().to_bytes():
            raise LocalProtocolError("identity key does not match this index")
        if self.is_recipient and mine.dkg_key != dkg_key.public_bytes():
            raise LocalProtocolError("DKG key does not match this index")
        if (
            config.kind is RunKind.RESHARE
            and self.is_dealer
            and share is None
            and self.is_recipient
        ):
            # A member that missed the last reshare has no share to deal: it takes
            # part as a recipient only, and its empty dealer slot leaves it out of QUAL.
            self.is_dealer = False
        if config.kind is RunKind.RESHARE and self.is_dealer:
            if share is None or share.index != me:
                raise LocalProtocolError("a reshare dealer needs its own old share")
            if share.value.value * G2.generator() != config.old_public_share(me):
                raise LocalProtocolError("this node's old share does not match its public share")
        self._old_share = share
        self._run = config.run_id()
        sched = config.schedule
        identities = {
            ParticipantIndex(p.index): p.verify_key() for p in (*config.dealers, *config.recipients)
        }
        dealers = {i: identities[i] for i in config.dealer_indices}
        recipients = {i: identities[i] for i in config.recipient_indices}
        listeners = frozenset(set(dealers) - set(recipients))
        self._identities = identities

        def rnd(
            name: bytes, senders: Mapping[ParticipantIndex, VerifyKey], cutoff: float
        ) -> BroadcastRound:
            cfg = BroadcastConfig(
                session=session_id(self._run, name),
                senders=senders,
                relayers=recipients,
                me=me,
                f=sched.f,
                delta=sched.delta,
                cutoff=cutoff,
                listeners=listeners,
            )
            return BroadcastRound(cfg, identity_key)

        self._key_round = rnd(b"key", recipients, sched.key_cutoff)
        self._deal_round = rnd(b"deal", dealers, sched.deal_cutoff)
        self._respond_round = rnd(b"respond", recipients, sched.respond_cutoff)
        self._justify_round = rnd(b"justify", dealers, sched.justify_cutoff)
        self._rounds = {r.config.session: r for r in self._all_rounds()}
        by_name = dict(zip(_ROUND_NAMES, self._all_rounds(), strict=True))
        for key, raw in sorted(self._persisted.items()):
            if key.startswith("seen/"):
                by_name[key.split("/")[1]].restore_accepted(BroadcastPayload.decode(raw))
        self._phase = Phase.WAITING
        self._now = float("-inf")
        self._live_from: float | None = live_since
        self._last_seen: float | None = None
        self._max_gap = STALL_FRACTION * sched.delta
        self._last_stall: tuple[float, float] | None = None
        """When this session last saw a stall, and how long (``(now, gap)``)."""
        self.withheld: str | None = None
        """Why this member did not sign the run's transcript, if it did not."""
        self._outbox: list[Outbound] = []
        self._events: list[Event] = []
        self._poly: Polynomial | None = None
        seed = self._persisted.get(RUN_KEY_RECORD)
        self._run_key: hpke.PrivateKey | None = (
            hpke.derive_key_pair(seed)[0] if seed is not None and self.is_recipient else None
        )
        # Filled as phases end.
        self._run_keys: dict[ParticipantIndex, bytes] = {}
        self._keys_fixed = False
        self._deals: dict[ParticipantIndex, tuple[BroadcastPayload, DealBundle, list[G2]]] = {}
        self._opened: dict[bytes, _OpenedDeal] = {}
        """Deals already decoded and, for a recipient, its own share opened and checked, by
        payload bytes: done as each deal is accepted, so the end of the deal phase does not
        do the work of every deal at one instant (see ``_open_deal``)."""
        self._my_shares: dict[ParticipantIndex, int] = {}
        self._complaints: dict[ParticipantIndex, set[ParticipantIndex]] = {}
        self._excluded: dict[ParticipantIndex, DealerExcluded] = {}
        self._result: SharingResult | None = None
        self._cert_partials: dict[ParticipantIndex, G1] = {}
        self._early_partials: dict[ParticipantIndex, CertificatePartial] = {}
        self.certificate: EpochCertificate | None = None
        self.failure: str | None = None

    # --- the contract ---------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def run_id(self) -> bytes:
        return self._run

    def session_ids(self) -> frozenset[bytes]:
        """The broadcast session ids this run's messages carry."""
        return frozenset(self._rounds)

    @property
    def result(self) -> SharingResult | None:
        return self._result

    def certified_deals(self) -> DealsAnswer | None:
        """Once finalized: ``QUAL``, its dealers' signed deals and justifications as this
        member received them (public; what a member without its share recovers it from)."""
        if self._result is None:
            return None
        qual = self._result.qual
        justs = self._justify_round.outcome()
        return DealsAnswer(
            self._run,
            tuple(int(d) for d in qual),
            tuple(self._deals[d][0] for d in qual),
            tuple(
                BroadcastPayload(o.header, o.payload)
                for d, o in sorted(justs.items())
                if d in qual
                and o.status is SlotStatus.DELIVERED
                and o.header is not None
                and o.payload is not None
            ),
        )

    def messages_to_send(self) -> list[Outbound]:
        self._log_accepted()
        for r in self._rounds.values():
            self._outbox.extend(r.messages_to_send())
        out, self._outbox = self._outbox, []
        return out

    def _all_rounds(self) -> tuple[BroadcastRound, ...]:
        return (self._key_round, self._deal_round, self._respond_round, self._justify_round)

    def _log_accepted(self) -> None:
        """What this member heard is persisted too, so a restart keeps its view."""
        if not (
            self._key_round.has_accepted()
            or self._deal_round.has_accepted()
            or self._respond_round.has_accepted()
            or self._justify_round.has_accepted()
        ):
            return  # the common case, checked at every step of the node
        for name, r in zip(_ROUND_NAMES, self._all_rounds(), strict=True):
            if not r.has_accepted():
                continue
            for m in r.take_accepted():
                key = f"seen/{name}/{m.header.sender}/{m.header.digest.hex()}"
                self._events.append(Persist(key, m.encode()))
                if r is self._deal_round:
                    self._open_deal(ParticipantIndex(m.header.sender), m.payload)

    def events(self) -> list[Event]:
        self._log_accepted()
        out, self._events = self._events, []
        return out

    def start(self, now: float) -> None:
        self.advance_time(now)

    def receive(self, peer: ParticipantIndex, message: Message, now: float) -> None:
        """Handle a message from authenticated member ``peer``.

        Raises ``RemoteProtocolError`` naming ``peer`` for invalid input; the
        session's state is then unchanged. Input after the run is over is ignored.
        """
        if peer not in self._identities:
            raise RemoteProtocolError("message from outside the run", [peer])
        self.advance_time(now)
        if self._phase in TERMINAL_PHASES:
            return
        if isinstance(message, BroadcastPayload | DigestRelay):
            rnd = self._rounds.get(message.header.session)
        elif isinstance(message, PullRequest):
            rnd = self._rounds.get(message.session)
        elif isinstance(message, CertificatePartial):
            self._receive_partial(peer, message)
            return
        else:
            raise RemoteProtocolError(f"unexpected message {type(message).__name__}", [peer])
        if rnd is None:
            raise RemoteProtocolError("message for another run or phase", [peer])
        rnd.receive(peer, message, now)

    @property
    def live(self) -> bool:
        """Whether this member has been live since the run began: the process that
        runs this session saw the schedule's start, and no two consecutive times it
        observed since then are more than ``STALL_FRACTION · Δ`` apart.

        A member that is not live may have missed messages or relayed them late
        (a restart, a pause, a suspended VM, a stalled event loop), so its view of
        the broadcasts need not be the one the live members agree on: it never signs
        a transcript built from that view."""
        return self._live_from is not None and self._live_from <= self.config.schedule.start

    def _not_live_reason(self) -> str:
        """Why ``live`` is false, with what this session saw (for the operator's log)."""
        start = self.config.schedule.start
        since = "never" if self._live_from is None else f"only since {self._live_from:.3f}"
        reason = (
            "not live through the run (restarted, paused or stalled):"
            f" live {since}, the run started at {start:.3f}"
        )
        stall = self._last_stall
        if stall is not None and stall[0] > start:
            return (
                f"{reason}; {stall[1]:.3f} s between two of its steps at {stall[0]:.3f},"
                f" more than {self._max_gap:.3f} s (a pause, CPU starvation or a clock step)"
            )
        return f"{reason}; no gap seen in the run: it restarted or started after the run began"

    def _observe(self, now: float) -> None:
        if self._last_seen is None:
            if self._live_from is None or self._live_from > now:
                self._live_from = now
        elif now - self._last_seen > self._max_gap:
            self._live_from = now  # a stall: live again only from here on
            self._last_stall = (now, now - self._last_seen)
        if self._last_seen is None or now > self._last_seen:
            self._last_seen = now

    def advance_time(self, now: float) -> None:
        self._observe(now)
        if now < self._now:
            return  # time never goes backwards for this machine
        self._now = now
        for r in self._rounds.values():
            r.advance_time(now)
        start, key_end, deal_end, respond_end, justify_end, certify_end = self._deadlines
        try:
            if self._phase is Phase.WAITING and now >= start:
                self._enter(Phase.DEALING)
                self._announce_key()
            if self._phase is Phase.DEALING and now >= key_end and not self._keys_fixed:
                self._after_keys()
                self._deal()
            if self._phase is Phase.DEALING and now >= deal_end:
                self._after_deals()
            if self._phase is Phase.RESPONDING and now >= respond_end:
                self._after_responses()
            if self._phase is Phase.JUSTIFYING and now >= justify_end:
                self._finalize()
            if self._phase is Phase.CERTIFYING:
                self._try_certify()
            if self._phase is Phase.CERTIFYING and now >= certify_end:
                self._fail("too few certificate signatures by the deadline")
        except (LocalProtocolError, AssertionError):
            self._enter(Phase.FAILED)
            self.failure = "local error"
            raise

    # --- phase 1: run keys, then deal ------------------------------------------------

    def _announce_key(self) -> None:
        """A recipient broadcasts a fresh X25519 key for this run, signed by its identity."""
        if not self.is_recipient:
            return
        saved = self._persisted.get("run-key")
        if saved is not None:
            # Sent before a restart: resend those bytes. If the key's seed is gone
            # (erased), this member simply cannot open its shares in this run.
            self._key_round.send(BroadcastPayload.decode(saved), self._now)
            return
        seed = self._persisted.get(RUN_KEY_RECORD)
        if seed is None:
            seed = self._rng(32)
            self._events.append(Persist(RUN_KEY_RECORD, seed, secret=True))
        self._run_key, public = hpke.derive_key_pair(seed)
        announcement = RunKey.create(self._run, int(self.me), public, self._key)
        self._broadcast_own(self._key_round, "run-key", announcement)

    def _after_keys(self) -> None:
        """Fix every recipient's run key from the key round's outcome: the same at every
        honest member. A missing, equivocated or invalid announcement gives no key."""
        self._keys_fixed = True
        for j, outcome in sorted(self._key_round.outcome().items()):
            if outcome.status is not SlotStatus.DELIVERED:
                continue
            try:
                rk = _DECODE_RunKey(outcome.payload or b"")
                if rk.run != self._run or rk.index != j:
                    raise MessageDecodeError("run key for another run or member")
                rk.verify(self._identities[j])
                # A small-order point would make every dealer's encryption fail.
                hpke.seal(rk.key, b"", b"", b"", rng=lambda n: b"\x01" * n)
            except (InvalidEncoding, InvalidSignature):
                continue
            self._run_keys[j] = rk.key

    def _seal_share(self, recipient: ParticipantIndex, aad: bytes, value: int) -> EncryptedShare:
        """``f_i(recipient)`` sealed to the recipient's agreed run key; omitted without one."""
        key = self._run_keys.get(recipient)
        if key is None:
            return EncryptedShare(int(recipient), OMITTED_ENC, bytes(48))
        info = self._share_info(self.me, recipient)
        enc, ct = hpke.seal(key, info, aad, scalar_to_bytes(value), rng=self._rng)
        return EncryptedShare(int(recipient), enc, ct)

    def _deal(self) -> None:
        if not self.is_dealer:
            return
        if self._tamper is not None and self._deal_tampered(self._tamper):
            return
        saved = self._persisted.get("deal")
        if saved is not None:
            payload = BroadcastPayload.decode(saved)
            self._deal_round.send(payload, self._now)
            return
        t = self.config.threshold
        constant = self._old_share.value.value if self._old_share else None
        reuse = POLYNOMIAL_RECORD in self._persisted
        if reuse:
            # A crash after the polynomial was stored but before the deal was: the deal
            # was never sent, so deal the stored polynomial (a new one would be refused).
            poly = self._my_polynomial()
            if len(poly.coefficients) != t or (
                constant is not None and poly.coefficients[0] != constant
            ):
                raise LocalProtocolError("the stored polynomial does not fit this run")
        else:
            poly = Polynomial.random(t - 1, lambda: random_scalar(self._rng), constant=constant)
        self._poly = poly
        commitments = tuple(c.to_bytes() for c in commit(poly))
        shares = []
        aad = DealBundle(int(self.me), commitments, ()).commitments_hash()
        for p in self.config.recipients:
            shares.append(self._seal_share(ParticipantIndex(p.index), aad, poly(p.index)))
        bundle = DealBundle(int(self.me), commitments, tuple(shares))
        payload = self._deal_round.make_payload(bundle.encode())
        if not reuse:
            self._events.append(
                Persist(
                    POLYNOMIAL_RECORD,
                    b"".join(scalar_to_bytes(c) for c in poly.coefficients),
                    secret=True,
                )
            )
        self._events.append(Persist("deal", payload.encode()))
        self._deal_round.send(payload, self._now)

    def _deal_tampered(self, tamper: DealerTamper) -> bool:
        """Deal as ``tamper`` says (``DealerTamper``); ``False`` if it says deal honestly."""
        cfg = self.config
        offsets = {p.index: tamper.share_offset(cfg, p.index) % R for p in cfg.recipients}
        equivocate = tamper.equivocates_deal(cfg)
        shift = tamper.constant_offset(cfg) % R
        if not any(offsets.values()) and not equivocate and not shift:
            return False
        constant = self._old_share.value.value if self._old_share else None
        if shift:
            constant = ((constant or 0) + shift) % R

        def bundle(poly: Polynomial) -> BroadcastPayload:
            commitments = tuple(c.to_bytes() for c in commit(poly))
            aad = DealBundle(int(self.me), commitments, ()).commitments_hash()
            shares = tuple(
                self._seal_share(
                    ParticipantIndex(p.index), aad, (poly(p.index) + offsets[p.index]) % R
                )
                for p in cfg.recipients
            )
            return self._deal_round.make_payload(
                DealBundle(int(self.me), commitments, shares).encode()
            )

        t = cfg.threshold
        self._poly = Polynomial.random(t - 1, lambda: random_scalar(self._rng), constant=constant)
        first = bundle(self._poly)
        if not equivocate:
            self._events.append(Persist("deal", first.encode()))
            self._deal_round.send(first, self._now)
            return True
        other = Polynomial.random(t - 1, lambda: random_scalar(self._rng), constant=constant)
        self._send_split(self._deal_round, first, bundle(other))
        return True

    def _send_split(
        self, rnd: BroadcastRound, first: BroadcastPayload, second: BroadcastPayload
    ) -> None:
        """Equivocate (tampered members only): ``first`` directly to the first half of the
        other members of the round's audience, ``second`` to the rest."""
        targets = [j for j in rnd.config.audience() if j != self.me]
        half = len(targets) // 2
        for j in targets[:half]:
            self._outbox.append(Outbound(j, first))
        for j in targets[half:]:
            self._outbox.append(Outbound(j, second))

    def _share_info(self, dealer: ParticipantIndex, recipient: ParticipantIndex) -> bytes:
        return (
            SHARE_INFO
            + self._run
            + int(dealer).to_bytes(4, "big")
            + int(recipient).to_bytes(4, "big")
        )

    # --- phase 2: respond ----------------------------------------------------------

    def _exclude(
        self,
        dealer: ParticipantIndex,
        reason: str,
        evidence: Evidence | None = None,
        *,
        view_of_keys: bool = False,
    ) -> None:
        """Leave ``dealer`` out of QUAL. ``view_of_keys``: its deal does not match the
        agreed run keys, which an honest dealer that missed the key round also deals."""
        if dealer not in self._excluded:
            attributable = evidence is not None or (self.live and not view_of_keys)
            ev = DealerExcluded(dealer, reason, evidence, attributable)
            self._excluded[dealer] = ev
            self._events.append(ev)

    def _check_deal(self, dealer: ParticipantIndex, outcome: SlotOutcome) -> None:
        """Validate one deal's public structure; the same verdict at every honest member."""
        if outcome.status is SlotStatus.MISSING:
            self._exclude(dealer, "no deal")
            return
        if outcome.status is SlotStatus.EQUIVOCATED:
            self._exclude(dealer, "equivocated deal", outcome.evidence)
            return
        payload = BroadcastPayload(outcome.header, outcome.payload)  # type: ignore[arg-type]
        opened = self._opened.get(payload.payload)
        try:
            bundle = opened.bundle if opened is not None else _DECODE_DealBundle(payload.payload)
            if bundle.dealer != dealer:
                raise MessageDecodeError("deal names another dealer")
            if len(bundle.commitments) != self.config.threshold:
                raise MessageDecodeError("wrong number of commitments")
            if [s.recipient for s in bundle.shares] != [
                int(i) for i in self.config.recipient_indices
            ]:
                raise MessageDecodeError("shares are not exactly for the recipients")
            listener = dealer not in self.config.recipient_indices
            for share in bundle.shares:
                keyed = ParticipantIndex(share.recipient) in self._run_keys
                if keyed and share.enc == OMITTED_ENC:
                    raise _KeysMismatch(
                        f"share for {share.recipient} omitted, against the agreed run keys"
                    )
                if not keyed and share.enc != OMITTED_ENC and not listener:
                    # A leaving dealer only listens to the key round, so it may hold a key
                    # that a faulty recipient handed to it alone (broadcast.md, Listeners):
                    # a share sealed to that key is no fault. A relayer holds the agreed
                    # keys exactly.
                    raise _KeysMismatch(
                        f"share for {share.recipient} sealed, against the agreed run keys"
                    )
            if opened is not None:
                points = list(opened.points)
            else:
                points = [G2.from_bytes(c) for c in bundle.commitments]
        except _KeysMismatch as exc:
            self._exclude(dealer, f"malformed deal: {exc}", view_of_keys=True)
            return
        except InvalidEncoding as exc:
            self._exclude(dealer, f"malformed deal: {exc}")
            return
        if self.config.kind is RunKind.RESHARE and points[0] != self.config.old_public_share(
            dealer
        ):
            self._exclude(
                dealer,
                "constant term is not the dealer's public share",
                ReshareConstantEvidence(self._run, payload),
            )
            return
        self._deals[dealer] = (payload, bundle, points)

    def _open_deal(self, dealer: ParticipantIndex, payload: bytes) -> None:
        """As soon as the deal round accepts ``dealer``'s deal: decode it and its
        commitments, and (a recipient with the agreed run key) open this member's share and
        check it against the commitments, alone. The end of the deal phase then only reads
        the results: every member ends the phase at the same instant, and doing all the
        deals' work there (n - 1 deals of t commitments) is a step long enough, with many
        members on few CPUs, to count as a stall (``live``). The verdicts are the ones the
        batched check at the end gives (a share either matches its commitments or not);
        what is not done here (a restart, a deal that does not decode) is done there."""
        if self._phase is not Phase.DEALING or payload in self._opened:
            return
        if len(self._opened) >= 2 * len(self.config.dealer_indices):
            return  # at most two accepted deals per dealer slot; never more work
        try:
            bundle = _DECODE_DealBundle(payload)
            if bundle.dealer != dealer or len(bundle.commitments) != self.config.threshold:
                return
            points = tuple(G2.from_bytes(c) for c in bundle.commitments)
        except InvalidEncoding:
            return
        checked = False
        share: int | None = None
        key = self._run_key
        if (
            self.is_recipient
            and self._keys_fixed
            and key is not None
            and self._run_keys.get(self.me) == key.public_bytes()
        ):
            enc = next((s for s in bundle.shares if s.recipient == self.me), None)
            if enc is not None:
                checked = True
                value = self._open_share(dealer, bundle, enc, key)
                if value is not None and share_matches(points, int(self.me), value):
                    share = value
        self._opened[payload] = _OpenedDeal(bundle, points, checked, share)

    def _open_share(
        self,
        dealer: ParticipantIndex,
        bundle: DealBundle,
        enc: EncryptedShare,
        key: hpke.PrivateKey,
    ) -> int | None:
        """This member's share of ``dealer``'s deal, or None if it does not open."""
        try:
            pt = hpke.open(
                enc.enc,
                key,
                self._share_info(dealer, self.me),
                bundle.commitments_hash(),
                enc.ciphertext,
            )
            return scalar_from_bytes(pt)
        except (DecryptionError, InvalidEncoding):
            return None

    def _after_deals(self) -> None:
        try:
            self._end_deal_phase()
        finally:
            self._opened.clear()

    def _end_deal_phase(self) -> None:
        for dealer, outcome in self._deal_round.outcome().items():
            self._check_deal(dealer, outcome)
        if not self.is_recipient:
            self._enter(Phase.RESPONDING)
            return
        key = self._run_key
        if key is None or self._run_keys.get(self.me) != key.public_bytes():
            # No agreed run key (or its seed is gone): this member was dealt no share
            # it can open, so it complains about nothing and ends this run without one.
            self._enter(Phase.RESPONDING)
            return
        claims: list[ShareClaim] = []
        complaints: set[ParticipantIndex] = set()
        for dealer, (payload, bundle, points) in sorted(self._deals.items()):
            opened = self._opened.get(payload.payload)
            if opened is not None and opened.checked:
                if opened.share is None:
                    complaints.add(dealer)  # it did not open, or did not match
                else:
                    self._my_shares[dealer] = opened.share
                continue
            enc = next(s for s in bundle.shares if s.recipient == self.me)
            value = self._open_share(dealer, bundle, enc, key)
            if value is None:
                complaints.add(dealer)
                continue
            claims.append(ShareClaim(dealer, self.me, tuple(points), value))
        try:
            verify_shares(claims)
        except InvalidShare as exc:
            complaints |= set(exc.culprits)
        for c in claims:
            if c.dealer not in complaints:
                self._my_shares[c.dealer] = c.share
        responses = tuple(Response(int(d), d in complaints) for d in sorted(self._deals))
        self._broadcast_own(
            self._respond_round, "response", ResponseBundle(int(self.me), responses)
        )
        self._enter(Phase.RESPONDING)

    def _broadcast_own(self, rnd: BroadcastRound, key: str, message: Message) -> None:
        if self._tamper is not None and isinstance(message, ResponseBundle):
            answer = self._tamper.response(self.config, message)
            if isinstance(answer, tuple):
                fine, blame = answer
                self._send_split(
                    rnd, rnd.make_payload(fine.encode()), rnd.make_payload(blame.encode())
                )
                return
            message = answer
        if self._tamper is not None and isinstance(message, JustificationBundle):
            revealed = self._tamper.justification(self.config, message)
            if revealed is None:
                return
            message = revealed
        saved = self._persisted.get(key)
        if saved is not None:
            payload = BroadcastPayload.decode(saved)  # a restart resends the same bytes
        else:
            payload = rnd.make_payload(message.encode())
            self._events.append(Persist(key, payload.encode()))
        rnd.send(payload, self._now)

    # --- phase 3: justify ----------------------------------------------------------

    def _after_responses(self) -> None:
        valid = sorted(self._deals)
        # After a restart our own deal may be missing from our view of the deal
        # round, but we signed and sent it (it is persisted): complaints against
        # it are real and must be answered.
        own_deal = self.is_dealer and "deal" in self._persisted
        if own_deal and self.me not in valid:
            valid = sorted([*valid, self.me])
        for responder, outcome in self._respond_round.outcome().items():
            if outcome.status is SlotStatus.MISSING or responder not in self._run_keys:
                # A responder without an agreed run key was dealt no share: there is
                # nothing of it to reveal, so its complaints do not count.
                continue
            if outcome.status is SlotStatus.EQUIVOCATED:
                if outcome.evidence is not None:
                    self._events.append(ResponderEquivocated(responder, outcome.evidence))
                accused = valid
            else:
                try:
                    bundle = _DECODE_ResponseBundle(outcome.payload or b"")
                    if bundle.responder != responder:
                        raise MessageDecodeError("response names another responder")
                except MessageDecodeError:
                    continue  # a signed but malformed response carries no complaint
                accused = [ParticipantIndex(r.dealer) for r in bundle.responses if r.complaint]
            for d in accused:
                if d in valid:
                    self._complaints.setdefault(d, set()).add(responder)
        mine = self._complaints.get(self.me)
        if "justification" in self._persisted:
            # Signed before a restart: resend exactly those bytes, whatever we heard since.
            self._justify_round.send(
                BroadcastPayload.decode(self._persisted["justification"]), self._now
            )
        elif self.is_dealer and mine and (self.me in self._deals or own_deal):
            poly = self._my_polynomial()
            shares = tuple(
                RevealedShare(int(j), scalar_to_bytes(poly(int(j)))) for j in sorted(mine)
            )
            self._broadcast_own(
                self._justify_round, "justification", JustificationBundle(int(self.me), shares)
            )
        self._enter(Phase.JUSTIFYING)

    def _my_polynomial(self) -> Polynomial:
        if self._poly is None:
            raw = self._persisted.get(POLYNOMIAL_RECORD)
            if raw is None:
                raise LocalProtocolError("dealt polynomial lost: cannot justify")
            self._poly = Polynomial(
                [int.from_bytes(raw[k : k + 32], "big") for k in range(0, len(raw), 32)]
            )
        return self._poly

    # --- phase 4: finalize ---------------------------------------------------------

    def _after_justifications(self) -> None:
        outcomes = self._justify_round.outcome()
        public_claims: list[tuple[ShareClaim, BroadcastPayload, BroadcastPayload]] = []
        for dealer, complainers in sorted(self._complaints.items()):
            if dealer in self._excluded:
                continue
            outcome = outcomes[dealer]
            if outcome.status is SlotStatus.MISSING:
                self._exclude(dealer, "no justification")
                continue
            if outcome.status is SlotStatus.EQUIVOCATED:
                self._exclude(dealer, "equivocated justification", outcome.evidence)
                continue
            just_payload = BroadcastPayload(outcome.header, outcome.payload)  # type: ignore[arg-type]
            try:
                just = _DECODE_JustificationBundle(just_payload.payload)
                revealed = {
                    ParticipantIndex(s.recipient): scalar_from_bytes(s.share) for s in just.shares
                }
                if just.dealer != dealer or not complainers <= set(revealed):
                    raise MessageDecodeError("justification does not answer every complaint")
            except InvalidEncoding as exc:
                self._exclude(dealer, f"malformed justification: {exc}")
                continue
            deal_payload, _, points = self._deals[dealer]
            for j in sorted(complainers):
                public_claims.append(
                    (ShareClaim(dealer, j, tuple(points), revealed[j]), deal_payload, just_payload)
                )
        # Revealed shares are public: one batched check, culprits named on failure.
        claims = [c for c, _, _ in public_claims]
        if claims and not batch_check(claims, transcript_coefficients(claims)):
            for claim, deal_payload, just_payload in public_claims:
                if claim.dealer in self._excluded:
                    continue
                if not batch_check([claim], [1]):
                    ev = InvalidJustificationEvidence(
                        self._run, deal_payload, just_payload, int(claim.index)
                    )
                    self._exclude(
                        claim.dealer, "justification reveals a share that fails its commitments", ev
                    )
        for claim in claims:
            if claim.index == self.me and claim.dealer not in self._excluded:
                self._my_shares[claim.dealer] = claim.share

    def _finalize(self) -> None:
        # Judged now, at the point where the member would sign.
        live = self.live
        raw_saved = self._persisted.get("certificate-partial")
        saved = CertificatePartial.decode(raw_saved) if raw_saved is not None else None
        if saved is not None and self.is_recipient:
            # Signed before a restart (while live): resending exactly those bytes is
            # safe, and the others can use them even if our own view was lost.
            for j in self.config.recipient_indices:
                if j != self.me:
                    self._outbox.append(Outbound(j, saved))
        self._after_justifications()
        qual = tuple(d for d in sorted(self._deals) if d not in self._excluded)
        need = (
            self.config.threshold if self.config.kind is RunKind.DKG else self.config.old_threshold
        )
        if len(qual) < need:
            self._fail(f"only {len(qual)} qualified dealers, {need} needed")
            return
        if not self.is_recipient:
            self._events.append(DealingCompleted())
            self._enter(Phase.DONE)
            return
        if self.config.kind is RunKind.DKG:
            weights = [1] * len(qual)
        else:
            weights = lagrange_coefficients([int(d) for d in qual], 0)
        t = self.config.threshold
        poly = tuple(G2.msm([self._deals[d][2][k] for d in qual], weights) for k in range(t))
        if self.config.kind is RunKind.RESHARE and poly[0] != self.config.mpk:
            self._fail("reshared public polynomial does not keep the master public key")
            return
        if self.me not in self._run_keys:
            self._fail("no run key of this member was agreed: no share in this run")
            return
        missing = [d for d in qual if d not in self._my_shares]
        if missing:
            # Only a member whose view was lost (a restart) gets here: the others
            # certify without it, and it catches up through the chain and a refresh.
            self._fail(f"no share from qualified dealers {[int(d) for d in missing]} (state lost?)")
            return
        value = sum(w * self._my_shares[d] for w, d in zip(weights, qual, strict=True)) % R
        share = SecretShare(self.me, SecretScalar(value))
        public_shares = {i: public_share(list(poly), int(i)) for i in self.config.recipient_indices}
        if value * G2.generator() != public_shares[self.me]:
            raise LocalProtocolError("own share does not match the public polynomial")
        transcript = EpochTranscript(
            kind=self.config.kind,
            epoch=self.config.epoch,
            attempt=self.config.attempt,
            mpk=poly[0].to_bytes(),
            threshold=t,
            committee=self.config.recipients,
            qual_hash=hash_indices([int(d) for d in qual]),
            public_polynomial_hash=hash_points([p.to_bytes() for p in poly]),
            admission_policy_hash=self.config.admission_policy_hash,
            previous_certificate_hash=self.config.previous_certificate_hash,
        )
        self._result = SharingResult(qual, share, poly, public_shares, transcript)
        self._events.append(Persist("share", scalar_to_bytes(value), secret=True))
        self._events.append(SharingFinalized(self._result))
        self._enter(Phase.CERTIFYING)
        if saved is not None:
            # Never a second signature; our own counts only over this very transcript.
            if saved.transcript_hash == transcript.hash():
                self._cert_partials[self.me] = G1.from_bytes(saved.signature)
        elif live:
            sig = sign_partial(share, transcript.encode())
            partial = CertificatePartial(int(self.me), transcript.hash(), sig.to_bytes())
            self._events.append(Persist("certificate-partial", partial.encode()))
            self._cert_partials[self.me] = sig
            for j in self.config.recipient_indices:
                if j != self.me:
                    self._outbox.append(Outbound(j, partial))
        else:
            # Not live through the run: our view may differ from the one the live
            # members agree on (a missed complaint keeps a dealer they excluded), so
            # we do not sign it. The share is kept: it matches any certificate over
            # this transcript, which the others' partials may still complete.
            self.withheld = self._not_live_reason()
            self._events.append(SigningWithheld(self.withheld))
        for peer, msg in sorted(self._early_partials.items()):
            try:
                self._receive_partial(peer, msg)
            except RemoteProtocolError:
                pass  # counted when it arrived; a bad early partial is simply dropped
        self._early_partials.clear()

    def _receive_partial(self, peer: ParticipantIndex, msg: CertificatePartial) -> None:
        if msg.signer != peer or peer not in self.config.recipient_indices:
            raise RemoteProtocolError(
                "certificate partial from a non-member or for another signer", [peer]
            )
        if self._result is None:
            if self._phase in (Phase.WAITING, Phase.DEALING, Phase.RESPONDING, Phase.JUSTIFYING):
                # One per member: a member cannot crowd out the others' partials.
                self._early_partials.setdefault(peer, msg)
            return
        if msg.transcript_hash != self._result.transcript.hash():
            raise RemoteProtocolError("certificate partial over another transcript", [peer])
        if peer in self._cert_partials:
            return
        try:
            sig = G1.from_bytes(msg.signature)
        except InvalidEncoding as exc:
            raise RemoteProtocolError("malformed certificate partial", [peer]) from exc
        if not verify_cert_signature(
            self._result.transcript.encode(), sig, self._result.public_shares[peer]
        ):
            raise InvalidShare("certificate partial does not verify", [peer])
        self._cert_partials[peer] = sig
        self._try_certify()

    def _try_certify(self) -> None:
        res = self._result
        if res is None or self._phase is not Phase.CERTIFYING:
            return
        if len(self._cert_partials) < self.config.threshold:
            return
        sig = combine_partials(
            res.transcript.encode(),
            self._cert_partials,
            res.public_shares,
            self.config.threshold,
            res.mpk,
        )
        self.certificate = EpochCertificate(
            res.transcript, tuple(p.to_bytes() for p in res.public_polynomial), sig.to_bytes()
        )
        self._events.append(CertificateCompleted(self.certificate))
        self._enter(Phase.DONE)

    # --- helpers -------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self._events.append(SharingFailed(reason))
        self._enter(Phase.FAILED)

    def _enter(self, phase: Phase) -> None:
        if phase is self._phase:
            return
        if phase not in TRANSITIONS[self._phase]:
            raise LocalProtocolError(f"illegal transition {self._phase.value} → {phase.value}")
        self._phase = phase
        if phase in TERMINAL_PHASES:
            self._run_key = None  # the run is over: its key opens nothing any more

    @property
    def qualified(self) -> Sequence[ParticipantIndex]:
        return self._result.qual if self._result else ()

    @property
    def excluded(self) -> Mapping[ParticipantIndex, DealerExcluded]:
        return dict(self._excluded)
