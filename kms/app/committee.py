"""Forming a committee from the command line: ``kms committee assemble|apply|digest``.

``assemble`` turns the operators' participant records (``kms node init --json``)
into ``committee.toml``: the ``[committee]`` section every member must hold (its
genesis records checked) and a ``[[members]]`` directory (index, addresses, url).
``apply`` writes that section into one node's ``node.toml`` together with a
``[[peers]]`` table for every address of every other member, checking the result
as ``kms node run`` will. Both return the committee digest
(``kms.app.config.committee_digest``), which every member's file must share.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from kms.app.config import (
    CommitteeValues,
    ConfigError,
    FileLines,
    committee_digest,
    load,
    multiaddr,
    parse_committee,
    participant_from_toml,
    participant_to_toml,
    url,
)
from kms.app.setup import write_config
from kms.policy import NodeAdmissionPolicy
from mpc.errors import InvalidEncoding
from net.peerid import peer_id_from_ed25519

COMMITTEE_TOML_HEADER = """\
# quorum-kms committee file, written by `kms committee assemble`.
#
# The committee section is what every member's node.toml must hold, unchanged;
# the members tables say where each member listens (libp2p) and serves HTTP.
# Apply it to a node with `kms committee apply --config node.toml --committee
# committee.toml`, which also writes the node's peers tables.
"""


@dataclass(frozen=True)
class Member:
    index: int
    addresses: tuple[str, ...]
    url: str | None


def parse_start(text: str, now: float) -> float:
    """``--genesis-start``: Unix seconds, an RFC 3339 time with an offset, or ``+SECONDS``."""
    try:
        if text.startswith("+"):
            return round(now + float(text[1:]), 3)
        try:
            return float(text)
        except ValueError:
            pass
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(
            f"--genesis-start {text!r}: give Unix seconds, an RFC 3339 time with an offset "
            "(2026-01-01T00:00:00Z) or +SECONDS from now"
        ) from exc
    if when.tzinfo is None:
        raise ConfigError(f"--genesis-start {text!r}: give the time's UTC offset (e.g. Z)")
    return when.timestamp()


def read_admission_policy(path: Path) -> bytes:
    """The encoding in ``path`` (as ``kms node admission-policy --out`` writes it, or its hex)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the admission policy {path}: {exc.strerror}") from exc
    candidates = [raw]
    try:
        candidates.append(bytes.fromhex(raw.decode().strip()))
    except (UnicodeDecodeError, ValueError):
        pass
    for encoding in candidates:
        try:
            NodeAdmissionPolicy.decode(encoding)
        except (InvalidEncoding, ValueError):
            continue
        return encoding
    raise ConfigError(
        f"{path} is not an encoded node admission policy: make one with "
        "`kms node admission-policy --measurement FILE --out FILE`"
    )


