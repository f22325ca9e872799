"""What a member checks before it proposes or approves a membership change (sans-I/O).

* **add**: the join request's TDX quote verifies under this node's trust roots
  (Intel's; a devnet's simulated root only when the node is configured for it),
  its ``report_data`` is :func:`join_report_data` of the participant record and
  addresses it comes with (so the quote vouches for the joiner's index,
  identity and peer id, DKG key and addresses), and the committee-certified
  node admission policy admits its measurement and TCB status;
* **admission-policy**: the new policy is a well-formed ``NodeAdmissionPolicy``;
* **remove** with evidence: the evidence decodes, names the node to remove and
  verifies against the chain (equivocation, a justification revealing a bad
  share, a wrong partial disclosed by a CVM), or, for a reshare dealer's wrong
  constant term, against the configuration of a reshare run this member took
  part in (``ChangeContext.reshare_runs``).

A refusal raises :class:`kms.node.core.ChangeRefused` with one of the
:class:`AdmissionRefusal` labels. Nothing here reads a clock: ``now`` comes from the
node core.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kms.attest import Collateral, QuoteVerificationError, Verifier
from kms.node.model import ChangeContext, ChangeRefused
from kms.policy import NodeAdmissionPolicy, PolicyError, admits_node
from kms.protocol import WrongPartialEvidence
from mpc.broadcast import EquivocationEvidence
from mpc.cert import EpochCertificate, RunKind
from mpc.codec import decode
from mpc.dkg.evidence import InvalidJustificationEvidence, ReshareConstantEvidence
from mpc.dkg.messages import Participant
from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import (
    AddMember,
    ChainError,
    ChainState,
    ChangeAdmissionPolicy,
    MembershipCertificate,
    RemoveMember,
    epoch_state,
)
from mpc.membership.messages import Change

JOIN_CONTEXT = b"quorum-kms/v1/join-request"
JOIN_MAX_AGE = 2
"""A join request names the chain head it was made for; members refuse one whose
epoch is more than this many epochs behind their current epoch."""


class AdmissionRefusal(enum.Enum):
    NO_ADMISSION_POLICY = "no-admission-policy"
    MALFORMED_ADMISSION_POLICY = "malformed-admission-policy"
    NO_ATTESTATION = "no-attestation"
    NO_TRUST_ROOT = "no-quote-verifier"
    QUOTE_REJECTED = "quote-rejected"
    REPORT_DATA_MISMATCH = "report-data-mismatch"
    NOT_ADMITTED = "not-admitted"
    MALFORMED_EVIDENCE = "malformed-evidence"
    UNSUPPORTED_EVIDENCE = "unsupported-evidence"
    EVIDENCE_NAMES_ANOTHER_NODE = "evidence-names-another-node"
    EVIDENCE_INVALID = "evidence-does-not-verify"
    UNKNOWN_RUN = "unknown-run"
    EVIDENCE_STALE = "evidence-stale"
    """The evidence is about an epoch older than the chain links this node keeps."""
    JOIN_UNBOUND = "join-request-names-no-head"
    JOIN_UNKNOWN_HEAD = "join-request-head-not-in-chain"
    JOIN_STALE = "join-request-stale"
    REMOVAL_UNBOUND = "removal-names-no-identity"


def join_report_data(
    participant: Participant,
    addresses: Sequence[str],
    epoch: int = 0,
    head: bytes = b"",
    url: str = "",
) -> bytes:
    """The 64 bytes a joining node's quote must carry as ``report_data``.

    ``SHA-512(JOIN_CONTEXT || AddMember(participant, b"", addresses, epoch, head, url)
    .encode())``: the participant record holds the index, the Ed25519 identity (from
    which the libp2p peer id is derived), the X25519 DKG key and the identity's
    signature on it; ``epoch`` and ``head`` name the committee's chain head the
    request was made for (its freshness); ``url`` is the node's HTTP URL (version 3).
    A request without a URL encodes as version 2, so a version-2 request's quote
    (made before the URL existed) still matches.
    """
    body = AddMember(participant, b"", tuple(addresses), epoch, head, url).encode()
    return hashlib.sha512(JOIN_CONTEXT + body).digest()


def link_epoch(link: EpochCertificate | MembershipCertificate) -> int:
    if isinstance(link, EpochCertificate):
        return link.transcript.epoch
    return link.outcome.epoch


def check_join_freshness(ctx: ChangeContext, add: AddMember) -> None:
    """Refuse a join request not bound to a recent head of this node's chain."""
    if not add.head:
        raise _refuse(AdmissionRefusal.JOIN_UNBOUND, "the join request names no chain head")
    link = next((x for x in reversed(ctx.chain) if x.hash() == add.head), None)
    if link is None or link_epoch(link) != add.epoch:
        raise _refuse(
            AdmissionRefusal.JOIN_UNKNOWN_HEAD,
            f"the join request's head (epoch {add.epoch}) is not in this node's chain",
        )
    if ctx.state.epoch - add.epoch > JOIN_MAX_AGE:
        raise _refuse(
            AdmissionRefusal.JOIN_STALE,
            f"the join request was made at epoch {add.epoch}, the committee is at "
            f"{ctx.state.epoch} (at most {JOIN_MAX_AGE} behind)",
        )


