"""``NodeDriver``: frames in, one ordered step out, around one ``NodeCore``; sans-I/O.

Both the trio service (``kms.node.service``) and the simulator's protocol mode
(``sim.world``) drive a node through this class, so a frame takes the same path
in both: envelope decode and checks, the sender bound to the authenticated peer,
then ``NodeCore.receive`` with the envelope's epoch (the core's epoch rules).

* ``receive_frame(peer, frame, now)`` returns ``FrameAccepted`` or
  ``FrameRejected`` and never raises for bad input. Messages of the kinds the
  driver was told belong to the shell (``shell_messages``, e.g. policy gossip) are
  not given to the core: the core only notes the sender's epoch, and the caller
  handles the message.
* ``step()`` drains the core into one ``Step``: ``records`` (the events that
  change the store, to persist first, in order), then ``messages`` (encoded
  envelopes, to send only after the records are stored), then ``events`` (the
  rest: logs, metrics, observations).

Who may send frames: the current and incoming members and recently removed ones
(for the chain), each bound to the peer id of its identity key. The driver keeps
that binding; ``Step.new_peers`` lists the bindings a step added (the caller tells
its transport), and ``heard`` is the set of indices whose frames are read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kms.node.core import NodeCore
from kms.node.model import (
    ChainReplaced,
    EpochSwitched,
    LinkCertified,
    NodeEvent,
)
from kms.node.persist import PERSISTENT_EVENTS, PersistentEvent
from mpc.broadcast import Outbound
from mpc.codec import Message
from mpc.errors import InvalidEncoding
from mpc.ids import ParticipantIndex, PeerId
from net.codec import (
    ENVELOPE_VERSION,
    Envelope,
    EnvelopeError,
    encode_envelope,
    open_envelope,
)
from net.peerid import peer_id_from_ed25519

Opener = Callable[[bytes], tuple[Envelope, Message]]
"""Decodes and checks a frame (``net.codec.open_envelope``; a caller may memoise it)."""
PayloadEncoder = Callable[[Message], bytes]
"""Encodes a message (``Message.encode``; a caller may memoise it)."""


@dataclass(frozen=True, slots=True)
class FrameAccepted:
    """A frame passed the envelope checks; its message went to the core (or is the
    shell's to handle, when ``for_shell``)."""

    sender: ParticipantIndex
    kind: str
    size: int
    message: Message
    for_shell: bool


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame refused before the core saw it; ``reason`` starts with a stable label."""

    peer: str
    reason: str


@dataclass(frozen=True, slots=True)
class OutboundFrame:
    """One encoded envelope for one member."""

    to: ParticipantIndex
    message: Message
    frame: bytes
    size: int
    """The encoded message's size (the envelope's payload)."""


@dataclass(frozen=True, slots=True)
class EncodeFailed:
    """A message that could not be put in an envelope (oversized): dropped."""

    to: ParticipantIndex
    kind: str
    error: str


@dataclass
class Step:
    """One step's output, in the order it must be acted on."""

    records: list[PersistentEvent] = field(default_factory=list)
    """Store these first, in order (``kms.node.persist.apply_events``)."""
    messages: list[OutboundFrame] = field(default_factory=list)
    """Then send these."""
    events: list[NodeEvent] = field(default_factory=list)
    """Then act on these (nothing here needs storing)."""
    unencodable: list[EncodeFailed] = field(default_factory=list)
    new_peers: list[tuple[ParticipantIndex, PeerId]] = field(default_factory=list)
    """Peers bound to an index by this step (a certified change admitted them)."""
    relearned: bool = False
    """The chain changed in this step (an epoch, a membership link, a replaced chain): who
    is heard, and the committee's size, may have changed even with no new peer bound."""


