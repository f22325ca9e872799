"""``kms status``: a node's public status."""

from __future__ import annotations

from typing import Annotated

import httpx
import typer
from rich.table import Table

from kms.cli.common import fail, out, print_json


def status(
    url: Annotated[str, typer.Option("--url", help="The node's HTTP URL.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Epoch, committee, master public key, peers and health of a node."""
    try:
        r = httpx.get(url.rstrip("/") + "/v1/status", timeout=5)
        st = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"cannot reach {url}: {exc}", 2)
    if json_out:
        print_json(st)
        return
    t = Table(title=f"node {st.get('index')} at {url}")
    t.add_column("field")
    t.add_column("value")
    for k in ("epoch", "threshold", "master_public_key", "has_share", "running", "healthy"):
        t.add_row(k, str(st.get(k)))
    t.add_row("committee", ", ".join(str(m["index"]) for m in st.get("committee", [])))
    t.add_row("peers", str(len(st.get("peers", []))))
    if "share_holders" in st:
        holders = ", ".join(str(i) for i in st["share_holders"])
        if st.get("share_holders_below_threshold"):
            holders += "  [fewer than t: the master key may be unrecoverable]"
        t.add_row("share holders", holders)
    if st.get("share_error"):
        t.add_row("share error", str(st["share_error"]))
    out.print(t)
