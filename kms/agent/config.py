"""``agent.toml``: the agent's configuration, accepted only as the measured compose states it.

The file names the committee the agent trusts (its master public key ``mpk`` and its
``urls``), so whoever could change it could hand the app keys of their own making. It is
therefore read from ONE place the CVM measured and nowhere else:

* the file's exact bytes must equal the ``content`` of a top-level ``configs:`` entry of
  the docker compose (``docker_compose_file``) inside the verbatim ``app_compose`` of the
  :class:`~kms.agent.tee.TeeView` — whose SHA-256 :func:`~kms.agent.tee.read_view` has
  tied to the measured RTMR3 ``compose-hash`` event. Docker writes such an entry into
  the container's own filesystem (``configs: {agent.toml: {content: |...}}`` and a
  ``configs:`` reference in the service); a difference is a :class:`MeasuredConfigError`
  naming the keys (or the byte) that differ, and the agent does not start;
* the MPK and the committee URLs are NEVER read from the environment, from dstack's
  host-shared directory (``/dstack/.host-shared``, written by the host) or from a
  mounted volume: the host controls all three. A config path whose RESOLVED form
  (``os.path.realpath``: ``//``, ``..`` and symlinks undone) is in the host-shared
  directory is refused outright, and so is a file whose open descriptor resolves there.

Compose interpolates ``$`` in ``content``; a config holding ``$`` would reach the
container changed and be refused, so write none.

**The TEE source is not in this file.** The view that verifies the file must not come
from the file: a config naming a fake TEE (a socket or files the host made) could present
a compose of its own embedding the same config, and the bytes would match. So the source
and its paths come only from the agent's command line (``kms agent run --tee dstack
--dstack-socket PATH`` or ``--tee tdx [--tsm-dir D --ccel F --runtime-log F
--app-compose F]``), which the compose's ``command:`` fixes and RTMR3 measures:
:func:`tee_settings` builds the :class:`TeeSettings` (absolute paths, none resolving into
the host-shared directory). A config with a ``[tee]`` section is refused. The check still
proves only that the file is the one measured by the source the command line names: that
source (dstack's guest agent, or configfs-tsm and the kernel's logs) is part of the
agent's trusted computing base.

The format (strict: an unknown key or section is an error naming ``file:line``)::

    [agent]
    mpk = "<96-byte master public key, hex>"
    urls = ["https://kms1.example.org", ...]
    socket = "/var/run/dstack.sock"          # where the guest API is served (default)
    env_file = "/app/env.enc"                # optional: the encrypted env file ...
    env_out = "/run/app/.env"                # ... and where its plaintext is written
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import yaml

from kms.agent.tee import (
    CCEL_PATH,
    DEFAULT_APP_COMPOSE,
    DSTACK_SOCKET,
    LEGACY_RUNTIME_LOG,
    TSM_REPORT_DIR,
    DstackSidecarSource,
    TdxSource,
    TeeSource,
    TeeView,
)

__all__ = [
    "HOST_SHARED_DIR",
    "MAX_CONFIG_SIZE",
    "AgentConfig",
    "AgentConfigError",
    "MeasuredConfigError",
    "TeeSettings",
    "in_host_shared",
    "load_measured_config",
    "measured_configs",
    "parse_agent_config",
    "tee_settings",
]

HOST_SHARED_DIR: Final = Path("/dstack/.host-shared")
MAX_CONFIG_SIZE: Final = 64 * 1024
MPK_SIZE: Final = 96
MAX_URLS: Final = 256
TEE_SOURCES: Final = ("dstack", "tdx")

_AGENT_KEYS: Final = ("mpk", "urls", "socket", "env_file", "env_out")


class AgentConfigError(ValueError):
    """The agent's config is unreadable or wrong (``file:line:`` first when about a place)."""


class MeasuredConfigError(AgentConfigError):
    """The config file is not what the measured compose file states."""


@dataclass(frozen=True)
class TeeSettings:
    """Which :class:`~kms.agent.tee.TeeSource` the agent reads: built from its command
    line by :func:`tee_settings`, never from a file."""

    source: str
    dstack_socket: Path | None = None
    tsm_dir: Path = Path(TSM_REPORT_DIR)
    ccel: Path = Path(CCEL_PATH)
    runtime_log: Path = Path(LEGACY_RUNTIME_LOG)
    app_compose: Path = Path(DEFAULT_APP_COMPOSE)

    def make_source(self) -> TeeSource:
        if self.source == "dstack":
            if self.dstack_socket is None:
                raise AgentConfigError("--tee dstack needs --dstack-socket PATH")
            return DstackSidecarSource(self.dstack_socket)
        return TdxSource(self.tsm_dir, self.ccel, self.runtime_log, self.app_compose)


@dataclass(frozen=True)
class AgentConfig:
    """A parsed ``agent.toml``."""

    mpk: bytes
    urls: tuple[str, ...]
    socket: Path
    env_file: Path | None
    env_out: Path | None


# --- parsing -------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*[\"']?([A-Za-z0-9_-]+)[\"']?\s*=")


