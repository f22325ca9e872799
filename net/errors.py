"""Errors raised by transports.

``PeerUnreachable`` and ``TransportClosed`` mirror trio's ``BrokenResourceError``
and ``ClosedResourceError``: the first means the *other side* cannot be
reached (the transport already tried to reconnect and gave up for this call),
the second that *this side* was closed, or never opened, and can no longer be
used. ``FrameTooLarge`` is the caller's mistake: the frame exceeds the
transport's limit and was not sent.
"""

from __future__ import annotations

from mpc.ids import PeerId

__all__ = ["FrameTooLarge", "PeerUnreachable", "TransportClosed", "TransportError"]


class TransportError(Exception):
    """Base class of every transport error."""


class PeerUnreachable(TransportError):
    """The frame could not be delivered to ``peer``: unknown address, dial or write failed.

    Delivery is best effort, so a frame sent successfully can still be lost if the
    connection breaks afterwards; this error only says that *this* send failed.
    """

    def __init__(self, peer: PeerId, reason: str, *, frames_sent: int = 0) -> None:
        self.peer = peer
        self.reason = reason
        self.frames_sent = frames_sent
        """From ``send_many``: how many of its frames, the first ones, were written
        before this failure (the rest were not sent)."""
        super().__init__(f"peer {peer} unreachable: {reason}")


class TransportClosed(TransportError):
    """The transport was closed with ``aclose()`` (or never opened with ``async with``)."""


class FrameTooLarge(TransportError, ValueError):
    """A frame longer than the transport's ``max_frame_size``; nothing was sent."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
