"""Absolute deadlines of a sharing run (DKG or reshare).

Every deadline counts from ``start``, a time fixed in the certificate or
proposal that began the run; nothing restarts a timer relative to when a node
happened to finish. Each broadcast phase lasts its window plus ``(f+1)·Δ``.
The first one carries the recipients' run keys; the deals follow once those
are agreed (``key_end``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from mpc.errors import LocalProtocolError


@dataclass(frozen=True, slots=True)
class Schedule:
    start: float
    delta: float
    """Bound on honest delivery (one pull round trip and clock skew included)."""
    deal_window: float
    respond_window: float
    justify_window: float
    certify_window: float
    f: int
    """Faulty relayers tolerated by the broadcast: ``t - 1`` of the receiving committee."""
    key_window: float | None = None
    """How long recipients have to announce their run keys; ``None``: ``2Δ``."""

    def __post_init__(self) -> None:
        if (
            min(
                self.delta,
                self.deal_window,
                self.respond_window,
                self.justify_window,
                self.certify_window,
                self.key_window_length,
            )
            <= 0
        ):
            raise LocalProtocolError("every window and Δ must be positive")
        if self.f < 0:
            raise LocalProtocolError("f must be non-negative")

    @classmethod
    def default(cls, start: float, n: int, t: int, *, delta: float | None = None) -> Schedule:
        """Defaults that grow with ``n``: a fixed window broke drand at n = 65.

        ``Δ`` defaults to 2 s plus 20 ms per member (the per-phase traffic is
        O(n²) small relays per node); windows to a few ``Δ`` plus time to
        check ``n`` deals of degree ``t-1``.
        """
        d = delta if delta is not None else 2.0 + 0.02 * n
        work = 0.5 + 0.002 * n * t  # verification budget, seconds
        return cls(
            start=start,
            delta=d,
            deal_window=2 * d + work,
            respond_window=2 * d + work,
            justify_window=2 * d + work,
            certify_window=3 * d,
            f=t - 1,
            key_window=2 * d,
        )

    def encode(self) -> bytes:
        """Canonical bytes (IEEE 754 big-endian doubles) for binding into session ids."""
        times = (
            self.start,
            self.delta,
            self.deal_window,
            self.respond_window,
            self.justify_window,
            self.certify_window,
            self.key_window_length,
        )
        return struct.pack(">7dI", *times, self.f)

    @property
    def phase_tail(self) -> float:
        return (self.f + 1) * self.delta

    @property
    def key_window_length(self) -> float:
        return self.key_window if self.key_window is not None else 2 * self.delta

    @property
    def key_cutoff(self) -> float:
        """Run keys (sent at ``start``) must arrive directly by now."""
        return self.start + self.key_window_length

    @property
    def key_end(self) -> float:
        """Every honest member holds the same run keys; dealers deal now."""
        return self.key_cutoff + self.phase_tail

    @property
    def deal_cutoff(self) -> float:
        return self.key_end + self.deal_window

    @property
    def deal_end(self) -> float:
        return self.deal_cutoff + self.phase_tail

    @property
    def respond_cutoff(self) -> float:
        return self.deal_end + self.respond_window

    @property
    def respond_end(self) -> float:
        return self.respond_cutoff + self.phase_tail

    @property
    def justify_cutoff(self) -> float:
        return self.respond_end + self.justify_window

    @property
    def justify_end(self) -> float:
        return self.justify_cutoff + self.phase_tail

    @property
    def certify_end(self) -> float:
        return self.justify_end + self.certify_window

    @property
    def end(self) -> float:
        """When the run is over, successful or failed, for every honest member."""
        return self.certify_end

    def next_attempt(self) -> Schedule:
        """The schedule of the attempt that follows a failed one: starts at this one's end."""
        return Schedule(
            start=math.ceil(self.end),
            delta=self.delta,
            deal_window=self.deal_window,
            respond_window=self.respond_window,
            justify_window=self.justify_window,
            certify_window=self.certify_window,
            f=self.f,
            key_window=self.key_window,
        )
