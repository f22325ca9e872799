"""Simulated nodes: their keys, what they persist, and how adversaries are plugged in.

A simulated node runs the real ``NodeCore`` behind the real ``NodeDriver``; its
``session_factory`` only records the sharing sessions the core starts (the report
reads whom they excluded) and, on a corrupt node, passes the session the dealer-tamper
hook ``adversary.BehaviourTamper``. ``SimStore`` is what survives a crash: the node's events are applied to
it by ``kms.node.persist``, exactly as ``kms.node.service`` applies them to SQLite.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kms.node.core import NodeCore
from kms.node.driver import NodeDriver
from kms.node.model import NodeConfig, Restored, SessionFactory, StoreRecord
from kms.node.persist import restore, share_from_bytes
from kms.store import NodeStore
from kms.store.errors import StoreError
from kms.store.sealer import TEESealer
from mpc import hpke
from mpc.cert import EpochCertificate
from mpc.dkg import DealerExcluded, SharingSession
from mpc.dkg.messages import Participant
from mpc.secret import SecretShare
from mpc.sig import CTX_DKG_KEY, SigningKey
from sim import adversary


@dataclass
class NodeKeys:
    identity: SigningKey
    dkg_key: hpke.PrivateKey
    participant: Participant
    identity_seed: bytes = field(repr=False)
    dkg_seed: bytes = field(repr=False)


def node_keys(index: int, seed: int) -> NodeKeys:
    """A node's identity and DKG keys, from the scenario seed (simulation only)."""
    rnd = random.Random(f"quorum-kms/sim/{seed}/keys/{index}")
    identity_seed, dkg_seed = rnd.randbytes(32), rnd.randbytes(32)
    ident = SigningKey.from_seed(identity_seed)
    dkg, dkg_pub = hpke.derive_key_pair(dkg_seed)
    sig = ident.sign(CTX_DKG_KEY, Participant.dkg_key_statement(index, dkg_pub))
    part = Participant(index, ident.verify_key().to_bytes(), dkg_pub, sig)
    return NodeKeys(ident, dkg, part, identity_seed, dkg_seed)


@dataclass
class SimEpoch:
    epoch: int
    share: bytes | None = field(repr=False)


@dataclass
class SimStore:
    """What a node has persisted: it survives a crash, the core does not.

    An in-memory ``kms.node.persist.NodeStateStore`` with ``kms.store.NodeStore``'s
    contract for the operations node events make: the simulator applies a node's
    events to it with ``kms.node.persist.apply_events``, as the service does to its
    SQLite store, and restores a crashed node with ``kms.node.persist.restore``."""

    records_by_run: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    links: dict[int, tuple[str, int, bytes]] = field(default_factory=dict)
    """Chain links by position (``E_e`` at ``2e``, ``M_e`` at ``2e + 1``)."""
    epochs: set[int] = field(default_factory=set)
    """Epochs with an epoch record (``switch_epoch``; ``trim_chain`` drops old ones)."""
    shares: dict[int, bytes] = field(default_factory=dict, repr=False)
    current: int | None = None
    meta: dict[str, bytes] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.links and not self.records_by_run

    # --- records ---

    def put_records(self, run: bytes, records: Sequence[StoreRecord]) -> None:
        rows = self.records_by_run.setdefault(run, {})
        for r in records:
            rows[r.key] = r.data

    def records(self, run: bytes) -> dict[str, bytes]:
        return dict(self.records_by_run.get(run, {}))

    def runs(self) -> list[bytes]:
        return sorted(self.records_by_run)

    def delete_records(self, run: bytes) -> int:
        return len(self.records_by_run.pop(run, {}))

    # --- chain ---

    @staticmethod
    def _position(kind: str, epoch: int) -> int:
        return 2 * epoch + (kind == "membership")

    def append_link(self, kind: str, epoch: int, data: bytes) -> int:
        position = self._position(kind, epoch)
        old = self.links.get(position)
        if old is not None and old[2] != data:
            raise StoreError(f"the chain already holds another {kind} certificate for {epoch}")
        self.links[position] = (kind, epoch, data)
        return position

    def chain(self) -> list[tuple[str, int, bytes]]:
        return [self.links[p] for p in sorted(self.links)]

    def trim_chain(self, position: int) -> None:
        first = int(position) // 2
        self.epochs = {
            e
            for e in self.epochs
            if not (0 < e < first and e not in self.shares and e != self.current)
        }
        for p in [p for p in self.links if 0 < p < position]:
            kind, epoch, _ = self.links[p]
            if not (kind == "epoch" and epoch in self.epochs):
                del self.links[p]

    def replace_chain(self, links: Iterable[tuple[str, int, bytes]]) -> None:
        new = {self._position(kind, epoch): (kind, epoch, data) for kind, epoch, data in links}
        for p, (kind, epoch, data) in list(self.links.items()):
            if new.get(p) == (kind, epoch, data) or kind != "epoch":
                continue
            if self.current == epoch:
                self.current = None
            self.shares.pop(epoch, None)
            self.epochs.discard(epoch)
        self.links = dict(sorted(new.items()))

    # --- epochs and shares ---

    def switch_epoch(
        self,
        epoch: int,
        certificate: bytes,
        share: bytes | None,
        public_polynomial: bytes,
        committee: bytes,
    ) -> None:
        if self.current == epoch and self.shares.get(epoch) == share:
            return
        if self.current is not None and epoch <= self.current:
            raise StoreError(f"epoch {epoch} is not after the current epoch {self.current}")
        self.append_link("epoch", epoch, certificate)
        self.epochs.add(epoch)
        if share is not None:
            self.shares[epoch] = share
        self.current = epoch

    def set_share(self, epoch: int, share: bytes) -> None:
        if self.current != epoch:
            raise StoreError(f"epoch {epoch} is not the current epoch")
        old = self.shares.get(epoch)
        if old is not None and old != share:
            raise StoreError(f"epoch {epoch} already has another share")
        self.shares[epoch] = share

    def current_epoch(self) -> SimEpoch | None:
        if self.current is None:
            return None
        return SimEpoch(self.current, self.shares.get(self.current))

    def retained_shares(self) -> list[int]:
        cur = self.current
        return sorted(e for e in self.shares if cur is not None and e < cur)

    def retained_share(self, epoch: int) -> bytes:
        if self.current is None or epoch >= self.current or epoch not in self.shares:
            raise StoreError(f"no retained share for epoch {epoch}")
        return self.shares[epoch]

    def retained(self) -> dict[int, SecretShare]:
        """The retained shares, decoded (what the world's observer reads)."""
        return {e: share_from_bytes(self.retained_share(e)) for e in self.retained_shares()}

    def delete_retained_share(self, epoch: int) -> None:
        if self.current is None or epoch >= self.current:
            raise StoreError(f"only shares of epochs older than the current one ({epoch})")
        self.shares.pop(epoch, None)

    def get_meta(self, name: str) -> bytes | None:
        return self.meta.get(name)

    def set_meta(self, name: str, value: bytes) -> None:
        self.meta[name] = value

    def genesis(self) -> EpochCertificate | None:
        """The stored genesis certificate, if any."""
        first = self.links.get(0)
        return EpochCertificate.decode(first[2]) if first is not None else None

    def share_of(self, epoch: int) -> SecretShare | None:
        """The stored share of ``epoch`` (current or retained), decoded."""
        raw = self.shares.get(epoch)
        return share_from_bytes(raw) if raw is not None else None

    def restored(self) -> Restored | None:
        """What a restarted node starts from (``None`` when nothing was stored)."""
        return None if self.empty else restore(self)


