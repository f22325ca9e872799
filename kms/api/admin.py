"""The admin channel: a Unix socket, one JSON request and one JSON reply per connection.

Every request carries the token that ``kms node init`` wrote (mode 0600); a
request without the right token is refused and nothing happens. The socket
file itself is created with mode 0600, so only the node's user can connect.

The token can be rotated while the node runs (``kms node rotate-admin-token``):
``AdminToken`` looks at the token file's identity (device, inode, size,
modification time) on every request and reads the file again when it
changed, so the old token stops working at the next request. A token file
that cannot be read, or is empty, refuses every request (logged once per
change of the file), and the node keeps running.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from kms.node.model import ChangeRefused
from kms.store.errors import StorageFull
from mpc.dkg.messages import Participant
from mpc.errors import InvalidSignature, LocalProtocolError
from mpc.membership import (
    AddMember,
    ChangeAdmissionPolicy,
    ChangeThreshold,
    Refresh,
    RemoveMember,
)
from mpc.membership.messages import Change

MAX_REQUEST = 1024 * 1024
MAX_AUDIT_PAGE = 10000
"""At most this many audit entries per ``audit`` reply; a reader pages with ``start``."""


class AdminTarget(Protocol):
    def status(self) -> dict[str, Any]: ...

    def propose(self, change: Change) -> bytes: ...

    def approve(self, proposal_id: bytes) -> bool: ...

    def evidence(self) -> list[dict[str, Any]]: ...

    def audit_export(
        self, start: int = 0, limit: int = 1000, *, check: bool = False
    ) -> dict[str, Any]: ...


class AdminError(Exception):
    """The admin request was refused or failed."""


log = logging.getLogger("quorum_kms.node")

UNUSABLE_REPLY = "unauthorised: the node has no usable admin token (see its log)"
"""The reply to every request while the token file cannot be read or is empty."""


class AdminToken:
    """The admin token of ``path``, read again whenever the file changes.

    ``current()`` costs one ``stat`` per request; the file is read only when its
    (device, inode, size, mtime) changed, so an atomic replacement (a new inode)
    or an edit in place takes effect at the next request. ``None`` while the file
    cannot be read or holds no token: every request is then refused.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, ...] | None = None
        self._token: bytes | None = None
        self._problem: str | None = None

    def _refuse(self, stamp: tuple[int, ...] | None, problem: str) -> None:
        if problem != self._problem:
            log.error(
                "admin token unusable: every admin request is refused until it is fixed",
                extra={"fields": {"file": str(self.path), "reason": problem}},
            )
        self._stamp, self._token, self._problem = stamp, None, problem

    def current(self) -> bytes | None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._refuse(None, f"cannot read the admin token file: {exc.strerror}")
            return None
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return self._token
        try:
            token = self.path.read_bytes().strip()
        except OSError as exc:
            self._refuse(None, f"cannot read the admin token file: {exc.strerror}")
            return None
        if not token:
            self._refuse(stamp, "the admin token file is empty")
            return None
        if self._token is not None or self._problem is not None:
            log.info("admin token reloaded", extra={"fields": {"file": str(self.path)}})
        self._stamp, self._token, self._problem = stamp, token, None
        return token


TokenSource = bytes | AdminToken | Callable[[], bytes | None]
"""A fixed token, a token file (``AdminToken``) or any function giving the current token."""


def _expected(token: TokenSource) -> bytes | None:
    if isinstance(token, bytes):
        return token
    if isinstance(token, AdminToken):
        return token.current()
    return token()


