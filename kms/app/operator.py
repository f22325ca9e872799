"""What an operator asks of a node over its admin channel (``kms member …``, ``kms audit
verify --config``): one request with the node's token, a membership proposal built from
the operator's files, the whole audit log read page by page."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from kms.api import admin
from kms.app.config import ConfigError, load

CHANGES = "add | remove | threshold | admission-policy | refresh"
"""The membership changes ``propose_request`` builds."""

AUDIT_PAGE = 1000
MAX_AUDIT_ENTRIES = 10_000_000
"""Most audit entries ``read_audit`` reads from one node (a bound on the auditor's memory)."""
"""Audit entries asked for per admin request."""


class AdminUnreachable(Exception):
    """The node's config, admin token or admin socket could not be used; the message says
    which, with its path, and what to do."""

    def __init__(self, message: str, cause: Exception | None = None) -> None:
        super().__init__(message)
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
    except (ConfigError, OSError, ValueError) as exc:
        raise AdminUnreachable(f"cannot use {config}: {_why(exc)}", exc) from exc
    try:
        token = cfg.admin_token_file.read_text().strip()
    except OSError as exc:
        hint = (
            "run the command as the node's user"
            if isinstance(exc, PermissionError)
            else f"check admin_token_file in {config}"
        )
        raise AdminUnreachable(
            f"cannot read the admin token {cfg.admin_token_file}: {_why(exc)} ({hint})", exc
        ) from exc
    sock = cfg.admin_socket
    try:
        reply = trio.run(admin.call, sock, {**request, "token": token})
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AdminUnreachable(
            f"cannot connect to the admin socket {sock}: {_why(exc)}; is the node running?"
            f" (start it with `kms node run --config {config}`)",
            exc,
        ) from exc
    except PermissionError as exc:
        raise AdminUnreachable(
            f"cannot connect to the admin socket {sock}: permission denied (run the command"
            " as the node's user)",
            exc,
        ) from exc
    except (OSError, ValueError, admin.AdminError) as exc:
        raise AdminUnreachable(
            f"no valid answer on the admin socket {sock}: {_why(exc)}; is the node running?",
            exc,
        ) from exc
    if not reply.get("ok"):
        raise AdminRefused(reply)
    return reply


def _why(exc: Exception) -> str:
    """An exception's text for an operator: the OS's reason for an OS error, else its message."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower() if exc.strerror[:1].isupper() else exc.strerror
    return str(exc) or "failed"


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
    except OSError as exc:
        name = exc.filename or (join_request if change == "add" else value)
        raise ProposalUsage(f"cannot read {name}: {_why(exc)}") from exc
    except ValueError as exc:
        what = {
            "add": f"the join request {join_request} is not valid JSON",
            "remove": f"INDEX must be a whole number, not {value!r}",
            "threshold": f"T must be a whole number, not {value!r}",
        }.get(change, str(exc))
        raise ProposalUsage(what) from exc
    return req


def read_audit(
    config: Path, *, admin: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The node's whole audit log over its admin channel (``admin_request``, or ``admin``
    when given, e.g. for in-process nodes): the signed head with the node's own check of
    its copy (``node_check``, asked for once), and every entry in order.

    The node is not trusted to end the walk: a count above ``MAX_AUDIT_ENTRIES``, a page
    longer than asked for, or entries beyond the count raise ``ValueError``.
    """
    entries: list[str] = []
    doc: dict[str, Any] = {}
    while True:
        req = {"op": "audit", "start": len(entries), "limit": AUDIT_PAGE, "check": not entries}
        page: dict[str, Any] = (admin or admin_request)(config, req)["audit"]
        if not entries:
            doc = page
            count = doc["count"]
            if not isinstance(count, int) or not 0 <= count <= MAX_AUDIT_ENTRIES:
                raise ValueError(
                    f"the node says its log holds {count!r} entries; "
                    f"at most {MAX_AUDIT_ENTRIES} are read"
                )
        got = page["entries"]
        if not isinstance(got, list) or len(got) > AUDIT_PAGE:
            raise ValueError(
                f"the node answered a page that is not a list of at most {AUDIT_PAGE} entries"
            )
        entries += got
        if len(entries) > doc["count"]:
            raise ValueError("the node sent more entries than its log holds")
        if not got or len(entries) == doc["count"]:
            return doc, entries


# --- what ``kms member list`` and ``kms member wait`` print and wait for ------------------


def status_line(st: dict[str, Any]) -> str:
    """One line of a node's status (the admin ``status`` op's document): epoch,
    threshold, committee, this node's share and role, and a run going on."""
    if st.get("epoch") is None:
        g = st.get("genesis") or {}
        when = f"; genesis at {g['at']:.0f} (in {g['in_seconds']:.0f} s)" if g else ""
        return f"node {st.get('index')}: no epoch yet{when}"
    committee = ", ".join(str(m["index"]) for m in st.get("committee") or [])
    share = "holds a share" if st.get("has_share") else "holds no share"
    role = "member" if st.get("member") else "not a member"
    running = f", running {st['running']}" if st.get("running") else ""
    return (
        f"node {st.get('index')}: epoch {st['epoch']}, threshold {st.get('threshold')},"
        f" committee [{committee}], {role}, {share}{running}"
    )


def window_lines(st: dict[str, Any]) -> list[str]:
    """The genesis countdown or the next decision window (Unix time and seconds from now),
    and a window going on."""
    out = []
    g = st.get("genesis")
    if g:
        out.append(f"genesis at {g['at']:.0f} ({_utc(g['at'])}), in {g['in_seconds']:.1f} s")
    w = st.get("next_window")
    if w:
        out.append(
            f"next decision window {w['index']} at {w['at']:.0f} ({_utc(w['at'])}),"
            f" in {w['in_seconds']:.1f} s"
        )
    d = st.get("decision_window")
    if d:
        out.append(f"decision window {d['index']} going on ({d['phase']})")
    return out


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class WaitFor:
    """What ``kms member wait`` waits for in the node's status (every condition given)."""

    epoch: int | None = None
    """The node's epoch is at least this."""
    member: int | None = None
    """This index is in the current committee."""
    not_member: int | None = None
    """This index is not in the current committee (the node has an epoch)."""
    serving: bool = False
    """The node is a member of the current epoch and holds a share of it."""

    def met(self, st: dict[str, Any]) -> bool:
        epoch = st.get("epoch")
        committee = {int(m["index"]) for m in st.get("committee") or []}
        if self.epoch is not None and (epoch is None or epoch < self.epoch):
            return False
        if self.member is not None and self.member not in committee:
            return False
        if self.not_member is not None and (epoch is None or self.not_member in committee):
            return False
        return not self.serving or bool(
            st.get("has_share") and int(st.get("index", -1)) in committee
        )

    def describe(self) -> str:
        parts = []
        if self.epoch is not None:
            parts.append(f"epoch >= {self.epoch}")
        if self.member is not None:
            parts.append(f"{self.member} in the committee")
        if self.not_member is not None:
            parts.append(f"{self.not_member} not in the committee")
        if self.serving:
            parts.append("a share of the current epoch")
        return ", ".join(parts) or "an answer"


class WaitTimedOut(Exception):
    """The node's status did not meet the conditions in time."""


WAIT_POLL = 0.2
"""Seconds between two ``status`` requests of ``kms member wait``."""


def wait_for(
    config: Path,
    cond: WaitFor,
    timeout: float,
    *,
    poll: float = WAIT_POLL,
    admin: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Ask the node's status every ``poll`` seconds until it meets ``cond``; return it.

    A node not answering yet (its admin socket not up: it is starting) is asked again;
    ``AdminRefused`` (e.g. a wrong token) and a config that cannot be used raise at once;
    ``WaitTimedOut`` after ``timeout`` seconds, saying what the node last showed."""
    load(config)  # a config that cannot be read is a usage error, not something to wait for
    ask = admin or admin_request
    deadline = clock() + timeout
    last = "no answer"
    while True:
        try:
            st = ask(config, {"op": "status"})["status"]
        except AdminUnreachable as exc:
            last = str(exc)
        else:
            if cond.met(st):
                return dict(st)
            last = status_line(st)
        if clock() >= deadline:
            raise WaitTimedOut(
                f"timed out after {timeout:g} s waiting for {cond.describe()}; last: {last}"
            )
        sleep(poll)
