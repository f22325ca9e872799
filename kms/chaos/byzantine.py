"""Byzantine members and broken builds of the real node, for the fault lab only.

A byzantine member runs the real ``NodeService`` (``kms.app.setup.build_service``) and bends
it at a few points, with the behaviours of ``sim.adversary``:

* every frame the node's core sends passes through the behaviours' ``outbound`` (messages
  they withhold are dropped; they may send them later on their own initiative);
* the behaviours' ``on_tick`` runs on every timer tick, with the node as its
  ``AdversaryContext`` (a proposal goes through ``NodeService.propose``, as an operator's);
* key-release partials are computed from ``release_share(share)``;
* the node's sharing sessions get the dealer-tamper hook ``sim.adversary.BehaviourTamper``
  (its core is rebuilt with that session factory before the service runs);
* ``GET /v1/chain`` may serve another chain than the node holds (``stale-chain``).

Strategy names are the fault lab's (``STRATEGIES``); ``apply_adversary`` bends a service.

The broken builds (``BROKEN``) undo a protection in this process only, by patching the
code in memory: nothing in production code can select them.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kms.node import ballots as node_ballots
from kms.node import release as node_release
from kms.node.core import NodeCore
from kms.node.persist import restore
from kms.node.service import NodeService
from mpc.broadcast import BroadcastPayload, Outbound
from mpc.cert import EpochCertificate
from mpc.codec import Message
from mpc.dkg import SharingSession
from mpc.dkg.messages import CertificatePartial
from mpc.ids import ParticipantIndex
from mpc.membership import Ballot, OutcomePartial, link_position
from mpc.membership.messages import ChainUpdate, Change, Refresh
from mpc.membership.window import DecisionWindow, OutcomeLocked, Tally
from mpc.secret import RNG, SecretShare
from sim import adversary
from sim.adversary import Behaviour

log = logging.getLogger("quorum_kms.chaos")

# --- the strategies ----------------------------------------------------------------------

MESSAGE_KINDS = ("outcome-partials", "certificate-partials", "lock-reports", "chain-updates")
"""What ``withhold-partials`` can withhold (its ``messages`` parameter; default: all four)."""


def _kind_of(message: Message) -> str | None:
    if isinstance(message, OutcomePartial):
        return "outcome-partials"
    if isinstance(message, ChainUpdate):
        return "chain-updates"
    if isinstance(message, CertificatePartial):
        return "certificate-partials"
    if isinstance(message, BroadcastPayload):
        try:
            if getattr(Ballot.decode(message.payload), "lock", None) is not None:
                return "lock-reports"
        except ValueError:
            return None
    return None


class WithholdPartials(Behaviour):
    """Withhold the messages of the kinds in ``messages`` (``MESSAGE_KINDS``, or ``"all"``,
    the default; a withheld ballot that reports a lock is the whole ballot); after
    ``release_after`` seconds (``None``: never) send what was withheld to the members in
    ``to`` (``"all"``, a list of indices, or a count of the lowest others)."""

    name = "withhold-partials"

    def __init__(self, params: Mapping[str, Any], *, node: int) -> None:
        super().__init__(params, node=node)
        kinds = self.params.get("messages", "all")
        if kinds == "all":
            kinds = list(MESSAGE_KINDS)
        if isinstance(kinds, str) or not isinstance(kinds, list):
            raise ValueError('withhold-partials: messages is "all" or a list of kinds')
        unknown = set(kinds) - set(MESSAGE_KINDS)
        if unknown:
            raise ValueError(f"withhold-partials: unknown messages {sorted(unknown)}")
        self.kinds = frozenset(kinds)
        after = self.params.get("release_after")
        self.release_after = None if after is None else float(after)
        self.limit = int(self.params.get("limit", 1000))
        self.held: list[tuple[float, Outbound]] = []
        self.withheld = 0
        self.released = 0

    def outbound(self, now: float, out: list[Outbound]) -> list[Outbound]:
        kept = []
        for ob in out:
            if _kind_of(ob.message) in self.kinds:
                self.withheld += 1
                if len(self.held) < self.limit:
                    self.held.append((now, ob))
            else:
                kept.append(ob)
        return kept

    def on_tick(self, ctx: adversary.AdversaryContext, now: float) -> None:
        if self.release_after is None or not self.held:
            return
        targets = self._targets("to", ctx.members())
        due = [(t, ob) for t, ob in self.held if now - t >= self.release_after]
        self.held = [(t, ob) for t, ob in self.held if now - t < self.release_after]
        for _, ob in due:
            if int(ob.to) in targets:
                ctx.send(self.node, int(ob.to), ob.message)
                self.released += 1


class EquivocateDeal(adversary.Equivocate):
    """Sign two different deals in every sharing run and send one to each half."""

    name = "equivocate-deal"


class SpamRefresh(Behaviour):
    """Propose a refresh every ``every`` seconds (default 1), each through the node's core
    as an operator's proposal is."""

    name = "spam-refresh"

    def __init__(self, params: Mapping[str, Any], *, node: int) -> None:
        super().__init__(params, node=node)
        self.every = float(self.params.get("every", 1.0))
        self._last = float("-inf")
        self.proposed = 0
        self.refused = 0

    def on_tick(self, ctx: adversary.AdversaryContext, now: float) -> None:
        if now - self._last < self.every:
            return
        self._last = now
        if ctx.propose(self.node, Refresh()):
            self.proposed += 1
        else:
            self.refused += 1