def _refuse(reason: AdmissionRefusal, detail: str = "") -> ChangeRefused:
    return ChangeRefused(reason.value, detail)


def _holder(ctx: ChangeContext, change: RemoveMember) -> Participant:
    """The member a removal names: its index and identity in the current committee."""
    if not change.identity:
        raise _refuse(AdmissionRefusal.REMOVAL_UNBOUND, "the removal names no identity key")
    holder = next((m for m in ctx.state.committee.members if m.index == change.index), None)
    if holder is None or holder.identity != change.identity:
        raise _refuse(
            AdmissionRefusal.EVIDENCE_NAMES_ANOTHER_NODE,
            f"node {change.index} of this epoch does not have the identity the removal names",
        )
    return holder


def _state_at(chain: Sequence[EpochCertificate | MembershipCertificate], epoch: int) -> ChainState:
    """The verified chain state of ``epoch``: its certificate checked directly under the
    master public key (``epoch_state``), without walking the chain to it.

    The node keeps genesis and a recent tail only: an epoch before the tail is
    refused as stale (``EVIDENCE_STALE``).
    """
    first = chain[0] if chain else None
    if not isinstance(first, EpochCertificate):
        raise _refuse(AdmissionRefusal.EVIDENCE_INVALID, "no chain")
    cert = next(
        (x for x in chain if isinstance(x, EpochCertificate) and x.transcript.epoch == epoch),
        None,
    )
    if cert is None:
        oldest = min(
            (x.transcript.epoch for x in chain[1:] if isinstance(x, EpochCertificate)),
            default=0,
        )
        if 0 < epoch < oldest:
            raise _refuse(
                AdmissionRefusal.EVIDENCE_STALE, f"epoch {epoch} is older than the kept chain"
            )
        raise _refuse(AdmissionRefusal.EVIDENCE_INVALID, f"epoch {epoch} is not in the chain")
    try:
        return epoch_state(G2.from_bytes(first.transcript.mpk), cert)
    except (ChainError, InvalidEncoding) as exc:
        raise _refuse(AdmissionRefusal.EVIDENCE_INVALID, f"chain: {exc}") from exc


WrongPartialCheck = Callable[[WrongPartialEvidence, ChainState], str]