def _record(raw: Any, where: str) -> tuple[dict[str, Any], Member]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: not a participant record (a JSON object)")
    try:
        participant = participant_from_toml(raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    peer = str(peer_id_from_ed25519(participant.identity))
    if "peer_id" in raw and raw["peer_id"] != peer:
        raise ConfigError(f"{where}: peer_id {raw['peer_id']} is not its identity's ({peer})")
    addresses = raw.get("addresses", [])
    if not isinstance(addresses, list) or not addresses:
        raise ConfigError(
            f"{where}: member {participant.index} has no addresses (its node listens on "
            "every interface and was made without --announce): add its public multiaddr to "
            '"addresses"'
        )
    for a in addresses:
        try:
            multiaddr(a, "addresses")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if "/p2p/" in a and not a.endswith(f"/p2p/{peer}"):
            raise ConfigError(f"{where}: address {a} names another peer than {peer}")
    member_url = raw.get("url")
    if member_url is not None:
        try:
            url(member_url, "url")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    with_peer = tuple(a if "/p2p/" in a else f"{a}/p2p/{peer}" for a in addresses)
    return participant_to_toml(participant), Member(participant.index, with_peer, member_url)


def assemble(
    records: list[tuple[str, Any]],
    *,
    threshold: int,
    genesis_start: float,
    delta: float = 1.0,
    window_period: float = 60.0,
    window_length: float = 5.0,
    refresh_interval: float = 0.0,
    admission_policy: bytes = b"",
) -> tuple[dict[str, Any], bytes]:
    """The ``committee.toml`` document of these ``(where, record)`` pairs, and its digest.

    Raises ``ConfigError`` for a malformed or unsigned record, two records with one
    index or one identity, a record without addresses, or an impossible threshold.
    """
    genesis: list[dict[str, Any]] = []
    members: list[Member] = []
    for where, raw in records:
        entry, member = _record(raw, where)
        if any(g["index"] == entry["index"] for g in genesis):
            raise ConfigError(f"{where}: index {entry['index']} is in two records")
        if any(g["identity"] == entry["identity"] for g in genesis):
            raise ConfigError(f"{where}: its identity is in two records")
        genesis.append(entry)
        members.append(member)
    if not 2 <= threshold <= len(genesis):
        raise ConfigError(
            f"--threshold {threshold}: must be between 2 and the {len(genesis)} records given"
        )
    committee: dict[str, Any] = {
        "threshold": threshold,
        "genesis_start": float(genesis_start),
        "delta": float(delta),
        "window_period": float(window_period),
        "window_length": float(window_length),
        "refresh_interval": float(refresh_interval),
        "admission_policy": admission_policy.hex(),
        "genesis": sorted(genesis, key=lambda g: g["index"]),
    }
    doc = {
        "committee": committee,
        "members": [
            {"index": m.index, "addresses": list(m.addresses)}
            | ({"url": m.url} if m.url is not None else {})
            for m in sorted(members, key=lambda m: m.index)
        ],
    }
    values = _parse_committee_doc(doc, Path("committee.toml"), tomli_w.dumps(doc))[0]
    return doc, committee_digest(values)


def write_committee(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(COMMITTEE_TOML_HEADER + "\n" + tomli_w.dumps(doc))


def _parse_committee_doc(
    doc: dict[str, Any], path: Path, text: str
) -> tuple[CommitteeValues, list[Member]]:
    lines = FileLines(path, text)
    for name in doc:
        if name not in ("committee", "members"):
            raise lines.error(
                f"unknown section or key '{name}' (a committee file holds [committee] and "
                "[[members]])",
                name,
            )
    values = parse_committee(doc, lines)
    members: list[Member] = []
    raw_members = doc.get("members", [])
    if not isinstance(raw_members, list):
        raise lines.error("members must be an array of [[members]] tables", "", "members")
    for k, m in enumerate(raw_members):
        if not isinstance(m, dict):
            raise lines.error("a [[members]] entry must be a table", "members", None, k)
        unknown = sorted(set(m) - {"index", "addresses", "url"})
        if unknown:
            raise lines.error(
                f"unknown key '{unknown[0]}' in [[members]] (index, addresses, url)",
                "members",
                unknown[0],
                k,
            )
        try:
            index = m["index"]
            if isinstance(index, bool) or not isinstance(index, int) or index < 1:
                raise ConfigError("index must be an integer ≥ 1")
            addresses = m.get("addresses", [])
            if not isinstance(addresses, list):
                raise ConfigError("addresses must be a list of multiaddrs")
            for a in addresses:
                multiaddr(a, "addresses")
            member_url = m.get("url")
            if member_url is not None:
                url(member_url, "url")
        except KeyError:
            raise lines.error("missing key 'index' in [[members]]", "members", None, k) from None
        except ConfigError as exc:
            raise lines.error(f"{exc} (in [[members]])", "members", None, k) from None
        members.append(Member(index, tuple(addresses), member_url))
    return values, members


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    """A TOML file's document and text; ``ConfigError`` if it cannot be read or parsed."""
    try:
        text = path.read_text()
        return tomllib.loads(text), text
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def read_committee(path: Path) -> tuple[dict[str, Any], CommitteeValues, list[Member]]:
    """A committee file: its raw document, its parsed ``[committee]`` and its members."""
    path = path.resolve()
    doc, text = _read_toml(path)
    values, members = _parse_committee_doc(doc, path, text)
    return doc, values, members


def apply(config: Path, committee_file: Path) -> bytes:
    """Write ``committee_file``'s ``[committee]`` into ``config`` (``node.toml``) with a
    ``[[peers]]`` table per address of every other member; returns the committee digest.

    The new file is checked as ``kms node run`` checks it before it replaces the old
    one, which is left unchanged on any error (``ConfigError``).
    """
    committee_doc, _values, members = read_committee(committee_file)
    if "genesis_mpk" in committee_doc.get("committee", {}):
        # The pin is each operator's own trust decision, outside the digest: a committee
        # file (perhaps assembled by a corrupt member) never sets it.
        raise ConfigError(
            f"{committee_file}: a committee file must not set genesis_mpk (a pin is each "
            "operator's own choice, taken from more than one operator: set it in node.toml "
            "by hand); node.toml left unchanged"
        )
    config = config.resolve()
    doc, _ = _read_toml(config)
    node = doc.get("node")
    if not isinstance(node, dict) or "index" not in node:
        raise ConfigError(f"{config}: no [node] index (make the node with `kms node init`)")
    own = node["index"]
    old = doc.get("committee")
    pinned = old.get("genesis_mpk") if isinstance(old, dict) else None
    doc["committee"] = dict(committee_doc["committee"])
    if pinned is not None:
        doc["committee"]["genesis_mpk"] = pinned  # a local pin is kept
    doc["peers"] = [
        {"index": m.index, "multiaddr": a} for m in members if m.index != own for a in m.addresses
    ]
    fd, tmp = tempfile.mkstemp(prefix=".node.toml.", dir=config.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write_config(tmp_path, doc)
        try:
            cfg = load(tmp_path)
        except ConfigError as exc:
            raise ConfigError(
                str(exc).replace(str(tmp_path), str(config)) + " (node.toml left unchanged)"
            ) from None
        tmp_path.chmod(config.stat().st_mode & 0o777)
        tmp_path.replace(config)
    finally:
        tmp_path.unlink(missing_ok=True)
    return cfg.committee_digest


def digest_of(path: Path) -> bytes:
    """The committee digest of a file's ``[committee]`` (``node.toml`` or ``committee.toml``)."""
    path = path.resolve()
    doc, text = _read_toml(path)
    return committee_digest(parse_committee(doc, FileLines(path, text)))


def read_record(path: Path) -> tuple[str, Any]:
    """One participant record file (``kms node init --json`` output)."""
    try:
        return str(path), json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the record {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not a JSON participant record ({exc})") from exc
