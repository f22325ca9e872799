"""What an app owner does from the command line (``kms app``): owner key files, the policy
TOML, signing it into a :class:`~kms.policy.PolicyBundle`, pushing bundles to nodes,
reading what nodes hold, and handing the app to a new owner key.

**Owner key file** (mode 0600, written once, never overwritten): TOML with ``seed`` (the
32-byte Ed25519 seed, hex), ``app_id`` (hex) and ``rotations`` (the app's owner rotation
records, each its canonical encoding in hex, oldest first). A file holding one hex line is
read as a seed of an app with no rotations (the devnet's owner files). A key file whose
key is no longer the app's current owner (it handed the app on) is refused for signing.

**Policy TOML**: see :data:`POLICY_KEYS`, :data:`PIN_KEYS` and docs/apps.md. Strict:
an unknown key is an error naming it.

Everything here raises :class:`OwnerError` with a message for the user.
"""

from __future__ import annotations

import calendar
import datetime
import os
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from kms.app.simtee import TEEError, load_measurement, measurement_from_table
from kms.policy import (
    DEFAULT_LIFETIME,
    AppPolicy,
    GpuPin,
    Measurement,
    MinKeyVersion,
    OwnerChain,
    OwnerKey,
    Pins,
    PlatformPin,
    PolicyBundle,
    PolicyError,
    RotationRecord,
    SystemEventPin,
)
from kms.secretfile import write_secret
from mpc.codec import MessageDecodeError
from mpc.errors import InvalidEncoding, LocalProtocolError

HTTP_TRANSPORT: httpx.BaseTransport | None = None
"""What carries ``kms app`` and ``kms key`` HTTP requests instead of the network when set
(tests point it at in-process nodes)."""

NOT_BEFORE_MARGIN = 60
"""A policy is valid from this many seconds before it is signed (clocks differ)."""

POLICY_KEYS = {
    "version": "the policy version, 1 or more; each new version must be higher",
    "measurements": "array of tables: images admitted (registers inline or file = PATH)",
    "purposes": 'purposes keys may be derived for (default ["app"])',
    "tcb_statuses": 'TCB statuses admitted (default ["UpToDate"])',
    "not_before": "valid from (Unix seconds or RFC 3339; default now - 60 s)",
    "lifetime": "seconds from not_before to expiry (default 604800, at most 2592000)",
    "expires": "expiry (Unix seconds or RFC 3339), instead of lifetime",
    "pins": "table: what the policy pins beyond the image",
}
PIN_KEYS = {
    "mr_config_id": "48 bytes hex",
    "mr_owner": "48 bytes hex",
    "mr_owner_config": "48 bytes hex",
    "mr_service_td": "48 bytes hex",
    "xfam_mask": "8 bytes hex (with xfam_value)",
    "xfam_value": "8 bytes hex (with xfam_mask)",
    "min_tcb_evaluation_data_number": "integer",
    "min_key_versions": "table purpose = oldest key version",
    "system_events": "array of tables name, payload (hex)",
    "gpu": "table cc_mode, devtools, min_devices",
    "platforms": "array of tables fmspc (6 bytes hex), platform_instance_id (16 bytes hex)",
}


class OwnerError(ValueError):
    """What an owner command could not do, said for the user."""


# --- owner key files ------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerFile:
    """An owner key and its app's owner chain, as a key file holds them."""

    key: OwnerKey
    chain: OwnerChain

    @property
    def app_id(self) -> bytes:
        return self.chain.app_id

    @property
    def current(self) -> bool:
        """True while this key owns the app (it has not handed it on)."""
        return self.chain.current == self.key.public_bytes()


def _key_file_text(key: OwnerKey, chain: OwnerChain) -> str:
    rotations = ", ".join(f'"{r.encode().hex()}"' for r in chain.records)
    return (
        "# quorum-kms app owner key: keep it secret, it signs the app's policies.\n"
        f'seed = "{key.seed_bytes().hex()}"\n'
        f'app_id = "{chain.app_id.hex()}"\n'
        f"rotations = [{rotations}]\n"
    )


def _write_new(path: Path, text: str) -> None:
    try:
        write_secret(path, text, replace=False)
    except FileExistsError:
        raise OwnerError(f"{path} exists: an owner key file is never overwritten") from None
    except OSError as exc:
        raise OwnerError(f"cannot write {path}: {exc.strerror or exc}") from None


