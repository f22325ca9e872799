"""App-key certification at one node, sans-I/O: the key-release pipeline for a root public key.

A CVM that derived its dstack app root key (a key release for purpose
:data:`~kms.policy.ROOT_PURPOSE` at root version ``v``) asks each node to
certify the root's public key with an :class:`~kms.protocol.AppKeyCertRequest`.
The node runs the same steps as a key release (``kms.node.release``), with
the same refusals, and the release role (``kms.node.keyrelease``) gathers the
same inputs between them:

:meth:`AppKeyCertifier.check` ``(request, now, share) -> CertNeeds | ReleaseRefused``
  1. this node holds a share of the current epoch (there is no ephemeral key:
     the answer is public);
  2. freshness: ``|now - timestamp| ≤ max_skew``;
  3. the quote parses and its ``report_data`` is ``SHA-512(body)``; the body's
     encoding starts with its own type, so a key-release quote is refused here
     (``report-data-mismatch``) and a certificate quote is refused by a key release.

:meth:`AppKeyCertifier.screen`
  4. the nonce was not seen for another request (one replay cache with key release:
     one nonce space; an identical request is answered again, the certificate partials
     being deterministic, and nothing more is recorded: ``kms.node.release.nonce_use``);
  5. the quote's PCK chain verifies to a pinned root.

``kms.node.release.gate``
  6. the app's state at this node (frozen, bundle unusable, not measured, ...).

:meth:`AppKeyCertifier.answer` with :class:`CertInputs` read after the collateral fetch:
  the share, freshness, nonce and gate judged again, then
  7. the quote verifies against the collateral;
  8. the app's policy (current, or the candidate bundle's with the app id
     measured) admits the CVM for purpose ``dstack-app-root`` at key version
     ``body.version``;
  9. ``body.version`` is the policy's current root version
     (:func:`kms.policy.root_version`), else ``not-current-root-version``;
  10. this node has certified no other root key for ``(app, version)``
      (``inputs.certified``, the first key it certified, kept durably by the
      shell), else ``app-key-conflict``: two CVMs of one app derived different
      roots for one version, which the threshold derivation never does for
      honest inputs, so the operator is alerted.

Then the two partials ``s_i·H_APPCERT(m)`` over ``link_message(app, pk)`` and
``qkms_message(app, pk, v, epoch)`` (``mpc.appcert``), signed by the node's
identity under ``CTX_APP_CERT_RESPONSE``. :class:`Certified` carries the nonce,
the durable record to keep and the audit record. Status codes are chosen in
``kms.api``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kms.attest import (
    Collateral,
    ParsedQuote,
    QuoteVerificationError,
    check_pck_chain,
    parse_tdx_quote,
)
from kms.node.release import (
    Admitted,
    AppState,
    AttestedRequestFacts,
    Candidate,
    KeyRefusalReason,
    KeyReleaser,
    ReleaseRefused,
    gate,
    refuse,
)
from kms.policy import ROOT_PURPOSE, Evidence, PolicyError, admits, root_version
from kms.protocol import AppKeyCertRequest, AppKeyCertShare
from mpc import appcert
from mpc.secret import SecretShare
from mpc.sig import CTX_APP_CERT_RESPONSE

KIND = "app-key-cert"
"""The ``kind`` of an app-key certificate's audit record (a key release's has none)."""


def certified_name(app_id: bytes, version: int) -> str:
    """The store meta entry holding the first root key this node certified for
    ``(app_id, version)``."""
    return f"appcert/{bytes(app_id).hex()}/{int(version)}"


@dataclass(frozen=True)
class AppCertAuditRecord:
    """The audit record of one certificate issued; public values only."""

    app: str
    version: int
    root_public: str
    measurement: str
    request: str
    time: int
    epoch: int
    simulated: int

    def as_dict(self) -> dict[str, str | int]:
        return {
            "kind": KIND,
            "app": self.app,
            "purpose": ROOT_PURPOSE,
            "version": self.version,
            "root_public": self.root_public,
            "measurement": self.measurement,
            "request": self.request,
            "time": self.time,
            "epoch": self.epoch,
            "simulated": self.simulated,
        }


@dataclass(frozen=True)
class CertNeeds(AttestedRequestFacts):
    """A certificate request that passed :meth:`AppKeyCertifier.check`, and what the rest
    needs gathered for it (as ``kms.node.release.Needs``)."""

    request: AppKeyCertRequest
    request_hash: bytes
    quote: ParsedQuote


@dataclass(frozen=True)
class CertInputs:
    """What :meth:`AppKeyCertifier.answer` judges by, gathered after the collateral fetch."""

    now: int
    epoch: int
    share: SecretShare | None
    nonce_seen: bool
    app: AppState
    collateral: Collateral | QuoteVerificationError
    certified: bytes | None
    """The root key this node already certified for the request's ``(app, version)``."""


@dataclass(frozen=True)
class Certified:
    share: AppKeyCertShare
    nonce: bytes
    record: tuple[str, bytes]
    """``(meta name, root key)``: the durable record of the key certified for ``(app, v)``."""
    audit: AppCertAuditRecord


