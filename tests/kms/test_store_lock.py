"""One process at a time on a node's store (``kms.store.lock``).

The attack: ``kms node passphrase`` while a node runs on the store but its admin socket
does not answer (a node still starting, or one whose socket path in node.toml no longer
leads to it). Without the lock the command resealed the store under the new passphrase
while the running node kept sealing new secrets under the old one: after a restart those
secrets did not unseal and the old passphrase no longer opened the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kms.app import devnet
from kms.app.config import load
from kms.cli import app as cli
from kms.store import NodeStore, PassphraseSealer
from kms.store.lock import StoreInUse, exclusive


def test_a_second_holder_is_refused_at_once(tmp_path: Path) -> None:
    store = tmp_path / "node.db"
    with exclusive(store):
        with pytest.raises(StoreInUse, match="in use by another process"):
            with exclusive(store):
                pass
    with exclusive(store):  # released on exit
        pass


def test_a_passphrase_change_beside_a_running_node_is_refused(tmp_path: Path) -> None:
    devnet.create(
        tmp_path / "net", 2, 2, delta=0.5, start_in=3600, window_period=60, refresh_interval=0
    )
    config = tmp_path / "net" / "node-1" / "node.toml"
    cfg = load(config)
    log = tmp_path / "node.log"
    with log.open("wb") as sink:
        node = subprocess.Popen(
            [sys.executable, "-m", "kms.cli", "node", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 60
        while True:  # the node holds the lock once it runs
            assert node.poll() is None, log.read_text()
            try:
                with exclusive(Path(cfg.store)):
                    pass
            except StoreInUse:
                break
            assert time.monotonic() < deadline, "the node never took its store's lock"
            time.sleep(0.05)
        # The operator's node.toml no longer leads to the node's admin socket.
        config.write_text(
            config.read_text().replace('admin_socket = "admin.sock"', 'admin_socket = "gone.sock"')
        )
        new = tmp_path / "new-passphrase"
        new.write_text("a brand new passphrase\n")
        new.chmod(0o600)
        r = CliRunner().invoke(
            cli, ["node", "passphrase", "--config", str(config), "--new-passphrase-file", str(new)]
        )
        assert r.exit_code == 2, r.output
        assert "in use by another process" in r.output
    finally:
        node.terminate()
        node.wait(timeout=30)
    # The old passphrase still opens the store; nothing was resealed.
    assert cfg.passphrase_file is not None
    with NodeStore(cfg.store, PassphraseSealer.from_file(cfg.passphrase_file), create=False):
        pass


def test_every_spelling_of_one_store_shares_its_lock(tmp_path: Path) -> None:
    """The attack: a store reached through a symbolic link (to the file, or to a directory
    on its path) got a lock file of its own, so two holders were admitted at once."""
    real = tmp_path / "data"
    real.mkdir()
    store = real / "node.db"
    store.write_bytes(b"")
    (tmp_path / "link.db").symlink_to(store)
    (tmp_path / "linkdir").symlink_to(real)
    with exclusive(store):
        for other in (tmp_path / "link.db", tmp_path / "linkdir" / "node.db"):
            with pytest.raises(StoreInUse):
                with exclusive(other):
                    pass
