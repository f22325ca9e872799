"""Chain sync decisions: which verified chain the node follows.

``ChainSync`` takes a peer's ``ChainUpdate``: links that extend the node's head
are adopted one by one; a chain that does not (a longer gap, or another fork)
is verified as genesis plus a recent tail and replaces the node's when its head
ranks higher (``replace``: the epoch switch that follows, with the old share
retained when the new chain keeps its epoch). It also restores the stored chain
on start. It holds no state of its own: the links and their states are the
``ChainFollower``'s; it changes the node's view through ``SyncPort``, which
``kms.node.core.NodeCore`` provides (wide, like ``AdoptionPort``: replacing the
chain is the node's view changing).
"""

from __future__ import annotations

import itertools
from typing import Protocol

from kms.node.adoption import Adoption
from kms.node.ballots import Ballots
from kms.node.chain_follow import ChainFollower
from kms.node.genesis_trust import GenesisNotTrusted, GenesisTrust
from kms.node.governance import Governance
from kms.node.model import (
    ChainReplaced,
    ChainTrimmed,
    EpochSwitched,
    Link,
    NodeEvent,
    NodeView,
)
from kms.node.retention import ShareHolders
from kms.node.sharing_runs import SharingRuns
from mpc.broadcast import Outbound
from mpc.cert import EpochCertificate, RunKind
from mpc.codec import MessageDecodeError
from mpc.dkg.messages import Participant
from mpc.errors import InvalidEncoding, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import (
    ChainError,
    ChainState,
    extend,
    genesis_state,
    link_position,
    rank,
    verify_recent,
)
from mpc.membership.messages import (
    ChainRequest,
    ChainUpdate,
    decode_link,
)
from mpc.secret import SecretShare


class SyncPort(NodeView, Protocol):
    """What ``ChainSync`` reads and changes of the node (``NodeCore``)."""

    share: SecretShare | None
    chain: list[Link]
    _epoch_states: dict[int, ChainState]

    @property
    def _participants(self) -> dict[ParticipantIndex, Participant]: ...
    @property
    def _events(self) -> list[NodeEvent]: ...
    @property
    def _outbox(self) -> list[Outbound]: ...
    @property
    def sharing(self) -> SharingRuns: ...
    @property
    def ballots(self) -> Ballots: ...
    @property
    def adoption(self) -> Adoption: ...
    @property
    def holders(self) -> ShareHolders: ...
    @property
    def trust(self) -> GenesisTrust: ...
    @property
    def governance(self) -> Governance: ...
    @property
    def follower(self) -> ChainFollower: ...
    def _note_removed(self, before: ChainState, after: ChainState) -> None: ...
    def _trim(self) -> None: ...
    def _mpk_of(self, cert: EpochCertificate) -> G2: ...
    def _check_genesis(self, cert: EpochCertificate) -> None: ...
    def _trust_genesis(self, cert: EpochCertificate) -> None: ...
    def _genesis_adopted(self) -> None: ...


