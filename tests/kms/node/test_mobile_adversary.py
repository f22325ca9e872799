"""A mobile adversary against refresh: it reads different nodes at different times.

The committee (n = 4, t = 3) runs genesis and then scheduled refreshes over the
mesh, every message round-tripping through the codec. The adversary records
every deal broadcast in every run (what any member, or a tap on every link,
sees), and reads the *full* state of some nodes at some epochs: the node's
secrets (identity, static DKG key, current and retained shares) and every run
record its store holds at that time (what ``StoreRecord`` put there and no
``EraseRecords`` removed). It is never inside more than ``t - 1`` nodes in one
epoch. It then decrypts whatever deal shares it can with every key it found,
rebuilds the shares those give, and tries every ``t`` points it holds.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from mesh import Mesh, make_nodes

from kms.node.core import NodeConfig, NodeCore, Restored, StoreRecord
from mpc import hpke
from mpc.broadcast import BroadcastPayload
from mpc.codec import MessageDecodeError
from mpc.dkg.messages import CertificatePartial, DealBundle
from mpc.dkg.session import RUN_KEY_RECORD, SHARE_INFO
from mpc.errors import DecryptionError, InvalidEncoding
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2, R
from mpc.math.fields import lagrange_coefficients, scalar_from_bytes
from mpc.math.poly import interpolate_at

try:  # the erasure event (absent from code that never erases run records)
    from kms.node.core import EraseRecords
except ImportError:  # pragma: no cover - only on code without erasure
    EraseRecords = ()  # type: ignore[assignment,misc]

N, T = 4, 3
DELTA = 0.5


@dataclass
class Snapshot:
    """Everything one node holds at one moment."""

    index: int
    epoch: int
    x25519: list[hpke.PrivateKey] = field(default_factory=list)
    points: list[tuple[int, int]] = field(default_factory=list)
    records: dict[tuple[bytes, str], bytes] = field(default_factory=dict)


class Committee:
    def __init__(self, seed: int) -> None:
        self.nodes = make_nodes(range(1, N + 1), seed)
        genesis = tuple(self.nodes[PI(i)].participant for i in range(1, N + 1))
        rng = random.Random(seed)
        self.cores: dict[PI, NodeCore] = {}
        for i in range(1, N + 1):
            cfg = NodeConfig(
                PI(i),
                genesis,
                T,
                genesis_start=1.0,
                delta=DELTA,
                window_period=20.0,
                window_length=2.0,
                refresh_interval=5.0,
            )
            self.cores[PI(i)] = NodeCore(
                cfg, self.nodes[PI(i)].identity, self.nodes[PI(i)].dkg_key, rng=rng.randbytes
            )
        self.deals: dict[bytes, DealBundle] = {}
        """Every deal broadcast, by the digest of its signed payload."""
        self.deal_sessions: dict[bytes, bytes] = {}
        self.run_ids: set[bytes] = set()
        """Run ids are public (a hash of the run's configuration); collected as runs start."""

        def tap(sender, to, message, now):  # type: ignore[no-untyped-def]
            if isinstance(message, BroadcastPayload):
                try:
                    bundle = DealBundle.decode(message.payload)
                except (MessageDecodeError, InvalidEncoding):
                    return None
                self.deals[message.header.digest] = bundle
                self.deal_sessions[message.header.digest] = message.header.session
            return None

        ticks = [k * 0.25 for k in range(int(400 / 0.25) + 1)]
        self.mesh = Mesh(self.cores, seed=seed, max_delay=DELTA / 3, ticks=ticks, route=tap)

    def run_to_epoch(self, epoch: int, limit: float = 400.0) -> None:
        """Until every node holds a share of ``epoch`` and has dropped the old one (the
        retained share goes once the new epoch is acknowledged: until then a node read
        holds a share of both epochs, and counts as corrupt in both)."""
        while not all(
            c.state is not None
            and c.state.epoch >= epoch
            and c.share is not None
            and not c.retained_epochs
            for c in self.cores.values()
        ):
            if self.mesh.now >= limit:
                raise AssertionError(f"epoch {epoch} not reached by {limit}")
            self.mesh.run_until(self.mesh.now + 1.0)

    def store(self, i: int) -> dict[tuple[bytes, str], bytes]:
        """The node's run records now: every record stored and not erased since."""
        out: dict[tuple[bytes, str], bytes] = {}
        for ev in self.mesh.events[PI(i)]:
            if isinstance(ev, StoreRecord):
                out[(ev.run, ev.key)] = ev.data
            elif isinstance(ev, EraseRecords):
                for key in [k for k in out if k[0] == ev.run]:
                    del out[key]
        return out

    def read(self, i: int) -> Snapshot:
        core = self.cores[PI(i)]
        st = core.state
        snap = Snapshot(i, st.epoch if st else -1)
        snap.x25519.append(self.nodes[PI(i)].dkg_key)
        if core.share is not None:
            snap.points.append((int(core.share.index), core.share.value.value))
        for old in core._retained.values():  # the node's memory: retained old shares
            snap.points.append((int(old.index), old.value.value))
        snap.records = self.store(i)
        for (_run, key), data in snap.records.items():
            if len(data) == 32:  # any 32-byte record may be a key seed or a share
                snap.x25519.append(hpke.derive_key_pair(data)[0])
                snap.x25519.append(hpke.PrivateKey.from_private_bytes(data))
                if key == "share":
                    snap.points.append((i, scalar_from_bytes(data) % R))
            if key == "polynomial" and len(data) % 32 == 0:
                snap.points.append((i, int.from_bytes(data[:32], "big")))
        return snap


def recovered_points(c: Committee, snaps: list[Snapshot]) -> list[tuple[int, int]]:
    """Shares the adversary can rebuild from the recorded deals with the keys it read."""
    keys = [k for s in snaps for k in s.x25519]
    runs: dict[bytes, list[DealBundle]] = {}
    for digest, bundle in c.deals.items():
        runs.setdefault(c.deal_sessions[digest], []).append(bundle)
    run_ids = {
        *(run for s in snaps for (run, _k) in s.records),
        *(core._run.run_id for core in c.cores.values() if core._run is not None),
        *c.run_ids,
    }
    points: list[tuple[int, int]] = []
    for bundles in runs.values():
        dealers = sorted({b.dealer for b in bundles})
        for j in range(1, N + 1):
            got: dict[int, int] = {}
            for b in bundles:
                enc = next(s for s in b.shares if s.recipient == j)
                for run in run_ids:
                    info = SHARE_INFO + run + b.dealer.to_bytes(4, "big") + j.to_bytes(4, "big")
                    for k in keys:
                        try:
                            pt = hpke.open(enc.enc, k, info, b.commitments_hash(), enc.ciphertext)
                        except (DecryptionError, ValueError, InvalidEncoding):
                            continue
                        got[b.dealer] = int.from_bytes(pt, "big")
            if set(got) == set(dealers):
                values = [got[d] for d in dealers]
                points.append((j, sum(values) % R))  # a DKG share
                lam = lagrange_coefficients(dealers, 0)
                points.append((j, sum(w * v for w, v in zip(lam, values, strict=True)) % R))
    return points


def secret_from(points: list[tuple[int, int]], mpk: G2) -> int | None:
    pool = sorted(set(points))
    for combo in itertools.combinations(pool, T):
        if len({x for x, _ in combo}) < T:
            continue
        s = interpolate_at(list(combo))
        if s * G2.generator() == mpk:
            return s
    return None


def attack(
    reads: dict[int, list[int]], seed: int, *, bounded: bool = True
) -> tuple[int | None, list[Snapshot], G2]:
    """Run genesis and two refreshes, reading ``reads[epoch]`` nodes once that epoch is
    certified everywhere; return the secret the adversary finds (or None)."""
    c = Committee(seed)
    snaps: list[Snapshot] = []
    for epoch in range(3):
        c.run_to_epoch(epoch)
        for core in c.cores.values():
            if core._run is not None:
                c.run_ids.add(core._run.run_id)
        for ev in (e for evs in c.mesh.events.values() for e in evs):
            if isinstance(ev, StoreRecord):
                c.run_ids.add(ev.run)
        for i in reads.get(epoch, []):
            snaps.append(c.read(i))
    mpk = c.cores[PI(1)].state.mpk
    assert all(core.state.epoch == 2 for core in c.cores.values())
    for e in range(3):
        assert not bounded or sum(1 for s in snaps if s.epoch == e) <= T - 1  # a mobile adversary
    points = [p for s in snaps for p in s.points] + recovered_points(c, snaps)
    return secret_from(points, mpk), snaps, mpk


def test_genesis_deals_and_later_keys_do_not_give_the_secret() -> None:
    """Two nodes read right after genesis (with every recorded deal), two others read
    after two refreshes: within the per-epoch bound, so `s` must stay out of reach."""
    s, snaps, _mpk = attack({0: [3, 4], 2: [1, 2]}, seed=11)
    assert [snap.epoch for snap in snaps] == [0, 0, 2, 2]
    assert s is None, "the adversary rebuilt the master secret"


def test_single_nodes_read_at_different_epochs_do_not_combine() -> None:
    """Every node read once, at a different epoch each time (never more than two per
    epoch): shares of different epochs and erased run records do not combine."""
    s, _snaps, _mpk = attack({0: [1], 1: [2, 3], 2: [4]}, seed=12)
    assert s is None, "the adversary rebuilt the master secret"


def test_the_adversary_can_use_what_it_reads() -> None:
    """The same adversary with ``t`` nodes of one epoch finds `s`: the attack code works."""
    s, _snaps, mpk = attack({2: [1, 2, 3]}, seed=13, bounded=False)
    assert s is not None and s * G2.generator() == mpk


def test_a_node_restarted_mid_run_keeps_its_run_key_and_gets_its_share() -> None:
    """Node 2 restarts from its stored records after dealing, before the deals are
    opened: the run key's seed (stored sealed, under a run of its own) comes back with
    them, so it opens its shares; once the epoch is certified the seed is gone."""
    c = Committee(15)
    sched = c.cores[PI(2)].config.genesis_schedule(0)
    c.mesh.run_until((sched.key_end + sched.deal_end) / 2)
    old = c.cores[PI(2)]
    stored = c.store(2)
    assert any(key == RUN_KEY_RECORD for _run, key in stored)

    def records(run: bytes) -> dict[str, bytes]:
        return {key: data for (r, key), data in stored.items() if r == run}

    revived = NodeCore(
        old.config,
        c.nodes[PI(2)].identity,
        c.nodes[PI(2)].dkg_key,
        rng=random.Random("revived").randbytes,
        restored=Restored(records=records),
    )
    c.cores[PI(2)] = revived
    c.mesh.run_until(sched.end + 1.0)
    assert all(core.state is not None and core.share is not None for core in c.cores.values())
    assert revived.share is not None and revived.state.epoch == 0
    # One announcement only: the restarted node resent the same signed bytes.
    announced = {
        e.data for e in c.mesh.events[PI(2)] if isinstance(e, StoreRecord) and e.key == "run-key"
    }
    assert len(announced) == 1
    assert not any(key == RUN_KEY_RECORD for _run, key in c.store(2))


def test_a_failed_runs_key_is_erased_when_it_fails_not_at_the_next_epoch() -> None:
    """Genesis attempt 0 fails (every certificate partial is lost): each node erases that
    attempt's key seed as the attempt ends, while attempt 1 draws keys of its own."""
    c = Committee(16)
    sched = c.cores[PI(1)].config.genesis_schedule(0)
    tap = c.mesh.route

    def route(sender, to, message, now):  # type: ignore[no-untyped-def]
        if isinstance(message, CertificatePartial) and now < sched.end:
            return []
        return tap(sender, to, message, now) if tap else None

    c.mesh.route = route
    c.mesh.run_until(sched.end + 1.0)
    for i in range(1, N + 1):
        seeds = [
            e.run
            for e in c.mesh.events[PI(i)]
            if isinstance(e, StoreRecord) and e.key == RUN_KEY_RECORD
        ]
        assert len(seeds) == 2, "attempt 0 and attempt 1 each drew a key"
        left = {run for run, key in c.store(i) if key == RUN_KEY_RECORD}
        assert left == {seeds[1]}, "attempt 0's key outlived its run"
        assert c.cores[PI(i)].state is None  # nothing certified yet
    c.run_to_epoch(0)
