"""A simulated TDX platform: quotes and collateral in Intel's formats, under a test root.

For development, tests and the demo. :class:`SimulatedTEE` holds a complete,
self-generated DCAP PKI (root CA, PCK platform CA, TCB signing certificate,
PCK leaf with the SGX extension) and the quoting enclave's attestation key,
and mints:

* TDX quotes v4 (TD report 1.0) and v5 (body type 3, TD report 1.5) whose
  layout is byte-for-byte Intel's: 48-byte header, TD report, ECDSA-P256
  signature over header and body, certification data type 6 with the QE
  report, its PCK signature, 32 bytes of QE auth data and the PEM PCK chain;
* collateral in dcap-qvl's ``QuoteCollateralV3`` JSON form (root CRL, PCK CRL,
  TCB Info v3 and QE Identity v2 with their signatures and chains) that is
  valid around a given time and reports the TCB status chosen at construction.

The same dcap-qvl call that verifies real quotes verifies these when given
:attr:`SimulatedTEE.root_ca_der` as the root, and rejects them under Intel's
root; a node accepts them only when configured to (``Verifier(...,
simulated_allowed=True)``). Every certificate names its organisation
``SimTEE Test PKI (NOT Intel)``.

Reproducibility: every key, serial number and identifier is drawn from the
injected ``rng`` at construction, in a fixed order, and every signature is
deterministic ECDSA (RFC 6979, cryptography's ``deterministic_signing``), so
the same ``rng`` seed and the same arguments give byte-identical roots,
quotes and collateral. ``quote`` and ``collateral`` draw nothing further.
Certificates and CRLs are DER-encoded here (:mod:`kms.attest._der`) rather
than by cryptography's builders, which take ``datetime`` objects and random
serial numbers this package does not use.

Quote v5: dcap-qvl 0.7.0 accepts a minted v5 quote with a TD report 1.5
(``TEE_TCB_SVN2`` and ``MRSERVICETD`` appended to the 1.0 fields, body type 3,
648 bytes). The signature covers the header, the 6-byte body descriptor and
the body. ``TEE_TCB_SVN2`` is set equal to ``TEE_TCB_SVN`` (no TD-preserving
module update since launch) and ``MRSERVICETD`` to zeros (no service TD).

What dcap-qvl 0.7.0 checks, and each pitfall of minting for it, is recorded in
``notes/simulated-tee.md`` (cited by DESIGN.md, "Attestation and policy"); the
"notes §n" and "pitfall n" comments below refer to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from kms.attest import _der as der
from kms.attest._time import rfc3339
from mpc.secret import RNG

PLATFORM_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)
"""Platform TCB statuses a :class:`SimulatedTEE` can be minted with (TCB Info v3)."""

ORGANISATION = "SimTEE Test PKI (NOT Intel)"
SIMULATED_FMSPC = bytes.fromhex("53494D544545")  # "SIMTEE"

DAY = 86_400
YEAR = 365 * DAY
CERT_LIFETIME = 7 * YEAR
ROOT_LIFETIME = 8 * YEAR  # longer than everything it signs (dcap-qvl's policy API checks it)
COLLATERAL_LIFETIME = 30 * DAY

# Intel's constants that dcap-qvl checks (notes §2, §3).
QE_VENDOR_ID = bytes.fromhex("939A7233F79C4CA9940A0DB3957F0607")
TEE_TYPE_TDX = 0x81
ATTESTATION_KEY_ECDSA_P256 = 2
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
BODY_TD_REPORT_15 = 3
TD_QE_MRSIGNER = bytes.fromhex("DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5")
TD_QE_ATTRIBUTES = bytes.fromhex("1500000000000000E700000000000000")
TD_QE_ISVPRODID = 2
TD_QE_ISVSVN = 4
QE_AUTH_DATA = bytes(range(32))  # pitfall 1: exactly 32 bytes

# The simulated platform's TCB: what its PCK certificate and TD report claim.
CPUSVN = bytes([2, 2, 2, 2, 3, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0])
PCESVN = 11
PCE_ID = b"\x00\x00"
TEE_TCB_SVN = bytes([6, 1, 3] + [0] * 13)  # module ISVSVN 6, major version 1 -> "TDX_01"
MR_SEAM = hashlib.sha384(b"SimTEE TDX module (NOT Intel)").digest()
TD_ATTRIBUTES = bytes.fromhex("0000001000000000")  # SEPT_VE_DISABLE only (pitfall 10)
XFAM = bytes.fromhex("e702060000000000")

OID_SGX = "1.2.840.113741.1.13.1"
OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_CN = "2.5.4.3"
OID_O = "2.5.4.10"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_KEY_USAGE = "2.5.29.15"
OID_SKI = "2.5.29.14"
OID_AKI = "2.5.29.35"
OID_CRL_NUMBER = "2.5.29.20"

_ZERO48 = bytes(48)


def _scalar(rng: RNG) -> ec.EllipticCurvePrivateKey:
    """A P-256 key from 48 bytes of ``rng`` (bias below 2⁻¹²⁸)."""
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    return ec.derive_private_key(int.from_bytes(rng(48), "big") % (n - 1) + 1, ec.SECP256R1())


def _serial(rng: RNG) -> int:
    """A positive certificate serial number of at most 16 bytes (RFC 5280 §4.1.2.2)."""
    return (int.from_bytes(rng(16), "big") >> 1) | 1


def _sign_der(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))


def _sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """Raw 64-byte ``r‖s``, the form of every signature inside quotes and collateral
    (pitfall 2)."""
    r, s = decode_dss_signature(_sign_der(key, data))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public key as 64 bytes ``x‖y``, without the 0x04 prefix (pitfall 3)."""
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def _name(common_name: str) -> bytes:
    return der.sequence(
        der.set_of(der.sequence(der.oid(OID_CN), der.utf8_string(common_name))),
        der.set_of(der.sequence(der.oid(OID_O), der.utf8_string(ORGANISATION))),
    )