class ChainSync:
    """Which verified chain the node follows (no state of its own)."""

    def __init__(self, port: SyncPort) -> None:
        self._c = port

    def receive(self, peer: ParticipantIndex, update: ChainUpdate) -> None:
        """Adopt what a peer's chain proves beyond ours.

        Links that extend our head are checked one by one (``extend``). Links
        that do not (we missed more than the peer sent, or the peer holds
        another fork) are verified as genesis plus a recent tail from their
        head (``verify_recent``) and replace ours when their head ranks higher
        (``rank``: the highest ``(epoch, attempt)`` wins); a lower or equal
        conflicting head is ignored. A genesis other than ours must pass the
        same genesis check as any first chain.
        """
        links: list[Link] = []
        for kind, raw in zip(update.kinds, update.links, strict=True):
            try:
                links.append(decode_link(kind, raw))
            except MessageDecodeError as exc:
                raise RemoteProtocolError(f"malformed chain link: {exc}", [peer]) from exc
        if not links:
            return
        try:
            if self._c.state is not None:
                known = {x.fingerprint() for x in self._c.chain}
                rest = [x for x in links if x.fingerprint() not in known]
                state = self._c.state
                extends = True
                for link in rest:
                    try:
                        state = extend(state, link)
                    except ChainError:
                        extends = False
                        break
                if extends:
                    for link in rest:
                        self._c.adoption.adopt_link(link, state_after=None)
                    return
            first = links[0]
            if isinstance(first, EpochCertificate) and first.transcript.kind == RunKind.DKG:
                if self._c.chain and first.fingerprint() == self._c.chain[0].fingerprint():
                    mpk = self._c._mpk_of(first)
                else:
                    self._c._check_genesis(first)
                    mpk = self._c._mpk_of(first)
                    genesis_state(mpk, first)
                    # A genesis this node does not hold: adopted only if trusted (pinned,
                    # computed here, or endorsed by t genesis members).
                    if self._c.state is None:
                        self._c.trust.offer(first, self._c.trust.offered.pop(peer, ()))
                    try:
                        self._c._trust_genesis(first)
                    except GenesisNotTrusted as exc:
                        if self._c.state is None:
                            self._c.trust.keep_candidate(peer, first)
                        raise RemoteProtocolError(f"genesis refused: {exc}", [peer]) from exc
                states = verify_recent(links, mpk=mpk)
                new_chain = links
            else:
                # A tail without genesis: verified from its first epoch certificate
                # under our key, and joined to our links where it follows one of them.
                if self._c.state is None:
                    raise ChainError("a chain must start at genesis")
                tail = links
                while tail and not isinstance(tail[0], EpochCertificate):
                    tail = tail[1:]
                if not tail:
                    self._c._outbox.append(Outbound(peer, ChainRequest(0)))
                    return
                states = verify_recent(tail, mpk=self._c.state.mpk)
                new_chain = self._c.follower.join(tail)
        except (ChainError, InvalidEncoding) as exc:
            raise RemoteProtocolError(f"chain link refused: {exc}", [peer]) from exc
        if self._c.state is not None and rank(states[-1]) <= rank(self._c.state):
            return  # behind us, or a fork that does not reach a higher (epoch, attempt)
        if new_chain is not links:
            try:
                states = verify_recent(new_chain, mpk=self._c.state.mpk)  # type: ignore[union-attr]
            except ChainError:  # pragma: no cover - join keeps only links the tail follows
                new_chain = [self._c.chain[0], *new_chain[-len(tail) :]]
                states = verify_recent(new_chain, mpk=self._c.state.mpk)  # type: ignore[union-attr]
        self.replace(new_chain, states)

    def replace(self, links: list[Link], states: list[ChainState]) -> None:
        """Switch to a verified chain (genesis + recent tail) that ranks above ours."""
        old_state = self._c.state
        head = states[-1]
        self._c.follower.replace(links, states)
        self._c._events.append(ChainReplaced(tuple(links)))
        gone = {e for e in self._c.holders.retained if self._c._epoch_states.get(e) is None}
        for e in gone:
            self._c.holders.drop(e)
        run = self._c.sharing.run
        if run is not None and run.config.epoch <= head.epoch:
            attempt = head.certificate.transcript.attempt
            if (run.config.epoch, run.config.attempt) != (head.epoch, attempt):
                self._c.sharing.run = None  # a run for an epoch the chain has settled otherwise
        share = self._c.share
        kept = {x.fingerprint() for x in links}
        if (
            share is not None
            and old_state is not None
            and old_state.epoch < head.epoch
            and old_state.certificate.fingerprint() in kept
        ):
            # Caught up past our epoch, which the new chain keeps: our share of it is
            # retained, as after any reshare, until the new epoch's members acknowledge.
            self._c.holders.retained[old_state.epoch] = share
            retain: int | None = old_state.epoch
            share = None
        else:
            retain = None
        if share is not None and share.value.value * G2.generator() != head.public_shares.get(
            share.index
        ):
            share = None  # a share of another polynomial
        if share is None and self._c.me in head.committee.indices:
            # A higher attempt won: if this node finalized it, its persisted share is the
            # epoch's share (else none here, and a prompt refresh follows).
            share = self._c.sharing.persisted_share(
                head.certificate, states[-2] if len(states) > 1 else None
            )
        self._c.adoption.set_state(head)
        if retain is not None:
            self._c.holders.track(retain, head.certificate, self._c._participants)
        self._c.share = share if self._c.me in head.committee.indices else None
        self._c.ballots.window = None
        self._c.governance.clear()
        self._c.sharing.attempt = 0
        self._c.holders.new_epoch(set(old_state.committee.indices) if old_state else set())
        self._c._events.append(
            EpochSwitched(
                head.epoch, head.certificate, self._c.share, head, self._c.sharing.keep_runs()
            )
        )
        self._c._trim()
        # As after any epoch switch: tell the others this node holds a share, and count
        # the acknowledgements that came early.
        if old_state is None:
            self._c._genesis_adopted()
        self._c.adoption.acknowledge(head.certificate)
        self._c.adoption.take_early_acks(head)

    def restore(self, links: list[Link]) -> ChainState | None:
        """Restore the stored chain; returns the state before its last epoch certificate."""
        first = links[0]
        if not isinstance(first, EpochCertificate):
            raise LocalProtocolError("stored chain does not start with the genesis certificate")
        self._c._check_genesis(first)
        pinned = self._c.config.genesis_mpk
        if pinned is not None and first.transcript.mpk != pinned:
            raise LocalProtocolError("stored genesis certificate is not for the pinned genesis_mpk")
        genesis_state(self._c._mpk_of(first), first)
        for link in links:
            self._c.follower.note_policy(link)
        # Only the retained tail is verified (and kept): a head checked under the
        # pinned key is as strong as the walk from genesis.
        keep = self._c.follower.retained_tail(links[1:], self._c.config.chain_retention)
        states = verify_recent([first, *keep], mpk=self._c._mpk_of(first))
        self._c.chain = [first, *keep]
        self._c._epoch_states = {st.epoch: st for st in states}
        if len(keep) < len(links) - 1:
            self._c._events.append(ChainTrimmed(link_position(keep[0]) if keep else 1))
        for prev, st in itertools.pairwise(states):
            self._c._note_removed(prev, st)
        self._c.adoption.set_state(states[-1])
        self._c.trust.take_pending(first, persist=False)
        return states[-2] if len(states) > 1 else None
