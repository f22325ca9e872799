"""Identity types: a participant's polynomial index vs its network identity."""

from __future__ import annotations

from typing import NewType

ParticipantIndex = NewType("ParticipantIndex", int)
"""The 1-based x coordinate of a participant's share; bound to its identity key."""

PeerId = NewType("PeerId", str)
"""A libp2p peer id (base58 of the identity multihash)."""
