"""Genesis trust: which genesis certificate a node may adopt, and the endorsements behind it.

A certificate's signature, checked under the MPK written in it, proves only
that someone knows that key's secret. The key is the committee's only if the
configuration pins it (``genesis_mpk``), or this node's own genesis run
computed the same transcript, or ``t`` genesis members endorsed it with their
identity keys (``GenesisEndorsement``). ``GenesisTrust`` holds:

* the verified endorsements of the adopted genesis (persisted under
  ``GENESIS_ENDORSEMENTS_RUN``, relayed with the chain to peers starting from
  genesis);
* endorsements received before this node had a chain (a few per genesis
  member, checked on use);
* the transcripts this node's own genesis runs finalized;
* genesis certificates peers offered that were not trusted yet (candidates),
  and the endorsements each peer relayed before its chain (bounded).

The node core passes in what it knows (its genesis link, whether it holds a
chain) and carries out sends and stores through a ``TrustPort``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

from kms.node.model import GENESIS_ENDORSEMENTS_RUN
from mpc.cert import EpochCertificate
from mpc.codec import Message
from mpc.dkg.messages import Participant
from mpc.errors import InvalidSignature, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.membership import ChainError
from mpc.membership.messages import GenesisEndorsement, endorsing_members
from mpc.sig import SigningKey

MAX_PENDING_ENDORSEMENTS = 4
"""Endorsements kept per genesis member while this node has no chain yet."""
MAX_GENESIS_OFFERS = 64
"""Peers whose unendorsed chain (and relayed endorsements) a node without a chain keeps."""


class GenesisNotTrusted(ChainError):
    """A genesis certificate this node may not adopt: fewer than ``t`` genesis members
    endorsed it, or it is not for the pinned MPK."""


class TrustPort(Protocol):
    """What genesis trust asks of the node core."""

    def send(self, to: ParticipantIndex, message: Message) -> None: ...

    def store_public(self, run: bytes, key: str, data: bytes) -> None: ...

    def finalized_genesis(self, cert: EpochCertificate) -> bool:
        """This node finalized the run ``cert`` certifies before a restart (its stored share
        matches the certificate's public share and its stored partial names the transcript)."""
        ...


class GenesisTrust:
    """The endorsements of this node's genesis, and the genesis offers it waits on."""

    def __init__(
        self,
        me: ParticipantIndex,
        key: SigningKey,
        genesis: Sequence[Participant],
        threshold: int,
        pinned_mpk: bytes | None,
        port: TrustPort,
    ) -> None:
        self.me = me
        self._key = key
        self.genesis = tuple(genesis)
        self.threshold = threshold
        self.pinned_mpk = pinned_mpk
        self.port = port
        self.endorsements: dict[int, GenesisEndorsement] = {}
        """Verified endorsements of the genesis this node holds, by signer."""
        self.pending: dict[int, deque[GenesisEndorsement]] = {}
        """Endorsements received before this node had a chain (checked on use)."""
        self.own: deque[bytes] = deque(maxlen=16)
        """Transcript hashes this node's own genesis runs finalized."""
        self.candidates: dict[ParticipantIndex, EpochCertificate] = {}
        """Genesis certificates offered by peers, not endorsed (yet): the rest of a
        peer's chain is asked for again once its genesis is adopted."""
        self.offered: dict[ParticipantIndex, tuple[GenesisEndorsement, ...]] = {}
        """The endorsements each peer relayed before its chain (one bundle per peer)."""

    def untrusted(self, cert: EpochCertificate) -> str | None:
        """Why this node may not adopt ``cert`` as its genesis, or ``None`` if it may."""
        tr = cert.transcript
        if self.pinned_mpk is not None:
            if tr.mpk != self.pinned_mpk:
                return "genesis certificate is not for the pinned genesis_mpk"
            return None
        if tr.hash() in self.own:
            return None
        if self.me in tr.committee_indices() and self.port.finalized_genesis(cert):
            # Its run finalized this transcript before a restart: the stored share matches
            # the certificate's public share and the stored partial names its transcript.
            return None
        pool = [e for queue in self.pending.values() for e in queue]
        signers = endorsing_members(tr, pool, self.genesis)
        if len(signers) < self.threshold:
            return (
                f"genesis certificate endorsed by {len(signers)} genesis members, "
                f"{self.threshold} needed"
            )
        return None

    def pend(self, e: GenesisEndorsement) -> None:
        """Keep an endorsement from a genesis member for when this node has a chain."""
        if not any(p.index == e.signer for p in self.genesis):
            return
        queue = self.pending.setdefault(e.signer, deque(maxlen=MAX_PENDING_ENDORSEMENTS))
        if e not in queue:
            queue.append(e)

    def add(
        self, genesis: EpochCertificate | None, e: GenesisEndorsement, *, persist: bool = True
    ) -> bool:
        """Keep ``e`` if it endorses ``genesis`` (this node's); True if it was new and valid.
        Raises ``InvalidSignature`` for an endorsement of this genesis that does not verify."""
        if genesis is None or e.signer in self.endorsements:
            return False
        if e.transcript_hash != genesis.transcript.hash():
            return False
        e.verify(genesis.transcript, self.genesis)
        self.endorsements[e.signer] = e
        if persist:
            self.port.store_public(GENESIS_ENDORSEMENTS_RUN, str(e.signer), e.encode())
        return True

    def take_pending(self, genesis: EpochCertificate, *, persist: bool) -> None:
        """Check and keep the endorsements gathered before ``genesis`` was adopted."""
        for queue in list(self.pending.values()):
            for e in queue:
                try:
                    self.add(genesis, e, persist=persist)
                except InvalidSignature:
                    continue
        self.pending.clear()

    def adopted(self, genesis: EpochCertificate, peers: Sequence[ParticipantIndex]) -> None:
        """Genesis is adopted: keep the endorsements gathered so far, and endorse it if this
        node computed it."""
        self.take_pending(genesis, persist=True)
        self.candidates.clear()
        self.maybe_endorse(genesis, peers)

    def maybe_endorse(
        self, genesis: EpochCertificate | None, peers: Sequence[ParticipantIndex]
    ) -> None:
        """Endorse ``genesis`` if this node's own genesis run computed its transcript, and send
        the endorsement to ``peers``."""
        if genesis is None or int(self.me) in self.endorsements:
            return
        if not any(p.index == self.me for p in self.genesis):
            return
        tr = genesis.transcript
        if tr.hash() not in self.own and not self.port.finalized_genesis(genesis):
            return
        mine = GenesisEndorsement.create(self._key, int(self.me), tr)
        self.add(genesis, mine)
        for i in sorted(peers):
            if i != self.me:
                self.port.send(i, mine)

    def receive(
        self, peer: ParticipantIndex, e: GenesisEndorsement, genesis: EpochCertificate | None
    ) -> bool:
        """A member's own endorsement. With a chain (``genesis``), kept if it verifies;
        without, pended. Returns whether the candidates should be tried again."""
        if e.signer != int(peer):
            raise RemoteProtocolError("genesis endorsement relayed for another signer", [peer])
        if genesis is not None:
            try:
                self.add(genesis, e)
            except InvalidSignature as exc:
                raise RemoteProtocolError(f"bad genesis endorsement: {exc}", [peer]) from exc
            return False
        self.pend(e)
        return True

    def offer(self, genesis: EpochCertificate, relayed: tuple[GenesisEndorsement, ...]) -> None:
        """Keep the relayed endorsements that verify for ``genesis``."""
        for e in relayed:
            try:
                e.verify(genesis.transcript, self.genesis)
            except InvalidSignature:
                continue
            self.pend(e)

    def receive_relayed(
        self,
        peer: ParticipantIndex,
        relayed: tuple[GenesisEndorsement, ...],
        genesis: EpochCertificate | None,
    ) -> bool:
        """Endorsements a peer relays with its chain. Returns whether the candidates should be
        tried again."""
        if genesis is not None:
            # At most one check per genesis member this node lacks an endorsement of, however
            # many entries the message repeats: a bundle costs at most n signature checks.
            members = {p.index for p in self.genesis}
            tried: set[int] = set()
            for e in relayed:
                if e.signer in tried or e.signer in self.endorsements or e.signer not in members:
                    continue
                tried.add(e.signer)
                try:
                    self.add(genesis, e)
                except InvalidSignature:
                    continue
            return False
        candidate = self.candidates.get(peer)
        if candidate is None:
            # The chain follows: check these against its genesis then.
            self.offered.pop(peer, None)
            self.offered[peer] = relayed
            while len(self.offered) > MAX_GENESIS_OFFERS:
                del self.offered[next(iter(self.offered))]
            return False
        self.offer(candidate, relayed)
        return True

    def keep_candidate(self, peer: ParticipantIndex, genesis: EpochCertificate) -> None:
        """A genesis a peer offered that is not trusted yet (bounded, newest kept)."""
        self.candidates.pop(peer, None)
        self.candidates[peer] = genesis
        while len(self.candidates) > MAX_GENESIS_OFFERS:
            del self.candidates[next(iter(self.candidates))]

    def bundle(self) -> tuple[GenesisEndorsement, ...]:
        """The endorsements this node holds, by signer (relayed before the chain)."""
        return tuple(self.endorsements[s] for s in sorted(self.endorsements))
