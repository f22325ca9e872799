"""Share recovery from the certified deals: serving them, and asking for them.

A member of the head's epoch left without a share (it finalized no share it
signed with, or lost it) may still hold the seed of its run key for the
certified run. With the run's certified deals (``DealsAnswer``: the
encrypted shares and what the transcript fixed) it recovers its share
(``mpc.dkg.recovery.recover_share``). ``ShareRecovery`` holds both sides:

* **serving**: the deals of runs this node finalized (a few, by transcript
  hash); those of the head's certified run are stored (``DEALS_RUN_LABEL``)
  and answer ``DealsRequest``s, rate limited per member;
* **asking**: the run key seeds of the runs going on here, the seeds kept past
  their run (bounded in time: ``RECOVERY_SEED_DELTAS`` Δ after the run's end),
  and the recovery going on: ``t`` members asked at a time, each given
  ``RECOVERY_WAIT_DELTAS`` Δ; with nobody left to ask, it gives up (the seed is
  erased) and the member gets a share from a prompt refresh instead.

The node core passes its view (chain state, share, the run going on, the
time) into each call and carries out what the recovery asks for through a
``RecoveryPort`` (send, store, erase a seed, adopt a recovered share).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from kms.node.limits import deals_answer_bytes
from mpc.cert import EpochCertificate
from mpc.codec import MAX_MESSAGE_SIZE, Message, MessageDecodeError
from mpc.dkg import SharingConfig, SharingFinalized, SharingSession
from mpc.dkg.messages import DealsAnswer, DealsRequest
from mpc.dkg.recovery import DealerShareInvalid, ShareNotDealt, recover_share
from mpc.errors import InvalidEncoding, InvalidSignature, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.membership import ChainState
from mpc.secret import SecretShare

DEALS_RUN_LABEL = b"deals/"
"""Store run prefix (before the certified transcript's hash) of the head's certified deals
this node keeps for members recovering their share (``DealsRequest``)."""
RECOVERY_SEED_DELTAS = 40
"""A recipient that ends a run without a share it signed with keeps the run key's seed at
most this many Δ after the run's scheduled end (less when the run is decided, below)."""
RECOVERY_WAIT_DELTAS = 4
"""How long the members asked for the deals have to answer before the next are asked."""
DEALS_REQUEST_BURST = 2
DEALS_REQUEST_REFILL_DELTAS = 10
"""Deal requests answered per peer: a burst of 2, then one more every this many Δ."""
MAX_KEPT_DEALS = 8
"""Deals of finalized runs kept in memory (the most recent)."""


class RecoveryPort(Protocol):
    """What share recovery asks of the node core."""

    def send(self, to: ParticipantIndex, message: Message) -> None: ...

    def store_public(self, run: bytes, key: str, data: bytes) -> None:
        """Persist a public record (a ``StoreRecord`` with ``secret=False``)."""
        ...

    def records(self, run: bytes) -> Mapping[str, bytes]: ...

    def seed_record(self, run: bytes) -> bytes | None:
        """The run key seed ``run`` persisted, if not erased yet."""
        ...

    def erase_seed(self, run: bytes) -> None:
        """Erase the run key seed record of ``run``."""
        ...

    def certified_config(self, st: ChainState) -> SharingConfig | None:
        """The configuration of the run ``st``'s certificate certifies."""
        ...

    def late_share(self, cert: EpochCertificate, share: SecretShare) -> None:
        """Adopt a share of ``cert``'s epoch found after the certificate."""
        ...


@dataclass
class Recovery:
    """A share recovery going on: the certified run, its seed, whom to ask next."""

    run: bytes
    config: SharingConfig
    seed: bytes = field(repr=False)
    cert: bytes
    """The fingerprint of the certificate whose share is recovered."""
    queue: list[ParticipantIndex]
    pending: set[ParticipantIndex] = field(default_factory=set)
    asked_at: float = float("-inf")


def take_token(
    table: dict[ParticipantIndex, tuple[float, float]],
    peer: ParticipantIndex,
    now: float,
    burst: int,
    rate: float,
) -> bool:
    """Take one token from ``peer``'s bucket (``burst`` tokens, ``rate`` per second)."""
    tokens, last = table.get(peer, (float(burst), now))
    tokens = min(float(burst), tokens + max(0.0, now - last) * rate)
    if tokens < 1.0:
        table[peer] = (tokens, now)
        return False
    table[peer] = (tokens - 1.0, now)
    return True


class ShareRecovery:
    """Serving the head's certified deals, and recovering this member's share from them."""

    def __init__(self, me: ParticipantIndex, delta: float, port: RecoveryPort) -> None:
        self.me = me
        self.delta = delta
        self.port = port
        self.seeds: dict[bytes, bytes] = {}
        """Run key seeds of the runs going on here (as persisted), by run id."""
        self.kept_seeds: dict[bytes, tuple[int, int, bytes, float]] = {}
        """Seeds kept past their run for recovering a share: run → (epoch, attempt, seed,
        erase by)."""
        self.active: Recovery | None = None
        self.last: Recovery | None = None
        self.check = True
        """Whether to look for a share to recover at the next step (a new head, a run ended)."""
        self.ended: deque[bytes] = deque(maxlen=16)
        """Certificates (fingerprints) whose share recovery ended here (done or given up)."""
        self.finalized_deals: dict[bytes, DealsAnswer] = {}
        """The deals of runs this node finalized, by transcript hash (a few)."""
        self.served: DealsAnswer | None = None
        self.served_for: bytes | None = None
        self.deals_budget: dict[ParticipantIndex, tuple[float, float]] = {}

    # --- serving ------------------------------------------------------------------

    def keep_deals(self, session: SharingSession, ev: SharingFinalized) -> None:
        """The deals of a run this node finalized: served if its transcript is certified."""
        deals = session.certified_deals()
        if deals is None:
            return
        self.finalized_deals[ev.result.transcript.hash()] = deals
        while len(self.finalized_deals) > MAX_KEPT_DEALS:
            del self.finalized_deals[next(iter(self.finalized_deals))]
        self.served_for = None

    def serve_head(self, st: ChainState | None) -> None:
        """Hold the deals of the head's certified run, if this node finalized that run (in
        memory, or stored under ``DEALS_RUN_LABEL`` when it adopted the certificate), to
        answer ``DealsRequest``. They are public; they go with the next epoch switch."""
        if st is None:
            return
        tr_hash = st.certificate.transcript.hash()
        if self.served_for == tr_hash:
            return
        self.served_for = tr_hash
        self.served = None
        deals = self.finalized_deals.get(tr_hash)
        if deals is not None:
            self.port.store_public(DEALS_RUN_LABEL + tr_hash, "deals", deals.encode())
        else:
            raw = self.port.records(DEALS_RUN_LABEL + tr_hash).get("deals")
            try:
                deals = DealsAnswer.decode(raw) if raw is not None else None
            except MessageDecodeError:
                deals = None
        if deals is not None and len(deals.encode()) > MAX_MESSAGE_SIZE - 4096:
            deals = None  # more than one frame holds (n ≳ 130): members missing it get a refresh
        self.served = deals

    def answer(
        self, peer: ParticipantIndex, request: DealsRequest, now: float, st: ChainState | None
    ) -> None:
        rate = 1.0 / (DEALS_REQUEST_REFILL_DELTAS * self.delta)
        if not take_token(self.deals_budget, peer, now, DEALS_REQUEST_BURST, rate):
            raise RemoteProtocolError("deal requests rate limited", [peer])
        served = self.served
        if served is None or st is None or served.run != request.run:
            return  # this node holds no deals of that run (any more)
        n, t = len(st.committee.members), st.threshold
        if served.payload_bytes() > deals_answer_bytes(max(n, len(served.qual)), t):
            return  # pragma: no cover - honest deals are within the bound
        self.port.send(peer, served)

    # --- seeds --------------------------------------------------------------------

    def keep_seed(self, run: bytes, epoch: int, attempt: int, seed: bytes, erase_by: float) -> None:
        """Keep a run's seed past its end: this recipient holds no share of it it signed with."""
        self.kept_seeds[run] = (epoch, attempt, seed, erase_by)
        self.check = True

    def drop_seed(self, run: bytes) -> None:
        if self.kept_seeds.pop(run, None) is not None:
            self.port.erase_seed(run)

    def prune(
        self, st: ChainState | None, share: SecretShare | None, going: bytes | None, now: float
    ) -> None:
        """A seed kept for recovery goes once its run is decided here (its share recovered
        or adopted, another attempt or a later epoch certified), or at its deadline."""
        for run in [r for r in self.seeds if r != going]:
            del self.seeds[run]  # a run dropped without ending here (a chain replaced)
        active = self.active.run if self.active is not None else None
        for run, (epoch, attempt, _seed, erase_by) in list(self.kept_seeds.items()):
            if run == active:
                continue
            decided = False
            if st is not None:
                head = st.certificate.transcript.attempt
                decided = epoch < st.epoch or (
                    epoch == st.epoch
                    and (attempt < head or (attempt == head and share is not None))
                )
            if decided or now > erase_by:
                self.drop_seed(run)

    # --- asking ---------------------------------------------------------------------

    def step(
        self,
        st: ChainState | None,
        share: SecretShare | None,
        running: SharingSession | None,
        now: float,
    ) -> None:
        """A member of the head's epoch without a share that still holds the seed of its run
        key for the certified run asks the others for that run's deals: ``t`` members at a
        time, each given ``RECOVERY_WAIT_DELTAS`` Δ to answer. With none left to ask, it gives
        up (the seed is erased) and gets a share from a prompt refresh instead."""
        self.prune(st, share, running.run_id if running is not None else None, now)
        rec = self.active
        if rec is not None:
            if st is None or share is not None or st.certificate.fingerprint() != rec.cert:
                self.end(rec)  # decided otherwise
                return
            if rec.pending and now < rec.asked_at + RECOVERY_WAIT_DELTAS * self.delta:
                return
            if not rec.queue:
                self.end(rec)  # nobody proved the share in time
                return
            batch, rec.queue = rec.queue[: st.threshold], rec.queue[st.threshold :]
            rec.pending = set(batch)
            rec.asked_at = now
            for i in batch:
                self.port.send(i, DealsRequest(rec.run))
            return
        if not self.check or st is None or now == float("-inf"):
            return
        self.check = False
        tr = st.certificate.transcript
        if share is not None or self.me not in st.committee.indices:
            return
        if st.certificate.fingerprint() in self.ended:
            return
        if running is not None and (running.config.epoch, running.config.attempt) == (
            tr.epoch,
            tr.attempt,
        ):
            return  # its own run of the certified attempt is still going: it ends first
        cfg = self.port.certified_config(st)
        if cfg is None or self.me not in cfg.recipient_indices:
            return
        run = cfg.run_id()
        held = self.kept_seeds.get(run)
        if held is None:
            # After a restart: the seed record the run left (not erased yet), if any.
            seed = self.port.seed_record(run)
            if seed is None:
                return  # no seed: nothing opens its shares; a prompt refresh follows
            held = (
                tr.epoch,
                tr.attempt,
                seed,
                cfg.schedule.end + RECOVERY_SEED_DELTAS * (self.delta),
            )
            self.kept_seeds[run] = held
        if now > held[3]:
            self.drop_seed(run)
            return
        members = [i for i in st.committee.indices if i != self.me]
        after = [i for i in members if i > self.me]
        queue = after + [i for i in members if i < self.me]
        self.active = Recovery(run, cfg, held[2], st.certificate.fingerprint(), queue)
        self.step(st, share, running, now)

    def end(self, rec: Recovery) -> None:
        if self.active is rec:
            self.active = None
        self.last = rec  # answers still due from it are dropped quietly
        self.ended.append(rec.cert)
        self.drop_seed(rec.run)

    def receive(self, peer: ParticipantIndex, answer: DealsAnswer, st: ChainState | None) -> None:
        """An answer to this node's ``DealsRequest``: one per member asked, checked in full
        (``recover_share``). A bad one is refused and counted; it changes nothing."""
        rec = self.active
        last = self.last
        if rec is None and last is not None and answer.run == last.run and peer in last.pending:
            last.pending.discard(peer)  # asked, but the recovery ended before it answered
            return
        if rec is None or st is None or peer not in rec.pending or answer.run != rec.run:
            raise RemoteProtocolError("deals this node did not ask for", [peer])
        rec.pending.discard(peer)
        bound = deals_answer_bytes(
            max(len(rec.config.recipients), len(rec.config.dealers)), st.threshold
        )
        if answer.payload_bytes() > bound:
            raise RemoteProtocolError("deals answer over the size bound", [peer])
        try:
            share = recover_share(rec.config, self.me, rec.seed, st.certificate, answer)
        except ShareNotDealt:
            self.end(rec)  # its run key was not agreed: nothing to recover
            return
        except DealerShareInvalid:
            # The certified deals, but a dealer's share for this member is wrong and not
            # revealed: the dealer's fault, or a justification this answer left out. Nobody
            # is blamed; other members are asked, and if none gives a share, the recovery
            # ends and this member asks for a prompt refresh.
            return
        except (RemoteProtocolError, InvalidEncoding, InvalidSignature) as exc:
            raise RemoteProtocolError(f"deals answer refused: {exc}", [peer]) from exc
        self.end(rec)
        self.port.late_share(st.certificate, share)
