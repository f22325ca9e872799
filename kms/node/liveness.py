"""Since when a node has been live: one tracker, two thresholds, two readers.

The node core sees time only through ``advance_time(now)``; a gap between two
consecutive times it sees means the process was paused (suspended, overloaded,
or down and restarted, which starts a new ``NodeCore``). Two protocols ask
"since when has this node run without such a gap", with different tolerances:

* ``sharing_since`` (threshold ``STALL_FRACTION · Δ``, from
  ``mpc.dkg.session``): handed to every sharing run (``SharingSession``'s
  ``live_since``). A member that stalled during a run's phase may have missed
  messages, so it does not vouch for what it did not see. ``None`` before the
  first time.
* ``window_since`` (threshold ``LIVE_GAP_FRACTION · Δ``, from
  ``mpc.membership.window``): handed to every decision window
  (``DecisionWindow``'s ``live_since``). A member not live since the window
  opened abstains rather than sign an outcome from a partial view.
  ``+inf`` before the first time.

A time earlier than the last one seen is ignored (as ``NodeCore.advance_time``
ignores it).
"""

from __future__ import annotations

from mpc.dkg.session import STALL_FRACTION
from mpc.membership.window import LIVE_GAP_FRACTION


class Liveness:
    """The two "live since" times of one node process."""

    def __init__(self, delta: float) -> None:
        self.stall_gap = STALL_FRACTION * delta
        """A longer gap restarts ``sharing_since``."""
        self.window_gap = LIVE_GAP_FRACTION * delta
        """A longer gap restarts ``window_since``."""
        self.sharing_since: float | None = None
        self.window_since = float("inf")
        self._last = float("-inf")

    def observe(self, now: float) -> None:
        """The node runs at ``now`` (called with every ``advance_time``)."""
        if now < self._last:
            return
        gap = now - self._last
        if self.window_since == float("inf") or gap > self.window_gap:
            self.window_since = now  # started, or resumed after a pause: live from now on
        if self.sharing_since is None or gap > self.stall_gap:
            self.sharing_since = now  # first time seen, or back from a stall
        self._last = now
