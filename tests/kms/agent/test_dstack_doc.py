"""docs/dstack.md's sample ``app-compose.json`` is real: it is what the devnet's generator
writes for the example key and URLs, and its docker compose measures the agent config as a
``configs:`` entry, byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from kms.app import devnet

DOC = Path(__file__).resolve().parents[3] / "docs" / "dstack.md"
EXAMPLE_MPK = "a1" * 96
EXAMPLE_URLS = [f"https://kms{i}.example.org:8443" for i in (1, 2, 3)]


def _sample() -> str:
    text = DOC.read_text()
    section = text.split("## A complete `app-compose.json`", 1)[1]
    match = re.search(r"```json\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_the_sample_is_what_the_generator_writes() -> None:
    config = devnet.agent_config_text(EXAMPLE_MPK, EXAMPLE_URLS)
    assert _sample() == devnet.dstack_app_compose("my-app", config)


def test_the_sample_measures_the_agent_config_byte_for_byte() -> None:
    doc = json.loads(_sample())
    compose = yaml.safe_load(doc["docker_compose_file"])
    entry = compose["configs"][devnet.AGENT_CONFIG_NAME]["content"]
    assert entry == devnet.agent_config_text(EXAMPLE_MPK, EXAMPLE_URLS)
    agent = compose["services"]["kms-agent"]
    assert agent["configs"] == [
        {"source": devnet.AGENT_CONFIG_NAME, "target": "/etc/kms/agent.toml"}
    ]
    # The TEE source is on the measured command line, not in the config.
    command = agent["command"]
    assert command[command.index("--tee") + 1] == "dstack"
    assert command[command.index("--dstack-socket") + 1] == devnet.DSTACK_GUEST_SOCKET
    assert "[tee]" not in entry


def test_the_sample_config_parses_and_is_a_measured_entry() -> None:
    from kms.agent.config import measured_configs, parse_agent_config

    doc_text = _sample()
    config = devnet.agent_config_text(EXAMPLE_MPK, EXAMPLE_URLS)
    assert config in measured_configs(doc_text).values()
    parsed = parse_agent_config(config)
    assert parsed.mpk.hex() == EXAMPLE_MPK and list(parsed.urls) == EXAMPLE_URLS
    assert str(parsed.socket) == devnet.AGENT_SOCKET
