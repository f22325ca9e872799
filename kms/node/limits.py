"""How much one peer may make a node hold: byte and message quotas as functions of n and t.

One formula serves the transport's per-peer receive queue, the core's
per-member quota of early messages and the service's per-peer send queue.
It bounds what one honest member sends to one other member in one broadcast
round of a sharing run (the largest traffic the protocols make), counting
every message at its largest encoding:

* its own payload, at most a deal bundle: ``DEAL(n, t) = 96·t + 80·n + 1024``
  bytes (``t`` G2 commitments of 96 bytes, ``n`` encrypted shares of
  ``32 + 48`` bytes, and room for the envelope, the signed digest and the
  msgpack framing; measured: 11,080 bytes of bundle at n = 64, t = 43);
* at most two digest relays per slot, each carrying at most ``t`` relay
  signatures: ``2·n·RELAY(t)`` with ``RELAY(t) = 512 + 80·t``;
* answers to this node's pulls, at most one payload per slot: ``n·DEAL(n, t)``.

``ROUND(n, t)`` is their sum. A peer's queue holds ``2·ROUND(n, t)`` (two rounds
may overlap at a member that is slightly behind) plus ``POLICY_BURST`` for the
largest honest answer to a policy digest (32 bundles of at most 64 KiB). At
n = 64, t = 43: ROUND ≈ 1.18 MB and the queue cap ≈ 4.46 MB; at n = 4, t = 3:
≈ 2.1 MB, almost all of it the policy burst. A single frame larger than the
cap is still taken when the peer's queue is empty, so no frame the transport
accepts can wedge a link.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "POLICY_BURST",
    "deal_bytes",
    "early_messages",
    "peer_queue_bytes",
    "relay_bytes",
    "round_bytes",
]

POLICY_BURST: Final = 32 * 64 * 1024 + 64 * 1024
"""The largest honest answer to one policy digest: 32 bundles of at most 64 KiB, and slack."""


def deal_bytes(n: int, t: int) -> int:
    """An upper bound on one encoded deal bundle with its envelope (see the module doc)."""
    return 96 * t + 80 * n + 1024


def relay_bytes(t: int) -> int:
    """An upper bound on one digest relay carrying at most ``t`` relay signatures."""
    return 512 + 80 * t


def round_bytes(n: int, t: int) -> int:
    """What one honest member sends to one other member in one broadcast round, at most."""
    return deal_bytes(n, t) + 2 * n * relay_bytes(t) + n * deal_bytes(n, t)


def peer_queue_bytes(n: int, t: int) -> int:
    """The byte cap of one peer's receive queue (and of a member's early messages)."""
    return 2 * round_bytes(n, t) + POLICY_BURST


def early_messages(n: int) -> int:
    """How many early messages (for a run or window not started yet) one member may park:
    per round its payload, two relays per slot and its pulls, for two rounds."""
    return 2 * (3 * n + 1) + 16