@dataclass(frozen=True)
class ChangeChecker:
    """A ``ChangeCheck`` for ``NodeCore``: quotes, admission policies and evidence.

    ``verifier`` holds the trust roots (``None``: this node verifies no quote and
    so approves no join); ``collateral`` gives the collateral for a quote;
    ``wrong_partial`` checks a CVM's evidence against the chain state of its
    epoch (``kms.evidence.verify_wrong_partial``).
    """

    verifier: Verifier | None
    collateral: Callable[[bytes], Collateral] | None
    wrong_partial: WrongPartialCheck | None = None

    def __call__(self, ctx: ChangeContext, change: Change) -> None:
        if isinstance(change, AddMember):
            self.check_join(ctx, change)
        elif isinstance(change, ChangeAdmissionPolicy):
            try:
                NodeAdmissionPolicy.decode(change.policy)
            except InvalidEncoding as exc:
                raise _refuse(AdmissionRefusal.MALFORMED_ADMISSION_POLICY, str(exc)) from exc
        elif isinstance(change, RemoveMember):
            holder = _holder(ctx, change)
            if change.evidence:
                self.check_evidence(ctx, change.index, change.evidence, holder)

    # --- joining ---------------------------------------------------------------------

    def check_join(self, ctx: ChangeContext, add: AddMember) -> None:
        if ctx.admission_policy is None:
            raise _refuse(
                AdmissionRefusal.NO_ADMISSION_POLICY, "the committee's policy is unknown here"
            )
        try:
            policy = NodeAdmissionPolicy.decode(ctx.admission_policy)
        except InvalidEncoding as exc:
            raise _refuse(
                AdmissionRefusal.MALFORMED_ADMISSION_POLICY,
                "the committee's admission policy is not a node admission policy",
            ) from exc
        if not add.attestation:
            raise _refuse(AdmissionRefusal.NO_ATTESTATION, "the join request carries no quote")
        check_join_freshness(ctx, add)
        if self.verifier is None or self.collateral is None:
            raise _refuse(
                AdmissionRefusal.NO_TRUST_ROOT, "this node has no collateral to verify quotes"
            )
        try:
            verified = self.verifier.verify(
                add.attestation, self.collateral(add.attestation), now=int(ctx.now)
            )
        except QuoteVerificationError as exc:
            raise _refuse(AdmissionRefusal.QUOTE_REJECTED, f"{exc.reason.value}: {exc}") from exc
        if verified.report_data != join_report_data(
            add.participant, add.addresses, add.epoch, add.head, add.url
        ):
            raise _refuse(
                AdmissionRefusal.REPORT_DATA_MISMATCH,
                "the quote does not bind this participant record, these addresses and URL",
            )
        try:
            admits_node(policy, td=verified, tcb_status=verified.tcb_status)
        except PolicyError as exc:
            raise _refuse(AdmissionRefusal.NOT_ADMITTED, f"{exc.reason.value}: {exc}") from exc

    # --- evidence ---------------------------------------------------------------------

    def check_evidence(
        self, ctx: ChangeContext, index: int, raw: bytes, holder: Participant
    ) -> None:
        """Evidence is judged against ``holder``'s identity key, the node the removal
        names, whichever node held ``index`` in the run the evidence comes from."""
        try:
            ev = decode(raw)
        except (InvalidEncoding, ValueError) as exc:
            raise _refuse(AdmissionRefusal.MALFORMED_EVIDENCE, str(exc)) from exc
        culprit = evidence_culprit(ev)
        if culprit is None:
            raise _refuse(
                AdmissionRefusal.UNSUPPORTED_EVIDENCE, f"{type(ev).__name__} is not evidence"
            )
        if culprit != index:
            raise _refuse(
                AdmissionRefusal.EVIDENCE_NAMES_ANOTHER_NODE,
                f"evidence against node {culprit}, not {index}",
            )
        try:
            if isinstance(ev, EquivocationEvidence):
                ev.verify(holder.verify_key())
            elif isinstance(ev, InvalidJustificationEvidence):
                ev.verify(holder.verify_key(), run=ev.run)
            elif isinstance(ev, ReshareConstantEvidence):
                cfg = ctx.reshare_runs.get(ev.run)
                if cfg is None or cfg.kind != RunKind.RESHARE:
                    # Only a member that ran the reshare knows its configuration (the
                    # old public polynomial the constant term must match).
                    raise _refuse(
                        AdmissionRefusal.UNKNOWN_RUN, "this node did not take part in that reshare"
                    )
                dealer = next((p for p in cfg.dealers if p.index == culprit), None)
                if dealer is None or dealer.identity != holder.identity:
                    raise _refuse(
                        AdmissionRefusal.EVIDENCE_INVALID, f"node {culprit} was no dealer there"
                    )
                ev.verify(
                    dealer.verify_key(), cfg.old_public_share(ParticipantIndex(culprit)), run=ev.run
                )
            elif isinstance(ev, WrongPartialEvidence):
                if self.wrong_partial is None:
                    raise _refuse(
                        AdmissionRefusal.UNSUPPORTED_EVIDENCE, "no wrong-partial check here"
                    )
                then = _state_at(ctx.chain, ev.response.epoch)
                if not any(
                    m.index == culprit and m.identity == holder.identity
                    for m in then.committee.members
                ):
                    raise _refuse(
                        AdmissionRefusal.EVIDENCE_INVALID,
                        f"node {culprit} of epoch {ev.response.epoch} is another node",
                    )
                self.wrong_partial(ev, then)
            else:  # pragma: no cover - evidence_culprit() admits only the kinds above
                raise _refuse(AdmissionRefusal.UNSUPPORTED_EVIDENCE, f"{type(ev).__name__}")
        except (InvalidSignature, InvalidEncoding) as exc:
            raise _refuse(AdmissionRefusal.EVIDENCE_INVALID, str(exc)) from exc


def evidence_culprit(ev: object) -> int | None:
    """The node a piece of evidence accuses, or ``None`` if it is not evidence."""
    if isinstance(
        ev, EquivocationEvidence | InvalidJustificationEvidence | ReshareConstantEvidence
    ):
        return int(ev.culprit)
    if isinstance(ev, WrongPartialEvidence):
        return int(ev.response.index)
    return None


__all__ = [
    "JOIN_CONTEXT",
    "JOIN_MAX_AGE",
    "AdmissionRefusal",
    "ChangeChecker",
    "evidence_culprit",
    "join_report_data",
]
