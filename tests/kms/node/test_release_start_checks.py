"""``kms node run`` checks the key-release settings before it starts.

Broken collateral settings stop the node with one ``error:`` line and exit 2 (no
traceback); absent ones start it with a warning that key release is off, and
``/v1/status`` says why (``serves_keys_reason``).
"""

from __future__ import annotations

import copy
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from typer.testing import CliRunner

from kms.app import devnet
from kms.app.config import load
from kms.app.setup import build_service, check_release_settings, init_node, write_config
from kms.cli import app
from kms.node.clock import TrioClock
from mpc.sig import SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("release")
    records = [init_node(base / f"n{i}", index=i) for i in (1, 2)]
    doc = tomllib.loads((base / "n1" / "node.toml").read_text())
    doc["committee"]["genesis"] = [
        {k: r[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")} for r in records
    ]
    doc["node"]["store"] = str(base / "n1" / "node.db")
    doc["node"]["passphrase_file"] = str(base / "n1.passphrase")
    doc["node"]["admin_token_file"] = str(base / "n1" / "admin.token")
    return doc


@pytest.fixture(scope="module")
def tee(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return devnet.simulated_tee_files(tmp_path_factory.mktemp("tee"))


@pytest.fixture
def node(template: dict[str, Any], tmp_path: Path) -> Any:
    def write(**settings: Any) -> Path:
        doc = copy.deepcopy(template)
        doc["node"].update(settings)
        path = tmp_path / "node.toml"
        write_config(path, doc)
        return path

    return write


def run(config: Path) -> Any:
    return CliRunner().invoke(app, ["node", "run", "--config", str(config)])


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return str(lines[0])


def test_simulated_quotes_without_root_or_collateral_stop_the_node(node: Any, tee: Path) -> None:
    line = one_error_line(run(node(accept_simulated_quotes=True, policies_dir="policies")))
    assert "simulated_root_ca" in line and "[node]" in line
    line = one_error_line(
        run(node(accept_simulated_quotes=True, simulated_root_ca=str(tee / "root.der")))
    )
    assert "without collateral" in line and "collateral_file" in line


def test_a_root_that_is_not_der_stops_the_node(node: Any, tee: Path, tmp_path: Path) -> None:
    pem = tmp_path / "root.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nnot der\n-----END CERTIFICATE-----\n")
    cfg = node(
        accept_simulated_quotes=True,
        simulated_root_ca=str(pem),
        collateral_file=str(tee / "collateral.json"),
    )
    assert "not a DER certificate" in one_error_line(run(cfg))
    cfg = node(
        accept_simulated_quotes=True,
        simulated_root_ca=str(tmp_path / "missing.der"),
        collateral_file=str(tee / "collateral.json"),
    )
    assert "cannot be read" in one_error_line(run(cfg))


def test_unreadable_malformed_or_expired_collateral_stops_the_node(
    node: Any, tee: Path, tmp_path: Path
) -> None:
    root = str(tee / "root.der")
    missing = node(collateral_file=str(tmp_path / "nope.json"))
    assert "cannot be read" in one_error_line(run(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    line = one_error_line(
        run(node(accept_simulated_quotes=True, simulated_root_ca=root, collateral_file=str(bad)))
    )
    assert "is not collateral JSON" in line
    # Collateral made 40 days ago with a 30-day lifetime.
    old = tmp_path / "old.json"
    t = devnet.simulated_tee(tee.parent)
    old.write_text(json.dumps(t.collateral(int(time.time()) - 40 * 86400, lifetime=30 * 86400)))
    line = one_error_line(
        run(node(accept_simulated_quotes=True, simulated_root_ca=root, collateral_file=str(old)))
    )
    assert "expired" in line or "too old" in line, line


def test_good_simulated_settings_pass(node: Any, tee: Path) -> None:
    cfg = load(
        node(
            accept_simulated_quotes=True,
            simulated_root_ca=str(tee / "root.der"),
            collateral_file=str(tee / "collateral.json"),
            policies_dir="policies",
        )
    )
    assert check_release_settings(cfg) is None


def test_no_collateral_source_starts_with_key_release_off(node: Any, template: Any) -> None:
    cfg = load(node(policies_dir="policies"))
    reason = check_release_settings(cfg)
    assert reason is not None and reason.startswith("key release is off")
    assert "pccs_url" in reason and "collateral_file" in reason
    (cfg.directory / "policies").mkdir(exist_ok=True)

    async def status() -> dict[str, Any]:
        from kms.store import NodeStore, PassphraseSealer

        assert cfg.passphrase_file is not None
        with NodeStore(cfg.store, PassphraseSealer.from_file(cfg.passphrase_file)) as store:
            ident = store.load_identity()
            assert ident is not None
            pid = peer_id_from_ed25519(SigningKey.from_seed(ident[0]).verify_key().to_bytes())
            transport = MemoryTransport(MemoryNetwork(), pid)
            service = build_service(cfg, store, transport, {}, clock=TrioClock())
            return service.status()

    st = trio.run(status, clock=trio.testing.MockClock())
    assert st["serves_keys"] is False
    assert st["serves_keys_reason"] == reason
