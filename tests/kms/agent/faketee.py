"""Fake TEE trees built from the simulated TEE, for the agent's TEE sources.

One simulated CVM (:class:`SimCVM`: a TEE directory, a measurement pinning a compose
hash, boot-time events for RTMR0–2, dstack's runtime boot events for RTMR3) is presented
the three ways the agent can meet a CVM:

* :class:`FakeTsm`: a configfs-tsm report directory answered by a thread that watches
  the entry's ``inblob``, writes ``outblob`` with a simulated quote over what was
  written, then bumps ``generation``;
* :func:`encode_ccel` / :func:`write_runtime_log`: the ACPI CCEL log area and dstack's
  RTMR3 log file (either form);
* :class:`FakeDstackAgent`: dstack 0.5's guest agent on a Unix socket, answering
  ``GetQuote`` and ``Info`` with runtime digests stripped, as the real one does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socketserver
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from kms.agent.ccel import EV_NO_ACTION, SHA384_ALGORITHM, SPEC_ID_SIGNATURE, CcelEvent
from kms.agent.tee import TSM_ENTRY
from kms.app import simtee
from kms.policy import Measurement, build_event_log, dstack_boot_events
from kms.policy.eventlog import DSTACK_RUNTIME_EVENT_TYPE, runtime_event_digest

APP_COMPOSE = json.dumps(
    {
        "manifest_version": 2,
        "name": "fake",
        "runner": "docker-compose",
        "docker_compose_file": "services:\n  app:\n    image: example/app:1\n",
    },
    indent=2,
)


def _replay(digests: Sequence[bytes]) -> bytes:
    register = bytes(48)
    for d in digests:
        register = hashlib.sha384(register + d).digest()
    return register


def sample_boot_events() -> list[CcelEvent]:
    """A few firmware events for RTMR0–2 (digests of their data, as TDVF records them)."""
    out = []
    for imr, event_type, data in (
        (0, 0x80000008, b"firmware volume"),
        (0, 0x0000000A, b"ACPI DATA"),
        (1, 0x80000003, b"kernel image"),
        (2, 0x0000000D, b"console=ttyS0 initrd"),
        (2, 0x80000001, b"\x00" * 40),
    ):
        out.append(CcelEvent(imr, event_type, hashlib.sha384(data).digest(), data))
    return out


@dataclass
class SimCVM:
    """One CVM on the simulated TEE, booted like dstack."""

    tee_dir: Path
    app_id: bytes
    app_compose: str
    instance_id: bytes
    boot_events: list[CcelEvent]
    measurement: Measurement
    runtime: list[tuple[str, bytes]] = field(default_factory=list)
    """RTMR3's events (name, payload), boot prefix first."""
    quote: Callable[[bytes], bytes] = field(default=lambda rd: b"")

    @property
    def boot_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.boot_events]


def make_cvm(
    base: Path,
    *,
    app_id: bytes = bytes(range(1, 21)),
    app_compose: str = APP_COMPOSE,
    instance_id: bytes = bytes([7]) * 20,
    boot_events: Sequence[CcelEvent] | None = None,
    extra_runtime: Sequence[tuple[str, bytes]] = (),
) -> SimCVM:
    """A TEE directory under ``base`` and a CVM on it; its RTMR3 replays dstack's boot
    events for ``app_id`` / SHA-256(``app_compose``) / ``instance_id``, then ``extra_runtime``."""
    tee_dir = base / "tee"
    if not (tee_dir / simtee.SEED_FILE).exists():
        simtee.init(tee_dir)
    boot = list(sample_boot_events() if boot_events is None else boot_events)
    regs = [_replay([e.digest for e in boot if e.imr == i]) for i in range(3)]
    compose_hash = hashlib.sha256(app_compose.encode()).digest()
    measurement = Measurement.compose(
        mr_td=bytes([0x5A]) * 48,
        rtmr0=regs[0],
        rtmr1=regs[1],
        rtmr2=regs[2],
        compose_hash=compose_hash,
    )
    runtime = [
        *dstack_boot_events(app_id=app_id, compose_hash=compose_hash, instance_id=instance_id),
        *extra_runtime,
    ]
    _, rtmr3 = build_event_log(runtime)
    explicit = Measurement.explicit(
        mr_td=measurement.mr_td, rtmr0=regs[0], rtmr1=regs[1], rtmr2=regs[2], rtmr3=rtmr3
    )
    return SimCVM(
        tee_dir,
        app_id,
        app_compose,
        instance_id,
        boot,
        measurement,
        runtime,
        simtee.quote_source(tee_dir, explicit),
    )


