"""The epoch chain: applying certified changes, and verifying a chain from a pinned anchor.

A chain alternates epoch certificates and membership certificates::

    E₀ (genesis DKG) ← M₀ (change decided in epoch 0) ← E₁ (reshare) ← M₁ ← E₂ …

Every link names the previous link's hash and its epoch, and is a threshold
signature under the one master public key, so a replayed, reordered, forged
or wrong-epoch link is refused. ``verify_chain`` is what clients and new
members rely on: it returns the current committee, threshold and public
shares only when every link is backed by the chain from the pinned anchor.

Verification does not need the whole chain (``verify_recent``): every link
is a threshold signature under the one pinned master public key, and forging
any link of any epoch takes ``t`` shares of that epoch, which reconstruct the
master secret itself. So the newest epoch certificate, checked directly
under the pinned key, is as strong as a walk from genesis; the links after it
(a pending membership certificate) and the epoch before it are checked
against it. A chain is then genesis (optional for a client) followed by a
recent contiguous tail that starts at an epoch certificate. Among valid
chains the one whose head reaches the highest ``(epoch, attempt)`` wins
(``rank``): a certificate of a failed attempt completed later is superseded
by any higher attempt or later epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from mpc.cert import (
    ZERO_HASH,
    EpochCertificate,
    IdentityMasterKey,
    RunKind,
    check_mpk,
    sha256,
    verify_cert_signature,
)
from mpc.dkg.messages import Participant
from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2
from mpc.membership.messages import (
    AddMember,
    Change,
    ChangeAdmissionPolicy,
    ChangeThreshold,
    MembershipCertificate,
    Refresh,
    RemoveMember,
)


class ChainError(InvalidSignature):
    """A link of the epoch chain is not backed by the chain before it."""


@dataclass(frozen=True)
class Committee:
    members: tuple[Participant, ...]
    threshold: int
    admission_policy_hash: bytes

    @property
    def indices(self) -> list[ParticipantIndex]:
        return list(self._indices)

    @functools.cached_property
    def _indices(self) -> tuple[ParticipantIndex, ...]:
        """Computed once: a node asks for its committee's indices at every step."""
        return tuple(ParticipantIndex(p.index) for p in self.members)


def apply_change(
    committee: Committee,
    change: Change,
    *,
    used_indices: frozenset[int] = frozenset(),
    used_identities: frozenset[bytes] = frozenset(),
) -> Committee | None:
    """The committee after ``change``, or ``None`` if the change is invalid for it.

    ``used_indices`` and ``used_identities`` are those of every member the chain
    ever had (``ChainState``): an added member may reuse neither, so an index or an
    identity names one node for the life of the chain, and evidence signed under it
    can never be turned against another node.
    """
    members = list(committee.members)
    t = committee.threshold
    policy = committee.admission_policy_hash
    if isinstance(change, AddMember):
        p = change.participant
        if any(m.index == p.index or m.identity == p.identity for m in members):
            return None
        if p.index in used_indices or p.identity in used_identities:
            return None
        try:
            p.check()  # its DKG key must be vouched for by its identity
        except (InvalidSignature, InvalidEncoding):
            return None
        members = sorted([*members, p], key=lambda m: m.index)
    elif isinstance(change, RemoveMember):
        if not any(
            m.index == change.index and (not change.identity or m.identity == change.identity)
            for m in members
        ):
            return None
        members = [m for m in members if m.index != change.index]
    elif isinstance(change, ChangeThreshold):
        t = change.threshold
    elif isinstance(change, ChangeAdmissionPolicy):
        policy = change.policy_hash()
    elif not isinstance(change, Refresh):  # pragma: no cover - Change is closed
        return None
    if not 2 <= t <= len(members):
        return None
    return Committee(tuple(members), t, policy)


