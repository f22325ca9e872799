"""``kms audit verify``: check a node's audit log (the chain check is ``kms.store.audit``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from kms.app.operator import AdminRefused, AdminUnreachable, read_audit
from kms.cli.common import admin_failed, fail, out, print_json
from kms.store.audit import chain_problems, head_problems

audit_app = typer.Typer(help="A node's hash-chained audit log.", no_args_is_help=True)


def _public_head(url: str) -> dict[str, Any]:
    """The signed head a node serves at ``GET /v1/audit/head``; exits 2 if unreadable."""
    try:
        r = httpx.get(url.rstrip("/") + "/v1/audit/head", timeout=10)
        if r.status_code != 200:
            fail(f"the node could not serve its audit head (HTTP {r.status_code})", 2)
        public = r.json()
        if not isinstance(public, dict):
            raise ValueError("the audit head is not a JSON object")
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"cannot read the audit head at {url}: {exc}", 2)
    return public


def _read_chain(config: Path, json_out: bool) -> tuple[dict[str, Any], list[str]]:
    """The whole log over the admin channel (exits as ``admin`` does when it cannot)."""
    try:
        return read_audit(config)
    except (AdminUnreachable, AdminRefused) as exc:
        admin_failed(exc, json_out)


@audit_app.command("verify")
def audit_verify(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="The node's node.toml: read the whole log over its admin channel."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="The node's public HTTP URL: check its signed head."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a node's audit log: the whole hash chain (--config) and/or its public signed head (--url).

    With ``--config`` the entries come over the node's admin channel (the
    public port does not serve them), the chain is recomputed and checked
    against the signed head, and the node checks its own copy too. With
    ``--url`` the public head's signature is checked; with both, the public
    head must also be a head of the chain read over the admin channel.
    """
    if config is None and url is None:
        fail("give --config (the whole chain, over the admin channel) and/or --url (the head)", 2)
    problems: list[str] = []
    public = _public_head(url) if url is not None else None
    if public is not None:
        problems += [f"public head: {p}" for p in head_problems(public)]
    doc: dict[str, Any] = dict(public or {})
    if config is not None:
        doc, entries = _read_chain(config, json_out)
        problems += chain_problems(entries, doc, public)
    result = {
        "ok": not problems,
        "checked": "chain" if config is not None else "head",
        "count": doc["count"],
        "head": doc["head"],
        "identity": doc["identity"],
        "problems": problems,
    }
    if json_out:
        print_json(result)
    else:
        what = "audit log" if config is not None else "audit head"
        out.print(
            (f"{what} verifies: " if not problems else f"{what} BROKEN: ")
            + f"{doc['count']} records, head {doc['head'][:16]}…"
        )
        for p in problems:
            out.print(f"  - {p}")
    raise typer.Exit(0 if not problems else 1)
