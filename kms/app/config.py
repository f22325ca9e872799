"""``node.toml``: one node's configuration file, parsed strictly and checked.

The ``[committee]`` section (genesis participants, threshold, genesis start,
``delta``, decision windows, refresh interval, admission policy, the optional
pinned ``genesis_mpk``) must be the
same at every member; ``[node]`` and ``[[peers]]`` are this node's own.
Paths are relative to the directory holding the file.

Every key the file may hold is one entry of ``SETTINGS`` (section, key, type,
default, meaning, parser): ``load`` refuses any other key and any value of the
wrong type with a ``ConfigError`` naming the file, the line and the key, and the
settings reference in ``docs/operator-guide.md`` is generated from the same
table (``python -m kms.app.config --write-reference``).

``committee_digest`` is SHA-256 over a canonical encoding of the parsed
``[committee]`` values (not of the text): operators compare it to check that
their sections agree.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import ipaddress
import json
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kms.node.model import CHAIN_RETENTION, NodeConfig
from mpc.dkg.messages import Participant
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError
from mpc.ids import ParticipantIndex
from net.peerid import b58decode

COMMITTEE_DIGEST_TAG = b"quorum-kms/v1/config/committee-digest"
"""SHA-256 prefix of ``committee_digest``."""


class ConfigError(ValueError):
    """The node configuration is missing something or is inconsistent.

    The message is one line; for a problem in a file it starts with ``path:line:``.
    """


@dataclass(frozen=True)
class PeerConfig:
    index: ParticipantIndex
    multiaddr: str


@dataclass(frozen=True)
class NodeFileConfig:
    path: Path
    index: ParticipantIndex
    store: Path
    passphrase_file: Path | None
    passphrase_env: str | None
    listen: str
    http_host: str
    http_port: int
    admin_socket: Path
    admin_token_file: Path
    log_format: str
    protocol: NodeConfig
    peers: tuple[PeerConfig, ...]
    accept_simulated_quotes: bool
    simulated_root_ca: Path | None = None
    collateral_file: Path | None = None
    policies_dir: Path | None = None
    max_request_skew: int = 120
    policy_sync_interval: float = 10.0
    pccs_url: str | None = None
    collateral_cache_dir: Path | None = None
    pccs_verify_tls: bool = True
    allowed_tcb_statuses: frozenset[str] = frozenset({"UpToDate", "SWHardeningNeeded"})
    """The node's floor on TCB statuses: a policy can only narrow it."""
    min_tcb_evaluation_data_number: int = 0
    min_collateral_issue_date: int = 0
    max_collateral_age: int | None = 30 * 86400
    max_concurrent_collateral_fetches: int = 4
    collateral_failure_ttl: int = 60
    policy_max_version_step: int = 1000
    """Largest version increase a node accepts over an app's floor (and for a new app, from 0)."""
    policy_cache_entries: int = 1024
    """Bundles of apps this node has not admitted that it keeps in memory (never on disk)."""
    policy_cache_bytes: int = 16 * 1024 * 1024
    """Bytes those cached bundles may take."""
    policy_max_apps: int = 0
    """Admitted apps beyond which key requests admit no new app (0: no cap)."""
    release_concurrency: int = 8
    """Key and certificate requests handled at once (``kms.api.shed``)."""
    release_queue: int = 32
    """Such requests that may wait for a place; beyond them, refused ``overloaded``."""
    release_queue_wait: float = 0.5
    """Seconds one waits for a place at most before it is refused ``overloaded``."""
    release_retry_after: int = 1
    """The ``Retry-After`` seconds of an ``overloaded`` refusal."""
    release_body_timeout: float = 5.0
    """Seconds a key or certificate request's whole body may take to arrive (then ``408``)."""
    policy_new_app_rotations: int = 16
    """Most owner rotations a pushed bundle of an app this node has not admitted may carry."""
    announce: tuple[str, ...] = ()
    """libp2p multiaddrs other members dial (without ``/p2p/``; may be empty)."""
    public_url: str | None = None
    """The HTTP URL clients use to reach this node, if known."""
    log_level: str = "info"
    simulated_tee: Path | None = None
    """A simulated TEE directory that quotes this node's join request (development)."""
    committee_digest: bytes = b""
    """``committee_digest`` of the ``[committee]`` section."""
    testing: Mapping[str, Any] | None = None
    """The test-only ``[testing]`` section, read only by ``load(..., testing=True)`` (the fault
    lab's node program, ``kms.chaos.nodeproc``); ``None`` for a production node."""

    @property
    def directory(self) -> Path:
        return self.path.parent


# --- value parsers: each raises ConfigError with what is wrong (without key or line) ------


def _pccs_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError("pccs_url must be an http(s) URL")
    return value


def _statuses(value: Any) -> frozenset[str]:
    from kms.attest.verify import ADMISSIBLE_STATUSES, DEFAULT_ALLOWED_STATUSES

    if value is None:
        return DEFAULT_ALLOWED_STATUSES
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError("allowed_tcb_statuses must be a non-empty list of TCB status names")
    unknown = sorted(set(value) - ADMISSIBLE_STATUSES)
    if unknown:
        raise ConfigError(
            f"allowed_tcb_statuses: unknown or inadmissible {unknown}; "
            f"admissible: {sorted(ADMISSIBLE_STATUSES)}"
        )
    return frozenset(value)


