"""``kms status``: a node's public status."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer

from kms.app.operator import window_lines
from kms.cli.common import fail, print_json, say


def status(
    url: Annotated[str, typer.Option("--url", help="The node's HTTP URL.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Epoch, committee, master public key (whole), health, peers and the next decision
    window (or the genesis countdown) of a node."""
    try:
        r = httpx.get(url.rstrip("/") + "/v1/status", timeout=5)
        st = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        fail(f"cannot reach {url}: {exc}; is the node running and is the URL right?", 2)
    if json_out:
        print_json(st)
        return
    say(f"node {st.get('index')} at {url}")
    for field, value in rows(st):
        say(f"  {field:18} {value}")
    for line in window_lines(st):
        say(f"  {line}")


def rows(st: dict[str, Any]) -> list[tuple[str, str]]:
    """The fields ``kms status`` prints, in order, as text (nothing cut short)."""

    def yes(v: Any) -> str:
        return "yes" if v else "no"

    out = [
        ("epoch", str(st.get("epoch") if st.get("epoch") is not None else "(none yet)")),
        ("threshold", str(st.get("threshold"))),
        ("master public key", str(st.get("master_public_key") or "(none yet)")),
        ("has share", yes(st.get("has_share"))),
        ("running", str(st.get("running") or "-")),
        ("healthy", f"{yes(st.get('healthy'))} ({st.get('health', '')})"),
        ("committee", ", ".join(str(m["index"]) for m in st.get("committee") or []) or "-"),
        ("peers", str(len(st.get("peers") or []))),
    ]
    if "share_holders" in st:
        holders = ", ".join(str(i) for i in st["share_holders"]) or "-"
        if st.get("share_holders_below_threshold"):
            holders += "  [fewer than t: the master key may be unrecoverable]"
        out.append(("share holders", holders))
    if st.get("share_error"):
        out.append(("share error", str(st["share_error"])))
    return out