def why_invalid(
    committee: Committee,
    change: Change,
    *,
    used_indices: frozenset[int] = frozenset(),
    used_identities: frozenset[bytes] = frozenset(),
) -> str | None:
    """Which rule of ``apply_change`` refuses ``change`` (a sentence for the operator), or
    ``None`` when it applies."""
    if (
        apply_change(committee, change, used_indices=used_indices, used_identities=used_identities)
        is not None
    ):
        return None
    members = committee.members
    n = len(members)
    if isinstance(change, AddMember):
        p = change.participant
        n += 1
        if any(m.index == p.index for m in members):
            return f"index {p.index} is already a member: pick an index never used in this chain"
        if any(m.identity == p.identity for m in members):
            return "the joining node's identity key is already a member's"
        if p.index in used_indices:
            return (
                f"index {p.index} was used by an earlier member: an index names one node for"
                " the life of the chain, pick a new one"
            )
        if p.identity in used_identities:
            return (
                "the joining node's identity key belonged to an earlier member: a removed node"
                " rejoins with a new identity (`kms node init`)"
            )
        return "the joining node's DKG key is not signed by its identity key"
    if isinstance(change, RemoveMember):
        n -= 1
        held = [m for m in members if m.index == change.index]
        if not held:
            indices = ", ".join(str(m.index) for m in members)
            return f"index {change.index} is not a member (members: {indices})"
        if change.identity and held[0].identity != change.identity:
            return f"the identity named is not member {change.index}'s"
    t = change.threshold if isinstance(change, ChangeThreshold) else committee.threshold
    return (
        f"the resulting threshold {t} is out of range for {n} members: it must be between 2"
        f" and {n}"
        + ("" if isinstance(change, ChangeThreshold) else " (lower the threshold first)")
    )


@dataclass(frozen=True)
class ChainState:
    """What a verified chain proves about the current epoch."""

    mpk: G2
    epoch: int
    committee: Committee
    certificate: EpochCertificate
    head_hash: bytes
    """Hash of the last link (an epoch or a membership certificate)."""
    pending: MembershipCertificate | None = None
    """A certified change whose reshare has not been certified yet."""
    public_shares: Mapping[ParticipantIndex, G2] = field(default_factory=dict)
    used_indices: frozenset[int] = frozenset()
    """The index of every member of every epoch of the chain so far."""
    used_identities: frozenset[bytes] = frozenset()
    """The identity key of every member of every epoch of the chain so far."""

    @property
    def threshold(self) -> int:
        return self.committee.threshold

    def apply(self, change: Change) -> Committee | None:
        """``apply_change`` to this epoch's committee, with the chain's history."""
        return apply_change(
            self.committee,
            change,
            used_indices=self.used_indices,
            used_identities=self.used_identities,
        )

    def why_invalid(self, change: Change) -> str | None:
        """``why_invalid`` for this epoch's committee, with the chain's history."""
        return why_invalid(
            self.committee,
            change,
            used_indices=self.used_indices,
            used_identities=self.used_identities,
        )


def _check_signature(message: bytes, signature: bytes, mpk: G2) -> None:
    try:
        sig = G1.from_bytes(signature)
    except InvalidEncoding as exc:
        raise ChainError("malformed link signature") from exc
    if not verify_cert_signature(message, sig, mpk):
        raise ChainError("link signature does not verify under the master public key")


def _state_from_epoch(
    mpk: G2, cert: EpochCertificate, head: bytes, before: ChainState | None = None
) -> ChainState:
    tr = cert.transcript
    committee = Committee(tr.committee, tr.threshold, tr.admission_policy_hash)
    indices = frozenset(p.index for p in tr.committee)
    identities = frozenset(p.identity for p in tr.committee)
    if before is not None:
        indices |= before.used_indices
        identities |= before.used_identities
    return ChainState(
        mpk, tr.epoch, committee, cert, head, None, cert.public_shares(), indices, identities
    )


def _validate(link: EpochCertificate | MembershipCertificate) -> None:
    """Links built in memory have not been through the decoder's checks: run them."""
    try:
        link.validate()
        if isinstance(link, EpochCertificate):
            link.transcript.validate()
            for p in link.transcript.committee:
                p.validate()
        else:
            link.outcome.proposal.validate()
    except InvalidEncoding as exc:
        raise ChainError(f"malformed link: {exc}") from exc


def verify_membership_certificate(link: MembershipCertificate, mpk: G2) -> None:
    """Check one membership certificate on its own: well formed and signed under the
    pinned ``mpk`` (which every epoch keeps). It proves the committee of
    ``link.outcome.epoch`` certified the change; not that it follows any particular
    chain (``extend`` checks that). Raises ``ChainError``."""
    try:
        check_mpk(mpk)
    except IdentityMasterKey as exc:
        raise ChainError(str(exc)) from exc
    _validate(link)
    _check_signature(link.outcome.encode(), link.signature, mpk)


