"""Secret output files, attacked through the CLI: a link planted at the output path
must not redirect the secret, and a world-readable file there must not keep its mode.

``kms node init`` runs for real. ``kms key get --out`` and ``kms decrypt`` talk to
a devnet; here the network half (``fetch_keys``) answers with a derived point
computed from a toy master secret, so the commands' own file handling is what
runs, exactly as on a devnet.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from kms.app import devnet
from kms.cli import app
from kms.secretfile import write_secret
from mpc import ibe
from mpc.ids import ParticipantIndex
from mpc.math import G2, R
from mpc.tkd import DerivedPoint, KeyId, derive_point_base

runner = CliRunner()
SECRET = 0x5EC12E7 * 104729 % R
MPK = SECRET * G2.generator()
APP_ID = bytes(range(20))
VICTIM_TEXT = "the victim's own file\n"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_text(VICTIM_TEXT)
    v.chmod(0o644)
    return v


def assert_untouched(v: Path) -> None:
    assert v.read_text() == VICTIM_TEXT
    assert mode(v) == 0o644


def assert_fresh_secret(path: Path) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode), "the output is a regular file, not the planted link"
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture
def fake_devnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A devnet directory whose key release answers from a toy master secret."""
    d = tmp_path / "devnet"
    d.mkdir()
    devnet.write_state(
        d,
        {
            "master_public_key": MPK.to_bytes().hex(),
            "nodes": [{"index": 1, "http_url": "http://node-1"}],
            "apps": {"demo": APP_ID.hex()},
        },
    )

    def fetch_keys(
        urls: Any, mpk: G2, app_id: bytes, purposes: Any, quote_for: Any, **_: Any
    ) -> Any:
        assert mpk == MPK
        derived = {}
        for p, v in purposes:
            kid = KeyId(app_id, p, v)
            derived[(p, v)] = DerivedPoint(kid, SECRET * derive_point_base(kid))
        return SimpleNamespace(rejected=[], derived=derived, epoch=0)

    import kms.client.http

    monkeypatch.setattr(kms.client.http, "fetch_keys", fetch_keys)
    from kms.app import cvm

    monkeypatch.setattr(
        cvm,
        "nodes_by_index",
        lambda urls, timeout=5.0: cvm.Nodes({ParticipantIndex(1): urls[0]}, []),
    )
    monkeypatch.setattr(
        cvm, "quoting", lambda app_id, **_: cvm.Quoting(lambda rd: b"", b"", "stand-in")
    )
    return d


# --- kms node init ---------------------------------------------------------------------------


def test_node_init_replaces_a_planted_link_and_leaves_its_target_alone(tmp_path: Path) -> None:
    v = victim(tmp_path)
    node = tmp_path / "node"
    node.mkdir()
    (tmp_path / "node.passphrase").symlink_to(v)
    (node / "admin.token").symlink_to(tmp_path / "dangling")
    result = runner.invoke(app, ["node", "init", "--dir", str(node), "--json"])
    assert result.exit_code == 0, result.output
    assert_untouched(v)
    assert not (tmp_path / "dangling").exists()
    for path in (tmp_path / "node.passphrase", node / "admin.token"):
        assert_fresh_secret(path)
        assert len(path.read_text().strip()) == 64


def test_node_init_does_not_keep_a_world_readable_mode(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    paths = (tmp_path / "node.passphrase", node / "admin.token")
    for path in paths:
        path.write_text("old\n")
        path.chmod(0o644)
    result = runner.invoke(app, ["node", "init", "--dir", str(node), "--json"])
    assert result.exit_code == 0, result.output
    for path in paths:
        assert_fresh_secret(path)
        assert path.read_text() != "old\n"


# --- kms key get --out -----------------------------------------------------------------------


def key_get(d: Path, out: Path) -> Any:
    return runner.invoke(
        app, ["key", "get", "--devnet", str(d), "--app", "demo", "--json", "--out", str(out)]
    )


def test_key_get_out_does_not_follow_a_planted_link(fake_devnet: Path, tmp_path: Path) -> None:
    v = victim(tmp_path)
    out = tmp_path / "keys.json"
    out.symlink_to(v)
    result = key_get(fake_devnet, out)
    assert result.exit_code == 0, result.output
    assert_untouched(v)
    assert_fresh_secret(out)
    assert len(json.loads(out.read_text())["app_key"]) == 64


def test_key_get_out_does_not_keep_a_world_readable_mode(fake_devnet: Path, tmp_path: Path) -> None:
    out = tmp_path / "keys.json"
    out.write_text("{}")
    out.chmod(0o644)
    result = key_get(fake_devnet, out)
    assert result.exit_code == 0, result.output
    assert_fresh_secret(out)
    assert "ed25519_seed" in json.loads(out.read_text())


# --- kms decrypt -----------------------------------------------------------------------------


def sealed(tmp_path: Path, plain: bytes) -> Path:
    ct = tmp_path / "sealed"
    ct.write_bytes(ibe.encrypt(MPK, ibe.inbox_key_id(APP_ID), plain, rng=os.urandom))
    return ct


def test_decrypt_does_not_follow_a_planted_link(fake_devnet: Path, tmp_path: Path) -> None:
    v = victim(tmp_path)
    out = tmp_path / "opened"
    out.symlink_to(v)
    ct = sealed(tmp_path, b"the plaintext")
    result = runner.invoke(
        app, ["decrypt", "--devnet", str(fake_devnet), "--app", "demo", str(ct), str(out)]
    )
    assert result.exit_code == 0, result.output
    assert_untouched(v)
    assert_fresh_secret(out)
    assert out.read_bytes() == b"the plaintext"


def test_decrypt_does_not_keep_a_world_readable_mode(fake_devnet: Path, tmp_path: Path) -> None:
    out = tmp_path / "opened"
    out.write_bytes(b"")
    out.chmod(0o666)
    ct = sealed(tmp_path, b"more plaintext")
    result = runner.invoke(
        app, ["decrypt", "--devnet", str(fake_devnet), "--app", "demo", str(ct), str(out)]
    )
    assert result.exit_code == 0, result.output
    assert_fresh_secret(out)
    assert out.read_bytes() == b"more plaintext"


def test_an_unwritable_output_is_a_clear_error(fake_devnet: Path, tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "keys.json"
    result = key_get(fake_devnet, out)
    assert result.exit_code == 2
    assert "cannot write" in result.output


# --- the shared writer -----------------------------------------------------------------------


def test_create_only_refuses_any_existing_entry_even_a_dangling_link(tmp_path: Path) -> None:
    target = tmp_path / "owner"
    target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        write_secret(target, "seed\n", replace=False)
    assert not (tmp_path / "elsewhere").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["owner"]
    fresh = tmp_path / "fresh"
    write_secret(fresh, b"seed\n", replace=False)
    assert_fresh_secret(fresh)
    assert fresh.read_bytes() == b"seed\n"


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_secret(tmp_path / "s", "x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "s") == 0o600


def test_devnet_owner_keys_are_created_as_secrets(tmp_path: Path) -> None:
    owner = devnet.owner_of(tmp_path, "demo")
    path = tmp_path / "apps" / "demo.owner"
    assert_fresh_secret(path)
    assert devnet.owner_of(tmp_path, "demo").app_id() == owner.app_id()
