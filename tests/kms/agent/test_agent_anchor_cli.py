"""``kms agent run --config``: the config file must be, byte for byte, a ``configs:`` entry of
the compose the CVM measured. A host that changes the master public key or a committee URL
in the file the agent reads gets an agent that exits non-zero before its socket exists.

The CVM is a fake dstack tree built from the simulated TEE (``faketee``): dstack's own
guest agent answering ``GetQuote``/``Info`` on a Unix socket, whose event log states the
compose hash of an ``app-compose.json`` measuring the agent config; the agent reaches it
by the socket its command line names (``--tee dstack --dstack-socket``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faketee import FakeDstackAgent, make_cvm

from kms.app import devnet

MPK = (
    "93e02b6052719f607dacd3a088274f65596bd0d09920b61ab5da61bbdc7f5049334cf11213945d57e5ac7d"
    "055d042b7e024aa2b2f08f0a91260805272dc51051c6e47ad4fa403b02b4510b647ae3d1770bac0326a805"
    "bbefd48056c8c121bdb8"
)
"""A valid master public key (the G2 generator): only the committee is missing."""
URLS = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
"""Nothing listens there: an agent that gets past the check fails at the committee."""


def _run(
    tmp_path: Path, written: str, measured: str, *, tee: bool = True
) -> tuple[subprocess.CompletedProcess[str], Path]:
    link = tmp_path / "guest.sock"
    sock = tmp_path / "agent.sock"
    measured_text = measured.format(sock=sock, guest=link)
    cvm = make_cvm(tmp_path, app_compose=devnet.dstack_app_compose("anchor", measured_text))
    config = tmp_path / "agent.toml"
    config.write_text(written.format(sock=sock, guest=link))
    command = [sys.executable, "-m", "kms.cli", "agent", "run", "--config", str(config)]
    if tee:
        command += ["--tee", "dstack", "--dstack-socket", str(link)]
    with FakeDstackAgent(cvm) as fake:
        link.symlink_to(fake.socket_path)
        r = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    return r, sock


def _config(mpk: str = MPK, urls: list[str] = URLS) -> str:
    return devnet.agent_config_text(mpk, urls, socket="{sock}")


@pytest.mark.parametrize(
    ("written", "named"),
    [
        (_config(mpk="b2" * 96), "mpk"),
        (_config(urls=["http://127.0.0.1:9", "http://attacker.example:80"]), "urls"),
    ],
)
def test_a_config_the_compose_does_not_measure_is_refused_before_the_socket(
    tmp_path: Path, written: str, named: str
) -> None:
    r, sock = _run(tmp_path, written, _config())
    assert r.returncode != 0
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert named in lines[0] and "measured" in lines[0]
    assert not sock.exists()


def test_the_measured_config_itself_passes_the_check(tmp_path: Path) -> None:
    """The control: the same bytes get past the check, to the (absent) committee."""
    r, sock = _run(tmp_path, _config(), _config())
    assert r.returncode != 0
    assert "measured" not in r.stderr and "no node answered" in r.stderr, r.stderr
    assert not sock.exists()


def test_a_config_naming_a_fake_tee_is_refused_before_the_socket(tmp_path: Path) -> None:
    """The host's fake dstack socket, named by a config the fake's compose embeds: the
    config cannot choose the TEE source, so the agent refuses it (no socket)."""
    fake_tee = _config() + '\n[tee]\nsource = "dstack"\ndstack_socket = "{guest}"\n'
    r, sock = _run(tmp_path, fake_tee, fake_tee, tee=False)
    assert r.returncode != 0 and r.stdout == ""
    assert "command line" in r.stderr, r.stderr
    assert not sock.exists()


def test_the_tee_source_must_be_on_the_command_line(tmp_path: Path) -> None:
    r, sock = _run(tmp_path, _config(), _config(), tee=False)
    assert r.returncode != 0 and "--tee" in r.stderr, r.stderr
    assert not sock.exists()
