"""Where the agent's TEE facts come from: a quote, the event log, the app's compose file.

The agent answers dstack's ``Info`` and ``GetQuote`` and asks the committee for the app's
key on the strength of what its CVM measured. It learns those facts once, at start, from
a :class:`TeeSource`, and :func:`read_view` checks them against one fresh quote before
anything else uses them:

1. it quotes once over 64 fresh random bytes and parses the quote
   (:func:`kms.attest.parse_tdx_quote`); the quote's report data must be those bytes,
   so a source cannot hand back an old quote;
2. it replays the event log's ``imr = 3`` events to the quote's RTMR3
   (:func:`kms.policy.eventlog.replay_rtmr3`, which also reads dstack's boot prefix);
3. it reads the app id, compose hash and instance id ONLY from that boot prefix (events
   0–4 of RTMR3) — never from a source's own claims;
4. it requires ``SHA-256(app_compose) == compose-hash``: the compose text is trusted
   because the measured event names its hash, not because of where it was read;
5. when the log has boot-time events (``imr`` 0–2, as dstack's full log from the CCEL
   always has), every one of RTMR0–2 must be their replay. A log with NO boot-time
   events at all is accepted (the devnet's simulated CVM, whose RTMR0–2 are arbitrary
   values in a measurement file): RTMR0–2 are then the quote's own values, which the
   committee checks against the app's policy, and the log explains only RTMR3 (dstack's
   SDK ``replay_rtmrs`` then gives 48 zero bytes for RTMR0–2). A log with some boot-time
   events that does not replay to all three is refused.

Any mismatch is a :class:`TeeError` saying what differs. The view's event log holds the
full 96-hex-digit digest of every event (runtime digests recomputed from name and
payload), so dstack's SDK can replay it.

Three sources:

* :class:`SimulatedSource` — the simulated TEE of a TEE directory (``kms.app.simtee``),
  booting like dstack (development and the devnet: :func:`devnet_source`);
* :class:`DstackSidecarSource` — dstack's own guest agent, reached through its socket
  mounted into the agent's container only (quotes from ``/GetQuote``, log and compose
  from ``/Info``'s ``tcb_info``);
* :class:`TdxSource` — a bare TDX guest: quotes from configfs-tsm, boot events from the
  ACPI CCEL (:mod:`kms.agent.ccel`), runtime events from dstack's RTMR3 log file, the
  compose text from a file.

Nothing a source says is trusted beyond what the quote and these checks bind.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from kms.agent.ccel import MAX_CCEL_SIZE, CcelError, parse_ccel
from kms.attest import QuoteVerificationError, parse_tdx_quote
from kms.policy import EventLogError
from kms.policy.eventlog import (
    DSTACK_RUNTIME_EVENT_TYPE,
    MAX_EVENT_LOG_SIZE,
    MAX_EVENTS,
    RTMR3_INDEX,
    RTMR_LENGTH,
    replay_rtmr3,
    runtime_event_digest,
)

__all__ = [
    "CCEL_PATH",
    "DSTACK_SOCKET",
    "LEGACY_RUNTIME_LOG",
    "REPORT_DATA_SIZE",
    "RUNTIME_LOG",
    "TSM_ENTRY",
    "TSM_REPORT_DIR",
    "DstackSidecarSource",
    "SimulatedSource",
    "TdxSource",
    "TeeError",
    "TeeSource",
    "TeeView",
    "devnet_app_compose",
    "devnet_measurement",
    "devnet_source",
    "full_digests",
    "read_view",
]

REPORT_DATA_SIZE: Final = 64
TSM_REPORT_DIR: Final = "/sys/kernel/config/tsm/report"
TSM_ENTRY: Final = "quorum-kms-agent"
"""The configfs-tsm report entry the agent creates (once) and reuses, under an flock."""
CCEL_PATH: Final = "/sys/firmware/acpi/tables/data/CCEL"
LEGACY_RUNTIME_LOG: Final = "/run/log/tdx_mr3/tdx_events.log"
"""dstack v0.5's RTMR3 log: JSON lines of ``TdxEvent`` objects (hex payload, digest)."""
RUNTIME_LOG: Final = "/run/log/dstack/runtime_events.log"
"""dstack's newer RTMR3 log: JSON lines ``{"event": name, "payload": base64}``."""
DSTACK_SOCKET: Final = "/var/run/dstack.sock"
DEFAULT_APP_COMPOSE: Final = "/dstack/.host-shared/app-compose.json"
"""Where dstack leaves the compose file; untrusted, it is checked against the measured hash."""

