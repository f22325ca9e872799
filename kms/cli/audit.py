"""``kms audit verify`` and ``kms audit show``: a node's audit log (``kms.app.audit``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from kms.app.audit import (
    AuditReport,
    AuditUnavailable,
    describe_entry,
    read_expected_head,
    verify_node_audit,
)
from kms.app.config import ConfigError, NodeFileConfig, load
from kms.app.operator import AUDIT_PAGE, AdminRefused, AdminUnreachable
from kms.cli.common import admin, admin_failed, fail, out, pinned_mpk, print_json
from mpc.math import G2

audit_app = typer.Typer(help="A node's hash-chained audit log.", no_args_is_help=True)

MPK_HELP = (
    "no master public key: give --mpk HEX (`kms member mpk --config node.toml` prints it) "
    "or set [committee] genesis_mpk in node.toml"
)


def _config(path: Path) -> NodeFileConfig:
    try:
        return load(path)
    except ConfigError as exc:
        fail(f"{exc}", 2)


def _mpk(cfg: NodeFileConfig, mpk_hex: str | None) -> G2:
    if mpk_hex is not None:
        return pinned_mpk(mpk_hex)
    if cfg.protocol.genesis_mpk is not None:
        return pinned_mpk(cfg.protocol.genesis_mpk.hex())
    fail(MPK_HELP, 2)


def _node_url(cfg: NodeFileConfig, url: str | None) -> str:
    """The node's public URL: ``--url``, else ``[node] public_url``, else its ``http`` address
    when that is one a client can dial."""
    if url is not None:
        return url
    public = getattr(cfg, "public_url", None)
    if public:
        return str(public)
    if cfg.http_host in ("0.0.0.0", "::", "") or cfg.http_port == 0:  # noqa: S104
        fail(
            f"cannot tell the node's public URL from {cfg.path} (http = "
            f"{cfg.http_host}:{cfg.http_port}): give --url",
            2,
        )
    host = f"[{cfg.http_host}]" if ":" in cfg.http_host else cfg.http_host
    return f"http://{host}:{cfg.http_port}"


def _print_report(report: AuditReport, json_out: bool) -> None:
    if json_out:
        print_json(report.as_json())
    else:
        pinned = report.pinned
        who = "member" if pinned.current else "removed member"
        out.print(
            ("audit log verifies: " if report.ok else "audit log BROKEN: ")
            + f"{report.doc.get('count')} records, head {str(report.doc.get('head'))[:16]}…, "
            + f"signed by {who} {pinned.index} ({pinned.identity.hex()[:16]}…, "
            + f"chain at epoch {pinned.chain_epoch} from {pinned.chain_url})",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        for p in report.problems:
            out.print(f"  - {p}", soft_wrap=True, markup=False, highlight=False)


@audit_app.command("verify")
def audit_verify(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="The node's node.toml: its whole log is read over its admin channel."
        ),
    ] = None,
    mpk_hex: Annotated[
        str | None,
        typer.Option(
            "--mpk",
            help="The committee's master public key (hex; `kms member mpk`); default: "
            "[committee] genesis_mpk.",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The node's public HTTP URL (default: from node.toml): its public signed head "
            "is checked too.",
        ),
    ] = None,
    chain_url: Annotated[
        str | None,
        typer.Option(
            "--chain-url",
            help="Take the epoch chain from this member instead of the audited node.",
        ),
    ] = None,
    expect_head: Annotated[
        Path | None,
        typer.Option(
            "--expect-head",
            help="A head this node signed earlier (the /v1/audit/head body or a --json "
            "result): the log must still start with it.",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a node's whole audit log against its identity in the verified epoch chain.

    The chain (from the node, or from another member with ``--chain-url``) is
    verified from the master public key; the identity it gives the node's index
    must have signed the log's head and the public head, whatever identity the
    node names. Exit 0 when everything verifies, 1 with the problems, 2 when the
    check could not be made.
    """
    if config is None:
        fail("give --config node.toml (the audited node's configuration)", 2)
    cfg = _config(config)
    mpk = _mpk(cfg, mpk_hex)
    node_url = _node_url(cfg, url)
    earlier = None
    if expect_head is not None:
        try:
            earlier = read_expected_head(expect_head)
        except (OSError, ValueError) as exc:
            fail(f"cannot read the earlier head {expect_head}: {exc}", 2)
    try:
        report = verify_node_audit(
            config,
            int(cfg.index),
            mpk,
            chain_url=chain_url or node_url,
            node_url=node_url,
            expected_head=earlier,
        )
    except AuditUnavailable as exc:
        fail(str(exc), 2)
    except (AdminUnreachable, AdminRefused) as exc:
        admin_failed(exc, json_out)
    _print_report(report, json_out)
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("show")
def audit_show(
    config: Annotated[Path, typer.Option("--config", help="The node's node.toml.")],
    start: Annotated[int, typer.Option("--start", min=0, help="The first entry (0-based).")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Entries at most.")] = AUDIT_PAGE,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per line: position and record.")
    ] = False,
) -> None:
    """The node's audit entries over its admin channel, one line each (oldest first)."""
    _config(config)
    entries: list[str] = []
    while len(entries) < limit:
        want = min(AUDIT_PAGE, limit - len(entries))
        page: dict[str, Any] = admin(
            config, {"op": "audit", "start": start + len(entries), "limit": want}, json_out
        )["audit"]
        got = [str(e) for e in page.get("entries", [])]
        entries += got[:want]
        if len(got) < want:
            break
    if not entries:
        print("[]" if json_out else "(none)")
        return
    for n, entry in enumerate(entries, start=start):
        if json_out:
            try:
                record: Any = json.loads(entry)
            except ValueError:
                record = entry
            print_json({"position": n, "record": record})
        else:
            out.print(describe_entry(n, entry), soft_wrap=True, markup=False, highlight=False)
