"""``node.toml``: one node's configuration file, parsed and checked.

The ``[committee]`` section (genesis participants, threshold, genesis start,
``delta``, decision windows, refresh interval, admission policy, the optional
pinned ``genesis_mpk``) must be the
same at every member; ``[node]`` and ``[[peers]]`` are this node's own.
Paths are relative to the directory holding the file.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kms.node.model import CHAIN_RETENTION, NodeConfig
from mpc.dkg.messages import Participant
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError
from mpc.ids import ParticipantIndex


class ConfigError(ValueError):
    """The node configuration is missing something or is inconsistent."""


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
    policy_new_app_rotations: int = 16
    """Most owner rotations a pushed bundle of an app this node has not admitted may carry."""
    announce: tuple[str, ...] = ()
    """libp2p multiaddrs other members dial (``[node] announce``; empty: the listen address)."""
    public_url: str | None = None
    """The HTTP URL clients use (``[node] public_url``; None: from ``http``)."""

    @property
    def directory(self) -> Path:
        return self.path.parent


def _pccs_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError("pccs_url must be an http(s) URL")
    return value


def _announce(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(v, str) and v.startswith("/") and len(v) <= 200 for v in value
    ):
        raise ConfigError("announce must be a list of libp2p multiaddrs (e.g. /dns4/host/tcp/9000)")
    if len(value) > 8:
        raise ConfigError("announce takes at most 8 addresses")
    return tuple(value)


def _public_url(value: Any) -> str | None:
    from mpc.membership.messages import MAX_MEMBER_URL, valid_member_url

    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_MEMBER_URL or not valid_member_url(value):
        raise ConfigError("public_url must be an http(s) URL (e.g. https://kms1.example.org:8443)")
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
    import datetime

    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ConfigError(f"{what} must carry a UTC offset (e.g. 2026-01-01T00:00:00Z)")
        return int(value.timestamp())
    return _count(value, what)


def _positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{what} must be a positive number of seconds")
    return float(value)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer")
    return value


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


def participant_from_toml(entry: dict[str, Any]) -> Participant:
    try:
        p = Participant(
            int(entry["index"]),
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


def load(path: str | Path) -> NodeFileConfig:
    """Read and check ``node.toml``; raises ``ConfigError`` with the reason."""
    path = Path(path).resolve()
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no configuration at {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    base = path.parent
    try:
        node = doc["node"]
        com = doc["committee"]
    except KeyError as exc:
        raise ConfigError(f"{path}: missing section {exc}") from exc
    genesis = tuple(
        sorted((participant_from_toml(e) for e in com.get("genesis", [])), key=lambda p: p.index)
    )
    if not genesis:
        raise ConfigError(
            "the committee has no genesis participants yet (run `kms devnet up` or add them)"
        )
    policy = policy_bytes(str(com.get("admission_policy", "")))
    if int(node.get("chain_retention", CHAIN_RETENTION)) < 2:
        raise ConfigError("node.chain_retention must be at least 2 epochs")
    genesis_mpk: bytes | None = None
    if "genesis_mpk" in com:
        try:
            genesis_mpk = bytes.fromhex(str(com["genesis_mpk"]))
        except ValueError as exc:
            raise ConfigError("committee.genesis_mpk must be hex") from exc
    try:
        protocol = NodeConfig(
            index=ParticipantIndex(int(node["index"])),
            genesis=genesis,
            threshold=int(com["threshold"]),
            genesis_start=float(com["genesis_start"]),
            delta=float(com.get("delta", 1.0)),
            window_period=float(com.get("window_period", 60.0)),
            window_length=float(com.get("window_length", 5.0)),
            refresh_interval=float(com.get("refresh_interval", 0.0)),
            admission_policy_hash=hashlib.sha256(policy).digest(),
            admission_policy=policy,
            genesis_mpk=genesis_mpk,
            chain_retention=int(node.get("chain_retention", CHAIN_RETENTION)),
        )
    except LocalProtocolError as exc:
        raise ConfigError(f"committee: {exc}") from exc
    if not 2 <= protocol.threshold <= len(genesis):
        raise ConfigError(
            "committee.threshold must be between 2 and the number of genesis participants"
        )
    http = str(node.get("http", "127.0.0.1:0"))
    host, _, port = http.rpartition(":")
    peers = tuple(
        PeerConfig(ParticipantIndex(int(p["index"])), str(p["multiaddr"]))
        for p in doc.get("peers", [])
    )
    return NodeFileConfig(
        path=path,
        index=protocol.index,
        store=base / str(node.get("store", "node.db")),
        passphrase_file=(base / node["passphrase_file"]) if "passphrase_file" in node else None,
        passphrase_env=node.get("passphrase_env"),
        listen=str(node.get("listen", "/ip4/127.0.0.1/tcp/0")),
        http_host=host or "127.0.0.1",
        http_port=int(port or 0),
        admin_socket=base / str(node.get("admin_socket", "admin.sock")),
        admin_token_file=base / str(node.get("admin_token_file", "admin.token")),
        log_format=str(node.get("log_format", "json")),
        protocol=protocol,
        peers=peers,
        accept_simulated_quotes=bool(node.get("accept_simulated_quotes", False)),
        simulated_root_ca=(base / node["simulated_root_ca"])
        if "simulated_root_ca" in node
        else None,
        collateral_file=(base / node["collateral_file"]) if "collateral_file" in node else None,
        policies_dir=(base / node["policies_dir"]) if "policies_dir" in node else None,
        max_request_skew=int(node.get("max_request_skew", 120)),
        pccs_url=_pccs_url(node.get("pccs_url")),
        collateral_cache_dir=base / str(node.get("collateral_cache_dir", "collateral")),
        pccs_verify_tls=bool(node.get("pccs_verify_tls", True)),
        allowed_tcb_statuses=_statuses(node.get("allowed_tcb_statuses")),
        min_tcb_evaluation_data_number=_count(
            node.get("min_tcb_evaluation_data_number", 0), "min_tcb_evaluation_data_number"
        ),
        min_collateral_issue_date=_unix_time(
            node.get("min_collateral_issue_date", 0), "min_collateral_issue_date"
        ),
        max_collateral_age=(
            _count(node["max_collateral_age"], "max_collateral_age") or None
            if "max_collateral_age" in node
            else 30 * 86400
        ),
        max_concurrent_collateral_fetches=_count(
            node.get("max_concurrent_collateral_fetches", 4),
            "max_concurrent_collateral_fetches",
            minimum=1,
        ),
        collateral_failure_ttl=_count(
            node.get("collateral_failure_ttl", 60), "collateral_failure_ttl"
        ),
        policy_sync_interval=_positive(
            node.get("policy_sync_interval", 10.0), "policy_sync_interval"
        ),
        policy_max_version_step=_positive_int(
            node.get("policy_max_version_step", 1000), "policy_max_version_step"
        ),
        policy_cache_entries=_positive_int(
            node.get("policy_cache_entries", 1024), "policy_cache_entries"
        ),
        policy_cache_bytes=_positive_int(
            node.get("policy_cache_bytes", 16 * 1024 * 1024), "policy_cache_bytes"
        ),
        policy_max_apps=_positive_int(node.get("policy_max_apps", 0) or 1, "policy_max_apps")
        if node.get("policy_max_apps", 0)
        else 0,
        policy_new_app_rotations=_positive_int(
            node.get("policy_new_app_rotations", 16), "policy_new_app_rotations"
        ),
        announce=_announce(node.get("announce")),
        public_url=_public_url(node.get("public_url")),
    )
