"""Broadcast with agreement (Dolev–Strong, 1983), sans-I/O, one instance per phase.

Every member may broadcast one message (its *slot*) per phase. The guarantee
that the DKG, resharing and membership decisions rely on: at the end time
``cutoff + (f+1)·Δ`` every honest member holds, for every slot, the same
outcome: the one message, none, or an equivocation (two messages the sender
signed for one slot, which is third-party evidence).

Model: a known bound ``Δ`` on delivering a message between honest members,
one pull round trip and clock skew included; at most ``f`` byzantine members.

* The sender signs a *digest statement* ``(session, sender, SHA-256(payload))``
  and sends the payload with it to every member.
* A member *accepts* a digest carrying ``k`` valid relay signatures from
  distinct members other than the sender if it also holds the payload, at a
  time no later than ``cutoff + k·Δ`` (``k = 0``: the direct message from the
  sender itself, by the cut-off), for ``0 ≤ k ≤ f+1``.
* On first accepting a digest it adds its own relay signature and sends the
  digest with ``k+1`` signatures to every member. It relays at most two
  digests per slot: two prove equivocation, and the second must spread too.
* A member that sees a digest it cannot accept yet for want of the payload
  pulls the payload from the digest's signers (honest relayers hold it).

Agreement: if an honest member accepts at ``τ ≤ cutoff + k·Δ``, its relay
with ``k+1`` signatures reaches, and is pulled by, every honest member by
``cutoff + (k+1)·Δ``, so they accept too; a digest with ``f+1`` relay
signatures has an honest signer, who relayed it earlier. Hence the end time
``cutoff + (f+1)·Δ`` and no early end.

This module departs from DESIGN.md's "``k ≤ f``" in one place: it accepts up
to ``k = f+1`` relay signatures, the standard Dolev–Strong bound; with ``k ≤ f``
a member accepting in the last round could not pass its acceptance on in time.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from mpc.codec import MaxSize, Message, MessageDecodeError, Size
from mpc.errors import Equivocation, InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.sig import CTX_BROADCAST_DIGEST, CTX_BROADCAST_RELAY, SigningKey, VerifyKey

SESSION_SIZE = 32
MAX_PAYLOAD = 2 * 1024 * 1024
MAX_PENDING_DIGESTS = 8
"""Unaccepted digests kept per slot (each is a valid sender signature); beyond this,
further ones for the slot are dropped and counted."""


# --- wire messages ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedDigest(Message):
    """The sender's signature over ``(session, sender, digest)``."""

    TYPE = "bcast/digest"
    session: Annotated[bytes, Size(SESSION_SIZE)]
    sender: int
    digest: Annotated[bytes, Size(32)]
    signature: Annotated[bytes, Size(64)]

    def statement(self) -> bytes:
        return statement(self.session, ParticipantIndex(self.sender), self.digest)


@dataclass(frozen=True, slots=True)
class RelaySignature(Message):
    """A relayer's signature over the same statement, under the relay context."""

    TYPE = "bcast/relay-signature"
    relayer: int
    signature: Annotated[bytes, Size(64)]


@dataclass(frozen=True, slots=True)
class BroadcastPayload(Message):
    """A broadcast message in full: sent by its sender, or answering a pull."""

    TYPE = "bcast/payload"
    header: SignedDigest
    payload: Annotated[bytes, MaxSize(MAX_PAYLOAD)]

    def validate(self) -> None:
        if hashlib.sha256(self.payload).digest() != self.header.digest:
            raise MessageDecodeError("bcast/payload: payload does not match its digest")


@dataclass(frozen=True, slots=True)
class DigestRelay(Message):
    """A digest passed on with the relay signatures collected so far."""

    TYPE = "bcast/relay"
    header: SignedDigest
    relays: Annotated[tuple[RelaySignature, ...], MaxSize(1024)]


@dataclass(frozen=True, slots=True)
class PullRequest(Message):
    """Ask a member that signed a digest for its payload."""

    TYPE = "bcast/pull"
    session: Annotated[bytes, Size(SESSION_SIZE)]
    sender: int
    digest: Annotated[bytes, Size(32)]


