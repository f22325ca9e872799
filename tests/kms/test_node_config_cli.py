"""``node.toml`` is parsed strictly; ``kms node init|check-config|run`` fail in one line.

Each error test edits a real configuration (made by ``kms node init`` and
``kms committee apply``) the way an operator would get it wrong, then runs the
command: the answer is one ``error: …`` line on stderr naming the file, the line
and the key, exit code 2, and no traceback.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kms.app import devnet
from kms.app.config import ConfigError, load
from kms.app.setup import write_config
from kms.cli import app

runner = CliRunner()
RECORD_KEYS = {"index", "identity", "dkg_key", "dkg_key_signature", "peer_id", "addresses", "url"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kms(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result: Any) -> str:
    """The single ``error:`` line of a failed command (exit 2, no traceback)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert not [line for line in result.stderr.splitlines() if line and not line.startswith("{")][
        1:
    ], result.stderr  # besides JSON log lines, nothing but the error line
    return errors[0]


@pytest.fixture(scope="module")
def committee(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three nodes made by `kms node init`, their sections filled in by hand as the guide
    once said (so that these tests run on any code that has `kms node init`)."""
    base = tmp_path_factory.mktemp("committee")
    records, listens = [], []
    for i in (1, 2, 3):
        listens.append(f"/ip4/127.0.0.1/tcp/{free_port()}")
        result = kms(
            "node", "init", "--dir", base / f"n{i}", "--index", str(i),
            "--listen", listens[-1], "--http", f"127.0.0.1:{free_port()}", "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        records.append(json.loads(result.stdout))
    for i in (1, 2, 3):
        path = base / f"n{i}" / "node.toml"
        doc = tomllib.loads(path.read_text())
        doc["committee"].update(
            threshold=2,
            genesis_start=4_000_000_000.0,
            genesis=[
                {k: r[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")}
                for r in records
            ],
        )
        doc["peers"] = [
            {"index": r["index"], "multiaddr": f"{listens[k]}/p2p/{r['peer_id']}"}
            for k, r in enumerate(records)
            if r["index"] != i
        ]
        doc["node"]["policies_dir"] = "policies"
        write_config(path, doc)
    return base


@pytest.fixture
def node(committee: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of node 1's directory (and its passphrase), free to break."""
    shutil.copytree(committee / "n1", tmp_path / "n1")
    shutil.copy2(committee / "n1.passphrase", tmp_path / "n1.passphrase")
    yield tmp_path / "n1" / "node.toml"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert re.search(old, text, flags=re.M), old
    path.write_text(re.sub(old, new, text, count=1, flags=re.M))


def line_of(path: Path, pattern: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(pattern, line):
            return number
    raise AssertionError(pattern)


def test_a_misspelt_key_is_refused_with_its_line_and_the_right_name(node: Path) -> None:
    # `polices_dir` used to be ignored silently: key release stayed off without a word.
    edit(node, r"^policies_dir = ", "polices_dir = ")
    line = one_error_line(kms("node", "check-config", "--config", node))
    assert line == (
        f"error: {node}:{line_of(node, 'polices_dir')}: unknown key 'polices_dir' in [node] "
        "(did you mean 'policies_dir'?)"
    )
    # `kms node run` parses the same way, before it opens anything.
    assert one_error_line(kms("node", "run", "--config", node)) == line


@pytest.mark.parametrize(
    ("old", "new", "key", "where"),
    [
        (r"^http = .*$", 'http = "127.0.0.1:99999"', "http", r"^http = "),
        (r"^http = .*$", 'http = "8080"', "http", r"^http = "),
        (r"^threshold = .*\n", "", "threshold", r"^\[committee\]"),
        (r"^threshold = .*$", 'threshold = "2"', "threshold", r"^threshold = "),
        (r'^multiaddr = "/ip4/127.0.0.1/tcp/', 'multiaddr = "/ip4/127.0.0.1/udp/', "multiaddr",
         r"^multiaddr = \"/ip4/127.0.0.1/udp"),
        (r"^listen = .*$", 'listen = "/ip4/300.1.1.1/tcp/1"', "listen", r"^listen = "),
        (r"^index = 1$", 'index = 1\npublic_url = "ftp://x"', "public_url", r"^public_url"),
        (r"^index = 1$", 'index = 1\nannounce = "/ip4/1.2.3.4/tcp/1"', "announce", r"^announce"),
        (r"^index = 1$", 'index = 1\nlog_level = "loud"', "log_level", r"^log_level"),
        (r"^log_format = .*$", 'log_format = "xml"', "log_format", r"^log_format"),
        (r"^delta = .*$", "delta = 0", "delta", r"^delta"),
        (r"^\[node\]$", "[nodes]\nx = 1\n[node]", "nodes", r"^\[nodes\]"),
        (r"^accept_simulated_quotes = .*$", 'accept_simulated_quotes = "yes"',
         "accept_simulated_quotes", r"^accept_simulated_quotes"),
    ],
)  # fmt: skip
def test_a_wrong_value_names_the_key_and_its_line(
    node: Path, old: str, new: str, key: str, where: str
) -> None:
    edit(node, old, new)
    line = one_error_line(kms("node", "check-config", "--config", node))
    assert line.startswith(f"error: {node}:{line_of(node, where)}: "), line
    assert f"'{key}'" in line, line


def test_a_tampered_genesis_record_is_refused_at_its_table(node: Path) -> None:
    text = node.read_text()
    start = text.index("[[committee.genesis]]\nindex = 2")
    dkg = text.index("dkg_key = ", start)
    node.write_text(text[: dkg + 11] + ("0" if text[dkg + 11] != "0" else "1") + text[dkg + 12 :])
    line = one_error_line(kms("node", "check-config", "--config", node))
    header = text[:start].count("\n") + 1
    assert line == (
        f"error: {node}:{header}: genesis participant 2: DKG key not signed by its identity"
    )


def test_check_config_prints_ok_and_the_committee_digest(node: Path) -> None:
    result = kms("node", "check-config", "--config", node)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ok",
        f"committee digest: {load(node).committee_digest.hex()}",
    ]


@pytest.fixture
def busy() -> Iterator[Any]:
    sockets: list[socket.socket] = []

    def take(port: int) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        sockets.append(s)

    yield take
    for s in sockets:
        s.close()


def _port(node: Path, key: str) -> int:
    cfg = load(node)
    return cfg.http_port if key == "http" else int(cfg.listen.rsplit("/", 1)[1])


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("passphrase-mode", "accessible by group or other (mode 0640): run `chmod 600"),
        ("wrong-passphrase", "wrong passphrase (or sealing key)"),
        ("no-store", "no store at"),
        ("libp2p-port", "Address already in use; stop what uses it or change `listen`"),
        ("http-port", "cannot listen for HTTP on 127.0.0.1:"),
        ("admin-dir", "the admin socket's directory"),
        ("bad-config", "unknown key 'pccs' in [node] (did you mean 'pccs_url'?)"),
    ],
)
def test_start_up_failures_are_one_line_and_exit_2(
    node: Path, busy: Any, breakage: str, expected: str
) -> None:
    passphrase = node.parent.parent / "n1.passphrase"
    if breakage == "passphrase-mode":
        passphrase.chmod(0o640)
    elif breakage == "wrong-passphrase":
        passphrase.write_text("0" * 64 + "\n")
    elif breakage == "no-store":
        (node.parent / "node.db").unlink()
    elif breakage == "libp2p-port":
        busy(_port(node, "listen"))
    elif breakage == "http-port":
        busy(_port(node, "http"))
    elif breakage == "admin-dir":
        edit(node, r"^admin_socket = .*$", 'admin_socket = "run/admin.sock"')
    elif breakage == "bad-config":
        edit(node, r"^index = 1$", 'index = 1\npccs = "https://pccs.example"')
    line = one_error_line(kms("node", "run", "--config", node))
    assert expected in line, line
    assert not (node.parent / "node.db-wal").exists() or breakage != "no-store"


