"""The persistence seam: what a node's events do to its store, and what it restores from it.

``apply(store, event)`` is the one mapping of node events to store operations;
``restore(store)`` builds the ``Restored`` a ``NodeCore`` starts from. The trio
service applies every persistent event of a step through ``apply_events`` before it
sends the step's messages, and so does the simulator (``sim.nodes.SimStore``
implements ``NodeStateStore`` in memory), so a simulated crash restores exactly
what a real node would have written. Reactions that are not storage (logs,
metrics, learning peers) stay with whoever drives the node.

The store is only seen through the ``NodeStateStore`` protocol (``kms.store.NodeStore``
implements it); this module does no I/O of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from kms.node.model import (
    GENESIS_ENDORSEMENTS_RUN,
    ChainReplaced,
    ChainTrimmed,
    EpochSwitched,
    EraseRecords,
    Link,
    LinkCertified,
    Restored,
    RetainedShareDeletable,
    StoreRecord,
)
from mpc.cert import EpochCertificate
from mpc.ids import ParticipantIndex
from mpc.membership import ChangeAdmissionPolicy, MembershipCertificate, decode_link
from mpc.secret import SecretScalar, SecretShare

ADMISSION_POLICY_META = "chain/admission-policy"
"""Meta entry: the bytes of the last certified admission-policy change."""

PersistentEvent = (
    StoreRecord
    | EraseRecords
    | EpochSwitched
    | LinkCertified
    | ChainTrimmed
    | ChainReplaced
    | RetainedShareDeletable
)
PERSISTENT_EVENTS = (
    StoreRecord,
    EraseRecords,
    EpochSwitched,
    LinkCertified,
    ChainTrimmed,
    ChainReplaced,
    RetainedShareDeletable,
)
"""The node events that change the store: stored before the step's messages are sent."""


class CurrentEpoch(Protocol):
    """The current epoch as a store reports it (``kms.store.EpochRecord`` has this shape)."""

    @property
    def epoch(self) -> int: ...

    @property
    def share(self) -> bytes | None: ...


class NodeStateStore(Protocol):
    """The part of a node's store the node's events write and a restart reads.

    Every method has the contract documented on ``kms.store.NodeStore``."""

    def put_records(self, run: bytes, records: Sequence[StoreRecord]) -> None: ...
    def records(self, run: bytes) -> dict[str, bytes]: ...
    def runs(self) -> list[bytes]: ...
    def delete_records(self, run: bytes) -> int: ...
    def append_link(self, kind: str, epoch: int, data: bytes) -> int: ...
    def chain(self) -> list[tuple[str, int, bytes]]: ...
    def trim_chain(self, position: int) -> None: ...
    def replace_chain(self, links: Iterable[tuple[str, int, bytes]]) -> None: ...
    def switch_epoch(
        self,
        epoch: int,
        certificate: bytes,
        share: bytes | None,
        public_polynomial: bytes,
        committee: bytes,
    ) -> None: ...
    def set_share(self, epoch: int, share: bytes) -> None: ...
    def current_epoch(self) -> CurrentEpoch | None: ...
    def retained_shares(self) -> list[int]: ...
    def retained_share(self, epoch: int) -> bytes: ...
    def delete_retained_share(self, epoch: int) -> None: ...
    def get_meta(self, name: str) -> bytes | None: ...
    def set_meta(self, name: str, value: bytes) -> None: ...


# --- encodings of what the store holds ------------------------------------------------


def share_to_bytes(share: SecretShare) -> bytes:
    return int(share.index).to_bytes(4, "big") + share.value.value.to_bytes(32, "big")


def share_from_bytes(raw: bytes) -> SecretShare:
    return SecretShare(
        ParticipantIndex(int.from_bytes(raw[:4], "big")),
        SecretScalar(int.from_bytes(raw[4:], "big")),
    )


def link_row(link: Link) -> tuple[str, int, bytes]:
    """A chain link as the store keeps it: ``(kind, epoch, encoded certificate)``."""
    if isinstance(link, EpochCertificate):
        return ("epoch", link.transcript.epoch, link.encode())
    return ("membership", link.outcome.epoch, link.encode())


def load_chain(store: NodeStateStore) -> list[EpochCertificate | MembershipCertificate]:
    out: list[EpochCertificate | MembershipCertificate] = []
    for kind, _epoch, data in store.chain():
        out.append(decode_link(kind, data))
    return out


# --- restore ------------------------------------------------------------------------


def restore(store: NodeStateStore) -> Restored:
    """What the node had stored: its chain, current and retained shares, run records and
    the last certified admission policy."""
    current = store.current_epoch()
    return Restored(
        chain=tuple(load_chain(store)),
        share=share_from_bytes(current.share) if current is not None and current.share else None,
        retained={e: share_from_bytes(store.retained_share(e)) for e in store.retained_shares()},
        records=store.records,
        admission_policy=store.get_meta(ADMISSION_POLICY_META),
    )


# --- apply ----------------------------------------------------------------------------