BroadcastMessage = BroadcastPayload | DigestRelay | PullRequest


def statement(session: bytes, sender: ParticipantIndex, digest: bytes) -> bytes:
    return session + int(sender).to_bytes(4, "big") + digest


SESSION_TAG = b"quorum-kms/v1/broadcast/session"
"""SHA-256 prefix of a broadcast session id."""


def session_id(*parts: bytes) -> bytes:
    """A 32-byte session id from length-prefixed parts (protocol, epoch, attempt, phase…)."""
    h = hashlib.sha256(SESSION_TAG)
    for p in parts:
        h.update(len(p).to_bytes(4, "big") + p)
    return h.digest()


# --- evidence -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EquivocationEvidence(Message):
    """Two digest statements the same sender signed for one slot."""

    TYPE = "evidence/equivocation"
    first: SignedDigest
    second: SignedDigest

    def validate(self) -> None:
        a, b = self.first, self.second
        if a.session != b.session or a.sender != b.sender or a.digest == b.digest:
            raise MessageDecodeError("equivocation evidence must name two digests of one slot")

    @property
    def culprit(self) -> ParticipantIndex:
        return ParticipantIndex(self.first.sender)

    def verify(self, sender_key: VerifyKey) -> None:
        """Check with nothing but the sender's public key; raises ``InvalidSignature``."""
        self.validate()
        sender_key.verify(CTX_BROADCAST_DIGEST, self.first.statement(), self.first.signature)
        sender_key.verify(CTX_BROADCAST_DIGEST, self.second.statement(), self.second.signature)


# --- outcomes -----------------------------------------------------------------


class SlotStatus(enum.Enum):
    DELIVERED = "delivered"
    MISSING = "missing"
    EQUIVOCATED = "equivocated"


