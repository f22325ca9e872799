"""A node's app policies over the network: offers, gossip, and the state of a requested app.

The policy role of ``NodeService``: bundles pushed over HTTP, the
``kms.policy.gossip`` messages members exchange (announces, digests, queries,
unknowns), the operator's reload and fork resolution, and, for the release role,
the state of a requested app (:data:`kms.node.release.AppState`): frozen,
admitted with its current policy, or not admitted with a candidate bundle whose
admission first asks the committee. It reacts to typed outcomes
(``OfferOutcome`` and its ``PolicyFailure``), never to HTTP status codes or
reason strings; ``kms.api`` chooses the status codes.

Ports: the node's policies (``kms.node.policies.NodePolicies``), the node's current
epoch state, the clock, the metrics, a send function for outbound gossip and
a reject function for blamed peers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from kms.node.appcert import CertNeeds
from kms.node.limits import POLICY_BURST
from kms.node.metrics import NodeMetrics
from kms.node.policies import NodePolicies, PoliciesUnavailable, PolicyOfferResult
from kms.node.release import (
    Admitted,
    AppFrozen,
    AppNotMeasured,
    AppState,
    AwaitingCommittee,
    BundleUnusable,
    Candidate,
    Needs,
    NoCommittee,
)
from kms.policy import AppPolicy, PolicyBundle, PolicyFailure
from kms.policy.gossip import (
    MAX_DIGEST_ENTRIES,
    PolicyAnnounce,
    PolicyDigest,
    PolicyQuery,
    PolicyUnknown,
    announce_to,
    offer_outcome,
)
from mpc.broadcast import Outbound
from mpc.ids import ParticipantIndex, PeerId
from mpc.membership import ChainState

log = logging.getLogger("quorum_kms.node")

POLICY_SYNC_INTERVAL = 10.0
"""Seconds between policy digests to every member (``kms.policy.gossip``)."""

PolicyMessage = PolicyAnnounce | PolicyDigest | PolicyQuery | PolicyUnknown


class Clock(Protocol):
    def now(self) -> float: ...


class PolicySync:
    """The policy role: offers, gossip and app state, for one node."""

    QUERY_MEMORY = 4096
    QUERY_INTERVAL = 60.0
    CONSULT_RESEND = 0.5
    """Seconds (monotonic) after which the query goes again to members that did not answer."""
    CONSULT_TTL = 60.0

    GOSSIP_BUDGET: ClassVar[dict[str, tuple[float, float]]] = {
        "digest": (8.0, 0.5),
        "query": (64.0, 8.0),
        "ask": (32.0, 4.0),
        "ask-push": (32.0, 4.0),
        "consult": (64.0, 16.0),
        "digest-bytes": (float(POLICY_BURST), POLICY_BURST / POLICY_SYNC_INTERVAL),
    }
    """Per member and kind: (burst, refill per second) of policy digests answered and of
    policy queries answered with a bundle; and, under this node's own index, of queries
    this node sends about apps it has not admitted: those a CVM's key request asked for
    (``ask``) and those anyone pushed (``ask-push``, its own budget, so that a flood of
    anonymous pushes cannot starve the queries quoted requests need), and the rounds of
    queries sent before a key request admits an app (``consult``). ``digest-bytes`` is per
    member in bytes: the bundles sent in answer to its digests (one full page of 32 bundles of
    64 KiB per ``POLICY_SYNC_INTERVAL``, the pace of an honest member's digests). Excess is
    dropped and counted."""

    def __init__(
        self,
        index: ParticipantIndex,
        committee: Callable[[], ChainState | None],
        clock: Clock,
        metrics: NodeMetrics,
        send: Callable[[Outbound], None],
        reject: Callable[[str, str], None],
    ) -> None:
        self.index = index
        self._committee = committee
        self._clock = clock
        self._metrics = metrics
        self._send = send
        self._reject = reject
        self.policies: NodePolicies | None = None
        """The node's app policies, when it serves keys."""
        self.budget = dict(self.GOSSIP_BUDGET)
        self._digest_cursor = b""
        self._queried: dict[bytes, float] = {}
        self._gossip_budget: dict[tuple[int, str], tuple[float, float]] = {}
        self._answered: dict[tuple[int, bytes], float] = {}
        self._consults: dict[bytes, list[Any]] = {}  # app -> [started, last sent, answered]

    def _members(self) -> list[int] | None:
        st = self._committee()
        return None if st is None else [int(i) for i in st.committee.indices]

    # --- offers over HTTP ---------------------------------------------------------------------

    def offer(self, raw: bytes) -> PolicyOfferResult:
        """A bundle pushed by anyone (``POST /v1/policies``)."""
        if self.policies is None:
            return PoliciesUnavailable("this node does not release keys")
        out = self.policies.offer(raw, int(self._clock.now()))
        if isinstance(out, PoliciesUnavailable):
            self._metrics.rejected_input("policy push: not-serving")
            return out
        if not out.accepted and not out.duplicate:
            reason = out.reason.value if out.reason is not None else "refused"
            self._metrics.rejected_input("policy push: " + reason)
        if out.accepted and not out.duplicate:
            log.info("policy accepted", extra={"fields": {"app": _hex(out.app_id)}})
            self.announce(raw)  # the committee passes it on (kms.policy.gossip)
        elif out.cached and out.app_id is not None:
            self.query_committee(out.app_id, "ask-push")
        return out

    # --- gossip -------------------------------------------------------------------------------

    def query_committee(self, app_id: bytes, budget: str = "ask") -> None:
        """Ask the other members for an app this node does not know (at most once a minute)."""
        now = self._clock.now()
        if now - self._queried.get(app_id, -math.inf) < self.QUERY_INTERVAL:
            return
        # Pushes of ever new app ids cost the committee nothing beyond this budget: without
        # it, every anonymous push of a fresh app would send n - 1 messages.
        if not self.take_budget(self.index, budget):
            return
        self._queried[app_id] = now
        while len(self._queried) > self.QUERY_MEMORY:
            self._queried.pop(next(iter(self._queried)))
        members = self._members()
        if members is None:
            return
        for to in announce_to(members, int(self.index)):
            self._send(Outbound(ParticipantIndex(to), PolicyQuery(app_id)))

    def announce(self, bundle: bytes, origin: ParticipantIndex | None = None) -> None:
        members = self._members()
        if members is None:
            return
        msg = PolicyAnnounce(bundle)
        for to in announce_to(members, int(self.index), None if origin is None else int(origin)):
            self._send(Outbound(ParticipantIndex(to), msg))

    def send_digest(self) -> None:
        """The next page of this node's apps, to every member (pages wrap around)."""
        members = self._members()
        if members is None or self.policies is None:
            return
        start = self._digest_cursor
        entries, nxt = self.policies.page(start, MAX_DIGEST_ENTRIES, int(self._clock.now()))
        digest = PolicyDigest.page(entries, start, nxt)
        self._digest_cursor = nxt
        for to in announce_to(members, int(self.index)):
            self._send(Outbound(ParticipantIndex(to), digest))

    def on_message(self, index: ParticipantIndex, peer: PeerId, message: PolicyMessage) -> None:
        """A gossip message from an authenticated member."""
        policies = self.policies
        if policies is None:
            return  # this node serves no keys and keeps no policies
        st = self._committee()
        if st is None or index not in st.committee.indices:
            # Only members of the current epoch vouch for apps or ask for them: a removed
            # or pending member is still a known peer, not a voucher.
            self._metrics.rejected_input("policy gossip: not a current member")
            return
        now = int(self._clock.now())
        if isinstance(message, PolicyDigest):
            if not self.take_budget(index, "digest"):
                return
            for app_id in policies.newer_than(message, now):
                bundle = policies.bundle_bytes(app_id)
                if bundle is not None:
                    # A digest of a few bytes draws up to 32 bundles: the bytes are metered too.
                    if not self.take_budget(index, "digest-bytes", len(bundle)):
                        return
                    self._send(Outbound(index, PolicyAnnounce(bundle)))
            return
        if isinstance(message, PolicyQuery):
            bundle = policies.bundle_bytes(bytes(message.app_id))
            if bundle is not None:
                if self.take_budget(index, "query"):
                    self._send(Outbound(index, PolicyAnnounce(bundle)))
            else:  # a few bytes, answered from a dictionary lookup: not budgeted
                self._send(Outbound(index, PolicyUnknown(bytes(message.app_id))))
            return
        if isinstance(message, PolicyUnknown):
            consult = self._consults.get(bytes(message.app_id))
            if consult is not None:
                consult[2].add(int(index))
            return
        members = frozenset(int(i) for i in st.committee.indices)
        out = policies.offer(message.bundle, now, voucher=int(index), members=members)
        if isinstance(out, PoliciesUnavailable):
            return
        relay, blame = offer_outcome(out.accepted or out.duplicate, out.duplicate, out.reason)
        if not (out.accepted or out.duplicate) and out.reason is None:
            blame = "policy gossip: refused"  # refused with no reason given
        if relay:
            self._metrics.policy_learned()
            log.info(
                "policy learned from a peer",
                extra={
                    "fields": {"from": int(index), "app": _hex(out.app_id), "version": out.version}
                },
            )
            self.announce(message.bundle, index)
        if blame is not None:
            self._reject(str(peer), blame)
        if (
            out.reason in (PolicyFailure.NOT_OWNER, PolicyFailure.STALE_VERSION)
            and out.app_id
            and not out.accepted
        ):
            # The peer holds an older policy, or one signed by a key our chain rotated
            # away: answer with ours, which carries the rotation (once a minute per peer and
            # app, so two nodes that refuse each other's bundles do not bounce them forever).
            app_id = out.app_id
            key = (int(index), app_id)
            if now - self._answered.get(key, -math.inf) < self.QUERY_INTERVAL:
                return
            self._answered[key] = now
            while len(self._answered) > self.QUERY_MEMORY:
                self._answered.pop(next(iter(self._answered)))
            ours = policies.bundle_bytes(app_id)
            if ours is not None:
                self._send(Outbound(index, PolicyAnnounce(ours)))

    def take_budget(self, index: ParticipantIndex, kind: str, cost: float = 1.0) -> bool:
        burst, rate = self.budget[kind]
        now = self._clock.now()
        tokens, last = self._gossip_budget.get((int(index), kind), (burst, now))
        tokens = min(burst, tokens + max(0.0, now - last) * rate)
        if tokens < cost:
            self._gossip_budget[(int(index), kind)] = (tokens, now)
            self._metrics.rejected_input(f"policy gossip: {kind} rate limited")
            return False
        self._gossip_budget[(int(index), kind)] = (tokens - cost, now)
        return True

    # --- the operator and readers -------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Re-read the operator's policies directory (admin channel ``reload-policies``)."""
        if self.policies is None:
            return {"admitted": 0, "updated": 0, "refused": 0, "serving": False}
        now = int(self._clock.now())
        if self.policies.ready(now) is None:
            return {"admitted": 0, "updated": 0, "refused": 0, "serving": False}
        return {**self.policies.reload(now), "serving": True}

    def resolve_fork(self, app_id: bytes, bundle: bytes) -> dict[str, Any]:
        """Lift a frozen app's freeze with its owner's bundle (admin channel ``resolve-fork``)."""
        if self.policies is None:
            return {"resolved": False, "reason": "not-serving"}
        return dict(self.policies.resolve_fork(app_id, bundle, int(self._clock.now())))

    def info(self, app_id: bytes) -> dict[str, Any] | None:
        if self.policies is None:
            return None
        info = self.policies.describe(app_id, int(self._clock.now()))
        return dict(info) if info is not None else None

    # --- the state of a requested app, for the release role -----------------------------------

    def app_state(self, needs: Needs | CertNeeds, now: int) -> tuple[AppState, PolicyBundle | None]:
        """What this node holds of the requested app, as a value, and the candidate bundle
        (if the request may admit its app). Consulting the committee sends queries.
        A key request and an app-key certificate request are judged alike."""
        policies = self.policies
        if policies is None:
            return Admitted(None), None
        app_id = needs.app_id
        if policies.is_frozen(app_id, now):
            return AppFrozen(), None
        bundle, why = policies.candidate(needs.request, now)
        if why:
            return BundleUnusable(why), None
        if bundle is None:
            return Admitted(self.current(app_id, now)), None
        # One boot admits at most one app: before the committee is asked, the request's
        # event log must replay to the quote's RTMR3 with this app's boot-prefix app-id
        # (the full policy check repeats this after the quote is verified).
        if not needs.measures_app():
            return AppNotMeasured(), None
        state = self._consult_committee(app_id, bundle)
        return state, bundle if isinstance(state, Candidate) else None

    def _consult_committee(self, app_id: bytes, bundle: PolicyBundle) -> AppState:
        """Before a key request admits an app this node has not admitted: the committee is
        asked (``kms/policy-query``) and the request refused ``retry-later`` until ``t``
        other members answered (all of them if fewer), so that at least one answer comes
        from an honest member: this node's own "not admitted" says nothing of what the
        others hold. Members holding the app answer with its bundle (``t`` of those admit it
        here, with the union of their chains, and the request is then checked against it);
        the others answer ``kms/policy-unknown``. A bundle whose chain disagrees with one
        a member sent is refused."""
        policies = self.policies
        st = self._committee()
        if st is None or policies is None:
            return NoCommittee()
        others = [int(i) for i in st.committee.indices if int(i) != int(self.index)]
        need = min(int(st.threshold), len(others))
        mono = time.monotonic()
        consult = self._consults.get(app_id)
        if consult is None or mono - consult[0] > self.CONSULT_TTL:
            consult = self._consults[app_id] = [mono, -math.inf, set()]
            while len(self._consults) > self.QUERY_MEMORY:
                self._consults.pop(next(iter(self._consults)))
        _, sent, unknown = consult
        vouched = policies.vouched(app_id, int(self._clock.now()))
        answered = (unknown | set(vouched)) & set(others)
        if len(answered) < need:
            if mono - sent >= self.CONSULT_RESEND and self.take_budget(self.index, "consult"):
                consult[1] = mono
                for to in others:
                    if to not in answered:
                        self._send(Outbound(ParticipantIndex(to), PolicyQuery(app_id)))
            return AwaitingCommittee()
        why = policies.agrees(bundle, list(vouched.values()))
        if why:
            return BundleUnusable(why)
        # A member holding a later version of the app means the request's bundle was
        # replaced (perhaps to revoke the very image asking): it never admits the app.
        version = bundle.signed.policy.version
        later = max((b.signed.policy.version for i, b in vouched.items() if i in others), default=0)
        if later > version:
            return BundleUnusable(
                f"stale_version: a member holds version {later} of the app, the request"
                f" carries version {version}"
            )
        return Candidate(bundle.signed.policy)

    def current(self, app_id: bytes, now: int) -> AppPolicy | None:
        """The app's current policy here (``None``: unknown, expired or frozen)."""
        return None if self.policies is None else self.policies(app_id, now)

    def ask_about(self, app_id: bytes) -> None:
        """A key request named an app with no policy here: perhaps a member knows it."""
        if self.policies is not None:
            self.query_committee(app_id)

    def admit_released(self, bundle: PolicyBundle, now: int) -> None:
        """After a release its policy allowed, the candidate bundle's app is admitted here;
        the other members hear of it: ``t`` such announcements admit it at a member that
        has not (its own consultation may have ended before they released)."""
        if self.policies is None:
            return
        admitted = self.policies.admit_released(bundle, now)
        if admitted is not None and admitted.accepted:
            self.announce(bytes(bundle.encode()))


def _hex(app_id: bytes | None) -> str:
    return app_id.hex() if app_id is not None else ""
