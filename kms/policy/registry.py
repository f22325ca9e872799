"""The apps a node has admitted, their owner chains and version floors, and a bounded cache.

**Admitted apps.** An app becomes *admitted* at a node in one of three ways:

* ``KEY_REQUEST``: a CVM's key request carried the app's signed bundle (its hash
  bound into the quote's report data) and the node released keys to it: a
  genuine, verified quote that the bundle's policy admits;
* ``OPERATOR``: the operator placed the bundle in the node's policies directory;
* ``COMMITTEE``: at least ``vouch_threshold`` distinct committee members (the
  committee threshold *t*, so at least one honest member) sent the node a
  bundle of the app.

An admitted app is kept forever (:class:`AppRecord`): every rotation record
ever seen, its version floor (the highest version ever accepted) and its
newest bundle, expired or not. Policy expiry never forgets an app, so a
rotated-away owner key can never take it back by posting a "first" version.

**Versions.** A new version must exceed the floor by at most
``max_version_step``, a rotation included (the floor is the highest version
ever accepted and never drops); the first version of an app admitted by a
key request is bounded the same way from 0. Operator and committee admission
take the version they are given.

**Forks.** Two different rotation records with one sequence number mean the
owner key, or a thief holding it, signed two successors. The app is then
*frozen*: no release, no new policy, a typed refusal (``APP_FROZEN``) until
the operator lifts it (:meth:`AppRegistry.resolve_fork`, with a bundle whose
chain carries one whole branch seen and whose version is above the floor, on
the owner's word out of band; nothing else lifts it); the owner's remedy
that needs nobody's help is a new app id. Only a rotation record not seen
before freezes: after a resolution, the losing branch and any fork at or
below the resolved rotation number are refused (``REJECTED_BRANCH``).

**The cache.** Bundles of apps the node has not admitted (pushed by anyone
over HTTP, or announced by fewer than ``vouch_threshold`` members) are kept
encoded, keyed by their hash, in a cache bounded in entries and bytes,
evicting the least recently added. It is neither persisted nor gossiped. A
key request may name a cached bundle by its hash instead of carrying it. A
pushed bundle of an unknown app may carry at most ``new_app_rotations``
rotations. :meth:`AppRegistry.seen` answers a bundle seen before from its
hash alone.

**Storing first.** Every change to an admitted app is made on a copy of its record,
handed to ``persist``, and installed (record, held policy, hash index, frozen set) only
when ``persist`` returned: a write that raises (a full disk) leaves this registry as it
was, so a refused change is not served, and the same bundle offered again is checked
and stored again rather than answered from its hash.

Pure code: no I/O; ``persist`` is called with every admitted app that changed.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from kms.protocol import BUNDLE_HASH_DOMAIN, bundle_hash
from mpc.codec import MessageDecodeError
from mpc.errors import InvalidEncoding

from .app import OwnerChain, RotationRecord
from .errors import PolicyError, PolicyFailure
from .policy import (
    MAX_VERSION_STEP,
    AppPolicy,
    PolicyBundle,
    PolicyStore,
)

__all__ = [
    "BUNDLE_HASH_DOMAIN",
    "AdmittedBy",
    "AppRecord",
    "AppRegistry",
    "OfferOutcome",
    "bundle_hash",
]


DEFAULT_CACHE_ENTRIES: Final = 1024
DEFAULT_CACHE_BYTES: Final = 16 * 1024 * 1024
DEFAULT_NEW_APP_ROTATIONS: Final = 16
"""Most rotation records accepted in a bundle of an app the node has not admitted."""
REFUSED_MEMORY: Final = 4096
"""Hashes of bundles refused for a reason that cannot change (signature, chain), remembered."""
_PERMANENT = frozenset(
    {
        PolicyFailure.MALFORMED,
        PolicyFailure.BAD_SIGNATURE,
        PolicyFailure.APP_ID_MISMATCH,
        PolicyFailure.ROTATION_GAP,
        PolicyFailure.ROTATION_REPLAY,
        PolicyFailure.ROTATION_WRONG_SIGNER,
        PolicyFailure.ROTATION_KEY_REUSED,
        PolicyFailure.WRONG_MPK,
        PolicyFailure.LIFETIME_TOO_LONG,
    }
)


class AdmittedBy(enum.Enum):
    KEY_REQUEST = "key-request"
    OPERATOR = "operator"
    COMMITTEE = "committee"


@dataclass
class AppRecord:
    """What a node keeps of an admitted app (persisted; never dropped)."""

    app_id: bytes
    bundle: PolicyBundle
    """The newest accepted policy with the chain it was accepted under."""
    floor: int
    rotations: dict[tuple[int, bytes], RotationRecord] = field(default_factory=dict)
    """Every rotation record ever seen, by (sequence, encoding): forks included."""
    frozen: bool = False
    admitted_by: AdmittedBy = AdmittedBy.OPERATOR
    held_hash: bytes = b""
    """The hash of ``bundle``'s encoding (a re-sent copy is known without decoding it)."""

    def rotation_rows(self) -> list[tuple[int, bytes]]:
        return [(seq, enc) for seq, enc in sorted(self.rotations)]

    def copy(self) -> AppRecord:
        """A copy to change (its rotations too) without touching this record."""
        return dataclasses.replace(self, rotations=dict(self.rotations))


