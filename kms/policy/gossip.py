"""Passing app policies on between nodes: announce what is new, answer digests with what is newer.

An owner (or anyone holding a signed policy) can hand a new version to one
node; the committee spreads it. Two messages, both sent over the nodes'
authenticated links:

* ``PolicyAnnounce`` carries one encoded ``PolicyBundle``. A node that
  *accepts* it (valid, for this committee's key, newer than what it holds)
  announces it to every other member; a duplicate, stale or invalid one goes
  no further, so a flood ends after one round per new version.
* ``PolicyDigest`` lists the ``(app id, version)`` pairs a node holds. Every
  node sends one to every member on a timer; a member that holds a newer
  version of some app (or an app the digest lacks) answers with its bundle.
  This is how a node that was down or partitioned during a push catches up.

Nothing here trusts the sender: every bundle is checked by the receiver's
``PolicyStore`` exactly like one posted over HTTP. Pure code, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

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
    """The app policies a node holds, by app id (sorted, each app once)."""

    TYPE = "kms/policy-digest"
    held: Annotated[tuple[PolicyVersion, ...], MaxSize(MAX_DIGEST_ENTRIES)]

    def validate(self) -> None:
        ids = [h.app_id for h in self.held]
        if ids != sorted(set(ids)):
            raise MessageDecodeError("kms/policy-digest: app ids sorted and distinct")

    @classmethod
    def of(cls, held: Mapping[bytes, int]) -> PolicyDigest:
        entries = sorted(held.items())[:MAX_DIGEST_ENTRIES]
        return cls(tuple(PolicyVersion(a, v) for a, v in entries))


@dataclass(frozen=True, slots=True)
class PolicyAnnounce(Message):
    """One encoded ``PolicyBundle``, checked by the receiver before anything else."""

    TYPE = "kms/policy-announce"
    bundle: Annotated[bytes, MaxSize(MAX_BUNDLE)]


def newer_than_digest(digest: PolicyDigest, held: Mapping[bytes, int]) -> list[bytes]:
    """App ids whose policy we hold in a newer version than ``digest`` names (or it lacks)."""
    theirs = {h.app_id: h.version for h in digest.held}
    out = [app for app, v in sorted(held.items()) if v > theirs.get(app, 0)]
    return out[:MAX_ANSWERS_PER_DIGEST]


def announce_to(members: Sequence[int], me: int, origin: int | None = None) -> list[int]:
    """Who hears of a policy this node just accepted: every other member but its source."""
    return [i for i in members if i != me and i != origin]


def offer_outcome(accepted: bool, duplicate: bool, reason: str | None) -> tuple[bool, str | None]:
    """After offering a peer's bundle to this node's store: (pass it on?, blame or None).

    A new version is passed on; a duplicate is the normal echo of the flood and a
    stale version only shows the peer is behind, so neither is blamed; anything
    else refused (a bad signature, another key, a malformed bundle) is.
    """
    if accepted:
        return not duplicate, None
    if reason in (None, "stale_version"):
        return False, None
    return False, f"policy gossip: {reason}"


__all__ = [
    "MAX_ANSWERS_PER_DIGEST",
    "PolicyAnnounce",
    "PolicyDigest",
    "PolicyVersion",
    "announce_to",
    "newer_than_digest",
    "offer_outcome",
]
