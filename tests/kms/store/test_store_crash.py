"""A node killed (SIGKILL) in the middle of its persistence loop reopens consistent.

The worker (``store_crash_worker.py``) loops over epoch switches, records,
share deletions and audit groups; the test kills it at different moments,
reopens the file, checks the invariants, and restarts the worker, which must
carry on from what the store holds. It takes under a second (an iteration is
about a millisecond), so it is not marked ``slow``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import store_crash_worker as worker

from kms.store import NodeStore, TEESealer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

# (completed epochs to wait for, then extra delay in seconds before SIGKILL). An
# iteration takes about a millisecond here, so the delays spread the kills over
# every statement of the loop (measured: kills land before, inside and after the
# record group, between the switch and the deletions, after the membership link).
KILLS = [
    (1, 0.0),
    (2, 0.003),
    (1, 0.011),
    (3, 0.0),
    (2, 0.017),
    (1, 0.007),
    (1, 0.001),
    (2, 0.013),
    (1, 0.019),
    (1, 0.005),
]


def start_worker(path: Path, epochs: int | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
    args = [sys.executable, str(HERE / "store_crash_worker.py"), str(path)]
    if epochs is not None:
        args.append(str(epochs))
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def check_invariants(path: Path) -> int:
    """Everything a restarted node relies on; returns the current epoch."""
    with NodeStore(path, TEESealer(lambda: worker.KEY), create=False) as store:
        db = store._conn()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []

        current = store.current_epoch()
        assert current is not None, "the worker reported an epoch, so one is current"
        e = current.epoch
        # The current epoch is whole: certificate, share, public data.
        assert current.certificate == worker.cert(e)
        assert current.share == worker.share(e)
        assert current.public_polynomial == worker.poly(e)
        assert current.committee == worker.committee(e)

        # The chain is contiguous: E0 M0 E1 M1 ... up to E_e, maybe M_e (appended before
        # the next switch), and no half-written epoch after it.
        chain = store.chain()
        expected = []
        for k in range(e + 1):
            expected += [("epoch", k, worker.cert(k)), ("membership", k, worker.member(k))]
        assert chain in (expected[:-1], expected)

        # Retained shares: the previous epoch's always (deleted only two switches later),
        # the one before it if the kill came between the switch and the deletion.
        retained = store.retained_shares()
        assert set(retained) <= set(range(max(0, e - 2), e))
        if e >= 1:
            assert e - 1 in retained
        for old in retained:
            assert store.retained_share(old) == worker.share(old)

        # Records: each step's group is all or nothing, and values are never mixed up.
        for run in store.runs():
            epoch = int(run.rsplit(b"-", 1)[1])
            assert e - 2 <= epoch <= e + 1
            got = store.records(run)
            want = {k: d for k, (d, _) in worker.records(epoch).items()}
            assert got == {k: want[k] for k in got}
            assert ("polynomial" in got) == ("deal" in got)
            if epoch <= e:
                assert got == want  # written before that epoch's switch
        # The audit log verifies and holds whole groups only.
        store.audit_verify()
        count, _ = store.audit_head()
        assert count % 2 == 0
        return e


def test_sigkill_during_the_persistence_loop_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    last = -1
    for wait_for, delay in KILLS:
        with start_worker(path) as proc:
            if proc.stdout is None:  # pragma: no cover - stdout=PIPE
                raise RuntimeError("no pipe to the worker")
            for _ in range(wait_for):
                line = proc.stdout.readline()
                assert line, f"worker exited early with {proc.wait()}"
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
            reported = int((line + proc.stdout.read()).split()[-1])
        current = check_invariants(path)
        assert current >= reported, "an epoch reported done was committed"
        assert current > last, "every restart makes progress"
        last = current
    # After all the kills, the worker still finishes normally from where it was.
    with start_worker(path, epochs=last + 3) as proc:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert out.split() == [str(k) for k in range(last + 1, last + 3)]
    assert check_invariants(path) == last + 2
