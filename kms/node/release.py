"""Key release at one node, sans-I/O: a typed pipeline from a decoded request to an answer.

The HTTP app decodes the CVM's request once (msgpack or JSON) into a
:class:`~kms.protocol.KeyRequest`; this module never decodes bytes and never
fetches anything. It is a pipeline of pure steps over values; the release role
(``kms.node.keyrelease``) gathers the inputs each step says it needs, as values,
between the steps. Cheapest first, so that junk costs little; each refusal a
:class:`KeyRefusalReason` and no state change:

:meth:`KeyReleaser.check` ``(request, now, share) -> Needs | ReleaseRefused``
  1. this node holds a share of the current epoch; the request carries an
     ephemeral key for this node's index;
  2. freshness: ``|now - timestamp| ≤ max_skew``;
  3. the quote parses as a TDX quote (v4 or v5), once per request, and its
     ``report_data`` is ``SHA-512(body)``.

  :class:`Needs` names what the rest needs: the nonce to test, the platform
  (FMSPC, CA) to fetch collateral for, and the app whose policy state to read.

:meth:`KeyReleaser.screen` ``(needs, now, nonce_seen) -> ReleaseRefused | None``
  4. the nonce was not seen within the freshness window (replay cache) for another
     request: the shell reads the cache entry with :func:`nonce_use`, and an
     identical request (same request hash) is not a replay: it is answered again,
     and nothing more is recorded for it;
  5. the quote's PCK certificate chain verifies to a pinned root (Intel's, or a
     simulated root when the node accepts simulated quotes): only then does a
     quote name a platform worth fetching collateral for.

:func:`gate` ``(needs, app) -> ReleaseRefused | None``
  6. the app's state at this node, an :data:`AppState` value: frozen by an owner
     rotation fork; a bundle the request carries that cannot be used; a request
     that would admit an app but whose RTMR3 event log does not name it; the
     committee not yet asked enough about an app this node has not admitted.

:meth:`KeyReleaser.answer` ``(needs, inputs) -> Released | ReleaseRefused``
  with :class:`ReleaseInputs` read after the collateral fetch (time passed): the
  share, freshness, the nonce and the gate are judged again at that time, then

  7. the quote verifies against the collateral gathered for its platform (Intel
     DCAP: collateral not older than the node's floor, chain to the pinned root,
     TDX not SGX, TCB status within the node's floor; simulated roots only when
     configured);
  8. the app's policy (its current one, or the candidate bundle's) admits it for
     every purpose (measurement or compose hash read from the RTMR3 event log's
     boot prefix, whose ``app-id`` must then be the requested app, as it must for
     any entry when the policy is a candidate that would admit a new app; the
     policy's pins; TCB status, purpose, key version, policy version ≥ the one the
     CVM asked for, not expired). The log is replayed once per request, whatever
     the number of purposes.

Then, per purpose: the partial ``s_i·H(id)``, HPKE-encrypted to the CVM's
ephemeral key for this index (info and AAD bind the request hash, purpose,
epoch and index) and signed by the node's identity. :class:`Released` carries
the nonce to record and the audit records (app, purpose, measurement, request
hash, time; never key material). HTTP status codes are chosen in ``kms.api``
from the result's type and reason, never here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from kms.attest import (
    Collateral,
    ParsedQuote,
    QuoteVerificationError,
    Verifier,
    check_pck_chain,
    parse_tdx_quote,
)
from kms.policy import AppPolicy, EventLogError, Evidence, PolicyError, admits
from kms.policy.eventlog import replay_rtmr3
from kms.protocol import (
    AppKeyCertRequest,
    KeyRefusal,
    KeyRequest,
    KeyResponse,
    KeyShareResponse,
    release_info,
)
from mpc import hpke
from mpc.errors import InvalidEncoding
from mpc.ids import ParticipantIndex
from mpc.secret import RNG, SecretShare
from mpc.sig import CTX_KEY_RESPONSE, SigningKey
from mpc.tkd import derive_partial

DEFAULT_MAX_SKEW = 120


class KeyRefusalReason(enum.Enum):
    """Why a key request was refused: the ``reason`` of the ``kms/key-refusal`` answer."""

    MALFORMED = "malformed-request"
    NOT_SERVING = "not-serving"
    NO_KEY_FOR_INDEX = "no-ephemeral-key-for-this-node"
    STALE = "stale-request"
    BINDING = "report-data-mismatch"
    REPLAY = "replayed-nonce"
    QUOTE = "quote-rejected"
    NO_POLICY = "no-policy"
    POLICY = "policy-refused"
    FROZEN = "app-frozen"
    BUNDLE = "bundle-refused"
    RETRY = "retry-later"
    NOT_CURRENT_ROOT = "not-current-root-version"
    """An app-key certificate request for a root version the app's policy does not make
    current (``kms.policy.root_version``)."""
    KEY_CONFLICT = "app-key-conflict"
    """An app-key certificate request for a root key other than the one this node already
    certified for the same app and root version."""


CERT_ONLY_REASONS = frozenset({KeyRefusalReason.NOT_CURRENT_ROOT, KeyRefusalReason.KEY_CONFLICT})
"""Reasons only an app-key certificate request is refused for (``kms.node.appcert``)."""


# --- the replay cache's entries ----------------------------------------------------------------


class NonceUse(enum.Enum):
    """What the replay cache says of a request's nonce (:func:`nonce_use`)."""

    FRESH = "fresh"
    """Not seen, or its entry expired, or seen for this very request answered from an
    earlier epoch or from an epoch the entry does not name (the answer now comes from a
    share no audit record names: a new release): answer, then record the nonce."""
    REPEAT = "repeat"
    """Seen for this very request (same request hash) in this epoch: answer again,
    record nothing.
    Anyone holding the request's bytes could send them first (a member forwarding what
    the CVM sent it); refusing the CVM's own copy then would deny it service."""
    REPLAYED = "replayed"
    """Seen for another request, or recorded without a request hash: refuse."""