def session_factory(
    sessions: list[SharingSession],
    behaviours: tuple[adversary.Behaviour, ...],
    corrupt_in: Callable[[int], bool],
) -> SessionFactory:
    """The ``NodeCore`` session factory of a simulated node: every session it starts is
    recorded in ``sessions`` (the report reads whom they excluded), and a corrupt node
    runs the real session with the dealer-tamper hook ``adversary.BehaviourTamper``,
    bent by its behaviours in the epochs ``corrupt_in`` says."""

    tamper = adversary.BehaviourTamper(behaviours, corrupt_in) if behaviours else None
    return adversary.recording_session_factory(sessions, tamper)


@dataclass
class SimNode:
    index: int
    keys: NodeKeys
    config: NodeConfig
    rng: random.Random
    store: SimStore = field(default_factory=SimStore)
    driver: NodeDriver | None = None
    """The node's driver around its core while it is up (``None`` while crashed)."""
    behaviours: tuple[adversary.Behaviour, ...] = ()
    corrupt_epochs: tuple[int, int] | None = None
    skew: float = 0.0
    nonces: set[bytes] = field(default_factory=set)
    sent_messages: int = 0
    sent_bytes: int = 0
    received_messages: int = 0
    received_bytes: int = 0
    rejected: int = 0
    crashes: int = 0
    sessions: list[SharingSession] = field(default_factory=list)

    @property
    def core(self) -> NodeCore | None:
        return self.driver.core if self.driver is not None else None

    @property
    def up(self) -> bool:
        return self.driver is not None

    def restored(self) -> Restored | None:
        """What the node's core starts from after a (re)boot: what its store kept."""
        return self.store.restored()

    @property
    def corrupt(self) -> bool:
        return bool(self.behaviours)

    def epoch(self) -> int | None:
        if self.core is None or self.core.state is None:
            return None
        return self.core.state.epoch

    def corrupt_in(self, epoch: int | None) -> bool:
        if not self.behaviours:
            return False
        if self.corrupt_epochs is None:
            return True
        lo, hi = self.corrupt_epochs
        return epoch is not None and lo <= epoch <= hi


def sqlite_store(path: Path) -> NodeStore:
    """The SQLite store of a node-mode node (sealed with a fixed test key)."""
    return NodeStore(path, TEESealer(lambda: bytes(32)))


def provision_sqlite_store(path: Path, keys: NodeKeys) -> None:
    """Put ``keys`` into the node-mode store at ``path``, as provisioning a node would."""
    with sqlite_store(path) as store:
        store.save_identity(keys.identity_seed, keys.dkg_seed)


def disqualified_from(sessions: list[list[SharingSession]]) -> list[dict[str, Any]]:
    """Exclusions in runs that finalised, merged over observers (evidence if any had it)."""
    found: dict[tuple[int, int, int], dict[str, Any]] = {}
    for node_sessions in sessions:
        for s in node_sessions:
            if s.result is None:
                continue  # a failed attempt decided nothing
            for dealer, ex in sorted(s.excluded.items()):
                key = (s.config.epoch, s.config.attempt, int(dealer))
                entry = found.setdefault(
                    key,
                    {
                        "epoch": s.config.epoch,
                        "attempt": s.config.attempt,
                        "index": int(dealer),
                        "evidence": None,
                        "reason": ex.reason,
                    },
                )
                if entry["evidence"] is None and ex.evidence is not None:
                    entry["evidence"] = _evidence_kind(ex)
    return [found[k] for k in sorted(found)]


def _evidence_kind(ex: DealerExcluded) -> str | None:
    return type(ex.evidence).TYPE if ex.evidence is not None else None