def create_owner(path: Path) -> OwnerFile:
    """A new owner key, founding a new app, in a new file of mode 0600 at ``path``."""
    key = OwnerKey.generate(os.urandom)
    chain = OwnerChain.genesis(key.public_bytes())
    _write_new(Path(path), _key_file_text(key, chain))
    return OwnerFile(key, chain)


def load_owner(path: Path) -> OwnerFile:
    """The owner key file at ``path`` with its verified chain."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise OwnerError(f"cannot read the owner key {path}: {exc.strerror or exc}") from None
    try:
        if text.strip() and "=" not in text:  # one hex line: a devnet owner file
            key = OwnerKey.from_seed(bytes.fromhex(text.strip()))
            return OwnerFile(key, OwnerChain.genesis(key.public_bytes()))
        doc = tomllib.loads(text)
        unknown = sorted(set(doc) - {"seed", "app_id", "rotations"})
        if unknown:
            raise OwnerError(f"{path}: unknown key {unknown[0]!r} in an owner key file")
        key = OwnerKey.from_seed(bytes.fromhex(doc["seed"]))
        app_id = bytes.fromhex(doc["app_id"])
        records = [RotationRecord.decode(bytes.fromhex(r)) for r in doc.get("rotations", [])]
        chain = OwnerChain.from_records(
            app_id, records, first_owner=None if records else key.public_bytes()
        )
    except OwnerError:
        raise
    except KeyError as exc:
        raise OwnerError(f"{path}: {exc.args[0]} is missing: not an owner key file") from None
    except (ValueError, TypeError, MessageDecodeError, InvalidEncoding) as exc:
        raise OwnerError(f"{path}: not a usable owner key file: {exc}") from None
    except PolicyError as exc:
        raise OwnerError(f"{path}: its owner chain does not verify: {exc}") from None
    if key.public_bytes() not in chain.owners():
        raise OwnerError(f"{path}: the key is not an owner of app {app_id.hex()}")
    return OwnerFile(key, chain)


def signing_owner(path: Path) -> OwnerFile:
    """The owner key file at ``path``, refused unless its key owns the app now."""
    owner = load_owner(path)
    if not owner.current:
        raise OwnerError(
            f"{path}: this key handed app {owner.app_id.hex()} to another owner key "
            f"({owner.chain.current.hex()}); sign with the current owner's key file"
        )
    return owner


# --- the policy TOML --------------------------------------------------------------------------


def _time(where: str, value: object) -> int:
    if isinstance(value, bool):
        raise OwnerError(f"{where} must be Unix seconds or an RFC 3339 time")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise OwnerError(f"{where}: give a time zone (e.g. Z)")
        return calendar.timegm(value.utctimetuple())
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise OwnerError(f"{where} must be Unix seconds or an RFC 3339 time") from None
        return _time(where, parsed)
    raise OwnerError(f"{where} must be Unix seconds or an RFC 3339 time")


def _hex(where: str, value: object, size: int) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) != size:
        raise OwnerError(f"{where} must be {size} bytes in hex")
    return raw


def _strings(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OwnerError(f"{where} must be an array of strings")
    return tuple(value)


def _table(where: str, value: object, allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OwnerError(f"{where} must be a table")
    for key in value:
        if key not in allowed:
            raise OwnerError(f"{where}: unknown key {key!r} (known: {', '.join(allowed)})")
    return value


def _tables(where: str, value: object) -> list[Any]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise OwnerError(f"{where} must be an array of tables ([[{where}]])")
    return value


def _pins(where: str, table: dict[str, Any]) -> Pins:
    _table(where, table, list(PIN_KEYS))
    kwargs: dict[str, Any] = {}
    for name, size in (
        ("mr_config_id", 48),
        ("mr_owner", 48),
        ("mr_owner_config", 48),
        ("mr_service_td", 48),
        ("xfam_mask", 8),
        ("xfam_value", 8),
    ):
        if name in table:
            kwargs[name] = _hex(f"{where}.{name}", table[name], size)
    if "min_tcb_evaluation_data_number" in table:
        n = table["min_tcb_evaluation_data_number"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise OwnerError(f"{where}.min_tcb_evaluation_data_number must be an integer ≥ 0")
        kwargs["min_tcb_evaluation_data_number"] = n
    if "min_key_versions" in table:
        mkv = table["min_key_versions"]
        if not isinstance(mkv, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in mkv.values()
        ):
            raise OwnerError(f"{where}.min_key_versions must be a table purpose = version")
        kwargs["min_key_versions"] = [MinKeyVersion(p, v) for p, v in mkv.items()]
    if "system_events" in table:
        events = []
        for k, e in enumerate(_tables(f"{where}.system_events", table["system_events"])):
            w = f"{where}.system_events[{k}]"
            _table(w, e, ["name", "payload"])
            if not isinstance(e.get("name"), str):
                raise OwnerError(f"{w}.name must be a string")
            try:
                payload = bytes.fromhex(e.get("payload", ""))
            except (ValueError, TypeError):
                raise OwnerError(f"{w}.payload must be hex") from None
            events.append(SystemEventPin(e["name"], payload))
        kwargs["system_events"] = events
    if "gpu" in table:
        g = _table(f"{where}.gpu", table["gpu"], ["cc_mode", "devtools", "min_devices"])
        kwargs["gpu"] = GpuPin(
            cc_mode=g.get("cc_mode"),
            devtools=g.get("devtools"),
            min_devices=g.get("min_devices", 1),
        )
    if "platforms" in table:
        platforms = []
        for k, p in enumerate(_tables(f"{where}.platforms", table["platforms"])):
            w = f"{where}.platforms[{k}]"
            _table(w, p, ["fmspc", "platform_instance_id"])
            pid = p.get("platform_instance_id")
            platforms.append(
                PlatformPin(
                    _hex(f"{w}.fmspc", p.get("fmspc"), 6),
                    None if pid is None else _hex(f"{w}.platform_instance_id", pid, 16),
                )
            )
        kwargs["platforms"] = platforms
    try:
        return Pins.build(**kwargs)
    except PolicyError as exc:
        raise OwnerError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class PolicySpec:
    """A policy TOML, read and checked: everything but the app, owner and master key."""

    version: int
    measurements: tuple[Measurement, ...]
    purposes: tuple[str, ...]
    tcb_statuses: tuple[str, ...]
    not_before: int
    expires: int
    pins: Pins | None


def read_policy(path: Path, *, now: int | None = None) -> PolicySpec:
    """The policy TOML at ``path`` (see docs/apps.md); ``OwnerError`` naming the key."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise OwnerError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise OwnerError(f"{path}: not TOML: {exc}") from None
    return policy_from_doc(doc, str(path), base=path.parent, now=now)