NONCE_EXPIRY_BYTES = 8


NONCE_EPOCH_BYTES = 8


def nonce_entry(expiry: int, request_hash: bytes, epoch: int | None = None) -> bytes:
    """The replay cache's value for a nonce: ``expiry (8 bytes, big-endian) ‖ request hash
    ‖ epoch (8 bytes, big-endian)``, the epoch whose share answered it. Entries written
    before epochs were kept end after the request hash."""
    out = expiry.to_bytes(NONCE_EXPIRY_BYTES, "big") + bytes(request_hash)
    if epoch is not None:
        out += epoch.to_bytes(NONCE_EPOCH_BYTES, "big")
    return out


def nonce_use(
    entry: bytes | None, *, now: int, request_hash: bytes, epoch: int | None = None
) -> NonceUse:
    """Judge a replay cache entry (``None``: none) for a request with ``request_hash``,
    answered now from the share of ``epoch`` (``None``: not known to the caller).

    An entry written before request hashes were kept is the expiry alone: while it has
    not expired it is a replay whatever the request, as it always was. An entry written
    before epochs were kept (the expiry and the request hash) names no epoch, so the
    identical request answered now is recorded as a new release. Only an identical
    request answered from the epoch the entry names is a repeat; from a later epoch it
    is a new release, and from an earlier one (a node does not go back) a replay. An
    entry of any other length is a replay."""
    if entry is None or int.from_bytes(entry[:NONCE_EXPIRY_BYTES], "big") <= now:
        return NonceUse.FRESH
    request_hash = bytes(request_hash)
    end = NONCE_EXPIRY_BYTES + len(request_hash)
    if len(entry) not in (end, end + NONCE_EPOCH_BYTES):
        return NonceUse.REPLAYED  # the expiry alone, or not an entry this code writes
    if entry[NONCE_EXPIRY_BYTES:end] != request_hash:
        return NonceUse.REPLAYED
    if epoch is None:
        return NonceUse.REPEAT
    if len(entry) == end:
        return NonceUse.FRESH  # no epoch named: whichever share answered, no record says
    kept = int.from_bytes(entry[end:], "big")
    if epoch == kept:
        return NonceUse.REPEAT
    # The same request answered before from another epoch's share: from a later epoch
    # the answer carries partials no audit record names yet; a node never goes back.
    return NonceUse.FRESH if epoch > kept else NonceUse.REPLAYED


