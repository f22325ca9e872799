"""``kms node join-request``: the addresses and URL a joiner announces, and its errors.

The request carries ``[node] announce`` (else the listen address) with ``/p2p/<peer id>``
and ``[node] public_url`` (else ``http://HOST:PORT`` of ``[node] http``), both bound by
the quote; an address or URL other machines cannot reach is refused with one
``error:`` line naming the ``[node]`` setting to fix, exit 2.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kms.app import devnet
from kms.app.setup import init_node, write_config
from kms.attest import INTEL_ROOT_CA, Verifier
from kms.cli import app
from kms.node.admission import join_report_data
from mpc.dkg.messages import Participant


def joiner(tmp_path: Path, **node: Any) -> Path:
    init_node(tmp_path / "n5", index=5, listen=node.pop("listen"), http=node.pop("http"))
    path = tmp_path / "n5" / "node.toml"
    doc = tomllib.loads(path.read_text())
    doc["node"].update(node)
    write_config(path, doc)
    return path


def request(config: Path, out: Path) -> Any:
    return CliRunner().invoke(
        app,
        [
            "node",
            "join-request",
            "--config",
            str(config),
            "--committee-url",
            "http://127.0.0.1:9",
            "--out",
            str(out),
        ],
    )


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return str(lines[0])


def test_an_unspecified_listen_host_is_refused_with_what_to_set(tmp_path: Path) -> None:
    cfg = joiner(tmp_path, listen="/ip4/0.0.0.0/tcp/9000", http="10.0.0.5:8080")
    line = one_error_line(request(cfg, tmp_path / "join.json"))
    assert "[node] listen /ip4/0.0.0.0/tcp/9000" in line and "[node] announce" in line
    assert not (tmp_path / "join.json").exists()


def test_an_unspecified_ipv6_announce_or_http_host_is_refused(tmp_path: Path) -> None:
    cfg = joiner(
        tmp_path, listen="/ip4/0.0.0.0/tcp/9000", http="10.0.0.5:8080", announce=["/ip6/::/tcp/1"]
    )
    assert "[node] announce /ip6/::/tcp/1" in one_error_line(request(cfg, tmp_path / "j.json"))
    cfg.unlink()
    cfg2 = joiner(
        tmp_path / "b",
        listen="/ip4/0.0.0.0/tcp/9000",
        http="0.0.0.0:8080",
        announce=["/dns4/kms5.example.org/tcp/9000"],
    )
    line = one_error_line(request(cfg2, tmp_path / "j.json"))
    assert "[node] http 0.0.0.0:8080" in line and "[node] public_url" in line


def test_the_request_carries_announce_and_public_url_bound_by_its_quote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tee_home = tmp_path / "tee"
    tee_dir = devnet.simulated_tee_files(tee_home)
    cfg = joiner(
        tmp_path,
        listen="/ip4/0.0.0.0/tcp/9000",
        http="0.0.0.0:8080",
        announce=["/dns4/kms5.example.org/tcp/9000"],
        public_url="https://kms5.example.org:8443",
        simulated_tee=str(tee_home),
    )
    head = bytes(range(32))
    monkeypatch.setattr("kms.app.setup.committee_head", lambda url: (3, head))
    out = tmp_path / "join.json"
    result = request(cfg, out)
    assert result.exit_code == 0, result.output
    assert "https://kms5.example.org:8443" in result.output
    jr = json.loads(out.read_text())
    assert jr["addresses"] == [f"/dns4/kms5.example.org/tcp/9000/p2p/{jr['peer_id']}"]
    assert jr["url"] == "https://kms5.example.org:8443"
    p = Participant(
        jr["index"],
        bytes.fromhex(jr["identity"]),
        bytes.fromhex(jr["dkg_key"]),
        bytes.fromhex(jr["dkg_key_signature"]),
    )
    verified = Verifier(
        [INTEL_ROOT_CA, (tee_dir / "root.der").read_bytes()], simulated_allowed=True
    ).verify(
        bytes.fromhex(jr["attestation"]),
        json.loads((tee_dir / "collateral.json").read_text()),
        now=int(time.time()),
    )
    assert verified.report_data == join_report_data(p, jr["addresses"], 3, head, jr["url"])


def test_measurement_file_chooses_what_the_simulated_tee_quotes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tee_home = tmp_path / "tee"
    tee_dir = devnet.simulated_tee_files(tee_home)
    cfg = joiner(
        tmp_path, listen="/ip4/10.0.0.5/tcp/9000", http="10.0.0.5:8080", simulated_tee=str(tee_home)
    )
    monkeypatch.setattr("kms.app.setup.committee_head", lambda url: (0, bytes(32)))
    meas = tmp_path / "node.measurement.toml"
    values = {k: bytes([0x40 + i]) * 48 for i, k in enumerate(("mr_td", "rtmr0", "rtmr1"))}
    meas.write_text("".join(f'{k} = "{v.hex()}"\n' for k, v in values.items()))
    out = tmp_path / "join.json"
    args = [
        *("node", "join-request", "--config", str(cfg), "--committee-url", "http://x"),
        *("--out", str(out), "--measurement", str(meas)),
    ]
    result = CliRunner().invoke(app, args)
    line = one_error_line(result)
    assert "rtmr2 is missing" in line and str(meas) in line
    values.update(rtmr2=bytes([0x43]) * 48, rtmr3=bytes([0x44]) * 48)
    meas.write_text("".join(f'{k} = "{v.hex()}"\n' for k, v in values.items()))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    jr = json.loads(out.read_text())
    verified = Verifier(
        [INTEL_ROOT_CA, (tee_dir / "root.der").read_bytes()], simulated_allowed=True
    ).verify(
        bytes.fromhex(jr["attestation"]),
        json.loads((tee_dir / "collateral.json").read_text()),
        now=int(time.time()),
    )
    assert verified.mr_td == values["mr_td"] and verified.rtmr3 == values["rtmr3"]
    assert jr["url"] == "http://10.0.0.5:8080"