def certified_urls(
    links: Sequence[EpochCertificate | MembershipCertificate],
    state: ChainState,
    *,
    check_signatures: bool = True,
    wanted: Collection[ParticipantIndex] | None = None,
    checked: set[ParticipantIndex] | None = None,
) -> dict[ParticipantIndex, str]:
    """The HTTP URL of each member of ``state`` that ``links`` certify: the ``url`` of a
    membership certificate's ``AddMember`` for that member's index and identity (an
    index is never reused, so a member has at most one). With ``check_signatures``
    each certificate's signature must verify under ``state.mpk`` on its own
    (``verify_membership_certificate``); without, ``links`` must be verified already
    (a node's own chain). Links that do not verify, or name another identity or a node
    no longer in the committee, are skipped. Genesis members have no such link.

    Only members in ``wanted`` (default: every member) are looked for, and each at most
    once: the first ``AddMember`` for a wanted member's index and identity is the only
    one checked for it, whether it verifies or not, so ``links`` cost at most one
    signature check per wanted member however many there are. ``checked``, when given,
    holds the indices checked by earlier calls (they are skipped) and gains those
    checked here, so a caller reading links in pages checks each member once in all.
    """
    members = {p.index: p.identity for p in state.committee.members}
    looking = set(members) if wanted is None else {int(i) for i in wanted} & set(members)
    if checked is None:
        checked = set()
    looking -= {int(i) for i in checked}
    out: dict[ParticipantIndex, str] = {}
    for link in links:
        if not looking:
            break
        if not isinstance(link, MembershipCertificate):
            continue
        change = link.outcome.proposal.change
        if not isinstance(change, AddMember) or not change.url:
            continue
        p = change.participant
        if p.index not in looking or members[p.index] != p.identity:
            continue
        looking.discard(p.index)
        checked.add(ParticipantIndex(p.index))
        if check_signatures:
            try:
                verify_membership_certificate(link, state.mpk)
            except ChainError:
                continue
        out[ParticipantIndex(p.index)] = change.url
    return out


def genesis_state(mpk: G2, genesis: EpochCertificate) -> ChainState:
    """Verify the genesis certificate under the pinned ``mpk``.

    The caller must have a reason to trust ``mpk`` that does not come from the
    certificate itself (a pinned key, or the genesis endorsements, see
    ``GenesisEndorsement``): a certificate checked under the key written in it
    proves nothing. The identity point is refused.
    """
    try:
        check_mpk(mpk)
    except IdentityMasterKey as exc:
        raise ChainError(str(exc)) from exc
    _validate(genesis)
    tr = genesis.transcript
    if tr.kind != RunKind.DKG or tr.epoch != 0 or tr.previous_certificate_hash != ZERO_HASH:
        raise ChainError("the first link must be the genesis DKG certificate of epoch 0")
    if tr.mpk != mpk.to_bytes():
        raise ChainError("genesis certificate is for another master public key")
    _check_signature(tr.encode(), genesis.signature, mpk)
    return _state_from_epoch(mpk, genesis, genesis.hash())


def epoch_state(mpk: G2, cert: EpochCertificate) -> ChainState:
    """Verify one epoch certificate directly under the pinned ``mpk``, without its past.

    As strong as walking the chain to it: the signature is a ``t``-of-``n``
    BLS signature under the one master public key, so it was made with ``t``
    shares of one epoch (which reconstruct the master secret) or honestly.
    """
    if cert.transcript.kind == RunKind.DKG:
        return genesis_state(mpk, cert)
    _validate(cert)
    tr = cert.transcript
    if tr.epoch < 1:
        raise ChainError("a reshare certificate is for epoch 1 or later")
    if tr.mpk != mpk.to_bytes():
        raise ChainError("epoch certificate is for another master public key")
    _check_signature(tr.encode(), cert.signature, mpk)
    return _state_from_epoch(mpk, cert, cert.hash())


def rank(state: ChainState) -> tuple[int, int]:
    """The fork-choice order of chain heads: the highest ``(epoch, attempt)`` wins."""
    return (state.epoch, state.certificate.transcript.attempt)


def link_position(link: EpochCertificate | MembershipCertificate) -> int:
    """A link's 0-based position in the full chain: ``E_e`` at ``2e``, ``M_e`` at ``2e + 1``."""
    if isinstance(link, EpochCertificate):
        return 2 * link.transcript.epoch
    return 2 * link.outcome.epoch + 1


def verify_recent(
    links: Sequence[EpochCertificate | MembershipCertificate], *, mpk: G2
) -> list[ChainState]:
    """Verify genesis (optional) and a recent tail from the pinned ``mpk``; states, oldest first.

    ``links[0]`` is an epoch certificate, verified directly (``epoch_state``);
    each later link must follow the one before it (``extend``), except that
    the link after genesis may be an epoch certificate of any later epoch,
    verified directly too (the start of the recent tail). The cost is one
    pairing check per link given, whatever the chain's length.
    """
    if not links or not isinstance(links[0], EpochCertificate):
        raise ChainError("empty chain or no epoch certificate first")
    state = epoch_state(mpk, links[0])
    by_epoch = {state.epoch: state}
    for i, link in enumerate(links[1:], start=1):
        if (
            i == 1
            and isinstance(link, EpochCertificate)
            and state.epoch == 0
            and link.transcript.epoch > 0
        ):
            state = epoch_state(mpk, link)  # the recent tail after genesis
        else:
            state = extend(state, link)
        by_epoch[state.epoch] = state
    return [by_epoch[e] for e in sorted(by_epoch)]


