"""dstack's guest API, served by the agent on its Unix socket (``/var/run/dstack.sock``).

An ASGI app (Starlette; hypercorn serves it). Mounts, as dstack's guest API v0 and v1
documents define them:

- ``/<Method>`` and ``/v0/<Method>``: the frozen v0 ``DstackGuest`` (one handler, two
  mounts): GetKey, GetQuote, Attest, Info, EmitEvent, GetTlsKey, Sign, Verify, Version.
- ``/v1/<Method>``: the v1 ``DstackGuest``: IssueCert, GetKey, Attest, AttestGpu, Info,
  Version.

Status codes: 200 with the response message; 404 ``{"error": "Service not found:
<Method>"}`` for an unknown method on a mounted surface; a plain-text 404 for any other
path (dstack's Tappd ``/prpc/...`` and external ``Worker`` mounts are not served here);
400 ``{"error": "<message>"}`` when the handler fails, including every malformed
request; 413 ``{"error": ...}`` for a body over ``max_body``.

Encoding: JSON only (``POST`` with ``Content-Type: application/json``, or ``GET`` with
the fields as query parameters). dstack's prpc also takes protobuf bodies for any other
content type; this server does not and answers 415 with a JSON error saying so. Every
proto ``bytes`` field is lowercase hex without ``0x`` on output; on input an optional
``0x`` prefix is accepted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kms.agent.tee import TeeSource, TeeView
from kms.dstack import keys as dstack_keys
from kms.dstack import tls

MAX_REPORT_DATA = 64
EMIT_EVENT_REMOVED = (
    "EmitEvent was removed in dstack 0.6.0; runtime RTMR3 events are system-owned and "
    "cannot be extended by apps"
)
NO_GPU = "no GPU evidence: this CVM has no confidential-computing GPU attached"
PROTOBUF_UNSUPPORTED = (
    "protobuf request bodies are not supported by this agent; "
    "send JSON with Content-Type: application/json"
)
DMI = Path("/sys/class/dmi/id")


@dataclass(frozen=True)
class AgentKeys:
    """What the agent holds once the committee has released and certified the app root.

    ``root`` is the app root secp256k1 scalar (32 bytes); it is never logged or shown in
    ``repr``. ``link1`` is the committee's 48-byte BLS signature over dstack's link-1
    message (``signature_chain[1]``); ``qkms_cert`` is ``(version, epoch, signature48)``
    of the quorum-kms app-key certificate.
    """

    root: bytes = field(repr=False)
    root_public: bytes
    app_id: bytes
    root_version: int
    link1: bytes
    qkms_cert: tuple[int, int, bytes]
    mpk: bytes
    committee_urls: tuple[str, ...] = ()


class BadRequest(ValueError):
    """A malformed request; its text is served as ``{"error": ...}`` with HTTP 400."""


class _TooLarge(Exception):
    pass


# --- request fields -------------------------------------------------------------------


class Fields:
    """A request message's fields: from a JSON object, or from query parameters (all strings)."""

    def __init__(self, values: Mapping[str, Any], *, query: bool = False) -> None:
        self._values = values
        self._query = query

    def _get(self, name: str) -> Any:
        value = self._values.get(name)
        if self._query and isinstance(value, list) and len(value) == 1:
            return value[0]
        return value

    def string(self, name: str) -> str:
        value = self._get(name)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise BadRequest(f"invalid field {name}: expected a string")
        return value

    def boolean(self, name: str) -> bool:
        value = self._get(name)
        if value is None:
            return False
        if self._query and isinstance(value, str) and value in ("true", "false"):
            return value == "true"
        if not isinstance(value, bool):
            raise BadRequest(f"invalid field {name}: expected a boolean")
        return value

    def u64(self, name: str) -> int | None:
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
            value = int(value)  # proto3 JSON writes 64-bit integers as strings
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
            raise BadRequest(f"invalid field {name}: expected an unsigned 64-bit integer")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._values.get(name)
        if value is None:
            return ()
        if self._query and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"invalid field {name}: expected a list of strings")
        return tuple(value)

    def hex(self, name: str) -> bytes:
        value = self.string(name)
        if value[:2] in ("0x", "0X"):
            value = value[2:]
        if len(value) % 2:
            raise BadRequest(f"invalid field {name}: hex string has an odd length")
        if not all(c in "0123456789abcdefABCDEF" for c in value):
            raise BadRequest(f"invalid field {name}: not a hex string")
        return bytes.fromhex(value)


