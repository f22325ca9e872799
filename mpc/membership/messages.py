"""Membership proposals, ballots, outcomes and membership certificates."""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from mpc.broadcast import BroadcastPayload
from mpc.cert import EpochCertificate, EpochTranscript, encoding_digest, sha256
from mpc.codec import MaxSize, Message, MessageDecodeError, Since, Size, decode
from mpc.dkg.messages import Participant
from mpc.errors import InvalidEncoding, InvalidSignature
from mpc.memo import BytesMemo, IdentityMemo
from mpc.participant import MAX_PARTICIPANTS
from mpc.sig import CTX_GENESIS_ENDORSEMENT, SigningKey

MAX_ATTESTATION = 64 * 1024
MAX_EVIDENCE = 256 * 1024
MAX_MEMBER_URL = 256


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _valid_label(label: str) -> bool:
    """A DNS label of letters, digits and inner hyphens; an ``xn--`` label must be
    punycode that decodes (and encodes back to itself)."""
    if not _LABEL.fullmatch(label):
        return False
    if label[2:4] != "--":
        return True
    if label[:4].lower() != "xn--":
        return False
    try:
        return label.encode("ascii").decode("idna").encode("idna").lower() == label.lower().encode()
    except UnicodeError:
        return False


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    if host and all(c.isdigit() or c == "." for c in host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 253 and all(_valid_label(label) for label in labels)


def valid_member_url(url: str) -> bool:
    """An ``AddMember.url``: printable ASCII without spaces; scheme ``http`` or ``https``;
    a host that is a DNS name (letters, digits, inner hyphens; ``xn--`` labels valid
    punycode), an IPv4 address or a bracketed IPv6 address; an optional port 1..65535
    in digits; a path; no user info, query or fragment. Every URL it accepts is one an
    HTTP client can build a request for."""
    if not url or not all(33 <= ord(c) < 127 for c in url):
        return False
    if not url.startswith(("http://", "https://")):
        return False
    if any(c in url for c in "?#@\\"):
        return False
    rest = url.partition("://")[2]
    authority, _, _ = rest.partition("/")
    host, port = authority, ""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return False
        host, after = authority[: close + 1], authority[close + 1 :]
        if after:
            if not after.startswith(":"):
                return False
            port = after[1:]
            if not port:
                return False
    elif ":" in authority:
        host, _, port = authority.partition(":")
        if not port:
            return False
    if port and not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        return False
    return _valid_host(host)


@dataclass(frozen=True, slots=True)
class AddMember(Message):
    """Admit a node: its participant record and attestation evidence (opaque here)."""

    TYPE = "member/add"
    VERSION = 3
    participant: Participant
    attestation: Annotated[bytes, MaxSize(MAX_ATTESTATION)]
    addresses: Annotated[tuple[str, ...], MaxSize(8)] = ()
    """Where the new node listens (libp2p multiaddrs), so members can reach it."""
    epoch: Annotated[int, Since(2)] = 0
    head: Annotated[bytes, MaxSize(32), Since(2)] = b""
    """The committee's chain head the join request was made for: the epoch and the
    hash of the chain's last link then (version 2; empty in a version-1 request). The
    quote binds them, and members refuse a request whose head is not in their chain
    or is too many epochs old, so an old request cannot be replayed."""
    url: Annotated[str, MaxSize(MAX_MEMBER_URL), Since(3)] = ""
    """The HTTP URL where the new node serves clients (version 3; empty in older
    requests): bound by the quote like the addresses and certified with the change, so
    a client that verifies the chain from the pinned master public key learns where
    to ask the new member for partials."""

    def validate(self) -> None:
        if any(len(a) > 256 for a in self.addresses):
            raise MessageDecodeError("member/add: address too long")
        if self.url and not valid_member_url(self.url):
            raise MessageDecodeError("member/add: url is an http(s) URL without spaces")
        if self.head and len(self.head) != 32:
            raise MessageDecodeError("member/add: head is a 32-byte link hash")


@dataclass(frozen=True, slots=True)
class RemoveMember(Message):
    TYPE = "member/remove"
    VERSION = 2
    index: int
    evidence: Annotated[bytes, MaxSize(MAX_EVIDENCE)] = b""
    identity: Annotated[bytes, MaxSize(32), Since(2)] = b""
    """The Ed25519 identity of the member removed (version 2): the change applies only
    while that identity holds ``index``. Empty in a version-1 removal."""

    def validate(self) -> None:
        if self.identity and len(self.identity) != 32:
            raise MessageDecodeError("member/remove: identity is a 32-byte Ed25519 key")


@dataclass(frozen=True, slots=True)
class ChangeThreshold(Message):
    TYPE = "member/threshold"
    threshold: int


@dataclass(frozen=True, slots=True)
class ChangeAdmissionPolicy(Message):
    TYPE = "member/admission-policy"
    policy: Annotated[bytes, MaxSize(MAX_ATTESTATION)]

    def policy_hash(self) -> bytes:
        return hashlib.sha256(self.policy).digest()


@dataclass(frozen=True, slots=True)
class Refresh(Message):
    TYPE = "member/refresh"


Change = AddMember | RemoveMember | ChangeThreshold | ChangeAdmissionPolicy | Refresh


class ChangeKind(enum.StrEnum):
    """The kind of a membership change: the name of each ``Change`` class.

    A ``StrEnum``: in logs, status and labels it is the string it always was.
    """

    ADD = "add"
    REMOVE = "remove"
    THRESHOLD = "threshold"
    ADMISSION_POLICY = "admission-policy"
    REFRESH = "refresh"


_CHANGE_KINDS: dict[type, ChangeKind] = {
    AddMember: ChangeKind.ADD,
    RemoveMember: ChangeKind.REMOVE,
    ChangeThreshold: ChangeKind.THRESHOLD,
    ChangeAdmissionPolicy: ChangeKind.ADMISSION_POLICY,
    Refresh: ChangeKind.REFRESH,
}

_CHANGE_FIELDS = {
    ChangeKind.ADD: "add",
    ChangeKind.REMOVE: "remove",
    ChangeKind.THRESHOLD: "threshold",
    ChangeKind.ADMISSION_POLICY: "admission_policy",
    ChangeKind.REFRESH: "refresh",
}
"""The ``Proposal`` field that carries each kind of change."""

# Fixed order of change kinds: operator changes before refresh (DESIGN.md, "Membership agreement").
KIND_ORDER = {
    ChangeKind.ADD: 0,
    ChangeKind.REMOVE: 0,
    ChangeKind.THRESHOLD: 0,
    ChangeKind.ADMISSION_POLICY: 0,
    ChangeKind.REFRESH: 1,
}


def change_kind(change: Change) -> ChangeKind:
    return _CHANGE_KINDS[type(change)]


@dataclass(frozen=True, slots=True)
class Proposal(Message):
    """A change bound to ``(epoch, hash(current epoch certificate))`` by its proposer.

    Exactly one of the ``change_*`` fields is set (msgpack has no unions).
    """

    TYPE = "member/proposal"
    epoch: int
    certificate_hash: Annotated[bytes, Size(32)]
    proposer: int
    nonce: Annotated[bytes, Size(16)]
    add: AddMember | None = None
    remove: RemoveMember | None = None
    threshold: ChangeThreshold | None = None
    admission_policy: ChangeAdmissionPolicy | None = None
    refresh: Refresh | None = None

    def validate(self) -> None:
        set_fields = [
            f
            for f in (self.add, self.remove, self.threshold, self.admission_policy, self.refresh)
            if f is not None
        ]
        if len(set_fields) != 1:
            raise MessageDecodeError("member/proposal: exactly one change")

    @property
    def change(self) -> Change:
        for f in (self.add, self.remove, self.threshold, self.admission_policy, self.refresh):
            if f is not None:
                return f
        raise MessageDecodeError(
            "member/proposal: no change"
        )  # pragma: no cover - validate() forbids

    @property
    def kind(self) -> ChangeKind:
        return change_kind(self.change)

    def id(self) -> bytes:
        """The proposal id: SHA-256 of its canonical encoding."""
        return self.fingerprint()

    def order_key(self) -> tuple[int, bytes]:
        return (KIND_ORDER[self.kind], self.id())

    @classmethod
    def of(
        cls, epoch: int, certificate_hash: bytes, proposer: int, nonce: bytes, change: Change
    ) -> Proposal:
        key = _CHANGE_FIELDS[change_kind(change)]
        return cls(epoch, certificate_hash, proposer, nonce, **{key: change})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ProposalNotice(Message):
    """A proposal sent by its proposer to every other member as soon as it is made,
    point to point, so that members whose operators approved its id already can check
    it and approve it in the next window's ballots. It counts for nothing by itself:
    only ballots delivered in a window are tallied."""

    TYPE = "member/proposal-notice"
    proposal: Proposal


@dataclass(frozen=True, slots=True)
class Ballot(Message):
    """A member's one broadcast per decision window: its standing proposals and approvals,
    and (version 2) its lock: the one outcome it has signed in this epoch, if any."""

    TYPE = "member/ballot"
    VERSION = 2
    epoch: int
    window: int
    member: int
    proposals: Annotated[tuple[Proposal, ...], MaxSize(16)]
    approvals: Annotated[tuple[bytes, ...], MaxSize(256)]
    lock: Annotated[LockReport | None, Since(2)] = None

    def validate(self) -> None:
        if any(len(a) != 32 for a in self.approvals):
            raise MessageDecodeError("member/ballot: approvals are 32-byte proposal ids")
        if list(self.approvals) != sorted(set(self.approvals)):
            raise MessageDecodeError("member/ballot: approvals must be sorted and distinct")


@dataclass(frozen=True, slots=True)
class MembershipOutcome(Message):
    """What a membership certificate certifies: the winning proposal of a window."""

    TYPE = "cert/membership"
    epoch: int
    window: int
    previous_certificate_hash: Annotated[bytes, Size(32)]
    proposal: Proposal
    reshare_start: int
    """Absolute time (seconds) of the reshare's first attempt slot. ``window`` and this
    are the values of the window in which the outcome was first decided and signed: the
    signed outcome never changes from window to window. The reshare starts at the first
    attempt slot after the certificate is known (``docs/protocols/membership.md``)."""


MAX_LOCK_PROOF = 64


@dataclass(frozen=True, slots=True)
class LockReport(Message):
    """A member's lock, carried in its ballots: the outcome it signed in this epoch,
    its partial signature over it, and the proof that the outcome's proposal had ``t``
    approvals: ``t`` ballots of the outcome's window, each signed by its sender through
    the broadcast digest (``CTX_BROADCAST_DIGEST``) and carrying no lock of its own."""

    TYPE = "member/lock"
    outcome: MembershipOutcome
    signer: int
    signature: Annotated[bytes, Size(48)]
    proof: Annotated[tuple[BroadcastPayload, ...], MaxSize(MAX_LOCK_PROOF)]


@dataclass(frozen=True, slots=True)
class MembershipIntent(Message):
    """What a member persists of its own standing intent in one epoch (not a wire message):
    its proposals, its operator's approvals, and approvals waiting for their proposal."""

    TYPE = "member/intent"
    proposals: Annotated[tuple[Proposal, ...], MaxSize(16)]
    approvals: Annotated[tuple[bytes, ...], MaxSize(256)]
    deferred: Annotated[tuple[bytes, ...], MaxSize(256)]


@dataclass(frozen=True, slots=True)
class MembershipCertificate(Message):
    TYPE = "cert/membership-certificate"
    outcome: MembershipOutcome
    signature: Annotated[bytes, Size(48)]

    def hash(self) -> bytes:
        return self.fingerprint()

    def fingerprint(self) -> bytes:
        return encoding_digest(self)  # ``Message.fingerprint``, remembered

    @classmethod
    def decode(cls, data: bytes) -> MembershipCertificate:
        """``Message.decode``, remembered by the full bytes: every chain update repeats
        the links (``mpc.memo``; bytes that fail to decode are decoded again)."""
        return _certificate_decodes(data)


def _decode_certificate(data: bytes) -> MembershipCertificate:
    msg = decode(data)
    if not isinstance(msg, MembershipCertificate):
        raise MessageDecodeError(f"expected {MembershipCertificate.TYPE}, got {msg.TYPE}")
    return msg


_certificate_decodes: BytesMemo[MembershipCertificate] = BytesMemo(_decode_certificate, limit=256)


@dataclass(frozen=True, slots=True)
class OutcomePartial(Message):
    TYPE = "cert/membership-partial"
    signer: int
    outcome_hash: Annotated[bytes, Size(32)]
    signature: Annotated[bytes, Size(48)]


def genesis_statement(transcript: EpochTranscript) -> bytes:
    """What a genesis endorsement signs: the transcript digest, and spelled out beside
    it the committee, threshold, admission-policy hash and MPK it names."""
    return _genesis_statements(transcript)


def _genesis_statement(transcript: EpochTranscript) -> bytes:
    committee = sha256(b"".join(p.encode() for p in transcript.committee))
    return (
        transcript.hash()
        + committee
        + transcript.threshold.to_bytes(4, "big")
        + transcript.admission_policy_hash
        + transcript.mpk
    )


_genesis_statements: IdentityMemo[EpochTranscript, bytes] = IdentityMemo(_genesis_statement)
"""Every endorsement of one genesis names the same transcript (``mpc.memo``)."""


@dataclass(frozen=True, slots=True)
class GenesisEndorsement(Message):
    """A genesis member's identity signature on a genesis certificate's transcript.

    A member signs only the transcript its own genesis run computed. A node with no
    chain adopts a genesis certificate only with endorsements of ``t`` distinct
    members of its configured genesis committee (or a pinned MPK), so no fewer than
    ``t`` genesis members can choose the master public key.
    """

    TYPE = "chain/genesis-endorsement"
    signer: int
    transcript_hash: Annotated[bytes, Size(32)]
    signature: Annotated[bytes, Size(64)]

    @classmethod
    def create(
        cls, key: SigningKey, signer: int, transcript: EpochTranscript
    ) -> GenesisEndorsement:
        sig = key.sign(CTX_GENESIS_ENDORSEMENT, genesis_statement(transcript))
        return cls(signer, transcript.hash(), sig)

    def verify(self, transcript: EpochTranscript, genesis: tuple[Participant, ...]) -> None:
        """Raise ``InvalidSignature`` unless a member of ``genesis`` signed ``transcript``."""
        if self.transcript_hash != transcript.hash():
            raise InvalidSignature("endorsement is for another genesis transcript")
        signer = next((p for p in genesis if p.index == self.signer), None)
        if signer is None:
            raise InvalidSignature("endorsement signer is not a genesis member")
        try:
            key = signer.verify_key()
        except InvalidEncoding as exc:
            raise InvalidSignature("genesis member's identity key is malformed") from exc
        key.verify(CTX_GENESIS_ENDORSEMENT, genesis_statement(transcript), self.signature)


def endorsing_members(
    transcript: EpochTranscript,
    endorsements: tuple[GenesisEndorsement, ...] | list[GenesisEndorsement],
    genesis: tuple[Participant, ...],
) -> set[int]:
    """The distinct genesis members whose endorsement of ``transcript`` verifies."""
    out: set[int] = set()
    for e in endorsements:
        if e.signer in out or e.transcript_hash != transcript.hash():
            continue
        try:
            e.verify(transcript, genesis)
        except InvalidSignature:
            continue
        out.add(e.signer)
    return out


@dataclass(frozen=True, slots=True)
class GenesisEndorsements(Message):
    """The genesis endorsements a node holds, relayed to a peer it sends the chain from
    genesis (just before that ``chain/update``). The receiver checks each one itself."""

    TYPE = "chain/genesis-endorsements"
    endorsements: Annotated[tuple[GenesisEndorsement, ...], MaxSize(MAX_PARTICIPANTS)]


class LinkKind(enum.StrEnum):
    """What one link of the epoch chain is: the one name of each kind of link.

    ``ChainUpdate.kinds`` carries it on the wire and the store keeps it in its
    ``chain.kind`` column, both as the string value.
    """

    EPOCH = "epoch"
    """An ``EpochCertificate`` (``mpc.cert``)."""
    MEMBERSHIP = "membership"
    """A ``MembershipCertificate``."""


Link = EpochCertificate | MembershipCertificate
"""One link of the epoch chain."""

_LINK_TYPES: dict[LinkKind, type[EpochCertificate] | type[MembershipCertificate]] = {
    LinkKind.EPOCH: EpochCertificate,
    LinkKind.MEMBERSHIP: MembershipCertificate,
}


def link_kind(link: Link) -> LinkKind:
    """The kind of ``link``."""
    return LinkKind.EPOCH if isinstance(link, EpochCertificate) else LinkKind.MEMBERSHIP


def link_epoch(link: Link) -> int:
    """The epoch ``link`` belongs to: the one it certifies, or the one it changes."""
    return link.transcript.epoch if isinstance(link, EpochCertificate) else link.outcome.epoch


def decode_link(kind: LinkKind | str, raw: bytes) -> Link:
    """Decode one chain link as exactly the certificate ``kind`` names.

    ``kind`` may be the string value (as a store row holds it). Raises
    ``MessageDecodeError`` for an unknown kind or bytes that are not a valid
    certificate of that kind; verifying the link is the caller's (``mpc.membership.chain``).
    """
    try:
        cls = _LINK_TYPES[LinkKind(kind)]
    except ValueError:
        raise MessageDecodeError(f"unknown chain link kind {str(kind)[:40]!r}") from None
    return cls.decode(raw)


@dataclass(frozen=True, slots=True)
class ChainUpdate(Message):
    """Links of the epoch chain (encoded certificates, oldest first) sent to catch a peer up.

    Each link is ``[kind, bytes]`` flattened: ``kinds[i]`` is the ``LinkKind`` of
    ``links[i]`` (on the wire its string, ``"epoch"`` or ``"membership"``).
    The receiver verifies every link itself; nothing here is trusted.
    """

    TYPE = "chain/update"
    kinds: Annotated[tuple[LinkKind, ...], MaxSize(4096)]
    links: Annotated[tuple[bytes, ...], MaxSize(4096)]

    def validate(self) -> None:
        if len(self.kinds) != len(self.links):
            raise MessageDecodeError("chain/update: one kind per link")

    @classmethod
    def of(cls, links: Sequence[Link]) -> ChainUpdate:
        """The update carrying ``links``."""
        return cls(tuple(link_kind(x) for x in links), tuple(x.encode() for x in links))

    def decoded_links(self) -> list[Link]:
        """Every link decoded (not verified); raises ``MessageDecodeError``."""
        return [decode_link(k, raw) for k, raw in zip(self.kinds, self.links, strict=True)]


@dataclass(frozen=True, slots=True)
class ChainRequest(Message):
    """Ask a peer for the chain links after ``have`` links."""

    TYPE = "chain/request"
    have: int
