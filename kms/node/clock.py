"""The node's clocks: protocol deadlines are absolute wall-clock times; tests and the
simulator's node mode run the same service on trio's ``MockClock`` through ``TrioClock``."""

from __future__ import annotations

import time
from typing import Protocol

import trio


class Clock(Protocol):
    def now(self) -> float: ...


class WallClock:
    """Unix time: deadlines in the protocol are absolute wall-clock times."""

    def now(self) -> float:
        return time.time()


class TrioClock:
    """trio's clock (for ``MockClock`` runs), offset to look like Unix time."""

    def __init__(self, epoch: float = 0.0) -> None:
        self._offset = epoch - trio.current_time()

    def now(self) -> float:
        return trio.current_time() + self._offset