@dataclass(frozen=True, slots=True)
class OfferOutcome:
    """What became of an offered bundle.

    ``accepted``: the node now holds it (pass it on); ``cached``: kept in the
    unadmitted cache only; otherwise ``reason`` says why it was refused.
    """

    accepted: bool
    app_id: bytes | None = None
    version: int | None = None
    reason: PolicyFailure | None = None
    detail: str = ""
    cached: bool = False
    frozen_now: bool = False

    @property
    def duplicate(self) -> bool:
        return self.reason is PolicyFailure.DUPLICATE


@dataclass
class _Cached:
    """One cached bundle, kept encoded (decoded again on use) and keyed by its hash."""

    app_id: bytes
    raw: bytes
    bytes: int = 0

    def size(self) -> int:
        """Bytes this entry holds: its encoding plus a fixed overhead for the entry and keys."""
        return 256 + len(self.raw)


class AppRegistry:
    """The admitted apps of one node, indexed by app id (O(1) per lookup), and the cache."""

    def __init__(
        self,
        kms_mpk: bytes,
        *,
        persist: Callable[[AppRecord], None] | None = None,
        max_version_step: int = MAX_VERSION_STEP,
        vouch_threshold: int = 1,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_apps: int = 0,
        new_app_rotations: int = DEFAULT_NEW_APP_ROTATIONS,
    ) -> None:
        self._store = PolicyStore(kms_mpk, max_version_step=max_version_step)
        self.new_app_rotations = new_app_rotations
        """Most rotation records in a bundle of an app not admitted here (a new app
        rarely has any); a longer chain is refused before any signature is checked."""
        self._held_hash: dict[bytes, bytes] = {}  # bundle hash -> app, for the held bundles
        self._refused: OrderedDict[bytes, tuple[PolicyFailure, str]] = OrderedDict()
        self._vouches: dict[bytes, dict[int, bytes]] = {}  # app -> member -> bundle hash
        self.current_members: frozenset[int] | None = None
        """The current committee's indices, set by the node: a vouch from anyone else (a
        member since removed, say) never counts, whenever it was sent."""
        self._records: dict[bytes, AppRecord] = {}
        self._sorted: list[bytes] = []
        self._frozen: set[bytes] = set()
        self._save = persist or (lambda record: None)
        self.vouch_threshold = max(1, vouch_threshold)
        self.max_apps = max_apps
        """Apps a key request may still admit when this many are admitted: none (0: no cap).
        The operator's directory is not capped."""
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()  # by bundle hash
        self._hashes_of: dict[bytes, set[bytes]] = {}  # app -> hashes cached
        self._cache_size = 0
        self.evictions = 0

    @property
    def kms_mpk(self) -> bytes:
        return self._store.kms_mpk

    # --- lookups (O(1)) -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, app_id: object) -> bool:
        return app_id in self._records

    def record(self, app_id: bytes) -> AppRecord | None:
        return self._records.get(app_id)

    def is_frozen(self, app_id: bytes) -> bool:
        r = self._records.get(app_id)
        return r is not None and r.frozen

    def current(self, app_id: bytes, now: int) -> AppPolicy | None:
        """The app's unexpired policy, or ``None`` (unknown, expired or frozen)."""
        r = self._records.get(app_id)
        if r is None or r.frozen:
            return None
        return self._store.current(app_id, now)

    def frozen_apps(self) -> list[bytes]:
        return sorted(self._frozen)

    def page(self, start: bytes, limit: int) -> tuple[list[tuple[bytes, int]], bytes]:
        """Up to ``limit`` ``(app id, version held)`` pairs from ``start`` on, and where the next
        page starts (``b""``: this page reaches the end)."""
        i = bisect.bisect_left(self._sorted, start)
        ids = self._sorted[i : i + limit]
        nxt = self._sorted[i + limit] if i + limit < len(self._sorted) else b""
        return [(a, self._held(a)) for a in ids], nxt

    def between(self, start: bytes, end: bytes) -> Iterable[tuple[bytes, int]]:
        """``(app id, version held)`` for every admitted app in ``[start, end)`` (``end`` empty: no end)."""
        i = bisect.bisect_left(self._sorted, start)
        j = len(self._sorted) if not end else bisect.bisect_left(self._sorted, end)
        # A lazy walk of the index (no copy): callers stop after as many as they need.
        return ((self._sorted[k], self._held(self._sorted[k])) for k in range(i, j))

    def _held(self, app_id: bytes) -> int:
        return int(self._records[app_id].bundle.signed.policy.version)

    def cached_by_hash(self, digest: bytes) -> PolicyBundle | None:
        entry = self._cache.get(digest)
        return None if entry is None else decode_bundle(entry.raw)

    def seen(self, digest: bytes, voucher: int | None = None) -> OfferOutcome | None:
        """What became of the bundle with hash ``digest`` the last time, if that still holds:
        held (a duplicate), cached (with ``voucher`` counted), or refused for good.
        ``None``: not seen, check it. Costs a few dictionary lookups, no decoding."""
        app = self._held_hash.get(digest)
        if app is not None:
            rec = self._records.get(app)
            if rec is not None and rec.frozen:
                return OfferOutcome(
                    False, app, self._held(app), PolicyFailure.APP_FROZEN, "the app is frozen"
                )
            if rec is not None:
                return OfferOutcome(
                    False, app, self._held(app), PolicyFailure.DUPLICATE, "already held"
                )
        entry = self._cache.get(digest)
        if entry is not None and entry.app_id not in self._records:
            if voucher is not None:
                return None  # a member's vouch: counted by the full path
            return self._cached_outcome(entry.app_id)
        refused = self._refused.get(digest)
        if refused is not None:
            return OfferOutcome(False, None, None, refused[0], refused[1])
        return None

    def vouched(self, app_id: bytes) -> dict[int, PolicyBundle]:
        """The cached bundles members sent of an app not admitted here, by member."""
        out: dict[int, PolicyBundle] = {}
        for member, digest in self._vouches.get(app_id, {}).items():
            entry = self._cache.get(digest)
            if entry is not None:
                out[member] = decode_bundle(entry.raw)
        return out

    def remember_refusal(self, digest: bytes, out: OfferOutcome) -> None:
        """Remember a refusal that no later event can change (bounded)."""
        if out.reason in _PERMANENT:
            self._refused[digest] = (out.reason, out.detail)
            while len(self._refused) > REFUSED_MEMORY:
                self._refused.popitem(last=False)

    def cache_stats(self) -> tuple[int, int]:
        """(entries, bytes) in the unadmitted cache."""
        return len(self._cache), self._cache_size

    # --- restoring ------------------------------------------------------------------------

    def restore(
        self,
        bundle: PolicyBundle,
        *,
        floor: int,
        frozen: bool,
        admitted_by: AdmittedBy,
        rotations: Iterable[RotationRecord] = (),
    ) -> None:
        """Load an admitted app from the node's store (expired or not). Raises PolicyError."""
        self._store.restore(bundle)
        app_id = bundle.signed.policy.app_id
        rec = AppRecord(app_id, bundle, max(floor, bundle.signed.policy.version))
        rec.frozen = frozen
        rec.admitted_by = admitted_by
        for r in (*bundle.rotations, *rotations):
            rec.rotations[(r.sequence, r.encode())] = r
        self._add(rec)

    def _commit(self, rec: AppRecord, held: PolicyBundle | None = None) -> None:
        """Store ``rec`` (a new or changed copy), then install it, and ``held`` as the app's
        policy (checked already) when given. If storing raises, nothing here changed."""
        self._save(rec)
        if held is not None:
            self._store.replace(held)
        self._add(rec)

    def _index_hash(self, rec: AppRecord) -> None:
        old = rec.held_hash
        rec.held_hash = bundle_hash(rec.bundle.encode())
        if old != rec.held_hash:
            if old:
                self._held_hash.pop(old, None)
            self._held_hash[rec.held_hash] = rec.app_id

    def _add(self, rec: AppRecord) -> None:
        if rec.frozen:
            self._frozen.add(rec.app_id)
        else:
            self._frozen.discard(rec.app_id)
        if rec.app_id not in self._records:
            bisect.insort(self._sorted, rec.app_id)
        self._records[rec.app_id] = rec
        self._index_hash(rec)
        self._uncache(rec.app_id)

    # --- offers ---------------------------------------------------------------------------

    def offer(self, bundle: PolicyBundle, *, now: int, voucher: int | None = None) -> OfferOutcome:
        """A bundle pushed over HTTP (``voucher`` None) or sent by committee member ``voucher``.

        Known app: the usual checks against its chain and its floor (the highest version
        ever accepted); a rotation record never seen that forks the chain freezes it.
        Unknown app: cached; with a voucher, admitted once enough members vouched.
        """
        if not isinstance(bundle, PolicyBundle):  # decoded, so already validated
            return OfferOutcome(False, reason=PolicyFailure.MALFORMED, detail="not a bundle")
        app_id = bundle.signed.policy.app_id
        rec = self._records.get(app_id)
        if rec is None:
            return self._offer_unknown(bundle, now=now, voucher=voucher)
        if rec.frozen:
            return OfferOutcome(
                False,
                app_id,
                self._held(app_id),
                PolicyFailure.APP_FROZEN,
                "the app is frozen by a fork",
            )
        try:  # every check, nothing held yet: the policy is held once it is stored
            chain = self._store.check(
                bundle.signed, now=now, rotations=bundle.rotations, floor=rec.floor
            )
        except PolicyError as exc:
            if exc.reason is PolicyFailure.ROTATION_FORK:
                return self._freeze(rec, bundle)
            return OfferOutcome(False, app_id, self._held(app_id), exc.reason, exc.detail)
        self._accepted(rec, PolicyBundle(bundle.signed, chain.records))
        return OfferOutcome(True, app_id, bundle.signed.policy.version)

    def _accepted(self, rec: AppRecord, bundle: PolicyBundle) -> None:
        new = rec.copy()
        new.bundle = bundle
        new.floor = max(rec.floor, bundle.signed.policy.version)  # the floor never drops
        for r in bundle.rotations:
            new.rotations[(r.sequence, r.encode())] = r
        self._commit(new, bundle)

    @staticmethod
    def _resolved_point(rec: AppRecord) -> int:
        """The highest rotation number at which two different records are known: a fork
        the operator resolved (0: none). The chain up to it is settled."""
        seen: dict[int, int] = {}
        for seq, _ in rec.rotations:
            seen[seq] = seen.get(seq, 0) + 1
        return max((seq for seq, n in seen.items() if n > 1), default=0)

    def _freeze(self, rec: AppRecord, offered: PolicyBundle) -> OfferOutcome:
        """Freeze ``rec`` if ``offered`` carries a new, genuine fork of its chain.

        A branch whose records are all known already, or that forks at or below a fork
        the operator resolved, is refused (``REJECTED_BRANCH``) and freezes nothing:
        replaying the losing branch must not undo the operator's decision."""
        try:
            OwnerChain.from_records(rec.app_id, offered.rotations)  # both branches verify
        except PolicyError as exc:
            return OfferOutcome(False, rec.app_id, rec.floor, exc.reason, exc.detail)
        held = rec.bundle.rotations
        fork_at = next(
            (
                i + 1
                for i, (a, b) in enumerate(zip(held, offered.rotations, strict=False))
                if a != b
            ),
            0,
        )
        new = [r for r in offered.rotations if (r.sequence, r.encode()) not in rec.rotations]
        if not new or (fork_at and fork_at <= self._resolved_point(rec)):
            return OfferOutcome(
                False,
                rec.app_id,
                rec.floor,
                PolicyFailure.REJECTED_BRANCH,
                "the bundle is on a branch of a fork the operator resolved against",
            )
        frozen = rec.copy()
        for r in offered.rotations:
            frozen.rotations[(r.sequence, r.encode())] = r
        frozen.frozen = True
        self._commit(frozen)
        return OfferOutcome(
            False,
            rec.app_id,
            rec.floor,
            PolicyFailure.APP_FROZEN,
            "two different owner rotations: the app is frozen",
            frozen_now=True,
        )

    def _offer_unknown(
        self, bundle: PolicyBundle, *, now: int, voucher: int | None
    ) -> OfferOutcome:
        app_id = bundle.signed.policy.app_id
        if voucher is None and len(bundle.rotations) > self.new_app_rotations:
            # An anonymous push is refused before any signature or key is checked: a new
            # app rarely rotates (members' bundles are not capped: they learn admitted apps).
            return OfferOutcome(
                False,
                app_id,
                None,
                PolicyFailure.TOO_MANY_ROTATIONS,
                f"{len(bundle.rotations)} rotations: this node accepts at most "
                f"{self.new_app_rotations} for an app it has not admitted",
            )
        raw = bytes(bundle.encode())
        digest = bundle_hash(raw)
        if digest not in self._cache:
            probe = PolicyStore(self.kms_mpk, max_version_step=self._store.max_version_step)
            try:
                probe.check_authentic(bundle.signed, bundle.rotations)
            except PolicyError as exc:
                return OfferOutcome(False, app_id, None, exc.reason, exc.detail)
            self._cache_put(app_id, raw, digest)
        else:
            self._cache.move_to_end(digest)
        if voucher is not None:
            vouched = self._vouches.setdefault(app_id, {})
            vouched[voucher] = digest
            members = self.current_members
            live = [
                h
                for m, h in vouched.items()
                if h in self._cache and (members is None or m in members)
            ]
            if len(live) >= self.vouch_threshold:
                return self._admit_vouched(
                    app_id, [decode_bundle(self._cache[h].raw) for h in live]
                )
        self._evict()
        return self._cached_outcome(app_id)

    @staticmethod
    def _cached_outcome(app_id: bytes) -> OfferOutcome:
        return OfferOutcome(
            False,
            app_id,
            None,
            PolicyFailure.UNKNOWN_APP,
            "this node has not admitted the app: the bundle is cached, not kept",
            cached=True,
        )

    def _admit_vouched(self, app_id: bytes, bundles: list[PolicyBundle]) -> OfferOutcome:
        """Admit an app ``vouch_threshold`` members hold: the union of their chains."""
        chains: list[OwnerChain] = []
        for b in bundles:
            try:
                chains.append(OwnerChain.from_records(app_id, b.rotations, first_owner=_first(b)))
            except PolicyError:
                continue
        if not chains:
            return OfferOutcome(False, app_id, None, PolicyFailure.MALFORMED, "no chain verifies")
        union, forked = chains[0], False
        for c in chains[1:]:
            try:
                union = union.merge(c)
            except PolicyError:
                forked = True
                union = c if c.sequence > union.sequence else union
        owned = [b for b in bundles if b.signed.policy.owner_key == union.current]
        best = max(owned or bundles, key=lambda b: b.signed.policy.version)
        rec = AppRecord(app_id, best, best.signed.policy.version)
        rec.admitted_by = AdmittedBy.COMMITTEE
        for b in bundles:
            for r in b.rotations:
                rec.rotations[(r.sequence, r.encode())] = r
        held = PolicyBundle(best.signed, union.records if owned else best.rotations)
        try:
            self._probe().check_authentic(held.signed, held.rotations)
        except PolicyError as exc:
            return OfferOutcome(False, app_id, None, exc.reason, exc.detail)
        rec.bundle = held
        rec.frozen = forked or not owned
        self._commit(rec, held)
        if rec.frozen:
            return OfferOutcome(
                False,
                app_id,
                rec.floor,
                PolicyFailure.APP_FROZEN,
                "members hold forked chains",
                frozen_now=True,
            )
        return OfferOutcome(True, app_id, rec.floor)

    # --- admission by an attested key request ---------------------------------------------

    def candidate(self, bundle: PolicyBundle, *, now: int) -> AppPolicy:
        """The policy of a key request's bundle for an app not admitted yet, checked like a
        push (signature, chain, MPK, time) with its version bounded from 0. Raises PolicyError."""
        if self.max_apps and len(self._records) >= self.max_apps:
            raise PolicyError(
                PolicyFailure.UNKNOWN_APP,
                f"this node admits no more apps by key request (policy_max_apps {self.max_apps})",
            )
        probe = PolicyStore(self.kms_mpk, max_version_step=self._store.max_version_step)
        probe.check(bundle.signed, now=now, rotations=bundle.rotations, bound_first=True)
        return bundle.signed.policy

    def admit(self, bundle: PolicyBundle, *, now: int, by: AdmittedBy) -> OfferOutcome:
        """Admit an app (after an attested release, or from the operator's directory)."""
        app_id = bundle.signed.policy.app_id
        if app_id in self._records:
            return self.offer(bundle, now=now)
        try:  # checked only: the policy is held once the app is stored
            if by is AdmittedBy.OPERATOR:
                chain = self._probe().check_authentic(bundle.signed, bundle.rotations)
            else:
                chain = self._store.check(
                    bundle.signed, now=now, rotations=bundle.rotations, bound_first=True
                )
        except PolicyError as exc:
            return OfferOutcome(False, app_id, None, exc.reason, exc.detail)
        held = PolicyBundle(bundle.signed, chain.records)
        rec = AppRecord(app_id, held, held.signed.policy.version, admitted_by=by)
        for r in held.rotations:
            rec.rotations[(r.sequence, r.encode())] = r
        self._commit(rec, held)
        return OfferOutcome(True, app_id, rec.floor)

    def resolve_fork(self, bundle: PolicyBundle) -> OfferOutcome:
        """The operator resolves a fork (an explicit act, never a reload): the app continues
        on ``bundle``'s chain.

        The chain must verify and extend one of the branches seen (every record of the
        branch, then any records after it); the policy must be signed by that chain's
        owner, name this committee's MPK and have a version above the floor.
        """
        app_id = bundle.signed.policy.app_id
        rec = self._records.get(app_id)
        if rec is None or not rec.frozen:
            return OfferOutcome(
                False, app_id, None, PolicyFailure.MALFORMED, "the app is not frozen here"
            )
        try:
            chain = OwnerChain.from_records(app_id, bundle.rotations, first_owner=_first(bundle))
            if bundle.signed.policy.owner_key != chain.current:
                raise PolicyError(PolicyFailure.NOT_OWNER, "not the branch's owner")
            bundle.signed.verify_signature()
            if bundle.signed.policy.kms_mpk != self.kms_mpk:
                raise PolicyError(PolicyFailure.WRONG_MPK, "the policy names another master key")
        except PolicyError as exc:
            return OfferOutcome(False, app_id, rec.floor, exc.reason, exc.detail)
        if bundle.signed.policy.version <= rec.floor:
            return OfferOutcome(
                False,
                app_id,
                rec.floor,
                PolicyFailure.STALE_VERSION,
                f"version {bundle.signed.policy.version} is not above the floor {rec.floor}",
            )
        known = [r for r in chain.records if (r.sequence, r.encode()) in rec.rotations]
        if known != list(chain.records[: len(known)]):
            return OfferOutcome(
                False, app_id, rec.floor, PolicyFailure.ROTATION_FORK, "not one branch seen"
            )
        tip = chain.records[len(known) - 1] if known else None
        owner = tip.next_key if tip is not None else chain.first_owner
        extended = any(
            seq == len(known) + 1 and r.previous_key == owner
            for (seq, _), r in rec.rotations.items()
        )
        if extended:
            # The branch seen continues past the records the bundle carries: it must
            # carry the whole branch (the key that forked never becomes owner again).
            return OfferOutcome(
                False,
                app_id,
                rec.floor,
                PolicyFailure.ROTATION_FORK,
                "the chain stops before the end of a branch seen: carry the whole branch",
            )
        try:
            self._probe().check_authentic(bundle.signed, bundle.rotations)
        except PolicyError as exc:
            return OfferOutcome(False, app_id, rec.floor, exc.reason, exc.detail)
        resolved = rec.copy()
        resolved.bundle = bundle
        for r in chain.records:
            resolved.rotations[(r.sequence, r.encode())] = r
        resolved.floor = bundle.signed.policy.version
        resolved.frozen = False
        self._commit(resolved, bundle)
        return OfferOutcome(True, app_id, resolved.floor)

    def _probe(self) -> PolicyStore:
        """An empty policy store with this one's settings: checks a bundle on its own chain."""
        return PolicyStore(self.kms_mpk, max_version_step=self._store.max_version_step)

    # --- the cache ------------------------------------------------------------------------

    def _cache_put(self, app_id: bytes, raw: bytes, digest: bytes) -> None:
        entry = _Cached(app_id, raw)
        entry.bytes = entry.size()
        self._cache[digest] = entry
        self._hashes_of.setdefault(app_id, set()).add(digest)
        self._cache_size += entry.bytes

    def _drop(self, digest: bytes) -> None:
        entry = self._cache.pop(digest, None)
        if entry is None:
            return
        self._cache_size -= entry.bytes
        hashes = self._hashes_of.get(entry.app_id)
        if hashes is not None:
            hashes.discard(digest)
            if not hashes:
                del self._hashes_of[entry.app_id]
                self._vouches.pop(entry.app_id, None)

    def _evict(self) -> None:
        """Drop the oldest entries until the cache is within both bounds."""
        while self._cache and (
            len(self._cache) > self.cache_entries or self._cache_size > self.cache_bytes
        ):
            self._drop(next(iter(self._cache)))
            self.evictions += 1

    def _uncache(self, app_id: bytes) -> None:
        for digest in list(self._hashes_of.get(app_id, ())):
            self._drop(digest)
        self._vouches.pop(app_id, None)


def _first(bundle: PolicyBundle) -> bytes | None:
    return None if bundle.rotations else bundle.signed.policy.owner_key


def decode_bundle(raw: bytes) -> PolicyBundle:
    """Decode an encoded bundle; raises ``PolicyError(MALFORMED)``."""
    try:
        return PolicyBundle.decode(raw)
    except (MessageDecodeError, InvalidEncoding, ValueError) as exc:
        raise PolicyError(PolicyFailure.MALFORMED, str(exc)) from exc