def _extension(oid: str, value: bytes, *, critical: bool = False) -> bytes:
    parts = [der.oid(oid)]
    if critical:
        parts.append(der.boolean(True))
    parts.append(der.octet_string(value))
    return der.sequence(*parts)


def _pem(certificate: bytes) -> str:
    body = base64.b64encode(certificate).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


_ALGORITHM = der.sequence(der.oid(OID_ECDSA_SHA256))


@dataclass(frozen=True, slots=True)
class _Authority:
    """A certificate and its key."""

    key: ec.EllipticCurvePrivateKey
    name: bytes
    key_id: bytes
    serial: int
    certificate: bytes

    @property
    def pem(self) -> str:
        return _pem(self.certificate)


def _key_id(key: ec.EllipticCurvePrivateKey) -> bytes:
    # RFC 5280 §4.2.1.2 allows any method; a truncated SHA-256 of the public key.
    return hashlib.sha256(_point(key)).digest()[:20]


def _certificate(
    *,
    key: ec.EllipticCurvePrivateKey,
    serial: int,
    subject: str,
    issuer: _Authority | None,
    not_before: int,
    not_after: int,
    ca_path_length: int | None,
    extra_extensions: Sequence[bytes] = (),
) -> _Authority:
    """An X.509 v3 certificate in the shape of Intel's (notes §4): critical basic constraints
    and key usage, SKI and AKI, no extended key usage (pitfall 8)."""
    name = _name(subject)
    key_id = _key_id(key)
    signer_key = issuer.key if issuer is not None else key
    issuer_name = issuer.name if issuer is not None else name
    issuer_key_id = issuer.key_id if issuer is not None else key_id
    if ca_path_length is not None:
        constraints = der.sequence(der.boolean(True), der.integer(ca_path_length))
        usage = der.named_bits(5, 6)  # keyCertSign, cRLSign
    else:
        constraints = der.sequence()
        usage = der.named_bits(0, 1)  # digitalSignature, nonRepudiation
    extensions = [
        _extension(OID_BASIC_CONSTRAINTS, constraints, critical=True),
        _extension(OID_KEY_USAGE, usage, critical=True),
        _extension(OID_SKI, der.octet_string(key_id)),
        _extension(OID_AKI, der.sequence(der.implicit_primitive(0, issuer_key_id))),
        *extra_extensions,
    ]
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tbs = der.sequence(
        der.explicit(0, der.integer(2)),
        der.integer(serial),
        _ALGORITHM,
        issuer_name,
        der.sequence(der.x509_time(not_before), der.x509_time(not_after)),
        name,
        spki,
        der.explicit(3, der.sequence(*extensions)),
    )
    certificate = der.sequence(tbs, _ALGORITHM, der.bit_string(_sign_der(signer_key, tbs)))
    return _Authority(key, name, key_id, serial, certificate)


