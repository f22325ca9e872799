"""Governance of a member: its standing intent, the approvals it gives, and the refresh rules.

``Governance`` holds what a member wants in the current epoch: its own
proposals and approvals (the *intent*, persisted and re-sent in every window
of the epoch), approvals given by id for proposals not seen yet (*deferred*,
checked once the proposal shows up in a delivered ballot), the approvals
refused after checking, what the last window showed (status only), and the
*lock* (the one outcome it signed in this epoch), and the proposals other
members sent it directly (``ProposalNotice``: *noticed*, so an approval given
by id is checked before the next window rather than after it). It is cleared at every
chain head change. It makes no decision: the decision windows do
(``mpc.membership.window``).

``RefreshRules`` are the timing rules of the decision windows and the
reshares they start, computed from the configuration and the chain alone
(so every member computes the same): when an epoch became ready, the reshare
start a window's outcome names, the first reshare attempt after a
certificate is held, and the committee-wide cap on prompt refreshes.

Sans-I/O like the core: the node core persists what ``Governance`` returns
(``intent_record``) and hands it the records back on restore.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol

from mpc.cert import EpochCertificate, RunKind
from mpc.dkg import Schedule
from mpc.ids import ParticipantIndex
from mpc.membership import (
    ChainState,
    LockReport,
    MembershipCertificate,
    MembershipIntent,
    Proposal,
    Refresh,
    RemoveMember,
    WindowSchedule,
)

Link = EpochCertificate | MembershipCertificate

PROMPT_REFRESH_WINDOWS = 10
"""With ``refresh_interval = 0``, the committee approves at most one prompt refresh per
this many window periods (with a schedule, at most one per ``refresh_interval``)."""
PROMPT_NONCE = b"prompt-refresh\x00\x00"
"""The nonce of a member's prompt refresh proposal: its id is known to every member."""
INTENT_RUN = b"membership-intent"
"""Run label (with the head hash) of a member's persisted intent: proposals and approvals."""
LOCK_RUN = b"membership-lock"
"""Run label (with the head hash) of the one outcome a member locked in an epoch."""
NOTICED_PER_MEMBER = 16
NOTICED_BYTES_PER_MEMBER = 1 << 20
"""Proposals kept per member from its direct notices (its newest ones, at most this many
and this many bytes of encoded proposals): a member can only crowd out its own."""


class Schedules(Protocol):
    """The part of ``NodeConfig`` the refresh rules read."""

    @property
    def delta(self) -> float: ...
    @property
    def threshold(self) -> int: ...
    @property
    def window_period(self) -> float: ...
    @property
    def refresh_interval(self) -> float: ...

    def genesis_schedule(self, attempt: int) -> Schedule: ...
    def reshare_schedule(self, start: float, n: int, t: int, attempt: int) -> Schedule: ...
    def window_schedule(self, window: int, reshare_delay: float) -> WindowSchedule: ...


def prompt_proposal(st: ChainState, member: ParticipantIndex) -> Proposal:
    """The prompt refresh ``member`` proposes when it lacks a share of ``st``'s epoch."""
    return Proposal.of(st.epoch, st.head_hash, int(member), PROMPT_NONCE, Refresh())


def membership_before(chain: Sequence[Link], epoch: int) -> MembershipCertificate | None:
    """The membership certificate that led to ``epoch``, if the chain holds it."""
    for link in reversed(chain):
        if isinstance(link, MembershipCertificate) and link.outcome.epoch == epoch - 1:
            return link
    return None