def test_the_header_names_no_section_in_brackets(committee: Path) -> None:
    text = (committee / "n1" / "node.toml").read_text()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments and not [c for c in comments if re.search(r"\[\[?[A-Za-z_.]+\]\]?", c)]
    # A scripted edit that finds the first "[committee]" finds the section itself.
    at = text.index("[committee]")
    assert text[at - 1] == "\n" and text[at : text.index("\n", at)] == "[committee]"


def test_init_options_and_the_record(tmp_path: Path) -> None:
    tee = tmp_path / "tee"
    tee.mkdir()
    (tee / "root.der").write_bytes(b"root")
    (tee / "collateral.json").write_text("{}")
    result = kms(
        "node", "init", "--dir", tmp_path / "n", "--index", "5",
        "--listen", "/ip4/0.0.0.0/tcp/4001", "--http", "0.0.0.0:8080",
        "--announce", "/dns4/node5.example/tcp/4001", "--announce", "/ip4/203.0.113.5/tcp/4001",
        "--public-url", "https://node5.example", "--simulated-tee", tee,
        "--pccs-url", "https://pccs.example", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record) == RECORD_KEYS
    peer = record["peer_id"]
    assert record["addresses"] == [
        f"/dns4/node5.example/tcp/4001/p2p/{peer}",
        f"/ip4/203.0.113.5/tcp/4001/p2p/{peer}",
    ]
    assert record["url"] == "https://node5.example"
    assert (tmp_path / "n" / "policies").is_dir()
    node = tomllib.loads((tmp_path / "n" / "node.toml").read_text())["node"]
    assert node["policies_dir"] == "policies" and node["pccs_url"] == "https://pccs.example"
    assert node["accept_simulated_quotes"] is True
    assert Path(node["simulated_root_ca"]) == (tee / "root.der").resolve()
    assert Path(node["collateral_file"]) == (tee / "collateral.json").resolve()
    assert Path(node["simulated_tee"]) == tee.resolve()
    # Listening on every interface, without --announce: nothing to announce, no URL.
    result = kms(
        "node", "init", "--dir", tmp_path / "m", "--listen", "/ip4/0.0.0.0/tcp/4001",
        "--http", "0.0.0.0:8080", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["addresses"] == [] and json.loads(result.stdout)["url"] is None


def test_init_prints_the_record_as_plain_text(tmp_path: Path) -> None:
    result = kms("node", "init", "--dir", tmp_path / "n", "--listen", "/ip4/127.0.0.1/tcp/4001")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[-1])
    assert set(record) == RECORD_KEYS
    assert record["addresses"] == [f"/ip4/127.0.0.1/tcp/4001/p2p/{record['peer_id']}"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--announce", "/ip4/1.2.3.4/tcp/x"], "error: --announce: 'x' is not a port"),
        (["--public-url", "node5:8080"], "error: --public-url: 'node5:8080' is not an http(s)"),
        (["--http", "localhost"], "error: --http must be host:port"),
        (["--listen", "/dns4/a.example/tcp/1"], "error: --listen: '/dns4/a.example/tcp/1'"),
        (["--simulated-tee", "nowhere"], "error: no simulated TEE in nowhere"),
    ],
)
def test_init_refuses_bad_options_before_writing_anything(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    line = one_error_line(kms("node", "init", "--dir", tmp_path / "n", *args))
    assert line.startswith(expected), line
    assert not (tmp_path / "n").exists()


def test_files_older_code_wrote_still_load(tmp_path: Path) -> None:
    # A devnet's node.toml (simulated TEE, PCCS, policies) and a joining node's.
    directory = tmp_path / "devnet"
    devnet.create(
        directory, 3, 2, delta=0.5, start_in=60.0, window_period=15.0, refresh_interval=0.0,
        pccs_url="http://127.0.0.1:1",
    )  # fmt: skip
    for i in (1, 2, 3):
        cfg = load(directory / f"node-{i}" / "node.toml")
        assert cfg.accept_simulated_quotes and cfg.simulated_tee is not None
        assert (cfg.simulated_tee / "root.der").is_file()
    # The stores written by the code at e1d36d0 (the upgrade fixture) and their node.toml.
    fixture = Path(__file__).parent / "store" / "data" / "e1d36d0"
    for i in (1, 2):
        cfg = load(fixture / f"node-{i}" / "node.toml")
        assert cfg.index == i and len(cfg.peers) == 2
        assert cfg.policies_dir == fixture / f"node-{i}" / "policies"
    # The template `kms node init` wrote before announce/public_url/policies_dir existed.
    old = (fixture / "node-1" / "node.toml").read_text()
    for key in ("policies_dir", "simulated_tee", "simulated_root_ca", "collateral_file"):
        old = re.sub(rf"^{key} = .*\n", "", old, flags=re.M)
    (tmp_path / "old.toml").write_text(
        old.replace("accept_simulated_quotes = true", "accept_simulated_quotes = false")
    )
    cfg = load(tmp_path / "old.toml")
    assert cfg.policies_dir == tmp_path / "policies" and cfg.log_level == "info"
    assert cfg.announce == (cfg.listen,) and cfg.public_url == f"http://127.0.0.1:{cfg.http_port}"


def test_config_error_messages_are_one_line(node: Path) -> None:
    edit(node, r"^store = .*$", "store = 3")
    with pytest.raises(ConfigError) as err:
        load(node)
    assert "\n" not in str(err.value) and "'store' in [node]" in str(err.value)


@pytest.mark.slow
def test_the_running_node_logs_its_committee_digest(node: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "KMS_DIE_WITH_PARENT"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kms.cli", "node", "run", "--config", str(node)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        for raw in proc.stderr:
            if '"node running"' in raw:
                line = json.loads(raw)
                break
            assert time.monotonic() < deadline, "no `node running` line"
        else:
            raise AssertionError(f"node exited {proc.wait()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert line["committee_digest"] == load(node).committee_digest.hex()


def test_a_committee_file_pasted_into_node_toml_points_to_apply(node: Path) -> None:
    with node.open("a") as f:
        f.write('\n[[members]]\nindex = 2\naddresses = ["/ip4/127.0.0.1/tcp/1"]\n')
    line = one_error_line(kms("node", "check-config", "--config", node))
    members = line_of(node, r"^\[\[members\]\]")
    assert line.startswith(f"error: {node}:{members}: ")
    assert "`kms committee apply`" in line
