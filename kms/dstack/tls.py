"""TLS certificates for a dstack app: the guest API's ``GetTlsKey`` (v0) and ``IssueCert`` (v1).

Pure: no clock, no randomness, no I/O. The caller supplies the time, the freshly
generated leaf key and, for RA-TLS, a function that attests 64 bytes of report data.

**The app CA.** dstack's KMS derives an "App CA" key per app from its own P-256 root
CA and signs the App CA certificate with that root. A quorum-kms committee has no
single CA key, so the agent derives the App CA's P-256 key deterministically from the
app root key it already holds::

    for counter in 0, 1, 2, ...:
        k = int(HKDF-SHA256(ikm=app_root, salt=APP_CA_SALT,
                            info=app_id || u32_be(counter), L=32))
        if 1 <= k < n_P256: return k

and self-signs the App CA certificate (O and CN name the app id, BasicConstraints
CA with path length 0, KeyUsage digitalSignature + keyCertSign + cRLSign, the app-id
extension and usage ``app:ca``). The same root gives the same CA key on every
instance of the app, so certificates issued by any instance chain to one CA.

**Tying the App CA to the app key.** A relying party cannot re-derive the CA key from
the app root's public key. Instead the app root signs a claim about the CA, in the
same recoverable secp256k1/keccak256 form as a v0 link 0::

    claim = LP(APP_CA_CLAIM_TAG) || LP(sha256(App CA SubjectPublicKeyInfo DER))
    link  = sign_link(app_root, claim)        # 65 bytes r || s || v

(``LP(x) = u32_be(len(x)) || x``.) The claim is in neither of dstack's claim languages:
a v0 claim ends in ``":" || hex(public key)`` (printable), this one in a length prefix
and 32 raw bytes; a v1 claim starts with ``LP("dstack-guest-v1-key-claim")``. So the
App CA link is never a link 0 of any key, nor the reverse.

Recovering the signer from ``link`` gives the app root public key, which the
quorum-kms app-key certificate (link 1) binds to the app id. The agent serves the
link in ``Info.key_provider_info`` (``app_ca``).

**Leaf certificates.** A fresh P-256 key per call (PKCS#8 PEM), CN = ``subject``,
SANs from ``alt_names`` (IP-looking names become IP SANs), KeyUsage
digitalSignature, EKU serverAuth / clientAuth per the flags, ``not_before`` given
or 1975-01-01 (what dstack's certificate library uses), ``not_after`` given or
``now`` + 3650 days, usage ``app:custom`` and the app id. ``usage_ra_tls`` adds the
attestation extension: a VersionedAttestation (:func:`versioned_attestation`) of a
quote whose report data is ``SHA-512(RATLS_CERT_PREFIX || leaf SPKI DER)``.
``with_app_info`` adds the app-info extension (a MessagePack map, see
:func:`app_info_bytes`). Each custom extension's value is a DER OCTET STRING
wrapping the content bytes, non-critical, as in dstack.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from coincurve import PublicKey
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kms.dstack import keys as dstack_keys

APP_CA_SALT = b"quorum-kms/v1/dstack/app-ca"
"""HKDF salt of the App CA key derived from an app root key."""
APP_CA_CLAIM_TAG = b"quorum-kms/v1/dstack/app-ca-claim"
"""The app root's claim about its App CA: prefix || hex(sha256(CA SPKI DER))."""
RATLS_CERT_PREFIX = b"ratls-cert:"
"""dstack's RA-TLS report data: SHA-512(prefix || leaf SPKI DER)."""

OID_APP_ID = x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.3")
OID_CERT_USAGE = x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.4")
OID_ATTESTATION = x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.8")
OID_APP_INFO = x509.ObjectIdentifier("1.3.6.1.4.1.62397.1.9")

USAGE_CA = b"app:ca"
USAGE_LEAF = b"app:custom"
DEFAULT_VALIDITY = 3650 * 86_400
DEFAULT_NOT_BEFORE = _dt.datetime(1975, 1, 1, tzinfo=_dt.UTC)
CA_NOT_BEFORE = _dt.datetime(2025, 1, 1, tzinfo=_dt.UTC)
CA_NOT_AFTER = _dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=_dt.UTC)
"""RFC 5280 §4.1.2.5: 99991231235959Z means "no well-defined expiration date"."""
MAX_SUBJECT = 64
MAX_ALT_NAMES = 64
MAX_NAME = 253
ATTESTATION_VERSION = 1
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class TlsError(ValueError):
    """A certificate request the agent refuses; ``str()`` is the error text served."""


