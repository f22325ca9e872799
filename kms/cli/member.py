"""``kms member``: committee membership over the node's admin channel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kms.app.config import ConfigError
from kms.app.operator import (
    CHANGES,
    AdminRefused,
    ProposalUsage,
    WaitFor,
    WaitTimedOut,
    propose_request,
    status_line,
    wait_for,
    window_lines,
)
from kms.cli.common import admin, admin_failed, fail, out, print_json, say

member_app = typer.Typer(
    help="Committee membership (over the admin channel).", no_args_is_help=True
)

MEMBER_VIEW = (
    "index",
    "epoch",
    "threshold",
    "master_public_key",
    "committee",
    "has_share",
    "running",
    "pending_proposals",
    "approvals_waiting",
    "locked_proposal",
    "refused_approvals",
    "retained_shares",
    "last_refresh",
    "member",
    "now",
    "genesis",
    "next_window",
    "decision_window",
)


@member_app.command("list")
def member_list(
    config: Annotated[Path, typer.Option("--config")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Committee, threshold, epoch, master public key, the next decision window (or the
    genesis countdown), pending proposals (ids, approvals), last refresh, retained shares."""
    st = admin(config, {"op": "status"}, json_out)["status"]
    view = {k: st.get(k) for k in MEMBER_VIEW}
    if json_out:
        print_json(view)
        return
    say(status_line(st))
    for m in view["committee"] or []:
        if m.get("url"):
            say(f"member {m['index']} url {m['url']}")
    say(f"master public key {view['master_public_key'] or '(none yet)'}")
    for line in window_lines(st):
        say(line)
    say(f"last refresh {view['last_refresh'] or '(none since the node started)'}")
    say("pending proposals" + ("" if view["pending_proposals"] else " (none)"))
    for p in view["pending_proposals"] or []:
        say(f"  {p['kind']:16} {p['id']}  approvals {p['approvals']}")
    for pid in view["approvals_waiting"] or []:
        say(f"approved, waiting for the proposal: {pid}")
    for r in view["refused_approvals"] or []:
        say(f"refused {r['id']}: {r['reason']}")
    for r in view["retained_shares"] or []:
        say(
            f"old share of epoch {r['epoch']} retained, waiting for acknowledgements from "
            f"{r['missing_acknowledgements']}"
        )


@member_app.command("mpk")
def member_mpk(config: Annotated[Path, typer.Option("--config")]) -> None:
    """The committee's master public key, whole, in hex, on one line (exit 1 before
    genesis)."""
    st = admin(config, {"op": "status"})["status"]
    if not st.get("master_public_key"):
        fail(f"no master public key yet: {status_line(st)}", 1)
    say(st["master_public_key"])


