"""The release role of a node: gathers the key-release pipeline's inputs and records the answers.

``kms.node.release`` decides; this module does the I/O between its steps, in
this order (see ``docs/design.md``, "Key release pipeline"):

1. ``check`` the decoded request (no I/O);
2. read the replay cache (a store read) and ``screen`` the request;
3. read the app's state from the policy source (dictionary reads; for an app
   not admitted, a consultation of the committee that may send queries) and
   ``gate`` the request on it;
4. fetch collateral for the quote's platform (network, bounded), then read the
   time, the share, the replay cache and the app's current policy again;
5. ``answer``; on release, admit a candidate app, record the nonce (with the request
   hash) and the audit records through the group commit (``kms.node.commit``: one
   store transaction for the releases that arrive together), answer once they are
   durable, and count; an identical request answered again records nothing (it waits
   until the first one's records are durable); on refusal, count and log.

It returns typed results (:data:`ReleaseResult`); ``kms.api`` chooses HTTP status
codes from them. It holds ports, not decisions: a store, a clock, the metrics, a
view of the node's share and epoch, a collateral source and a policy source.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from kms.attest import Collateral, ParsedQuote, QuoteFailure, QuoteVerificationError
from kms.node.appcert import AppKeyCertifier, Certified, CertInputs, CertNeeds, certified_name
from kms.node.commit import GroupCommit
from kms.node.metrics import NodeMetrics
from kms.node.release import (
    Admitted,
    AppState,
    KeyRefusalReason,
    KeyReleaser,
    Needs,
    NonceUse,
    Released,
    ReleaseInputs,
    ReleaseRefused,
    gate,
    nonce_entry,
    nonce_use,
    refuse,
)
from kms.policy import AppPolicy, PolicyBundle
from kms.protocol import AppKeyCertRequest, KeyRefusal, KeyRequest
from kms.store import NodeStore
from mpc.codec import MessageDecodeError
from mpc.secret import RNG, SecretShare

log = logging.getLogger("quorum_kms.node")


@dataclass(frozen=True)
class KeysNotServed:
    """This node releases no keys at all (no releaser configured)."""

    detail: str = "this node does not release keys"

    @property
    def reason(self) -> KeyRefusalReason:
        return KeyRefusalReason.NOT_SERVING

    @property
    def refusal(self) -> KeyRefusal:
        return KeyRefusal(self.reason.value, self.detail)


ReleaseResult = Released | ReleaseRefused | KeysNotServed
"""What a key request got from this node."""

CertResult = Certified | ReleaseRefused | KeysNotServed
"""What an app-key certificate request got from this node."""


class Clock(Protocol):
    def now(self) -> float: ...


class CollateralSource(Protocol):
    """Where collateral for a quote's platform comes from (``kms.attest.pccs.CollateralProvider``)."""

    def get(self, quote: ParsedQuote) -> Collateral: ...

    async def prepare(self, quote: ParsedQuote, *, now: int) -> None: ...


class FixedCollateral:
    """One collateral for every platform, at hand (in-process committees, tests)."""

    def __init__(self, collateral: Collateral | object) -> None:
        self._collateral = collateral

    def get(self, quote: ParsedQuote) -> Collateral:
        return self._collateral  # type: ignore[return-value]

    async def prepare(self, quote: ParsedQuote, *, now: int) -> None:
        return None


class PolicySource(Protocol):
    """What the release role reads and tells of the node's app policies
    (``kms.node.policy_sync.PolicySync``)."""

    def app_state(
        self, needs: Needs | CertNeeds, now: int
    ) -> tuple[AppState, PolicyBundle | None]: ...

    def current(self, app_id: bytes, now: int) -> AppPolicy | None: ...

    def admit_released(self, bundle: PolicyBundle, now: int) -> None: ...

    def ask_about(self, app_id: bytes) -> None: ...


