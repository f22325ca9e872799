"""``kms audit verify`` and ``kms audit show``: a node's audit log, checked against the
identity the epoch chain gives the node's index.

The node's own answers prove nothing about who it is: a node that rewrites its
log can sign the new head with a fresh key and serve that key beside it. So
the identity that must have signed the head is taken from the epoch chain,
verified from the pinned master public key (``kms.client.http``): the chain
names every member's index and identity key, for the current committee and
for every earlier epoch (a removed member's certified record), and an index is
never given to another identity. The chain may come from any member (the
auditor need not trust the audited node for it); a node that serves an old
chain still cannot change what an index maps to.

What is detectable (docs/threat-model.md, "Audit logs checked against the chain"):
an edited, removed or reordered entry (the entries do not hash to the signed
head), a head signed by any key but the member's identity, and a log shorter
than a head the same node signed earlier and the auditor kept
(``expected_head``). A node that drops its newest entries and signs the shorter
head with its real identity is NOT detectable from that node's answers alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kms.app.operator import read_audit
from kms.client.http import chain_epochs_from_bytes
from kms.store.audit import ZERO_HASH, chain_hash, chain_problems, head_problems
from mpc.codec import MessageDecodeError
from mpc.errors import InvalidEncoding
from mpc.math import G2
from mpc.membership import AddMember, ChainError, ChainState, verify_recent
from mpc.membership.messages import ChainUpdate

__all__ = [
    "AuditReport",
    "AuditUnavailable",
    "PinnedIdentity",
    "chain_identity",
    "describe_entry",
    "fetch_pinned_identity",
    "head_at",
    "prefix_problems",
    "read_expected_head",
    "verify_node_audit",
]

CHAIN_PAGE_LIMIT = 64
"""Links asked for per ``GET /v1/chain?from=…`` page when the whole chain is walked."""
MAX_CHAIN_PAGES = 10_000
"""Pages at most in one walk (a node that keeps answering must not hold the auditor)."""

Admin = Callable[[Path, dict[str, Any]], dict[str, Any]]


class AuditUnavailable(Exception):
    """The chain or the identity could not be established (no node to ask, a chain that
    does not verify, an index the chain never names)."""


@dataclass(frozen=True)
class PinnedIdentity:
    """Member ``index``'s identity key as the verified chain gives it."""

    index: int
    identity: bytes
    epoch: int
    """The (latest) epoch of the verified chain in which ``index`` is named."""
    current: bool
    """Whether ``index`` is a member of the verified chain's newest epoch."""
    chain_epoch: int
    """The newest epoch of the verified chain."""
    chain_url: str


def chain_identity(states: Sequence[ChainState], index: int) -> tuple[bytes, int] | None:
    """Member ``index``'s identity and the newest epoch naming it in verified ``states``
    (oldest first): a committee member of that epoch, or the member a certified (pending)
    change of that epoch adds."""
    for st in reversed(states):
        pending = st.pending
        if pending is not None:
            change = pending.outcome.proposal.change
            if isinstance(change, AddMember) and int(change.participant.index) == index:
                return change.participant.identity, st.epoch
        for p in st.committee.members:
            if int(p.index) == index:
                return p.identity, st.epoch
    return None


def _get(http: httpx.Client, url: str) -> httpx.Response:
    try:
        r = http.get(url)
    except httpx.HTTPError as exc:
        raise AuditUnavailable(f"cannot read {url}: {type(exc).__name__}: {exc}") from exc
    if r.status_code != 200:
        raise AuditUnavailable(f"{url} answered HTTP {r.status_code}")
    return r


