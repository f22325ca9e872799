"""The node's sharing runs: starting and ending genesis and reshare attempts.

``SharingRuns`` holds the run going on here (at most one ``SharingSession``),
the attempt to start next, the runs whose records are not erased yet and the
erasures due, the shares of runs that finalized but failed locally, and which
epochs this process ran a run of. It builds each run's session from the
``session_factory`` the node was given (``kms.node.model.SessionFactory``) with
the run's persisted records, and decides which records a run no longer needs.
It reads the node's view (chain state, share, time, records) through
``SharingPort``, which ``kms.node.core.NodeCore`` provides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from kms.node.model import (
    NodeEvent,
    NodeView,
    RunFailed,
    SessionFactory,
    polynomial_records,
    run_key_records,
)
from kms.node.recovery import DEALS_RUN_LABEL, RECOVERY_SEED_DELTAS, ShareRecovery
from kms.node.retention import ShareHolders, ack_run
from kms.node.runs import SharingConfigs
from mpc import hpke
from mpc.cert import EpochCertificate, RunKind
from mpc.codec import MessageDecodeError
from mpc.dkg import (
    Phase,
    SharingConfig,
    SharingSession,
)
from mpc.dkg.messages import CertificatePartial
from mpc.dkg.session import RUN_KEY_RECORD
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError
from mpc.math import G2
from mpc.math.fields import scalar_from_bytes
from mpc.membership import (
    ChainState,
)
from mpc.secret import RNG, SecretScalar, SecretShare
from mpc.sig import SigningKey

MAX_RESHARE_RUNS = 16
"""Reshare configurations kept for judging evidence (the most recent runs)."""
MAX_RUN_RECORDS = 64
"""Runs this process started whose records are still to be erased (the oldest erased first)."""
MAX_KEPT_SHARES = 8
"""Shares of finalized runs that failed locally, kept in memory in case their
certificate arrives late (they are persisted as run records too)."""
HIGHER_ATTEMPTS_KEPT = 8
"""Attempts after the certified one of the head's epoch whose records a node keeps."""


class SharingPort(NodeView, Protocol):
    """What ``SharingRuns`` reads of the node (``NodeCore``)."""

    @property
    def share(self) -> SecretShare | None: ...
    @property
    def _now(self) -> float: ...
    @property
    def _key(self) -> SigningKey: ...
    @property
    def _dkg_key(self) -> hpke.PrivateKey: ...
    @property
    def _rng(self) -> RNG: ...
    @property
    def live_since(self) -> float | None: ...
    @property
    def recovery(self) -> ShareRecovery: ...
    @property
    def holders(self) -> ShareHolders: ...
    @property
    def _seeds(self) -> dict[bytes, bytes]: ...
    @property
    def configs(self) -> SharingConfigs: ...
    @property
    def _epoch_states(self) -> dict[int, ChainState]: ...
    @property
    def _events(self) -> list[NodeEvent]: ...
    def _records(self, run: bytes) -> Mapping[str, bytes]: ...
    def _replay_early(self) -> None: ...


