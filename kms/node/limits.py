"""How much one peer may make a node hold: byte and message quotas as functions of n and t.

One formula serves the transport's per-peer receive queue, the core's
per-member quota of early messages and the service's per-peer send queue.
It bounds what one honest member sends to one other member in one broadcast
round of a sharing run (the largest traffic the protocols make), counting
every message at its largest encoding, in its envelope:

* its own payload, at most a deal bundle: ``DEAL(n, t) = 100·t + 110·n + 512``
  (each G2 commitment encodes in 98 bytes, each encrypted share in 107, and
  the signed digest, envelope and framing in about 220: measured in
  ``tests/kms/node/test_limits.py``, 11,278 bytes at n = 64, t = 43, under
  the bound of 11,852);
* at most two digest relays per slot, each carrying at most ``t`` relay
  signatures (91 bytes each): ``2·n·RELAY(t)`` with ``RELAY(t) = 256 + 96·t``;
* answers to this node's pulls, at most one payload per slot: ``n·DEAL(n, t)``.

``ROUND(n, t)`` is their sum. A peer's queue holds ``2·ROUND(n, t)`` (two rounds
may overlap at a member that is slightly behind) plus ``POLICY_BURST`` for the
largest honest answer to a policy digest (32 bundles of at most 64 KiB). At
n = 64, t = 43: ROUND ≈ 1.33 MB and the cap ≈ 4.83 MB; at n = 4, t = 3:
≈ 2.18 MB, almost all of it the policy burst. A single frame larger than the
cap is still taken when the peer's queue is empty, so no frame the transport
accepts can wedge a link.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "POLICY_BURST",
    "deal_bytes",
    "deals_answer_bytes",
    "early_messages",
    "peer_queue_bytes",
    "relay_bytes",
    "round_bytes",
]

POLICY_BURST: Final = 32 * 64 * 1024 + 64 * 1024
"""The largest honest answer to one policy digest: 32 bundles of at most 64 KiB, and slack."""


def deal_bytes(n: int, t: int) -> int:
    """An upper bound on one encoded deal bundle with its envelope (see the module doc)."""
    return 100 * t + 110 * n + 512


def relay_bytes(t: int) -> int:
    """An upper bound on one digest relay carrying at most ``t`` relay signatures."""
    return 256 + 96 * t


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


def deals_answer_bytes(n: int, t: int) -> int:
    """The signed payloads one ``DealsAnswer`` may carry: a deal per dealer and a
    justification per dealer revealing at most ``n`` shares (about 40 bytes each)."""
    return n * deal_bytes(n, t) + n * (512 + 48 * n)