def _whole_chain(http: httpx.Client, base: str, mpk: G2) -> list[ChainState]:
    """Every epoch's verified state, from the chain paged from genesis (``?from=``)."""
    links: list[Any] = []
    start = 0
    for _ in range(MAX_CHAIN_PAGES):
        r = _get(http, f"{base}/v1/chain?from={start}&limit={CHAIN_PAGE_LIMIT}")
        try:
            links += ChainUpdate.decode(r.content).decoded_links()
            following = int(r.headers.get("x-chain-next", "-1"))
            head = int(r.headers.get("x-chain-head", "-1"))
        except (MessageDecodeError, ValueError) as exc:
            raise AuditUnavailable(f"{base} served a malformed chain page: {exc}") from exc
        if following <= start or following > head:
            break
        start = following
    try:
        return verify_recent(links, mpk=mpk)
    except (ChainError, InvalidEncoding, ValueError) as exc:
        raise AuditUnavailable(
            f"the whole chain {base} serves does not verify from the master public key: {exc}"
        ) from exc


def fetch_pinned_identity(
    chain_url: str,
    mpk: G2,
    index: int,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 10.0,
) -> PinnedIdentity:
    """Member ``index``'s identity from the chain ``chain_url`` serves, verified from ``mpk``.

    First genesis and the recent tail (``GET /v1/chain``); when the index is not
    named there (a member removed in an epoch the tail skips), the whole chain,
    page by page. Raises ``AuditUnavailable``.
    """
    base = chain_url.rstrip("/")
    with httpx.Client(timeout=timeout, transport=transport) as http:
        raw = _get(http, base + "/v1/chain").content
        try:
            states = chain_epochs_from_bytes(raw, mpk)
        except (MessageDecodeError, ChainError, InvalidEncoding, ValueError) as exc:
            raise AuditUnavailable(
                f"the chain {base} serves does not verify from the master public key: {exc}"
            ) from exc
        found = chain_identity(states, index)
        if found is None:
            states = _whole_chain(http, base, mpk)
            found = chain_identity(states, index)
    if found is None:
        raise AuditUnavailable(
            f"the chain verified from the master public key names no member {index}"
        )
    newest = states[-1]
    current = any(int(p.index) == index for p in newest.committee.members)
    return PinnedIdentity(index, found[0], found[1], current, newest.epoch, base)


def head_at(entries: Sequence[str], count: int) -> bytes | None:
    """The chain hash over the first ``count`` entries (``None`` if there are fewer)."""
    if count > len(entries):
        return None
    head = ZERO_HASH
    for e in entries[:count]:
        head = chain_hash(head, e.encode())
    return head


def prefix_problems(
    entries: Sequence[str], earlier: Mapping[str, Any], identity: bytes
) -> list[str]:
    """Problems with a log against a head the same node signed earlier (``earlier``: count,
    head, identity, signature): that head must be signed by ``identity`` and be a head of
    ``entries`` (a log only grows)."""
    try:
        count = int(earlier["count"])
        old = str(earlier["head"])
    except (KeyError, TypeError, ValueError):
        return ["the earlier head is malformed"]
    if str(earlier.get("identity", "")) != identity.hex() or head_problems(earlier):
        return ["the earlier head is not signed by the member's identity: it proves nothing"]
    at = head_at(entries, count)
    if at is None:
        return [
            f"the log has {len(entries)} entries, fewer than the {count} of a head this "
            "member signed earlier: entries were removed (the log was truncated)"
        ]
    if at.hex() != old:
        return [
            f"the log's first {count} entries do not hash to the head this member signed "
            "earlier: the log was rewritten"
        ]
    return []


@dataclass
class AuditReport:
    """The result of ``verify_node_audit`` (what ``kms audit verify --json`` prints)."""

    pinned: PinnedIdentity
    doc: dict[str, Any]
    entries: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": "chain",
            "index": self.pinned.index,
            "identity": self.pinned.identity.hex(),
            "member": "current" if self.pinned.current else "removed",
            "named_in_epoch": self.pinned.epoch,
            "chain_epoch": self.pinned.chain_epoch,
            "chain_url": self.pinned.chain_url,
            "count": self.doc.get("count"),
            "head": self.doc.get("head"),
            "signed_head": {k: self.doc.get(k) for k in ("count", "head", "identity", "signature")},
            "problems": self.problems,
        }


