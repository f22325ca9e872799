"""Adversary behaviours: each one small class that overrides one or two hooks of ``Behaviour``.

A corrupt node runs the project's real ``SharingSession`` and the real
``NodeCore``; its behaviours bend it at a few points (the session through its
public dealer-tamper hook, as ``BehaviourTamper``): what it deals, what it
complains about, how it justifies, which of its messages leave, what partial it releases, and what it does on
its own initiative on every tick. Everything a behaviour may use comes from
its parameters and the node it corrupts; the batch-verification
coefficients honest nodes use come from transcript hashes in ``mpc`` and are
out of its reach.

To write a new behaviour: subclass ``Behaviour``, set ``name``, read your
parameters in ``__init__`` and override the hooks you need; decorate the
class with ``@register``. It is then usable as ``behaviour = "<name>"`` in a
scenario's ``[[adversaries]]`` table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from mpc.broadcast import BroadcastPayload, Outbound
from mpc.cert import RunKind
from mpc.codec import Message
from mpc.dkg import SharingConfig, SharingSession
from mpc.dkg.messages import (
    JustificationBundle,
    Response,
    ResponseBundle,
    RevealedShare,
)
from mpc.ids import ParticipantIndex
from mpc.math import R
from mpc.math.fields import scalar_from_bytes, scalar_to_bytes
from mpc.membership import Ballot, ChangeThreshold, OutcomePartial, RemoveMember
from mpc.membership.messages import ChainUpdate, Change
from mpc.secret import RNG, SecretScalar, SecretShare
from mpc.sig import SigningKey

BEHAVIOURS: dict[str, type[Behaviour]] = {}


def register(cls: type[Behaviour]) -> type[Behaviour]:
    """Make ``cls`` available to scenarios under ``cls.name``."""
    if not cls.name or cls.name in BEHAVIOURS:
        raise ValueError(f"behaviour name {cls.name!r} is empty or taken")
    BEHAVIOURS[cls.name] = cls
    return cls


class AdversaryContext(Protocol):
    """What the world lets a corrupt node do on its own initiative."""

    def epoch_of(self, node: int) -> int | None: ...

    def members(self) -> list[int]: ...

    def send(self, sender: int, to: int, message: Message) -> None: ...

    def chain_update_of(self, node: int) -> Message | None: ...

    def propose(self, node: int, change: Change) -> bool: ...


class Behaviour:
    """Honest in every hook; subclasses deviate where their name says."""

    name: ClassVar[str] = ""

    def __init__(self, params: Mapping[str, Any], *, node: int) -> None:
        self.params = dict(params)
        self.node = node

    def _targets(self, key: str, everyone: Sequence[int]) -> set[int]:
        """A parameter naming nodes: a list of indices, ``"all"``, or a count of the lowest."""
        value = self.params.get(key, "all")
        others = [i for i in everyone if i != self.node]
        if value == "all":
            return set(others)
        if isinstance(value, int) and not isinstance(value, bool):
            return set(others[:value])
        return {int(v) for v in value}

    # --- sharing (DKG and reshare) ------------------------------------------------

    def share_offset(self, config: SharingConfig, recipient: int) -> int:
        """Added to the share dealt to ``recipient`` (0: the correct share)."""
        return 0

    def equivocates_deal(self, config: SharingConfig) -> bool:
        return False

    def wrong_constant(self, config: SharingConfig) -> bool:
        return False

    def complaints(self, config: SharingConfig, honest: set[int]) -> set[int]:
        """The dealers to complain about, given the honest verdict."""
        return honest

    def equivocates_responses(self, config: SharingConfig) -> bool:
        return False

    def justification(self, config: SharingConfig) -> str:
        """``honest``, ``wrong`` (revealed shares off by one) or ``none``."""
        return "honest"

    # --- messages, key release, initiative -------------------------------------------

    def outbound(self, now: float, out: list[Outbound]) -> list[Outbound]:
        """The messages that actually leave the node."""
        return out

    def release_share(self, share: SecretShare) -> SecretShare:
        """The share used to compute key-release partials."""
        return share

    def on_tick(self, ctx: AdversaryContext, now: float) -> None:
        """Called on every tick while the node is up."""


# --- the behaviours ---------------------------------------------------------------------


@register
class BadShares(Behaviour):
    """Deal wrong shares to ``to``; justify ``justify`` = honest | wrong | none."""

    name = "bad-shares"

    def share_offset(self, config: SharingConfig, recipient: int) -> int:
        return 1 if recipient in self._targets("to", [p.index for p in config.recipients]) else 0

    def justification(self, config: SharingConfig) -> str:
        return str(self.params.get("justify", "wrong"))


@register
class Equivocate(Behaviour):
    """Sign two different deals and send one to each half of the committee."""

    name = "equivocate"

    def equivocates_deal(self, config: SharingConfig) -> bool:
        return True


@register
class FalseComplaints(Behaviour):
    """Complain about dealers in ``against`` whose shares were fine."""

    name = "false-complaints"

    def complaints(self, config: SharingConfig, honest: set[int]) -> set[int]:
        return honest | self._targets("against", [p.index for p in config.dealers])


@register
class EquivocalComplaints(Behaviour):
    """Send 'all fine' to half the committee and 'complain about everyone' to the other."""

    name = "equivocal-complaints"

    def equivocates_responses(self, config: SharingConfig) -> bool:
        return True


@register
class WrongConstant(Behaviour):
    """In a reshare, deal a sharing of something other than its own share."""

    name = "wrong-constant"

    def wrong_constant(self, config: SharingConfig) -> bool:
        return config.kind == RunKind.RESHARE


@register
class Withhold(Behaviour):
    """Never send messages of the types in ``messages`` (or ``"all"``) to ``to``."""

    name = "withhold"

    def outbound(self, now: float, out: list[Outbound]) -> list[Outbound]:
        kinds = self.params.get("messages", "all")
        targets = self.params.get("to", "all")

        def dropped(ob: Outbound) -> bool:
            kind_ok = kinds == "all" or type(ob.message).TYPE in kinds
            to_ok = targets == "all" or int(ob.to) in targets
            return kind_ok and to_ok

        return [ob for ob in out if not dropped(ob)]


@register
class WrongPartials(Behaviour):
    """Release partials computed from a wrong share (signed and encrypted as usual)."""

    name = "wrong-partials"

    def release_share(self, share: SecretShare) -> SecretShare:
        return SecretShare(share.index, SecretScalar((share.value.value + 1) % R))


@register
class Collude(Behaviour):
    """Follow the protocol but pool every share with the other corrupt nodes."""

    name = "collude"


@register
class Replay(Behaviour):
    """Record this node's messages of one epoch and replay them once the epoch is over."""

    name = "replay"

    def __init__(self, params: Mapping[str, Any], *, node: int) -> None:
        super().__init__(params, node=node)
        self._recorded: list[Outbound] = []
        self._limit = int(self.params.get("limit", 200))
        self._every = float(self.params.get("every", 5.0))
        self._last = float("-inf")
        self._recording_epoch: int | None = None

    def outbound(self, now: float, out: list[Outbound]) -> list[Outbound]:
        room = self._limit - len(self._recorded)
        if room > 0:
            self._recorded.extend(out[:room])
        return out

    def on_tick(self, ctx: AdversaryContext, now: float) -> None:
        epoch = ctx.epoch_of(self.node)
        if self._recording_epoch is None:
            self._recording_epoch = epoch
            return
        if epoch is None or epoch == self._recording_epoch or now - self._last < self._every:
            return
        self._last = now
        for ob in self._recorded:
            ctx.send(self.node, int(ob.to), ob.message)


