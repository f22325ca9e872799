"""Key release at one node, sans-I/O: check a CVM's request, answer with an encrypted partial.

Two steps. :meth:`KeyReleaser.check` is pure and cheap, and runs before the
node fetches anything; its checks, cheapest first so that junk costs little,
each refusal with a reason code and no state change:

1. the request decodes, names purposes, and carries an ephemeral key for
   this node's index; this node holds a share of the current epoch;
2. freshness: ``|now - timestamp| ≤ max_skew``;
3. the quote parses as a TDX quote (v4 or v5) and its ``report_data`` is
   ``SHA-512(body)``;
4. the nonce was not seen within the freshness window (replay cache);
5. the quote's PCK certificate chain verifies to a pinned root (Intel's, or a
   simulated root when the node accepts simulated quotes).

Its output, :class:`Checked` (the decoded request, the parsed quote and so
its platform, the app and the nonce), is what the node's shell fetches
collateral for and then hands to :meth:`KeyReleaser.release`, with the time
read again after the fetch, which re-checks the share, freshness and the
nonce at that time (time passed while fetching) and goes on:

6. the quote verifies (Intel DCAP: collateral not older than the node's
   floor, chain to the pinned root, TDX not SGX, TCB status within the
   node's floor; simulated roots only when configured);
7. the app's current policy admits it for every purpose (measurement or
   compose hash read from the RTMR3 event log's boot prefix, whose ``app-id``
   must then be the requested app, as it must for any entry when the policy is
   a candidate that would admit a new app; the policy's pins; TCB status, purpose,
   key version, policy version ≥ the one the CVM asked for, not expired). The
   log is replayed once per request, whatever the number of purposes.

Then, per purpose: the partial ``s_i·H(id)``, HPKE-encrypted to the CVM's
ephemeral key for this index (info and AAD bind the request hash, purpose,
epoch and index) and signed by the node's identity. The caller records the
nonce and appends the audit records (app, purpose, measurement, request hash,
time; never key material).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kms.attest import (
    ParsedQuote,
    QuoteVerificationError,
    Verifier,
    check_pck_chain,
    parse_tdx_quote,
)
from kms.policy import AppPolicy, Evidence, PolicyError, admits
from kms.protocol import (
    KeyRefusal,
    KeyRequest,
    KeyResponse,
    KeyShareResponse,
    release_info,
)
from mpc import hpke
from mpc.codec import MessageDecodeError
from mpc.errors import InvalidEncoding
from mpc.ids import ParticipantIndex
from mpc.secret import RNG, SecretShare
from mpc.sig import CTX_KEY_RESPONSE, SigningKey
from mpc.tkd import derive_partial

DEFAULT_MAX_SKEW = 120


class Refusal(enum.Enum):
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


@dataclass(frozen=True)
class AuditRecord:
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


@dataclass(frozen=True)
class Checked:
    """A request that passed :meth:`KeyReleaser.check`: what the rest of the release
    needs, decoded and parsed once."""

    raw: bytes
    request: KeyRequest
    quote: ParsedQuote
    target: bytes
    """The CVM's ephemeral key for this node's index."""

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


@dataclass(frozen=True)
class Released:
    response: KeyResponse
    nonce: bytes
    audit: tuple[AuditRecord, ...]


@dataclass(frozen=True)
class Refused:
    refusal: KeyRefusal

    @property
    def reason(self) -> str:
        return self.refusal.reason


def refuse(reason: Refusal, detail: str) -> Refused:
    return Refused(KeyRefusal(reason.value, detail[:500]))


class KeyReleaser:
    """Everything a node needs to answer key requests, except I/O."""

    def __init__(
        self,
        index: ParticipantIndex,
        identity_key: SigningKey,
        verifier: Verifier,
        collateral_for: Callable[[ParsedQuote], object],
        policy_for: Callable[[bytes, int], AppPolicy | None],
        *,
        rng: RNG,
        max_skew: int = DEFAULT_MAX_SKEW,
    ) -> None:
        self.index = index
        self._key = identity_key
        self._verifier = verifier
        self._collateral_for = collateral_for
        self._policy_for = policy_for
        self._rng = rng
        self.max_skew = max_skew

    @property
    def simulated_allowed(self) -> bool:
        return self._verifier.simulated_allowed

    def check(
        self,
        raw: bytes,
        *,
        now: int,
        share: SecretShare | None,
        seen_nonce: Callable[[bytes], bool],
    ) -> Checked | Refused:
        """Every check that needs no collateral and no policy (see the module docstring).
        Pure: nothing is fetched, stored or counted."""
        try:
            req = KeyRequest.decode(raw)
        except MessageDecodeError as exc:
            return refuse(Refusal.MALFORMED, str(exc))
        body = req.body
        if share is None:
            return refuse(Refusal.NOT_SERVING, "this node holds no share of the current epoch")
        target = body.ephemeral_key(int(self.index))
        if target is None:
            return refuse(Refusal.NO_KEY_FOR_INDEX, f"no ephemeral key for index {int(self.index)}")
        if abs(now - body.timestamp) > self.max_skew:
            return refuse(
                Refusal.STALE,
                f"timestamp {body.timestamp} is more than {self.max_skew} s from {now}",
            )
        try:
            quote = parse_tdx_quote(req.quote)
        except QuoteVerificationError as exc:
            return refuse(Refusal.QUOTE, str(exc))
        if quote.fields.report_data != body.report_data():
            return refuse(Refusal.BINDING, "report_data is not SHA-512 of the request body")
        if seen_nonce(body.nonce):
            return refuse(Refusal.REPLAY, "this nonce was already used")
        try:
            check_pck_chain(quote, self._verifier.roots, now=now)
        except QuoteVerificationError as exc:
            return refuse(Refusal.QUOTE, str(exc))
        return Checked(bytes(raw), req, quote, target)

    def release(
        self,
        checked: Checked,
        *,
        now: int,
        epoch: int,
        share: SecretShare | None,
        seen_nonce: Callable[[bytes], bool],
        candidate: AppPolicy | None = None,
    ) -> Released | Refused:
        """Verify a checked request's quote and policy and answer it (see the module
        docstring). ``now`` is the time after any wait: the share, the request's freshness
        and the nonce are checked again, since the caller may have awaited collateral
        since :meth:`check`, and the policy, collateral and quote are judged at it. ``candidate`` is the policy of the
        bundle the request carries, for an app the node has not admitted (already
        checked: signature, chain, key, time, version bound)."""
        req, body, target = checked.request, checked.request.body, checked.target
        if share is None:
            return refuse(Refusal.NOT_SERVING, "this node holds no share of the current epoch")
        if abs(now - body.timestamp) > self.max_skew:  # judged again: ``now`` may be later
            return refuse(
                Refusal.STALE,
                f"timestamp {body.timestamp} is more than {self.max_skew} s from {now}",
            )
        if seen_nonce(body.nonce):
            return refuse(Refusal.REPLAY, "this nonce was already used")
        try:
            collateral = self._collateral_for(checked.quote)
            verified = self._verifier.verify(checked.quote, collateral, now=now)  # type: ignore[arg-type]
        except QuoteVerificationError as exc:
            return refuse(Refusal.QUOTE, str(exc))
        raw = checked.raw
        policy = candidate if candidate is not None else self._policy_for(body.app_id, now)
        if policy is None:
            return refuse(Refusal.NO_POLICY, "no current policy for this app")
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
                    require_app_id=candidate is not None,
                )
            except PolicyError as exc:
                return refuse(Refusal.POLICY, f"{exc.reason.value}: {exc.detail}")
        rh = hashlib.sha256(raw).digest()  # raw is the canonical encoding: request_hash()
        shares = []
        audit = []
        for p in body.purposes:
            partial = derive_partial(share, p.key_id(body.app_id))
            info = release_info(rh, p, epoch, int(self.index))
            try:
                enc, ct = hpke.seal(target, info, info, partial.to_bytes(), rng=self._rng)
            except InvalidEncoding as exc:
                return refuse(Refusal.MALFORMED, f"bad ephemeral key: {exc}")
            unsigned = KeyShareResponse(rh, p, epoch, int(self.index), enc, ct, bytes(64))
            sig = self._key.sign(CTX_KEY_RESPONSE, unsigned.statement())
            shares.append(KeyShareResponse(rh, p, epoch, int(self.index), enc, ct, sig))
            audit.append(
                AuditRecord(
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

    def handle(
        self,
        raw: bytes,
        *,
        now: int,
        epoch: int,
        share: SecretShare | None,
        seen_nonce: Callable[[bytes], bool],
        candidate: AppPolicy | None = None,
    ) -> Released | Refused:
        """:meth:`check`, then :meth:`release`, for callers whose collateral is at hand."""
        checked = self.check(raw, now=now, share=share, seen_nonce=seen_nonce)
        if isinstance(checked, Refused):
            return checked
        return self.release(
            checked,
            now=now,
            epoch=epoch,
            share=share,
            seen_nonce=seen_nonce,
            candidate=candidate,
        )


def policies_from(mapping: Mapping[bytes, AppPolicy]) -> Callable[[bytes, int], AppPolicy | None]:
    """A policy lookup over a plain mapping (expiry is checked by ``admits``)."""
    return lambda app_id, now: mapping.get(app_id)
