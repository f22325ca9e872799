"""What an operator reads from the command line: ``kms --version``, the build-info metric,
``kms member list / mpk / wait / evidence`` and ``kms status`` against a node's real admin
socket (served by ``kms.api.admin.serve`` in a thread, with scripted statuses), the errors
of an admin channel that cannot be used (one line, with the path and what to do), the
refusal of an invalid membership change naming the rule it breaks, and the log level."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from kms.api import admin
from kms.app import devnet
from kms.app.config import ConfigError, load
from kms.app.setup import configure_logging
from kms.cli import app
from kms.node.core import NodeConfig, NodeCore, Restored
from kms.node.metrics import NodeMetrics
from mpc import hpke
from mpc.ids import ParticipantIndex
from mpc.membership.testing import forged_chain, member_seeds
from mpc.sig import SigningKey
from net.codec import ENVELOPE_VERSION

runner = CliRunner()
MPK = "a1" * 96


def status_doc(epoch: int | None, committee: list[int], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "index": 1,
        "epoch": epoch,
        "threshold": 2 if epoch is not None else None,
        "master_public_key": MPK if epoch is not None else None,
        "committee": [{"index": i, "peer_id": f"peer-{i}"} for i in committee],
        "has_share": epoch is not None and 1 in committee,
        "running": None,
        "pending_proposals": [],
        "approvals_waiting": [],
        "locked_proposal": None,
        "refused_approvals": [],
        "retained_shares": [],
        "last_refresh": None,
        "member": 1 in committee,
        "healthy": 1 in committee,
        "health": "member of epoch 0",
        "now": 1000.0,
        "genesis": None,
        "next_window": {"index": 12, "at": 1003.0, "in_seconds": 3.0}
        if epoch is not None
        else None,
        "decision_window": None,
        "peers": [],
    }
    doc.update(extra)
    return doc


class ScriptedNode:
    """An admin target whose ``status`` walks through ``statuses`` (staying on the last)."""

    def __init__(self, statuses: list[dict[str, Any]]) -> None:
        self.statuses = statuses
        self.asked = 0

    def status(self) -> dict[str, Any]:
        st = self.statuses[min(self.asked, len(self.statuses) - 1)]
        self.asked += 1
        return st

    def propose(self, change: Any) -> bytes:
        return b"\x07" * 32

    def approve(self, proposal_id: bytes) -> bool:
        return True

    def evidence(self) -> list[dict[str, Any]]:
        return []

    def audit_export(
        self, start: int = 0, limit: int = 1000, *, check: bool = False
    ) -> dict[str, Any]:
        return {}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A devnet node's ``node.toml`` (its admin socket path and token file)."""
    state = devnet.create(
        tmp_path_factory.mktemp("dn"),
        3,
        2,
        delta=0.5,
        start_in=100.0,
        window_period=5.0,
        refresh_interval=0.0,
    )
    return Path(state["nodes"][0]["config"])


@pytest.fixture
def serve(config: Path) -> Iterator[Any]:
    """``serve(node)``: the node's admin socket answered by ``node`` in a thread."""
    cfg = load(config)
    token = cfg.admin_token_file.read_text().strip().encode()
    stops: list[tuple[trio.lowlevel.TrioToken, trio.CancelScope, threading.Thread]] = []

    def start(node: ScriptedNode) -> None:
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            with trio.CancelScope() as scope:
                box["scope"], box["token"] = scope, trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    await nursery.start(admin.serve, node, cfg.admin_socket, token)
                    ready.set()

        thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
        thread.start()
        assert ready.wait(10)
        stops.append((box["token"], box["scope"], thread))

    yield start
    for tok, scope, thread in stops:
        trio.from_thread.run_sync(scope.cancel, trio_token=tok)
        thread.join(10)
    cfg.admin_socket.unlink(missing_ok=True)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


# --- version and build info ---------------------------------------------------------------


def test_version_names_the_package_protocol_and_python_versions() -> None:
    import platform

    from kms import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == (
        f"kms {__version__} (protocol {ENVELOPE_VERSION}, python {platform.python_version()})"
    )