@register
class ConflictingProposals(Behaviour):
    """Each epoch, propose removing two different members and a new threshold at once."""

    name = "conflicting-proposals"

    def __init__(self, params: Mapping[str, Any], *, node: int) -> None:
        super().__init__(params, node=node)
        self._done: set[int] = set()

    def on_tick(self, ctx: AdversaryContext, now: float) -> None:
        epoch = ctx.epoch_of(self.node)
        if epoch is None or epoch in self._done:
            return
        self._done.add(epoch)
        others = [i for i in ctx.members() if i != self.node]
        for victim in others[:2]:
            ctx.propose(self.node, RemoveMember(victim))
        ctx.propose(self.node, ChangeThreshold(len(ctx.members())))


@register
class LateMembershipCertificate(Behaviour):
    """Withhold outcome partials, lock reports and chain updates, so a window fails; keep
    the certificate this node completes from the honest partials, and hand the node's chain
    (with it) to the nodes in ``to`` at virtual time ``at``."""

    name = "late-membership-certificate"

    def __init__(self, params: Mapping[str, Any], *, node: int) -> None:
        super().__init__(params, node=node)
        self._at = float(self.params.get("at", 0.0))
        self._sent = False

    def outbound(self, now: float, out: list[Outbound]) -> list[Outbound]:
        def withheld(ob: Outbound) -> bool:
            m = ob.message
            if isinstance(m, OutcomePartial | ChainUpdate):
                return True
            if isinstance(m, BroadcastPayload):
                try:
                    return getattr(Ballot.decode(m.payload), "lock", None) is not None
                except ValueError:
                    return False
            return False

        return [ob for ob in out if not withheld(ob)]

    def on_tick(self, ctx: AdversaryContext, now: float) -> None:
        if self._sent or now < self._at:
            return
        update = ctx.chain_update_of(self.node)
        if update is None:
            return
        self._sent = True
        for to in self._targets("to", ctx.members()):
            ctx.send(self.node, to, update)