def _crl(
    issuer: _Authority, *, this_update: int, next_update: int, number: int, revoked: Iterable[int]
) -> bytes:
    """A v2 CRL signed with ECDSA-SHA256, with CRLNumber and AKI and no issuing distribution
    point, so that it is authoritative for every certificate of its issuer (pitfalls 6, 7)."""
    entries = [der.sequence(der.integer(s), der.x509_time(this_update)) for s in sorted(revoked)]
    parts = [
        der.integer(1),
        _ALGORITHM,
        issuer.name,
        der.x509_time(this_update),
        der.x509_time(next_update),
    ]
    if entries:
        parts.append(der.sequence(*entries))
    parts.append(
        der.explicit(
            0,
            der.sequence(
                _extension(OID_CRL_NUMBER, der.integer(number)),
                _extension(OID_AKI, der.sequence(der.implicit_primitive(0, issuer.key_id))),
            ),
        )
    )
    tbs = der.sequence(*parts)
    return der.sequence(tbs, _ALGORITHM, der.bit_string(_sign_der(issuer.key, tbs)))


def _sgx_extension(*, ppid: bytes, fmspc: bytes, platform_instance_id: bytes) -> bytes:
    """The Intel SGX PCK extension (OID 1.2.840.113741.1.13.1), notes §4."""

    def entry(suffix: str, value: bytes) -> bytes:
        return der.sequence(der.oid(f"{OID_SGX}.{suffix}"), value)

    tcb = [entry(f"2.{i + 1}", der.integer(svn)) for i, svn in enumerate(CPUSVN)]
    tcb.append(entry("2.17", der.integer(PCESVN)))  # pitfall 14: below 0x8000
    tcb.append(entry("2.18", der.octet_string(CPUSVN)))  # the value dcap-qvl matches on
    configuration = der.sequence(
        entry("7.1", der.boolean(True)),  # dynamic platform
        entry("7.2", der.boolean(True)),  # cached keys
        entry("7.3", der.boolean(True)),  # SMT
    )
    value = der.sequence(
        entry("1", der.octet_string(ppid)),
        entry("2", der.sequence(*tcb)),
        entry("3", der.octet_string(PCE_ID)),
        entry("4", der.octet_string(fmspc)),
        entry("5", der.enumerated(1)),  # SGX type: Scalable
        entry("6", der.octet_string(platform_instance_id)),
        entry("7", configuration),
    )
    return _extension(OID_SGX, value)


def _json(document: object) -> str:
    """Compact JSON, key order as written: the exact bytes that get signed (pitfall 5)."""
    return json.dumps(document, separators=(",", ":"))