# --- CCEL --------------------------------------------------------------------------------


def encode_ccel(
    events: Sequence[CcelEvent],
    *,
    algorithms: Sequence[tuple[int, int]] = ((SHA384_ALGORITHM, 48),),
    no_action: bool = True,
    mrtd_event: bool = True,
    padding: int = 256,
    end_marker: bool = False,
) -> bytes:
    """A TCG crypto-agile log area holding ``events`` (imr_index = imr + 1).

    Digests for other declared algorithms are SHA-256-derived filler of the declared
    size. ``no_action`` adds an ``EV_NO_ACTION`` record and ``mrtd_event`` a record for
    imr_index 0 (both must be skipped); the area ends with ``padding`` bytes of 0xFF
    (after a 0xFFFFFFFF end marker with ``end_marker``)."""
    spec = bytearray(SPEC_ID_SIGNATURE)
    spec += struct.pack("<IBBBB", 0, 0, 2, 0, 2)
    spec += struct.pack("<I", len(algorithms))
    for alg, size in algorithms:
        spec += struct.pack("<HH", alg, size)
    spec += b"\x00"
    out = bytearray(struct.pack("<II", 0, EV_NO_ACTION) + bytes(20))
    out += struct.pack("<I", len(spec)) + spec

    def record(imr_index: int, event_type: int, digest384: bytes, data: bytes) -> bytes:
        body = bytearray(struct.pack("<III", imr_index, event_type, len(algorithms)))
        for alg, size in algorithms:
            body += struct.pack("<H", alg)
            if alg == SHA384_ALGORITHM:
                body += digest384
            else:
                body += hashlib.sha512(data + bytes([alg & 0xFF])).digest()[:size]
        body += struct.pack("<I", len(data)) + data
        return bytes(body)

    if mrtd_event:
        out += record(0, 0x80000008, hashlib.sha384(b"mrtd").digest(), b"mrtd")
    for i, e in enumerate(events):
        if no_action and i == 1:
            out += record(1, EV_NO_ACTION, bytes(48), b"StartupLocality\0\x00")
        out += record(e.imr + 1, e.event_type, e.digest, e.data)
    if end_marker:
        out += b"\xff\xff\xff\xff"
    return bytes(out) + b"\xff" * padding


# --- dstack's runtime log ------------------------------------------------------------------