@dataclass(frozen=True)
class CertRequest:
    """The fields of v0 ``GetTlsKeyArgs`` / v1 ``IssueCertRequest`` (same shape)."""

    subject: str = ""
    alt_names: tuple[str, ...] = ()
    usage_ra_tls: bool = False
    usage_server_auth: bool = False
    usage_client_auth: bool = False
    not_before: int | None = None
    not_after: int | None = None
    with_app_info: bool = False


def _octet_string(content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([0x04, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x04, 0x80 | len(size)]) + size + content


def _extension(oid: x509.ObjectIdentifier, content: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, _octet_string(content))


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ratls_report_data(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 64 bytes of report data binding a quote to a leaf key (dstack's RA-TLS form)."""
    return hashlib.sha512(RATLS_CERT_PREFIX + spki_der(public_key)).digest()


def app_ca_key(root: bytes, app_id: bytes) -> ec.EllipticCurvePrivateKey:
    """The App CA's P-256 key, derived from the app root key (see the module docstring)."""
    if len(root) != 32:
        raise ValueError("app root must be 32 bytes")
    for counter in range(256):
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=APP_CA_SALT,
            info=app_id + counter.to_bytes(4, "big"),
        ).derive(root)
        k = int.from_bytes(okm, "big")
        if 1 <= k < _P256_N:
            return ec.derive_private_key(k, ec.SECP256R1())
    raise ValueError("no App CA scalar in range")  # pragma: no cover - probability 2^-8192


def app_ca_claim(ca_public: ec.EllipticCurvePublicKey) -> bytes:
    """``LP(APP_CA_CLAIM_TAG) ‖ LP(sha256(SPKI DER))``: what the app root signs about its CA."""
    return dstack_keys.lp(APP_CA_CLAIM_TAG) + dstack_keys.lp(
        hashlib.sha256(spki_der(ca_public)).digest()
    )


def _serial(public_key: ec.EllipticCurvePublicKey) -> int:
    # Positive, at most 20 octets (RFC 5280 §4.1.2.2), unique per key.
    return int.from_bytes(hashlib.sha256(spki_der(public_key)).digest()[:16], "big") >> 1 or 1


def _sha256_ecdsa() -> hashes.SHA256:
    return hashes.SHA256()


class AppCA:
    """An app's CA: its derived key, its self-signed certificate and the app root's link."""

    def __init__(self, root: bytes, app_id: bytes) -> None:
        self.app_id = bytes(app_id)
        self._key = app_ca_key(root, self.app_id)
        self.public_key = self._key.public_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"quorum-kms app {app_id.hex()}"),
                x509.NameAttribute(NameOID.COMMON_NAME, "quorum-kms App CA"),
            ]
        )
        self.name = name
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.public_key)
            .serial_number(_serial(self.public_key))
            .not_valid_before(CA_NOT_BEFORE)
            .not_valid_after(CA_NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.public_key), critical=False
            )
            .add_extension(_extension(OID_APP_ID, self.app_id), critical=False)
            .add_extension(_extension(OID_CERT_USAGE, USAGE_CA), critical=False)
        )
        self.certificate = builder.sign(self._key, _sha256_ecdsa())
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        self.claim = app_ca_claim(self.public_key)
        self.link = dstack_keys.sign_link(root, self.claim)

    def __repr__(self) -> str:
        return f"AppCA(app_id={self.app_id.hex()})"

    def sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self._key, _sha256_ecdsa())


def _time(seconds: int, field: str) -> _dt.datetime:
    try:
        when = _dt.datetime.fromtimestamp(seconds, _dt.UTC)
    except (OverflowError, OSError, ValueError) as e:
        raise TlsError(f"{field} is out of range") from e
    if when > CA_NOT_AFTER:
        raise TlsError(f"{field} is out of range")
    return when


def _alt_name(name: str) -> x509.GeneralName:
    if not name or len(name) > MAX_NAME:
        raise TlsError(f"invalid alt name {name[:64]!r}")
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name.isascii() or not name.isprintable():
        raise TlsError(f"invalid alt name {name[:64]!r}: DNS names must be printable ASCII")
    return x509.DNSName(name)