def parse_change(req: dict[str, Any]) -> Change:
    kind = req.get("change")
    if kind == "add":
        jr = req["join_request"]
        p = Participant(
            int(jr["index"]),
            bytes.fromhex(jr["identity"]),
            bytes.fromhex(jr["dkg_key"]),
            bytes.fromhex(jr["dkg_key_signature"]),
        )
        p.check()
        addrs = tuple(str(a) for a in jr.get("addresses", []))
        add = AddMember(
            p,
            bytes.fromhex(jr.get("attestation", "")),
            addrs,
            int(jr.get("epoch", 0)),
            bytes.fromhex(str(jr.get("head", ""))),
            str(jr.get("url", "")),
        )
        add.validate()  # what every member checks on decoding it
        return add
    if kind == "remove":
        return RemoveMember(int(req["index"]), bytes.fromhex(req.get("evidence", "")))
    if kind == "threshold":
        return ChangeThreshold(int(req["threshold"]))
    if kind == "admission-policy":
        return ChangeAdmissionPolicy(bytes.fromhex(str(req["policy"])))
    if kind == "refresh":
        return Refresh()
    raise AdminError(f"unknown change {kind!r}")


READ_OPS = frozenset({"status", "evidence", "audit"})
"""Operations that only read: logged at ``debug`` (``kms member wait`` polls ``status``);
every other operation is an operator action, logged at ``info``."""


def request_fields(req: dict[str, Any]) -> dict[str, Any]:
    """What an admin request's log line says about it: the operation and its arguments,
    never the token; files and documents as their size and SHA-256 prefix."""
    out: dict[str, Any] = {"op": str(req.get("op"))[:40]}
    change = req.get("change")
    if change is not None:
        out["change"] = str(change)[:40]
    for key in ("index", "threshold", "proposal_id", "app_id", "start", "limit"):
        if key in req and isinstance(req[key], int | str):
            out[key] = req[key] if isinstance(req[key], int) else str(req[key])[:80]
    jr = req.get("join_request")
    if isinstance(jr, dict):
        for key in ("index", "peer_id", "identity"):
            if isinstance(jr.get(key), int | str):
                out[f"join_{key}"] = jr[key] if isinstance(jr[key], int) else str(jr[key])[:80]
        if isinstance(jr.get("addresses"), list):
            out["join_addresses"] = [str(a)[:200] for a in jr["addresses"][:8]]
    for key in ("policy", "evidence", "bundle"):
        value = req.get(key)
        if isinstance(value, str):
            try:
                data = bytes.fromhex(value)
            except ValueError:
                data = value.encode()
            out[key] = f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"
    return out


def handle(
    target: AdminTarget, token: TokenSource, raw: bytes, *, peer: dict[str, int] | None = None
) -> dict[str, Any]:
    """One admin request: the reply, and one log line (``admin request``) saying who asked
    (``peer``: the connecting process's ``pid``, ``uid`` and ``gid`` when known), what,
    and how it ended."""
    req: Any = None
    if raw.count(b"[") + raw.count(b"{") > 64:
        reply: dict[str, Any] = {"ok": False, "error": "malformed request"}
    else:
        try:
            req = json.loads(raw)
        except ValueError:
            req = None
        expected = _expected(token) if isinstance(req, dict) else None
        if not isinstance(req, dict):
            reply = {"ok": False, "error": "malformed request"}
        elif expected is None:
            reply = {"ok": False, "error": UNUSABLE_REPLY}
        elif not hmac.compare_digest(
            str(req.get("token", "")).encode("utf-8", "surrogatepass"), expected
        ):
            reply = {"ok": False, "error": "unauthorised"}
        else:
            reply = _dispatch(target, req)
    fields: dict[str, Any] = request_fields(req) if isinstance(req, dict) else {"op": None}
    fields.update({f"peer_{k}": v for k, v in (peer or {}).items()})
    fields["ok"] = bool(reply.get("ok"))
    if not reply.get("ok"):
        fields["error"] = str(reply.get("error"))[:300]
    elif "proposal_id" in reply:
        fields["proposal_id"] = reply["proposal_id"]
    if fields["ok"] and fields["op"] in READ_OPS:
        level = logging.DEBUG
    elif reply.get("error") in ("unauthorised", "malformed request", UNUSABLE_REPLY):
        level = logging.WARNING
    else:
        level = logging.INFO
    log.log(level, "admin request", extra={"fields": fields})
    return reply