@member_app.command("wait")
def member_wait(
    config: Annotated[Path, typer.Option("--config")],
    epoch: Annotated[int | None, typer.Option("--epoch", help="Until epoch >= N.")] = None,
    member: Annotated[
        int | None, typer.Option("--member", help="Until index K is in the committee.")
    ] = None,
    not_member: Annotated[
        int | None, typer.Option("--not-member", help="Until index K is not in the committee.")
    ] = None,
    serving: Annotated[
        bool, typer.Option("--serving", help="Until this node holds a share of the epoch.")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds; then exit 1.")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Block until the node's view meets every condition given (asking its status every
    0.2 s; with none, until it answers); print the status line reached. Exit 1 on timeout."""
    cond = WaitFor(epoch, member, not_member, serving)
    try:
        st = wait_for(config, cond, timeout)
    except (ConfigError, OSError) as exc:
        fail(f"cannot use {config}: {exc}", 2)
    except AdminRefused as exc:
        admin_failed(exc, json_out)
    except WaitTimedOut as exc:
        if json_out:
            print_json({"ok": False, "error": str(exc)})
            raise typer.Exit(1) from None
        fail(str(exc), 1)
    if json_out:
        print_json({"ok": True, "status": st})
    else:
        say(status_line(st))


@member_app.command("propose")
def member_propose(
    config: Annotated[Path, typer.Option("--config")],
    change: Annotated[str, typer.Argument(help=CHANGES)],
    value: Annotated[
        str | None,
        typer.Argument(help="INDEX for remove, T for threshold, FILE for admission-policy"),
    ] = None,
    join_request: Annotated[Path | None, typer.Option("--join-request")] = None,
    evidence: Annotated[
        Path | None, typer.Option("--evidence", help="Evidence file for remove.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Propose a membership change; prints the proposal id.

    The node checks the change first: a join request's quote against the
    committee's node admission policy, a removal's evidence against the chain.
    """
    try:
        req = propose_request(change, value, join_request, evidence)
    except ProposalUsage as exc:
        if json_out:
            print_json({"ok": False, "error": str(exc)})
            raise typer.Exit(2) from None
        fail(str(exc), 2)
    reply = admin(config, req, json_out)
    if json_out:
        print_json({"ok": True, "proposal_id": reply["proposal_id"], "change": change})
    else:
        say(reply["proposal_id"])


@member_app.command("approve")
def member_approve(
    config: Annotated[Path, typer.Option("--config")],
    proposal_id: Annotated[str, typer.Argument()],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Approve a proposal by id (its approval travels in this node's next ballot).

    A proposal the node has seen is checked now (a refusal exits 1 with the
    reason); one not seen yet is checked when it arrives (see ``member list``).
    """
    reply = admin(config, {"op": "approve", "proposal_id": proposal_id}, json_out)
    checked = bool(reply.get("checked", True))
    if json_out:
        print_json({"ok": True, "approved": proposal_id, "checked": checked})
    else:
        say(f"approved {proposal_id}" + ("" if checked else " (checked once it arrives)"))


@member_app.command("reload-policies")
def member_reload_policies(
    config: Annotated[Path, typer.Option("--config")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Re-read the node's policies directory: admit the apps placed there and take newer
    versions (never below an app's floor; a frozen app stays frozen: see resolve-fork)."""
    reply = admin(config, {"op": "reload-policies"}, json_out)
    counts = {k: reply.get(k, 0) for k in ("admitted", "updated", "refused", "frozen")}
    if json_out:
        print_json({"ok": True, **counts, "serving": reply.get("serving")})
        return
    say(", ".join(f"{k} {v}" for k, v in counts.items()))


@member_app.command("resolve-fork")
def member_resolve_fork(
    app_id: Annotated[str, typer.Argument(help="The frozen app's id (hex).")],
    bundle_file: Annotated[Path, typer.Argument(help="The owner's bundle on the branch kept.")],
    config: Annotated[Path, typer.Option("--config")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Lift a frozen app's freeze, on its owner's word, with the owner's bundle: its chain
    extends the branch kept and its version is above the app's floor."""
    raw = bundle_file.read_bytes()
    reply = admin(config, {"op": "resolve-fork", "app_id": app_id, "bundle": raw.hex()}, json_out)
    if json_out:
        print_json({"ok": True, **{k: v for k, v in reply.items() if k != "ok"}})
        return
    say(f"resolved {reply.get('app_id')} at version {reply.get('version')}")


@member_app.command("evidence")
def member_evidence(
    config: Annotated[Path, typer.Option("--config")],
    export: Annotated[
        Path | None, typer.Option("--export", help="Write each piece of evidence to DIR.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evidence of misbehaviour this node collected (for ``member propose remove --evidence``)."""
    items = admin(config, {"op": "evidence"}, json_out)["evidence"]
    files = []
    if export is not None:
        export.mkdir(parents=True, exist_ok=True)
        for e in items:
            f = export / f"{e['kind']}-node{e['culprit']}-{e['id'][:16]}.msgpack"
            f.write_bytes(bytes.fromhex(e["evidence"]))
            files.append(str(f))
    listed = [{k: v for k, v in e.items() if k != "evidence"} for e in items]
    if json_out:
        print_json({"ok": True, "evidence": listed, "files": files})
        return
    if not listed:
        say("(none)")
    for e in listed:
        say(f"{e['id'][:16]} node {e['culprit']} {e['kind']}: {e['reason']}")
    for name in files:
        say(f"wrote {name}")


@member_app.command("admit-app")
def member_admit_app(
    bundle_file: Annotated[Path, typer.Argument(metavar="FILE", help="The app's signed bundle.")],
    config: Annotated[Path, typer.Option("--config")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Admit an app from its owner's signed bundle: copy it into the node's policies
    directory (as <app id>-v<version>.policy) and have the node re-read the directory."""
    from kms.app.owner import OwnerError, admit_bundle
    from kms.cli.tee import die

    try:
        info = admit_bundle(config, bundle_file)
    except OwnerError as exc:
        die(str(exc))
    if not json_out:  # said first: the file stays even if the node cannot be reached
        out.print(
            f"app {info['app_id']} version {info['version']} placed in {info['file']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    reply = admin(config, {"op": "reload-policies"}, json_out)
    counts = {k: reply.get(k, 0) for k in ("admitted", "updated", "refused", "frozen")}
    if json_out:
        print_json({"ok": True, **info, **counts})
        return
    out.print("node reloaded: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