class NodeDriver:
    """Runs one ``NodeCore``: checks frames, orders its output, encodes its messages."""

    def __init__(
        self,
        core: NodeCore,
        *,
        shell_messages: tuple[type[Message], ...] = (),
        opener: Opener = open_envelope,
        encoder: PayloadEncoder | None = None,
    ) -> None:
        self.core = core
        self._shell = shell_messages
        self._open = opener
        self._encode = encoder
        self._peer_index: dict[PeerId, ParticipantIndex] = {}
        self._index_peer: dict[ParticipantIndex, PeerId] = {}
        self.heard: frozenset[ParticipantIndex] = frozenset()
        """Indices whose frames are read: allowed members and recently removed ones."""
        self._new_peers: list[tuple[ParticipantIndex, PeerId]] = []
        self.learn_participants()  # the initial bindings: ``peers``

    # --- peers ---------------------------------------------------------------------------

    def learn_participants(self) -> list[tuple[ParticipantIndex, PeerId]]:
        """Bind every participant the core knows to its peer id; returns the new bindings."""
        new: list[tuple[ParticipantIndex, PeerId]] = []
        # Recently removed members are bound too (their chain requests are answered, so
        # that they learn of their removal), also after a restart: from the chain held.
        known = {**self.core.removed_participants(), **self.core.participants}
        for idx, p in sorted(known.items()):
            pid = peer_id_from_ed25519(p.identity)
            if self._index_peer.get(idx) != pid:
                new.append((idx, pid))
            self._peer_index[pid] = idx
            self._index_peer[idx] = pid
        self.heard = self.core.allowed_peers() | frozenset(self.core.recently_removed())
        return new

    def peer_of(self, index: ParticipantIndex) -> PeerId | None:
        return self._index_peer.get(index)

    def index_of(self, peer: PeerId) -> ParticipantIndex | None:
        return self._peer_index.get(peer)

    @property
    def peers(self) -> Mapping[ParticipantIndex, PeerId]:
        return self._index_peer

    # --- in ------------------------------------------------------------------------------

    def receive_frame(
        self, peer: PeerId, frame: bytes, now: float
    ) -> FrameAccepted | FrameRejected:
        """One inbound frame from an authenticated peer. Never raises for bad input."""
        index = self._peer_index.get(peer)
        if index is None or index not in self.heard:
            return FrameRejected(str(peer), "unknown or unauthorised peer")
        try:
            env, message = self._open(frame)
        except EnvelopeError as exc:
            return FrameRejected(str(peer), f"envelope: {exc.reason.value}")
        except InvalidEncoding as exc:
            return FrameRejected(str(peer), f"malformed message: {exc}")
        if env.sender != int(index):
            return FrameRejected(str(peer), "envelope names another sender")
        if isinstance(message, self._shell):
            self.core.observe_epoch(index, env.epoch, now)
            return FrameAccepted(index, env.kind, len(frame), message, True)
        self.core.receive(index, message, now, sender_epoch=env.epoch)
        return FrameAccepted(index, env.kind, len(frame), message, False)

    def advance_time(self, now: float) -> None:
        self.core.advance_time(now)

    # --- out -----------------------------------------------------------------------------

    def envelope(self, message: Message) -> tuple[bytes, int]:
        """``message`` in this node's envelope (its epoch, its index) and the payload size.
        Raises ``EnvelopeError`` (or ``ValueError``) for a message no peer would accept."""
        st = self.core.state
        payload = self._encode(message) if self._encode is not None else message.encode()
        env = Envelope(
            ENVELOPE_VERSION,
            message.TYPE,
            st.epoch if st else 0,
            int(self.core.config.index),
            payload,
        )
        return encode_envelope(env), len(payload)

    def step(self) -> Step:
        """Everything the core produced since the last step: records, messages, events."""
        core = self.core
        out = Step()
        # Collecting the messages can make events (a finalized run's epoch switch, the
        # records of what is about to be sent), so the events are drained after the
        # messages: every record made up to the last message is in ``records``. Draining
        # the events can in turn release messages; those join this step too.
        outbound = core.messages_to_send()
        events = core.events()
        while more := core.messages_to_send():
            outbound.extend(more)
            events.extend(core.events())
        learn = False
        for ev in events:
            if isinstance(ev, PERSISTENT_EVENTS):
                out.records.append(ev)
                learn = learn or isinstance(ev, EpochSwitched | LinkCertified | ChainReplaced)
            else:
                out.events.append(ev)
        if learn:
            self._new_peers.extend(self.learn_participants())
            out.relearned = True
        out.new_peers, self._new_peers = self._new_peers, []
        encoded: dict[int, tuple[bytes, int]] = {}
        for ob in outbound:
            frame = encoded.get(id(ob.message))
            if frame is None:
                try:
                    frame = self.envelope(ob.message)
                except (EnvelopeError, InvalidEncoding, ValueError, OverflowError) as exc:
                    # An oversized (or otherwise unencodable) message is dropped and counted:
                    # it must never raise into the node's tasks.
                    out.unencodable.append(EncodeFailed(ob.to, ob.message.TYPE, type(exc).__name__))
                    continue
                encoded[id(ob.message)] = frame
            out.messages.append(OutboundFrame(ob.to, ob.message, frame[0], frame[1]))
        return out

    def frames(self, outbound: list[Outbound]) -> list[OutboundFrame]:
        """Encode messages that did not come from this step (a simulated adversary's)."""
        out = []
        for ob in outbound:
            try:
                frame, size = self.envelope(ob.message)
            except (EnvelopeError, InvalidEncoding, ValueError, OverflowError):
                continue
            out.append(OutboundFrame(ob.to, ob.message, frame, size))
        return out


__all__ = [
    "EncodeFailed",
    "FrameAccepted",
    "FrameRejected",
    "NodeDriver",
    "Opener",
    "OutboundFrame",
    "PayloadEncoder",
    "Step",
]
