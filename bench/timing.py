"""Timing helpers: warm-up, calibration, median of repeats (``time.perf_counter``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

MIN_SAMPLE_SECONDS = 5e-4
"""Cheap operations are timed in batches of at least this long, then divided."""


@dataclass(frozen=True, slots=True)
class Timing:
    """The median seconds per call and how many calls were timed."""

    median: float
    iterations: int


@dataclass(frozen=True, slots=True)
class Budget:
    """How long to spend timing one operation, and the bounds on its call count."""

    seconds: float
    max_iterations: int
    min_iterations: int = 1


def measure(fn: Callable[[], object], budget: Budget, *, warmup: bool = True) -> Timing:
    """Median seconds per call of ``fn``.

    One untimed warm-up call (unless ``warmup`` is false: the caller has already
    exercised the same code), one calibration call that fixes how many calls fit
    in the budget, then repeats of a batch of calls, each batch at least
    ``MIN_SAMPLE_SECONDS`` long so that cheap operations are not lost in timer
    noise. The median is over the batches' per-call times.
    """
    if warmup:
        fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-9)
    wanted = int(budget.seconds / one)
    calls = max(budget.min_iterations, min(budget.max_iterations, wanted))
    if calls == 1:
        # Too slow for more than one call within the budget: the calibration
        # call is the sample.
        return Timing(one, 1)
    inner = max(1, min(calls // 3 or 1, int(MIN_SAMPLE_SECONDS / one)))
    repeats = max(1, calls // inner)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return Timing(statistics.median(samples), repeats * inner)


def format_seconds(seconds: float) -> str:
    """``86.1 µs``, ``1.23 ms``, ``451 ms``, ``2.50 s``: three significant figures."""
    for unit, scale in (("µs", 1e-6), ("ms", 1e-3)):
        if seconds < 999.5 * scale:
            return f"{_three_figures(seconds / scale)} {unit}"
    return f"{_three_figures(seconds)} s"


def _three_figures(v: float) -> str:
    if v >= 99.95:
        return f"{v:.0f}"
    if v >= 9.995:
        return f"{v:.1f}"
    return f"{v:.2f}"