def extend(state: ChainState, link: EpochCertificate | MembershipCertificate) -> ChainState:
    """Verify one more link after ``state``; raises ``ChainError``."""
    try:
        check_mpk(state.mpk)
    except IdentityMasterKey as exc:
        raise ChainError(str(exc)) from exc
    _validate(link)
    if isinstance(link, MembershipCertificate):
        out = link.outcome
        if state.pending is not None:
            raise ChainError("one change per epoch: a change is already certified")
        if out.epoch != state.epoch or out.proposal.epoch != state.epoch:
            raise ChainError(
                f"membership certificate for epoch {out.epoch}, chain is at {state.epoch}"
            )
        if (
            out.previous_certificate_hash != state.head_hash
            or out.proposal.certificate_hash != state.head_hash
        ):
            raise ChainError("membership certificate does not follow the current epoch certificate")
        if state.apply(out.proposal.change) is None:
            raise ChainError("certified change is invalid for the committee")
        _check_signature(out.encode(), link.signature, state.mpk)
        return ChainState(
            state.mpk,
            state.epoch,
            state.committee,
            state.certificate,
            link.hash(),
            link,
            state.public_shares,
            state.used_indices,
            state.used_identities,
        )
    tr = link.transcript
    if state.pending is None:
        raise ChainError("an epoch certificate must follow a membership certificate")
    if tr.kind != RunKind.RESHARE or tr.epoch != state.epoch + 1:
        raise ChainError(f"expected the reshare certificate of epoch {state.epoch + 1}")
    if tr.previous_certificate_hash != state.head_hash:
        raise ChainError("epoch certificate does not follow the membership certificate")
    if tr.mpk != state.mpk.to_bytes():
        raise ChainError("epoch certificate changes the master public key")
    expected = state.apply(state.pending.outcome.proposal.change)
    if expected is None or (tr.committee, tr.threshold, tr.admission_policy_hash) != (
        expected.members,
        expected.threshold,
        expected.admission_policy_hash,
    ):
        raise ChainError("epoch certificate's committee is not the certified change")
    _check_signature(tr.encode(), link.signature, state.mpk)
    return _state_from_epoch(state.mpk, link, link.hash(), state)


def verify_chain(
    links: Sequence[EpochCertificate | MembershipCertificate],
    *,
    mpk: G2 | None = None,
    checkpoint: ChainState | None = None,
) -> ChainState:
    """Verify ``links`` from a pinned ``mpk`` (links[0] is genesis) or after a pinned checkpoint."""
    if (mpk is None) == (checkpoint is None):
        raise ValueError("pin exactly one of mpk or checkpoint")
    if checkpoint is not None:
        state = checkpoint
        rest = list(links)
    else:
        if not links or not isinstance(links[0], EpochCertificate):
            raise ChainError("empty chain or no genesis certificate")
        if mpk is None:  # pragma: no cover - checked above
            raise ValueError("no anchor")
        if links[0].transcript.kind != RunKind.DKG:
            raise ChainError("the first link must be the genesis DKG certificate of epoch 0")
        return verify_recent(links, mpk=mpk)[-1]
    for link in rest:
        state = extend(state, link)
    return state


def verify_chain_epochs(
    links: Sequence[EpochCertificate | MembershipCertificate], *, mpk: G2
) -> list[ChainState]:
    """Verify ``links`` from a pinned ``mpk``; the state of every epoch given, oldest first.

    ``links`` is genesis then either the rest of the chain or a recent tail
    (``verify_recent``). The last element is what ``verify_chain`` returns.
    The earlier ones are what the chain proves about past epochs (their
    committees and public shares): a client uses the one before the last to
    combine partials from members that have not switched to the newest epoch yet.
    """
    if not links or not isinstance(links[0], EpochCertificate):
        raise ChainError("empty chain or no genesis certificate")
    if links[0].transcript.kind != RunKind.DKG:
        raise ChainError("the first link must be the genesis DKG certificate of epoch 0")
    return verify_recent(links, mpk=mpk)


def chain_digest(links: Sequence[EpochCertificate | MembershipCertificate]) -> bytes:
    """A short fingerprint of a chain (for logs and checkpoints)."""
    return sha256(b"".join(link.fingerprint() for link in links))