def _count(value: Any, what: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an integer ≥ {minimum}")
    return value


def _unix_time(value: Any, what: str) -> int:
    """Unix seconds, from an integer or a TOML date-time with an offset."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ConfigError(f"{what} must carry a UTC offset (e.g. 2026-01-01T00:00:00Z)")
        return int(value.timestamp())
    return _count(value, what)


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{what} must be a positive number of seconds")
    return float(value)


def _non_negative(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigError(f"{what} must be a number of seconds ≥ 0")
    return float(value)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer")
    return value


def _int_in(value: Any, what: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{what} must be an integer from {minimum} to {maximum}")
    return value


def _seconds_in(value: Any, what: str, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= maximum:
        raise ConfigError(f"{what} must be a number of seconds from 0 to {maximum:g}")
    return float(value)


def _positive_seconds_in(value: Any, what: str, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        raise ConfigError(f"{what} must be a number of seconds above 0, at most {maximum:g}")
    return float(value)


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(value.removeprefix("0x"))
    except ValueError as exc:
        raise ConfigError(f"{what} is not valid hex") from exc
    if size is not None and len(raw) != size:
        raise ConfigError(f"{what} must be {size} bytes")
    return raw


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what} must be true or false")
    return value


def _choice(*choices: str) -> Callable[[Any, str], str]:
    def parse(value: Any, what: str) -> str:
        if value not in choices:
            raise ConfigError(f"{what} must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    return parse


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"{what}: {text!r} is not a port (0–65535)")
    return int(text)


def host_port(value: Any, what: str = "http") -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets) → (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{what} must be host:port (e.g. 0.0.0.0:8080), not {value!r}")
    host, _, port = value.rpartition(":")
    if not host:
        raise ConfigError(f"{what} must be host:port (e.g. 0.0.0.0:8080), not {value!r}")
    return host, _port(port, what)


_HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")


def multiaddr(value: Any, what: str, *, listen: bool = False) -> str:
    """A TCP multiaddr: ``/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>[/p2p/<peer id>]``.

    A listen address is ``/ip4`` or ``/ip6`` without ``/p2p``.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a multiaddr string")
    parts = value.split("/")
    example = "/ip4/203.0.113.10/tcp/4001"
    bad = f"{what}: {value!r} is not a TCP multiaddr like {example}"
    if parts[0] != "" or len(parts) not in (5, 7) or parts[3] != "tcp":
        raise ConfigError(bad)
    proto, host, port = parts[1], parts[2], parts[4]
    allowed = ("ip4", "ip6") if listen else _HOST_PROTOCOLS
    if proto not in allowed:
        raise ConfigError(bad)
    try:
        if proto == "ip4":
            ipaddress.IPv4Address(host)
        elif proto == "ip6":
            ipaddress.IPv6Address(host)
        elif not _HOSTNAME.match(host):
            raise ValueError(host)
    except ValueError as exc:
        raise ConfigError(f"{what}: {host!r} is not a valid /{proto} host") from exc
    _port(port, what)
    if len(parts) == 7:
        if listen or parts[5] != "p2p":
            raise ConfigError(bad)
        try:
            if not parts[6] or not b58decode(parts[6]):
                raise InvalidEncoding("empty")
        except InvalidEncoding as exc:
            raise ConfigError(f"{what}: {parts[6]!r} is not a libp2p peer id") from exc
    return value


def url(value: Any, what: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (and a valid port, if any)."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be an http(s) URL string")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{what}: {value!r} is not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: {value!r} is not an http(s) URL like http://203.0.113.10:8080")
    del port
    return value


def _multiaddrs(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{what} must be a list of multiaddrs")
    if len(value) > 8:  # what a join request carries (``AddMember.addresses``)
        raise ConfigError(f"{what} takes at most 8 addresses")
    out = tuple(multiaddr(v, what) for v in value)
    if any(len(v) > 200 for v in out):
        raise ConfigError(f"{what}: an address is longer than 200 characters")
    return out


def _member_url(value: Any, what: str) -> str:
    """An HTTP URL a join request can carry (``AddMember.url``)."""
    from mpc.membership.messages import MAX_MEMBER_URL, valid_member_url

    text = url(value, what)
    if len(text) > MAX_MEMBER_URL or not valid_member_url(text):
        raise ConfigError(
            f"{what}: {text!r} is not a URL a join request can carry "
            f"(http(s); a DNS name, IPv4 or [IPv6] host; optional port 1-65535; a path; "
            f"no user info, query or fragment; at most {MAX_MEMBER_URL} characters)"
        )
    return text


_UNSPECIFIED = ("0.0.0.0", "::", "[::]")  # noqa: S104 (recognised, not bound)


def default_announce(listen: str) -> tuple[str, ...]:
    """``listen`` itself, unless it listens on every interface (then nothing)."""
    return () if listen.split("/")[2] in _UNSPECIFIED else (listen,)


def default_public_url(http: str) -> str | None:
    """``http://HOST:PORT`` of ``http``, unless its host is every interface (then none)."""
    host, port = host_port(http)
    return None if host in _UNSPECIFIED else f"http://{host}:{port}"


def participant_from_toml(entry: dict[str, Any]) -> Participant:
    try:
        p = Participant(
            _count(entry["index"], "index", minimum=1),
            _hex(entry["identity"], "identity", 32),
            _hex(entry["dkg_key"], "dkg_key", 32),
            _hex(entry["dkg_key_signature"], "dkg_key_signature", 64),
        )
        p.validate()
        p.check()
    except KeyError as exc:
        raise ConfigError(f"genesis participant is missing {exc}") from exc
    except (InvalidSignature, InvalidEncoding) as exc:
        raise ConfigError(
            f"genesis participant {entry.get('index')}: DKG key not signed by its identity"
        ) from exc
    return p


def participant_to_toml(p: Participant) -> dict[str, Any]:
    return {
        "index": p.index,
        "identity": p.identity.hex(),
        "dkg_key": p.dkg_key.hex(),
        "dkg_key_signature": p.dkg_key_signature.hex(),
    }


def policy_bytes(text: str) -> bytes:
    """``[committee] admission_policy``: a node admission policy in hex (its encoding).

    Text that is not hex is kept as it is (its SHA-256 is still bound into the
    genesis certificate), but it admits no node: joins are then refused until an
    ``admission-policy`` change certifies a real policy.
    """
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode()


# --- the schema -----------------------------------------------------------------------


REQUIRED: Any = object()
"""A setting without a default: the file must give it."""
UNSET: Any = None
"""A setting whose absence means "none"."""


@dataclass(frozen=True)
class Setting:
    section: str
    """``node``, ``committee``, ``committee.genesis`` (each entry) or ``peers`` (each entry)."""
    key: str
    type: str
    """The TOML type, as the reference shows it."""
    default: Any
    """The value when the key is absent (before parsing), ``REQUIRED`` or ``UNSET``."""
    meaning: str
    parse: Callable[[Any, str], Any]
    """Raw TOML value and the key's name → the parsed value (``ConfigError`` if refused)."""
    default_text: str | None = None
    """How the reference shows the default when ``default`` is not it."""

    def shown_default(self) -> str:
        if self.default_text is not None:
            return self.default_text
        if self.default is REQUIRED:
            return "required"
        if self.default is UNSET:
            return "unset"
        return f"`{_toml_value(self.default)}`"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _path(value: Any, what: str) -> str:
    return _string(value, what)


def _start(value: Any, what: str) -> float:
    if isinstance(value, datetime.datetime):
        return float(_unix_time(value, what))
    return _non_negative(value, what)


def _policy(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a hex string (`kms node admission-policy` prints it)")
    return policy_bytes(value)


_NODE: list[Setting] = [
    Setting(
        "node",
        "index",
        "integer",
        REQUIRED,
        "this node's participant index (1-based, never reused); its index in `[committee]` "
        "if it is a genesis member",
        lambda v, w: _count(v, w, minimum=1),
    ),
    Setting("node", "store", "path", "node.db", "the SQLite store", _path),
    Setting(
        "node",
        "passphrase_file",
        "path",
        UNSET,
        "file holding the store passphrase: a regular file that group and others cannot "
        "access (`chmod 600`), else the node refuses it; one trailing newline is dropped. "
        "Exactly one of `passphrase_file` and `passphrase_env` is set",
        _path,
    ),
    Setting(
        "node",
        "passphrase_env",
        "string",
        UNSET,
        "the name of an environment variable holding the passphrase, instead of "
        "`passphrase_file` (a node never prompts for one)",
        _string,
    ),
    Setting(
        "node",
        "listen",
        "multiaddr",
        "/ip4/127.0.0.1/tcp/0",
        "libp2p listen address, `/ip4/HOST/tcp/PORT` or `/ip6/…`; the node refuses to start "
        "if the port is in use. Port 0 picks a new port at every start",
        lambda v, w: multiaddr(v, w, listen=True),
    ),
    Setting(
        "node",
        "announce",
        "list of multiaddrs",
        UNSET,
        "libp2p addresses the other members dial (`/ip4`, `/ip6`, `/dns`, `/dns4` or `/dns6`, "
        "then `/tcp/PORT`), put in this node's join request",
        _multiaddrs,
        default_text="`[listen]` unless `listen`'s host is `0.0.0.0` or `::` (then `[]`)",
    ),
    Setting(
        "node",
        "http",
        "`host:port`",
        "127.0.0.1:0",
        "address of the public HTTP port (`/health`, `/v1/status`, `/metrics`, key release)",
        lambda v, w: (host_port(v, w), v)[1],
    ),
    Setting(
        "node",
        "public_url",
        "URL",
        UNSET,
        "the HTTP URL clients use to reach this node, put in its join request",
        _member_url,
        default_text="`http://HOST:PORT` of `http` unless its host is `0.0.0.0` or `::` "
        "(then unset)",
    ),
    Setting("node", "admin_socket", "path", "admin.sock", "the admin Unix socket", _path),
    Setting(
        "node",
        "admin_token_file",
        "path",
        "admin.token",
        "file holding the admin token",
        _path,
    ),
    Setting(
        "node",
        "log_format",
        "`json` or `text`",
        "json",
        "log lines as one JSON object each, or as text with the fields as `key=value`; "
        "`kms node run --log-format` overrides it",
        _choice("json", "text"),
    ),
    Setting(
        "node",
        "log_level",
        "`debug`, `info`, `warning` or `error`",
        "info",
        "the least severe log lines written",
        _choice("debug", "info", "warning", "error"),
    ),
    Setting(
        "node",
        "accept_simulated_quotes",
        "boolean",
        False,
        "accept quotes from the simulated TEE (development only; the node then says so in "
        "`/v1/status`, `/metrics` and its log)",
        _bool,
    ),
    Setting(
        "node",
        "simulated_root_ca",
        "path",
        UNSET,
        "DER file of the simulated TEE's root (used only with `accept_simulated_quotes`)",
        _path,
    ),
    Setting(
        "node",
        "simulated_tee",
        "path",
        UNSET,
        "a simulated TEE directory (`kms tee init`; a devnet's `simulated-tee`) that quotes "
        "this node's join request instead of configfs-tsm (development only)",
        _path,
    ),
    Setting(
        "node",
        "chain_retention",
        "integer",
        CHAIN_RETENTION,
        "epochs of chain links kept besides genesis (at least 2); older links are deleted "
        "and evidence about them is refused as stale. Members may differ",
        lambda v, w: _count(v, w, minimum=2),
    ),
    Setting(
        "node",
        "pccs_url",
        "URL",
        UNSET,
        "base URL of the PCCS (Intel's PCCS API v4) quote collateral is fetched from, per "
        "platform, and cached. Key release is off without this and without `collateral_file`",
        lambda v, w: _pccs_url(url(v, w)),
    ),
    Setting(
        "node",
        "collateral_cache_dir",
        "path",
        "collateral",
        "where collateral fetched from the PCCS is cached, one JSON file per platform; a node "
        "whose PCCS is down keeps verifying with the cached copy while it is valid",
        _path,
    ),
    Setting(
        "node",
        "pccs_verify_tls",
        "boolean",
        True,
        "check the PCCS's TLS certificate (`false` for a self-signed one: the collateral "
        "itself is signed)",
        _bool,
    ),
    Setting(
        "node",
        "collateral_file",
        "path",
        UNSET,
        "one fixed DCAP collateral (dcap-qvl `QuoteCollateralV3` JSON). Without `pccs_url` "
        "every quote is verified against it; with one, it serves quotes of its platform the "
        "PCCS and the cache cannot (and join requests)",
        _path,
    ),
    Setting(
        "node",
        "policies_dir",
        "path",
        "policies",
        "directory of app policies the operator admits (`*.policy`, encoded `PolicyBundle`s), "
        "read at start and on `kms member reload-policies`; created by `kms node init`. Apps "
        "are also admitted by their CVMs' key requests carrying the bundle (only from a CVM "
        "whose RTMR3 event log carries the app's `app-id`) and by `t` members; all admitted "
        "apps are kept in the store",
        _path,
    ),
    Setting(
        "node",
        "policy_max_version_step",
        "integer",
        1000,
        "largest version increase accepted over an app's floor, and the largest first version "
        "of an app admitted by a key request",
        _positive_int,
    ),
    Setting(
        "node",
        "policy_cache_entries",
        "integer",
        1024,
        "bundles of apps this node has not admitted (anonymous pushes) kept in memory, oldest "
        "evicted first; never on disk",
        _positive_int,
    ),
    Setting(
        "node",
        "policy_cache_bytes",
        "integer",
        16 * 1024 * 1024,
        "bytes those cached bundles may take, counted as their encodings plus 256 bytes each",
        _positive_int,
    ),
    Setting(
        "node",
        "policy_new_app_rotations",
        "integer",
        16,
        "most owner rotations a pushed bundle of an app this node has not admitted may carry "
        "(refused `too_many_rotations` before any signature is checked)",
        _positive_int,
    ),
    Setting(
        "node",
        "policy_max_apps",
        "integer",
        0,
        "once this many apps are admitted, key requests admit no new app (`bundle-refused`); "
        "the operator's directory and the committee still can (0: no cap)",
        _count,
    ),
    Setting(
        "node",
        "release_concurrency",
        "integer",
        8,
        "key and app-key certificate requests handled at once; more wait in the queue "
        "below (the node verifies quotes on one thread: a few suffice)",
        lambda v, w: _int_in(v, w, 1, 4096),
    ),
    Setting(
        "node",
        "release_queue",
        "integer",
        32,
        "such requests that may wait for a place, first come first served; beyond them a "
        "request is answered `503` `overloaded` with `Retry-After` at once, its body unread "
        "(0: no waiting)",
        lambda v, w: _int_in(v, w, 0, 65536),
    ),
    Setting(
        "node",
        "release_queue_wait",
        "number",
        0.5,
        "seconds a queued request waits for a place at most; then it is refused `overloaded` "
        "(bounds the latency a storm adds to an answered request)",
        lambda v, w: _seconds_in(v, w, 60.0),
    ),
    Setting(
        "node",
        "release_retry_after",
        "integer",
        1,
        "the `Retry-After` seconds of an `overloaded` refusal",
        lambda v, w: _int_in(v, w, 0, 3600),
    ),
    Setting(
        "node",
        "release_body_timeout",
        "number",
        5.0,
        "seconds the whole body of a key or app-key certificate request may take to arrive "
        "(not per read); the request takes no place before it has, and one not complete by "
        "then is answered `408` `body-timeout` (so a client trickling its body holds no place)",
        lambda v, w: _positive_seconds_in(v, w, 300.0),
    ),
    Setting(
        "node",
        "max_request_skew",
        "integer",
        120,
        "seconds a key request's timestamp may differ from the node's clock",
        _count,
    ),
    Setting(
        "node",
        "allowed_tcb_statuses",
        "list of strings",
        ["UpToDate", "SWHardeningNeeded"],
        "the node's floor on TCB statuses (Intel's names, never `Revoked`): a quote whose "
        "status is not listed is refused whatever the app policy lists; applies to join "
        "requests too",
        lambda v, w: _statuses(v),
    ),
    Setting(
        "node",
        "min_tcb_evaluation_data_number",
        "integer",
        0,
        "refuse collateral whose TCB Info or QE Identity `tcbEvaluationDataNumber` is below "
        "this (0: none)",
        _count,
    ),
    Setting(
        "node",
        "min_collateral_issue_date",
        "integer or date-time",
        0,
        "refuse collateral issued before this time: Unix seconds or a TOML date-time with an "
        "offset (0: none)",
        _unix_time,
    ),
    Setting(
        "node",
        "max_collateral_age",
        "integer",
        30 * 86400,
        "refuse collateral issued more than this many seconds before the verification time; "
        "the node refetches an hour before (0: none)",
        lambda v, w: _count(v, w) or None,
    ),
    Setting(
        "node",
        "max_concurrent_collateral_fetches",
        "integer",
        4,
        "collateral fetches from the PCCS that run at once; requests of other platforms wait",
        lambda v, w: _count(v, w, minimum=1),
    ),
    Setting(
        "node",
        "collateral_failure_ttl",
        "integer",
        60,
        "seconds a platform whose fetch failed, or that was just fetched, is not fetched again",
        _count,
    ),
    Setting(
        "node",
        "policy_sync_interval",
        "number",
        10.0,
        "seconds between the digests of held app policies a node sends every member",
        _positive,
    ),
]

_COMMITTEE: list[Setting] = [
    Setting(
        "committee",
        "threshold",
        "integer",
        REQUIRED,
        "`t` of the genesis committee, `2 ≤ t ≤ n`",
        lambda v, w: _count(v, w, minimum=2),
    ),
    Setting(
        "committee",
        "genesis_start",
        "number or date-time",
        REQUIRED,
        "when the genesis DKG starts: Unix seconds (may have decimals) or a TOML date-time "
        "with an offset. All its deadlines count from it",
        _start,
    ),
    Setting(
        "committee",
        "delta",
        "number",
        1.0,
        "`Δ`, seconds: the bound on delivering a message between honest members, one pull "
        "round trip and clock skew included",
        _positive,
    ),
    Setting(
        "committee",
        "window_period",
        "number",
        60.0,
        "seconds between decision windows; window `w` starts at `genesis_start + w·window_period`. "
        "At least `window_length + (threshold + 1)·delta` (refused otherwise): a window that "
        "decides nothing ends `window_length + threshold·delta` after its start, and if the next "
        "one has begun by then every member joins it late and abstains; depending on how the "
        "period divides that time, this can repeat in every window, so that no change or "
        "refresh is decided",
        _positive,
    ),
    Setting(
        "committee",
        "window_length",
        "number",
        5.0,
        "seconds during which a decision window accepts ballots",
        _positive,
    ),
    Setting(
        "committee",
        "refresh_interval",
        "number",
        0.0,
        "seconds between scheduled refreshes (0: never)",
        _non_negative,
    ),
    Setting(
        "committee",
        "admission_policy",
        "hex string",
        "",
        "the genesis node admission policy: the hex `NodeAdmissionPolicy` encoding "
        "`kms node admission-policy` prints (its SHA-256 is bound into the genesis "
        "certificate). Anything else admits no node until an `admission-policy` change",
        _policy,
    ),
    Setting(
        "committee",
        "genesis_mpk",
        "hex string",
        UNSET,
        "a pinned genesis master public key (96 bytes): the only genesis this node adopts. "
        "Optional, may differ between members, not part of the committee digest",
        lambda v, w: _hex(v, w, 96),
    ),
    Setting(
        "committee",
        "genesis",
        "array of tables",
        [],
        "the genesis participant records, one `[[committee.genesis]]` table each",
        lambda v, w: v,
    ),
]

_GENESIS: list[Setting] = [
    Setting(
        "committee.genesis",
        "index",
        "integer",
        REQUIRED,
        "the participant's index",
        lambda v, w: _count(v, w, minimum=1),
    ),
    Setting(
        "committee.genesis",
        "identity",
        "hex string",
        REQUIRED,
        "its Ed25519 identity key (32 bytes)",
        lambda v, w: _hex(v, w, 32),
    ),
    Setting(
        "committee.genesis",
        "dkg_key",
        "hex string",
        REQUIRED,
        "its X25519 DKG key (32 bytes)",
        lambda v, w: _hex(v, w, 32),
    ),
    Setting(
        "committee.genesis",
        "dkg_key_signature",
        "hex string",
        REQUIRED,
        "the identity's signature on index and DKG key (64 bytes)",
        lambda v, w: _hex(v, w, 64),
    ),
]

_PEERS: list[Setting] = [
    Setting(
        "peers",
        "index",
        "integer",
        REQUIRED,
        "another member's index (several entries may share one: several addresses)",
        lambda v, w: _count(v, w, minimum=1),
    ),
    Setting(
        "peers",
        "multiaddr",
        "multiaddr",
        REQUIRED,
        "where it listens; a `/p2p/<peer id>` suffix, when present, must be the peer id of "
        "its identity, or the node refuses to start",
        multiaddr,
    ),
]

SETTINGS: tuple[Setting, ...] = (*_NODE, *_COMMITTEE, *_GENESIS, *_PEERS)
"""Every key ``node.toml`` may hold: the one table ``load`` and the reference use."""

_BY_SECTION: dict[str, dict[str, Setting]] = {}
for _s in SETTINGS:
    _BY_SECTION.setdefault(_s.section, {})[_s.key] = _s
SECTIONS = {"node": "[node]", "committee": "[committee]", "peers": "[[peers]]"}


# --- finding lines ----------------------------------------------------------------------


_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*[\"']?([A-Za-z0-9_-]+)[\"']?\s*=")


class FileLines:
    """Where a section or a key is in the file's text (tomllib gives no line numbers)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.blocks: list[tuple[str, int, dict[str, int]]] = [("", 0, {})]
        for number, line in enumerate(text.splitlines(), 1):
            header = _HEADER.match(line)
            if header and not _KEY.match(line):
                self.blocks.append((header.group(2).replace(" ", ""), number, {}))
                continue
            key = _KEY.match(line)
            if key:
                self.blocks[-1][2].setdefault(key.group(1), number)

    def _block(self, section: str, occurrence: int) -> tuple[str, int, dict[str, int]] | None:
        found = [b for b in self.blocks if b[0] == section]
        return found[occurrence] if occurrence < len(found) else None

    def line(self, section: str, key: str | None = None, occurrence: int = 0) -> int:
        """The line of ``key`` in the ``occurrence``-th block of ``section`` (or of its
        header; or of an inline ``key = …`` at the top or in the parent section; else 1)."""
        block = self._block(section, occurrence)
        if block is not None:
            if key is not None and key in block[2]:
                return block[2][key]
            if block[1]:
                return block[1]
        parent, _, leaf = section.rpartition(".")
        outer = self._block(parent, 0)
        if outer is not None and leaf in outer[2]:
            return outer[2][leaf]
        return 1

    def error(self, msg: str, section: str, key: str | None = None, occ: int = 0) -> ConfigError:
        return ConfigError(f"{self.path}:{self.line(section, key, occ)}: {msg}")


def _suggest(key: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _section_name(section: str) -> str:
    return {"committee.genesis": "[[committee.genesis]]", "peers": "[[peers]]"}.get(
        section, f"[{section}]"
    )


def _parse_table(table: Any, section: str, lines: FileLines, occurrence: int = 0) -> dict[str, Any]:
    """Every setting of ``section``: parsed values of the table, defaults for the rest."""
    name = _section_name(section)
    if not isinstance(table, dict):
        raise lines.error(f"{name} must be a table", section, None, occurrence)
    known = _BY_SECTION[section]
    for key in table:
        if key not in known:
            raise lines.error(
                f"unknown key '{key}' in {name}{_suggest(key, known)}", section, key, occurrence
            )
    out: dict[str, Any] = {}
    for key, setting in known.items():
        if key not in table:
            if setting.default is REQUIRED:
                raise lines.error(f"missing key '{key}' in {name}", section, None, occurrence)
            out[key] = None if setting.default is UNSET else setting.parse(setting.default, key)
            continue
        try:
            out[key] = setting.parse(table[key], key)
        except ConfigError as exc:
            msg = str(exc)
            rest = msg[len(key) :] if msg.startswith(key) else f": {msg}"
            raise lines.error(f"'{key}' in {name}{rest}", section, key, occurrence) from None
    return out


# --- the [committee] section ---------------------------------------------------------------


@dataclass(frozen=True)
class CommitteeValues:
    """The parsed ``[committee]`` section."""

    genesis: tuple[Participant, ...]
    threshold: int
    genesis_start: float
    delta: float
    window_period: float
    window_length: float
    refresh_interval: float
    admission_policy: bytes
    genesis_mpk: bytes | None

    def digest(self) -> bytes:
        """SHA-256 over the canonical encoding of every agreed value (not ``genesis_mpk``)."""
        return committee_digest(self)


def committee_digest(values: CommitteeValues | NodeConfig) -> bytes:
    """``SHA-256(COMMITTEE_DIGEST_TAG ‖ canonical JSON)`` of the values every member must
    configure identically: threshold, genesis start, delta, window period and length,
    refresh interval, the admission policy's bytes and the genesis records. Numbers are
    compared as floats (``3`` and ``3.0`` agree); key order, comments and spacing in the
    file do not matter; the optional ``genesis_mpk`` pin is left out (it may differ)."""
    canonical = {
        "admission_policy": values.admission_policy.hex(),
        "delta": float(values.delta),
        "genesis": [participant_to_toml(p) for p in sorted(values.genesis, key=lambda p: p.index)],
        "genesis_start": float(values.genesis_start),
        "refresh_interval": float(values.refresh_interval),
        "threshold": int(values.threshold),
        "window_length": float(values.window_length),
        "window_period": float(values.window_period),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(COMMITTEE_DIGEST_TAG + text.encode()).digest()


def parse_committee(doc: dict[str, Any], lines: FileLines) -> CommitteeValues:
    if "committee" not in doc:
        raise ConfigError(f"{lines.path}:1: missing section [committee]")
    com = _parse_table(doc["committee"], "committee", lines)
    entries = com["genesis"]
    if not isinstance(entries, list):
        raise lines.error("genesis must be an array of tables", "committee", "genesis")
    genesis: list[Participant] = []
    for k, entry in enumerate(entries):
        _parse_table(entry, "committee.genesis", lines, k)
        try:
            genesis.append(participant_from_toml(entry))
        except ConfigError as exc:
            raise lines.error(str(exc), "committee.genesis", None, k) from None
    indices = [p.index for p in genesis]
    for k, i in enumerate(indices):
        if i in indices[:k]:
            raise lines.error(f"genesis index {i} appears twice", "committee.genesis", None, k)
    if not genesis:
        raise lines.error(
            "the committee has no genesis participants yet: add one [[committee.genesis]] "
            "per member (`kms committee assemble` writes them)",
            "committee",
            "genesis",
        )
    if com["threshold"] > len(genesis):
        raise lines.error(
            f"threshold {com['threshold']} is more than the {len(genesis)} genesis "
            "participants (2 ≤ threshold ≤ n)",
            "committee",
            "threshold",
        )
    # A decision window that decides nothing ends window_length + t·Δ after its start; if the
    # next one has begun by then, every member joins it late, is not live in it and abstains,
    # and depending on how the period divides that time, so in every window after (at n = 32,
    # Δ = 5 s, a 30 s period: each 130 s window ended 10 s into the next, always).
    least = com["window_length"] + (com["threshold"] + 1) * com["delta"]
    if com["window_period"] < least:
        raise lines.error(
            f"window_period {com['window_period']:g} s is shorter than a decision window that "
            f"decides nothing lasts, plus Δ: window_length + (threshold + 1)·delta = {least:g} s; "
            "windows would overlap: every member would join the next one late and abstain, "
            "which can repeat in every window, so that no change or refresh is decided",
            "committee",
            "window_period",
        )
    return CommitteeValues(
        genesis=tuple(sorted(genesis, key=lambda p: p.index)),
        threshold=com["threshold"],
        genesis_start=com["genesis_start"],
        delta=com["delta"],
        window_period=com["window_period"],
        window_length=com["window_length"],
        refresh_interval=com["refresh_interval"],
        admission_policy=com["admission_policy"],
        genesis_mpk=com["genesis_mpk"],
    )


def _read(path: Path) -> tuple[dict[str, Any], FileLines]:
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"no configuration at {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return doc, FileLines(path, text)


def _check_sections(doc: dict[str, Any], lines: FileLines, allowed: Mapping[str, str]) -> None:
    for name in doc:
        if name == "members" and "members" not in allowed:
            raise lines.error(
                "[[members]] belongs in the committee file: write node.toml's [committee] "
                "and [[peers]] with `kms committee apply`",
                name,
            )
        if name not in allowed:
            raise lines.error(
                f"unknown section or key '{name}' at the top level{_suggest(name, allowed)}; "
                f"allowed: {', '.join(allowed.values())}",
                name,
            )


def load_committee(path: str | Path) -> CommitteeValues:
    """The ``[committee]`` section of a file (``node.toml`` or ``committee.toml``), strictly."""
    path = Path(path).resolve()
    doc, lines = _read(path)
    return parse_committee(doc, lines)


TESTING_KEYS = {"lab": bool, "adversary": str, "broken": str}
"""The keys of the test-only ``[testing]`` section and their types."""


def _testing_section(doc: dict[str, Any], lines: FileLines, allowed: bool) -> dict[str, Any] | None:
    """The ``[testing]`` section: refused unless ``allowed`` (only the fault lab's node program
    reads it; ``kms node run`` and ``kms node check-config`` never run a test-only node)."""
    if "testing" not in doc:
        return None
    if not allowed:
        raise lines.error(
            "[testing] is a test-only section (the fault lab's node program, "
            "python -m kms.chaos.nodeproc): a production node refuses it; remove it",
            "testing",
        )
    table = doc["testing"]
    if not isinstance(table, dict):
        raise lines.error("[testing] must be a table", "testing")
    for key, value in table.items():
        kind = TESTING_KEYS.get(key)
        if kind is None:
            raise lines.error(f"unknown key '{key}' in [testing]", "testing", key)
        if not isinstance(value, kind):
            raise lines.error(f"'{key}' in [testing] must be a {kind.__name__}", "testing", key)
    return dict(table)


def load(path: str | Path, *, testing: bool = False) -> NodeFileConfig:
    """Read and check ``node.toml``; raises ``ConfigError`` with the reason (one line,
    ``path:line:`` first when it is about a place in the file). A ``[testing]`` section is
    refused unless ``testing`` (the fault lab's node program, ``kms.chaos.nodeproc``)."""
    path = Path(path).resolve()
    doc, lines = _read(path)
    base = path.parent
    test_only = _testing_section(doc, lines, testing)
    _check_sections({k: v for k, v in doc.items() if k != "testing"}, lines, SECTIONS)
    if "node" not in doc:
        raise ConfigError(f"{path}:1: missing section [node]")
    node = _parse_table(doc["node"], "node", lines)
    com = parse_committee(doc, lines)
    peers_raw = doc.get("peers", [])
    if not isinstance(peers_raw, list):
        raise lines.error("peers must be an array of [[peers]] tables", "", "peers")
    peers = tuple(
        PeerConfig(ParticipantIndex(p["index"]), p["multiaddr"])
        for p in (_parse_table(e, "peers", lines, k) for k, e in enumerate(peers_raw))
    )
    if (node["passphrase_file"] is None) == (node["passphrase_env"] is None):
        raise lines.error("set exactly one of passphrase_file and passphrase_env in [node]", "node")
    try:
        protocol = NodeConfig(
            index=ParticipantIndex(node["index"]),
            genesis=com.genesis,
            threshold=com.threshold,
            genesis_start=com.genesis_start,
            delta=com.delta,
            window_period=com.window_period,
            window_length=com.window_length,
            refresh_interval=com.refresh_interval,
            admission_policy_hash=hashlib.sha256(com.admission_policy).digest(),
            admission_policy=com.admission_policy,
            genesis_mpk=com.genesis_mpk,
            chain_retention=node["chain_retention"],
        )
    except LocalProtocolError as exc:
        raise lines.error(f"committee: {exc}", "committee") from None
    http_host, http_port = host_port(node["http"])
    announce = node["announce"]
    public_url = node["public_url"]
    raw_node = doc["node"]

    def rel(key: str) -> Path | None:
        return None if node[key] is None else base / node[key]

    return NodeFileConfig(
        path=path,
        index=protocol.index,
        store=base / node["store"],
        passphrase_file=rel("passphrase_file"),
        passphrase_env=node["passphrase_env"],
        listen=node["listen"],
        http_host=http_host,
        http_port=http_port,
        admin_socket=base / node["admin_socket"],
        admin_token_file=base / node["admin_token_file"],
        log_format=node["log_format"],
        protocol=protocol,
        peers=peers,
        accept_simulated_quotes=node["accept_simulated_quotes"],
        simulated_root_ca=rel("simulated_root_ca"),
        collateral_file=rel("collateral_file"),
        policies_dir=base / node["policies_dir"],
        max_request_skew=node["max_request_skew"],
        pccs_url=node["pccs_url"],
        collateral_cache_dir=base / node["collateral_cache_dir"],
        pccs_verify_tls=node["pccs_verify_tls"],
        allowed_tcb_statuses=node["allowed_tcb_statuses"],
        min_tcb_evaluation_data_number=node["min_tcb_evaluation_data_number"],
        min_collateral_issue_date=node["min_collateral_issue_date"],
        max_collateral_age=node["max_collateral_age"],
        max_concurrent_collateral_fetches=node["max_concurrent_collateral_fetches"],
        collateral_failure_ttl=node["collateral_failure_ttl"],
        policy_sync_interval=node["policy_sync_interval"],
        policy_max_version_step=node["policy_max_version_step"],
        policy_cache_entries=node["policy_cache_entries"],
        policy_cache_bytes=node["policy_cache_bytes"],
        policy_max_apps=node["policy_max_apps"],
        policy_new_app_rotations=node["policy_new_app_rotations"],
        release_concurrency=node["release_concurrency"],
        release_queue=node["release_queue"],
        release_queue_wait=node["release_queue_wait"],
        release_retry_after=node["release_retry_after"],
        release_body_timeout=node["release_body_timeout"],
        announce=default_announce(node["listen"]) if "announce" not in raw_node else announce,
        public_url=default_public_url(node["http"]) if "public_url" not in raw_node else public_url,
        log_level=node["log_level"],
        simulated_tee=rel("simulated_tee"),
        committee_digest=committee_digest(com),
        testing=test_only,
    )


# --- the generated settings reference --------------------------------------------------

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
BEGIN = "<!-- settings:begin -->"
END = "<!-- settings:end -->"
REGENERATE = "python -m kms.app.config --write-reference"

_INTROS = {
    "node": "**`[node]`: this node's own settings.**",
    "committee": (
        "**`[committee]`: must be identical at every member** (compare "
        "`kms node check-config`'s committee digest). Every value here but `genesis_mpk` "
        "goes into the protocol's run ids and transcripts; a member with a different value "
        "runs a different protocol and, in effect, is absent."
    ),
    "committee.genesis": (
        "**`[[committee.genesis]]`: one table per genesis participant**, as `kms node init` "
        "printed it (`kms committee assemble` writes them). Each record's signature is "
        "checked on load."
    ),
    "peers": "**`[[peers]]`: where the other members listen**, one table per address.",
}


def reference() -> str:
    """The Markdown settings reference (between the markers in the operator guide)."""
    out = [
        BEGIN,
        f"<!-- generated from kms/app/config.py SETTINGS by `{REGENERATE}`; do not edit -->",
        "",
    ]
    for section in ("node", "committee", "committee.genesis", "peers"):
        out += [_INTROS[section], "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for s in _BY_SECTION[section].values():
            cells = (f"`{s.key}`", s.type, s.shown_default(), s.meaning)
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    out.append(END)
    return "\n".join(out)


def render(text: str) -> str:
    """``text`` (the operator guide) with its settings region replaced by ``reference()``."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{GUIDE} has no {BEGIN} … {END} region")
    return head + reference() + tail


def main(argv: list[str]) -> int:
    if argv != ["--write-reference"]:
        print(f"usage: {REGENERATE}", file=sys.stderr)
        return 2
    GUIDE.write_text(render(GUIDE.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