def build(specs: Sequence[tuple[str, Mapping[str, Any]]], node: int) -> tuple[Behaviour, ...]:
    out = []
    for name, params in specs:
        cls = BEHAVIOURS.get(name)
        if cls is None:
            raise ValueError(f"unknown behaviour {name!r}; known: {sorted(BEHAVIOURS)}")
        out.append(cls(params, node=node))
    return tuple(out)


# --- the corrupt node's sharing session --------------------------------------------------


class BehaviourTamper:
    """The ``mpc.dkg.DealerTamper`` of a corrupt node: its behaviours' sharing
    hooks, combined, in the epochs ``active`` says (honest in the others)."""

    def __init__(self, behaviours: Sequence[Behaviour], active: Callable[[int], bool]) -> None:
        self.behaviours = tuple(behaviours)
        self.active = active
        """Whether the node is corrupt in an epoch (behaviours may be limited to some epochs)."""

    def _live(self, config: SharingConfig) -> tuple[Behaviour, ...]:
        return self.behaviours if self.active(config.epoch) else ()

    def share_offset(self, config: SharingConfig, recipient: int) -> int:
        return sum(b.share_offset(config, recipient) for b in self._live(config))

    def constant_offset(self, config: SharingConfig) -> int:
        return 1 if any(b.wrong_constant(config) for b in self._live(config)) else 0

    def equivocates_deal(self, config: SharingConfig) -> bool:
        return any(b.equivocates_deal(config) for b in self._live(config))

    def response(
        self, config: SharingConfig, bundle: ResponseBundle
    ) -> ResponseBundle | tuple[ResponseBundle, ResponseBundle]:
        live = self._live(config)
        if not live:
            return bundle
        me = bundle.responder
        if any(b.equivocates_responses(config) for b in live):
            fine = ResponseBundle(me, tuple(Response(r.dealer, False) for r in bundle.responses))
            blame = ResponseBundle(me, tuple(Response(r.dealer, True) for r in bundle.responses))
            return fine, blame
        accused = {r.dealer for r in bundle.responses if r.complaint}
        for b in live:
            accused = b.complaints(config, accused)
        return ResponseBundle(
            me, tuple(Response(r.dealer, r.dealer in accused) for r in bundle.responses)
        )

    def justification(
        self, config: SharingConfig, bundle: JustificationBundle
    ) -> JustificationBundle | None:
        modes = [b.justification(config) for b in self._live(config)]
        mode = next((m for m in modes if m != "honest"), "honest")
        if mode == "none":
            return None
        if mode == "wrong":
            return JustificationBundle(
                bundle.dealer,
                tuple(
                    RevealedShare(
                        s.recipient, scalar_to_bytes((scalar_from_bytes(s.share) + 1) % R)
                    )
                    for s in bundle.shares
                ),
            )
        return bundle


def recording_session_factory(
    sessions: list[SharingSession], tamper: BehaviourTamper | None
) -> Callable[..., SharingSession]:
    """A ``NodeCore`` session factory (``kms.node.model.SessionFactory``) that runs the real
    session with the dealer-tamper hook ``tamper`` (``None``: honest) and records every
    session it starts in ``sessions`` (reports read whom they excluded)."""

    def make(
        config: SharingConfig,
        me: ParticipantIndex,
        identity_key: SigningKey,
        dkg_key: Any,
        *,
        rng: RNG,
        share: SecretShare | None,
        persisted: Mapping[str, bytes],
        live_since: float | None,
    ) -> SharingSession:
        session = SharingSession(
            config,
            me,
            identity_key,
            dkg_key,
            rng=rng,
            share=share,
            persisted=persisted,
            live_since=live_since,
            tamper=tamper,
        )
        sessions.append(session)
        return session

    return make
