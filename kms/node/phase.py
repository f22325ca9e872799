"""The lifecycle of a node: ``NodePhase``, its transition table, and the phase of a view.

A ``NodeCore`` is always in exactly one phase (``NodeCore.phase``). The phase
is what the node's view of the chain says about this node, plus whether a
genesis run is going on before there is a chain (``phase_of``):

* ``RESTORING``: the core is being built from what the node had on disk.
* ``AWAITING_GENESIS``: no chain yet, and no genesis run going on here (not a
  genesis member, between two genesis attempts, before the first tick, or a
  genesis missed): it asks the members for the chain and adopts a trusted one.
* ``GENESIS``: no chain yet, and this node runs a genesis attempt.
* ``FOLLOWING``: it holds a chain, is no member of the head's epoch and never
  was one that it knows of: it follows the chain (a newcomer not admitted yet).
* ``JOINING``: a certified change adds this node to the committee; the
  reshare that makes the next epoch (with it) is not certified yet.
* ``MEMBER``: a member of the head's epoch, no change pending.
* ``RESHARING``: a member of the head's epoch while a certified change waits
  for its reshare (it deals, and receives unless the change removes it).
* ``RETIRED``: it was a member (at genesis, or of an epoch its chain shows) and
  is no member of the head's epoch nor of the pending change's committee.
  Terminal: an index is never given to a member again (``apply_change``).

Only chain adoption moves a node between the phases that hold a chain, and
a node never loses its chain, so the chain phases never lead back to
``AWAITING_GENESIS`` or ``GENESIS``. A catch-up (``ChainUpdate`` with several
epochs) may skip phases, hence the direct edges such as ``FOLLOWING`` →
``RETIRED``.

The diagram in ``docs/protocols/node-lifecycle.md`` is generated from
``TRANSITIONS`` (``scripts/make_state_diagrams.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Collection

from mpc.errors import LocalProtocolError
from mpc.ids import ParticipantIndex


class NodePhase(enum.Enum):
    RESTORING = "restoring"
    AWAITING_GENESIS = "awaiting-genesis"
    GENESIS = "genesis"
    FOLLOWING = "following"
    JOINING = "joining"
    MEMBER = "member"
    RESHARING = "resharing"
    RETIRED = "retired"


_CHAIN_PHASES = (
    NodePhase.FOLLOWING,
    NodePhase.JOINING,
    NodePhase.MEMBER,
    NodePhase.RESHARING,
    NodePhase.RETIRED,
)

TRANSITIONS: dict[NodePhase, tuple[NodePhase, ...]] = {
    # Restored without a chain, or with one (possibly with a change pending).
    NodePhase.RESTORING: (NodePhase.AWAITING_GENESIS, *_CHAIN_PHASES),
    # A genesis attempt starts, or a trusted chain is adopted (pinned, endorsed).
    NodePhase.AWAITING_GENESIS: (NodePhase.GENESIS, *_CHAIN_PHASES),
    # The attempt failed (the next one has not started, or was missed), or its
    # certificate (or a later chain, from a catch-up) is adopted. A genesis member
    # is never a newcomer: without membership it is retired.
    NodePhase.GENESIS: (
        NodePhase.AWAITING_GENESIS,
        NodePhase.MEMBER,
        NodePhase.RESHARING,
        NodePhase.RETIRED,
    ),
    # A change adds it; or a catch-up past the reshare that added it (and maybe removed it).
    NodePhase.FOLLOWING: (
        NodePhase.JOINING,
        NodePhase.MEMBER,
        NodePhase.RESHARING,
        NodePhase.RETIRED,
    ),
    # Its reshare (or a later epoch, from a catch-up) is certified; or a higher attempt
    # of the head's epoch is certified after the change was, and the chain it heads
    # (which ranks higher) replaces this one without the change.
    NodePhase.JOINING: (
        NodePhase.FOLLOWING,
        NodePhase.MEMBER,
        NodePhase.RESHARING,
        NodePhase.RETIRED,
    ),
    # A change is certified; or a catch-up past the change that removed it.
    NodePhase.MEMBER: (NodePhase.RESHARING, NodePhase.RETIRED),
    # The reshare is certified: still a member, or removed by it.
    NodePhase.RESHARING: (NodePhase.MEMBER, NodePhase.RETIRED),
    NodePhase.RETIRED: (),
}
"""The allowed phase changes: phase → the phases it may move to."""

TERMINAL_NODE_PHASES = frozenset(p for p, nxt in TRANSITIONS.items() if not nxt)


def check_transition(current: NodePhase, new: NodePhase) -> None:
    """Raise ``LocalProtocolError`` naming both phases unless ``TRANSITIONS`` allows it."""
    if new not in TRANSITIONS[current]:
        raise LocalProtocolError(f"illegal node phase transition {current.name} -> {new.name}")


def phase_of(
    me: ParticipantIndex,
    *,
    has_chain: bool,
    genesis_running: bool,
    committee: Collection[ParticipantIndex],
    incoming: Collection[ParticipantIndex],
    pending: bool,
    was_member: bool,
) -> NodePhase:
    """The phase a view puts node ``me`` in.

    ``committee`` is the head epoch's committee; ``incoming`` the members of the
    next epoch a pending certified change adds (empty without one); ``was_member``
    whether this node knows it was a member of an earlier epoch.
    """
    if not has_chain:
        return NodePhase.GENESIS if genesis_running else NodePhase.AWAITING_GENESIS
    if me in committee:
        return NodePhase.RESHARING if pending else NodePhase.MEMBER
    if me in incoming:
        return NodePhase.JOINING
    return NodePhase.RETIRED if was_member else NodePhase.FOLLOWING