@dataclass(frozen=True)
class ReleaseAuditRecord:
    """One audit record of a release (one per purpose); never key material."""

    app: str
    purpose: str
    version: int
    measurement: str
    request: str
    time: int
    epoch: int
    simulated: int

    def as_dict(self) -> dict[str, str | int]:
        return {
            "app": self.app,
            "purpose": self.purpose,
            "version": self.version,
            "measurement": self.measurement,
            "request": self.request,
            "time": self.time,
            "epoch": self.epoch,
            "simulated": self.simulated,
        }


class AttestedRequestFacts:
    """What every attested request (a key request, an app-key certificate request) tells
    the rest of the pipeline once its quote is parsed: the platform to fetch collateral
    for, the app, the nonce, and whether its log measures the app. A mixin of
    :class:`Needs` and ``kms.node.appcert.CertNeeds``, which hold ``request`` and ``quote``."""

    request: KeyRequest | AppKeyCertRequest
    quote: ParsedQuote

    @property
    def platform(self) -> tuple[str, str]:
        """``(FMSPC, CA)`` of the quote's PCK certificate: which collateral to fetch."""
        return self.quote.platform

    @property
    def app_id(self) -> bytes:
        return bytes(self.request.body.app_id)

    @property
    def nonce(self) -> bytes:
        return bytes(self.request.body.nonce)

    @property
    def names_bundle(self) -> bool:
        """The request carries or names a policy bundle (it may admit its app)."""
        return bool(self.request.body.policy_hash)

    def measures_app(self) -> bool:
        """The request's RTMR3 event log replays to the quote's RTMR3 and its boot
        prefix names the requested app: one boot admits at most one app."""
        log = self.request.event_log
        if not log:
            return False
        try:
            return replay_rtmr3(bytes(log), self.quote.fields.rtmr3).app_id == self.app_id
        except EventLogError:
            return False


@dataclass(frozen=True)
class Needs(AttestedRequestFacts):
    """A request that passed :meth:`KeyReleaser.check`, and what the rest of the
    pipeline needs gathered for it: the nonce to test, the platform to fetch
    collateral for, the app whose state to read."""

    request: KeyRequest
    request_hash: bytes
    """SHA-256 of the request's canonical encoding (``KeyRequest.request_hash``)."""
    quote: ParsedQuote
    """The quote, parsed once."""
    target: bytes
    """The CVM's ephemeral key for this node's index."""


# --- the app's state at this node, gathered by the shell -------------------------------------


@dataclass(frozen=True)
class Admitted:
    """The app as this node holds it: its current policy, or ``None`` if it has none."""

    policy: AppPolicy | None


@dataclass(frozen=True)
class Candidate:
    """An app not admitted here, with the policy of the bundle the request carries or names
    (signature, chain, key, time and version bound checked; the committee asked and its
    chains agree): the request may admit it, if its event log names the app."""

    policy: AppPolicy


@dataclass(frozen=True)
class AppFrozen:
    """Two different owner rotations were seen: no release until the operator resolves it."""


@dataclass(frozen=True)
class BundleUnusable:
    """The bundle the request carries or names cannot be used; ``why`` says why."""

    why: str


@dataclass(frozen=True)
class AppNotMeasured:
    """The request would admit an app, but its event log does not name that app."""


@dataclass(frozen=True)
class AwaitingCommittee:
    """Fewer than ``t`` other members have answered about the app yet: retry shortly."""


@dataclass(frozen=True)
class NoCommittee:
    """This node knows no committee yet."""


AppState = (
    Admitted
    | Candidate
    | AppFrozen
    | BundleUnusable
    | AppNotMeasured
    | AwaitingCommittee
    | NoCommittee
)
"""What the shell found about the requested app (:func:`gate` reads it)."""