def _public_head(url: str, transport: httpx.BaseTransport | None, timeout: float) -> dict[str, Any]:
    with httpx.Client(timeout=timeout, transport=transport) as http:
        r = _get(http, url.rstrip("/") + "/v1/audit/head")
    try:
        doc = r.json()
    except ValueError as exc:
        raise AuditUnavailable(f"{url} served an audit head that is not JSON") from exc
    if not isinstance(doc, dict):
        raise AuditUnavailable(f"{url} served an audit head that is not a JSON object")
    return doc


def verify_node_audit(
    config: Path,
    index: int,
    mpk: G2,
    *,
    chain_url: str,
    node_url: str | None = None,
    expected_head: Mapping[str, Any] | None = None,
    admin: Admin | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 10.0,
) -> AuditReport:
    """Check node ``index``'s whole audit log (read over the admin channel of ``config``)
    against the identity the chain at ``chain_url`` gives ``index``, verified from ``mpk``.

    Checked: the entries hash to the signed head; the head (and, with ``node_url``,
    the public head the node serves there) is signed by THAT identity, whatever
    identity the node names beside it; the public head is a head of the log; with
    ``expected_head`` (a head this member signed earlier, kept by the auditor), the
    log still starts with it. Raises ``AuditUnavailable`` when the chain or the
    public head cannot be read, ``AdminUnreachable`` / ``AdminRefused`` for the
    admin channel.
    """
    pinned = fetch_pinned_identity(chain_url, mpk, index, transport=transport, timeout=timeout)
    public = _public_head(node_url, transport, timeout) if node_url is not None else None
    try:
        doc, entries = read_audit(config, admin=admin)
        entries = [str(e) for e in entries]
        if not isinstance(doc, dict):
            raise TypeError("the head is not an object")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise AuditUnavailable(
            f"the node's admin channel answered a malformed audit export ({type(exc).__name__})"
        ) from exc
    want = pinned.identity.hex()
    problems: list[str] = []
    served = str(doc.get("identity", ""))
    if served != want:
        problems.append(
            f"the log's head is signed by identity {served[:16]}…, not by member {index}'s "
            f"identity in the verified chain ({want[:16]}…)"
        )
    if public is not None and str(public.get("identity", "")) != want:
        problems.append(
            f"the public head names identity {str(public.get('identity', ''))[:16]}…, not "
            f"member {index}'s identity in the verified chain"
        )
    # The chain of entries, the head's signature and the public head, each checked
    # under the pinned identity (never the one the node names).
    pinned_doc = {**doc, "identity": want}
    pinned_public = {**public, "identity": want} if public is not None else None
    try:
        problems += chain_problems(entries, pinned_doc, pinned_public)
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"the node's answer is malformed: {type(exc).__name__}")
    if expected_head is not None:
        problems += prefix_problems(entries, expected_head, pinned.identity)
    return AuditReport(pinned, doc, entries, problems)


def read_expected_head(path: Path) -> dict[str, Any]:
    """A head kept from an earlier check: ``GET /v1/audit/head``'s body or the
    ``signed_head`` of ``kms audit verify --json``; raises ``ValueError``."""
    doc = json.loads(path.read_text())
    if isinstance(doc, dict) and isinstance(doc.get("signed_head"), dict):
        doc = doc["signed_head"]
    if not isinstance(doc, dict) or not {"count", "head", "identity", "signature"} <= set(doc):
        raise ValueError("not a signed audit head (count, head, identity, signature)")
    return doc


def describe_entry(position: int, entry: str) -> str:
    """One readable line for audit entry ``position`` (its canonical JSON)."""
    try:
        record = json.loads(entry)
    except ValueError:
        return f"{position:>6}  (not JSON) {entry[:200]!r}"
    if not isinstance(record, dict):
        return f"{position:>6}  {entry[:200]}"
    parts = [f"{position:>6}"]
    when = record.pop("time", None)
    if isinstance(when, int) and 0 <= when < 2**40:
        from datetime import UTC, datetime

        parts.append(datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    elif when is not None:
        parts.append(f"time={when}")
    event = record.pop("event", None)
    if event is not None:
        parts.append(str(event))
    parts += [f"{k}={v}" for k, v in sorted(record.items())]
    return "  ".join(parts)
