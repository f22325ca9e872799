"""``kms member propose`` builds its admin request with ``kms.app.operator.propose_request``;
a change it cannot build exits 2 (one JSON line with ``--json``) before any node is asked,
and an unreachable admin channel exits 2 as well."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kms.app.devnet import DevnetError, app_id_of
from kms.app.operator import ProposalUsage, propose_request
from kms.cli import app

runner = CliRunner()


def test_propose_request_for_each_change(tmp_path: Path) -> None:
    jr = tmp_path / "join.json"
    jr.write_text(json.dumps({"index": 6}))
    ev = tmp_path / "ev.msgpack"
    ev.write_bytes(b"\x01\x02")
    pol = tmp_path / "policy"
    pol.write_bytes(b"\xaa")
    assert propose_request("add", None, jr, None) == {
        "op": "propose",
        "change": "add",
        "join_request": {"index": 6},
    }
    assert propose_request("remove", "3", None, ev)["evidence"] == "0102"
    assert propose_request("remove", "3", None, None)["index"] == 3
    assert propose_request("threshold", "2", None, None)["threshold"] == 2
    assert propose_request("admission-policy", str(pol), None, None)["policy"] == "aa"
    assert propose_request("refresh", None, None, None) == {"op": "propose", "change": "refresh"}


@pytest.mark.parametrize(
    ("change", "value", "needle"),
    [
        ("add", None, "add needs --join-request FILE"),
        ("remove", None, "remove needs INDEX"),
        ("threshold", None, "threshold needs T"),
        ("threshold", "two", "T must be a whole number, not 'two'"),
        ("admission-policy", "/nonexistent/policy", "cannot read /nonexistent/policy"),
        ("grow", None, "unknown change 'grow'"),
    ],
)
def test_a_change_that_cannot_be_built_is_a_usage_error(
    tmp_path: Path, change: str, value: str | None, needle: str
) -> None:
    with pytest.raises(ProposalUsage, match=needle):
        propose_request(change, value, None, None)
    args = ["member", "propose", "--config", str(tmp_path / "node.toml"), change]
    result = runner.invoke(app, [*args, *([value] if value else []), "--json"])
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and needle in doc["error"]


def test_an_unreachable_admin_channel_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["member", "list", "--config", str(tmp_path / "missing.toml"), "--json"]
    )
    assert result.exit_code == 2
    assert json.loads(result.stdout)["ok"] is False


def test_app_ids_from_alias_or_hex() -> None:
    state = {"apps": {"demo": "ab" * 20}}
    assert app_id_of(state, "demo") == bytes.fromhex("ab" * 20)
    assert app_id_of(state, "cd" * 4) == bytes.fromhex("cd" * 4)
    with pytest.raises(DevnetError, match="unknown app 'nope'"):
        app_id_of(state, "nope")