def check_request(request: CertRequest) -> None:
    """Refuse what no certificate can carry, before any work is done."""
    if (
        request.not_before is not None
        and request.not_after is not None
        and request.not_before >= request.not_after
    ):
        raise TlsError("not_before must be earlier than not_after")
    if len(request.subject) > MAX_SUBJECT:
        raise TlsError(f"subject is longer than {MAX_SUBJECT} characters")
    if len(request.alt_names) > MAX_ALT_NAMES:
        raise TlsError(f"more than {MAX_ALT_NAMES} alt names")


def issue_cert(
    ca: AppCA,
    request: CertRequest,
    leaf_key: ec.EllipticCurvePrivateKey,
    *,
    now: int,
    attest: Callable[[bytes], bytes] | None = None,
    app_info: bytes | None = None,
) -> tuple[str, list[str]]:
    """A leaf certificate for ``leaf_key`` signed by ``ca``: (key PEM, [leaf PEM, CA PEM]).

    ``attest(report_data64) -> VersionedAttestation bytes`` is needed when the request
    asks for RA-TLS; ``app_info`` when it asks for the app-info extension.
    """
    check_request(request)
    if not isinstance(leaf_key.curve, ec.SECP256R1):
        raise ValueError("leaf key must be P-256")
    not_before = (
        DEFAULT_NOT_BEFORE
        if request.not_before is None
        else _time(request.not_before, "not_before")
    )
    not_after = _time(
        now + DEFAULT_VALIDITY if request.not_after is None else request.not_after, "not_after"
    )
    if not_before >= not_after:
        raise TlsError("not_before must be earlier than not_after")
    public = leaf_key.public_key()
    attrs = []
    if request.subject:
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, request.subject))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.name)
        .public_key(public)
        .serial_number(_serial(public))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key), critical=False
        )
    )
    if request.alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_alt_name(n) for n in request.alt_names]),
            critical=False,
        )
    usages = []
    if request.usage_server_auth:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if request.usage_client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    builder = builder.add_extension(_extension(OID_APP_ID, ca.app_id), critical=False)
    builder = builder.add_extension(_extension(OID_CERT_USAGE, USAGE_LEAF), critical=False)
    if request.usage_ra_tls:
        if attest is None:
            raise TlsError("RA-TLS certificates need an attestation source")
        builder = builder.add_extension(
            _extension(OID_ATTESTATION, attest(ratls_report_data(public))), critical=False
        )
    if request.with_app_info:
        if app_info is None:
            raise TlsError("app info is not available")
        builder = builder.add_extension(_extension(OID_APP_INFO, app_info), critical=False)
    try:
        leaf = ca.sign(builder)
    except ValueError as e:
        raise TlsError(f"cannot issue the certificate: {e}") from e
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem, [leaf.public_bytes(serialization.Encoding.PEM).decode(), ca.pem]


