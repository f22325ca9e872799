"""Passing app policies on between nodes: announce what is new, answer digests with what is newer.

An owner (or anyone holding a signed policy) can hand a new version to one
node; the committee spreads it. Two messages, both sent over the nodes'
authenticated links:

* ``PolicyAnnounce`` carries one encoded ``PolicyBundle``. A node that
  *accepts* it (valid, for this committee's key, newer than what it holds)
  announces it to every other member; a duplicate, stale or invalid one goes
  no further, so a flood ends after one round per new version.
* ``PolicyDigest`` (version 2) lists the ``(app id, version)`` pairs a node
  holds in one range of app ids ``[start, end)`` (``end`` empty: to the last
  app), at most :data:`MAX_DIGEST_ENTRIES` of them. Every node sends the next
  page to every member on a timer, wrapping around, so every app is covered
  however many there are. A member that holds a newer version of an app *in
  that range* (or one the page lacks) answers with its bundle; apps outside
  the range are never answered, so in-sync peers exchange digests only. This
  is how a node that was down or partitioned during a push catches up.
* ``PolicyQuery`` asks the other members for the bundles of apps the sender
  does not know (a push for an unknown app): each member answers with a
  ``PolicyAnnounce`` per app it holds. A node admits an app it learns this way
  only once the committee threshold of members sent it (``kms.policy.registry``).

Nothing here trusts the sender: every bundle is checked by the receiver's
``PolicyStore`` exactly like one posted over HTTP. Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from kms.policy.errors import PolicyFailure
from mpc.codec import MaxSize, Message, MessageDecodeError

MAX_DIGEST_ENTRIES = 1024
MAX_BUNDLE = 64 * 1024
MAX_ANSWERS_PER_DIGEST = 32
"""A digest is answered with at most this many bundles; the next digest asks for the rest."""


@dataclass(frozen=True, slots=True)
class PolicyVersion(Message):
    TYPE = "kms/policy-version"
    app_id: Annotated[bytes, MaxSize(64)]
    version: int


@dataclass(frozen=True, slots=True)
class PolicyDigest(Message):
    """The app policies a node holds with ids in ``[start, end)`` (sorted, each app once);
    an empty ``end`` means no upper bound."""

    TYPE = "kms/policy-digest"
    VERSION = 2
    start: Annotated[bytes, MaxSize(64)]
    end: Annotated[bytes, MaxSize(64)]
    held: Annotated[tuple[PolicyVersion, ...], MaxSize(MAX_DIGEST_ENTRIES)]

    def validate(self) -> None:
        ids = [h.app_id for h in self.held]
        if ids != sorted(set(ids)):
            raise MessageDecodeError("kms/policy-digest: app ids sorted and distinct")
        if self.end and self.end <= self.start:
            raise MessageDecodeError("kms/policy-digest: empty range")
        if any(not self.covers(a) for a in ids):
            raise MessageDecodeError("kms/policy-digest: an app outside the range")

    def covers(self, app_id: bytes) -> bool:
        return self.start <= app_id and (not self.end or app_id < self.end)

    @classmethod
    def page(cls, entries: Sequence[tuple[bytes, int]], start: bytes, end: bytes) -> PolicyDigest:
        """One page: ``entries`` (sorted, all in ``[start, end)``)."""
        return cls(start, end, tuple(PolicyVersion(a, v) for a, v in entries))

    @classmethod
    def of(cls, held: Mapping[bytes, int]) -> PolicyDigest:
        """A single page covering every app (at most ``MAX_DIGEST_ENTRIES`` of them)."""
        if len(held) > MAX_DIGEST_ENTRIES:
            raise ValueError("too many apps for one page: use PolicyDigest.page")
        return cls.page(sorted(held.items()), b"", b"")


@dataclass(frozen=True, slots=True)
class PolicyQuery(Message):
    """Do you hold this app? (answered with a ``PolicyAnnounce`` of its bundle if so)"""

    TYPE = "kms/policy-query"
    app_id: Annotated[bytes, MaxSize(64)]


@dataclass(frozen=True, slots=True)
class PolicyUnknown(Message):
    """The answer to a ``PolicyQuery`` for an app the sender has not admitted."""

    TYPE = "kms/policy-unknown"
    app_id: Annotated[bytes, MaxSize(64)]


@dataclass(frozen=True, slots=True)
class PolicyAnnounce(Message):
    """One encoded ``PolicyBundle``, checked by the receiver before anything else."""

    TYPE = "kms/policy-announce"
    bundle: Annotated[bytes, MaxSize(MAX_BUNDLE)]


def newer_than_digest(digest: PolicyDigest, held: Mapping[bytes, int]) -> list[bytes]:
    """App ids in the digest's range whose policy we hold in a newer version than it names
    (or that it lacks). ``held`` may hold apps outside the range: they are never named."""
    theirs = {h.app_id: h.version for h in digest.held}
    out = [app for app, v in sorted(held.items()) if digest.covers(app) and v > theirs.get(app, 0)]
    return out[:MAX_ANSWERS_PER_DIGEST]


def announce_to(members: Sequence[int], me: int, origin: int | None = None) -> list[int]:
    """Who hears of a policy this node just accepted: every other member but its source."""
    return [i for i in members if i != me and i != origin]


def offer_outcome(
    accepted: bool, duplicate: bool, reason: PolicyFailure | None
) -> tuple[bool, str | None]:
    """After offering a peer's bundle to this node's store: (pass it on?, blame or None).

    A new version is passed on; a duplicate is the normal echo of the flood and a
    stale version only shows the peer is behind, so neither is blamed; nor is an
    app this node has not admitted or has frozen, nor a policy by a key this
    node's chain rotated away (the peer has not seen the rotation yet: it is sent
    ours); anything else refused (a bad signature, another key, a malformed
    bundle) is. ``reason`` None: this node keeps no policies (nothing is blamed).
    """
    if accepted:
        return not duplicate, None
    if reason is None or reason in _NOT_BLAMED:
        return False, None
    return False, f"policy gossip: {reason.value}"


_NOT_BLAMED = frozenset(
    {
        PolicyFailure.STALE_VERSION,
        PolicyFailure.UNKNOWN_APP,
        PolicyFailure.APP_FROZEN,
        PolicyFailure.NOT_OWNER,
        PolicyFailure.REJECTED_BRANCH,
    }
)


__all__ = [
    "MAX_ANSWERS_PER_DIGEST",
    "MAX_DIGEST_ENTRIES",
    "PolicyAnnounce",
    "PolicyDigest",
    "PolicyQuery",
    "PolicyUnknown",
    "PolicyVersion",
    "announce_to",
    "newer_than_digest",
    "offer_outcome",
]