def apply_events(store: NodeStateStore, events: Iterable[object]) -> None:
    """Apply a step's persistent events in order; the other events are skipped.

    Consecutive ``StoreRecord`` events are written together: one step's records of one
    run land in one transaction (a crash keeps all or none)."""
    PendingWrites(events).apply(store)


class PendingWrites:
    """A step's store writes, applied in order and resumable where one failed.

    The writes are cut into units, each one store call (one transaction): the
    records of one run out of consecutive ``StoreRecord`` events, or one other
    persistent event. :meth:`apply` writes the units not written yet; when a unit
    raises (``kms.store.StorageFull``: the disk is full, nothing of that unit was
    written), the units before it stay written and the next :meth:`apply` starts
    again at the failed one, so no write is made twice."""

    def __init__(self, events: Iterable[object]) -> None:
        self.units: list[StoreRecordGroup | object] = []
        batch: list[StoreRecord] = []
        for ev in events:
            if isinstance(ev, StoreRecord):
                batch.append(ev)
                continue
            self._add_records(batch)
            batch = []
            if isinstance(ev, PERSISTENT_EVENTS):
                self.units.append(ev)
        self._add_records(batch)
        self.done = 0
        """How many units are written."""

    def _add_records(self, records: Sequence[StoreRecord]) -> None:
        runs: dict[bytes, list[StoreRecord]] = {}
        for r in records:
            runs.setdefault(r.run, []).append(r)
        self.units.extend(StoreRecordGroup(run, tuple(g)) for run, g in runs.items())

    @property
    def finished(self) -> bool:
        return self.done == len(self.units)

    def apply(self, store: NodeStateStore) -> None:
        """Write the units not written yet, in order; raises what a failed unit raised."""
        while self.done < len(self.units):
            unit = self.units[self.done]
            if isinstance(unit, StoreRecordGroup):
                store.put_records(unit.run, unit.records)
            else:
                apply(store, unit)
            self.done += 1


class StoreRecordGroup:
    """One run's records of a step: written in one transaction."""

    __slots__ = ("records", "run")

    def __init__(self, run: bytes, records: tuple[StoreRecord, ...]) -> None:
        self.run = run
        self.records = records


def put_records(store: NodeStateStore, records: Sequence[StoreRecord]) -> None:
    runs: dict[bytes, list[StoreRecord]] = {}
    for r in records:
        runs.setdefault(r.run, []).append(r)
    for run, group in runs.items():
        store.put_records(run, group)


def apply(store: NodeStateStore, ev: object) -> None:
    """What one node event does to the store (nothing, for an event that is not stored)."""
    if isinstance(ev, StoreRecord):
        store.put_records(ev.run, [ev])
    elif isinstance(ev, EraseRecords):
        store.delete_records(ev.run)
    elif isinstance(ev, EpochSwitched):
        _switch_epoch(store, ev)
    elif isinstance(ev, LinkCertified):
        keep_policy(store, (ev.certificate,))
        store.append_link("membership", ev.certificate.outcome.epoch, ev.certificate.encode())
    elif isinstance(ev, ChainTrimmed):
        store.trim_chain(ev.position)
    elif isinstance(ev, ChainReplaced):
        store.replace_chain(link_row(x) for x in ev.links)
        keep_policy(store, ev.links)
    elif isinstance(ev, RetainedShareDeletable):
        store.delete_retained_share(ev.epoch)


def _switch_epoch(store: NodeStateStore, ev: EpochSwitched) -> None:
    st = ev.state
    poly = b"".join(ev.certificate.public_polynomial)
    committee = b"".join(p.encode() for p in st.committee.members)
    share = share_to_bytes(ev.share) if ev.share is not None else None
    current = store.current_epoch()
    if current is not None and current.epoch == ev.epoch:
        if share is not None and current.share is None:
            store.set_share(ev.epoch, share)
    else:
        store.switch_epoch(ev.epoch, ev.certificate.encode(), share, poly, committee)
    # Records of finished runs (dealt polynomials, signed messages) are of no
    # further use and some are secret: a dealt polynomial's constant term is
    # an old share. Delete them once the new epoch is stored. The core has
    # already taken its share of the certified run from them (if it finalized
    # that run); other attempts of this epoch lost. Acknowledgements it still
    # counts are kept.
    for run in store.runs():
        if run not in ev.keep_runs and run != GENESIS_ENDORSEMENTS_RUN:
            store.delete_records(run)


def keep_policy(store: NodeStateStore, links: Iterable[object]) -> None:
    """Keep the bytes of a certified admission policy apart from the chain links, which
    are deleted once older than the kept epochs."""
    for link in links:
        if isinstance(link, MembershipCertificate):
            change = link.outcome.proposal.change
            if isinstance(change, ChangeAdmissionPolicy):
                store.set_meta(ADMISSION_POLICY_META, change.policy)


__all__ = [
    "ADMISSION_POLICY_META",
    "PERSISTENT_EVENTS",
    "CurrentEpoch",
    "NodeStateStore",
    "PendingWrites",
    "PersistentEvent",
    "apply",
    "apply_events",
    "link_row",
    "load_chain",
    "put_records",
    "restore",
    "share_from_bytes",
    "share_to_bytes",
]