@dataclass(frozen=True, slots=True)
class SlotOutcome:
    status: SlotStatus
    payload: bytes | None = None
    header: SignedDigest | None = None
    evidence: EquivocationEvidence | None = None


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message for one member (``to``)."""

    to: ParticipantIndex
    message: Message


@dataclass(frozen=True)
class BroadcastConfig:
    session: bytes
    senders: Mapping[ParticipantIndex, VerifyKey]
    """Who may broadcast in this phase (one slot each)."""
    relayers: Mapping[ParticipantIndex, VerifyKey]
    """Who relays and must agree on the outcome; ``f`` counts faulty relayers."""
    me: ParticipantIndex
    f: int
    delta: float
    cutoff: float
    listeners: frozenset[ParticipantIndex] = frozenset()
    """Members that neither relay nor need agreement but receive everything (old
    members leaving in a reshare, who must see complaints against their deals)."""

    def __post_init__(self) -> None:
        if len(self.session) != SESSION_SIZE:
            raise LocalProtocolError("session id must be 32 bytes")
        if (
            self.me not in self.senders
            and self.me not in self.relayers
            and self.me not in self.listeners
        ):
            raise LocalProtocolError("this member takes no part in the round")
        if self.f < 0 or self.delta <= 0:
            raise LocalProtocolError("need f ≥ 0 and Δ > 0")
        for i in set(self.senders) & set(self.relayers):
            if self.senders[i] != self.relayers[i]:
                raise LocalProtocolError(f"member {int(i)} has two identity keys")

    def key_of(self, index: ParticipantIndex) -> VerifyKey | None:
        return self.relayers.get(index) or self.senders.get(index)

    @property
    def end(self) -> float:
        """``cutoff + (f+1)·Δ``: when every honest member holds the same outcome."""
        return self.cutoff + (self.f + 1) * self.delta

    def audience(self) -> list[ParticipantIndex]:
        """Everyone a message or relay goes to."""
        return sorted(set(self.relayers) | self.listeners)

    def window(self, k: int) -> float:
        return self.cutoff + k * self.delta


@dataclass
class _Candidate:
    header: SignedDigest
    relays: dict[ParticipantIndex, bytes] = field(default_factory=dict)
    payload: bytes | None = None
    asked: set[ParticipantIndex] = field(default_factory=set)
    """Members already asked for the payload; new signers are asked as they appear."""


@dataclass
class _Slot:
    candidates: dict[bytes, _Candidate] = field(default_factory=dict)
    accepted: list[bytes] = field(default_factory=list)
    signed_by: dict[ParticipantIndex, set[bytes]] = field(default_factory=dict)
    """Digests each relayer has signed for this slot (an honest one signs at most two)."""


@dataclass
class BroadcastStats:
    accepted: int = 0
    relayed: int = 0
    pulls_sent: int = 0
    pulls_answered: int = 0
    dropped: int = 0


class BroadcastRound:
    """One phase of broadcast with agreement, as seen by member ``config.me``."""

    def __init__(self, config: BroadcastConfig, signing_key: SigningKey) -> None:
        self.config = config
        self._key = signing_key
        self._slots: dict[ParticipantIndex, _Slot] = {i: _Slot() for i in sorted(config.senders)}
        self._outbox: list[Outbound] = []
        self._accepted_log: list[BroadcastPayload] = []
        self._now = float("-inf")
        self._sent: BroadcastPayload | None = None
        self.stats = BroadcastStats()

    # --- sending --------------------------------------------------------------

    def make_payload(self, payload: bytes) -> BroadcastPayload:
        """Sign ``payload`` for this member's slot (persist the result, then ``send``)."""
        digest = hashlib.sha256(payload).digest()
        st = statement(self.config.session, self.config.me, digest)
        sig = self._key.sign(CTX_BROADCAST_DIGEST, st)
        header = SignedDigest(self.config.session, int(self.config.me), digest, sig)
        return BroadcastPayload(header, payload)

    def send(self, message: BroadcastPayload, now: float) -> None:
        """Broadcast this member's (already signed, persisted) message.

        Re-sending the same bytes after a restart is allowed; a different
        message for the same slot is refused (that would be equivocation).
        """
        h = message.header
        if h.session != self.config.session or h.sender != self.config.me:
            raise LocalProtocolError("message is not for this member's slot")
        if self._sent is not None and self._sent != message:
            raise LocalProtocolError("refusing to sign a second message for one slot")
        if self.config.me not in self.config.senders:
            raise LocalProtocolError("this member has no slot in this phase")
        self._sent = message
        self._now = max(self._now, now)
        for i in self.config.audience():
            if i != self.config.me:
                self._outbox.append(Outbound(i, message))
        self._consider(self.config.me, message.header, {}, message.payload, direct=True)

    # --- receiving ------------------------------------------------------------

    def receive(self, peer: ParticipantIndex, message: Message, now: float) -> None:
        """Handle a message from authenticated member ``peer``.

        Raises ``RemoteProtocolError`` (state unchanged) for invalid input.
        """
        self._now = max(self._now, now)
        if self.config.key_of(peer) is None and peer not in self.config.listeners:
            raise RemoteProtocolError("message from a non-member", [peer])
        if isinstance(message, BroadcastPayload):
            self._check_header(peer, message.header)
            self._consider(
                peer, message.header, {}, message.payload, direct=peer == message.header.sender
            )
        elif isinstance(message, DigestRelay):
            self._check_header(peer, message.header)
            slot = self._slots[ParticipantIndex(message.header.sender)]
            if message.header.digest in slot.accepted:
                return  # already accepted and relayed: further signatures change nothing
            relays = self._check_relays(peer, message)
            self._consider(peer, message.header, relays, None, direct=False)
        elif isinstance(message, PullRequest):
            self._answer_pull(peer, message)
        else:
            raise RemoteProtocolError(f"unexpected message {type(message).__name__}", [peer])

    def _check_header(self, peer: ParticipantIndex, h: SignedDigest) -> None:
        if h.session != self.config.session:
            raise RemoteProtocolError("message for another session", [peer])
        sender = ParticipantIndex(h.sender)
        key = self.config.senders.get(sender)
        if key is None:
            raise RemoteProtocolError("digest for a slot that does not exist", [peer])
        slot = self._slots[sender]
        if h.digest in slot.candidates:
            if slot.candidates[h.digest].header.signature == h.signature:
                return
        try:
            key.verify(CTX_BROADCAST_DIGEST, h.statement(), h.signature)
        except InvalidSignature as exc:
            raise RemoteProtocolError("bad sender signature on a digest", [peer]) from exc

    def _check_relays(
        self, peer: ParticipantIndex, m: DigestRelay
    ) -> dict[ParticipantIndex, bytes]:
        sender = ParticipantIndex(m.header.sender)
        cand = self._slots[sender].candidates.get(m.header.digest)
        known = cand.relays if cand else {}
        out: dict[ParticipantIndex, bytes] = {}
        st = m.header.statement()
        for r in m.relays:
            idx = ParticipantIndex(r.relayer)
            if idx == sender or idx in out:
                raise RemoteProtocolError("relay signatures must be distinct non-senders", [peer])
            key = self.config.relayers.get(idx)
            if key is None:
                raise RemoteProtocolError("relay signature from a non-relayer", [peer])
            if known.get(idx) != r.signature:
                try:
                    key.verify(CTX_BROADCAST_RELAY, st, r.signature)
                except InvalidSignature as exc:
                    raise RemoteProtocolError("bad relay signature", [peer]) from exc
            out[idx] = r.signature
        if not out:
            raise RemoteProtocolError("a relay must carry at least one relay signature", [peer])
        return out

    def _consider(
        self,
        peer: ParticipantIndex,
        header: SignedDigest,
        relays: dict[ParticipantIndex, bytes],
        payload: bytes | None,
        *,
        direct: bool,
    ) -> None:
        sender = ParticipantIndex(header.sender)
        slot = self._slots[sender]
        cand = slot.candidates.get(header.digest)
        if cand is None:
            # Bound memory per slot, but never at the expense of a digest that a
            # relayer within its honest budget (two digests per slot) vouches for:
            # that one may be accepted by other honest members.
            vouched = any(len(slot.signed_by.get(i, set()) | {header.digest}) <= 2 for i in relays)
            if len(slot.candidates) >= MAX_PENDING_DIGESTS + 2 and not vouched:
                self.stats.dropped += 1
                return
            cand = _Candidate(header)
            slot.candidates[header.digest] = cand
        for idx, sig in relays.items():
            cand.relays.setdefault(idx, sig)
            slot.signed_by.setdefault(idx, set()).add(header.digest)
        if payload is not None and cand.payload is None:
            cand.payload = payload
        if header.digest in slot.accepted:
            return
        # How many relay signatures can count towards acceptance right now.
        k = min(len(cand.relays), self.config.f + 1)
        own = sender == self.config.me
        # Every window is half-open, for k = 0 as for k ≥ 1, so that the same
        # arrival time is judged alike everywhere.
        if direct and not own:
            k_ok = self._now < self.config.cutoff
        elif direct and own:
            # Our own message counts directly only if it reaches everyone before the
            # cut-off (sent Δ before it); later, we wait for relays like the others.
            k_ok = self._now < self.config.cutoff - self.config.delta
        else:
            # Strictly before the window closes, so nothing changes once the end
            # time (cutoff + (f+1)·Δ) is reached and the outcome can be read.
            k_ok = k >= 1 and self._now < self.config.window(k)
        if not k_ok:
            return
        if cand.payload is None:
            self._pull(sender, cand)
            return
        if len(slot.accepted) >= 2:
            return
        slot.accepted.append(header.digest)
        self.stats.accepted += 1
        self._accepted_log.append(BroadcastPayload(cand.header, cand.payload))
        self._relay(sender, cand)

    def has_accepted(self) -> bool:
        """Whether messages were accepted since the last ``take_accepted``."""
        return bool(self._accepted_log)

    def take_accepted(self) -> list[BroadcastPayload]:
        """Messages accepted since the last call, for the owner to persist: a member
        restarted mid-phase restores its view with ``restore_accepted``."""
        out, self._accepted_log = self._accepted_log, []
        return out

    def restore_accepted(self, message: BroadcastPayload) -> None:
        """Re-accept a message this member accepted before a restart (from its own store)."""
        h = message.header
        sender = ParticipantIndex(h.sender)
        key = self.config.senders.get(sender)
        if h.session != self.config.session or key is None:
            raise LocalProtocolError("stored message is not for this round")
        key.verify(CTX_BROADCAST_DIGEST, h.statement(), h.signature)
        slot = self._slots[sender]
        cand = slot.candidates.setdefault(h.digest, _Candidate(h))
        cand.payload = message.payload
        if h.digest not in slot.accepted and len(slot.accepted) < 2:
            slot.accepted.append(h.digest)
            self._relay(sender, cand)

    def _relay(self, sender: ParticipantIndex, cand: _Candidate) -> None:
        me = self.config.me
        if me not in self.config.relayers:
            return
        st = cand.header.statement()
        if me != sender and me not in cand.relays:
            cand.relays[me] = self._key.sign(CTX_BROADCAST_RELAY, st)
        sigs = sorted(cand.relays.items())
        # Carry our own signature plus up to f others: f+1 in all is the most that counts.
        chosen = [(i, s) for i, s in sigs if i == me][:1] + [(i, s) for i, s in sigs if i != me][
            : self.config.f
        ]
        if not chosen:
            return
        msg = DigestRelay(cand.header, tuple(RelaySignature(int(i), s) for i, s in sorted(chosen)))
        self.stats.relayed += 1
        for i in self.config.audience():
            if i != me:  # the sender too: it may need relays to accept its own late message
                self._outbox.append(Outbound(i, msg))

    def _pull(self, sender: ParticipantIndex, cand: _Candidate) -> None:
        # Ask every signer not asked yet: byzantine signers may never answer,
        # but an honest relayer holds the payload before it signs.
        targets = sorted(({sender} | set(cand.relays)) - {self.config.me} - cand.asked)
        if not targets:
            return
        cand.asked.update(targets)
        req = PullRequest(self.config.session, int(sender), cand.header.digest)
        self.stats.pulls_sent += len(targets)
        for i in targets:
            self._outbox.append(Outbound(i, req))

    def _answer_pull(self, peer: ParticipantIndex, req: PullRequest) -> None:
        if req.session != self.config.session:
            raise RemoteProtocolError("pull for another session", [peer])
        slot = self._slots.get(ParticipantIndex(req.sender))
        cand = slot.candidates.get(req.digest) if slot else None
        if cand is None or cand.payload is None:
            return  # nothing to give; not an error (we may simply not have it yet)
        self.stats.pulls_answered += 1
        self._outbox.append(Outbound(peer, BroadcastPayload(cand.header, cand.payload)))

    # --- time and results -----------------------------------------------------

    def advance_time(self, now: float) -> None:
        self._now = max(self._now, now)

    def messages_to_send(self) -> list[Outbound]:
        out, self._outbox = self._outbox, []
        return out

    @property
    def finished(self) -> bool:
        return self._now >= self.config.end

    def outcome(self) -> dict[ParticipantIndex, SlotOutcome]:
        """Per-slot outcome; valid (and identical at honest members) once ``finished``."""
        if not self.finished:
            raise LocalProtocolError("the broadcast round has not reached its end time")
        out: dict[ParticipantIndex, SlotOutcome] = {}
        for sender, slot in sorted(self._slots.items()):
            acc = [slot.candidates[d] for d in slot.accepted]
            if not acc:
                out[sender] = SlotOutcome(SlotStatus.MISSING)
            elif len(acc) == 1:
                out[sender] = SlotOutcome(SlotStatus.DELIVERED, acc[0].payload, acc[0].header)
            else:
                a, b = sorted((c.header for c in acc), key=lambda h: h.digest)
                out[sender] = SlotOutcome(
                    SlotStatus.EQUIVOCATED, evidence=EquivocationEvidence(a, b)
                )
        return out

    def equivocators(self) -> list[Equivocation]:
        return [
            Equivocation("sender signed two messages for one slot", [s])
            for s, o in self.outcome().items()
            if o.status is SlotStatus.EQUIVOCATED
        ]