def test_build_info_metric() -> None:
    import platform

    from kms import __version__

    text = NodeMetrics().exposition().decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == "qkms_build_info"]
    (sample,) = family.samples
    assert sample.value == 1
    assert sample.labels == {
        "version": __version__,
        "protocol": str(ENVELOPE_VERSION),
        "python": platform.python_version(),
    }


# --- an admin channel that cannot be used ----------------------------------------------------


def test_no_node_on_the_admin_socket_names_the_socket_and_asks_if_it_runs(config: Path) -> None:
    sock = load(config).admin_socket
    sock.unlink(missing_ok=True)
    for cmd in (["member", "list"], ["member", "mpk"], ["member", "evidence"]):
        result = runner.invoke(app, [*cmd, "--config", str(config)])
        assert result.exit_code == 2, result.output
        line = one_error_line(result.stderr)
        assert f"cannot connect to the admin socket {sock}" in line
        assert "is the node running?" in line
    result = runner.invoke(app, ["member", "list", "--config", str(config), "--json"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert str(sock) in error and "Error" not in error


def test_an_unreadable_token_file_is_named(config: Path, tmp_path: Path) -> None:
    cfg = load(config)
    other = tmp_path / "node.toml"
    other.write_text(config.read_text())
    result = runner.invoke(app, ["member", "list", "--config", str(other)])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    missing = tmp_path / cfg.admin_token_file.name
    assert line == (
        f"error: cannot read the admin token {missing}: no such file or directory"
        f" (check admin_token_file in {other})"
    )


def test_a_missing_config_is_a_one_line_usage_error(tmp_path: Path) -> None:
    for cmd in (["member", "list"], ["member", "wait", "--epoch", "1"]):
        result = runner.invoke(app, [*cmd, "--config", str(tmp_path / "nope.toml")])
        assert result.exit_code == 2
        assert str(tmp_path / "nope.toml") in one_error_line(result.stderr)


def test_a_change_that_cannot_be_read_says_so_without_class_names(tmp_path: Path) -> None:
    cfg = str(tmp_path / "node.toml")
    result = runner.invoke(app, ["member", "propose", "--config", cfg, "threshold", "two"])
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == "error: T must be a whole number, not 'two'"
    missing = tmp_path / "policy.bin"
    result = runner.invoke(
        app, ["member", "propose", "--config", cfg, "admission-policy", str(missing)]
    )
    line = one_error_line(result.stderr)
    assert line == f"error: cannot read {missing}: no such file or directory"


# --- commands against a live admin socket ----------------------------------------------------


def test_member_list_and_mpk_print_the_whole_key_and_the_next_window(
    config: Path, serve: Any
) -> None:
    serve(ScriptedNode([status_doc(0, [1, 2, 3])]))
    result = runner.invoke(app, ["member", "list", "--config", str(config)], terminal_width=80)
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == ("node 1: epoch 0, threshold 2, committee [1, 2, 3], member, holds a share")
    assert f"master public key {MPK}" in out
    assert "next decision window 12 at 1003 (1970-01-01T00:16:43Z), in 3.0 s" in out
    assert "pending proposals (none)" in out

    result = runner.invoke(app, ["member", "mpk", "--config", str(config)])
    assert result.exit_code == 0
    assert result.stdout == MPK + "\n"

    result = runner.invoke(app, ["member", "evidence", "--config", str(config)])
    assert result.exit_code == 0 and result.stdout == "(none)\n"


def test_before_genesis_list_shows_the_countdown_and_mpk_refuses(config: Path, serve: Any) -> None:
    st = status_doc(None, [], genesis={"at": 1100.0, "in_seconds": 100.0})
    serve(ScriptedNode([st]))
    result = runner.invoke(app, ["member", "list", "--config", str(config)])
    assert result.exit_code == 0
    assert "genesis at 1100 (1970-01-01T00:18:20Z), in 100.0 s" in result.stdout
    assert "node 1: no epoch yet; genesis at 1100 (in 100 s)" in result.stdout
    result = runner.invoke(app, ["member", "mpk", "--config", str(config)])
    assert result.exit_code == 1
    assert one_error_line(result.stderr).startswith("error: no master public key yet")


def test_member_wait_returns_once_the_view_meets_the_conditions(
    config: Path, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node = ScriptedNode(
        [status_doc(0, [1, 2, 3])] * 3 + [status_doc(1, [1, 2]), status_doc(1, [1, 2])]
    )
    serve(node)
    with caplog.at_level(logging.DEBUG, logger="quorum_kms"):
        result = runner.invoke(
            app,
            ["member", "wait", "--config", str(config), "--epoch", "1", "--not-member", "3"],
        )
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "node 1: epoch 1, threshold 2, committee [1, 2], member, holds a share\n"
    )
    assert node.asked == 4
    # Each request was logged, with the caller's uid from the socket (never the token).
    asks = [r for r in caplog.records if r.getMessage() == "admin request"]
    assert len(asks) == 4
    assert all(r.fields["op"] == "status" and r.fields["peer_uid"] == os.getuid() for r in asks)
    assert all(r.levelno == logging.DEBUG for r in asks)


def test_member_wait_times_out_with_what_the_node_last_showed(config: Path, serve: Any) -> None:
    serve(ScriptedNode([status_doc(0, [1, 2, 3])]))
    result = runner.invoke(
        app,
        ["member", "wait", "--config", str(config), "--member", "4", "--timeout", "0.5"],
    )
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "timed out after 0.5 s waiting for 4 in the committee" in line
    assert "last: node 1: epoch 0" in line
    result = runner.invoke(
        app, ["member", "wait", "--config", str(config), "--serving", "--timeout", "0"]
    )
    assert result.exit_code == 0


def test_propose_over_the_socket_is_logged_with_its_arguments_and_caller(
    config: Path, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    serve(ScriptedNode([status_doc(0, [1, 2, 3])]))
    with caplog.at_level(logging.INFO, logger="quorum_kms"):
        result = runner.invoke(app, ["member", "propose", "--config", str(config), "remove", "3"])
    assert result.exit_code == 0
    assert result.stdout == "07" * 32 + "\n"
    (rec,) = [r for r in caplog.records if r.getMessage() == "admin request"]
    token = load(config).admin_token_file.read_text().strip()
    assert rec.fields == {
        "op": "propose",
        "change": "remove",
        "index": 3,
        "peer_pid": os.getpid(),
        "peer_uid": os.getuid(),
        "peer_gid": os.getgid(),
        "ok": True,
        "proposal_id": "07" * 32,
    }
    assert token not in json.dumps(rec.fields)


def test_kms_status_prints_the_whole_key_and_the_next_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    st = status_doc(0, [1, 2, 3])

    def get(url: str, timeout: float) -> httpx.Response:
        assert url == "http://node:8080/v1/status"
        return httpx.Response(200, json=st)

    monkeypatch.setattr(httpx, "get", get)
    result = runner.invoke(app, ["status", "--url", "http://node:8080"], terminal_width=60)
    assert result.exit_code == 0
    assert f"  master public key  {MPK}" in result.stdout.splitlines()
    assert "  healthy            yes (member of epoch 0)" in result.stdout
    assert "next decision window 12 at 1003" in result.stdout


# --- an invalid change names its rule ----------------------------------------------------------


class CoreTarget(ScriptedNode):
    """The admin channel's view of a node core holding a forged chain's epoch 0."""

    def __init__(self, core: NodeCore) -> None:
        super().__init__([])
        self.core = core

    def propose(self, change: Any) -> bytes:
        return self.core.propose(change)


def core_target(n: int, t: int) -> CoreTarget:
    chain = forged_chain(0, n=n, t=t)
    id_seed, dkg_seed = member_seeds(n)[1]
    config = NodeConfig(
        ParticipantIndex(1), chain.committee, t, genesis_start=1000.0, delta=0.5, window_period=1e9
    )
    dkg, _ = hpke.derive_key_pair(dkg_seed)
    core = NodeCore(
        config,
        SigningKey.from_seed(id_seed),
        dkg,
        rng=random.Random(1).randbytes,
        restored=Restored(chain=tuple(chain.links), share=chain.share(1)),
    )
    return CoreTarget(core)


@pytest.mark.parametrize(
    ("n", "t", "request_", "rule"),
    [
        (4, 3, {"change": "remove", "index": 7}, "index 7 is not a member (members: 1, 2, 3, 4)"),
        (
            4,
            3,
            {"change": "threshold", "threshold": 5},
            "the resulting threshold 5 is out of range for 4 members: it must be between 2 and 4",
        ),
        (
            3,
            3,
            {"change": "remove", "index": 3},
            "the resulting threshold 3 is out of range for 2 members: it must be between 2 and 2"
            " (lower the threshold first)",
        ),
        (
            4,
            3,
            {"change": "add", "member": 2},
            "index 2 is already a member: pick an index never used in this chain",
        ),
    ],
)
def test_an_invalid_change_names_the_rule_it_breaks(
    n: int, t: int, request_: dict[str, Any], rule: str
) -> None:
    target = core_target(n, t)
    req: dict[str, Any] = {"op": "propose", "token": "k", **request_}
    if "member" in req:
        p = target.core.state.committee.members[req.pop("member") - 1]  # type: ignore[union-attr]
        req["join_request"] = {
            "index": p.index,
            "identity": p.identity.hex(),
            "dkg_key": p.dkg_key.hex(),
            "dkg_key_signature": p.dkg_key_signature.hex(),
        }
    reply = admin.handle(target, b"k", json.dumps(req).encode())
    assert reply["ok"] is False
    assert reply["error"] == f"the change is not valid for the committee of epoch 0: {rule}"


# --- log level ----------------------------------------------------------------------------------


def test_log_level() -> None:
    logger = logging.getLogger("quorum_kms")
    saved = (logger.level, logger.handlers[:], logger.propagate)
    try:
        configure_logging("json", "warning")
        assert logger.level == logging.WARNING
        configure_logging("text", "debug")
        assert logger.level == logging.DEBUG
        with pytest.raises(ConfigError, match="log level 'loud' is not one of debug, info"):
            configure_logging("json", "loud")
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
    result = runner.invoke(app, ["node", "run", "--config", "x.toml", "--log-level", "loud"])
    assert result.exit_code == 2


def test_node_run_takes_its_log_level_from_the_command_line(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kms.app import setup

    seen: list[tuple[str, str]] = []

    def configure(fmt: str, level: str = "info") -> None:
        seen.append((fmt, level))
        raise ConfigError("stopped here by the test")

    monkeypatch.setattr(setup, "configure_logging", configure)
    result = runner.invoke(
        app,
        ["node", "run", "--config", str(config), "--log-level", "debug", "--log-format", "text"],
    )
    assert result.exit_code == 2
    assert seen == [("text", "debug")]
    seen.clear()
    runner.invoke(app, ["node", "run", "--config", str(config)])
    assert seen == [("json", "info")]


def test_a_request_with_a_wrong_token_is_logged_as_a_warning_without_any_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = ScriptedNode([status_doc(0, [1, 2, 3])])
    raw = json.dumps({"op": "approve", "proposal_id": "ab" * 32, "token": "guess"}).encode()
    with caplog.at_level(logging.INFO, logger="quorum_kms"):
        reply = admin.handle(node, b"secret-token", raw, peer={"pid": 7, "uid": 1001, "gid": 1001})
    assert reply == {"ok": False, "error": "unauthorised"}
    (rec,) = [r for r in caplog.records if r.getMessage() == "admin request"]
    assert rec.levelno == logging.WARNING
    assert rec.fields["op"] == "approve" and rec.fields["peer_uid"] == 1001
    assert rec.fields["error"] == "unauthorised"
    assert "guess" not in json.dumps(rec.fields) and "secret-token" not in json.dumps(rec.fields)


def test_member_wait_asks_again_while_no_node_answers(config: Path) -> None:
    load(config).admin_socket.unlink(missing_ok=True)
    result = runner.invoke(
        app, ["member", "wait", "--config", str(config), "--epoch", "0", "--timeout", "0.5"]
    )
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert line.startswith("error: timed out after 0.5 s waiting for epoch >= 0; last: cannot")
    assert "is the node running?" in line