MAX_APP_COMPOSE: Final = 1024 * 1024
MAX_QUOTE: Final = 64 * 1024
MAX_RESPONSE: Final = 8 * MAX_EVENT_LOG_SIZE
MAX_RUNTIME_LOG: Final = 2 * MAX_EVENT_LOG_SIZE
TDX_DEVICE_ID: Final = hashlib.sha256(b"").digest()
"""dstack reports ``SHA-256("")`` as the device id of a TDX CVM (``decode_app_info``)."""


class TeeError(ValueError):
    """The TEE's facts are unavailable or do not agree (the message says what differs)."""


class TeeSource(Protocol):
    """Where the TEE facts come from (see the module docstring)."""

    def quote(self, report_data: bytes) -> bytes:
        """A raw TDX quote over 64 bytes of report data."""
        ...

    def event_log(self) -> list[dict[str, Any]]:
        """dstack ``TdxEvent`` JSON objects, each with its full digest."""
        ...

    def app_compose(self) -> str:
        """The verbatim ``app-compose.json`` text."""
        ...

    def vm_config(self) -> str:
        """dstack's ``vm_config`` string; ``""`` when unknown."""
        ...


@dataclass(frozen=True)
class TeeView:
    """What ``Info`` reports, read once at start and checked (:func:`read_view`)."""

    app_id: bytes
    instance_id: bytes
    device_id: bytes
    compose_hash: bytes
    os_image_hash: bytes
    """The measured ``os-image-hash`` event's payload; empty when the log has none."""
    mr_aggregated: bytes
    """dstack's ``SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2 ‖ RTMR3 [‖ MRCONFIGID ‖ MROWNER ‖
    MROWNERCONFIG when any is non-zero])``."""
    mrtd: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    event_log: list[dict[str, Any]]
    app_compose: str
    vm_config: str
    key_provider_info: str
    """The measured ``key-provider`` event's payload (dstack's boot key provider), ``""``
    when the log has none; the agent's runtime replaces it with the committee's."""


# --- event logs ------------------------------------------------------------------------

_EVENT_KEYS: Final = frozenset({"imr", "event_type", "digest", "event", "event_payload"})
_INFORMATIONAL_KEYS: Final = frozenset({"version", "preimage", "hash_input"})


