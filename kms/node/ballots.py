"""The decision windows' ballots: when a member opens a window, and with what.

``Ballots`` holds the decision window going on (at most one ``DecisionWindow``)
and the last window index opened. Each step it advances the window, keeps what
a finished one showed (``Governance.note_window``), checks approvals that were
waiting for their proposal, and opens the next window with this member's
proposals and approvals: its own intent, the scheduled refresh, a prompt
refresh while it lacks a share (others' within the committee-wide cap), and the
outcome it locked. It also sends a proposal of this member's to every other
member as soon as it is made (``ProposalNotice``), and takes theirs, so that an
approval given by id is checked and goes out in the very next window's ballot
instead of the one after. It reads the node's view through ``BallotsPort``, which
``kms.node.core.NodeCore`` provides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kms.node.governance import INTENT_RUN, LOCK_RUN, Governance, RefreshRules, prompt_proposal
from kms.node.liveness import Liveness
from kms.node.model import (
    ApprovalRefused,
    ChangeRefused,
    Link,
    NodeEvent,
    NodeView,
    StoreRecord,
)
from kms.node.sharing_runs import SharingRuns
from mpc.broadcast import Outbound
from mpc.cert import ZERO_HASH
from mpc.dkg import (
    SharingSession,
)
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError, RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.membership import (
    ChainState,
    DecisionWindow,
    Proposal,
    ProposalNotice,
    Refresh,
    WindowPhase,
)
from mpc.membership.messages import (
    Change,
)
from mpc.secret import SecretShare
from mpc.sig import SigningKey


class _Collects(Protocol):
    def collect(self, session: DecisionWindow) -> None: ...


class BallotsPort(NodeView, Protocol):
    """What ``Ballots`` reads of the node (``NodeCore``)."""

    @property
    def share(self) -> SecretShare | None: ...
    @property
    def chain(self) -> list[Link]: ...
    @property
    def _now(self) -> float: ...
    @property
    def _key(self) -> SigningKey: ...
    @property
    def _epoch_ready_at(self) -> float | None: ...
    @property
    def governance(self) -> Governance: ...
    @property
    def rules(self) -> RefreshRules: ...
    @property
    def liveness(self) -> Liveness: ...
    @property
    def sharing(self) -> SharingRuns: ...
    @property
    def adoption(self) -> _Collects: ...
    @property
    def _events(self) -> list[NodeEvent]: ...
    @property
    def _outbox(self) -> list[Outbound]: ...
    def _records(self, run: bytes) -> Mapping[str, bytes]: ...
    def epoch_state(self, epoch: int) -> ChainState | None: ...
    def _session_broke(self, session: SharingSession | DecisionWindow, exc: Exception) -> None: ...
    def _check_change(self, change: Change) -> None: ...
    def _replay_early(self) -> None: ...


class Ballots:
    """The decision windows this member takes part in, one at a time."""

    def __init__(self, port: BallotsPort) -> None:
        self._c = port
        self.window: DecisionWindow | None = None
        """The decision window going on here, if any."""
        self.index = -1
        """The index of the last window opened here."""

    def step(self) -> None:
        """Advance the window going on; open the next one when this member may."""
        st = self._c.state
        if st is None or self._c._epoch_ready_at is None:
            return
        if self.window is not None:
            try:
                self.window.advance_time(self._c._now)
            except (LocalProtocolError, InvalidSignature, InvalidEncoding) as exc:
                self._c._session_broke(self.window, exc)
                return
            self._c.adoption.collect(self.window)
            if self.window.phase in (
                WindowPhase.DECIDED,
                WindowPhase.NO_DECISION,
                WindowPhase.ABSTAINED,
                WindowPhase.FAILED,
            ):
                # What the window showed is kept for status and for checking approvals
                # that were waiting for their proposal; it never decides anything later.
                tally = self.window.tally
                if (
                    self._c.state is not None
                    and self._c.state.head_hash == self.window.state.head_hash
                ):
                    self._c.governance.note_window(tally.proposals, tally.approvals)
                    self.approve_deferred()
                self.window = None
        if self.window is not None or st.pending is not None or self._c.sharing.run is not None:
            return
        if self._c.me not in st.committee.indices:
            return
        w = int((self._c._now - self._c.config.genesis_start) // self._c.config.window_period)
        if w <= self.index:
            return
        sched = self._c.config.window_schedule(w, reshare_delay=2 * self._c.config.delta)
        if sched.start < self._c._epoch_ready_at or self._c._now > sched.cutoff:
            return
        self.index = w
        self.approve_deferred()
        proposals = [
            p
            for p in self._c.governance.proposals.values()
            if p.epoch == st.epoch and p.certificate_hash == st.head_hash
        ]
        approvals = set(self._c.governance.approvals)
        # Automatic refresh: scheduled, or prompt when this member lacks its share.
        members = st.committee.indices
        due = (
            self._c.config.refresh_interval > 0
            and self._c._now - self._c._epoch_ready_at >= self._c.config.refresh_interval
        )
        scheduled = Proposal.of(
            st.epoch, st.head_hash, int(members[w % len(members)]), w.to_bytes(16, "big"), Refresh()
        )
        if due:
            approvals.add(scheduled.id())
            if members[w % len(members)] == self._c.me:
                proposals.append(scheduled)
        if self._c.share is None:
            prompt = prompt_proposal(st, self._c.me)
            proposals.append(prompt)
            approvals.add(prompt.id())
        # Another member's prompt refresh is approved only within the committee-wide cap
        # (a refresh proposed by anyone else is never approved automatically): no member
        # can keep the committee resharing.
        if self.prompt_refresh_allowed():
            for i in members:
                approvals.add(prompt_proposal(st, i).id())
        if self._c.governance.lock is not None:
            approvals.add(self._c.governance.lock.outcome.proposal.id())
        records = self._c._records(self.run_id(w))
        self.window = DecisionWindow(
            st,
            w,
            sched,
            self._c.me,
            self._c._key,
            self._c.share,
            proposals=sorted(proposals, key=lambda p: p.id())[:16],
            approvals=sorted(approvals)[:256],
            persisted=records,
            lock=self._c.governance.lock,
            live_since=self._c.liveness.window_since,
            reshare_start_of=self.reshare_start_of,
        )
        self.window.advance_time(self._c._now)
        self._c._replay_early()

    def reshare_start_of(self, window: int) -> int:
        """The reshare start an outcome decided in ``window`` names (the first attempt slot)."""
        st = self._c.state
        return self._c.rules.reshare_start_of(
            window, st.threshold if st is not None else self._c.config.threshold
        )

    def prompt_refresh_allowed(self) -> bool:
        """Whether this member approves prompt refreshes in the current window
        (``RefreshRules.prompt_refresh_allowed``: the committee-wide cap)."""
        st = self._c.state
        if st is None or self._c._epoch_ready_at is None:
            return False
        return self._c.rules.prompt_refresh_allowed(
            st, self._c.chain, self._c.epoch_state, self._c._epoch_ready_at, self._c._now
        )

    def run_id(self, w: int) -> bytes:
        """The run label of window ``w``'s records (with the head hash)."""
        st = self._c.state
        head = st.head_hash if st else ZERO_HASH
        return b"window" + head + w.to_bytes(8, "big")

    def announce(self, proposal: Proposal) -> None:
        """Send this member's new proposal to every other member of the committee."""
        st = self._c.state
        if st is None:
            return
        for i in st.committee.indices:
            if i != self._c.me:
                self._c._outbox.append(Outbound(i, ProposalNotice(proposal)))

    def take_notice(self, peer: ParticipantIndex, notice: ProposalNotice) -> None:
        """A member's proposal sent directly. Kept (its own, for this chain head) so that an
        approval of its id is checked now: a deferred one goes out in the next window's
        ballot. Nothing is tallied from it; only delivered ballots count."""
        p = notice.proposal
        if p.proposer != int(peer):
            raise RemoteProtocolError("proposal notice for another member's proposal", [peer])
        st = self._c.state
        if st is None or p.epoch != st.epoch or p.certificate_hash != st.head_hash:
            return  # another head (a race with an epoch switch): of no use here
        if st.pending is not None or self._c.governance.lock is not None:
            return
        if self._c.governance.note_notice(int(peer), p) and p.id() in self._c.governance.deferred:
            self.approve_deferred()

    def approve_deferred(self) -> None:
        """Check the approvals kept by id once their proposal shows up: in delivered
        ballots, or sent directly by its proposer."""
        changed = False
        for pid, p in self._c.governance.deferred_seen():
            changed = True
            try:
                self._c._check_change(p.change)
            except ChangeRefused as exc:
                self._c.governance.refused[pid] = (exc.reason, exc.detail)
                self._c._events.append(ApprovalRefused(pid, exc.reason, exc.detail))
                continue
            self._c.governance.approvals.add(pid)
        if changed:
            self.persist_intent()

    def restore_intent(self) -> None:
        """The standing intent and the lock this member persisted in the current epoch."""
        st = self._c.state
        if st is None or st.pending is not None:
            return
        head = st.head_hash
        self._c.governance.restore(
            self._c._records(INTENT_RUN + head),
            self._c._records(LOCK_RUN + head).get("lock"),
            head,
            int(self._c.me),
        )

    def persist_intent(self) -> None:
        st = self._c.state
        if st is None:
            return
        key, data = self._c.governance.intent_record()
        self._c._events.append(StoreRecord(INTENT_RUN + st.head_hash, key, data, False))