class SharingRuns:
    """The sharing runs of one node: the one going on, and the records of the others."""

    def __init__(self, port: SharingPort, session_factory: SessionFactory) -> None:
        self._c = port
        self.session_factory = session_factory
        """Builds each run's sharing session (``kms.node.model.SessionFactory``)."""
        self.run: SharingSession | None = None
        """The run going on here (genesis or reshare), if any."""
        self.attempt = 0
        """The attempt to start next (of genesis, or of the pending change's reshare)."""
        self.runs: dict[bytes, int] = {}
        """Sharing runs started here whose records are not erased yet: run id → epoch."""
        self.erase: list[bytes] = []
        """Run records to erase (emitted as ``EraseRecords`` after the step's other events)."""
        self.kept: dict[bytes, tuple[int, SecretShare]] = {}
        """Shares of runs that finalized but failed locally: run id → (epoch, share)."""
        self.ran_epochs: set[int] = {0}
        """Epochs this process ran a sharing run of (or, from a restart, may have)."""
        self.reshare_runs: dict[bytes, SharingConfig] = {}
        """Configurations of the reshare attempts started here (for the change check)."""
        self.genesis_missed: bool | None = None
        self.first_tick: float | None = None
        """The first time this process saw (``missed_genesis``)."""

    def keep_runs(self) -> tuple[bytes, ...]:
        """Records still in use: acknowledgements the head's and retained shares' trackers
        count, and this node's records of higher attempts of the head's epoch."""
        keep = {ack_run(t.certificate) for t in self._c.holders.trackers.values()}
        if self._c.state is not None:
            keep.add(ack_run(self._c.state.certificate))
            keep.update(self.higher_attempt_runs(self._c.state))
            keep.add(DEALS_RUN_LABEL + self._c.state.certificate.transcript.hash())
        keep.update(run_key_records(run) for run in self._c.recovery.kept_seeds)
        return tuple(sorted(keep))

    def higher_attempt_runs(self, st: ChainState) -> list[bytes]:
        """Run ids of the next attempts of the head's epoch. The highest certified attempt
        wins, so a higher attempt this node finalized (and may have signed) can still be
        certified: its share record must outlive the adoption of a lower one."""
        tr = st.certificate.transcript
        if tr.epoch not in self.ran_epochs:
            return []
        before = self._c._epoch_states.get(st.epoch - 1) if tr.kind == RunKind.RESHARE else None
        out: list[bytes] = []
        for attempt in range(tr.attempt + 1, tr.attempt + 1 + HIGHER_ATTEMPTS_KEPT):
            try:
                if tr.kind == RunKind.DKG:
                    cfg: SharingConfig | None = self.genesis_config(attempt)
                else:
                    cfg = self.reshare_config(before, attempt) if before is not None else None
            except LocalProtocolError:
                break
            if cfg is None:
                break
            out.append(cfg.run_id())
        return out

    def start_genesis(self, attempt: int) -> None:
        # Attempts whose deadlines have all passed are over for everyone: skip them.
        while self._c._now >= self._c.config.genesis_schedule(attempt).end:
            attempt += 1
        if self.missed_genesis(attempt):
            return
        cfg = self.genesis_config(attempt)
        self.attempt = attempt
        self.ran_epochs.add(0)
        self.run = self.sharing_session(cfg, None)
        self.run.advance_time(self._c._now)
        self._c._replay_early()

    def missed_genesis(self, attempt: int) -> bool:
        """A node that first ran after genesis attempt 0 was over and holds no record of an
        earlier attempt (a data directory lost, or a node started late) takes part in no
        later genesis attempt: the others may have certified one it did not see, and a
        new attempt with it could certify a second genesis under another MPK. It waits
        for the chain with ``t`` endorsements (or a pinned ``genesis_mpk``) instead."""
        if self.genesis_missed is not None:
            return self.genesis_missed
        first = self.first_tick if self.first_tick is not None else self._c._now
        missed = attempt > 0 and first >= self._c.config.genesis_schedule(0).end
        if missed:
            for earlier in range(max(0, attempt - HIGHER_ATTEMPTS_KEPT), attempt):
                if self._c._records(self.genesis_config(earlier).run_id()):
                    missed = False
                    break
        self.genesis_missed = missed
        if missed:
            self._c._events.append(
                RunFailed(
                    RunKind.DKG,
                    0,
                    attempt,
                    "genesis was over when this node started and it holds no record of it:"
                    " waiting for the chain with t endorsements or a pinned genesis_mpk",
                )
            )
        return missed

    def persisted_share(
        self, cert: EpochCertificate, before: ChainState | None
    ) -> SecretShare | None:
        """This node's share of the run ``cert`` certifies, if it finalized that run: kept in
        memory, or persisted as the run's ``share`` record (also across a restart). Used only
        if it matches the certificate's public share for this index and the persisted
        certificate partial, if any, names the certified transcript."""
        tr = cert.transcript
        if tr.epoch not in self.ran_epochs and not self.kept:
            return None  # catching up: this node ran no run of that epoch, nothing is stored
        if tr.kind == RunKind.DKG:
            cfg: SharingConfig | None = self.genesis_config(tr.attempt)
        else:
            cfg = self.reshare_config(before, tr.attempt) if before is not None else None
        if cfg is None or self._c.me not in cfg.recipient_indices:
            return None
        run = cfg.run_id()
        records = self._c._records(run)
        kept = self.kept.get(run)
        share = kept[1] if kept is not None else None
        if share is None:
            raw = records.get("share")
            if raw is None:
                return None
            try:
                share = SecretShare(self._c.me, SecretScalar(scalar_from_bytes(raw)))
            except (InvalidEncoding, ValueError):
                return None
        partial = records.get("certificate-partial")
        if partial is not None:
            try:
                if CertificatePartial.decode(partial).transcript_hash != tr.hash():
                    return None
            except MessageDecodeError:
                return None
        pk = cert.public_shares().get(self._c.me)
        if pk is None or share.value.value * G2.generator() != pk:
            return None
        return share

    def sharing_session(self, cfg: SharingConfig, share: SecretShare | None) -> SharingSession:
        """The session for one run, from the ``session_factory`` the node was built with."""
        return self.session_factory(
            cfg,
            self._c.me,
            self._c._key,
            self._c._dkg_key,
            rng=self._c._rng,
            share=share,
            persisted=self.persisted(cfg),
            live_since=self._c.live_since,
        )

    def persisted(self, cfg: SharingConfig) -> dict[str, bytes]:
        """A run's records: its own, and its key seed (kept under a run of its own)."""
        run = cfg.run_id()
        self.runs[run] = cfg.epoch
        while len(self.runs) > MAX_RUN_RECORDS:
            self.erase_run(next(iter(self.runs)))
        records = {
            **self._c._records(run),
            **self._c._records(run_key_records(run)),
            **self._c._records(polynomial_records(run)),
        }
        if RUN_KEY_RECORD in records:
            self._c._seeds[run] = records[RUN_KEY_RECORD]
        return records

    def end_run(self, session: SharingSession) -> None:
        """The run is over here, done or failed: its key seed goes at once (nothing it
        encrypted to that key opens any more, whoever recorded the deals), unless this
        recipient holds no share of it that it signed with: then the seed is kept, bounded
        (``ShareRecovery.prune``), to recover its share from the deals if certified."""
        if self.run is session:
            self.run = None
        self.erase.append(polynomial_records(session.run_id))
        seed = self._c.recovery.seeds.pop(session.run_id, None)
        res = session.result
        cfg = session.config
        if (
            seed is not None
            and session.is_recipient
            and (res is None or res.share is None or session.withheld is not None)
        ):
            # No share it signed with: it may need the seed to recover its share of this
            # run from the deals, if the others certify it (``ShareRecovery.step``).
            end = cfg.schedule.end + RECOVERY_SEED_DELTAS * self._c.config.delta
            self._c.recovery.keep_seed(session.run_id, cfg.epoch, cfg.attempt, seed, end)
        elif session.run_id not in self._c.recovery.kept_seeds:
            self.erase.append(run_key_records(session.run_id))
        if (
            self._c.state is not None
            and self._c.state.epoch >= session.config.epoch
            and session.run_id not in self.keep_runs()
        ):
            # An outcome for its epoch is already certified (and this run is no higher
            # attempt of the head's epoch, which could still win): nothing of it is needed.
            self.erase_run(session.run_id)

    def erase_run(self, run: bytes) -> None:
        self.runs.pop(run, None)
        self.erase.extend((run, polynomial_records(run)))
        if run not in self._c.recovery.kept_seeds:
            self.erase.append(run_key_records(run))

    def erase_runs_up_to(self, epoch: int) -> None:
        """An epoch certificate for ``epoch`` is adopted (and this node's share of it, if
        any, stored by the events before): the records of every run for that epoch or an
        earlier one are of no further use. A run still going here keeps its own."""
        live = (
            self.run.run_id
            if self.run is not None
            and self.run.phase
            not in (
                Phase.DONE,
                Phase.FAILED,
            )
            else None
        )
        keep = set(self.keep_runs())
        for run, e in list(self.runs.items()):
            if e <= epoch and run != live and run not in keep:
                self.erase_run(run)

    def start_reshare(self, attempt: int) -> None:
        st = self._c.state
        if st is None or st.pending is None:
            return
        outcome = st.pending.outcome
        new = st.apply(outcome.proposal.change)
        if new is None:  # pragma: no cover - extend() checked it
            return
        # Without a share for this epoch (a missed reshare) the node takes part as a
        # recipient only; its dealer slot stays empty and it is left out of QUAL.
        dealer_share = self._c.share if self._c.me in st.committee.indices else None
        if self._c.me not in new.indices and dealer_share is None:
            # Not a recipient, and (a leaving member without a share, or an outsider)
            # nothing to deal: this node takes no part.
            return
        sched = self._c.config.reshare_schedule(
            outcome.reshare_start, len(new.members), new.threshold, attempt
        )
        if self._c._now >= sched.end:
            # This attempt is already over (we were away): move on to the next one.
            self.attempt = attempt + 1
            return
        cfg = self.reshare_config(st, attempt)
        if cfg is None:  # pragma: no cover - extend() checked it
            return
        self.attempt = attempt
        self.ran_epochs.add(cfg.epoch)
        self.reshare_runs[cfg.run_id()] = cfg
        while len(self.reshare_runs) > MAX_RESHARE_RUNS:
            del self.reshare_runs[next(iter(self.reshare_runs))]
        try:
            self.run = self.sharing_session(cfg, dealer_share)
            self.run.advance_time(self._c._now)
        except (LocalProtocolError, InvalidSignature, InvalidEncoding) as exc:
            # This node cannot take part (e.g. its old share does not match): the run goes
            # on without it; the node and its epoch go on.
            self._c._events.append(
                RunFailed(RunKind.RESHARE, cfg.epoch, attempt, f"local error: {exc}")
            )
            if self.run is not None:
                self.end_run(self.run)
            self.run = None
            self.attempt = attempt + 1
            return
        self._c._replay_early()

    def genesis_config(self, attempt: int) -> SharingConfig:
        return self._c.configs.genesis(attempt)

    def reshare_config(self, st: ChainState, attempt: int) -> SharingConfig | None:
        """The configuration of reshare ``attempt`` after ``st`` (which has a pending change)."""
        return self._c.configs.reshare(st, attempt)

    def certified_config(self, st: ChainState) -> SharingConfig | None:
        """The configuration of the run the head's certificate certifies (from the chain)."""
        tr = st.certificate.transcript
        try:
            if tr.kind == RunKind.DKG:
                return self.genesis_config(tr.attempt)
            before = self._c._epoch_states.get(st.epoch - 1)
            return self.reshare_config(before, tr.attempt) if before is not None else None
        except (LocalProtocolError, InvalidSignature, InvalidEncoding):
            return None