class AppKeyCertifier:
    """The certification steps of one node, with the releaser's identity, trust roots and
    skew (values only, nothing remembered)."""

    def __init__(self, releaser: KeyReleaser) -> None:
        self.index = releaser.index
        self._key = releaser.identity_key
        self._verifier = releaser.verifier
        self.max_skew = releaser.max_skew

    def _stale(self, request: AppKeyCertRequest, now: int) -> ReleaseRefused | None:
        ts = request.body.timestamp
        if abs(now - ts) > self.max_skew:
            return refuse(
                KeyRefusalReason.STALE, f"timestamp {ts} is more than {self.max_skew} s from {now}"
            )
        return None

    def check(
        self, request: AppKeyCertRequest, *, now: int, share: SecretShare | None
    ) -> CertNeeds | ReleaseRefused:
        """Steps 1-3."""
        if share is None:
            return refuse(
                KeyRefusalReason.NOT_SERVING, "this node holds no share of the current epoch"
            )
        stale = self._stale(request, now)
        if stale is not None:
            return stale
        try:
            quote = parse_tdx_quote(request.quote)
        except QuoteVerificationError as exc:
            return refuse(KeyRefusalReason.QUOTE, str(exc))
        if quote.fields.report_data != request.body.report_data():
            return refuse(
                KeyRefusalReason.BINDING, "report_data is not SHA-512 of the request body"
            )
        return CertNeeds(request, request.request_hash(), quote)

    def screen(self, needs: CertNeeds, *, now: int, nonce_seen: bool) -> ReleaseRefused | None:
        """Steps 4-5: the nonce's replay test, then the quote's PCK chain."""
        if nonce_seen:
            return refuse(KeyRefusalReason.REPLAY, "this nonce was already used")
        try:
            check_pck_chain(needs.quote, self._verifier.roots, now=now)
        except QuoteVerificationError as exc:
            return refuse(KeyRefusalReason.QUOTE, str(exc))
        return None

    def answer(self, needs: CertNeeds, inputs: CertInputs) -> Certified | ReleaseRefused:
        """Steps 6-10 and the signed partials, judged at ``inputs.now``."""
        req, body, now = needs.request, needs.request.body, inputs.now
        share = inputs.share
        if share is None:
            return refuse(
                KeyRefusalReason.NOT_SERVING, "this node holds no share of the current epoch"
            )
        stale = self._stale(req, now)
        if stale is not None:
            return stale
        if inputs.nonce_seen:
            return refuse(KeyRefusalReason.REPLAY, "this nonce was already used")
        closed = gate(needs, inputs.app)
        if closed is not None:
            return closed
        if isinstance(inputs.collateral, QuoteVerificationError):
            return refuse(KeyRefusalReason.QUOTE, str(inputs.collateral))
        try:
            verified = self._verifier.verify(needs.quote, inputs.collateral, now=now)
        except QuoteVerificationError as exc:
            return refuse(KeyRefusalReason.QUOTE, str(exc))
        app = inputs.app
        policy = app.policy if isinstance(app, Admitted | Candidate) else None
        if policy is None:
            return refuse(KeyRefusalReason.NO_POLICY, "no current policy for this app")
        try:
            admits(
                policy,
                td=verified,
                tcb_status=verified.tcb_status,
                purpose=ROOT_PURPOSE,
                now=now,
                event_log=Evidence(verified, bytes(req.event_log) if req.event_log else None),
                min_version=body.min_policy_version,
                key_version=body.version,
                app_id=body.app_id,
                require_app_id=isinstance(app, Candidate),
            )
        except PolicyError as exc:
            return refuse(KeyRefusalReason.POLICY, f"{exc.reason.value}: {exc.detail}")
        current = root_version(policy)
        if body.version != current:
            return refuse(
                KeyRefusalReason.NOT_CURRENT_ROOT,
                f"root version {body.version} is not the app's current one ({current})",
            )
        pk = bytes(body.root_public)
        if inputs.certified is not None and inputs.certified != pk:
            return refuse(
                KeyRefusalReason.KEY_CONFLICT,
                f"this node certified another root key for app {body.app_id.hex()} "
                f"version {body.version}: {inputs.certified.hex()}",
            )
        app_id, version, epoch = bytes(body.app_id), body.version, inputs.epoch
        link = appcert.sign_partial(share, appcert.link_message(app_id, pk))
        qkms = appcert.sign_partial(share, appcert.qkms_message(app_id, pk, version, epoch))
        unsigned = AppKeyCertShare(
            needs.request_hash,
            app_id,
            version,
            epoch,
            int(self.index),
            pk,
            link.to_bytes(),
            qkms.to_bytes(),
            bytes(64),
        )
        sig = self._key.sign(CTX_APP_CERT_RESPONSE, unsigned.statement())
        signed = AppKeyCertShare(
            needs.request_hash,
            app_id,
            version,
            epoch,
            int(self.index),
            pk,
            link.to_bytes(),
            qkms.to_bytes(),
            sig,
        )
        audit = AppCertAuditRecord(
            app=app_id.hex(),
            version=version,
            root_public=pk.hex(),
            measurement=verified.mr_td.hex()[:32] + "/" + verified.rtmr3.hex()[:32],
            request=needs.request_hash.hex(),
            time=now,
            epoch=epoch,
            simulated=int(verified.simulated),
        )
        return Certified(signed, bytes(body.nonce), (certified_name(app_id, version), pk), audit)


__all__ = [
    "KIND",
    "AppCertAuditRecord",
    "AppKeyCertifier",
    "CertInputs",
    "CertNeeds",
    "Certified",
    "certified_name",
]
