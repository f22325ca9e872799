"""Why a quote was refused: :class:`QuoteVerificationError` carrying a :class:`QuoteFailure`.

dcap-qvl 0.7.0 reports every failure as a ``ValueError`` whose text is an
``anyhow`` chain (``"Verification failed: <context>\\n\\nCaused by:\\n    <cause>"``).
:func:`classify` maps that text to a reason with :data:`MESSAGE_TABLE`: the
first row whose pattern occurs in the message wins, and a message that no row
knows becomes ``UNKNOWN``, which is a refusal like any other (fail closed).
The table is tested row by row against dcap-qvl's exact strings.
"""

from __future__ import annotations

import enum
import re


class QuoteFailure(enum.Enum):
    """The reason a quote was refused, one per step of the verification order.

    The value is the stable reason code printed by ``kms attest verify`` and
    used in logs and metrics.
    """

    MALFORMED_QUOTE = "MALFORMED_QUOTE"
    """The bytes do not decode as a DCAP quote (truncated, bad lengths, unknown body type)."""
    UNSUPPORTED_QUOTE = "UNSUPPORTED_QUOTE"
    """It decodes, but a header field is unsupported: version, attestation key type, QE
    vendor, certification data type."""
    NOT_TDX = "NOT_TDX"
    """A DCAP quote from another TEE (SGX): dcap-qvl would accept it, a KMS must not."""
    MALFORMED_COLLATERAL = "MALFORMED_COLLATERAL"
    """The collateral does not parse: JSON, hex, PEM, DER, dates or a missing field."""
    COLLATERAL_UNAVAILABLE = "COLLATERAL_UNAVAILABLE"
    """The node has no collateral for the quote's platform: its PCCS could not be
    reached (or does not know the FMSPC) and nothing is cached."""
    COLLATERAL_STALE = "COLLATERAL_STALE"
    """The collateral verifies but is older than the node accepts: its TCB evaluation data
    number or issue date is below the node's floor, or it is older than the node's
    maximum collateral age."""
    COLLATERAL_MISMATCH = "COLLATERAL_MISMATCH"
    """Collateral for another platform or TEE: FMSPC differs, SGX TCB Info for a TDX quote,
    a QE Identity that is not ``TD_QE``."""
    UNTRUSTED_ROOT = "UNTRUSTED_ROOT"
    """The collateral is not issued under the trust root: the root CA CRL is not signed by
    it, or a chain ends at another root (``UnknownIssuer``)."""
    CERTIFICATE_CHAIN = "CERTIFICATE_CHAIN"
    """A PCK, TCB-signing or CRL chain does not verify for another reason (bad signature,
    too short, wrong key usage, missing revocation information)."""
    CERTIFICATE_REVOKED = "CERTIFICATE_REVOKED"
    """A certificate in a chain is listed on its CRL."""
    COLLATERAL_EXPIRED = "COLLATERAL_EXPIRED"
    """``now`` is past a CRL or TCB Info / QE Identity ``nextUpdate`` or a certificate's
    ``notAfter``."""
    COLLATERAL_NOT_YET_VALID = "COLLATERAL_NOT_YET_VALID"
    """``now`` is before a TCB Info / QE Identity ``issueDate`` or a certificate's
    ``notBefore``."""
    BAD_COLLATERAL_SIGNATURE = "BAD_COLLATERAL_SIGNATURE"
    """The TCB Info or QE Identity signature does not verify (the document was altered)."""
    BAD_QE_REPORT_SIGNATURE = "BAD_QE_REPORT_SIGNATURE"
    """The PCK key's signature over the quoting enclave's report does not verify."""
    QE_REPORT_BINDING = "QE_REPORT_BINDING"
    """The QE report does not vouch for the attestation key:
    ``SHA-256(attestation key ‖ QE auth data)`` is not its report data."""
    QE_IDENTITY_MISMATCH = "QE_IDENTITY_MISMATCH"
    """The quoting enclave is not the one QE Identity describes (MRSIGNER, ISVPRODID,
    MISCSELECT, ATTRIBUTES, debug mode, no QE TCB level)."""
    BAD_QUOTE_SIGNATURE = "BAD_QUOTE_SIGNATURE"
    """The attestation key's signature over the header and TD report does not verify
    (a measurement, the report data or the header was altered)."""
    TCB_LEVEL_NOT_FOUND = "TCB_LEVEL_NOT_FOUND"
    """The platform's TCB (CPUSVN, PCESVN, TEE_TCB_SVN) is below every level in TCB Info."""
    TDX_MODULE_MISMATCH = "TDX_MODULE_MISMATCH"
    """The TDX module is not one TCB Info describes (no ``TDX_xx`` identity, MRSIGNERSEAM,
    SEAMATTRIBUTES, module ISVSVN below every level)."""
    TCB_REVOKED = "TCB_REVOKED"
    """The matched TCB level (platform, module or QE) is ``Revoked``."""
    TD_ATTRIBUTES = "TD_ATTRIBUTES"
    """The TD runs in a mode that voids its measurements: debug, profiling, migratable,
    SEPT_VE_DISABLE clear, reserved bits set."""
    TCB_STATUS_NOT_ALLOWED = "TCB_STATUS_NOT_ALLOWED"
    """The quote verified, but its TCB status is not one the caller admits
    (``OutOfDate``, ``ConfigurationNeeded``, ...)."""
    MEASUREMENT_MISMATCH = "MEASUREMENT_MISMATCH"
    """The TD's measurements are not allowed by the app policy. Not raised by
    :mod:`kms.attest`, which checks the platform; reserved for the policy check."""
    UNKNOWN = "UNKNOWN"
    """dcap-qvl refused the quote with a message :data:`MESSAGE_TABLE` does not know."""