def _dispatch(target: AdminTarget, req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    try:
        if op == "status":
            return {"ok": True, "status": target.status()}
        if op == "propose":
            pid = target.propose(parse_change(req))
            return {"ok": True, "proposal_id": pid.hex()}
        if op == "approve":
            known = target.approve(bytes.fromhex(str(req["proposal_id"])))
            # Not seen yet: checked and approved once it shows up in a decided window.
            return {"ok": True, "checked": known}
        if op == "evidence":
            return {"ok": True, "evidence": target.evidence()}
        if op == "audit":
            start = int(req.get("start", 0))
            limit = int(req.get("limit", 1000))
            if start < 0 or not 1 <= limit <= MAX_AUDIT_PAGE:
                raise ValueError(f"start >= 0 and 1 <= limit <= {MAX_AUDIT_PAGE}")
            export = target.audit_export(start, limit, check=bool(req.get("check", False)))
            return {"ok": True, "audit": export}
        if op == "reload-policies":
            reload = getattr(target, "reload_policies", None)
            if reload is None:
                return {"ok": False, "error": "this node keeps no app policies"}
            return {"ok": True, **reload()}
        if op == "resolve-fork":
            resolve = getattr(target, "resolve_fork", None)
            if resolve is None:
                return {"ok": False, "error": "this node keeps no app policies"}
            out = resolve(bytes.fromhex(str(req["app_id"])), bytes.fromhex(str(req["bundle"])))
            if not out.get("resolved"):
                return {
                    "ok": False,
                    "error": f"refused: {out.get('detail', '')}",
                    "reason": out.get("reason"),
                }
            return {"ok": True, **out}
    except ChangeRefused as exc:
        return {"ok": False, "error": f"refused: {exc}", "reason": exc.reason}
    except StorageFull as exc:
        # The node's disk is full: it refuses every change until it can store again.
        return {"ok": False, "error": f"refused: {exc}", "reason": "storage-full"}
    except (
        KeyError,
        ValueError,
        TypeError,
        ArithmeticError,
        AdminError,
        LocalProtocolError,
        InvalidSignature,
    ) as exc:
        return {"ok": False, "error": _error_text(exc)}
    return {"ok": False, "error": f"unknown operation {op!r}"}


def _error_text(exc: Exception) -> str:
    """What a failed admin request says, for the operator (no Python class names)."""
    if isinstance(exc, KeyError):
        return f"malformed request: it lacks {exc.args[0]!r}"
    if isinstance(exc, ValueError | TypeError | ArithmeticError):
        return f"malformed request: {exc}"
    return str(exc)


def peer_credentials(sock: Any) -> dict[str, int] | None:
    """The connecting process's ``pid``, ``uid`` and ``gid`` (``SO_PEERCRED``; Linux), or
    ``None`` where the platform does not say."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
    except (OSError, struct.error):
        return None
    return {"pid": pid, "uid": uid, "gid": gid}


async def serve(
    target: AdminTarget,
    socket_path: Path,
    token: TokenSource,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin channel on a Unix socket until cancelled."""
    if socket_path.exists():
        socket_path.unlink()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        await sock.bind(str(socket_path))
    finally:
        os.umask(old)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            buf = b""
            with trio.move_on_after(10):
                while not buf.endswith(b"\n") and len(buf) < MAX_REQUEST:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    buf += chunk
            try:
                reply = handle(target, token, buf, peer=peer_credentials(stream.socket))
            except Exception:  # one request never stops the node
                log.exception("admin request failed")
                reply = {"ok": False, "error": "internal error: see the node's log"}
            try:
                await stream.send_all(json.dumps(reply).encode() + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away before the reply

    async with listener:
        task_status.started()
        await trio.serve_listeners(one, [listener])


async def call(socket_path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """Client side: send one request and return the reply."""
    stream = await trio.open_unix_socket(str(socket_path))
    async with stream:
        await stream.send_all(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf or b"{}")
    if not isinstance(reply, dict):
        raise AdminError("malformed reply")
    return reply
