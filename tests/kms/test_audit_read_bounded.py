"""The audited node cannot hold ``read_audit`` (``kms audit verify``/``show``) forever.

The attack: a node that claims a log of 2**62 entries and answers every page in full kept
the auditor reading, every entry kept in memory, for as long as it liked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kms.app.operator import AUDIT_PAGE, MAX_AUDIT_ENTRIES, read_audit


def endless(count: Any, page: int = AUDIT_PAGE) -> Any:
    asked = []

    def admin(config: Path, req: dict[str, Any]) -> dict[str, Any]:
        asked.append(req["start"])
        assert len(asked) < 100, "the auditor is still reading"
        return {"ok": True, "audit": {"count": count, "entries": ["{}"] * page}}

    return admin


@pytest.mark.parametrize("count", [2**62, MAX_AUDIT_ENTRIES + 1, -1, "many", 1.5])
def test_a_count_beyond_the_bound_is_refused_at_once(count: Any) -> None:
    with pytest.raises(ValueError, match="entries"):
        read_audit(Path("node.toml"), admin=endless(count))


def test_entries_beyond_the_count_or_a_long_page_are_refused() -> None:
    with pytest.raises(ValueError, match="more entries than"):
        read_audit(Path("node.toml"), admin=endless(AUDIT_PAGE + 5))
    with pytest.raises(ValueError, match="at most"):
        read_audit(Path("node.toml"), admin=endless(10 * AUDIT_PAGE, page=AUDIT_PAGE + 1))


def test_an_honest_log_is_read_whole() -> None:
    doc, entries = read_audit(Path("node.toml"), admin=endless(3 * AUDIT_PAGE))
    assert len(entries) == 3 * AUDIT_PAGE and doc["count"] == 3 * AUDIT_PAGE
