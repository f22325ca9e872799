"""Messages that arrive before their run or window starts here, kept per member.

A member's messages for a sharing run or a decision window this node has not
started yet (it is a little behind, or the sender's clock a little ahead) are
kept and replayed, in arrival order, when a run or window starts. Each member
has its own quota (a count and a byte budget, ``kms.node.limits``): over it,
that member's own oldest early messages make room, as a bounded queue would,
never another member's. Sizes are estimated without encoding again
(``approx_size``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from mpc.broadcast import BroadcastPayload, DigestRelay
from mpc.codec import Message
from mpc.ids import ParticipantIndex


def approx_size(message: Message) -> int:
    """Roughly the encoded size of an early message (without encoding it again)."""
    if isinstance(message, BroadcastPayload):
        return len(message.payload) + 256
    if isinstance(message, DigestRelay):
        return 256 + 80 * len(message.relays)
    return 256


class EarlyMessages:
    """Per-member bounded queues of messages for runs or windows not started yet."""

    def __init__(self) -> None:
        self.queues: dict[ParticipantIndex, deque[tuple[int, Message, int]]] = {}
        """Per member: (sequence, message, size)."""
        self.bytes: dict[ParticipantIndex, int] = {}
        self._seq = 0

    def keep(self, peer: ParticipantIndex, message: Message, count: int, limit: int) -> int:
        """Keep ``message`` within ``peer``'s quota (``count`` messages, ``limit`` bytes);
        returns how many of ``peer``'s oldest were dropped to make room."""
        size = approx_size(message)
        kept = self.queues.setdefault(peer, deque())
        used = self.bytes.get(peer, 0)
        dropped = 0
        while kept and (len(kept) >= count or used + size > limit):
            used -= kept.popleft()[2]
            dropped += 1
        self._seq += 1
        kept.append((self._seq, message, size))
        self.bytes[peer] = used + size
        return dropped

    def take_all(self) -> list[tuple[int, ParticipantIndex, Message, int]]:
        """Every kept message, in arrival order: (sequence, peer, message, size); the queues
        are emptied (``put_back`` what is still early)."""
        pending = sorted(
            (seq, peer, msg, size) for peer, kept in self.queues.items() for seq, msg, size in kept
        )
        self.queues.clear()
        self.bytes.clear()
        return pending

    def put_back(self, seq: int, peer: ParticipantIndex, message: Message, size: int) -> None:
        self.queues.setdefault(peer, deque()).append((seq, message, size))
        self.bytes[peer] = self.bytes.get(peer, 0) + size

    def forget(self, keep: Collection[ParticipantIndex]) -> None:
        """Drop what members outside ``keep`` sent (removed from the committee)."""
        for i in [i for i in self.bytes if i not in keep]:
            del self.bytes[i]
        for i in [i for i in self.queues if i not in keep]:
            del self.queues[i]
