"""Operating a node's files: ``kms node rotate-admin-token`` (node running) and
``kms node passphrase`` (node stopped).

The admin token: a node serves its admin channel on its real Unix socket (in a thread of
this process, as ``kms node run`` serves it: ``admin.serve`` with an ``AdminToken`` over
the token file); the commands run through typer's CliRunner; requests go over the socket.

The passphrase: a real store written by a committee (``tests/kms/store/data/e1d36d0``:
identity, current and retained shares, secret protocol records, the sealed audit head).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from typer.testing import CliRunner

from kms.api import admin
from kms.app.config import load
from kms.app.setup import open_store
from kms.cli import app as cli
from kms.node.service import NodeService
from kms.store import NodeStore, PassphraseSealer, SealError
from mpc.sig import SigningKey
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "store" / "data" / "e1d36d0" / "node-1"


def one_line(output: str) -> str:
    return " ".join(output.split())


# --- the admin token ---------------------------------------------------------------------------


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A node's config and admin socket: its ``NodeService`` on its store, the socket served
    as ``kms node run`` serves it (``admin.serve`` with an ``AdminToken``)."""
    short = Path(tempfile.mkdtemp(prefix="qk-", dir="/tmp"))  # a Unix socket path is short
    # A test before this one in the worker may have configured the node's logging onto a
    # stream that is closed now (``kms node run`` under typer's runner): log to pytest's.
    node_log = logging.getLogger("quorum_kms")
    saved = node_log.handlers[:], node_log.propagate
    node_log.handlers[:] = []
    node_log.propagate = True
    toml = node_copy(tmp_path)
    toml.write_text(
        toml.read_text().replace('admin_socket = "none.sock"', f'admin_socket = "{short}/a.sock"')
    )
    cfg = load(toml)
    assert cfg.admin_socket == short / "a.sock"
    cfg.admin_token_file.write_text("first-token\n")
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        store = open_store(cfg)  # the node's real store and service, in this thread
        try:
            ident = store.load_identity()
            assert ident is not None
            pid = peer_id_from_ed25519(SigningKey.from_seed(ident[0]).verify_key().to_bytes())
            service = NodeService(cfg.protocol, store, MemoryTransport(MemoryNetwork(), pid), {})
            with trio.CancelScope() as scope:
                state["cancel"], state["trio"] = scope.cancel, trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    token = admin.AdminToken(cfg.admin_token_file)  # as run_node builds it
                    await nursery.start(admin.serve, service, cfg.admin_socket, token)
                    ready.set()
        finally:
            store.close()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        yield toml, cfg.admin_socket
    finally:
        trio.from_thread.run_sync(state["cancel"], trio_token=state["trio"])
        thread.join(30)
        shutil.rmtree(short, ignore_errors=True)
        node_log.handlers[:], node_log.propagate = saved


def ask(sock: Path, token: str) -> dict[str, Any]:
    return trio.run(admin.call, sock, {"op": "status", "token": token})


def test_a_rotated_token_replaces_the_old_one_while_the_node_runs(
    running: tuple[Path, Path],
) -> None:
    config, sock = running
    assert ask(sock, "first-token")["ok"] is True
    r = CliRunner().invoke(cli, ["node", "rotate-admin-token", "--config", str(config)])
    assert r.exit_code == 0, r.output
    token_file = config.parent / "admin.token"
    assert one_line(r.stdout) == f"new admin token written to {token_file}"
    new = token_file.read_text().strip()
    assert len(new) == 64 and token_file.stat().st_mode & 0o777 == 0o600
    assert ask(sock, "first-token") == {"ok": False, "error": "unauthorised"}
    assert ask(sock, new)["ok"] is True
    # Twice more: each rotation retires the token before it.
    for _ in range(2):
        assert (
            CliRunner()
            .invoke(cli, ["node", "rotate-admin-token", "--config", str(config)])
            .exit_code
            == 0
        )
        newer = token_file.read_text().strip()
        assert ask(sock, new)["ok"] is False and ask(sock, newer)["ok"] is True
        new = newer