@dataclass(frozen=True)
class ReleaseInputs:
    """The values :meth:`KeyReleaser.answer` judges a request by, gathered by the shell
    after the collateral fetch."""

    now: int
    epoch: int
    share: SecretShare | None
    nonce_seen: bool
    app: AppState
    collateral: Collateral | QuoteVerificationError
    """The collateral for the quote's platform, or why there is none."""
    rng: RNG
    """Randomness for the HPKE encryption of the answer."""


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Released:
    response: KeyResponse
    nonce: bytes
    audit: tuple[ReleaseAuditRecord, ...]


@dataclass(frozen=True)
class ReleaseRefused:
    reason: KeyRefusalReason
    detail: str

    @property
    def refusal(self) -> KeyRefusal:
        """The wire answer."""
        return KeyRefusal(self.reason.value, self.detail)


def refuse(reason: KeyRefusalReason, detail: str) -> ReleaseRefused:
    return ReleaseRefused(reason, detail[:500])


def gate(needs: object, app: AppState) -> ReleaseRefused | None:
    """Step 6: the app's state refuses the request, or lets it through (pure)."""
    del needs  # the state was gathered for this request
    if isinstance(app, Admitted | Candidate):
        return None
    if isinstance(app, AppFrozen):
        return refuse(KeyRefusalReason.FROZEN, "the app is frozen by an owner rotation fork")
    if isinstance(app, BundleUnusable):
        return refuse(KeyRefusalReason.BUNDLE, app.why)
    if isinstance(app, AppNotMeasured):
        return refuse(
            KeyRefusalReason.POLICY,
            "app_id_not_measured: a key request that admits an app needs an RTMR3 "
            "event log whose boot prefix names the app",
        )
    if isinstance(app, AwaitingCommittee):
        return refuse(KeyRefusalReason.RETRY, "asking the committee about this app: retry shortly")
    return refuse(KeyRefusalReason.NOT_SERVING, "no epoch yet")