def _measurement(name: str, value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != 48:
        raise ValueError(f"{name} must be 48 bytes")
    return bytes(value)


class SimulatedTEE:
    """One simulated TDX platform with its own DCAP PKI; see the module docstring.

    ``rng(n)`` supplies every key, serial number and identifier (drawn here, once).
    ``now`` (unix seconds) anchors the certificates: valid from a day before ``now``
    for seven years, the root for eight. ``tcb_status`` and ``advisory_ids`` are what
    verification of this platform's quotes reports; ``fmspc`` is its 6-byte FMSPC.
    """

    def __init__(
        self,
        rng: RNG,
        *,
        now: int,
        tcb_status: str = "UpToDate",
        advisory_ids: Sequence[str] = (),
        fmspc: bytes = SIMULATED_FMSPC,
        tcb_evaluation_data_number: int = 17,
    ) -> None:
        if tcb_status not in PLATFORM_STATUSES:
            raise ValueError(f"unknown TCB status {tcb_status!r}; one of {PLATFORM_STATUSES}")
        if not isinstance(fmspc, bytes) or len(fmspc) != 6:
            raise ValueError("fmspc must be 6 bytes")
        if isinstance(advisory_ids, str) or not all(isinstance(a, str) for a in advisory_ids):
            raise ValueError("advisory_ids must be a sequence of strings")
        if not isinstance(now, int) or now < 0:
            raise ValueError("now must be non-negative unix seconds")
        self.tcb_status = tcb_status
        self.advisory_ids = tuple(advisory_ids)
        self.fmspc = fmspc
        self.tcb_evaluation_data_number = tcb_evaluation_data_number
        self.epoch = now - DAY
        start, end = self.epoch, now + CERT_LIFETIME

        self._root = _certificate(
            key=_scalar(rng),
            serial=_serial(rng),
            subject="SimTEE Root CA (NOT Intel)",
            issuer=None,
            not_before=start,
            not_after=now + ROOT_LIFETIME,
            ca_path_length=1,
        )
        self._pck_ca = _certificate(
            key=_scalar(rng),
            serial=_serial(rng),
            subject="SimTEE PCK Platform CA (NOT Intel)",  # "Platform": dcap-qvl's ca()
            issuer=self._root,
            not_before=start,
            not_after=end,
            ca_path_length=0,
        )
        self._tcb_signer = _certificate(
            key=_scalar(rng),
            serial=_serial(rng),
            subject="SimTEE TCB Signing (NOT Intel)",
            issuer=self._root,
            not_before=start,
            not_after=end,
            ca_path_length=None,
        )
        pck_key, pck_serial = _scalar(rng), _serial(rng)
        ppid, platform_instance_id, qe_id = rng(16), rng(16), rng(16)
        self._pck = _certificate(
            key=pck_key,
            serial=pck_serial,
            subject="SimTEE PCK Certificate (NOT Intel)",
            issuer=self._pck_ca,
            not_before=start,
            not_after=end,
            ca_path_length=None,
            extra_extensions=[
                _sgx_extension(ppid=ppid, fmspc=fmspc, platform_instance_id=platform_instance_id)
            ],
        )
        self.ppid = ppid
        self.platform_instance_id = platform_instance_id
        self._attestation_key = _scalar(rng)
        self._user_data = qe_id + bytes(4)
        self._certification_data = self._qe_certification_data()

    # --- public --------------------------------------------------------------------------

    @property
    def root_ca_der(self) -> bytes:
        """This platform's root CA certificate, DER: the trust anchor its quotes verify under."""
        return self._root.certificate

    @property
    def pck_chain_pem(self) -> str:
        """The PCK chain embedded in quotes: leaf, PCK platform CA, root."""
        return self._pck.pem + self._pck_ca.pem + self._root.pem

    def collateral(
        self,
        now: int,
        *,
        lifetime: int = COLLATERAL_LIFETIME,
        revoke: Iterable[str] = (),
        evaluation_data_number: int | None = None,
    ) -> dict[str, str]:
        """Collateral in dcap-qvl's ``QuoteCollateralV3`` JSON form, valid from a day before
        ``now`` until ``now + lifetime`` (CRLs stale at that second, TCB Info and QE Identity
        one second later). ``revoke`` lists certificates to put on the CRLs, among
        ``"pck_ca"``, ``"tcb_signing"`` and ``"pck"``. ``evaluation_data_number`` is the
        ``tcbEvaluationDataNumber`` of TCB Info and QE Identity (by default the one this
        TEE was made with)."""
        if evaluation_data_number is None:
            evaluation_data_number = self.tcb_evaluation_data_number
        if isinstance(evaluation_data_number, bool) or not isinstance(evaluation_data_number, int):
            raise ValueError("evaluation_data_number must be an integer")
        revoke = frozenset(revoke)
        unknown = revoke - {"pck_ca", "tcb_signing", "pck"}
        if unknown:
            raise ValueError(f"cannot revoke {sorted(unknown)}")
        issued, next_update = now - DAY, now + lifetime
        if issued < 0 or lifetime <= 0:
            raise ValueError("collateral must be issued after 1970 and have a positive lifetime")
        number = now // DAY
        root_revoked = [
            a.serial
            for name, a in (("pck_ca", self._pck_ca), ("tcb_signing", self._tcb_signer))
            if name in revoke
        ]
        root_crl = _crl(
            self._root,
            this_update=issued,
            next_update=next_update,
            number=number,
            revoked=root_revoked,
        )
        pck_crl = _crl(
            self._pck_ca,
            this_update=issued,
            next_update=next_update,
            number=number,
            revoked=[self._pck.serial] if "pck" in revoke else [],
        )
        tcb_info = _json(self._tcb_info(issued, next_update, evaluation_data_number))
        qe_identity = _json(self._qe_identity(issued, next_update, evaluation_data_number))
        signer_chain = self._tcb_signer.pem + self._root.pem
        return {
            "pck_crl_issuer_chain": self._pck_ca.pem + self._root.pem,
            "root_ca_crl": root_crl.hex(),
            "pck_crl": pck_crl.hex(),
            "tcb_info_issuer_chain": signer_chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": _sign_raw(self._tcb_signer.key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": signer_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": _sign_raw(self._tcb_signer.key, qe_identity.encode()).hex(),
        }

    def quote(
        self,
        report_data: bytes,
        *,
        mr_td: bytes = _ZERO48,
        rtmr0: bytes = _ZERO48,
        rtmr1: bytes = _ZERO48,
        rtmr2: bytes = _ZERO48,
        rtmr3: bytes = _ZERO48,
        mr_config_id: bytes = _ZERO48,
        mr_owner: bytes = _ZERO48,
        mr_owner_config: bytes = _ZERO48,
        td_attributes: bytes = TD_ATTRIBUTES,
        xfam: bytes = XFAM,
        mr_service_td: bytes = _ZERO48,
        version: int = 4,
    ) -> bytes:
        """A signed TDX quote (v4 or v5) of a TD with these measurements.

        ``report_data`` is at most 64 bytes and is padded with zeros to 64.
        ``td_attributes`` (8 bytes, little-endian) is only for testing refusals:
        dcap-qvl requires SEPT_VE_DISABLE and no debug or reserved bits.
        ``xfam`` (8 bytes) and ``mr_service_td`` (48 bytes, quote v5 only) let tests
        exercise policies that pin them.
        """
        if not isinstance(xfam, bytes) or len(xfam) != 8:
            raise ValueError("xfam must be 8 bytes")
        if mr_service_td != _ZERO48 and version != 5:
            raise ValueError("only a v5 quote (TD report 1.5) carries MRSERVICETD")
        if not isinstance(report_data, bytes | bytearray) or len(report_data) > 64:
            raise ValueError("report_data must be at most 64 bytes")
        if not isinstance(td_attributes, bytes) or len(td_attributes) != 8:
            raise ValueError("td_attributes must be 8 bytes")
        if version not in (4, 5):
            raise ValueError("version must be 4 or 5")
        td_report = b"".join(
            [
                TEE_TCB_SVN,
                MR_SEAM,
                _ZERO48,  # MRSIGNERSEAM: zeros, as TCB Info's module mrsigner (pitfall 11)
                bytes(8),  # SEAMATTRIBUTES
                td_attributes,
                xfam,
                _measurement("mr_td", mr_td),
                _measurement("mr_config_id", mr_config_id),
                _measurement("mr_owner", mr_owner),
                _measurement("mr_owner_config", mr_owner_config),
                _measurement("rtmr0", rtmr0),
                _measurement("rtmr1", rtmr1),
                _measurement("rtmr2", rtmr2),
                _measurement("rtmr3", rtmr3),
                bytes(report_data).ljust(64, b"\x00"),
            ]
        )
        header = struct.pack(
            "<HHIHH16s20s",
            version,
            ATTESTATION_KEY_ECDSA_P256,
            TEE_TYPE_TDX,
            0,
            0,
            QE_VENDOR_ID,
            self._user_data,
        )
        if version == 4:
            body = td_report
        else:
            service_td = _measurement("mr_service_td", mr_service_td)
            td_report_15 = td_report + TEE_TCB_SVN + service_td  # TEE_TCB_SVN2, MRSERVICETD
            body = struct.pack("<HI", BODY_TD_REPORT_15, len(td_report_15)) + td_report_15
        signed = header + body  # pitfall 4: the signature covers header and body only
        auth = (
            _sign_raw(self._attestation_key, signed)
            + _point(self._attestation_key)
            + self._certification_data
        )
        return signed + struct.pack("<I", len(auth)) + auth

    def sign_document(self, document: str) -> str:
        """Sign a TCB Info or QE Identity JSON string with this platform's TCB signing key
        (hex ``r‖s``), for collateral that is altered yet correctly signed in tests."""
        return _sign_raw(self._tcb_signer.key, document.encode()).hex()

    # --- internals -----------------------------------------------------------------------

    def _qe_certification_data(self) -> bytes:
        """Certification data type 6: QE report, its PCK signature, QE auth data and the
        PCK chain (type 5). Fixed for the platform, since the attestation key is."""
        binding = hashlib.sha256(_point(self._attestation_key) + QE_AUTH_DATA).digest()
        qe_report = bytearray(384)
        qe_report[0:16] = CPUSVN
        qe_report[48:64] = TD_QE_ATTRIBUTES
        qe_report[64:96] = hashlib.sha256(b"SimTEE TD quoting enclave (NOT Intel)").digest()
        qe_report[128:160] = TD_QE_MRSIGNER
        qe_report[256:260] = struct.pack("<HH", TD_QE_ISVPRODID, TD_QE_ISVSVN)
        qe_report[320:352] = binding
        chain = self.pck_chain_pem.encode()
        inner = (
            bytes(qe_report)
            + _sign_raw(self._pck.key, bytes(qe_report))
            + struct.pack("<H", len(QE_AUTH_DATA))
            + QE_AUTH_DATA
            + struct.pack("<HI", CERT_DATA_PCK_CHAIN, len(chain))
            + chain
        )
        return struct.pack("<HI", CERT_DATA_QE_REPORT, len(inner)) + inner

    def _tcb_info(self, issued: int, next_update: int, number: int) -> dict[str, object]:
        """TCB Info v3 for TDX (notes §4, §5): one level that matches this platform exactly,
        carrying the chosen status, and a lower OutOfDate level that it never falls to."""
        tcb_date = rfc3339(self.epoch - self.epoch % DAY)

        def level(
            cpusvn: bytes, pcesvn: int, tee: bytes, status: str, advisories: Sequence[str]
        ) -> dict[str, object]:
            out: dict[str, object] = {
                "tcb": {
                    "sgxtcbcomponents": [{"svn": v} for v in cpusvn],  # exactly 16 (pitfall 13)
                    "pcesvn": pcesvn,
                    "tdxtcbcomponents": [{"svn": v} for v in tee],
                },
                "tcbDate": tcb_date,
                "tcbStatus": status,
            }
            if advisories:
                out["advisoryIDs"] = list(advisories)
            return out

        return {
            "id": "TDX",
            "version": 3,
            "issueDate": rfc3339(issued),
            "nextUpdate": rfc3339(next_update),
            "fmspc": self.fmspc.hex().upper(),
            "pceId": PCE_ID.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": number,
            "tdxModule": {
                "mrsigner": _ZERO48.hex().upper(),
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
            },
            "tdxModuleIdentities": [
                {
                    "id": f"TDX_{TEE_TCB_SVN[1]:02X}",  # pitfall 12
                    "mrsigner": _ZERO48.hex().upper(),
                    "attributes": "0000000000000000",
                    "attributesMask": "FFFFFFFFFFFFFFFF",
                    "tcbLevels": [
                        {
                            "tcb": {"isvsvn": TEE_TCB_SVN[0]},
                            "tcbDate": tcb_date,
                            "tcbStatus": "UpToDate",
                        }
                    ],
                }
            ],
            "tcbLevels": [
                level(CPUSVN, PCESVN, TEE_TCB_SVN, self.tcb_status, self.advisory_ids),
                level(CPUSVN, PCESVN - 1, TEE_TCB_SVN, "OutOfDate", ()),
            ],
        }

    def _qe_identity(self, issued: int, next_update: int, number: int) -> dict[str, object]:
        """QE Identity v2 for the TD quoting enclave (notes §4)."""
        return {
            "id": "TD_QE",
            "version": 2,
            "issueDate": rfc3339(issued),
            "nextUpdate": rfc3339(next_update),
            "tcbEvaluationDataNumber": number,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": TD_QE_MRSIGNER.hex().upper(),
            "isvprodid": TD_QE_ISVPRODID,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": TD_QE_ISVSVN},
                    "tcbDate": rfc3339(self.epoch - self.epoch % DAY),
                    "tcbStatus": "UpToDate",
                }
            ],
        }
