"""Resharing and proactive refresh (same master public key, new shares).

The protocol is the sharing session of ``mpc.dkg`` with ``kind=RunKind.RESHARE``:
each old member deals a sharing of its own share, whose constant-term
commitment must equal its certified public share; the new members agree on
the qualified old dealers and combine with Lagrange coefficients. A refresh
is a reshare to the same committee. ``RetentionTracker`` decides when an old
share may be deleted.
"""

from mpc.reshare.retention import Acknowledgement, RetentionTracker, required_acknowledgements

__all__ = ["Acknowledgement", "RetentionTracker", "required_acknowledgements"]
