"""The agent's config is accepted only as the measured compose file states it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from faketee import FakeTsm, encode_ccel, make_cvm, write_runtime_log

from kms.agent.config import (
    AgentConfigError,
    MeasuredConfigError,
    load_measured_config,
    measured_configs,
    parse_agent_config,
)
from kms.agent.tee import SimulatedSource, TdxSource, TeeError, TeeView, read_view

MPK = bytes(range(96))
URLS = ["http://127.0.0.1:8001", "http://127.0.0.1:8002", "http://127.0.0.1:8003"]
AGENT_TOML = f"""[agent]
mpk = "{MPK.hex()}"
urls = {json.dumps(URLS)}
socket = "/var/run/dstack.sock"
env_file = "/app/env.enc"
env_out = "/run/app/.env"
"""


def app_compose_with(agent_toml: str) -> str:
    compose = {
        "services": {
            "agent": {
                "image": "example/quorum-kms-agent:1",
                "command": ["kms", "agent", "run", "--config", "/etc/quorum-kms/agent.toml"],
                "configs": [{"source": "agent.toml", "target": "/etc/quorum-kms/agent.toml"}],
            },
            "app": {"image": "example/app:1"},
        },
        "configs": {"agent.toml": {"content": agent_toml}, "other": {"content": "x = 1\n"}},
    }
    return json.dumps(
        {
            "manifest_version": 2,
            "name": "anchored",
            "runner": "docker-compose",
            "docker_compose_file": yaml.safe_dump(compose, sort_keys=False),
        },
        indent=2,
    )


def measured_view(base: Path, agent_toml: str = AGENT_TOML) -> TeeView:
    cvm = make_cvm(base, app_compose=app_compose_with(agent_toml))
    return read_view(
        SimulatedSource(
            cvm.tee_dir,
            cvm.measurement,
            cvm.app_id,
            cvm.app_compose,
            instance_id=cvm.instance_id,
            boot_events=cvm.boot_json,
        )
    )


def write(base: Path, text: str) -> Path:
    path = base / "agent.toml"
    path.write_text(text)
    return path


def test_the_identical_bytes_are_accepted(tmp_path: Path) -> None:
    view = measured_view(tmp_path)
    assert measured_configs(view.app_compose)["agent.toml"] == AGENT_TOML
    cfg = load_measured_config(write(tmp_path, AGENT_TOML), view)
    assert cfg.mpk == MPK
    assert cfg.urls == tuple(URLS)
    assert str(cfg.socket) == "/var/run/dstack.sock"
    assert (str(cfg.env_file), str(cfg.env_out)) == ("/app/env.enc", "/run/app/.env")


def test_a_config_with_another_mpk_is_refused(tmp_path: Path) -> None:
    view = measured_view(tmp_path)
    forged = AGENT_TOML.replace(MPK.hex(), bytes(reversed(MPK)).hex())
    with pytest.raises(MeasuredConfigError, match=r"'agent.toml' in \[agent\] mpk$"):
        load_measured_config(write(tmp_path, forged), view)


def test_a_config_with_another_committee_url_is_refused(tmp_path: Path) -> None:
    view = measured_view(tmp_path)
    forged = AGENT_TOML.replace("127.0.0.1:8003", "evil.example.org")
    with pytest.raises(MeasuredConfigError, match=r"in \[agent\] urls$"):
        load_measured_config(write(tmp_path, forged), view)


def test_a_config_with_the_same_values_in_other_bytes_is_refused(tmp_path: Path) -> None:
    view = measured_view(tmp_path)
    with pytest.raises(MeasuredConfigError, match="not its bytes"):
        load_measured_config(write(tmp_path, "# comment\n" + AGENT_TOML), view)


def test_a_compose_without_the_config_is_refused(tmp_path: Path) -> None:
    view = measured_view(tmp_path)
    bare = json.dumps({"docker_compose_file": "services:\n  app:\n    image: x\n"})
    with pytest.raises(MeasuredConfigError, match="no top-level configs entry"):
        load_measured_config(write(tmp_path, AGENT_TOML), _with_compose(view, bare))
    with pytest.raises(MeasuredConfigError, match="no docker_compose_file"):
        load_measured_config(write(tmp_path, AGENT_TOML), _with_compose(view, "{}"))


def _with_compose(view: TeeView, compose: str) -> TeeView:
    from dataclasses import replace

    return replace(view, app_compose=compose)


def test_a_compose_that_does_not_hash_to_the_event_is_refused_at_read_view(
    tmp_path: Path,
) -> None:
    """The attacker rewrites the compose file beside the CVM to carry their own agent
    config: the compose no longer hashes to the measured event, so no view exists."""
    cvm = make_cvm(tmp_path, app_compose=app_compose_with(AGENT_TOML))
    ccel = tmp_path / "CCEL"
    ccel.write_bytes(encode_ccel(cvm.boot_events))
    log = write_runtime_log(tmp_path / "events.log", cvm.runtime, form="legacy")
    compose = tmp_path / "app-compose.json"
    forged_toml = AGENT_TOML.replace(MPK.hex(), bytes(96).hex())
    compose.write_text(app_compose_with(forged_toml))
    with FakeTsm(tmp_path, cvm.quote) as tsm:
        with pytest.raises(TeeError, match="compose-hash"):
            read_view(TdxSource(tsm.dir, ccel, log, compose))
        compose.write_text(cvm.app_compose)
        view = read_view(TdxSource(tsm.dir, ccel, log, compose))
    with pytest.raises(MeasuredConfigError, match=r"\[agent\] mpk"):
        load_measured_config(write(tmp_path, forged_toml), view)
    assert load_measured_config(write(tmp_path, AGENT_TOML), view).mpk == MPK


def test_the_host_shared_directory_is_never_read(tmp_path: Path) -> None:
    view = measured_view(tmp_path)
    with pytest.raises(MeasuredConfigError, match="host-shared"):
        load_measured_config(Path("/dstack/.host-shared/agent.toml"), view)
    from kms.agent.config import tee_settings

    shared_out = AGENT_TOML.replace("/run/app/.env", "/dstack/x/../.host-shared/.env")
    with pytest.raises(AgentConfigError, match=r"agent.toml:6: .*host-shared"):
        parse_agent_config(shared_out)
    with pytest.raises(AgentConfigError, match=r"--dstack-socket .*host-shared"):
        tee_settings("dstack", dstack_socket=Path("/dstack/.host-shared/dstack.sock"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (AGENT_TOML + "extra = 1\n", r":7: unknown key 'extra' in \[agent\]"),
        (AGENT_TOML.replace("socket = ", "sockets = "), r":4: unknown key 'sockets' in \[agent\]"),
        (AGENT_TOML + "[more]\n", r":7: unknown section \[more\]"),
        (AGENT_TOML + '\n[tee]\nsource = "tdx"\n', r":8: \[tee\] is not read .*command line"),
        (AGENT_TOML.replace(MPK.hex(), "00"), r":2: 'mpk' in \[agent\] must be 96 bytes"),
        (AGENT_TOML.replace("http://127.0.0.1:8001", "ftp://x"), r":3: .* not an http\(s\) URL"),
        (AGENT_TOML.replace('env_out = "/run/app/.env"\n', ""), r"go together"),
        (AGENT_TOML.replace('"/app/env.enc"', '"env.enc"'), r":5: .* absolute path"),
        ("", r":1: missing section \[agent\]"),
    ],
)
def test_the_format_is_strict_and_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(AgentConfigError, match=message):
        parse_agent_config(text)


def test_tee_settings_name_the_source_with_real_defaults() -> None:
    from kms.agent.config import tee_settings

    source = tee_settings("tdx", ccel=Path("/tmp/CCEL")).make_source()
    assert isinstance(source, TdxSource)
    assert str(source.ccel_path) == "/tmp/CCEL"
    assert str(source.tsm_dir) == "/sys/kernel/config/tsm/report"
    for args, message in (
        (("sgx",), "--tee must be one of"),
        (("dstack",), "--dstack-socket PATH"),
        (("tdx",), None),
    ):
        if message is None:
            assert tee_settings(*args).source == "tdx"
            continue
        with pytest.raises(AgentConfigError, match=message):
            tee_settings(*args)
    with pytest.raises(AgentConfigError, match="--ccel does not go with --tee dstack"):
        tee_settings("dstack", dstack_socket=Path("/s"), ccel=Path("/c"))
    with pytest.raises(AgentConfigError, match="--ccel must be an absolute path"):
        tee_settings("tdx", ccel=Path("CCEL"))


def test_a_devnet_compose_carries_the_agent_config_as_a_measured_entry(tmp_path: Path) -> None:
    from kms.agent.tee import devnet_app_compose

    compose = devnet_app_compose("demo", AGENT_TOML)
    assert measured_configs(compose) == {"agent.toml": AGENT_TOML}
    assert measured_configs(devnet_app_compose("demo")) == {}
    view = _with_compose(measured_view(tmp_path), compose)
    assert load_measured_config(write(tmp_path, AGENT_TOML), view).urls == tuple(URLS)


# --- the TEE source is the command line's, and the host-shared directory is resolved -----------

VICTIM_TOML = f"""[agent]
mpk = "{MPK.hex()}"
urls = {json.dumps(URLS)}
socket = "/var/run/dstack.sock"
"""
"""A config in the current format: no ``[tee]``."""


def _spellings(shared: Path, tmp_path: Path, name: str) -> list[Path]:
    """Three ways to name ``shared/name`` that are not its plain path: a double leading
    slash, a ``..`` detour and a symlink outside the directory."""
    (shared.parent / "x").mkdir(exist_ok=True)
    tmp_path.mkdir(exist_ok=True)
    link = tmp_path / f"link-{name}"
    link.symlink_to(shared / name)
    return [
        Path("/" + str(shared / name)),
        shared.parent / "x" / ".." / shared.name / name,
        link,
    ]


def test_a_config_in_the_host_shared_directory_is_refused_however_it_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host plants agent.toml in the directory it writes (here a temp directory
    standing for ``/dstack/.host-shared``, so the files exist): reaching it by ``//``, by
    ``..`` or through a symlink is refused like its plain path, even though its bytes are
    the measured ones."""
    from kms.agent import config as cfgmod

    view = measured_view(tmp_path / "cvm", VICTIM_TOML)
    shared = tmp_path / "host-shared"
    shared.mkdir()
    monkeypatch.setattr(cfgmod, "HOST_SHARED_DIR", shared)
    (shared / "agent.toml").write_text(VICTIM_TOML)
    for path in [shared / "agent.toml", *_spellings(shared, tmp_path, "agent.toml")]:
        with pytest.raises(MeasuredConfigError, match="host-shared"):
            load_measured_config(path, view)
    assert load_measured_config(write(tmp_path, VICTIM_TOML), view).mpk == MPK  # the control