class QuoteVerificationError(Exception):
    """A quote was refused. ``reason`` says at which step; ``message`` is the detail
    (dcap-qvl's own message, on one line, where dcap-qvl refused it). For
    ``TCB_STATUS_NOT_ALLOWED``, ``tcb_status`` and ``advisory_ids`` are what the
    quote verified to; otherwise ``None`` and empty."""

    def __init__(
        self,
        reason: QuoteFailure,
        message: str = "",
        *,
        tcb_status: str | None = None,
        advisory_ids: tuple[str, ...] = (),
    ) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message
        self.tcb_status = tcb_status
        self.advisory_ids = advisory_ids

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}" if self.message else self.reason.value

    def __repr__(self) -> str:
        return f"QuoteVerificationError({self.reason}, {self.message!r})"


_F = QuoteFailure

MESSAGE_TABLE: tuple[tuple[str, QuoteFailure], ...] = (
    # Time first: an expired CRL surfaces inside a chain error.
    ("CrlExpired", _F.COLLATERAL_EXPIRED),
    ("CertExpired", _F.COLLATERAL_EXPIRED),
    ("TCBInfo expired", _F.COLLATERAL_EXPIRED),
    ("QE Identity expired", _F.COLLATERAL_EXPIRED),
    ("CertNotValidYet", _F.COLLATERAL_NOT_YET_VALID),
    ("issue date is in the future", _F.COLLATERAL_NOT_YET_VALID),
    # Trust root and revocation.
    ("CertRevoked", _F.CERTIFICATE_REVOKED),
    ("Failed to load root ca", _F.UNTRUSTED_ROOT),
    ("Failed to parse root CA certificate", _F.UNTRUSTED_ROOT),
    ("Failed to parse root CA CRL: InvalidCrlSignatureForPublicKey", _F.UNTRUSTED_ROOT),
    ("Failed to parse root CA CRL", _F.MALFORMED_COLLATERAL),
    ("Failed to parse PCK CRL", _F.MALFORMED_COLLATERAL),
    ("UnknownIssuer", _F.UNTRUSTED_ROOT),
    # Certificates inside the quote, then those of the collateral.
    ("Failed to extract PCK certificates", _F.CERTIFICATE_CHAIN),
    ("Failed to parse PCK certificate", _F.CERTIFICATE_CHAIN),
    ("Failed to parse certs", _F.MALFORMED_COLLATERAL),
    ("Failed to parse TCB Info leaf certificate", _F.MALFORMED_COLLATERAL),
    ("Failed to parse QE Identity leaf certificate", _F.MALFORMED_COLLATERAL),
    # Quote decoding and header.
    ("Unsupported quote version", _F.UNSUPPORTED_QUOTE),
    ("Unsupported DCAP quote version", _F.UNSUPPORTED_QUOTE),
    ("TDX TEE quote must have version 4 or 5", _F.UNSUPPORTED_QUOTE),
    ("SGX TEE quote must have version 3", _F.NOT_TDX),
    ("Unsupported body type", _F.UNSUPPORTED_QUOTE),
    ("Invalid TEE type", _F.UNSUPPORTED_QUOTE),
    ("Unsupported TEE type", _F.NOT_TDX),
    ("Unsupported DCAP attestation key type", _F.UNSUPPORTED_QUOTE),
    ("Unknown QE vendor ID", _F.UNSUPPORTED_QUOTE),
    ("Unsupported certification data type", _F.UNSUPPORTED_QUOTE),
    ("Unsupported DCAP PCK cert format", _F.UNSUPPORTED_QUOTE),
    ("Unsupported cert type", _F.UNSUPPORTED_QUOTE),
    ("Invalid QE auth data length", _F.QE_REPORT_BINDING),
    ("Failed to decode quote", _F.MALFORMED_QUOTE),
    ("Failed to parse quote", _F.MALFORMED_QUOTE),
    ("Could not decode", _F.MALFORMED_QUOTE),
    ("Invalid body size", _F.MALFORMED_QUOTE),
    ("Data length exceeds maximum", _F.MALFORMED_QUOTE),
    ("Not enough data to fill buffer", _F.MALFORMED_QUOTE),
    ("Failed to decode QE report", _F.MALFORMED_QUOTE),
    ("Failed to get TD10 report", _F.MALFORMED_QUOTE),
    ("Failed to get signed quote scope", _F.MALFORMED_QUOTE),
    # Collateral documents.
    ("Signature is invalid for tcb_info", _F.BAD_COLLATERAL_SIGNATURE),
    ("Signature is invalid for qe_identity", _F.BAD_COLLATERAL_SIGNATURE),
    ("TDX quote with non-TDX TCB info", _F.COLLATERAL_MISMATCH),
    ("SGX quote with non-SGX TCB info", _F.COLLATERAL_MISMATCH),
    ("Unsupported QE Identity id/version", _F.COLLATERAL_MISMATCH),
    ("Fmspc mismatch", _F.COLLATERAL_MISMATCH),
    ("Failed to parse JSON", _F.MALFORMED_COLLATERAL),
    ("Failed to decode TcbInfo", _F.MALFORMED_COLLATERAL),
    ("Failed to decode QeIdentity", _F.MALFORMED_COLLATERAL),
    ("should be valid JSON", _F.MALFORMED_COLLATERAL),
    ("Failed to parse TCB Info", _F.MALFORMED_COLLATERAL),
    ("Failed to parse QE Identity", _F.MALFORMED_COLLATERAL),
    ("Failed to parse RFC3339", _F.MALFORMED_COLLATERAL),
    ("RFC3339 datetime is before Unix epoch", _F.MALFORMED_COLLATERAL),
    ("Failed to decode TCB FMSPC", _F.MALFORMED_COLLATERAL),
    ("TDX TCB Info is missing tdxModule", _F.MALFORMED_COLLATERAL),
    ("Invalid TCB level tcbDate", _F.MALFORMED_COLLATERAL),
    ("Invalid TDX module tcbDate", _F.MALFORMED_COLLATERAL),
    ("Failed to parse QE TCB date", _F.MALFORMED_COLLATERAL),
    ("component count mismatch", _F.MALFORMED_COLLATERAL),
    ("Unknown TCB status", _F.MALFORMED_COLLATERAL),
    ("Unrecognized TCB status", _F.MALFORMED_COLLATERAL),
    # Certificate chains.
    ("Certificate chain is too short", _F.CERTIFICATE_CHAIN),
    ("Failed to verify certificate chain", _F.CERTIFICATE_CHAIN),
    ("Failed to extract", _F.CERTIFICATE_CHAIN),
    ("Failed to decode certificate", _F.CERTIFICATE_CHAIN),
    ("Empty PCK certificate chain", _F.CERTIFICATE_CHAIN),
    ("Empty certificate chain", _F.CERTIFICATE_CHAIN),
    ("No certificates found", _F.CERTIFICATE_CHAIN),
    ("Intel extension", _F.CERTIFICATE_CHAIN),
    ("Failed to parse PCK extension", _F.CERTIFICATE_CHAIN),
    ("Failed to find Fmspc", _F.CERTIFICATE_CHAIN),
    ("Fmspc length mismatch", _F.CERTIFICATE_CHAIN),
    ("PceSvn", _F.CERTIFICATE_CHAIN),
    ("CpuSvn", _F.CERTIFICATE_CHAIN),
    # QE report.
    ("Signature is invalid for qe_report", _F.BAD_QE_REPORT_SIGNATURE),
    ("QE report hash mismatch", _F.QE_REPORT_BINDING),
    ("QE report validation failed", _F.QE_IDENTITY_MISMATCH),
    ("QE MRSIGNER mismatch", _F.QE_IDENTITY_MISMATCH),
    ("QE ISVPRODID mismatch", _F.QE_IDENTITY_MISMATCH),
    ("QE MISCSELECT mismatch", _F.QE_IDENTITY_MISMATCH),
    ("QE ATTRIBUTES mismatch", _F.QE_IDENTITY_MISMATCH),
    ("No TCB levels found in QE Identity", _F.QE_IDENTITY_MISMATCH),
    ("from QE Identity", _F.QE_IDENTITY_MISMATCH),
    # Quote signature.
    ("ISV enclave report signature is invalid", _F.BAD_QUOTE_SIGNATURE),
    # TCB evaluation.
    ("TCB status is invalid: Revoked", _F.TCB_REVOKED),
    ("No matching TCB level found", _F.TCB_LEVEL_NOT_FOUND),
    ("Failed to evaluate the current TDX TCB", _F.TCB_LEVEL_NOT_FOUND),
    ("TDX module", _F.TDX_MODULE_MISMATCH),
    # TD attributes (checked last by dcap-qvl).
    ("Debug mode is enabled", _F.TD_ATTRIBUTES),
    ("TD profiling is enabled", _F.TD_ATTRIBUTES),
    ("SERVTD_EXT is enabled", _F.TD_ATTRIBUTES),
    ("SEPT_VE_DISABLE is not enabled", _F.TD_ATTRIBUTES),
    ("TD migration is enabled", _F.TD_ATTRIBUTES),
    ("Reserved bits in TD attributes are set", _F.TD_ATTRIBUTES),
    ("Invalid MR service TD", _F.TD_ATTRIBUTES),
)
"""``(substring, reason)`` rows; :func:`classify` returns the first row whose substring
occurs in dcap-qvl's one-line message. Order matters: time and trust-root rows come
first because dcap-qvl reports them wrapped in generic chain errors."""

_PREFIX = "Verification failed: "
_CAUSE = re.compile(r"\s*\n\s*\n\s*Caused by:\s*\n\s*(?:0:\s*)?")
_SPACE = re.compile(r"\s*\n\s*")


def one_line(message: str) -> str:
    """dcap-qvl's message on one line: the ``Verification failed:`` prefix dropped and the
    ``Caused by:`` chain joined with ``": "``."""
    text = message.strip()
    if text.startswith(_PREFIX):
        text = text[len(_PREFIX) :]
    text = _CAUSE.sub(": ", text)
    text = re.sub(r"\s*\n\s*\d+:\s*", ": ", text)
    return _SPACE.sub(" ", text).strip()


def classify(message: str) -> QuoteVerificationError:
    """The :class:`QuoteVerificationError` for one of dcap-qvl's error messages."""
    line = one_line(message)
    for needle, reason in MESSAGE_TABLE:
        if needle in line:
            return QuoteVerificationError(reason, line)
    return QuoteVerificationError(QuoteFailure.UNKNOWN, line)