def policy_from_doc(
    doc: Mapping[str, Any], where: str, *, base: Path, now: int | None = None
) -> PolicySpec:
    for key in doc:
        if key not in POLICY_KEYS:
            raise OwnerError(f"{where}: unknown key {key!r} (known: {', '.join(POLICY_KEYS)})")
    if "version" not in doc:
        raise OwnerError(f"{where}: version is missing")
    version = doc["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise OwnerError(f"{where}: version must be an integer ≥ 1")
    measurements = []
    for k, m in enumerate(_tables(f"{where}: measurements", doc.get("measurements", []))):
        w = f"{where}: measurements[{k}]"
        try:
            if "file" in m:
                if len(m) != 1:
                    raise OwnerError(f"{w}: give file alone, or the registers inline")
                measurements.append(load_measurement(base / str(m["file"])))
            else:
                measurements.append(measurement_from_table(m, w))
        except TEEError as exc:
            raise OwnerError(str(exc)) from None
    purposes = _strings(f"{where}: purposes", doc.get("purposes", ["app"]))
    statuses = _strings(f"{where}: tcb_statuses", doc.get("tcb_statuses", ["UpToDate"]))
    now = int(time.time()) if now is None else now
    not_before = (
        _time(f"{where}: not_before", doc["not_before"])
        if "not_before" in doc
        else now - NOT_BEFORE_MARGIN
    )
    if "lifetime" in doc and "expires" in doc:
        raise OwnerError(f"{where}: give lifetime or expires, not both")
    if "expires" in doc:
        expires = _time(f"{where}: expires", doc["expires"])
    else:
        lifetime = doc.get("lifetime", DEFAULT_LIFETIME)
        if not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime < 1:
            raise OwnerError(f"{where}: lifetime must be a number of seconds ≥ 1")
        expires = not_before + lifetime
    pins = _pins(f"{where}: pins", doc["pins"]) if "pins" in doc else None
    return PolicySpec(version, tuple(measurements), purposes, statuses, not_before, expires, pins)


def parse_mpk(mpk_hex: str) -> bytes:
    """The master public key (96 bytes, hex) the policy names."""
    from mpc.cert import check_mpk
    from mpc.math import G2

    try:
        raw = bytes.fromhex(mpk_hex)
        check_mpk(G2.from_bytes(raw))
    except ValueError as exc:
        raise OwnerError(f"--mpk: not a master public key: {exc}") from None
    return raw


def sign_policy(owner: OwnerFile, spec: PolicySpec, mpk: bytes) -> PolicyBundle:
    """The bundle nodes take: the policy signed by ``owner`` (its current owner key) and
    the app's rotation chain."""
    if not owner.current:
        raise OwnerError(
            f"this key handed app {owner.app_id.hex()} to another owner key; it signs no policy"
        )
    try:
        policy = AppPolicy.build(
            app_id=owner.app_id,
            version=spec.version,
            owner_key=owner.key.public_bytes(),
            measurements=spec.measurements,
            kms_mpk=mpk,
            not_before=spec.not_before,
            expires=spec.expires,
            allowed_tcb_statuses=spec.tcb_statuses,
            purposes=spec.purposes,
            pins=spec.pins,
        )
        signed = policy.sign(owner.key)
    except (PolicyError, LocalProtocolError) as exc:
        raise OwnerError(f"the policy is not valid: {exc}") from None
    from kms.policy import MAX_LIFETIME

    if policy.lifetime > MAX_LIFETIME:
        raise OwnerError(
            f"the policy lives {policy.lifetime} s; nodes accept at most {MAX_LIFETIME} s"
        )
    return PolicyBundle(signed, owner.chain.records)


def describe_bundle(bundle: PolicyBundle) -> dict[str, Any]:
    """What a bundle says, for printing."""
    p = bundle.signed.policy
    return {
        "app_id": p.app_id.hex(),
        "version": p.version,
        "owner_key": p.owner_key.hex(),
        "rotations": len(bundle.rotations),
        "measurements": len(p.measurements),
        "purposes": list(p.purposes),
        "tcb_statuses": list(p.allowed_tcb_statuses),
        "not_before": p.not_before,
        "expires": p.expires,
        "pins": p.pins is not None,
    }


def read_bundle(path: Path) -> PolicyBundle:
    """An encoded bundle file (``*.policy``), checked: well formed, chain, signature."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise OwnerError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        bundle = PolicyBundle.decode(raw)
        policy = bundle.signed.policy
        chain = OwnerChain.from_records(
            policy.app_id,
            bundle.rotations,
            first_owner=None if bundle.rotations else policy.owner_key,
        )
        if chain.current != policy.owner_key:
            raise OwnerError(f"{path}: the policy is not signed by the app's current owner key")
        bundle.signed.verify_signature()
    except OwnerError:
        raise
    except (MessageDecodeError, ValueError, PolicyError, InvalidEncoding) as exc:
        raise OwnerError(f"{path}: not a valid policy bundle: {exc}") from None
    return bundle


def write_bundle(path: Path, bundle: PolicyBundle) -> None:
    try:
        tmp = Path(path).with_name(f".{Path(path).name}.tmp")
        tmp.write_bytes(bundle.encode())
        tmp.replace(path)
    except OSError as exc:
        raise OwnerError(f"cannot write {path}: {exc.strerror or exc}") from None


# --- rotation -----------------------------------------------------------------------------------


def rotate_owner(
    old_path: Path, new_path: Path, spec: PolicySpec, mpk: bytes
) -> tuple[OwnerFile, PolicyBundle]:
    """Hand the app of ``old_path`` to a new owner key (a new file at ``new_path``) and sign
    ``spec`` with it: the bundle carries the chain with the new rotation, so nodes that take
    it refuse every later policy of the old key.

    The old key file is rewritten with the rotation appended, so it signs nothing more."""
    old = signing_owner(old_path)
    if Path(new_path).exists():
        raise OwnerError(f"{new_path} exists: an owner key file is never overwritten")
    new_key = OwnerKey.generate(os.urandom)
    try:
        record = old.key.rotate(old.chain, new_key.public_bytes())
        chain = old.chain.extend(record)
    except (PolicyError, LocalProtocolError) as exc:
        raise OwnerError(f"cannot rotate: {exc}") from None
    new = OwnerFile(new_key, chain)
    bundle = sign_policy(new, spec, mpk)
    _write_new(Path(new_path), _key_file_text(new_key, chain))
    try:
        write_secret(old_path, _key_file_text(old.key, chain))
    except OSError as exc:
        raise OwnerError(f"cannot update {old_path}: {exc.strerror or exc}") from None
    return new, bundle


# --- nodes ------------------------------------------------------------------------------------


def split_urls(urls: str | Sequence[str]) -> list[str]:
    """``URL[,URL…]`` (or several) as a list, without duplicates or trailing slashes."""
    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for u in item.split(","):
            u = u.strip().rstrip("/")
            if not u:
                continue
            if not u.startswith(("http://", "https://")):
                raise OwnerError(f"--urls: {u!r} is not an http:// or https:// URL")
            if u not in out:
                out.append(u)
    if not out:
        raise OwnerError("--urls: give at least one node URL")
    return out


def _client(timeout: float, transport: httpx.BaseTransport | None = None) -> httpx.Client:
    return httpx.Client(timeout=timeout, transport=transport or HTTP_TRANSPORT)


def _why(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "unreachable: no answer in time"
    if isinstance(exc, httpx.HTTPError):
        return f"unreachable: {exc}" if str(exc) else "unreachable"
    return "the answer is not JSON"


def push_bundle(
    nodes: Mapping[Any, str],
    bundle: PolicyBundle,
    timeout: float = 5.0,
    *,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Offer ``bundle`` to each node (label → URL); effective everywhere once all accept.

    The report lists the labels that acknowledged it and, for each node that lags, its
    reason, detail and the version it holds."""
    acks, lagging = [], []
    body = bundle.encode()
    for label, url in nodes.items():
        try:
            with _client(timeout, transport) as http:
                r = http.post(
                    url + "/v1/policies",
                    content=body,
                    headers={"content-type": "application/msgpack"},
                )
            reply = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            lagging.append({"node": label, "reason": _why(exc)})
            continue
        if not isinstance(reply, dict):
            lagging.append({"node": label, "reason": "its answer is not a JSON object"})
            continue
        if reply.get("accepted") is True:
            acks.append(label)
        else:
            entry = {"node": label, "reason": reply.get("reason", f"HTTP {r.status_code}")}
            if reply.get("detail"):
                entry["detail"] = reply["detail"]
            if reply.get("held_version") is not None:
                entry["held_version"] = reply["held_version"]
            lagging.append(entry)
    return {
        "app_id": bundle.signed.policy.app_id.hex(),
        "version": bundle.signed.policy.version,
        "acknowledged": acks,
        "lagging": lagging,
        "effective_everywhere": not lagging,
    }


def held_policy(
    url: str,
    app_id: bytes,
    timeout: float = 5.0,
    *,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """What the node at ``url`` holds for the app: ``{"policy": …}`` (None when it holds
    none) or ``{"error": …}`` when it could not be asked."""
    try:
        with _client(timeout, transport) as http:
            r = http.get(f"{url}/v1/policies/{app_id.hex()}")
        if r.status_code == 404:
            return {"policy": None}
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}"}
        policy = r.json()
        if not isinstance(policy, dict):
            return {"error": "its answer is not a JSON object"}
        return {"policy": policy}
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": _why(exc)}


def policies_held(
    nodes: Mapping[Any, str],
    app_id: bytes,
    *,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """The policy each node (label → URL) holds for the app, and the versions among them."""
    rows = []
    for label, url in nodes.items():
        rows.append({"node": label, **held_policy(url, app_id, transport=transport)})
    versions = {
        r["policy"]["version"]
        for r in rows
        if r.get("policy") and isinstance(r["policy"].get("version"), int)
    }
    return {"app_id": app_id.hex(), "nodes": rows, "versions": sorted(versions)}


def parse_app_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 20:
        raise OwnerError(f"--app: {text!r} is not an app id (20 bytes in hex)")
    return raw


# --- an operator admits an app ------------------------------------------------------------------


def admit_bundle(config: Path, bundle_file: Path) -> dict[str, Any]:
    """Copy a checked bundle into the policies directory of the node of ``config``, as
    ``<app id>-v<version>.policy``; the caller then has the node reload it."""
    from kms.app.config import ConfigError, load

    bundle = read_bundle(bundle_file)
    try:
        cfg = load(config)
    except ConfigError as exc:
        raise OwnerError(str(exc)) from None
    if cfg.policies_dir is None:
        raise OwnerError(
            f'{config} sets no [node] policies_dir: add policies_dir = "policies" to [node] '
            "and restart the node"
        )
    policy = bundle.signed.policy
    target = cfg.policies_dir / f"{policy.app_id.hex()}-v{policy.version}.policy"
    try:
        cfg.policies_dir.mkdir(parents=True, exist_ok=True)
        write_bundle(target, bundle)
    except OSError as exc:
        raise OwnerError(f"cannot write {target}: {exc.strerror or exc}") from None
    return {"app_id": policy.app_id.hex(), "version": policy.version, "file": str(target)}