def test_tee_paths_into_the_host_shared_directory_are_refused_however_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TEE source's paths (from the command line) may not name the host's files by
    any spelling."""
    from kms.agent import config as cfgmod
    from kms.agent.config import tee_settings  # the command line's TEE source

    shared = tmp_path / "host-shared"
    shared.mkdir()
    monkeypatch.setattr(cfgmod, "HOST_SHARED_DIR", shared)
    for name in ("dstack.sock", "CCEL", "events.log", "app-compose.json", "tsm"):
        (shared / name).touch()
    for key, name in (
        ("tsm_dir", "tsm"),
        ("ccel", "CCEL"),
        ("runtime_log", "events.log"),
        ("app_compose", "app-compose.json"),
    ):
        for path in [shared / name, *_spellings(shared, tmp_path / key, name)]:
            with pytest.raises(AgentConfigError, match=f"--{key.replace('_', '-')}.*host-shared"):
                tee_settings("tdx", **{key: path})
    for path in [shared / "dstack.sock", *_spellings(shared, tmp_path, "dstack.sock")]:
        with pytest.raises(AgentConfigError, match=r"--dstack-socket.*host-shared"):
            tee_settings("dstack", dstack_socket=path)
    ok = tee_settings("dstack", dstack_socket=tmp_path / "genuine.sock")
    assert ok.dstack_socket == tmp_path / "genuine.sock"


def test_a_config_cannot_choose_the_tee_source(tmp_path: Path) -> None:
    """The attack: a config naming a fake TEE (a socket the host answers) whose compose
    embeds that same config. The config may not name a TEE source at all: any ``[tee]``
    is refused, with the place to choose it."""
    from faketee import FakeDstackAgent

    with_tee = VICTIM_TOML + '\n[tee]\nsource = "dstack"\ndstack_socket = "/tmp/fake.sock"\n'
    with pytest.raises(AgentConfigError, match=r":6: .*\[tee\].*command line"):
        parse_agent_config(with_tee)
    cvm = make_cvm(tmp_path / "attacker", app_compose=app_compose_with(with_tee))
    with FakeDstackAgent(cvm) as fake:
        from kms.agent.tee import DstackSidecarSource

        view = read_view(DstackSidecarSource(fake.socket_path))
    with pytest.raises(AgentConfigError, match="command line"):
        load_measured_config(write(tmp_path, with_tee), view)
