"""Simulated nodes: their keys, what they persist, and the core with adversaries plugged in.

``SimNodeCore`` is the real ``NodeCore``; it only records the sharing
sessions it starts (the report reads who they excluded) and, on a corrupt
node, starts ``AdversarialSession`` instead. ``SimStore`` is what survives
a crash: exactly what ``kms.node.service`` would have written to its store.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kms.node.core import Link, NodeConfig, NodeCore, Restored
from mpc import hpke
from mpc.dkg import DealerExcluded, SharingConfig, SharingSession
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
class SimStore:
    """What a node has persisted: it survives a crash, the core does not."""

    records: dict[bytes, dict[str, bytes]] = field(default_factory=dict)
    chain: list[Link] = field(default_factory=list)
    share: SecretShare | None = None
    share_epoch: int = -1
    retained: dict[int, SecretShare] = field(default_factory=dict)

    def restored(self) -> Restored:
        records = {run: dict(v) for run, v in self.records.items()}
        return Restored(
            chain=tuple(self.chain),
            share=self.share,
            retained=dict(self.retained),
            records=lambda run: records.get(run, {}),
        )


class SimNodeCore(NodeCore):
    """``NodeCore`` whose sharing sessions are recorded and, for corrupt nodes, bent."""

    behaviours: tuple[adversary.Behaviour, ...] = ()
    corrupt_in: Callable[[int], bool] = staticmethod(lambda epoch: False)
    sessions: list[SharingSession]

    def _sharing_session(self, cfg: SharingConfig, share: SecretShare | None) -> SharingSession:
        if not hasattr(self, "sessions"):
            self.sessions = []
        if not self.behaviours:
            session = super()._sharing_session(cfg, share)
        else:
            session = adversary.AdversarialSession(
                cfg,
                self.me,
                self._key,
                self._dkg_key,
                rng=self._rng,
                share=share,
                persisted=self._persisted(cfg),
                live_since=self.live_since,
            )
            session.behaviours = self.behaviours
            session.active = self.corrupt_in
        self.sessions.append(session)
        return session


@dataclass
class SimNode:
    index: int
    keys: NodeKeys
    config: NodeConfig
    rng: random.Random
    store: SimStore = field(default_factory=SimStore)
    core: SimNodeCore | None = None
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
    def up(self) -> bool:
        return self.core is not None

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
