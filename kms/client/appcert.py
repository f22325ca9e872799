"""One app-key certificate request against one verified chain, sans-I/O.

The CVM's agent, holding its dstack app root key, asks nodes to certify the
root's public key (``POST /v1/app-key-cert``, ``kms.protocol``). Each node
answers with two partial signatures under ``DST_APPCERT`` (``mpc.appcert``),
signed by its identity. This session checks each answer (the verified chain's
member of that index signed it, for this request, app, version and key), groups
partials by epoch, and combines ``t`` of one epoch with ``combine_and_verify``
against that epoch's public shares. A node whose signed partial is wrong (does
not decode, or does not match its public share) is named with a
:class:`~kms.protocol.WrongCertPartialEvidence`: the request and its signed
share, which anyone holding the chain can check (``kms.evidence``), since
partials are public. The shell (``kms.client.http``) then asks another node.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kms.protocol import (
    AppKeyCertBody,
    AppKeyCertRequest,
    AppKeyCertShare,
    KeyRefusal,
    WrongCertPartialEvidence,
    bundle_hash,
)
from mpc import appcert
from mpc.cert import check_mpk
from mpc.errors import InvalidEncoding, InvalidShare, InvalidSignature
from mpc.ids import ParticipantIndex
from mpc.membership import ChainState
from mpc.secret import RNG
from mpc.sig import VerifyKey


class AppKeyCertError(Exception):
    """Fewer than ``t`` good partials of one epoch could be gathered.

    ``refusals`` names each refusing node's reason and detail, ``bad_nodes`` the nodes
    whose answer was rejected, ``unreachable`` the nodes not heard."""

    def __init__(
        self,
        message: str,
        *,
        refusals: dict[int, tuple[str, str]] | None = None,
        bad_nodes: list[int] | None = None,
        unreachable: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.refusals = dict(refusals or {})
        self.bad_nodes = list(bad_nodes or [])
        self.unreachable = list(unreachable or [])


@dataclass(frozen=True)
class CertRejected:
    """An answer the client ignored, and why; with evidence when the node signed a wrong
    partial."""

    index: ParticipantIndex
    reason: str
    evidence: WrongCertPartialEvidence | None = None


@dataclass(frozen=True)
class AppKeyCert:
    """A certified app root key: ``link_signature`` over ``link_message(app_id,
    root_public)`` (dstack's ``signature_chain[1]``) and ``qkms_signature`` over
    ``qkms_message(app_id, root_public, version, epoch)``, both under the MPK."""

    app_id: bytes
    version: int
    epoch: int
    root_public: bytes
    link_signature: bytes
    qkms_signature: bytes
    rejected: tuple[CertRejected, ...] = ()
    refusals: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass
class _Epoch:
    link: dict[ParticipantIndex, appcert.CertPartial] = field(default_factory=dict)
    qkms: dict[ParticipantIndex, appcert.CertPartial] = field(default_factory=dict)
    evidence: dict[ParticipantIndex, WrongCertPartialEvidence] = field(default_factory=dict)


class AppKeyCertSession:
    """One certificate request for ``(app_id, version, root_public)``.

    ``previous`` is the verified state of the epoch before ``chain``'s: members still on
    it may answer for it, and whichever epoch first gives ``t`` good partials is used."""

    def __init__(
        self,
        chain: ChainState,
        app_id: bytes,
        version: int,
        root_public: bytes,
        *,
        now: int,
        rng: RNG,
        min_policy_version: int = 0,
        bundle: bytes = b"",
        previous: ChainState | None = None,
        preferred: Sequence[ParticipantIndex] = (),
    ) -> None:
        check_mpk(chain.mpk)
        self.chain = chain
        self.states = {chain.epoch: chain}
        if previous is not None:
            if previous.epoch != chain.epoch - 1 or previous.mpk != chain.mpk:
                raise ValueError("previous must be the epoch before the chain's, same key")
            self.states[previous.epoch] = previous
        self.preferred = tuple(preferred)
        self.bundle = bundle
        self.body = AppKeyCertBody(
            app_id=bytes(app_id),
            version=version,
            root_public=bytes(root_public),
            timestamp=now,
            nonce=rng(16),
            epoch=chain.epoch,
            min_policy_version=min_policy_version,
            policy_hash=bundle_hash(bundle) if bundle else b"",
        )
        self.body.validate()
        self.request: AppKeyCertRequest | None = None
        self._request_hash = b""
        self._epochs: dict[int, _Epoch] = {}
        self._answered: set[ParticipantIndex] = set()
        self.rejected: list[CertRejected] = []
        self.refusals: dict[ParticipantIndex, KeyRefusal] = {}
        self.newer_epoch_seen = False
        self.cert: AppKeyCert | None = None

    @property
    def report_data(self) -> bytes:
        """What the CVM asks its TEE to put in the quote: ``SHA-512(body)``."""
        return self.body.report_data()

    def attach_quote(self, quote: bytes, event_log: bytes = b"") -> AppKeyCertRequest:
        self.request = AppKeyCertRequest(self.body, quote, event_log, self.bundle)
        self._request_hash = self.request.request_hash()
        return self.request

    # --- answers ------------------------------------------------------------------------

    def receive(self, index: ParticipantIndex, answer: AppKeyCertShare | KeyRefusal) -> None:
        """Take node ``index``'s answer (the transport told us who answered)."""
        req = self.request
        if req is None:
            raise RuntimeError("attach the quote before sending the request")
        self._answered.add(index)
        if isinstance(answer, KeyRefusal):
            self.refusals[index] = answer
            return
        share = answer
        state = self.states.get(share.epoch)
        if state is None:
            self.newer_epoch_seen |= share.epoch > self.chain.epoch
            self._reject(
                index,
                f"answer for epoch {share.epoch}, the verified chain is at {self.chain.epoch}",
            )
            return
        if share.index != index or index not in state.committee.indices:
            self._reject(index, "answer for another committee index")
            return
        body = self.body
        if (
            share.request_hash != self._request_hash
            or share.app_id != body.app_id
            or share.version != body.version
            or share.root_public != body.root_public
        ):
            self._reject(index, "answer to another request")
            return
        try:
            share.verify(_verify_key(state, index))
        except (InvalidSignature, InvalidEncoding):
            self._reject(index, "bad node signature")  # not attributable: no evidence
            return
        evidence = WrongCertPartialEvidence(req, share)
        try:
            link = appcert.CertPartial.from_bytes(index, share.link_partial)
            qkms = appcert.CertPartial.from_bytes(index, share.qkms_partial)
        except InvalidEncoding:
            self._reject(index, "partial does not decode", evidence)
            return
        bucket = self._epochs.setdefault(share.epoch, _Epoch())
        if index in bucket.link:
            return
        bucket.link[index], bucket.qkms[index] = link, qkms
        bucket.evidence[index] = evidence
        self._combine(state, bucket)

    def _combine(self, state: ChainState, bucket: _Epoch) -> None:
        """Combine once ``t`` partials of this epoch are in; on failure name the culprits
        (with their evidence) and wait for more answers."""
        if self.cert is not None or len(bucket.link) < state.threshold:
            return
        app_id, pk, version = self.body.app_id, self.body.root_public, self.body.version
        culprits: set[ParticipantIndex] = set()
        sigs = []
        for partials, message in (
            (bucket.link, appcert.link_message(app_id, pk)),
            (bucket.qkms, appcert.qkms_message(app_id, pk, version, state.epoch)),
        ):
            try:
                sigs.append(
                    appcert.combine_and_verify(
                        list(partials.values()),
                        message,
                        state.mpk,
                        state.public_shares,
                        state.threshold,
                    )
                )
            except InvalidShare as exc:
                culprits.update(ParticipantIndex(int(i)) for i in exc.culprits)
        if culprits:
            for culprit in sorted(culprits):
                bucket.link.pop(culprit, None)
                bucket.qkms.pop(culprit, None)
                self._reject(
                    culprit,
                    "partial does not match the node's public share",
                    bucket.evidence.pop(culprit, None),
                )
            return
        self.cert = AppKeyCert(
            app_id=bytes(app_id),
            version=version,
            epoch=state.epoch,
            root_public=bytes(pk),
            link_signature=sigs[0].to_bytes(),
            qkms_signature=sigs[1].to_bytes(),
        )

    def _reject(
        self,
        index: ParticipantIndex,
        reason: str,
        evidence: WrongCertPartialEvidence | None = None,
    ) -> None:
        self.rejected.append(CertRejected(index, reason, evidence))

    # --- results ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.cert is not None

    def missing(self) -> int:
        """Good partials still needed: ``t`` less those of the best epoch (0 when done). An
        answer for the other epoch is no failure, but no progress for this one either: the
        shell asks this many more members when nothing is pending."""
        if self.cert is not None:
            return 0
        return min(
            state.threshold - len(self._epochs[e].link if e in self._epochs else ())
            for e, state in self.states.items()
        )

    def next_nodes(self, count: int) -> list[ParticipantIndex]:
        """Members of the newest epoch not asked yet, preferred ones first."""
        order = list(self.chain.committee.indices)
        order = [i for i in order if i in self.preferred] + [
            i for i in order if i not in self.preferred
        ]
        return [i for i in order if i not in self._answered][:count]

    def mark_asked(self, indices: Sequence[ParticipantIndex]) -> None:
        self._answered.update(indices)

    def bad_nodes(self) -> list[ParticipantIndex]:
        return sorted({r.index for r in self.rejected})


def _verify_key(state: ChainState, index: ParticipantIndex) -> VerifyKey:
    member = next(p for p in state.committee.members if p.index == int(index))
    return VerifyKey.from_bytes(member.identity)


__all__ = ["AppKeyCert", "AppKeyCertError", "AppKeyCertSession", "CertRejected"]