class StaleChain(Behaviour):
    """``GET /v1/chain`` serves the chain truncated to an older epoch (``mode = "truncate"``,
    ``behind`` epochs behind the head, default 1), or the held chain with the certificate of
    a failed sharing attempt appended when the node has one (``mode = "dangling"``; else
    the truncated chain)."""

    name = "stale-chain"

    def __init__(self, params: Mapping[str, Any], *, node: int) -> None:
        super().__init__(params, node=node)
        self.mode = str(self.params.get("mode", "truncate"))
        if self.mode not in ("truncate", "dangling"):
            raise ValueError(f"stale-chain: unknown mode {self.mode!r}")
        self.behind = int(self.params.get("behind", 1))


STRATEGIES: dict[str, Callable[[Mapping[str, Any], int], Behaviour]] = {
    "withhold-partials": lambda p, node: WithholdPartials(p, node=node),
    "equivocate-deal": lambda p, node: EquivocateDeal(p, node=node),
    "wrong-partials": lambda p, node: adversary.WrongPartials(p, node=node),
    "spam-refresh": lambda p, node: SpamRefresh(p, node=node),
    "stale-chain": lambda p, node: StaleChain(p, node=node),
}
"""The fault lab's byzantine strategies, by the names scenarios and reports use."""


def parse_adversary(raw: str | Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``--adversary``'s JSON (``[{"behaviour": NAME, "params": {...}}]``) checked: a
    ``ValueError`` names what is wrong."""
    specs = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(specs, list):
        raise ValueError("the adversary is a JSON list of {behaviour, params} objects")
    out = []
    for spec in specs:
        if not isinstance(spec, dict) or set(spec) - {"behaviour", "params"}:
            raise ValueError(f"not a {{behaviour, params}} object: {spec!r}")
        name = spec.get("behaviour")
        if name not in STRATEGIES:
            raise ValueError(f"unknown behaviour {name!r}; known: {sorted(STRATEGIES)}")
        params = spec.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"params of {name} must be an object")
        out.append((str(name), dict(params)))
    try:
        build(out, 0)  # every parameter checked now, not when the node starts
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad params: {exc}") from None
    return out


def build(specs: Sequence[tuple[str, Mapping[str, Any]]], node: int) -> tuple[Behaviour, ...]:
    return tuple(STRATEGIES[name](params, node) for name, params in specs)


# --- bending a node service --------------------------------------------------------------


@dataclass
class Byzantine:
    """A service bent by its behaviours; also its ``AdversaryContext``."""

    service: NodeService
    behaviours: tuple[Behaviour, ...]
    sessions: list[SharingSession] = field(default_factory=list)
    sent: int = 0
    """Frames sent on the behaviours' own initiative."""

    # --- AdversaryContext ---

    def epoch_of(self, node: int) -> int | None:
        st = self.service.core.state
        return st.epoch if st is not None else None

    def members(self) -> list[int]:
        st = self.service.core.state
        return [int(i) for i in st.committee.indices] if st is not None else []

    def send(self, sender: int, to: int, message: Message) -> None:
        for ob in self.service.driver.frames([Outbound(ParticipantIndex(to), message)]):
            self.service._queue_frame(ob.to, ob.frame, ob.message.TYPE)
            self.sent += 1

    def chain_update_of(self, node: int) -> Message | None:
        return self.service.core.chain_update(0)

    def propose(self, node: int, change: Change) -> bool:
        try:
            self.service.propose(change)
        except Exception as exc:
            log.info("byzantine proposal refused", extra={"fields": {"error": str(exc)}})
            return False
        return True

    # --- hooks ---

    def outbound(self, now: float, out: list[Outbound]) -> list[Outbound]:
        for b in self.behaviours:
            out = b.outbound(now, out)
        return out

    def tick(self, now: float) -> None:
        for b in self.behaviours:
            b.on_tick(self, now)

    def release_share(self, share: SecretShare | None) -> SecretShare | None:
        if share is None:
            return None
        for b in self.behaviours:
            share = b.release_share(share)
        return share

    def chain_bytes(self, honest: Callable[[], bytes]) -> bytes:
        stale = next((b for b in self.behaviours if isinstance(b, StaleChain)), None)
        if stale is None:
            return honest()
        links = list(self.service.core.chain)
        if stale.mode == "dangling":
            dangling = self.dangling_certificate()
            if dangling is not None:
                return ChainUpdate.of([*links, dangling]).encode()
        st = self.service.core.state
        if st is None:
            return honest()
        # Links up to the epoch certificate ``behind`` epochs before the head (genesis is
        # position 0, ``E_e`` is at 2e and ``M_e`` at 2e + 1).
        last = 2 * max(0, st.epoch - stale.behind)
        kept = [x for x in links if link_position(x) <= last]
        return ChainUpdate.of(kept or links[:1]).encode()

    def dangling_certificate(self) -> EpochCertificate | None:
        """The certificate of a sharing attempt that failed here but whose transcript
        collected enough partials (none when every attempt this node saw succeeded)."""
        chain = {x.encode() for x in self.service.core.chain}
        for s in reversed(self.sessions):
            cert = getattr(s, "certificate", None)
            if isinstance(cert, EpochCertificate) and cert.encode() not in chain:
                return cert
        return None


def _session_factory(byz: Byzantine) -> Callable[..., SharingSession]:
    tamper = adversary.BehaviourTamper(byz.behaviours, lambda epoch: True)
    return adversary.recording_session_factory(byz.sessions, tamper)


def apply_adversary(
    service: NodeService,
    specs: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    rebuild_core: bool = True,
    rng: RNG | None = None,
) -> Byzantine:
    """Bend ``service`` (built, not running yet) with the behaviours ``specs``.

    ``rebuild_core``: rebuild the service's core from its store with the tampering session
    factory (needed for ``equivocate-deal``; an in-process test committee whose cores were
    built by hand passes ``False`` and gets every other hook).
    """
    import os

    byz = Byzantine(service, build(specs, int(service.config.index)))
    if rebuild_core:
        old = service.core
        service.core = NodeCore(
            service.config,
            service.identity,
            service.dkg_key,
            rng=rng or os.urandom,
            restored=restore(service.store),
            check=old._check,
            session_factory=_session_factory(byz),
        )
        service._add_peers(service.driver.learn_participants(), everyone=True)
    driver = service.driver
    step, advance = driver.step, driver.advance_time
    clock = service.clock

    def bent_step() -> Any:
        out = step()
        pairs = [(Outbound(m.to, m.message), m) for m in out.messages]
        kept = {id(ob) for ob in byz.outbound(clock.now(), [ob for ob, _ in pairs])}
        out.messages = [m for ob, m in pairs if id(ob) in kept]
        return out

    def bent_advance(now: float) -> None:
        advance(now)
        byz.tick(now)

    driver.step = bent_step  # type: ignore[method-assign]
    driver.advance_time = bent_advance  # type: ignore[method-assign]
    # Policy gossip (the service's own messages, ``SHELL_MESSAGES``) passes them too.
    gossip = service.policy_sync._send

    def bent_gossip(ob: Outbound) -> None:
        for kept in byz.outbound(clock.now(), [ob]):
            gossip(kept)

    service.policy_sync._send = bent_gossip
    keys = service.keys
    share_and_epoch = keys._share_and_epoch

    def bent_share() -> tuple[SecretShare | None, int]:
        share, epoch = share_and_epoch()
        return byz.release_share(share), epoch

    keys._share_and_epoch = bent_share
    honest_chain = service.chain_bytes
    service.chain_bytes = lambda: byz.chain_bytes(honest_chain)  # type: ignore[method-assign]
    return byz


# --- broken builds -----------------------------------------------------------------------


@contextlib.contextmanager
def skip_policy_check() -> Iterator[None]:
    """The node releases key partials whatever the quote's measurement and the app's
    policy say (a verified quote and a known app are still needed)."""
    saved = vars(node_release)["admits"]

    def admits_anything(*args: Any, **kwargs: Any) -> None:
        return None

    vars(node_release)["admits"] = admits_anything
    try:
        yield
    finally:
        vars(node_release)["admits"] = saved


class _TallyWindow(DecisionWindow):
    """A decision window as before the agreement fix: no lock is kept or reported."""

    def __init__(self, *args: Any, lock: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, lock=None, **kwargs)

    def events(self) -> list[Any]:
        return [e for e in super().events() if not isinstance(e, OutcomeLocked)]


@contextlib.contextmanager
def window_tally(*, keep_lock: bool = False) -> Iterator[None]:
    """Membership windows as before the agreement fix: each member carries its tally (the
    proposals and approvals delivered in earlier windows of the epoch) into the next window
    in memory, and signs without a lock (none is persisted or reported, so a later window
    decides afresh and may sign another outcome). Both are needed to re-open the fork: with
    the lock alone, members that signed in a failed window re-certify that outcome.
    ``keep_lock`` carries the tally but keeps the lock (to show that the lock alone holds)."""
    saved_window, saved_step = vars(node_ballots)["DecisionWindow"], node_ballots.Ballots.step

    def step(self: node_ballots.Ballots) -> None:
        before = self.window
        carried: dict[bytes, Tally] = self.__dict__.setdefault("_carried_tally", {})
        saved_step(self)
        if before is not None and self.window is not before:
            head = before.state.head_hash
            carried[head] = before.tally
        new = self.window
        if new is not None and new is not before:
            old = carried.get(new.state.head_hash)
            if old is not None:
                for pid, p in old.proposals.items():
                    new.tally.proposals.setdefault(pid, p)
                for pid, who in old.approvals.items():
                    new.tally.approvals.setdefault(pid, set()).update(who)

    vars(node_ballots)["DecisionWindow"] = _TallyWindow
    node_ballots.Ballots.step = step  # type: ignore[method-assign]
    if keep_lock:
        vars(node_ballots)["DecisionWindow"] = saved_window
    try:
        yield
    finally:
        vars(node_ballots)["DecisionWindow"] = saved_window
        node_ballots.Ballots.step = saved_step  # type: ignore[method-assign]


BROKEN: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "skip-policy-check": skip_policy_check,
    "window-tally": window_tally,
}
"""The broken builds the node program can run (``--broken NAME``) for the checker's
validation; ``skip-sigma-check`` is the lab client's, not the node's."""
