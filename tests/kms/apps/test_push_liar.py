"""One node's answer never stops ``kms app policy push`` (or ``show``) before the others.

The attack: a node (a corrupt member, or anything at that URL) answers a JSON array. The
push called ``.get`` on it and died with a traceback: no report, and the nodes listed after
that one were never offered the bundle (say, a version dropping a compromised image).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from kms.app import owner
from kms.cli import app as cli
from mpc.membership.testing import forged_chain

M = {k: "11" * 48 for k in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3")}
URLS = "http://honest1,http://liar,http://honest2,http://honest3"


def route(request: httpx.Request) -> httpx.Response:
    if request.url.host == "liar":
        return httpx.Response(200, json=[])
    if request.method == "GET":
        return httpx.Response(200, json={"version": 2})
    return httpx.Response(200, json={"accepted": True})


def test_a_json_array_from_one_node_is_a_lagging_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mpk = forged_chain(0, n=3, t=2).mpk.to_bytes().hex()
    runner = CliRunner()
    key = str(tmp_path / "o.key")
    r = runner.invoke(cli, ["app", "create", "--owner-key", key, "--json"])
    assert r.exit_code == 0, r.output
    app_id = json.loads(r.output)["app_id"]
    toml = tmp_path / "p.toml"
    toml.write_text(
        "version = 2\n[[measurements]]\n" + "".join(f'{k} = "{v}"\n' for k, v in M.items())
    )
    bundle = str(tmp_path / "v2.policy")
    r = runner.invoke(
        cli,
        [
            "app",
            "policy",
            "sign",
            "--owner-key",
            key,
            "--policy",
            str(toml),
            "--mpk",
            mpk,
            "--out",
            bundle,
        ],
    )
    assert r.exit_code == 0, r.output
    offered: list[str] = []

    def recording(request: httpx.Request) -> httpx.Response:
        offered.append(request.url.host)
        return route(request)

    monkeypatch.setattr(owner, "HTTP_TRANSPORT", httpx.MockTransport(recording))
    r = runner.invoke(cli, ["app", "policy", "push", "--bundle", bundle, "--urls", URLS])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert offered == ["honest1", "liar", "honest2", "honest3"]
    assert "not a JSON object" in r.output
    r = runner.invoke(cli, ["app", "policy", "show", "--urls", URLS, "--app", app_id])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert "not a JSON object" in r.output
