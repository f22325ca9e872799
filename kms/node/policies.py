"""A node's app policies: the admitted-app index (``kms.policy.registry``) kept in the node store.

Loaded once at start from the store, then from the operator's policies
directory (``[node] policies_dir``; read at start and on an explicit reload,
never per request). Every change to an admitted app is written to the store
in the same call (``NodeStore.put_app``), so owner chains and version floors
survive restarts and policy expiry. The registry holds a change only once it is
stored: a write that fails (a full disk) leaves the node's memory as its store
(``kms.policy.registry``, "Storing first"). Lookups are dictionary reads.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from kms.policy import (
    AppPolicy,
    OwnerChain,
    PolicyBundle,
    PolicyError,
    PolicyFailure,
    RotationRecord,
)
from kms.policy.gossip import MAX_ANSWERS_PER_DIGEST, MAX_DIGEST_ENTRIES, PolicyDigest
from kms.policy.registry import (
    DEFAULT_NEW_APP_ROTATIONS,
    AdmittedBy,
    AppRecord,
    AppRegistry,
    OfferOutcome,
)
from kms.protocol import AppKeyCertRequest, KeyRequest, bundle_hash
from kms.store import NodeStore, StoreError
from kms.store.store import StoredApp

log = logging.getLogger("quorum_kms.node")


@dataclass(frozen=True)
class PoliciesUnavailable:
    """This node cannot take policies now (it keeps none, or knows no master public key)."""

    detail: str


PolicyOfferResult = OfferOutcome | PoliciesUnavailable
"""What became of a bundle offered to the node (``kms.api`` chooses the HTTP status)."""


class NodePolicies:
    """The admitted apps of this node, their cache, and the operator's directory."""

    def __init__(
        self,
        store: NodeStore,
        mpk_of: Callable[[], bytes | None],
        *,
        directory: Path | None = None,
        max_version_step: int = 1000,
        cache_entries: int = 1024,
        cache_bytes: int = 16 * 1024 * 1024,
        vouch_threshold: Callable[[], int] = lambda: 1,
        max_apps: int = 0,
        new_app_rotations: int = DEFAULT_NEW_APP_ROTATIONS,
    ) -> None:
        self.store = store
        self.directory = directory
        self._mpk_of = mpk_of
        self._settings = (max_version_step, cache_entries, cache_bytes, max_apps)
        self._new_app_rotations = new_app_rotations
        self._vouch_threshold = vouch_threshold
        self.registry: AppRegistry | None = None
        self.frozen_alerts = 0
        self._batch: dict[bytes, StoredApp] | None = None

    # --- loading ----------------------------------------------------------------------------

    def ready(self, now: int) -> AppRegistry | None:
        """The registry, loaded from the store and the directory once the MPK is known."""
        if self.registry is not None:
            self.registry.vouch_threshold = max(1, self._vouch_threshold())
            return self.registry
        mpk = self._mpk_of()
        if mpk is None:
            return None
        self.registry = self._load(mpk)
        self.reload(now)
        return self.registry

    def _load(self, mpk: bytes) -> AppRegistry:
        """A registry holding exactly the admitted apps in the store."""
        step, entries, size, max_apps = self._settings
        reg = AppRegistry(
            mpk,
            persist=self._persist,
            max_version_step=step,
            vouch_threshold=max(1, self._vouch_threshold()),
            cache_entries=entries,
            cache_bytes=size,
            max_apps=max_apps,
            new_app_rotations=self._new_app_rotations,
        )
        for row in self.store.apps():
            try:
                reg.restore(
                    PolicyBundle.decode(row.bundle),
                    floor=row.version_floor,
                    frozen=row.frozen,
                    admitted_by=AdmittedBy(row.admitted_by),
                    rotations=[RotationRecord.decode(r) for _, r in row.rotations],
                )
            except (ValueError, PolicyError) as exc:
                log.error(
                    "stored app refused",
                    extra={"fields": {"app": row.app_id.hex(), "reason": str(exc)}},
                )
        return reg

    def reload(self, now: int) -> dict[str, int]:
        """Read the operator's directory (``*.policy``): admit new apps, offer newer versions.

        A file of an app already admitted is offered like any push: it must be above the
        app's floor and agree with its chain (it never lowers the floor, replaces the
        chain or lifts a freeze; :meth:`resolve_fork` does that, on the operator's word).
        Returns counts of ``admitted``, ``updated``, ``refused`` and ``frozen`` files.
        """
        counts = {"admitted": 0, "updated": 0, "refused": 0, "frozen": 0}
        reg = self.registry
        if reg is None or self.directory is None or not self.directory.is_dir():
            return counts
        self._batch = {}  # one store transaction for the whole directory
        try:
            self._read_directory(reg, self.directory, now, counts)
        finally:
            batch, self._batch = self._batch, None
            if batch:
                try:
                    self.store.put_apps(batch.values())
                except StoreError:
                    # Nothing of the directory was stored (one transaction): the registry
                    # took the files' changes as they were queued, so it is loaded again
                    # from the store, and holds what the store holds.
                    self.registry = self._load(reg.kms_mpk)
                    raise
        return counts

    def _read_directory(
        self, reg: AppRegistry, directory: Path, now: int, counts: dict[str, int]
    ) -> None:
        for f in sorted(directory.glob("*.policy")):
            try:
                bundle = PolicyBundle.decode(f.read_bytes())
            except (OSError, ValueError) as exc:
                counts["refused"] += 1
                log.warning(
                    "policy file refused", extra={"fields": {"file": f.name, "reason": str(exc)}}
                )
                continue
            app_id = bundle.signed.policy.app_id
            known = app_id in reg
            rec = reg.record(app_id)
            if rec is not None and rec.frozen:
                counts["frozen"] += 1  # only an explicit resolve-fork lifts a freeze
                continue
            if rec is not None and bundle.signed.policy.version <= rec.floor:
                continue  # an older file (e.g. the bundle that first admitted the app)
            if known:
                out = reg.offer(bundle, now=now)
            else:
                out = reg.admit(bundle, now=now, by=AdmittedBy.OPERATOR)
            if out.accepted:
                counts["updated" if known else "admitted"] += 1
            elif out.reason not in (PolicyFailure.DUPLICATE, PolicyFailure.STALE_VERSION):
                counts["refused"] += 1
                log.warning(
                    "policy file refused",
                    extra={"fields": {"file": f.name, "reason": out.reason and out.reason.value}},
                )

    def resolve_fork(self, app_id: bytes, raw: bytes, now: int) -> dict[str, Any]:
        """The operator lifts a fork's freeze with the owner's bundle (admin ``resolve-fork``).

        The bundle's version must exceed the app's floor and its chain must extend one
        of the branches seen; see :meth:`AppRegistry.resolve_fork`."""
        reg = self.ready(now)
        if reg is None:
            return {"resolved": False, "reason": "not-serving"}
        try:
            bundle = PolicyBundle.decode(raw)
        except ValueError as exc:
            return {"resolved": False, "reason": "malformed", "detail": str(exc)[:500]}
        if bundle.signed.policy.app_id != app_id:
            return {"resolved": False, "reason": "app_id_mismatch", "detail": "another app"}
        out = reg.resolve_fork(bundle)
        if not out.accepted:
            return {
                "resolved": False,
                "reason": out.reason.value if out.reason else "refused",
                "detail": out.detail[:500],
            }
        log.warning(
            "fork resolved by the operator",
            extra={"fields": {"app": app_id.hex(), "version": out.version}},
        )
        return {"resolved": True, "app_id": app_id.hex(), "version": out.version}

    def _persist(self, rec: AppRecord) -> None:
        row = StoredApp(
            rec.app_id,
            rec.floor,
            rec.bundle.encode(),
            rec.frozen,
            rec.admitted_by.value,
            tuple(rec.rotation_rows()),
        )
        if self._batch is not None:
            self._batch[rec.app_id] = row
        else:
            self.store.put_apps([row])
        if rec.frozen:
            self.frozen_alerts += 1
            log.error(
                "app frozen: two different owner rotations were seen; no release, no new "
                "policy until the operator resolves it",
                extra={"fields": {"app": rec.app_id.hex()}},
            )

    # --- the releaser's lookup ----------------------------------------------------------------

    def __call__(self, app_id: bytes, now: int) -> AppPolicy | None:
        reg = self.ready(now)
        return None if reg is None else reg.current(app_id, now)

    def is_frozen(self, app_id: bytes, now: int) -> bool:
        reg = self.ready(now)
        return reg is not None and reg.is_frozen(app_id)

    def candidate(
        self, request: KeyRequest | AppKeyCertRequest, now: int
    ) -> tuple[PolicyBundle | None, str]:
        """The bundle a request carries or names, for an app this node has not admitted.

        ``(None, "")`` when the app is admitted or the request names no bundle;
        ``(None, reason)`` when the bundle cannot be used; ``(bundle, "")`` otherwise.
        """
        reg = self.ready(now)
        body = request.body
        if reg is None or body.app_id in reg or not body.policy_hash:
            return None, ""
        if request.bundle:
            if bundle_hash(request.bundle) != body.policy_hash:
                return None, "policy_hash is not the hash of the bundle carried"
            try:
                bundle = PolicyBundle.decode(request.bundle)
            except ValueError as exc:
                return None, f"malformed bundle: {exc}"
            if bundle.encode() != request.bundle:
                return None, "the bundle is not canonically encoded"
        else:
            cached = reg.cached_by_hash(body.policy_hash)
            if cached is None:
                return None, "the named bundle is not cached here: send it with the request"
            bundle = cached
        if bundle.signed.policy.app_id != body.app_id:
            return None, "the bundle is for another app"
        try:
            reg.candidate(bundle, now=now)
        except PolicyError as exc:
            return None, f"{exc.reason.value}: {exc.detail}"
        return bundle, ""

    def vouched(self, app_id: bytes, now: int) -> dict[int, PolicyBundle]:
        """The bundles of an app not admitted here that members sent, by member."""
        reg = self.ready(now)
        return {} if reg is None else reg.vouched(app_id)

    @staticmethod
    def agrees(bundle: PolicyBundle, vouched: list[PolicyBundle]) -> str:
        """``""`` when ``bundle``'s owner chain agrees with every chain members sent (one
        extends the other) and its signer is the owner after their union; else why not."""
        app_id = bundle.signed.policy.app_id
        try:
            union = OwnerChain.from_records(
                app_id,
                bundle.rotations,
                first_owner=None if bundle.rotations else bundle.signed.policy.owner_key,
            )
            for b in vouched:
                union = union.merge(
                    OwnerChain.from_records(
                        app_id,
                        b.rotations,
                        first_owner=None if b.rotations else b.signed.policy.owner_key,
                    )
                )
        except PolicyError as exc:
            return f"the committee holds another owner chain for the app: {exc.reason.value}"
        if union.current != bundle.signed.policy.owner_key:
            return "not_owner: the committee holds a rotation away from the bundle's signer"
        return ""

    def admit_released(self, bundle: PolicyBundle, now: int) -> OfferOutcome | None:
        """After a release the bundle's policy allowed: the app is admitted here."""
        reg = self.ready(now)
        if reg is None:
            return None
        out = reg.admit(bundle, now=now, by=AdmittedBy.KEY_REQUEST)
        log.info(
            "app admitted by an attested key request",
            extra={"fields": {"app": bundle.signed.policy.app_id.hex(), "ok": out.accepted}},
        )
        return out

    # --- offers (HTTP and gossip) -------------------------------------------------------------

    def offer(
        self,
        raw: bytes,
        now: int,
        voucher: int | None = None,
        members: frozenset[int] | None = None,
    ) -> PolicyOfferResult:
        """A bundle pushed by anyone (``voucher`` None) or sent by committee member ``voucher``.
        ``members`` are the current committee's indices: only their vouches count."""
        reg = self.ready(now)
        if reg is not None and members is not None:
            reg.current_members = members
        if reg is None:
            return PoliciesUnavailable("no master public key yet")
        digest = bundle_hash(raw)
        seen = reg.seen(digest, voucher)
        if seen is not None:  # a copy of a bundle already held, cached or refused for good
            return seen
        if voucher is None:
            early = _too_many_rotations(raw, reg)
            if early is not None:  # before any key is decoded or signature checked
                return early
        try:
            bundle = PolicyBundle.decode(raw)
        except ValueError as exc:
            out = OfferOutcome(False, None, None, PolicyFailure.MALFORMED, str(exc)[:500])
            reg.remember_refusal(digest, out)
            return out
        out = reg.offer(bundle, now=now, voucher=voucher)
        if not out.accepted:
            reg.remember_refusal(digest, out)
        return out

    # --- gossip helpers -----------------------------------------------------------------------

    def page(self, start: bytes, limit: int, now: int) -> tuple[list[tuple[bytes, int]], bytes]:
        reg = self.ready(now)
        return ([], b"") if reg is None else reg.page(start, limit)

    def between(self, start: bytes, end: bytes, now: int) -> dict[bytes, int]:
        reg = self.ready(now)
        return {} if reg is None else dict(reg.between(start, end))

    def newer_than(self, digest: PolicyDigest, now: int) -> list[bytes]:
        """Apps in the digest's range held here in a newer version than it names (at most
        ``MAX_ANSWERS_PER_DIGEST``), found by walking the sorted index from the range's start
        over at most ``MAX_DIGEST_ENTRIES + MAX_ANSWERS_PER_DIGEST`` apps: a digest costs
        the same whatever the number of apps admitted."""
        reg = self.ready(now)
        if reg is None:
            return []
        theirs = {h.app_id: h.version for h in digest.held}
        out: list[bytes] = []
        scan = itertools.islice(
            reg.between(digest.start, digest.end), MAX_DIGEST_ENTRIES + MAX_ANSWERS_PER_DIGEST
        )
        for app, version in scan:
            if version > theirs.get(app, 0):
                out.append(app)
                if len(out) >= MAX_ANSWERS_PER_DIGEST:
                    break
        return out

    def bundle_bytes(self, app_id: bytes) -> bytes | None:
        """The held bundle of an admitted app, encoded, to pass on to a peer."""
        rec = self.registry.record(app_id) if self.registry is not None else None
        return None if rec is None else bytes(rec.bundle.encode())

    def describe(self, app_id: bytes, now: int) -> dict[str, Any] | None:
        reg = self.ready(now)
        rec = reg.record(app_id) if reg is not None else None
        if rec is None:
            return None
        if rec.frozen:
            return {"app_id": app_id.hex(), "frozen": True, "version_floor": rec.floor}
        policy = reg.current(app_id, now) if reg is not None else None
        if policy is None:
            return None
        return {
            "app_id": app_id.hex(),
            "version": policy.version,
            "not_before": policy.not_before,
            "expires": policy.expires,
            "purposes": list(policy.purposes),
            "allowed_tcb_statuses": list(policy.allowed_tcb_statuses),
            "measurements": len(policy.measurements),
            "owner_key": policy.owner_key.hex(),
            # The signed bundle itself, so that a reader (``kms agent``) checks the owner's
            # signature rather than trusting this node's summary.
            "bundle": bytes(rec.bundle.encode()).hex(),
        }

    def stats(self) -> dict[str, Any]:
        reg = self.registry
        if reg is None:
            return {"admitted": 0, "frozen": [], "cache_entries": 0, "cache_bytes": 0}
        entries, size = reg.cache_stats()
        return {
            "admitted": len(reg),
            "frozen": [a.hex() for a in reg.frozen_apps()[:32]],
            "frozen_count": len(reg.frozen_apps()),
            "cache_entries": entries,
            "cache_bytes": size,
            "cache_evictions": reg.evictions,
        }


def _too_many_rotations(raw: bytes, reg: AppRegistry) -> OfferOutcome | None:
    """A pushed bundle of an app not admitted here with more rotations than a new app may
    carry, seen from its msgpack structure alone (decoding the bundle would decode every
    rotation's keys first). ``None``: not such a bundle, or not parsable (decoded as usual)."""
    try:
        wire = msgpack.unpackb(raw, raw=False)
        rotations, app_id = wire[3], wire[2][2][2]
    except (ValueError, TypeError, IndexError, KeyError, msgpack.ExtraData):
        return None
    if not isinstance(rotations, list) or not isinstance(app_id, bytes):
        return None
    if len(rotations) <= reg.new_app_rotations or app_id in reg:
        return None
    return OfferOutcome(
        False,
        app_id,
        None,
        PolicyFailure.TOO_MANY_ROTATIONS,
        f"{len(rotations)} rotations: this node accepts at most {reg.new_app_rotations} "
        "for an app it has not admitted",
    )
