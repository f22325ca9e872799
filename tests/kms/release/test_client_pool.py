"""The client's threads: reused across requests, never waited on while busy.

A warm ``KeyClient`` asks ``t`` nodes at once on every fetch; the calls run on daemon
threads (a node that never answers holds up neither the caller nor the process's exit),
which are kept for the next fetch rather than started anew each time.
"""

from __future__ import annotations

import threading
import time

from kms.client.http import _DaemonPool


def test_an_idle_thread_is_reused_for_the_next_call() -> None:
    pool = _DaemonPool()
    try:
        first = pool.submit(threading.get_ident).result(timeout=5)
        # The thread marks itself idle just after the result is set: give it that moment.
        deadline = time.monotonic() + 5
        while pool._idle == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert pool.submit(threading.get_ident).result(timeout=5) == first
    finally:
        pool.shutdown()


def test_a_busy_thread_never_delays_another_call() -> None:
    """A call stuck on a silent node keeps its thread; the next call gets another."""
    pool = _DaemonPool()
    release = threading.Event()
    try:
        stuck = pool.submit(release.wait, 10.0)
        assert pool.submit(lambda: 7).result(timeout=5) == 7
        assert not stuck.done()
        release.set()
        assert stuck.result(timeout=5) is True
    finally:
        release.set()
        pool.shutdown()


def test_calls_at_once_run_at_once_and_exceptions_are_results() -> None:
    pool = _DaemonPool()
    barrier = threading.Barrier(3, timeout=5)
    try:
        futures = [pool.submit(barrier.wait) for _ in range(3)]  # deadlocks unless concurrent
        assert sorted(f.result(timeout=5) for f in futures) == [0, 1, 2]
        failing = pool.submit(int, "not a number")
        assert isinstance(failing.exception(timeout=5), ValueError)
    finally:
        pool.shutdown()


def test_shutdown_ends_idle_threads_and_later_calls_still_run() -> None:
    pool = _DaemonPool()
    idents = {f.result(timeout=5) for f in [pool.submit(threading.get_ident) for _ in range(3)]}
    pool.shutdown()
    deadline = time.monotonic() + 5
    alive = lambda: [t for t in threading.enumerate() if t.ident in idents]  # noqa: E731
    while alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive()
    assert pool.submit(lambda: "late").result(timeout=5) == "late"  # on a thread of its own


def test_an_unclaimed_idle_thread_ends_after_the_idle_time() -> None:
    pool = _DaemonPool()
    pool.IDLE = 0.05
    ident = pool.submit(threading.get_ident).result(timeout=5)
    deadline = time.monotonic() + 5
    while any(t.ident == ident for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.ident == ident for t in threading.enumerate())
    assert pool._idle == 0
    assert pool.submit(lambda: 1).result(timeout=5) == 1
    pool.shutdown()