def test_an_empty_or_missing_token_file_refuses_every_request_and_the_node_keeps_serving(
    running: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config, sock = running
    token_file = config.parent / "admin.token"
    caplog.set_level(logging.INFO, logger="quorum_kms.node")
    token_file.write_text("\n")
    for given in ("first-token", "", "\n"):
        assert ask(sock, given) == {"ok": False, "error": admin.UNUSABLE_REPLY}
    token_file.unlink()
    assert ask(sock, "first-token") == {"ok": False, "error": admin.UNUSABLE_REPLY}
    reasons = [getattr(r, "fields", {}).get("reason") for r in caplog.records]
    assert "the admin token file is empty" in reasons
    assert any(str(x).startswith("cannot read the admin token file") for x in reasons)
    # Logged once per change of the file, not once per request.
    assert reasons.count("the admin token file is empty") == 1
    token_file.write_text("restored-token\n")
    assert ask(sock, "restored-token")["ok"] is True
    assert ask(sock, "first-token")["ok"] is False


def test_rotating_without_a_usable_config_is_one_error_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["node", "rotate-admin-token", "--config", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert one_line(r.output).startswith("error: no configuration at")


# --- the passphrase ----------------------------------------------------------------------------


def node_copy(tmp_path: Path) -> Path:
    """Node 1 of the fixture, copied, its store opened once (migrated) with its passphrase
    and given a run's secret records."""
    node = tmp_path / "node-1"
    shutil.copytree(FIXTURE, node)
    (node / "passphrase").chmod(0o600)
    toml = node / "node.toml"
    toml.write_text(
        toml.read_text().replace('admin_socket = "admin.sock"', 'admin_socket = "none.sock"')
    )
    with open_store(load(toml)) as store:  # a run in progress: its secret records, sealed
        store.put_record(b"run-in-progress", "polynomial", b"\x01" * 96, secret=True)
        store.put_record(b"run-in-progress", "share", b"\x02" * 32, secret=True)
    return toml


def new_passphrase(tmp_path: Path, text: str = "a new passphrase\n") -> Path:
    path = tmp_path / "new-passphrase"
    path.write_text(text)
    path.chmod(0o600)
    return path


def secrets_of(store: NodeStore) -> dict[str, Any]:
    """Everything sealed in ``store``, unsealed."""
    current = store.current_epoch()
    return {
        "identity": store.load_identity(),
        "current": None if current is None else (current.epoch, current.share),
        "retained": {e: store.retained_share(e) for e in store.retained_shares()},
        "records": {run: store.records(run) for run in store.runs()},
        "audit": store.audit_head(),
    }


def opens(store_path: Path, passphrase_file: Path) -> bool:
    try:
        with NodeStore(store_path, PassphraseSealer.from_file(passphrase_file), create=False) as s:
            s.audit_verify()  # the sealed audit head opens too
            return True
    except SealError:
        return False


def test_a_passphrase_change_reseals_everything_and_retires_the_old_passphrase(
    tmp_path: Path,
) -> None:
    config = node_copy(tmp_path)
    old_file = config.parent / "passphrase"
    with open_store(load(config)) as store:
        before = secrets_of(store)
    assert before["current"] is not None and before["retained"]
    assert before["records"][b"run-in-progress"]["share"] == b"\x02" * 32
    new = new_passphrase(tmp_path)
    r = CliRunner().invoke(
        cli, ["node", "passphrase", "--config", str(config), "--new-passphrase-file", str(new)]
    )
    assert r.exit_code == 0, r.output
    assert "resealed under the new passphrase" in one_line(r.stdout)
    assert f"node.toml now names {new}" in one_line(r.stdout)
    store_path = config.parent / "node.db"
    assert not opens(store_path, old_file)
    assert opens(store_path, new)
    cfg = load(config)
    assert cfg.passphrase_file == new.resolve()
    assert "# quorum-kms node configuration." in config.read_text()  # comments kept
    with open_store(cfg) as store:
        assert secrets_of(store) == before


@pytest.mark.parametrize("fault_after", ["opened", "identity", "records", "shares", "audit head"])
def test_a_fault_midway_leaves_the_store_opened_by_the_old_passphrase(
    tmp_path: Path, fault_after: str
) -> None:
    from kms.app.maintenance import change_passphrase

    config = node_copy(tmp_path)
    old_file = config.parent / "passphrase"
    with open_store(load(config)) as store:
        before = secrets_of(store)
    new = new_passphrase(tmp_path)

    def fault(step: str) -> None:
        if step == fault_after:
            raise RuntimeError(f"injected fault after {step}")

    with pytest.raises(RuntimeError, match="injected fault"):
        change_passphrase(config, new, between=fault)
    store_path = config.parent / "node.db"
    assert opens(store_path, old_file) and not opens(store_path, new)
    assert load(config).passphrase_file == old_file.resolve()
    with open_store(load(config)) as store:
        assert secrets_of(store) == before


KILL_MIDWAY = """
import os, sys
from pathlib import Path
from kms.app.maintenance import change_passphrase

def fault(step):
    if step == sys.argv[3]:
        os._exit(9)  # killed: no rollback, no cleanup, no close

change_passphrase(Path(sys.argv[1]), Path(sys.argv[2]), between=fault)
"""


@pytest.mark.parametrize("killed_after", ["shares", "resealed"])
def test_a_process_killed_midway_leaves_an_openable_store(
    tmp_path: Path, killed_after: str
) -> None:
    """Killed inside the reseal transaction: the old passphrase opens the store. Killed
    after it committed, before node.toml was updated: the new one does, and running the
    command again finishes the change."""
    config = node_copy(tmp_path)
    old_file = config.parent / "passphrase"
    with open_store(load(config)) as store:
        before = secrets_of(store)
    new = new_passphrase(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", KILL_MIDWAY, str(config), str(new), killed_after],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 9, done.stderr
    store_path = config.parent / "node.db"
    if killed_after == "shares":
        assert opens(store_path, old_file) and not opens(store_path, new)
        return
    assert opens(store_path, new) and not opens(store_path, old_file)
    assert load(config).passphrase_file == old_file.resolve()
    r = CliRunner().invoke(
        cli, ["node", "passphrase", "--config", str(config), "--new-passphrase-file", str(new)]
    )
    assert r.exit_code == 0, r.output
    assert "already opens with the new passphrase" in one_line(r.stdout)
    with open_store(load(config)) as store:
        assert secrets_of(store) == before


def test_a_running_node_is_not_resealed(running: tuple[Path, Path], tmp_path: Path) -> None:
    config, _ = running
    new = new_passphrase(tmp_path)
    r = CliRunner().invoke(
        cli, ["node", "passphrase", "--config", str(config), "--new-passphrase-file", str(new)]
    )
    assert r.exit_code == 2
    line = one_line(r.output)
    assert line.startswith("error: the node is running") and "stop it first" in line


def test_passphrase_usage_errors_are_one_line(tmp_path: Path) -> None:
    config = node_copy(tmp_path)
    loose = tmp_path / "loose"
    loose.write_text("readable by all\n")
    loose.chmod(0o644)
    empty = new_passphrase(tmp_path, "\n")
    for path, expect in (
        (loose, "chmod 600"),
        (empty, "is empty"),
        (tmp_path / "no", "cannot read"),
    ):
        r = CliRunner().invoke(
            cli, ["node", "passphrase", "--config", str(config), "--new-passphrase-file", str(path)]
        )
        assert r.exit_code == 2, r.output
        assert one_line(r.output).startswith("error: the new passphrase")
        assert expect in one_line(r.output)
        assert "Traceback" not in r.output
    # A wrong current passphrase: nothing is changed.
    (config.parent / "passphrase").write_text("not the passphrase\n")
    r = CliRunner().invoke(
        cli,
        [
            "node",
            "passphrase",
            "--config",
            str(config),
            "--new-passphrase-file",
            str(new_passphrase(tmp_path)),
        ],
    )
    assert r.exit_code == 2 and "does not open the store" in one_line(r.output)
    # The current passphrase file gone: one error line too.
    (config.parent / "passphrase").unlink()
    r = CliRunner().invoke(
        cli,
        [
            "node",
            "passphrase",
            "--config",
            str(config),
            "--new-passphrase-file",
            str(new_passphrase(tmp_path)),
        ],
    )
    assert r.exit_code == 2 and "cannot read the passphrase file" in one_line(r.output)
    assert "Traceback" not in r.output