class RefreshRules:
    """Window and reshare timing, and the prompt-refresh cap, from config and chain."""

    def __init__(self, config: Schedules) -> None:
        self.config = config

    def ready_time(self, state: ChainState, chain: Sequence[Link], now: float) -> float:
        """When ``state``'s epoch became ready: the end of the run that certified it."""
        tr = state.certificate.transcript
        if tr.kind == RunKind.DKG:
            return self.config.genesis_schedule(tr.attempt).end
        prev = membership_before(chain, state.epoch)
        if prev is None:
            return now
        return self.config.reshare_schedule(
            prev.outcome.reshare_start, len(tr.committee), tr.threshold, tr.attempt
        ).end

    def reshare_start_of(self, window: int, threshold: int) -> int:
        """The reshare start an outcome decided in ``window`` names (the first attempt slot)."""
        f = threshold - 1
        sched = self.config.window_schedule(window, reshare_delay=2 * self.config.delta)
        return int(sched.sign_end(f) + sched.reshare_delay)

    def prompt_refresh_allowed(
        self,
        st: ChainState,
        chain: Sequence[Link],
        epoch_state: Callable[[int], ChainState | None],
        epoch_ready_at: float,
        now: float,
    ) -> bool:
        """Whether a member approves prompt refreshes in the current window.

        Committee-wide cap, from the chain alone: not before two windows into the epoch,
        and at most one refresh epoch per ``refresh_interval`` (with 0: per
        ``PROMPT_REFRESH_WINDOWS`` window periods), counted from when the last epoch
        made by a refresh became ready. An epoch made by a removal lifts the cap once:
        members that missed the removal's reshare get their shares back promptly.
        """
        if now - epoch_ready_at < 2 * self.config.window_period:
            return False
        prev = membership_before(chain, st.epoch)
        if prev is not None and isinstance(prev.outcome.proposal.change, RemoveMember):
            return True
        gap = self.config.refresh_interval or PROMPT_REFRESH_WINDOWS * self.config.window_period
        last = self.last_refresh_ready(chain, epoch_state)
        return last is None or now - last >= gap

    def last_refresh_ready(
        self, chain: Sequence[Link], epoch_state: Callable[[int], ChainState | None]
    ) -> float | None:
        """When the newest epoch made by a refresh became ready (from the chain)."""
        for link in reversed(chain):
            if isinstance(link, MembershipCertificate) and isinstance(
                link.outcome.proposal.change, Refresh
            ):
                e = link.outcome.epoch + 1
                es = epoch_state(e)
                if es is None:
                    return None
                return self.ready_time_of(link, es)
        return None

    def ready_time_of(self, m: MembershipCertificate, es: ChainState) -> float:
        tr = es.certificate.transcript
        return self.config.reshare_schedule(
            m.outcome.reshare_start, len(tr.committee), tr.threshold, tr.attempt
        ).end

    def first_reshare_attempt(
        self, outcome_window: int, reshare_start: int, n: int, t: int, threshold: int, now: float
    ) -> int:
        """The first attempt slot after this node holds the certificate, from the certificate
        and the window grid alone (``threshold``: the current epoch's).

        The time is rounded to the window in which the certificate was formed: the first
        window ``w >= outcome_window`` whose signing deadline plus Δ is not past. Members
        that certify in window ``w`` (by its signing deadline) and members that learn the
        certificate from them (within Δ) compute the same ``w``, hence the same slot: the
        first attempt of the reshare grid anchored at ``reshare_start`` that starts at or
        after ``w``'s signing deadline.
        """
        f = threshold - 1
        # Both grids are regular: jump close to the answer, then step (constant time).
        first = self.config.window_schedule(outcome_window, 0.0)
        offset = first.sign_end(f) - first.start
        period = self.config.window_period
        w = outcome_window
        if now != float("inf"):
            behind = now - self.config.delta - offset - first.start
            w += max(0, int(behind // period) - 1)
        while True:
            sign_end = self.config.window_schedule(w, 0.0).sign_end(f)
            if sign_end + self.config.delta >= now:
                break
            w += 1
        s0 = self.config.reshare_schedule(reshare_start, n, t, 0)
        s1 = s0.next_attempt()
        step = s1.start - s0.start
        attempt = 0
        if sign_end > s1.start and step > 0:
            # Attempts after the first start on a grid of ``step`` seconds from ``s1``.
            attempt = 1 + max(0, int((sign_end - s1.start) // step) - 1)
        while self.attempt_start(reshare_start, n, t, attempt) < sign_end:
            attempt += 1
        return attempt

    def attempt_start(self, reshare_start: int, n: int, t: int, attempt: int) -> float:
        """Start of reshare ``attempt`` (attempts after the first follow every ``step``)."""
        s0 = self.config.reshare_schedule(reshare_start, n, t, 0)
        if attempt == 0:
            return s0.start
        s1 = s0.next_attempt()
        return s1.start + (attempt - 1) * (s1.next_attempt().start - s1.start)


class Governance:
    """One member's intent, approvals and lock in the current epoch."""

    def __init__(self) -> None:
        self.proposals: dict[bytes, Proposal] = {}
        """This member's own proposals this epoch, by id."""
        self.approvals: set[bytes] = set()
        """Proposal ids this member approves (its own proposals included)."""
        self.deferred: set[bytes] = set()
        """Approved by id, proposal not seen yet (checked and sent once it is)."""
        self.refused: dict[bytes, tuple[str, str]] = {}
        """Approvals refused after checking the proposal: id → (reason, detail)."""
        self.seen: dict[bytes, Proposal] = {}
        """Proposals seen in delivered ballots this epoch: for checking deferred approvals
        and for status only; decisions never use them."""
        self.noticed: dict[int, dict[bytes, tuple[Proposal, int]]] = {}
        """Proposals each member sent directly (``ProposalNotice``) this epoch, by id, with
        their encoded size, oldest first: for checking approvals given by id before the
        window; decisions never use them."""
        self.counts: dict[bytes, int] = {}
        """Approvals each proposal had in the last window (status only)."""
        self.lock: LockReport | None = None
        """The outcome this member signed in this epoch, if any."""
        self.intent_seq = 0

    def restore(
        self, saved: Mapping[str, bytes], lock_raw: bytes | None, head: bytes, me: int
    ) -> None:
        """The intent records and the lock persisted under the chain head ``head``."""
        keys = sorted(k for k in saved if k.startswith("intent-"))
        if keys:
            intent = MembershipIntent.decode(saved[keys[-1]])
            self.intent_seq = int(keys[-1].removeprefix("intent-")) + 1
            self.proposals = {p.id(): p for p in intent.proposals}
            self.approvals = set(intent.approvals)
            self.deferred = set(intent.deferred)
        if lock_raw is not None:
            lock = LockReport.decode(lock_raw)
            if lock.outcome.previous_certificate_hash == head and lock.signer == me:
                self.lock = lock

    def intent_record(self) -> tuple[str, bytes]:
        """The next intent record to persist: (key, encoded ``MembershipIntent``)."""
        intent = MembershipIntent(
            tuple(sorted(self.proposals.values(), key=lambda p: p.id())),
            tuple(sorted(self.approvals)),
            tuple(sorted(self.deferred)),
        )
        key = f"intent-{self.intent_seq:06d}"
        self.intent_seq += 1
        return key, intent.encode()

    def clear(self) -> None:
        """A new chain head: nothing of the last epoch's intent carries over."""
        self.proposals.clear()
        self.approvals.clear()
        self.deferred.clear()
        self.refused.clear()
        self.seen.clear()
        self.noticed.clear()
        self.counts.clear()
        self.lock = None
        self.intent_seq = 0

    def known(self, proposal_id: bytes) -> Proposal | None:
        return (
            self.seen.get(proposal_id)
            or self.proposals.get(proposal_id)
            or self.noticed_proposal(proposal_id)
        )

    def noticed_proposal(self, proposal_id: bytes) -> Proposal | None:
        for kept in self.noticed.values():
            entry = kept.get(proposal_id)
            if entry is not None:
                return entry[0]
        return None

    def note_notice(self, member: int, proposal: Proposal) -> bool:
        """Keep a proposal ``member`` sent directly (its own, for the current head: the
        caller checks). Returns whether it is new. The member's oldest are dropped past
        ``NOTICED_PER_MEMBER`` proposals or ``NOTICED_BYTES_PER_MEMBER`` bytes."""
        pid = proposal.id()
        kept = self.noticed.setdefault(member, {})
        if pid in kept:
            return False
        size = len(proposal.encode())
        if size > NOTICED_BYTES_PER_MEMBER:
            return False
        kept[pid] = (proposal, size)
        while (
            len(kept) > NOTICED_PER_MEMBER
            or sum(sz for _, sz in kept.values()) > NOTICED_BYTES_PER_MEMBER
        ):
            del kept[next(iter(kept))]
        return pid in kept

    def note_window(
        self, proposals: Mapping[bytes, Proposal], approvals: Mapping[bytes, Collection[object]]
    ) -> None:
        """What a finished window of this epoch showed (its tally)."""
        for pid, p in proposals.items():
            self.seen.setdefault(pid, p)
        self.counts = {pid: len(v) for pid, v in approvals.items()}

    def deferred_seen(self) -> Iterable[tuple[bytes, Proposal]]:
        """Deferred approvals whose proposal has shown up, in a window's delivered ballots
        or sent directly by its proposer (taken off the deferred set)."""
        for pid in sorted(self.deferred):
            p = self.seen.get(pid) or self.noticed_proposal(pid)
            if p is None:
                continue
            self.deferred.discard(pid)
            yield pid, p

    def pending(self) -> tuple[tuple[str, str, int], ...]:
        """Status: (id hex, kind, approvals) of the proposals seen and this member's own."""
        out = []
        for pid, p in sorted(self.seen.items()):
            out.append((pid.hex(), p.kind, self.counts.get(pid, 0)))
        for pid, p in sorted(self.proposals.items()):
            if pid not in self.seen:
                out.append((pid.hex(), p.kind, 0))
        return tuple(out)