def extension_content(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    """The bytes inside a custom extension's OCTET STRING, or None if absent."""
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ValueError(f"extension {oid.dotted_string} is not a custom extension")
    raw = value.value
    if len(raw) < 2 or raw[0] != 0x04:
        raise ValueError(f"extension {oid.dotted_string} is not an OCTET STRING")
    if raw[1] < 0x80:
        start, n = 2, raw[1]
    else:
        width = raw[1] & 0x7F
        start, n = 2 + width, int.from_bytes(raw[2 : 2 + width], "big")
    if start + n != len(raw):
        raise ValueError(f"extension {oid.dotted_string} has a bad length")
    return raw[start:]


def verify_tls_chain(
    chain_pems: Sequence[str], app_ca_public: ec.EllipticCurvePublicKey
) -> x509.Certificate:
    """Check ``[leaf, App CA]``: the CA is self-signed by ``app_ca_public``, a CA with path
    length 0 and usage ``app:ca``; the leaf is signed by it, carries the same app id and
    usage ``app:custom``. Returns the leaf; raises ``ValueError`` otherwise."""
    if len(chain_pems) != 2:
        raise ValueError("chain must be [leaf, App CA]")
    leaf = x509.load_pem_x509_certificate(chain_pems[0].encode())
    ca = x509.load_pem_x509_certificate(chain_pems[1].encode())
    if spki_der(app_ca_public) != ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError("App CA certificate is not for the expected key")
    try:
        ca.verify_directly_issued_by(ca)
        leaf.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as e:
        raise ValueError(f"bad signature in chain: {e}") from e
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not bc.ca or bc.path_length != 0:
        raise ValueError("App CA is not a CA with path length 0")
    if extension_content(ca, OID_CERT_USAGE) != USAGE_CA:
        raise ValueError("App CA usage is not app:ca")
    if extension_content(leaf, OID_CERT_USAGE) != USAGE_LEAF:
        raise ValueError("leaf usage is not app:custom")
    app_id = extension_content(ca, OID_APP_ID)
    if app_id is None or extension_content(leaf, OID_APP_ID) != app_id:
        raise ValueError("leaf and App CA name different apps")
    return leaf


def verify_app_ca_link(
    ca_public: ec.EllipticCurvePublicKey, link: bytes, root_public: bytes
) -> bool:
    """True when ``link`` is the app root ``root_public``'s claim about this App CA key."""
    if len(link) != 65 or link[64] > 3:
        return False
    s = int.from_bytes(link[32:64], "big")
    if s > _SECP256K1_N // 2:
        return False
    try:
        recovered = PublicKey.from_signature_and_message(
            link, dstack_keys.keccak256(app_ca_claim(ca_public)), hasher=None
        )
    except (ValueError, TypeError):
        return False
    return recovered.format(compressed=True) == root_public


def _hex_bytes(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"event {field} must be a hex string")
    return bytes.fromhex(value)


def versioned_attestation(
    quote: bytes, event_log: Sequence[dict[str, Any]], report_data: bytes, config: str
) -> bytes:
    """dstack's VersionedAttestation V1 for a TDX quote: the MessagePack map
    ``{version: 1, platform: {kind: "tdx", data: {quote, event_log}}, stack: {kind:
    "dstack", data: {report_data, runtime_events, config}}}`` with named fields, as
    rmp_serde's ``to_vec_named`` writes it: plain byte vectors (``quote``,
    ``report_data``) as arrays of integers, event ``digest`` / ``event_payload`` as
    MessagePack bin, runtime event payloads as base64 strings. ``event_log`` holds
    dstack TdxEvent JSON objects (hex fields), ``report_data`` is 64 bytes."""
    if len(report_data) != 64:
        raise ValueError("report data must be 64 bytes")
    events = []
    runtime = []
    for e in event_log:
        event: dict[str, Any] = {
            "imr": int(e["imr"]),
            "event_type": int(e["event_type"]),
            "digest": _hex_bytes(e.get("digest", ""), "digest"),
            "event": str(e.get("event", "")),
            "event_payload": _hex_bytes(e.get("event_payload", ""), "event_payload"),
        }
        version = e.get("version")
        if version not in (None, 1):
            event["version"] = int(version)
        if e.get("preimage") is not None:
            event["preimage"] = str(e["preimage"])
        events.append(event)
        if event["imr"] == 3:
            item: dict[str, Any] = {
                "event": event["event"],
                "payload": base64.b64encode(event["event_payload"]).decode(),
            }
            if "version" in event:
                item["version"] = event["version"]
            runtime.append(item)
    document = {
        "version": ATTESTATION_VERSION,
        "platform": {"kind": "tdx", "data": {"quote": list(quote), "event_log": events}},
        "stack": {
            "kind": "dstack",
            "data": {"report_data": list(report_data), "runtime_events": runtime, "config": config},
        },
    }
    return bytes(msgpack.packb(document, use_bin_type=True))


def parse_versioned_attestation(data: bytes) -> dict[str, Any]:
    """Decode a V1 VersionedAttestation (the inverse of :func:`versioned_attestation`):
    ``{"quote": bytes, "event_log": [...], "report_data": bytes, "config": str}``."""
    if not data or data[0] == 0x00:
        raise ValueError("not a V1 (MessagePack) attestation")
    doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(doc, dict) or doc.get("version") != ATTESTATION_VERSION:
        raise ValueError("unsupported attestation version")
    platform, stack = doc["platform"], doc["stack"]
    if platform["kind"] != "tdx" or stack["kind"] != "dstack":
        raise ValueError("not a TDX dstack attestation")
    return {
        "quote": bytes(platform["data"]["quote"]),
        "event_log": platform["data"]["event_log"],
        "report_data": bytes(stack["data"]["report_data"]),
        "config": stack["data"]["config"],
    }


def app_info_bytes(info: dict[str, Any]) -> bytes:
    """The app-info extension content: a MessagePack map with named fields (``app_id``,
    ``instance_id``, ``device_id``, ``compose_hash``, ``os_image_hash``,
    ``mr_aggregated`` as bin; ``app_name``, ``key_provider_info`` as str). dstack
    writes its Rust ``AppInfo`` struct in rmp_serde's compact (array) form instead."""
    return bytes(msgpack.packb(info, use_bin_type=True))