def _hex_field(where: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise TeeError(f"{where}: expected a hex string")
    try:
        return bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise TeeError(f"{where}: not hex") from None


def _int_field(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise TeeError(f"{where}: expected an unsigned 32-bit integer")
    return value


def full_digests(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """dstack ``TdxEvent`` objects with the full digest of every event.

    A version-1 runtime event (``imr`` 3, dstack's runtime type) gets the digest of its
    name and payload — dstack strips it from ``GetQuote``'s log — and a recorded one that
    differs is refused; every other event must carry its 48-byte digest. Informational
    keys (``preimage``, ``hash_input``) are dropped; ``version`` is kept when it is not 1.
    Raises :class:`TeeError`.
    """
    out: list[dict[str, Any]] = []
    for i, e in enumerate(events):
        if i >= MAX_EVENTS:
            raise TeeError(f"the event log has more than {MAX_EVENTS} events")
        if not isinstance(e, Mapping):
            raise TeeError(f"event {i}: expected an object")
        unknown = set(e) - _EVENT_KEYS - _INFORMATIONAL_KEYS
        if unknown:
            raise TeeError(f"event {i}: unknown field {sorted(unknown)[0]!r}")
        for key in ("imr", "event_type", "event", "event_payload"):
            if key not in e:
                raise TeeError(f"event {i}: missing {key}")
        imr = _int_field(f"event {i}.imr", e["imr"])
        event_type = _int_field(f"event {i}.event_type", e["event_type"])
        name = e["event"]
        if not isinstance(name, str):
            raise TeeError(f"event {i}.event: expected a string")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise TeeError(f"event {i}.event: not UTF-8") from None
        payload = _hex_field(f"event {i}.event_payload", e["event_payload"])
        recorded = _hex_field(f"event {i}.digest", e.get("digest", ""))
        version = e.get("version", 1)
        if version not in (1, 2) or isinstance(version, bool):
            raise TeeError(f"event {i}.version: must be 1 or 2")
        digest = recorded
        if imr == RTMR3_INDEX and event_type == DSTACK_RUNTIME_EVENT_TYPE and version == 1:
            digest = runtime_event_digest(name, payload)
            if recorded and recorded != digest:
                raise TeeError(
                    f"event {i} ({name[:64]!r}): the recorded digest is not the digest of "
                    "its name and payload"
                )
        elif len(digest) != RTMR_LENGTH:
            raise TeeError(
                f"event {i} (imr {imr}): needs its {RTMR_LENGTH}-byte digest, has "
                f"{len(digest)} bytes"
            )
        entry: dict[str, Any] = {
            "imr": imr,
            "event_type": event_type,
            "digest": digest.hex(),
            "event": name,
            "event_payload": payload.hex(),
        }
        if version != 1:
            entry["version"] = version
        out.append(entry)
    return out


def _replay(digests: Iterable[str]) -> bytes:
    """An RTMR from its digests (dstack SDK ``replay_rtmr``: zero-padded to 48 bytes)."""
    register = bytes(RTMR_LENGTH)
    for d in digests:
        register = hashlib.sha384(register + bytes.fromhex(d).ljust(RTMR_LENGTH, b"\0")).digest()
    return register


def _mr_aggregated(fields: Any) -> bytes:
    h = hashlib.sha256()
    for part in (fields.mr_td, fields.rtmr0, fields.rtmr1, fields.rtmr2, fields.rtmr3):
        h.update(part)
    extra = (fields.mr_config_id, fields.mr_owner, fields.mr_owner_config)
    if any(any(x) for x in extra):
        for part in extra:
            h.update(part)
    return h.digest()


def read_view(
    source: TeeSource, *, random_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> TeeView:
    """Quote once, check the log and the compose file against it, and return the view.

    See the module docstring for the checks; raises :class:`TeeError`.
    """
    report_data = random_bytes(REPORT_DATA_SIZE)
    quote = source.quote(report_data)
    try:
        fields = parse_tdx_quote(quote).fields
    except (QuoteVerificationError, TypeError) as exc:
        raise TeeError(f"the TEE's quote does not parse: {exc}") from None
    if fields.report_data != report_data:
        raise TeeError("the quote is not over the report data asked for (a stale quote?)")
    events = full_digests(source.event_log())
    text = json.dumps(events, separators=(",", ":"))
    try:
        replayed = replay_rtmr3(text, fields.rtmr3)
    except EventLogError as exc:
        raise TeeError(f"the event log does not match the quote's RTMR3: {exc}") from None
    registers = (fields.rtmr0, fields.rtmr1, fields.rtmr2)
    if any(e["imr"] < RTMR3_INDEX for e in events):
        for imr, quoted in enumerate(registers):
            replay = _replay(e["digest"] for e in events if e["imr"] == imr)
            if replay != quoted:
                raise TeeError(
                    f"the event log's imr {imr} events replay to {replay.hex()}, the quote's "
                    f"RTMR{imr} is {quoted.hex()}"
                )
    compose = source.app_compose()
    if not isinstance(compose, str):
        raise TeeError("app_compose must be text")
    if len(compose) > MAX_APP_COMPOSE:
        raise TeeError(f"app_compose is longer than {MAX_APP_COMPOSE} characters")
    try:
        compose_bytes = compose.encode("utf-8")
    except UnicodeEncodeError:
        raise TeeError("app_compose is not valid UTF-8 text (a lone surrogate)") from None
    actual = hashlib.sha256(compose_bytes).digest()
    if actual != replayed.compose_hash:
        raise TeeError(
            f"app_compose hashes to {actual.hex()}, the measured compose-hash event is "
            f"{replayed.compose_hash.hex()}"
        )
    vm_config = source.vm_config()
    if not isinstance(vm_config, str):
        raise TeeError("vm_config must be text")
    key_provider = replayed.key_provider or b""
    try:
        key_provider_info = key_provider.decode("utf-8")
    except UnicodeDecodeError:
        key_provider_info = ""
    return TeeView(
        app_id=replayed.app_id,
        instance_id=replayed.instance_id,
        device_id=TDX_DEVICE_ID,
        compose_hash=replayed.compose_hash,
        os_image_hash=replayed.os_image_hash or b"",
        mr_aggregated=_mr_aggregated(fields),
        mrtd=fields.mr_td,
        rtmr=(fields.rtmr0, fields.rtmr1, fields.rtmr2, fields.rtmr3),
        event_log=events,
        app_compose=compose,
        vm_config=vm_config,
        key_provider_info=key_provider_info,
    )


def _check_report_data(report_data: bytes) -> bytes:
    if not isinstance(report_data, bytes | bytearray) or len(report_data) != REPORT_DATA_SIZE:
        raise TeeError(f"report data must be {REPORT_DATA_SIZE} bytes")
    return bytes(report_data)


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise TeeError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise TeeError(f"the {what} {path} is larger than {limit} bytes")
    return data


# --- the simulated TEE -----------------------------------------------------------------


class SimulatedSource:
    """A CVM on the simulated TEE of ``tee_dir`` (``kms.app.simtee``), booted like dstack.

    ``measurement`` must pin a compose hash equal to ``SHA-256(app_compose)``; the CVM's
    RTMR3 is the replay of dstack's boot events for ``app_id`` (and ``instance_id``).
    ``boot_events`` (``TdxEvent`` objects for ``imr`` 0–2, e.g. from a CCEL) join the log
    when given; they must replay to the measurement's RTMR0–2 for :func:`read_view` to
    accept the view.
    """

    def __init__(
        self,
        tee_dir: Path,
        measurement: Any,
        app_id: bytes,
        app_compose: str,
        *,
        instance_id: bytes = b"",
        boot_events: Sequence[Mapping[str, Any]] = (),
        vm_config: str = "",
    ) -> None:
        from kms.app import simtee

        if measurement.compose_hash is None:
            raise TeeError(
                "the measurement pins RTMR3, not a compose hash: a dstack CVM's RTMR3 is the "
                "replay of its boot events, so its policy must pin the compose hash"
            )
        if hashlib.sha256(app_compose.encode("utf-8")).digest() != measurement.compose_hash:
            raise TeeError("the measurement's compose_hash is not SHA-256(app_compose)")
        try:
            cvm = simtee.cvm_quote_source(
                Path(tee_dir), measurement, bytes(app_id), instance_id=instance_id
            )
        except simtee.TEEError as exc:
            raise TeeError(str(exc)) from None
        self._quote = cvm.quote
        self._events = list(boot_events) + json.loads(cvm.event_log)
        self._compose = app_compose
        self._vm_config = vm_config

    def quote(self, report_data: bytes) -> bytes:
        return self._quote(_check_report_data(report_data))

    def event_log(self) -> list[dict[str, Any]]:
        return full_digests(self._events)

    def app_compose(self) -> str:
        return self._compose

    def vm_config(self) -> str:
        return self._vm_config


DEVNET_STATE_FILE: Final = "devnet.json"
DEVNET_TEE_DIR: Final = "simulated-tee"


def devnet_app_compose(app_name: str, agent_config: str | None = None) -> str:
    """A deterministic dstack ``app-compose.json`` for devnet app ``app_name``.

    Its docker compose runs one ``app`` service; with ``agent_config`` it also carries
    that text as the ``agent.toml`` entry of its top-level ``configs:`` (the measured
    place :func:`kms.agent.config.load_measured_config` reads the agent's config from).
    """
    compose: dict[str, Any] = {
        "services": {"app": {"image": f"quorum-kms-devnet/{app_name}:latest"}},
    }
    if agent_config is not None:
        compose["configs"] = {"agent.toml": {"content": agent_config}}
        compose["services"]["app"]["configs"] = [
            {"source": "agent.toml", "target": "/etc/quorum-kms/agent.toml"}
        ]
    doc = {
        "manifest_version": 2,
        "name": app_name,
        "runner": "docker-compose",
        "docker_compose_file": json.dumps(compose, indent=2, sort_keys=True) + "\n",
        "kms_enabled": True,
        "gateway_enabled": False,
        "public_logs": True,
        "public_sysinfo": True,
        "public_tcbinfo": True,
        "local_key_provider_enabled": False,
        "allowed_envs": [],
        "no_instance_id": False,
        "secure_time": False,
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def devnet_measurement(devnet_dir: Path, app_compose: str) -> Any:
    """The devnet CVM's measurement for ``app_compose``: MRTD and RTMR0–2 of the devnet's
    app image (``simulated-tee/app.measurement.toml``) and ``SHA-256(app_compose)``.

    A policy must admit THIS measurement (a compose hash), not the app image file's
    pinned RTMR3, for the devnet's agent to get keys."""
    from kms.app import simtee
    from kms.policy import Measurement

    path = Path(devnet_dir) / DEVNET_TEE_DIR / simtee.APP_MEASUREMENT_FILE
    try:
        image = simtee.load_measurement(path)
    except simtee.TEEError as exc:
        raise TeeError(str(exc)) from None
    return Measurement.compose(
        mr_td=image.mr_td,
        rtmr0=image.rtmr0,
        rtmr1=image.rtmr1,
        rtmr2=image.rtmr2,
        compose_hash=hashlib.sha256(app_compose.encode("utf-8")).digest(),
    )


def devnet_source(
    devnet_dir: Path, app_name: str, *, app_compose: str | None = None
) -> SimulatedSource:
    """The simulated CVM of devnet app ``app_name`` (its alias in ``devnet.json``, or its
    app id in hex) running ``app_compose`` (by default :func:`devnet_app_compose`)."""
    devnet_dir = Path(devnet_dir)
    try:
        state = json.loads((devnet_dir / DEVNET_STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise TeeError(f"cannot read {devnet_dir / DEVNET_STATE_FILE}: {exc}") from None
    apps = state.get("apps") or {} if isinstance(state, dict) else {}
    try:
        app_id = bytes.fromhex(apps.get(app_name, app_name))
    except (ValueError, TypeError, AttributeError):
        app_id = b""
    if len(app_id) != 20:
        raise TeeError(f"unknown devnet app {app_name!r} (known: {sorted(apps)})")
    compose = devnet_app_compose(app_name) if app_compose is None else app_compose
    return SimulatedSource(
        devnet_dir / DEVNET_TEE_DIR,
        devnet_measurement(devnet_dir, compose),
        app_id,
        compose,
    )


# --- dstack's own agent ----------------------------------------------------------------


class DstackSidecarSource:
    """dstack's guest agent, reached through its Unix socket (mounted into the agent's
    container only, never the app's).

    Quotes come from ``POST /GetQuote`` (the v0 surface every dstack 0.5 agent has); the
    event log, ``app_compose`` (verbatim) and ``vm_config`` from ``POST /Info``'s
    ``tcb_info``, read once and kept. dstack strips runtime events' digests from its
    logs; :func:`full_digests` recomputes them from name and payload.
    """

    def __init__(self, socket_path: str | Path, *, timeout: float = 30.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._info: dict[str, Any] | None = None
        self._vm_config = ""

    def _call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        if not Path(self.socket_path).is_socket():
            raise TeeError(f"no dstack agent socket at {self.socket_path}")
        transport = httpx.HTTPTransport(uds=self.socket_path)
        try:
            with (
                httpx.Client(
                    transport=transport, base_url="http://localhost", timeout=self.timeout
                ) as client,
                client.stream("POST", f"/{method}", json=body) as response,
            ):
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE:
                        raise TeeError(f"dstack's {method} answer is over {MAX_RESPONSE} bytes")
                status = response.status_code
        except httpx.HTTPError as exc:
            raise TeeError(f"dstack's agent at {self.socket_path}: {method}: {exc}") from None
        if status != 200:
            detail = bytes(data[:200]).decode("utf-8", "replace")
            raise TeeError(f"dstack's {method} answered HTTP {status}: {detail}")
        try:
            answer = json.loads(data)
        except ValueError:
            raise TeeError(f"dstack's {method} answer is not JSON") from None
        if not isinstance(answer, dict):
            raise TeeError(f"dstack's {method} answer is not a JSON object")
        return answer

    def _tcb_info(self) -> dict[str, Any]:
        if self._info is None:
            info = self._call("Info", {})
            raw = info.get("tcb_info")
            if not isinstance(raw, str) or not raw:
                raise TeeError("dstack's Info has no tcb_info")
            try:
                tcb = json.loads(raw)
            except ValueError:
                raise TeeError("dstack's tcb_info is not JSON") from None
            if not isinstance(tcb, dict):
                raise TeeError("dstack's tcb_info is not a JSON object")
            vm_config = info.get("vm_config", "")
            self._vm_config = vm_config if isinstance(vm_config, str) else ""
            self._info = tcb
        return self._info

    def quote(self, report_data: bytes) -> bytes:
        answer = self._call("GetQuote", {"report_data": _check_report_data(report_data).hex()})
        quote = _hex_field("GetQuote quote", answer.get("quote"))
        if not quote or len(quote) > MAX_QUOTE:
            raise TeeError(f"dstack's GetQuote gave a quote of {len(quote)} bytes")
        return quote

    def event_log(self) -> list[dict[str, Any]]:
        log = self._tcb_info().get("event_log")
        if not isinstance(log, list):
            raise TeeError("dstack's tcb_info has no event_log array")
        return full_digests(log)

    def app_compose(self) -> str:
        compose = self._tcb_info().get("app_compose")
        if not isinstance(compose, str):
            raise TeeError("dstack's tcb_info has no app_compose text")
        return compose

    def vm_config(self) -> str:
        self._tcb_info()
        return self._vm_config


# --- a bare TDX guest ------------------------------------------------------------------


class TdxSource:
    """A bare TDX guest (see the module docstring).

    Quotes come from the configfs-tsm report directory ``tsm_dir``: the entry
    :data:`TSM_ENTRY` (created once), with ``inblob`` held under an exclusive flock while
    ``generation`` is read, 64 bytes are written to ``inblob``, ``generation`` is awaited
    (it must advance by exactly one: no other writer), ``outblob`` is read and
    ``generation`` is read again (unchanged). The runtime log is dstack's RTMR3 log, in
    either form (:data:`LEGACY_RUNTIME_LOG`, :data:`RUNTIME_LOG`).
    """

    def __init__(
        self,
        tsm_dir: str | Path = TSM_REPORT_DIR,
        ccel_path: str | Path = CCEL_PATH,
        runtime_log_path: str | Path = LEGACY_RUNTIME_LOG,
        app_compose_path: str | Path = DEFAULT_APP_COMPOSE,
        *,
        timeout: float = 30.0,
    ) -> None:
        self.tsm_dir = Path(tsm_dir)
        self.ccel_path = Path(ccel_path)
        self.runtime_log_path = Path(runtime_log_path)
        self.app_compose_path = Path(app_compose_path)
        self.timeout = timeout

    def _generation(self, entry: Path) -> int:
        try:
            return int((entry / "generation").read_text().strip())
        except (OSError, ValueError) as exc:
            raise TeeError(f"cannot read {entry / 'generation'}: {exc}") from None

    def quote(self, report_data: bytes) -> bytes:
        report_data = _check_report_data(report_data)
        if not self.tsm_dir.is_dir():
            raise TeeError(f"no configfs-tsm report directory at {self.tsm_dir} (not a TDX guest)")
        entry = self.tsm_dir / TSM_ENTRY
        try:
            entry.mkdir(exist_ok=True)
            provider = (entry / "provider").read_text().strip()
        except OSError as exc:
            raise TeeError(f"cannot use the configfs-tsm entry {entry}: {exc}") from None
        if not provider.startswith("tdx_guest"):
            raise TeeError(f"{entry} is provided by {provider!r}, not tdx_guest")
        inblob = entry / "inblob"
        try:
            lock = os.open(inblob, os.O_WRONLY)
        except OSError as exc:
            raise TeeError(f"cannot open {inblob}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            before = self._generation(entry)
            # configfs hands a binary attribute's bytes to the driver when the file is
            # closed: write through a second descriptor and close it.
            fd = os.open(inblob, os.O_WRONLY)
            try:
                if os.write(fd, report_data) != REPORT_DATA_SIZE:
                    raise TeeError("configfs-tsm: a short write to inblob")
            finally:
                os.close(fd)
            deadline = time.monotonic() + self.timeout
            after = self._generation(entry)
            while after == before:
                if time.monotonic() > deadline:
                    raise TeeError("configfs-tsm: the generation did not advance")
                time.sleep(0.002)
                after = self._generation(entry)
            if after != before + 1:
                raise TeeError("configfs-tsm: another writer used the report entry")
            quote = _read_bounded(entry / "outblob", MAX_QUOTE, "configfs-tsm outblob")
            if self._generation(entry) != after:
                raise TeeError("configfs-tsm: another writer used the report entry")
        except OSError as exc:
            raise TeeError(f"configfs-tsm quote failed: {exc.strerror or exc}") from None
        finally:
            os.close(lock)
        if not quote:
            raise TeeError("configfs-tsm gave an empty quote")
        return quote

    def _runtime_events(self) -> list[dict[str, Any]]:
        raw = _read_bounded(self.runtime_log_path, MAX_RUNTIME_LOG, "runtime event log")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TeeError(f"{self.runtime_log_path} is not UTF-8") from None
        events: list[dict[str, Any]] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{self.runtime_log_path}:{number}"
            try:
                obj = json.loads(line)
            except ValueError:
                raise TeeError(f"{where}: not JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
                raise TeeError(f"{where}: not a runtime event")
            if "event_payload" in obj:  # dstack v0.5's TdxEvent line
                if obj.get("imr") != RTMR3_INDEX or obj.get("event_type") != (
                    DSTACK_RUNTIME_EVENT_TYPE
                ):
                    raise TeeError(f"{where}: not an RTMR3 runtime event")
                events.append(dict(obj))
                continue
            if set(obj) - {"event", "payload", "version"}:
                raise TeeError(f"{where}: unknown fields")
            if obj.get("version", 1) != 1:
                raise TeeError(
                    f"{where}: version-{obj['version']} runtime events are not supported"
                )
            try:
                payload = base64.b64decode(obj.get("payload", ""), validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise TeeError(f"{where}: the payload is not base64") from None
            events.append(
                {
                    "imr": RTMR3_INDEX,
                    "event_type": DSTACK_RUNTIME_EVENT_TYPE,
                    "digest": "",
                    "event": obj["event"],
                    "event_payload": payload.hex(),
                }
            )
        return events

    def event_log(self) -> list[dict[str, Any]]:
        data = _read_bounded(self.ccel_path, MAX_CCEL_SIZE, "CCEL")
        try:
            boot = [e.to_json() for e in parse_ccel(data)]
        except CcelError as exc:
            raise TeeError(f"the CCEL {self.ccel_path}: {exc}") from None
        return full_digests([*boot, *self._runtime_events()])

    def app_compose(self) -> str:
        raw = _read_bounded(self.app_compose_path, MAX_APP_COMPOSE, "app compose file")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TeeError(f"{self.app_compose_path} is not UTF-8") from None

    def vm_config(self) -> str:
        return ""
