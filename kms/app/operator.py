"""What an operator asks of a node over its admin channel (``kms member …``, ``kms audit
verify --config``): one request with the node's token, a membership proposal built from
the operator's files, the whole audit log read page by page."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from kms.api import admin
from kms.app.config import ConfigError, load

CHANGES = "add | remove | threshold | admission-policy | refresh"
"""The membership changes ``propose_request`` builds."""

AUDIT_PAGE = 1000
"""Audit entries asked for per admin request."""


class AdminUnreachable(Exception):
    """The node's config, admin token or admin socket could not be used."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class AdminRefused(Exception):
    """The node answered and refused the request: its ``error`` and ``reason``."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(str(reply.get("error")))
        self.error = str(reply.get("error"))
        self.reason = reply.get("reason")


class ProposalUsage(Exception):
    """A membership change that cannot be proposed as given (a missing or unreadable input)."""


def admin_request(config: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One admin-channel request to the node of ``config`` (with its token); the reply.

    Raises ``AdminUnreachable`` when it could not be sent, ``AdminRefused`` when the
    node refused it."""
    try:
        cfg = load(config)
        token = cfg.admin_token_file.read_text().strip()
        reply = trio.run(admin.call, cfg.admin_socket, {**request, "token": token})
    except (ConfigError, OSError, ValueError) as exc:
        raise AdminUnreachable(exc) from exc
    if not reply.get("ok"):
        raise AdminRefused(reply)
    return reply


_NEEDS = {
    "add": "add needs --join-request FILE",
    "remove": "remove needs INDEX",
    "threshold": "threshold needs T",
    "admission-policy": "admission-policy needs FILE (an encoded node admission policy)",
}


def propose_request(
    change: str, value: str | None, join_request: Path | None, evidence: Path | None
) -> dict[str, Any]:
    """The admin request that proposes ``change``: a join request's document for add, an
    index (and evidence) for remove, a threshold, an encoded admission policy's file.

    Raises ``ProposalUsage`` for an unknown change, a missing argument or a file that
    cannot be read or parsed."""
    if change != "refresh" and change not in _NEEDS:
        raise ProposalUsage(f"unknown change {change!r} (one of {CHANGES})")
    given = join_request if change == "add" else value
    if change in _NEEDS and given is None:
        raise ProposalUsage(_NEEDS[change])
    req: dict[str, Any] = {"op": "propose", "change": change}
    try:
        if change == "add" and join_request is not None:
            req["join_request"] = json.loads(join_request.read_text())
        elif change == "remove":
            req["index"] = int(value or 0)
            if evidence is not None:
                req["evidence"] = evidence.read_bytes().hex()
        elif change == "threshold":
            req["threshold"] = int(value or 0)
        elif change == "admission-policy":
            req["policy"] = Path(value or "").read_bytes().hex()
    except (OSError, ValueError) as exc:
        raise ProposalUsage(f"{type(exc).__name__}: {exc}") from exc
    return req


def read_audit(
    config: Path, *, admin: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The node's whole audit log over its admin channel (``admin_request``, or ``admin``
    when given, e.g. for in-process nodes): the signed head with the node's own check of
    its copy (``node_check``, asked for once), and every entry in order."""
    entries: list[str] = []
    doc: dict[str, Any] = {}
    while True:
        req = {"op": "audit", "start": len(entries), "limit": AUDIT_PAGE, "check": not entries}
        page: dict[str, Any] = (admin or admin_request)(config, req)["audit"]
        if not entries:
            doc = page
        entries += page["entries"]
        if not page["entries"] or len(entries) >= doc["count"]:
            return doc, entries
