"""Intel DCAP verification of TDX quotes with dcap-qvl 0.7.0 (see the package docstring)."""

from __future__ import annotations

import functools
import itertools
import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kms.attest.collateral import Collateral, CollateralFloor
from kms.attest.errors import QuoteFailure, QuoteVerificationError, classify, one_line
from kms.attest.roots import INTEL_ROOT_CA

TEE_TYPE_TDX = 0x81
TDX_QUOTE_VERSIONS = frozenset({4, 5})

ADMISSIBLE_STATUSES = frozenset(
    {
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "TDRelaunchAdvised",
        "TDRelaunchAdvisedConfigurationNeeded",
    }
)
"""Every TCB status dcap-qvl 0.7.0 can report for an accepted quote (``Revoked`` is
always refused, so it cannot be admitted)."""

DEFAULT_ALLOWED_STATUSES = frozenset({"UpToDate", "SWHardeningNeeded"})
"""Admitted unless the caller says otherwise: the platform is patched; SWHardeningNeeded
means the remaining mitigations are the TD software's business."""

_TD_REPORTS = (dcap_qvl.TdReport10, dcap_qvl.TdReport15, dcap_qvl.TdReport15Ex)

CHAIN_CACHE_SIZE = 256
"""PCK chains whose parse and signature checks are remembered (:func:`check_pck_chain`):
one per platform seen lately. A platform's PCK chain is the same in every quote it makes."""
COLLATERAL_CACHE_SIZE = 32
"""Collateral converted to dcap-qvl's object, remembered (one per platform and CA)."""
VERDICT_CACHE_SIZE = 1024
"""dcap-qvl verdicts remembered for reuse by later quotes of the same platform, quoting
enclave and TDX module (:func:`verify_quote`): one per platform and TD configuration."""
VERDICT_REUSE_SECONDS = 3600
"""How long a remembered verdict is reused at most (it also ends when any part of the
collateral or of a certificate chain it was reached with expires): dcap-qvl verifies the
next quote of its kind in full at least this often."""

_TD_REPORT_10_LEN = 584
_TD_REPORT_15_LEN = 648
_MEASURED = slice(136, 584)
"""Within a TD report: MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0-3 and REPORTDATA,
the fields a TD chooses and no DCAP check reads (the caller's policy judges them)."""