def _report_data(fields: Fields) -> bytes:
    data = fields.hex("report_data")
    if len(data) > MAX_REPORT_DATA:
        raise BadRequest(
            f"report_data is {len(data)} bytes; at most {MAX_REPORT_DATA} bytes are allowed"
        )
    return data.ljust(MAX_REPORT_DATA, b"\0")


def _cert_request(fields: Fields) -> tls.CertRequest:
    return tls.CertRequest(
        subject=fields.string("subject"),
        alt_names=fields.strings("alt_names"),
        usage_ra_tls=fields.boolean("usage_ra_tls"),
        usage_server_auth=fields.boolean("usage_server_auth"),
        usage_client_auth=fields.boolean("usage_client_auth"),
        not_before=fields.u64("not_before"),
        not_after=fields.u64("not_after"),
        with_app_info=fields.boolean("with_app_info"),
    )


# --- the service ----------------------------------------------------------------------


def _read_dmi(name: str) -> str:
    try:
        return (DMI / name).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _git_rev() -> str:
    git = shutil.which("git")
    if git is None:
        return ""
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [git, "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and len(rev) in (40, 64) else ""


def _package_version() -> str:
    try:
        return metadata.version("quorum-kms")
    except metadata.PackageNotFoundError:
        return ""


def _app_name(app_compose: str) -> str:
    try:
        doc = json.loads(app_compose)
    except ValueError:
        return ""
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else ""


Handler = Callable[[Fields], Awaitable[dict[str, Any]]]


class GuestService:
    """The handlers of both surfaces over one agent's keys and TEE."""

    def __init__(
        self,
        keys: AgentKeys,
        view: TeeView,
        source: TeeSource,
        *,
        rev: str | None = None,
        clock: Callable[[], float] = time.time,
        new_leaf_key: Callable[[], ec.EllipticCurvePrivateKey] | None = None,
    ) -> None:
        if len(keys.root) != 32 or len(keys.link1) != 48:
            raise ValueError("agent keys: root must be 32 bytes and link1 48 bytes")
        if dstack_keys.root_public(keys.root) != keys.root_public:
            raise ValueError("agent keys: root_public is not the public key of root")
        if keys.app_id != view.app_id:
            raise ValueError("agent keys are for another app id than the TEE view's")
        self.keys = keys
        self.view = view
        self.source = source
        self.rev = _git_rev() if rev is None else rev
        self.package_version = _package_version()
        self.clock = clock
        self.new_leaf_key = new_leaf_key or (lambda: ec.generate_private_key(ec.SECP256R1()))
        self.app_ca = tls.AppCA(keys.root, keys.app_id)
        self.cloud_vendor = _read_dmi("sys_vendor")
        self.cloud_product = _read_dmi("product_name")
        self.app_name = _app_name(view.app_compose)
        version, epoch, signature = keys.qkms_cert
        self.key_provider_info = json.dumps(
            {
                "name": "quorum-kms",
                "id": keys.mpk.hex(),
                "mpk": keys.mpk.hex(),
                "urls": list(keys.committee_urls),
                "root_version": keys.root_version,
                "app_key_cert": {"version": version, "epoch": epoch, "signature": signature.hex()},
                "app_ca": {
                    "spki_sha256": hashlib.sha256(tls.spki_der(self.app_ca.public_key)).hexdigest(),
                    "link": self.app_ca.link.hex(),
                },
            }
        )
        self.v0: dict[str, Handler] = {
            "GetKey": self.v0_get_key,
            "GetQuote": self.v0_get_quote,
            "Attest": self.v0_attest,
            "Info": self.v0_info,
            "EmitEvent": self.v0_emit_event,
            "GetTlsKey": self.issue_cert,
            "Sign": self.v0_sign,
            "Verify": self.v0_verify,
            "Version": self.version,
        }
        self.v1: dict[str, Handler] = {
            "IssueCert": self.issue_cert,
            "GetKey": self.v1_get_key,
            "Attest": self.v1_attest,
            "AttestGpu": self.v1_attest_gpu,
            "Info": self.v1_info,
            "Version": self.version,
        }

    # --- TEE access (blocking: quotes go through configfs-tsm or a socket) --------------

    async def _quote(self, report_data: bytes) -> tuple[bytes, list[dict[str, Any]]]:
        def run() -> tuple[bytes, list[dict[str, Any]]]:
            return self.source.quote(report_data), self.source.event_log()

        return await anyio.to_thread.run_sync(run)

    async def _attestation(self, report_data: bytes) -> bytes:
        quote, events = await self._quote(report_data)
        return tls.versioned_attestation(quote, events, report_data, self.view.vm_config)

    # --- shared ------------------------------------------------------------------------

    async def version(self, fields: Fields) -> dict[str, Any]:
        return {"version": self.package_version, "rev": self.rev}

    async def issue_cert(self, fields: Fields) -> dict[str, Any]:
        request = _cert_request(fields)
        tls.check_request(request)
        leaf_key = await anyio.to_thread.run_sync(self.new_leaf_key)
        attestations: dict[bytes, bytes] = {}
        if request.usage_ra_tls:  # quote before signing: the quote may block, signing not
            report_data = tls.ratls_report_data(leaf_key.public_key())
            attestations[report_data] = await self._attestation(report_data)
        key_pem, chain = tls.issue_cert(
            self.app_ca,
            request,
            leaf_key,
            now=int(self.clock()),
            attest=attestations.__getitem__ if attestations else None,
            app_info=self._app_info() if request.with_app_info else None,
        )
        return {"key": key_pem, "certificate_chain": chain}

    def _app_info(self) -> bytes:
        v = self.view
        return tls.app_info_bytes(
            {
                "app_id": v.app_id,
                "instance_id": v.instance_id,
                "device_id": v.device_id,
                "compose_hash": v.compose_hash,
                "os_image_hash": v.os_image_hash,
                "mr_aggregated": v.mr_aggregated,
                "app_name": self.app_name,
                "key_provider_info": self.key_provider_info,
            }
        )

    # --- v0 -----------------------------------------------------------------------------

    async def v0_get_key(self, fields: Fields) -> dict[str, Any]:
        path, purpose = fields.string("path"), fields.string("purpose")
        algorithm = dstack_keys.normalize_v0_algorithm(fields.string("algorithm"))
        key, _pub, link0 = dstack_keys.v0_get_key(self.keys.root, path, purpose, algorithm)
        return {"key": key.hex(), "signature_chain": [link0.hex(), self.keys.link1.hex()]}

    async def v0_get_quote(self, fields: Fields) -> dict[str, Any]:
        report_data = _report_data(fields)
        quote, events = await self._quote(report_data)
        return {
            "quote": quote.hex(),
            "event_log": json.dumps(events),
            "report_data": report_data.hex(),
            "vm_config": self.view.vm_config,
        }

    async def v0_attest(self, fields: Fields) -> dict[str, Any]:
        return {"attestation": (await self._attestation(_report_data(fields))).hex()}

    async def v0_info(self, fields: Fields) -> dict[str, Any]:
        v = self.view
        tcb_info = {
            "mrtd": v.mrtd.hex(),
            "rtmr0": v.rtmr[0].hex(),
            "rtmr1": v.rtmr[1].hex(),
            "rtmr2": v.rtmr[2].hex(),
            "rtmr3": v.rtmr[3].hex(),
            "mr_aggregated": v.mr_aggregated.hex(),
            "os_image_hash": v.os_image_hash.hex(),
            "compose_hash": v.compose_hash.hex(),
            "device_id": v.device_id.hex(),
            "app_compose": v.app_compose,
            "event_log": v.event_log,
        }
        return {
            "app_id": v.app_id.hex(),
            "instance_id": v.instance_id.hex(),
            "app_cert": "",
            "tcb_info": json.dumps(tcb_info, indent=2),
            "app_name": self.app_name,
            "device_id": v.device_id.hex(),
            "mr_aggregated": v.mr_aggregated.hex(),
            "os_image_hash": v.os_image_hash.hex(),
            "key_provider_info": self.key_provider_info,
            "compose_hash": v.compose_hash.hex(),
            "vm_config": v.vm_config,
            "cloud_vendor": self.cloud_vendor,
            "cloud_product": self.cloud_product,
        }

    async def v0_emit_event(self, fields: Fields) -> dict[str, Any]:
        raise BadRequest(EMIT_EVENT_REMOVED)

    async def v0_sign(self, fields: Fields) -> dict[str, Any]:
        algorithm, data = fields.string("algorithm"), fields.hex("data")
        signature, public, link0 = dstack_keys.sign(self.keys.root, algorithm, data)
        return {
            "signature": signature.hex(),
            "signature_chain": [signature.hex(), link0.hex(), self.keys.link1.hex()],
            "public_key": public.hex(),
        }

    async def v0_verify(self, fields: Fields) -> dict[str, Any]:
        algorithm, data = fields.string("algorithm"), fields.hex("data")
        signature, public = fields.hex("signature"), fields.hex("public_key")
        return {"valid": bool(dstack_keys.verify(algorithm, data, signature, public))}

    # --- v1 -----------------------------------------------------------------------------

    async def v1_get_key(self, fields: Fields) -> dict[str, Any]:
        domain, algorithm = fields.string("domain"), fields.string("algorithm")
        key, public, link0 = dstack_keys.v1_get_key(self.keys.root, domain, algorithm)
        return {
            "key": key.hex(),
            "public_key": public.hex(),
            "signature_chain": [link0.hex(), self.keys.link1.hex()],
        }

    async def v1_attest(self, fields: Fields) -> dict[str, Any]:
        report_data = _report_data(fields)
        fields.boolean("include_boottime_gpu_evidence")  # no GPU: the list stays empty
        attestation = await self._attestation(report_data)
        return {"attestation": attestation.hex(), "boottime_gpu_evidence": []}

    async def v1_attest_gpu(self, fields: Fields) -> dict[str, Any]:
        nonce = fields.hex("nonce")
        if len(nonce) != 32:
            raise BadRequest(f"nonce must be exactly 32 bytes, got {len(nonce)}")
        raise BadRequest(NO_GPU)

    async def v1_info(self, fields: Fields) -> dict[str, Any]:
        v = self.view
        return {
            "app_id": v.app_id.hex(),
            "app_name": self.app_name,
            "compose_hash": v.compose_hash.hex(),
            "app_compose": v.app_compose,
            "instance_id": v.instance_id.hex(),
            "device_id": v.device_id.hex(),
            "os_image_hash": v.os_image_hash.hex(),
            "mr_aggregated": v.mr_aggregated.hex(),
            "vm_config": v.vm_config,
            "key_provider_info": self.key_provider_info,
            "cloud_vendor": self.cloud_vendor,
            "cloud_product": self.cloud_product,
        }


# --- HTTP ------------------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
    return b"".join(chunks)


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


async def _fields(request: Request, limit: int) -> Fields:
    if request.method == "GET":
        query: dict[str, Any] = {}
        for name, value in request.query_params.multi_items():
            query.setdefault(name, []).append(value)
        return Fields(query, query=True)
    if not _is_json(request.headers.get("content-type")):
        raise _Unsupported
    raw = await _body(request, limit)
    if not raw.strip():
        return Fields({})
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise BadRequest("request body must be a JSON object")
    return Fields(document)


class _Unsupported(Exception):
    pass


def make_app(
    keys: AgentKeys,
    view: TeeView,
    source: TeeSource,
    *,
    max_body: int = 64 * 1024,
    rev: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The guest API ASGI app for one agent (see the module docstring)."""
    service = GuestService(keys, view, source, rev=rev, clock=clock)

    def surface(handlers: Mapping[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            method = request.path_params["method"]
            handler = handlers.get(method)
            if handler is None:
                return _error(404, f"Service not found: {method}")
            try:
                fields = await _fields(request, max_body)
                return JSONResponse(await handler(fields))
            except _TooLarge:
                return _error(413, f"request body is larger than {max_body} bytes")
            except _Unsupported:
                return _error(415, PROTOBUF_UNSUPPORTED)
            except (BadRequest, dstack_keys.DstackError, tls.TlsError) as e:
                return _error(400, str(e))
            except Exception as e:  # a handler failure must not take the server down
                return _error(400, f"{method} failed: {type(e).__name__}")

        return endpoint

    methods = ["GET", "POST"]
    v0 = surface(service.v0)
    routes = [
        Route("/v1/{method}", surface(service.v1), methods=methods),
        Route("/v0/{method}", v0, methods=methods),
        Route("/{method}", v0, methods=methods),
    ]
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False  # no mount at "/GetKey/": a 404, never a redirect
    app.state.service = service
    return app