def _line(text: str, section: str | None, key: str | None = None) -> int:
    """The line of ``key`` in ``[section]`` (or of the header; else 1)."""
    current: str | None = None
    header_line = 1
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            current = header.group(1)
            if current == section:
                header_line = number
            continue
        found = _KEY.match(line)
        if current == section and found and key is not None and found.group(1) == key:
            return number
    return header_line


class _Lines:
    def __init__(self, where: str, text: str) -> None:
        self.where, self.text = where, text

    def error(self, msg: str, section: str | None, key: str | None = None) -> AgentConfigError:
        return AgentConfigError(f"{self.where}:{_line(self.text, section, key)}: {msg}")


def in_host_shared(path: Path | str) -> bool:
    """Whether ``path``, resolved (``os.path.realpath``: ``//``, ``..`` and symlinks
    undone), is the host-shared directory or inside it."""
    shared = {Path(os.path.realpath(HOST_SHARED_DIR)), Path(os.path.normpath(HOST_SHARED_DIR))}
    real = os.path.realpath(path)
    if real.startswith("//"):
        real = "/" + real.lstrip("/")
    resolved = Path(real)
    return any(resolved == d or d in resolved.parents for d in shared)


def _path(value: object, key: str, lines: _Lines, section: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise lines.error(f"'{key}' in [{section}] must be an absolute path", section, key)
    path = Path(value)
    if in_host_shared(path):
        raise lines.error(
            f"'{key}' in [{section}] is in the host-shared directory {HOST_SHARED_DIR}, "
            "which the host writes",
            section,
            key,
        )
    return path


def _url(value: object, lines: _Lines) -> str:
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.hostname and not parts.query:
            return value
    raise lines.error(f"'urls' in [agent]: {value!r} is not an http(s) URL", "agent", "urls")


def _table(doc: dict[str, Any], name: str, keys: tuple[str, ...], lines: _Lines) -> dict[str, Any]:
    table = doc.get(name)
    if not isinstance(table, dict):
        raise lines.error(f"missing section [{name}]", None)
    for key in table:
        if key not in keys:
            raise lines.error(f"unknown key '{key}' in [{name}]", name, key)
    return table


def tee_settings(
    source: str,
    *,
    dstack_socket: Path | None = None,
    tsm_dir: Path | None = None,
    ccel: Path | None = None,
    runtime_log: Path | None = None,
    app_compose: Path | None = None,
) -> TeeSettings:
    """The TEE source the command line names (``--tee`` and its paths; unset paths are
    the real ones). Every path must be absolute and may not resolve into the host-shared
    directory; ``dstack`` needs ``dstack_socket`` and takes no ``tdx`` path and back."""
    if source not in TEE_SOURCES:
        raise AgentConfigError(f"--tee must be one of {', '.join(TEE_SOURCES)}")
    given = {
        "dstack_socket": dstack_socket,
        "tsm_dir": tsm_dir,
        "ccel": ccel,
        "runtime_log": runtime_log,
        "app_compose": app_compose,
    }
    allowed = ("dstack_socket",) if source == "dstack" else tuple(given)[1:]
    paths: dict[str, Path] = {}
    for key, value in given.items():
        if value is None:
            continue
        option = "--" + key.replace("_", "-")
        if key not in allowed:
            raise AgentConfigError(f"{option} does not go with --tee {source}")
        text = str(value)
        if not text.startswith("/") or "\0" in text:
            raise AgentConfigError(f"{option} must be an absolute path")
        if in_host_shared(text):
            raise AgentConfigError(
                f"{option} {text} is in the host-shared directory {HOST_SHARED_DIR}, "
                "which the host writes"
            )
        paths[key] = Path(text)
    if source == "dstack" and "dstack_socket" not in paths:
        raise AgentConfigError("--tee dstack needs --dstack-socket PATH")
    return TeeSettings(source=source, **paths)


def parse_agent_config(text: str, where: str = "agent.toml") -> AgentConfig:
    """Parse ``agent.toml`` text strictly; :class:`AgentConfigError` names ``where:line``.

    This checks the format only: :func:`load_measured_config` is the only way the agent
    accepts a config."""
    lines = _Lines(where, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"{where}: not TOML: {exc}") from None
    for name in doc:
        if name == "tee":
            raise lines.error(
                "[tee] is not read from the config: the agent's TEE source is chosen on its "
                "measured command line (kms agent run --tee dstack --dstack-socket PATH, or "
                "--tee tdx)",
                "tee",
            )
        if name != "agent":
            raise lines.error(f"unknown section [{name}]", name)
    agent = _table(doc, "agent", _AGENT_KEYS, lines)
    mpk_hex = agent.get("mpk")
    try:
        mpk = bytes.fromhex(mpk_hex) if isinstance(mpk_hex, str) else b""
    except ValueError:
        mpk = b""
    if len(mpk) != MPK_SIZE:
        raise lines.error(f"'mpk' in [agent] must be {MPK_SIZE} bytes in hex", "agent", "mpk")
    urls = agent.get("urls")
    if not isinstance(urls, list) or not 1 <= len(urls) <= MAX_URLS:
        raise lines.error("'urls' in [agent] must be a list of committee URLs", "agent", "urls")
    checked = tuple(_url(u, lines) for u in urls)
    if len(set(checked)) != len(checked):
        raise lines.error("'urls' in [agent] lists a URL twice", "agent", "urls")
    socket = _path(agent.get("socket", DSTACK_SOCKET), "socket", lines, "agent")
    env_file = _path(agent["env_file"], "env_file", lines, "agent") if "env_file" in agent else None
    env_out = _path(agent["env_out"], "env_out", lines, "agent") if "env_out" in agent else None
    if (env_file is None) != (env_out is None):
        raise lines.error("'env_file' and 'env_out' in [agent] go together", "agent")
    return AgentConfig(mpk, checked, socket, env_file, env_out)


def _refuse_host_shared(path: Path) -> None:
    raise MeasuredConfigError(
        f"{path}: the agent's config is never read from the host-shared directory "
        f"{HOST_SHARED_DIR} (its resolved path is there)"
    )


def _read(path: Path) -> bytes:
    """The file's bytes, refused when its resolved path, or the file its descriptor
    opened (``/proc/self/fd``, where there is one), is in the host-shared directory."""
    path = Path(path)
    if in_host_shared(path):
        _refuse_host_shared(path)
    try:
        with open(path, "rb") as f:
            opened = f"/proc/self/fd/{f.fileno()}"
            if os.path.islink(opened) and in_host_shared(os.readlink(opened)):
                _refuse_host_shared(path)
            data = f.read(MAX_CONFIG_SIZE + 1)
    except OSError as exc:
        raise AgentConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_SIZE:
        raise AgentConfigError(f"{path}: larger than {MAX_CONFIG_SIZE} bytes")
    return data


def _text(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AgentConfigError(f"{path}: not UTF-8") from None


# --- the measured place ------------------------------------------------------------------------


def measured_configs(app_compose: str) -> dict[str, str]:
    """The top-level ``configs:`` entries with inline ``content`` of the docker compose
    inside ``app_compose`` (name → content); :class:`MeasuredConfigError` when there is
    no docker compose."""
    try:
        doc = json.loads(app_compose)
    except ValueError:
        raise MeasuredConfigError("the measured app_compose is not JSON") from None
    compose_text = doc.get("docker_compose_file") if isinstance(doc, dict) else None
    if not isinstance(compose_text, str):
        raise MeasuredConfigError("the measured app_compose has no docker_compose_file")
    try:
        compose = yaml.safe_load(compose_text)
    except yaml.YAMLError as exc:
        raise MeasuredConfigError(f"the measured docker compose is not YAML: {exc}") from None
    configs = compose.get("configs") if isinstance(compose, dict) else None
    if not isinstance(configs, dict):
        return {}
    return {
        str(name): entry["content"]
        for name, entry in configs.items()
        if isinstance(entry, dict) and isinstance(entry.get("content"), str)
    }


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(file_text: str, content: str) -> list[str] | None:
    """The keys (``[section] key``) whose values differ, or None if either is not TOML."""
    try:
        mine, theirs = _flatten(tomllib.loads(file_text)), _flatten(tomllib.loads(content))
    except tomllib.TOMLDecodeError:
        return None
    keys = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    return [f"[{k.rpartition('.')[0]}] {k.rpartition('.')[2]}" if "." in k else k for k in keys]


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def load_measured_config(path: Path, view: TeeView) -> AgentConfig:
    """The agent's config at ``path``, if its exact bytes are the ``content`` of a
    top-level ``configs:`` entry of the measured compose (``view.app_compose``).

    Raises :class:`MeasuredConfigError` naming what differs (from the closest entry),
    :class:`AgentConfigError` for a file that is unreadable or not a valid config.
    """
    path = Path(path)
    data = _read(path)
    entries = measured_configs(view.app_compose)
    if not entries:
        raise MeasuredConfigError(
            f"{path}: the measured docker compose has no top-level configs entry with "
            "content: the agent's config must be one"
        )
    for content in entries.values():
        if content.encode("utf-8") == data:
            return parse_agent_config(_text(path, data), str(path))
    text = data.decode("utf-8", "replace")
    best: tuple[int, str, str] | None = None
    for name, content in sorted(entries.items()):
        diff = _differences(text, content)
        if diff is None:
            continue
        if diff:
            detail = f"differs from the measured configs entry {name!r} in {', '.join(diff)}"
        else:
            at = _first_difference(data, content.encode("utf-8"))
            detail = (
                f"has the values of the measured configs entry {name!r} but not its bytes "
                f"(first difference at byte {at})"
            )
        if best is None or len(diff) < best[0]:
            best = (len(diff), name, detail)
    if best is None:
        names = ", ".join(repr(n) for n in sorted(entries))
        raise MeasuredConfigError(f"{path} is none of the measured configs entries ({names})")
    raise MeasuredConfigError(f"{path} {best[2]}")
