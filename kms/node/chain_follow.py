"""The chain a node follows: genesis and a retained tail, with what each epoch proves.

``ChainFollower`` holds the links this node keeps (genesis, then a contiguous
recent tail of the last ``chain_retention`` epochs, passed in on each use), the verified
``ChainState`` of each retained epoch, and the bytes of the last certified
admission-policy change (kept apart: its link may be older than the epochs
kept). It answers what the chain proves (``epoch_state``, ``is_stale``,
``admission_policy``, the membership certificate before an epoch) and keeps
the chain bounded (``trim``).

Which links are adopted, and what adopting one does (an epoch switch, a new
committee, a reshare starting) is the node core's: it verifies links
(``mpc.membership.extend``, ``verify_recent``) and hands the result here.
"""

from __future__ import annotations

import hashlib

from mpc.cert import EpochCertificate
from mpc.membership import (
    ChainState,
    ChangeAdmissionPolicy,
    MembershipCertificate,
    link_position,
)

Link = EpochCertificate | MembershipCertificate


class ChainFollower:
    """Genesis plus the retained tail, and the verified state of each retained epoch."""

    def __init__(self, policy_bytes: bytes | None = None) -> None:
        self.links: list[Link] = []
        """Genesis, then a contiguous recent tail (the last ``retention`` epochs)."""
        self.states: dict[int, ChainState] = {}
        """The verified state of each retained epoch."""
        self.policy_bytes = policy_bytes
        """The bytes of the last certified admission-policy change seen."""

    def head_position(self) -> int:
        """Position of the last link in the full chain (-1 without a chain)."""
        return link_position(self.links[-1]) if self.links else -1

    def is_stale(self, epoch: int) -> bool:
        """``epoch`` is before the oldest retained one: evidence about it is refused."""
        if len(self.links) < 2:
            return False
        return 0 < epoch < link_position(self.links[1]) // 2

    def retained_tail(self, tail: list[Link], retention: int) -> list[Link]:
        """The links of the last ``retention`` epochs of ``tail`` (from an epoch link)."""
        if not tail:
            return []
        head = max(link_position(x) for x in tail) // 2
        first = head - retention + 1
        if first <= 0:
            return tail
        keep = [x for x in tail if link_position(x) >= 2 * first]
        return keep if keep and isinstance(keep[0], EpochCertificate) else tail[-1:]

    def replace(self, links: list[Link], states: list[ChainState]) -> None:
        """Hold ``links`` (verified: ``states`` are their epochs' states)."""
        for link in links:
            self.note_policy(link)
        self.links = list(links)
        self.states = {st.epoch: st for st in states}

    def append(self, link: Link, state: ChainState | None) -> None:
        """Adopt one more verified link (``state``: the epoch state it makes, if any)."""
        self.links.append(link)
        if isinstance(link, MembershipCertificate):
            self.note_policy(link)
        if state is not None:
            self.states[state.epoch] = state

    def trim(self, retention: int) -> int | None:
        """Keep genesis and the links of the last ``retention`` epochs; returns the position of
        the first link kept after genesis when links were dropped."""
        keep = self.retained_tail(self.links[1:], retention)
        if len(keep) == len(self.links) - 1:
            return None
        self.links = [self.links[0], *keep]
        oldest = link_position(keep[0]) // 2
        self.states = {e: st for e, st in self.states.items() if e >= oldest}
        return link_position(keep[0])

    def join(self, tail: list[Link]) -> list[Link]:
        """Our links up to the one ``tail`` follows, then ``tail``; else genesis and ``tail``."""
        first = tail[0]
        if not isinstance(first, EpochCertificate):  # pragma: no cover - checked by the caller
            return [self.links[0], *tail]
        before = first.transcript.previous_certificate_hash
        for i in range(len(self.links) - 1, 0, -1):
            link = self.links[i]
            if link_position(link) == link_position(first) - 1 and link.hash() == before:
                return [*self.links[: i + 1], *tail]
        return [self.links[0], *tail]

    def note_policy(self, link: Link) -> None:
        if isinstance(link, MembershipCertificate):
            change = link.outcome.proposal.change
            if isinstance(change, ChangeAdmissionPolicy):
                self.policy_bytes = change.policy

    def epoch_certificate(self, epoch: int) -> EpochCertificate | None:
        for link in self.links:
            if isinstance(link, EpochCertificate) and link.transcript.epoch == epoch:
                return link
        return None

    def admission_policy(self, st: ChainState, configured: bytes) -> bytes | None:
        """The bytes of the admission policy ``st``'s committee names (by hash), if known:
        from the certified change that set it, the configured (genesis) policy, or the last
        policy change seen."""
        want = st.committee.admission_policy_hash
        for link in reversed(self.links):
            if isinstance(link, MembershipCertificate):
                change = link.outcome.proposal.change
                if isinstance(change, ChangeAdmissionPolicy) and change.policy_hash() == want:
                    return change.policy
        if hashlib.sha256(configured).digest() == want:
            return configured
        if self.policy_bytes is not None and hashlib.sha256(self.policy_bytes).digest() == want:
            return self.policy_bytes
        return None