class FixedPolicies:
    """Policies from a plain mapping, for every app admitted (in-process committees, tests)."""

    def __init__(self, policies: Mapping[bytes, AppPolicy]) -> None:
        self._policies = dict(policies)

    def app_state(self, needs: Needs | CertNeeds, now: int) -> tuple[AppState, PolicyBundle | None]:
        return Admitted(self.current(needs.app_id, now)), None

    def current(self, app_id: bytes, now: int) -> AppPolicy | None:
        return self._policies.get(app_id)

    def admit_released(self, bundle: PolicyBundle, now: int) -> None:
        return None

    def ask_about(self, app_id: bytes) -> None:
        return None


NO_COLLATERAL = QuoteVerificationError(
    QuoteFailure.COLLATERAL_UNAVAILABLE, "this node has no collateral source"
)


class KeyRelease:
    """The release role: one node's shell around :class:`KeyReleaser`."""

    NONCE_TTL = 600

    def __init__(
        self,
        store: NodeStore,
        clock: Clock,
        metrics: NodeMetrics,
        share_and_epoch: Callable[[], tuple[SecretShare | None, int]],
        policy_source: PolicySource,
        warn: Callable[[str, str], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._share_and_epoch = share_and_epoch
        self.policy_source = policy_source
        self._warn = warn
        self.releaser: KeyReleaser | None = None
        self.collateral: CollateralSource | None = None
        self.rng: RNG = os.urandom
        """Randomness for the answers' encryption."""
        self.commits = GroupCommit(store)
        """The store writes of releases and certificates: committed in groups, each
        answered once durable; nonces pending a commit are read through it."""

    def _nonce_use(self, needs: Needs | CertNeeds, epoch: int | None = None) -> NonceUse:
        """The replay cache's word on the request's nonce: fresh, used by this very
        request in ``epoch`` (answered again, nothing recorded), or used by another
        (refused)."""
        raw = self.commits.get_meta("nonce/" + needs.nonce.hex())
        return nonce_use(
            raw, now=int(self._clock.now()), request_hash=needs.request_hash, epoch=epoch
        )

    def _seen_nonce(self, needs: Needs | CertNeeds) -> bool:
        return self._nonce_use(needs) is NonceUse.REPLAYED

    def _collateral_for(self, needs: Needs | CertNeeds) -> Collateral | QuoteVerificationError:
        if self.collateral is None:
            return NO_COLLATERAL
        try:
            return self.collateral.get(needs.quote)
        except QuoteVerificationError as exc:
            return exc

    async def release(self, request: KeyRequest) -> ReleaseResult:
        """Answer a CVM's decoded key request."""
        started = time.perf_counter()
        res = await self._release(request)
        reason = None if isinstance(res, Released) else res.reason
        self._metrics.key_request(reason, time.perf_counter() - started)
        return res

    def undecodable(self, exc: MessageDecodeError) -> ReleaseRefused | KeysNotServed:
        """A key request body that does not decode (refused by ``kms.api`` before any step);
        a node that releases no keys says so, whatever it was sent."""
        if self.releaser is None:
            self._metrics.key_request(KeyRefusalReason.NOT_SERVING, 0.0)
            return KeysNotServed()
        res = refuse(KeyRefusalReason.MALFORMED, str(exc))
        self._metrics.key_request(res.reason, 0.0)
        return self._refused(res)

    async def _release(self, request: KeyRequest) -> ReleaseResult:
        releaser = self.releaser
        if releaser is None:
            return KeysNotServed()
        now = int(self._clock.now())
        # The cheap checks first: nothing is fetched for a request that fails them, and
        # only a quote whose PCK chain verifies to a pinned root names a platform to fetch.
        needs = releaser.check(request, now=now, share=self._share_and_epoch()[0])
        if isinstance(needs, ReleaseRefused):
            return self._refused(needs)
        early = releaser.screen(needs, now=now, nonce_seen=self._seen_nonce(needs))
        if early is not None:
            return self._refused(early)
        # A frozen app is refused; an app not admitted here may be admitted by the bundle
        # the request carries (bound by the quote's report data).
        app, bundle = self.policy_source.app_state(needs, now)
        closed = gate(needs, app)
        if closed is not None:
            self._metrics.rejected_input("key request: " + closed.reason.value)
            return closed
        if self.collateral is not None:
            await self.collateral.prepare(needs.quote, now=now)
            # The fetch may have waited (its timeouts, the fetch limiter): freshness,
            # the policy, the collateral and the nonce's lifetime are judged now, and the
            # app's state is read again whatever it was: an app admitted, updated or
            # frozen meanwhile is judged as it is now (a candidate bundle read before the
            # wait may have been replaced by a newer version, or frozen by a fork).
            now = int(self._clock.now())
            app, bundle = self.policy_source.app_state(needs, now)
        share, epoch = self._share_and_epoch()
        # Read again after the wait (the store, and the nonces pending a commit); from here
        # until the nonce is pending in the group commit nothing awaits, so of two identical
        # requests answered at once only the first records its nonce and audit.
        use = self._nonce_use(needs, epoch)
        res = releaser.answer(
            needs,
            ReleaseInputs(
                now=now,
                epoch=epoch,
                share=share,
                nonce_seen=use is NonceUse.REPLAYED,
                app=app,
                collateral=self._collateral_for(needs),
                rng=self.rng,
            ),
        )
        if isinstance(res, ReleaseRefused):
            self._refused(res)
            if res.reason is KeyRefusalReason.NO_POLICY:
                self.policy_source.ask_about(needs.app_id)  # perhaps a member knows it
            return res
        if bundle is not None:
            self.policy_source.admit_released(bundle, now)
        if use is NonceUse.REPEAT:
            # The very request answered before (encrypted again to the same ephemeral key):
            # its nonce and audit records are kept already, or pending; a repeat writes
            # nothing and is answered once they are durable.
            await self._durable(needs)
            self._metrics.queued("kms/key-response")
            return res
        # The replay cache survives restarts; the audit records are committed as one group.
        # Remembered for longer than any timestamp the releaser still accepts.
        ttl = max(self.NONCE_TTL, 2 * releaser.max_skew + 60)
        await self._record(
            "nonce/" + res.nonce.hex(),
            nonce_entry(now + ttl, needs.request_hash, epoch),
            [a.as_dict() for a in res.audit],
        )
        self._metrics.queued("kms/key-response")
        log.info(
            "key released",
            extra={
                "fields": {
                    "app": res.audit[0].app,
                    "purposes": len(res.audit),
                    "simulated": res.audit[0].simulated,
                }
            },
        )
        return res

    # --- the store writes (group commit, ``kms.node.commit``) -------------------------------

    async def _record(
        self,
        name: str,
        value: bytes,
        records: list[dict[str, str | int]],
        also: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Record a release's nonce, audit records and further meta entries; return once
        they are durable. Called with nothing awaited since the nonce was read: the entries
        are pending (seen by ``_nonce_use``) before this first awaits. Raises
        ``StorageFull`` (every release of a failed batch), and then nothing is kept."""
        await self.commits.record(name, value, records, also or ())

    async def _durable(self, needs: Needs | CertNeeds) -> None:
        """Wait until the records of the request ``needs`` repeats are durable (at once when
        they are stored already); raises the commit's ``StorageFull`` if it failed."""
        await self.commits.wait_durable("nonce/" + needs.nonce.hex())

    def _refused(self, res: ReleaseRefused) -> ReleaseRefused:
        label = res.reason.value
        if res.reason is KeyRefusalReason.QUOTE:
            # The quote failure code (a QuoteFailure value): a bounded set of labels.
            label += ": " + res.detail.split(":", 1)[0][:40]
        self._metrics.rejected_input("key request: " + label)
        self._warn("cvm", f"key request refused: {res.reason.value}")
        return res

    # --- app-key certificates (``kms.node.appcert``) ---------------------------------------

    async def certify(self, request: AppKeyCertRequest) -> CertResult:
        """Answer a CVM's decoded app-key certificate request: the key-release steps, the
        root version and the per-(app, version) key record, then two signed partials."""
        res = await self._certify(request)
        self._metrics.app_key_cert(None if isinstance(res, Certified) else res.reason)
        return res

    def undecodable_cert(self, exc: MessageDecodeError) -> ReleaseRefused | KeysNotServed:
        """A certificate request body that does not decode (refused before any step)."""
        if self.releaser is None:
            self._metrics.app_key_cert(KeyRefusalReason.NOT_SERVING)
            return KeysNotServed()
        res = refuse(KeyRefusalReason.MALFORMED, str(exc))
        self._metrics.app_key_cert(res.reason)
        return self._cert_refused(res)

    async def _certify(self, request: AppKeyCertRequest) -> CertResult:
        releaser = self.releaser
        if releaser is None:
            return KeysNotServed()
        certifier = AppKeyCertifier(releaser)
        now = int(self._clock.now())
        needs = certifier.check(request, now=now, share=self._share_and_epoch()[0])
        if isinstance(needs, ReleaseRefused):
            return self._cert_refused(needs)
        early = certifier.screen(needs, now=now, nonce_seen=self._seen_nonce(needs))
        if early is not None:
            return self._cert_refused(early)
        app, bundle = self.policy_source.app_state(needs, now)
        closed = gate(needs, app)
        if closed is not None:
            return self._cert_refused(closed)
        if self.collateral is not None:
            await self.collateral.prepare(needs.quote, now=now)
            now = int(self._clock.now())
            app, bundle = self.policy_source.app_state(needs, now)
        # From here until the entries are pending in the group commit nothing awaits: the
        # key record read below (stored or pending) is the one the write replaces, so two
        # requests never both certify different keys.
        share, epoch = self._share_and_epoch()
        body = request.body
        use = self._nonce_use(needs, epoch)
        res = certifier.answer(
            needs,
            CertInputs(
                now=now,
                epoch=epoch,
                share=share,
                nonce_seen=use is NonceUse.REPLAYED,
                app=app,
                collateral=self._collateral_for(needs),
                certified=self.commits.get_meta(certified_name(body.app_id, body.version)),
            ),
        )
        if isinstance(res, ReleaseRefused):
            self._cert_refused(res)
            if res.reason is KeyRefusalReason.NO_POLICY:
                self.policy_source.ask_about(needs.app_id)
            return res
        if bundle is not None:
            self.policy_source.admit_released(bundle, now)
        if use is NonceUse.REPEAT:
            # The very request certified before (the partials are deterministic): its
            # nonce, audit and key records are kept already, or pending; a repeat writes
            # nothing and is answered once they are durable.
            await self._durable(needs)
            self._metrics.queued("kms/app-key-cert-share")
            return res
        ttl = max(self.NONCE_TTL, 2 * releaser.max_skew + 60)
        # One nonce space with key release; the first key certified per (app, version) is
        # kept for good (it is written again, unchanged, for the same key).
        await self._record(
            "nonce/" + res.nonce.hex(),
            nonce_entry(now + ttl, needs.request_hash, epoch),
            [res.audit.as_dict()],
            also=[res.record],
        )
        self._metrics.queued("kms/app-key-cert-share")
        log.info(
            "app key certified",
            extra={
                "fields": {
                    "app": res.audit.app,
                    "version": res.audit.version,
                    "simulated": res.audit.simulated,
                }
            },
        )
        return res

    def _cert_refused(self, res: ReleaseRefused) -> ReleaseRefused:
        label = res.reason.value
        if res.reason is KeyRefusalReason.QUOTE:
            label += ": " + res.detail.split(":", 1)[0][:40]
        self._metrics.rejected_input("app-key cert request: " + label)
        if res.reason is KeyRefusalReason.KEY_CONFLICT:
            # Two roots for one (app, version): the derivation never gives that to honest
            # CVMs, so the operator must look (also counted in qkms_app_key_conflicts_total).
            # Rate-limited like every refusal: only an admitted CVM reaches this step.
            self._warn("cvm", "app-key conflict: another root key for a certified app version")
        else:
            self._warn("cvm", f"app-key cert request refused: {res.reason.value}")
        return res
