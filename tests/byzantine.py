"""Byzantine sharing sessions for the mesh tests: each behaviour is a small switch."""

from __future__ import annotations

from dataclasses import dataclass, field

from mpc import hpke
from mpc.broadcast import BroadcastPayload, Outbound
from mpc.dkg.messages import (
    OMITTED_ENC,
    DealBundle,
    EncryptedShare,
    JustificationBundle,
    Response,
    ResponseBundle,
    RevealedShare,
    RunKey,
)
from mpc.dkg.session import Phase, SharingSession
from mpc.ids import ParticipantIndex
from mpc.math.fields import scalar_to_bytes
from mpc.math.poly import Polynomial
from mpc.math.vss import commit
from mpc.secret import random_scalar


@dataclass(frozen=True)
class Misbehaviour:
    bad_share_to: frozenset[int] = frozenset()
    equivocate_deal: bool = False
    false_complaints: frozenset[int] = frozenset()
    complain_equivocally: bool = False
    justification: str = "honest"  # honest | wrong | none
    silent: bool = False
    wrong_constant: bool = False  # reshare: deal a sharing of something other than the share
    withhold_run_key: bool = False  # announce no run key (and so get no share)
    run_key_for_other_run: bool = False  # announce a key signed for another run id
    omit_shares_to: frozenset[int] = frozenset()  # deal these recipients no share at all
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        parts = []
        if self.bad_share_to:
            parts.append(f"bad shares to {sorted(self.bad_share_to)}")
        if self.equivocate_deal:
            parts.append("equivocating deal")
        if self.false_complaints:
            parts.append(f"false complaints about {sorted(self.false_complaints)}")
        if self.complain_equivocally:
            parts.append("equivocating responses")
        if self.justification != "honest":
            parts.append(f"{self.justification} justification")
        if self.silent:
            parts.append("silent")
        if self.wrong_constant:
            parts.append("wrong constant term")
        if self.withhold_run_key:
            parts.append("no run key")
        if self.omit_shares_to:
            parts.append(f"omits the shares of {sorted(self.omit_shares_to)}")
        return ", ".join(parts + list(self.notes)) or "honest"


class ByzantineSession(SharingSession):
    """A session that deviates as ``behaviour`` says and never crashes on its own state."""

    behaviour: Misbehaviour

    def _signed(self, rnd, message) -> BroadcastPayload:  # type: ignore[no-untyped-def]
        return rnd.make_payload(message.encode())

    def _spray(self, payload: BroadcastPayload, targets: list[ParticipantIndex]) -> None:
        for j in targets:
            if j != self.me:
                self._outbox.append(Outbound(j, payload))

    def _bundle(self, poly: Polynomial, bad: frozenset[int]) -> DealBundle:
        commitments = tuple(c.to_bytes() for c in commit(poly))
        aad = DealBundle(int(self.me), commitments, ()).commitments_hash()
        shares = []
        for p in self.config.recipients:
            if p.index in self.behaviour.omit_shares_to:
                shares.append(EncryptedShare(p.index, OMITTED_ENC, bytes(48)))
                continue
            value = poly(p.index) + (1 if p.index in bad else 0)
            shares.append(self._seal_share(ParticipantIndex(p.index), aad, value))
        return DealBundle(int(self.me), commitments, tuple(shares))

    def _announce_key(self) -> None:
        if self.behaviour.run_key_for_other_run:
            key = hpke.derive_key_pair(self._rng(32))[1]
            other = RunKey.create(bytes(32), int(self.me), key, self._key)
            self._key_round.send(self._signed(self._key_round, other), self._now)
            return
        if not self.behaviour.withhold_run_key:
            super()._announce_key()

    def _deal(self) -> None:
        b = self.behaviour
        if b.silent or not self.is_dealer:
            return
        t = self.config.threshold
        constant = self._old_share.value.value if self._old_share else None
        if b.wrong_constant:
            constant = (constant or 0) + 1
        poly = Polynomial.random(t - 1, lambda: random_scalar(self._rng), constant=constant)
        self._poly = poly
        targets = [j for j in self.config.recipient_indices if j != self.me]
        first = self._signed(self._deal_round, self._bundle(poly, b.bad_share_to))
        if b.equivocate_deal:
            other = Polynomial.random(t - 1, lambda: random_scalar(self._rng), constant=constant)
            second = self._signed(self._deal_round, self._bundle(other, b.bad_share_to))
            half = len(targets) // 2
            self._spray(first, targets[:half])
            self._spray(second, targets[half:])
        else:
            self._spray(first, targets)

    def _after_deals(self) -> None:
        b = self.behaviour
        for dealer, outcome in self._deal_round.outcome().items():
            self._check_deal(dealer, outcome)
        if b.silent or not self.is_recipient:
            self._enter(Phase.RESPONDING)
            return
        dealers = sorted(self._deals)
        complaints = {d for d in dealers if int(d) in b.false_complaints}
        bundle = ResponseBundle(
            int(self.me), tuple(Response(int(d), d in complaints) for d in dealers)
        )
        targets = [j for j in self.config.recipient_indices if j != self.me]
        if b.complain_equivocally:
            other = ResponseBundle(int(self.me), tuple(Response(int(d), True) for d in dealers))
            half = len(targets) // 2
            self._spray(self._signed(self._respond_round, bundle), targets[:half])
            self._spray(self._signed(self._respond_round, other), targets[half:])
        else:
            self._spray(self._signed(self._respond_round, bundle), targets)
        self._enter(Phase.RESPONDING)

    def _after_responses(self) -> None:
        b = self.behaviour
        for responder, outcome in self._respond_round.outcome().items():
            del responder, outcome  # the byzantine node does not care what others said
        if b.silent or b.justification == "none" or self._poly is None:
            self._enter(Phase.JUSTIFYING)
            return
        # Justify to everyone who could have complained (a superset is allowed).
        targets = self.config.recipient_indices
        delta = 1 if b.justification == "wrong" else 0
        shares = tuple(
            RevealedShare(int(j), scalar_to_bytes(self._poly(int(j)) + delta)) for j in targets
        )
        payload = self._signed(self._justify_round, JustificationBundle(int(self.me), shares))
        self._spray(payload, list(targets) + list(self.config.dealer_indices))
        self._enter(Phase.JUSTIFYING)

    def _finalize(self) -> None:
        self._enter(Phase.DONE)