class KeyReleaser:
    """What a node needs to answer key requests: its index, identity key, trust roots and
    allowed skew. Values only: no callables, nothing remembered between requests."""

    def __init__(
        self,
        index: ParticipantIndex,
        identity_key: SigningKey,
        verifier: Verifier,
        *,
        max_skew: int = DEFAULT_MAX_SKEW,
    ) -> None:
        self.index = index
        self._key = identity_key
        self._verifier = verifier
        self.max_skew = max_skew

    @property
    def simulated_allowed(self) -> bool:
        return self._verifier.simulated_allowed

    @property
    def identity_key(self) -> SigningKey:
        """The node's identity key, which signs every answer."""
        return self._key

    @property
    def verifier(self) -> Verifier:
        """The quote verifier: the pinned roots and whether simulated quotes pass."""
        return self._verifier

    def _stale(self, request: KeyRequest, now: int) -> ReleaseRefused | None:
        ts = request.body.timestamp
        if abs(now - ts) > self.max_skew:
            return refuse(
                KeyRefusalReason.STALE, f"timestamp {ts} is more than {self.max_skew} s from {now}"
            )
        return None

    def check(
        self, request: KeyRequest, *, now: int, share: SecretShare | None
    ) -> Needs | ReleaseRefused:
        """Steps 1-3 (see the module docstring)."""
        body = request.body
        if share is None:
            return refuse(
                KeyRefusalReason.NOT_SERVING, "this node holds no share of the current epoch"
            )
        target = body.ephemeral_key(int(self.index))
        if target is None:
            return refuse(
                KeyRefusalReason.NO_KEY_FOR_INDEX, f"no ephemeral key for index {int(self.index)}"
            )
        stale = self._stale(request, now)
        if stale is not None:
            return stale
        try:
            quote = parse_tdx_quote(request.quote)
        except QuoteVerificationError as exc:
            return refuse(KeyRefusalReason.QUOTE, str(exc))
        if quote.fields.report_data != body.report_data():
            return refuse(
                KeyRefusalReason.BINDING, "report_data is not SHA-512 of the request body"
            )
        return Needs(request, request.request_hash(), quote, target)

    def screen(self, needs: Needs, *, now: int, nonce_seen: bool) -> ReleaseRefused | None:
        """Steps 4-5: the nonce's replay test, then the quote's PCK chain."""
        if nonce_seen:
            return refuse(KeyRefusalReason.REPLAY, "this nonce was already used")
        try:
            check_pck_chain(needs.quote, self._verifier.roots, now=now)
        except QuoteVerificationError as exc:
            return refuse(KeyRefusalReason.QUOTE, str(exc))
        return None

    def answer(self, needs: Needs, inputs: ReleaseInputs) -> Released | ReleaseRefused:
        """Steps 7-8 and the answer, with the share, freshness, nonce and gate judged
        again at ``inputs.now`` (the shell may have awaited collateral since
        :meth:`check`); the collateral and the policy are judged at it too."""
        req, body, target, now = needs.request, needs.request.body, needs.target, inputs.now
        share = inputs.share
        if share is None:
            return refuse(
                KeyRefusalReason.NOT_SERVING, "this node holds no share of the current epoch"
            )
        stale = self._stale(req, now)  # judged again: ``now`` may be later
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
        # One replay of the RTMR3 log per request, shared by its purposes.
        evidence = Evidence(verified, bytes(req.event_log) if req.event_log else None)
        for p in body.purposes:
            try:
                admits(
                    policy,
                    td=verified,
                    tcb_status=verified.tcb_status,
                    purpose=p.purpose,
                    now=now,
                    event_log=evidence,
                    min_version=body.min_policy_version,
                    key_version=p.version,
                    app_id=body.app_id,
                    # Admitting a new app takes a CVM that measured the app's id: app ids
                    # are free to mint, CVM boots are not.
                    require_app_id=isinstance(app, Candidate),
                )
            except PolicyError as exc:
                return refuse(KeyRefusalReason.POLICY, f"{exc.reason.value}: {exc.detail}")
        rh, epoch = needs.request_hash, inputs.epoch
        shares = []
        audit = []
        for p in body.purposes:
            partial = derive_partial(share, p.key_id(body.app_id))
            info = release_info(rh, p, epoch, int(self.index))
            try:
                enc, ct = hpke.seal(target, info, info, partial.to_bytes(), rng=inputs.rng)
            except InvalidEncoding as exc:
                return refuse(KeyRefusalReason.MALFORMED, f"bad ephemeral key: {exc}")
            unsigned = KeyShareResponse(rh, p, epoch, int(self.index), enc, ct, bytes(64))
            sig = self._key.sign(CTX_KEY_RESPONSE, unsigned.statement())
            shares.append(KeyShareResponse(rh, p, epoch, int(self.index), enc, ct, sig))
            audit.append(
                ReleaseAuditRecord(
                    app=body.app_id.hex(),
                    purpose=p.purpose,
                    version=p.version,
                    measurement=verified.mr_td.hex()[:32] + "/" + verified.rtmr3.hex()[:32],
                    request=rh.hex(),
                    time=now,
                    epoch=epoch,
                    simulated=int(verified.simulated),
                )
            )
        return Released(KeyResponse(tuple(shares)), body.nonce, tuple(audit))


def release_with(
    releaser: KeyReleaser,
    request: KeyRequest,
    *,
    now: int,
    epoch: int,
    share: SecretShare | None,
    nonce_seen: bool,
    app: AppState,
    collateral: Collateral | QuoteVerificationError,
    rng: RNG,
) -> Released | ReleaseRefused:
    """The whole pipeline at one time ``now``, for callers whose inputs are all at hand
    (in-process committees, the simulator's load, benchmarks)."""
    needs = releaser.check(request, now=now, share=share)
    if isinstance(needs, ReleaseRefused):
        return needs
    early = releaser.screen(needs, now=now, nonce_seen=nonce_seen)
    if early is not None:
        return early
    return releaser.answer(
        needs, ReleaseInputs(now, epoch, share, nonce_seen, app, collateral, rng)
    )
