"""The audit role of a node: the signed head of its audit log, and its export.

The audit records themselves are written by the release role in the same store
transaction as the nonce they answer (``NodeStore.record_release``); this role
only reads the log and signs its head. Ports: the store and the node's identity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kms.store import NodeStore, StoreError
from kms.store.audit import AUDIT_HEAD_CONTEXT, head_statement
from mpc.sig import SigningKey

log = logging.getLogger("quorum_kms.node")


class AuditLog:
    """Reads of a node's audit log: the signed head (public) and pages of entries (admin)."""

    def __init__(self, store: NodeStore, identity: Callable[[], SigningKey]) -> None:
        self._store = store
        self._identity = identity
        self._head: dict[str, Any] | None = None
        """The last signed head; signed again only when the log has grown."""

    def head(self) -> dict[str, Any]:
        """The audit log's count and head hash, signed by this node's identity (public).

        One read of the log's last row (a primary-key lookup) per call; the
        signature is made once per change of the log. The chain is never
        walked here: ``export(check=True)`` on the admin channel does that.
        """
        count, head = self._store.audit_head()
        cached = self._head
        if cached is None or cached["count"] != count or cached["head"] != head.hex():
            identity = self._identity()
            statement = head_statement(count, head)
            cached = self._head = {
                "count": count,
                "head": head.hex(),
                "identity": identity.verify_key().to_bytes().hex(),
                "signature": identity.sign(AUDIT_HEAD_CONTEXT, statement).hex(),
            }
        return dict(cached)

    def export(self, start: int = 0, limit: int = 1000, *, check: bool = False) -> dict[str, Any]:
        """Audit entries (canonical JSON) from ``start`` and the signed head (admin channel only).

        ``check`` also recomputes the whole chain here (``node_check``): a
        walk over every entry, so it is asked for once per export, not per page.
        """
        head = self.head()
        entries = self._store.audit_entries(start, limit)
        out = {
            **head,
            "start": start,
            "entries": [e.entry.decode("utf-8", "replace") for e in entries],
        }
        if check:
            try:
                self._store.audit_verify()
                out["node_check"] = "ok"
            except (StoreError, TypeError, ValueError) as exc:  # an edited file may hold anything
                out["node_check"] = f"broken: {exc}"
                log.warning("audit log check failed", extra={"fields": {"reason": str(exc)}})
        return out