def _repr(obj: object, names: Iterable[str]) -> str:
    parts = []
    for name in names:
        value = getattr(obj, name)
        parts.append(f"{name}={value.hex() if isinstance(value, bytes) else value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True, repr=False)
class TDFields:
    """The TD report of a TDX quote, as raw bytes (48-byte measurements, 64-byte report
    data), plus the header's version and the PCK certificate's FMSPC."""

    version: int
    fmspc: str | None
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    """TD report 1.5 (quote v5) only."""
    mr_service_td: bytes | None = None
    """TD report 1.5 (quote v5) only."""

    def __repr__(self) -> str:
        return _repr(self, self.__dataclass_fields__)

    def to_json_dict(self) -> dict[str, Any]:
        """Bytes as lowercase hex."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = value.hex() if isinstance(value, bytes) else value
        return out


@dataclass(frozen=True, slots=True, repr=False)
class VerifiedQuote:
    """A TDX quote that verified, with what it attests.

    ``simulated`` is true when the root it verified under is not Intel's: a node must
    say so in its status, metrics and logs.
    """

    tcb_status: str
    advisory_ids: tuple[str, ...]
    mr_td: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    version: int
    fmspc: str
    simulated: bool
    fields: TDFields
    """The whole TD report (MRCONFIGID, MROWNER, TD attributes, ...)."""
    tcb_evaluation_data_number: int = 0
    """The collateral's ``tcbEvaluationDataNumber`` (the lower of TCB Info's and QE
    Identity's): the TCB recovery the verdict accounts for."""
    platform_instance_id: bytes | None = None
    """The PCK certificate's platform instance id (SGX extension, 16 bytes), if any."""

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    def __repr__(self) -> str:
        return _repr(self, [n for n in self.__dataclass_fields__ if n != "fields"])


_UNREAD = "unread"


def _td_fields(parsed: Any, known_fmspc: str = _UNREAD) -> TDFields | None:
    """The TD fields of a parsed quote, or ``None`` if it is not a TDX quote.
    ``known_fmspc``: the FMSPC its PCK chain was already read to give."""
    header = parsed.header
    report = parsed.report
    if header.tee_type != TEE_TYPE_TDX or not isinstance(report, _TD_REPORTS):
        return None
    fmspc: str | None = None if known_fmspc is _UNREAD else known_fmspc
    if known_fmspc is _UNREAD:
        try:
            fmspc = parsed.fmspc().upper()
        except Exception:  # dcap-qvl raises ValueError when the PCK chain is unreadable
            fmspc = None
    v15 = isinstance(report, dcap_qvl.TdReport15 | dcap_qvl.TdReport15Ex)
    return TDFields(
        version=header.version,
        fmspc=fmspc,
        tee_tcb_svn=bytes(report.tee_tcb_svn),
        mr_seam=bytes(report.mr_seam),
        mr_signer_seam=bytes(report.mr_signer_seam),
        seam_attributes=bytes(report.seam_attributes),
        td_attributes=bytes(report.td_attributes),
        xfam=bytes(report.xfam),
        mr_td=bytes(report.mr_td),
        mr_config_id=bytes(report.mr_config_id),
        mr_owner=bytes(report.mr_owner),
        mr_owner_config=bytes(report.mr_owner_config),
        rtmr0=bytes(report.rt_mr0),
        rtmr1=bytes(report.rt_mr1),
        rtmr2=bytes(report.rt_mr2),
        rtmr3=bytes(report.rt_mr3),
        report_data=bytes(report.report_data),
        tee_tcb_svn2=bytes(report.tee_tcb_svn2) if v15 else None,
        mr_service_td=bytes(report.mr_service_td) if v15 else None,
    )


def _parse(quote: bytes) -> Any:
    """dcap-qvl's parsed quote; :class:`QuoteVerificationError` if it does not decode."""
    try:
        return dcap_qvl.parse_quote(quote)
    except Exception as exc:
        raise _refusal(exc) from None
    except BaseException as exc:
        raise _panic(exc) from None


def _refusal(exc: Exception) -> QuoteVerificationError:
    error = classify(str(exc))
    if not error.message:
        error.message = type(exc).__name__
    return error


def _panic(exc: BaseException) -> QuoteVerificationError:
    # A Rust panic inside dcap-qvl reaches Python as pyo3's PanicException, which
    # derives from BaseException; it is a refusal, anything else propagates.
    if type(exc).__name__ != "PanicException":
        raise exc
    return QuoteVerificationError(QuoteFailure.UNKNOWN, f"dcap-qvl panicked: {one_line(str(exc))}")


def parse_td_fields(quote: bytes) -> TDFields | None:
    """The TD fields of a quote without verifying it, for reporting why a quote was
    refused; ``None`` if the bytes are not a decodable TDX quote. Nothing here is
    trustworthy until :func:`verify_quote` accepts the same bytes."""
    try:
        parsed = _parse(bytes(quote))
    except (QuoteVerificationError, TypeError):
        return None
    return _td_fields(parsed)


@dataclass(frozen=True, slots=True, repr=False)
class ParsedQuote:
    """A TDX quote that decodes, parsed once: its bytes, TD fields and platform.

    Nothing in it is trustworthy until :func:`verify_quote` accepts it; it only says
    what a verification would need (which collateral) and lets cheap checks run first.
    """

    raw: bytes
    fields: TDFields
    fmspc: str
    """The PCK certificate's FMSPC, 12 upper-case hex digits."""
    ca: str
    """The PCK certificate's issuer: ``"platform"`` or ``"processor"``."""
    pck_chain: tuple[x509.Certificate, ...]
    """The PCK chain embedded in the quote, leaf first."""
    platform_instance_id: bytes | None = None
    """The PCK certificate's platform instance id (SGX extension), if any."""

    @property
    def platform(self) -> tuple[str, str]:
        """``(FMSPC, CA)``: which collateral verifies this quote."""
        return self.fmspc, self.ca

    def __repr__(self) -> str:
        return f"ParsedQuote(fmspc={self.fmspc}, ca={self.ca}, version={self.fields.version})"


def parse_tdx_quote(quote: bytes) -> ParsedQuote:
    """Parse a TDX quote (v4 or v5) with an embedded PCK chain, verifying nothing.

    Raises :class:`QuoteVerificationError`: ``MALFORMED_QUOTE``, ``NOT_TDX``,
    ``UNSUPPORTED_QUOTE`` or ``CERTIFICATE_CHAIN`` (no readable PCK chain or FMSPC).
    """
    if not isinstance(quote, bytes | bytearray | memoryview):
        raise TypeError(f"quote must be bytes, not {type(quote).__name__}")
    raw = bytes(quote)
    parsed = _parse(raw)
    # What the PCK chain says of its platform is read once per exact chain bytes (its
    # leaf's FMSPC, CA and platform instance id, and the parsed certificates).
    try:
        pem_key = bytes(parsed.cert_chain_pem_bytes() or b"")
    except Exception:  # an unreadable chain: read (and refused) below as before
        pem_key = b""
    except BaseException as exc:
        raise _panic(exc) from None
    known = _PLATFORMS.get((pem_key,)) if pem_key else None
    fields = _td_fields(parsed) if known is None else _td_fields(parsed, known[0])
    if fields is None:
        tee_type = parsed.header.tee_type
        kind = "SGX" if tee_type == 0 else f"TEE type {tee_type:#x}"
        raise QuoteVerificationError(QuoteFailure.NOT_TDX, f"not a TDX quote ({kind})")
    if fields.version not in TDX_QUOTE_VERSIONS:
        raise QuoteVerificationError(
            QuoteFailure.UNSUPPORTED_QUOTE, f"TDX quote version {fields.version}"
        )
    if known is not None:
        _, ca, chain, instance_id = known
        return ParsedQuote(raw, fields, known[0], ca, chain, instance_id)
    try:
        ca = str(parsed.ca())
        pem = parsed.cert_chain_pem_bytes()
        chain = _load_chain(bytes(pem).rstrip(b"\0")) if pem else ()
    except Exception as exc:  # dcap-qvl raises ValueError, cryptography ValueError
        raise QuoteVerificationError(
            QuoteFailure.CERTIFICATE_CHAIN, f"unreadable PCK chain: {one_line(str(exc))}"
        ) from None
    except BaseException as exc:
        raise _panic(exc) from None
    if fields.fmspc is None or len(chain) < 2 or ca not in ("platform", "processor"):
        raise QuoteVerificationError(
            QuoteFailure.CERTIFICATE_CHAIN, "the quote carries no usable PCK chain"
        )
    instance_id = _platform_instance_id(parsed)
    if pem_key:
        _PLATFORMS.put((pem_key,), (fields.fmspc, ca, chain, instance_id))
    return ParsedQuote(raw, fields, fields.fmspc, ca, chain, instance_id)


@functools.lru_cache(maxsize=CHAIN_CACHE_SIZE)
def _load_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM chain, parsed once per exact bytes (they are immutable)."""
    return tuple(x509.load_pem_x509_certificates(pem))


def _issued_by(cert: x509.Certificate, root: bytes) -> bool:
    try:
        cert.verify_directly_issued_by(x509.load_der_x509_certificate(root))
    except Exception:  # another issuer name, a bad signature, another algorithm
        return False
    return True


@dataclass(frozen=True, slots=True)
class _VerifiedChain:
    """What a PCK chain's signatures established, whatever the time: the pinned root it
    ends at, and the window in which every one of its certificates is valid."""

    root: bytes
    valid_from: float
    valid_until: float


class _Lru:
    """A bounded LRU. As :data:`_CHAINS`, of PCK chains whose signatures verified to a
    pinned root, keyed by the chain's certificates (compared by their exact DER bytes) and the tuple of
    roots tried: a hit is only ever the same chain under the same roots, whose signatures
    verify the same way every time. Validity at ``now`` is checked on every use; a chain
    that failed is never kept."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()  # verification may run in worker threads

    def get(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            hit = self._entries.pop(key, None)
            if hit is not None:
                self._entries[key] = hit  # most recently used last
            return hit

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = value
            while len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


_CHAINS = _Lru(CHAIN_CACHE_SIZE)
"""Verified PCK chains (:func:`check_pck_chain`)."""
_PLATFORMS = _Lru(CHAIN_CACHE_SIZE)
"""What an exact PCK chain (PEM bytes) says of its platform (:func:`parse_tdx_quote`):
``(fmspc, ca, certificates, platform instance id)``; only chains that parsed whole."""


def _not_valid() -> QuoteVerificationError:
    return QuoteVerificationError(
        QuoteFailure.CERTIFICATE_CHAIN, "a PCK chain certificate is not valid now"
    )


def check_pck_chain(parsed: ParsedQuote, roots: Sequence[bytes], *, now: int) -> bytes:
    """The root (DER, one of ``roots``) that the quote's PCK chain verifies to at ``now``.

    Checks each certificate's signature by the next one and the last non-self-signed
    one's by a pinned root (the quote's own copy of the root is ignored), and that every
    certificate is valid at ``now``. Revocation needs the collateral's CRLs and is left to
    :func:`verify_quote`. Raises :class:`QuoteVerificationError`: ``UNTRUSTED_ROOT``
    when the chain ends at no pinned root, ``CERTIFICATE_CHAIN`` otherwise.

    A chain whose signatures verified is remembered (bounded, keyed by its exact
    certificates and ``roots``), so the same platform's next quote skips the signature
    checks; the validity period is checked against ``now`` every time.
    """
    key = (parsed.pck_chain, tuple(roots))
    known: _VerifiedChain | None = _CHAINS.get(key)
    if known is not None:
        if not known.valid_from <= now <= known.valid_until:
            raise _not_valid()
        return known.root
    chain = list(parsed.pck_chain)
    try:
        # Names are parsed lazily: a malformed one raises here, inside the try.
        while len(chain) > 1 and chain[-1].subject == chain[-1].issuer:
            chain.pop()  # the quote's copy of its root: replaced by the pinned one
        for cert, issuer in itertools.pairwise(chain):
            cert.verify_directly_issued_by(issuer)
        valid_from = max(cert.not_valid_before_utc.timestamp() for cert in chain)
        valid_until = min(cert.not_valid_after_utc.timestamp() for cert in chain)
    except Exception as exc:  # bad signature, wrong issuer, an unsupported algorithm, ...
        raise QuoteVerificationError(
            QuoteFailure.CERTIFICATE_CHAIN,
            f"the PCK chain does not verify: {type(exc).__name__}",
        ) from None
    if not valid_from <= now <= valid_until:
        raise _not_valid()
    for root in roots:
        if _issued_by(chain[-1], root):
            _CHAINS.put(key, _VerifiedChain(root, valid_from, valid_until))
            return root
    raise QuoteVerificationError(
        QuoteFailure.UNTRUSTED_ROOT, "the PCK chain does not end at a pinned root"
    )


@dataclass(frozen=True, slots=True)
class _QuoteLayout:
    """Where a quote's bytes are, as dcap-qvl 0.7.0 decodes them: the signed part (header,
    v5 body descriptor, TD report), then a 4-byte length and the authentication data, which
    starts with the quote signature (64 bytes, ``r‖s``) and the attestation key (64)."""

    signed: int
    parts: tuple[bytes, bytes, bytes]
    """Every byte of the quote except the quote signature and the TD report's
    :data:`_MEASURED` fields: everything the verdict of dcap-qvl depends on in the quote."""


def _layout(raw: bytes, fields: TDFields) -> _QuoteLayout | None:
    """The layout of ``raw``, or ``None`` unless the fields it was parsed into sit exactly
    where this layout puts them (then the verdict is not reused: dcap-qvl verifies)."""
    start = 48 if fields.version == 4 else 54  # quote v5: a 6-byte body descriptor first
    size = _TD_REPORT_15_LEN if fields.tee_tcb_svn2 is not None else _TD_REPORT_10_LEN
    signed = start + size
    if len(raw) < signed + 4:
        return None
    auth = int.from_bytes(raw[signed : signed + 4], "little")
    if auth < 128 or len(raw) < signed + 4 + auth:
        return None
    report = raw[start:signed]
    where = [
        (0, fields.tee_tcb_svn),
        (16, fields.mr_seam),
        (64, fields.mr_signer_seam),
        (112, fields.seam_attributes),
        (120, fields.td_attributes),
        (128, fields.xfam),
        (136, fields.mr_td),
        (184, fields.mr_config_id),
        (232, fields.mr_owner),
        (280, fields.mr_owner_config),
        (328, fields.rtmr0),
        (376, fields.rtmr1),
        (424, fields.rtmr2),
        (472, fields.rtmr3),
        (520, fields.report_data),
    ]
    if fields.tee_tcb_svn2 is not None:
        where += [(584, fields.tee_tcb_svn2), (600, fields.mr_service_td or b"")]
    if any(report[at : at + len(value)] != value or not value for at, value in where):
        return None
    measured_from, measured_to = start + _MEASURED.start, start + _MEASURED.stop
    parts = (raw[:measured_from], raw[measured_to : signed + 4], raw[signed + 68 :])
    return _QuoteLayout(signed, parts)


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What dcap-qvl concluded of a quote at ``verified_at``: reused, until ``valid_until``
    (inclusive), for a quote equal to it in every byte of :attr:`_QuoteLayout.parts`, whose
    own signature verifies under ``attestation_key``."""

    status: str
    advisory_ids: tuple[str, ...]
    verified_at: int
    valid_until: int
    attestation_key: ec.EllipticCurvePublicKey


_VERDICTS = _Lru(VERDICT_CACHE_SIZE)
"""dcap-qvl verdicts (:func:`verify_quote`), keyed by the trust root, the collateral and the
quote's :attr:`_QuoteLayout.parts`."""


def _signature_verifies(verdict: _Verdict, raw: bytes, layout: _QuoteLayout) -> bool:
    """Whether the quote's signature over its signed part verifies under the attestation key
    the remembered verdict's quote carried (the same bytes in this quote: they are in the key)."""
    sig = raw[layout.signed + 4 : layout.signed + 68]
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    try:
        verdict.attestation_key.verify(
            encode_dss_signature(r, s), raw[: layout.signed], ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _chain_as_dcap_qvl_reads(pem: bytes) -> tuple[x509.Certificate, ...] | None:
    """The certificates of a PEM chain, or ``None`` unless ``cryptography`` reads every block
    dcap-qvl reads: dcap-qvl takes every PEM block whatever its label (the first as the leaf
    or signer), ``cryptography`` only ``CERTIFICATE`` blocks."""
    blocks = pem.count(b"-----BEGIN")
    if not blocks or blocks != pem.count(b"-----BEGIN CERTIFICATE-----\n"):
        return None
    try:
        chain = _load_chain(pem)
    except ValueError:
        return None
    return chain if len(chain) == blocks else None


def _remember(
    key: tuple[Any, ...],
    raw: bytes,
    layout: _QuoteLayout,
    coll: Collateral,
    status: str,
    advisories: tuple[str, ...],
    now: int,
) -> None:
    """Remember dcap-qvl's verdict on ``raw`` for reuse (:func:`verify_quote`), valid until a
    second before the first expiry among the collateral (TCB Info, QE Identity, both CRLs), its
    issuer chains and the quote's PCK chain (the margin covers a leap second, which dcap-qvl
    reads one second earlier than :func:`kms.attest._time.parse_rfc3339`), and at most
    :data:`VERDICT_REUSE_SECONDS`. The chains are read from the quote's bytes and the
    collateral's text as dcap-qvl reads them. Not remembered: anything unreadable; a verdict
    reached with the collateral's own PCK chain (dcap-qvl then ignores the quote's); a chain
    with a PEM block that is not a certificate (see :func:`_chain_as_dcap_qvl_reads`: the
    expiry would be read from another chain than the one dcap-qvl judged)."""
    if coll.pck_certificate_chain is not None:
        return
    certs: list[x509.Certificate] = []
    for pem in (
        _embedded_pem(raw),
        coll.tcb_info_issuer_chain.encode(),
        coll.qe_identity_issuer_chain.encode(),
    ):
        chain = _chain_as_dcap_qvl_reads(pem)
        if chain is None:
            return
        certs.extend(chain)
    try:
        expiry = min(int(cert.not_valid_after_utc.timestamp()) for cert in certs)
        until = min(coll.valid_until() - 1, now + VERDICT_REUSE_SECONDS, expiry - 2)
        point = b"\x04" + raw[layout.signed + 68 : layout.signed + 132]
        attestation_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except (ValueError, QuoteVerificationError, OverflowError):
        return
    if until >= now:
        _VERDICTS.put(key, _Verdict(status, advisories, now, until, attestation_key))


def _check_statuses(allowed_statuses: Iterable[str]) -> frozenset[str]:
    if isinstance(allowed_statuses, str):
        raise TypeError("allowed_statuses must be a collection of status names, not a string")
    allowed = frozenset(allowed_statuses)
    unknown = allowed - ADMISSIBLE_STATUSES
    if unknown:
        raise ValueError(
            f"unknown or inadmissible TCB status {sorted(unknown)}; admissible: {sorted(ADMISSIBLE_STATUSES)}"
        )
    return allowed


def _same_report(fields: TDFields, verified: Mapping[str, Any]) -> bool:
    """Whether the TD report dcap-qvl verified is the one the fields were read from."""
    report = verified.get("report")
    if not isinstance(report, Mapping) or len(report) != 1:
        return False
    body = next(iter(report.values()))
    if not isinstance(body, Mapping):
        return False
    base: Any = body
    while isinstance(base, Mapping) and isinstance(base.get("base"), Mapping):
        base = base["base"]  # TD report 1.5 nests the 1.0 fields
    if not isinstance(base, Mapping):
        return False
    pairs = [
        ("tee_tcb_svn", fields.tee_tcb_svn),
        ("mr_seam", fields.mr_seam),
        ("mr_signer_seam", fields.mr_signer_seam),
        ("seam_attributes", fields.seam_attributes),
        ("td_attributes", fields.td_attributes),
        ("xfam", fields.xfam),
        ("mr_td", fields.mr_td),
        ("mr_config_id", fields.mr_config_id),
        ("mr_owner", fields.mr_owner),
        ("mr_owner_config", fields.mr_owner_config),
        ("rt_mr0", fields.rtmr0),
        ("rt_mr1", fields.rtmr1),
        ("rt_mr2", fields.rtmr2),
        ("rt_mr3", fields.rtmr3),
        ("report_data", fields.report_data),
    ]
    if not all(base.get(key) == value.hex() for key, value in pairs):
        return False
    extra = [("tee_tcb_svn2", fields.tee_tcb_svn2), ("mr_service_td", fields.mr_service_td)]
    return all(body.get(key) == (None if value is None else value.hex()) for key, value in extra)


def verify_quote(
    quote: bytes | ParsedQuote,
    collateral: Collateral | Mapping[str, Any] | str | bytes,
    *,
    now: int,
    allowed_statuses: Iterable[str] = DEFAULT_ALLOWED_STATUSES,
    root_ca: bytes = INTEL_ROOT_CA,
    floor: CollateralFloor | None = None,
) -> VerifiedQuote:
    """Verify a TDX quote (v4 or v5) against collateral at ``now`` (unix seconds).

    Returns the :class:`VerifiedQuote` or raises :class:`QuoteVerificationError`, whose
    ``reason`` says which check refused it. ``root_ca`` is the trust anchor, DER; it is
    Intel's unless a caller that accepts simulated quotes passes a simulated root.
    ``quote`` may be a :class:`ParsedQuote` (then it is not parsed again). ``floor``
    refuses collateral older than it (``COLLATERAL_STALE``).
    ``TypeError`` / ``ValueError`` mean a wrong argument, never a bad quote.
    """
    if not isinstance(quote, bytes | bytearray | memoryview | ParsedQuote):
        raise TypeError(f"quote must be bytes, not {type(quote).__name__}")
    if isinstance(now, bool) or not isinstance(now, int) or not 0 <= now < 2**64:
        raise ValueError("now must be non-negative unix seconds (an int below 2**64)")
    if not isinstance(root_ca, bytes):
        raise TypeError("root_ca must be DER bytes")
    allowed = _check_statuses(allowed_statuses)
    coll = Collateral.coerce(collateral)

    # 1. The bytes decode as a DCAP quote, of a TDX TD, in a TDX quote version.
    if isinstance(quote, ParsedQuote):
        fields, instance_id, quote = quote.fields, quote.platform_instance_id, quote.raw
    else:
        quote = bytes(quote)
        parsed = _parse(quote)
        parsed_fields = _td_fields(parsed)
        tee_type = parsed.header.tee_type
        if parsed_fields is None:
            kind = "SGX" if tee_type == 0 else f"TEE type {tee_type:#x}"
            raise QuoteVerificationError(QuoteFailure.NOT_TDX, f"not a TDX quote ({kind})")
        fields = parsed_fields
        instance_id = _platform_instance_id(parsed)
        if fields.version not in TDX_QUOTE_VERSIONS:
            raise QuoteVerificationError(
                QuoteFailure.UNSUPPORTED_QUOTE, f"TDX quote version {fields.version}"
            )
    if floor is not None:
        floor.check(coll, now)

    # 2. dcap-qvl: root CRL, collateral signatures and times, PCK chain, QE report and
    #    identity, quote signature, TCB level, TD attributes. Its verdict on a quote equal to
    #    this one in every byte but the quote signature and the TD's measured fields (same
    #    platform, quoting enclave, attestation key, TDX module, TD attributes), under the
    #    same root and collateral, is reused while all of that is still valid, once this
    #    quote's own signature verifies under that attestation key; else dcap-qvl verifies.
    layout = _layout(quote, fields)
    key = None if layout is None else (root_ca, coll, *layout.parts)
    known: _Verdict | None = None if key is None else _VERDICTS.get(key)
    if (
        known is not None
        and layout is not None
        and known.verified_at <= now <= known.valid_until
        and _signature_verifies(known, quote, layout)
    ):
        status, advisories = known.status, known.advisory_ids
    else:
        status, advisories = _dcap_verdict(quote, fields, coll, root_ca, now)
        if key is not None and layout is not None:
            _remember(key, quote, layout, coll, status, advisories, now)

    # 3. The TCB status is one the caller admits.
    if status not in allowed:
        advisory_text = f" ({', '.join(advisories)})" if advisories else ""
        raise QuoteVerificationError(
            QuoteFailure.TCB_STATUS_NOT_ALLOWED,
            f"TCB status {status}{advisory_text} is not admitted; admitted: {', '.join(sorted(allowed))}",
            tcb_status=status,
            advisory_ids=advisories,
        )
    if fields.fmspc is None:
        raise QuoteVerificationError(
            QuoteFailure.CERTIFICATE_CHAIN, "no FMSPC in the PCK certificate"
        )
    return VerifiedQuote(
        tcb_status=status,
        advisory_ids=advisories,
        mr_td=fields.mr_td,
        rtmr0=fields.rtmr0,
        rtmr1=fields.rtmr1,
        rtmr2=fields.rtmr2,
        rtmr3=fields.rtmr3,
        report_data=fields.report_data,
        version=fields.version,
        fmspc=fields.fmspc,
        simulated=root_ca != INTEL_ROOT_CA,
        fields=fields,
        tcb_evaluation_data_number=coll.tcb_evaluation_data_number,
        platform_instance_id=instance_id,
    )


def _dcap_verdict(
    quote: bytes, fields: TDFields, coll: Collateral, root_ca: bytes, now: int
) -> tuple[str, tuple[str, ...]]:
    """dcap-qvl's verification of ``quote`` in full: its TCB status and advisory IDs."""
    dcap_collateral = _dcap_collateral(coll)
    try:
        report = dcap_qvl.verify_with_root_ca(quote, dcap_collateral, root_ca, now)
    except Exception as exc:
        raise _refusal(exc) from None
    except BaseException as exc:
        raise _panic(exc) from None
    verified = json.loads(report.to_json())
    if not _same_report(fields, verified):
        raise QuoteVerificationError(
            QuoteFailure.UNKNOWN, "the verified TD report differs from the parsed one"
        )
    return str(report.status), tuple(str(a) for a in report.advisory_ids)


def _embedded_pem(quote: bytes) -> bytes:
    """The PCK chain a quote embeds, as dcap-qvl reads it (empty if unreadable)."""
    try:
        return bytes(dcap_qvl.parse_quote(quote).cert_chain_pem_bytes() or b"").rstrip(b"\0")
    except Exception:  # unreadable (dcap-qvl verified it, so this is not expected)
        return b""


@functools.lru_cache(maxsize=COLLATERAL_CACHE_SIZE)
def _dcap_collateral_of(coll: Collateral) -> Any:
    return dcap_qvl.QuoteCollateralV3.from_json(coll.to_json())


def _dcap_collateral(coll: Collateral) -> Any:
    """dcap-qvl's object for ``coll``, converted once per equal collateral (bounded): it
    is the same input to verification, field for field, as a fresh conversion."""
    try:
        return _dcap_collateral_of(coll)
    except Exception as exc:
        raise QuoteVerificationError(
            QuoteFailure.MALFORMED_COLLATERAL, one_line(str(exc))
        ) from None


def _platform_instance_id(parsed: Any) -> bytes | None:
    try:
        ext = parsed.pck_extension()
        value = None if ext is None else ext.platform_instance_id
    except Exception:  # dcap-qvl raises ValueError on an unreadable certificate
        return None
    return bytes(value) if value else None


class Verifier:
    """The trust roots a node accepts quotes under, and whether simulated ones count.

    ``roots`` holds Intel's root (:data:`INTEL_ROOT_CA`, pinned in code) and, for
    development and tests, simulated roots. Quotes are tried under Intel's root first,
    then, only if ``simulated_allowed``, under each simulated root; a quote is tried
    under the next root only when the previous one refused it as ``UNTRUSTED_ROOT``
    (its collateral or PCK chain is not under that root). The result says whether a
    simulated root verified it (:attr:`VerifiedQuote.simulated`).
    """

    def __init__(
        self,
        roots: Sequence[bytes] = (INTEL_ROOT_CA,),
        *,
        simulated_allowed: bool = False,
        allowed_statuses: Iterable[str] = DEFAULT_ALLOWED_STATUSES,
        floor: CollateralFloor | None = None,
    ) -> None:
        if isinstance(roots, bytes) or not all(isinstance(r, bytes) and r for r in roots):
            raise TypeError("roots must be a sequence of DER certificates (bytes)")
        ordered: list[bytes] = []
        if INTEL_ROOT_CA in roots:
            ordered.append(INTEL_ROOT_CA)
        simulated = [r for r in dict.fromkeys(roots) if r != INTEL_ROOT_CA]
        if simulated_allowed:
            ordered.extend(simulated)
        if not ordered:
            raise ValueError("no usable trust root: simulated roots need simulated_allowed=True")
        self._roots = tuple(ordered)
        self._simulated_roots = tuple(simulated)
        self._simulated_allowed = bool(simulated_allowed)
        self._allowed_statuses = _check_statuses(allowed_statuses)
        self._floor = floor or CollateralFloor()

    @property
    def floor(self) -> CollateralFloor:
        """The oldest collateral this verifier accepts."""
        return self._floor

    def precheck(self, quote: bytes, *, now: int) -> ParsedQuote:
        """The cheap part of verification, before any collateral is needed: the quote
        parses as TDX (:func:`parse_tdx_quote`) and its PCK chain verifies to one of
        :attr:`roots` at ``now`` (:func:`check_pck_chain`). Raises
        :class:`QuoteVerificationError`."""
        parsed = parse_tdx_quote(quote)
        check_pck_chain(parsed, self._roots, now=now)
        return parsed

    @property
    def roots(self) -> tuple[bytes, ...]:
        """The roots quotes are tried under, in order."""
        return self._roots

    @property
    def simulated_allowed(self) -> bool:
        return self._simulated_allowed

    @property
    def simulated_roots(self) -> tuple[bytes, ...]:
        """The configured roots that are not Intel's (tried only if simulation is allowed)."""
        return self._simulated_roots

    @property
    def allowed_statuses(self) -> frozenset[str]:
        return self._allowed_statuses

    def verify(
        self,
        quote: bytes | ParsedQuote,
        collateral: Collateral | Mapping[str, Any] | str | bytes,
        *,
        now: int,
        allowed_statuses: Iterable[str] | None = None,
    ) -> VerifiedQuote:
        """:func:`verify_quote` under each usable root in turn (see the class docstring)."""
        statuses = self._allowed_statuses if allowed_statuses is None else allowed_statuses
        coll = Collateral.coerce(collateral)
        if isinstance(quote, ParsedQuote):
            # Its PCK chain names the one root to verify under.
            root = check_pck_chain(quote, self._roots, now=now)
            return verify_quote(
                quote, coll, now=now, allowed_statuses=statuses, root_ca=root, floor=self._floor
            )
        refusal: QuoteVerificationError | None = None
        for root in self._roots:
            try:
                return verify_quote(
                    quote,
                    coll,
                    now=now,
                    allowed_statuses=statuses,
                    root_ca=root,
                    floor=self._floor,
                )
            except QuoteVerificationError as exc:
                if exc.reason is not QuoteFailure.UNTRUSTED_ROOT:
                    raise
                refusal = refusal or exc
        if refusal is None:  # unreachable: the constructor guarantees a root
            raise QuoteVerificationError(QuoteFailure.UNTRUSTED_ROOT, "no trust root")
        raise refusal