def write_runtime_log(path: Path, events: Sequence[tuple[str, bytes]], *, form: str) -> Path:
    """dstack's RTMR3 log: ``legacy`` (v0.5 ``TdxEvent`` lines, hex payload and digest)
    or ``new`` (``{"event", "payload": base64}`` lines)."""
    lines = []
    for name, payload in events:
        if form == "legacy":
            obj: dict[str, Any] = {
                "imr": 3,
                "event_type": DSTACK_RUNTIME_EVENT_TYPE,
                "digest": runtime_event_digest(name, payload).hex(),
                "event": name,
                "event_payload": payload.hex(),
            }
        else:
            obj = {"event": name, "payload": base64.b64encode(payload).decode()}
        lines.append(json.dumps(obj))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --- configfs-tsm ---------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class FakeTsm:
    """A configfs-tsm report directory (``dir``) whose entry :data:`TSM_ENTRY` is
    answered by a thread: each new 64-byte ``inblob`` gets ``outblob`` = a quote from
    ``quote`` over it, then ``generation`` + 1 (+ ``extra_bumps``, to play another writer)."""

    def __init__(
        self, base: Path, quote: Callable[[bytes], bytes], *, extra_bumps: int = 0
    ) -> None:
        self.dir = base / "tsm" / "report"
        self.entry = self.dir / TSM_ENTRY
        self.entry.mkdir(parents=True)
        (self.entry / "provider").write_text("tdx_guest\n")
        (self.entry / "inblob").write_bytes(b"")
        (self.entry / "outblob").write_bytes(b"")
        (self.entry / "generation").write_text("0\n")
        self.quote = quote
        self.extra_bumps = extra_bumps
        self.served = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        inblob = self.entry / "inblob"
        seen = b""  # the agent's report data is random: a new write is new bytes
        generation = 0
        while not self._stop.is_set():
            try:
                data = inblob.read_bytes()
            except OSError:
                data = b""
            if len(data) == 64 and data != seen:
                seen = data
                _atomic_write(self.entry / "outblob", self.quote(data))
                generation += 1 + self.extra_bumps
                _atomic_write(self.entry / "generation", f"{generation}\n".encode())
                self.served += 1
            time.sleep(0.001)

    def __enter__(self) -> FakeTsm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --- dstack's guest agent --------------------------------------------------------------------


def stripped(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """dstack's stripping: runtime events lose their digest (kept payload)."""
    out = []
    for e in events:
        e = dict(e)
        if e["event_type"] == DSTACK_RUNTIME_EVENT_TYPE:
            e["digest"] = ""
        out.append(e)
    return out


def dstack_event_log(cvm: SimCVM) -> list[dict[str, Any]]:
    """The CVM's full event log as dstack's ``tcb_info`` has it, runtime digests stripped."""
    log, _ = build_event_log(cvm.runtime)
    return stripped([*cvm.boot_json, *json.loads(log)])


class FakeDstackAgent:
    """dstack 0.5's guest agent for ``cvm`` on a Unix socket: ``POST /GetQuote`` and
    ``POST /Info`` (JSON). ``event_log``/``app_compose`` override what ``Info`` reports."""

    def __init__(
        self,
        cvm: SimCVM,
        *,
        event_log: list[dict[str, Any]] | None = None,
        app_compose: str | None = None,
        vm_config: str = "",
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dstack-"))  # short: AF_UNIX path limit
        self.socket_path = self.dir / "dstack.sock"
        self.cvm = cvm
        self.event_log = dstack_event_log(cvm) if event_log is None else event_log
        self.app_compose = cvm.app_compose if app_compose is None else app_compose
        self.vm_config = vm_config
        self.calls: list[str] = []
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                method = self.path.lstrip("/")
                agent.calls.append(method)
                if method == "GetQuote":
                    rd = bytes.fromhex(body.get("report_data", "")).ljust(64, b"\0")
                    answer = {
                        "quote": agent.cvm.quote(rd).hex(),
                        "event_log": json.dumps(agent.event_log),
                        "report_data": rd.hex(),
                        "vm_config": agent.vm_config,
                    }
                    status = 200
                elif method == "Info":
                    tcb = {
                        "mrtd": agent.cvm.measurement.mr_td.hex(),
                        "event_log": agent.event_log,
                        "app_compose": agent.app_compose,
                    }
                    answer = {
                        "app_id": agent.cvm.app_id.hex(),
                        "instance_id": agent.cvm.instance_id.hex(),
                        "tcb_info": json.dumps(tcb, indent=2),
                        "vm_config": agent.vm_config,
                    }
                    status = 200
                else:
                    answer, status = {"error": f"Service not found: {method}"}, 404
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(self.socket_path), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeDstackAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)
        os.unlink(self.socket_path)
        os.rmdir(self.dir)
