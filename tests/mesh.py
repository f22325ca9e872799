"""A mesh of sans-I/O protocol instances on a virtual clock (h11 ``ConnectionPair`` style).

Routes ``messages_to_send()`` between ``n`` sessions, round-tripping every
message through the codec, with controllable delivery: honest links deliver
within ``max_delay`` (≤ Δ by construction), and a ``route`` hook lets tests
drop, delay, duplicate or reorder anything a byzantine node sends or receives.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mpc import hpke
from mpc.broadcast import Outbound
from mpc.codec import decode
from mpc.dkg.messages import Participant
from mpc.errors import RemoteProtocolError
from mpc.ids import ParticipantIndex
from mpc.sig import CTX_DKG_KEY, SigningKey


@dataclass
class Node:
    index: ParticipantIndex
    identity: SigningKey
    dkg_key: hpke.PrivateKey
    participant: Participant


def make_nodes(indices: Sequence[int], seed: int) -> dict[ParticipantIndex, Node]:
    rnd = random.Random(f"nodes-{seed}")
    out = {}
    for i in indices:
        ident = SigningKey.from_seed(rnd.randbytes(32))
        dkg, dkg_pub = hpke.derive_key_pair(rnd.randbytes(32))
        sig = ident.sign(CTX_DKG_KEY, Participant.dkg_key_statement(i, dkg_pub))
        part = Participant(i, ident.verify_key().to_bytes(), dkg_pub, sig)
        out[ParticipantIndex(i)] = Node(ParticipantIndex(i), ident, dkg, part)
    return out


TICK_EVERY = 0.1
"""Default tick period: below ``Δ/4`` for every ``Δ ≥ 0.5`` the tests use."""

Route = Callable[[ParticipantIndex, ParticipantIndex, Any, float], list[float] | None]
"""``route(sender, to, message, now)`` → delivery times (empty: drop), or None for the default."""


@dataclass(order=True)
class _Delivery:
    at: float
    seq: int
    to: ParticipantIndex = field(compare=False)
    sender: ParticipantIndex = field(compare=False)
    data: bytes = field(compare=False)


class Mesh:
    """Drive sessions with ``receive``/``advance_time``/``messages_to_send``/``events``."""

    def __init__(
        self,
        sessions: dict[ParticipantIndex, Any],
        *,
        seed: int,
        max_delay: float,
        route: Route | None = None,
        ticks: Sequence[float] = (),
        tick_every: float | None = TICK_EVERY,
    ) -> None:
        self.sessions = sessions
        self.rnd = random.Random(f"mesh-{seed}")
        self.max_delay = max_delay
        self.route = route
        self.now = 0.0
        self._queue: list[_Delivery] = []
        self._seq = 0
        self.ticks = sorted(set(ticks))
        self.tick_every = tick_every
        """Every member also ticks this often, like the node service's timer, so that
        a member nobody writes to is still live (``SharingSession.live``)."""
        self.asleep: dict[ParticipantIndex, float] = {}
        """Members paused until the given time (SIGSTOP, a suspended VM): they get no
        ticks, and what is sent to them waits in their buffers until they wake."""
        self.events: dict[ParticipantIndex, list[Any]] = {i: [] for i in sessions}
        self.rejected: dict[ParticipantIndex, list[RemoteProtocolError]] = {i: [] for i in sessions}
        self.delivered = 0
        self.bytes = 0
        self._actions: list[tuple[float, int, Callable[[], None]]] = []
        self._grid_from = self.ticks[0] if self.ticks else float("-inf")
        """The periodic ticks begin with the first explicit tick, if there are any
        (tests start their clocks anywhere, Unix time included)."""

    def at(self, time: float, action: Callable[[], None]) -> None:
        """Run ``action`` (a crash, a restart, a pause) at ``time``, before anything
        else due then."""
        heapq.heappush(self._actions, (time, self._next(), action))

    def inject(
        self, sender: ParticipantIndex, to: ParticipantIndex, data: bytes, at: float
    ) -> None:
        """Put raw bytes on the wire (garbage, replays, forged messages)."""
        heapq.heappush(self._queue, _Delivery(at, self._next(), to, sender, data))

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _flush(self, i: ParticipantIndex) -> None:
        s = self.sessions[i]
        self.events[i].extend(s.events())
        out: list[Outbound] = s.messages_to_send()
        for ob in out:
            data = ob.message.encode()
            times = self.route(i, ob.to, ob.message, self.now) if self.route else None
            if times is None:
                times = [self.now + self.rnd.uniform(0, self.max_delay)]
            for t in times:
                heapq.heappush(
                    self._queue, _Delivery(max(t, self.now), self._next(), ob.to, i, data)
                )
        self.events[i].extend(s.events())

    def _awake(self, i: ParticipantIndex, t: float) -> bool:
        return self.asleep.get(i, float("-inf")) <= t

    def run_until(self, end: float) -> None:
        for i in sorted(self.sessions):
            if self._awake(i, self.now):
                self.sessions[i].advance_time(self.now)
                self._flush(i)
        tick_iter = [t for t in self.ticks if t > self.now]
        while True:
            next_msg = self._queue[0].at if self._queue else float("inf")
            next_tick = tick_iter[0] if tick_iter else float("inf")
            if self.tick_every is not None and self.now >= self._grid_from:
                step = self.tick_every
                next_tick = min(next_tick, (math.floor(self.now / step + 1e-9) + 1) * step)
            next_action = self._actions[0][0] if self._actions else float("inf")
            t = min(next_msg, next_tick, next_action)
            if t > end:
                break
            self.now = t
            if next_action <= t:
                heapq.heappop(self._actions)[2]()
                continue
            if next_tick <= next_msg:
                while tick_iter and tick_iter[0] <= t:
                    tick_iter.pop(0)
                for i in sorted(self.sessions):
                    if self._awake(i, t):
                        self.sessions[i].advance_time(t)
                        self._flush(i)
                continue
            d = heapq.heappop(self._queue)
            if d.to not in self.sessions:
                continue
            if not self._awake(d.to, t):
                # Buffered by the transport until the member runs again.
                heapq.heappush(
                    self._queue, _Delivery(self.asleep[d.to], self._next(), d.to, d.sender, d.data)
                )
                continue
            self.delivered += 1
            self.bytes += len(d.data)
            session = self.sessions[d.to]
            try:
                msg = decode(d.data)  # every message round-trips through the codec
                session.receive(d.sender, msg, t)
            except (RemoteProtocolError, ValueError) as exc:
                if isinstance(exc, RemoteProtocolError):
                    self.rejected[d.to].append(exc)
            self._flush(d.to)
        self.now = end
        for i in sorted(self.sessions):
            if self._awake(i, end):
                self.sessions[i].advance_time(end)
                self._flush(i)
