"""Quote collateral in dcap-qvl's ``QuoteCollateralV3`` shape.

The JSON form (what a PCCS client caches and what ``kms attest verify
--collateral`` reads) is one object whose byte fields are hex strings:

==========================  ======  ===============================================
field                       JSON    meaning
==========================  ======  ===============================================
``pck_crl_issuer_chain``    PEM     PCK CA (signer of the PCK CRL), then the root
``root_ca_crl``             hex     DER CRL issued by the root (covers the CAs)
``pck_crl``                 hex     DER CRL issued by the PCK CA (covers PCK leaves)
``tcb_info_issuer_chain``   PEM     TCB signing certificate, then the root
``tcb_info``                string  the *inner* ``tcbInfo`` JSON object, verbatim
``tcb_info_signature``      hex     raw ``r‖s`` ECDSA P-256 over ``tcb_info``'s bytes
``qe_identity_issuer_chain`` PEM    TCB signing certificate, then the root
``qe_identity``             string  the *inner* ``enclaveIdentity`` JSON object
``qe_identity_signature``   hex     raw ``r‖s`` over ``qe_identity``'s bytes
``pck_certificate_chain``   PEM     optional: PCK chain for quotes that do not
                                    embed one (absent or ``null`` otherwise)
==========================  ======  ===============================================

``tcb_info`` and ``qe_identity`` are signed as bytes: they are kept verbatim
and never re-serialised.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import dcap_qvl
from cryptography import x509

from kms.attest._time import parse_rfc3339
from kms.attest.errors import QuoteFailure, QuoteVerificationError
from mpc.codec import json_nesting_depth

MAX_JSON_DEPTH = 32
"""Collateral JSON nests a handful of levels (TCB levels, their components); text nested
deeper is refused before it is parsed, since ``json.loads`` recurses."""


def load_json(text: str | bytes, what: str) -> Any:
    """``json.loads`` for collateral from outside: nesting bounded first, and every failure
    (including a lone surrogate or an integer too long to convert) a ``ValueError``."""
    try:
        if isinstance(text, bytes | bytearray):
            text = bytes(text).decode("utf-8")
        if json_nesting_depth(text) > MAX_JSON_DEPTH:
            raise ValueError(f"{what} is nested deeper than {MAX_JSON_DEPTH}")
        return json.loads(text)
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None


_TEXT_FIELDS = (
    "pck_crl_issuer_chain",
    "tcb_info_issuer_chain",
    "tcb_info",
    "qe_identity_issuer_chain",
    "qe_identity",
)
_BYTES_FIELDS = ("root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature")
FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
"""The required fields, in dcap-qvl's order."""


def _malformed(message: str) -> QuoteVerificationError:
    return QuoteVerificationError(QuoteFailure.MALFORMED_COLLATERAL, message)


@dataclass(frozen=True, slots=True)
class Collateral:
    """Everything besides the quote that DCAP verification needs, for one FMSPC and CA."""

    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes
    pck_certificate_chain: str | None = None

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise _malformed(f"collateral field {name} must be a string")
        for name in _BYTES_FIELDS:
            if not isinstance(getattr(self, name), bytes):
                raise _malformed(f"collateral field {name} must be bytes")
        if self.pck_certificate_chain is not None and not isinstance(
            self.pck_certificate_chain, str
        ):
            raise _malformed("collateral field pck_certificate_chain must be a string or null")

    # --- conversions ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Collateral:
        """From the JSON form (hex strings for byte fields); unknown keys are ignored.

        Raises :class:`QuoteVerificationError` (``MALFORMED_COLLATERAL``).
        """
        if not isinstance(data, Mapping):
            raise _malformed("collateral must be a JSON object")
        missing = [name for name in FIELDS if name not in data]
        if missing:
            raise _malformed(f"collateral is missing {', '.join(missing)}")
        values: dict[str, object] = {}
        for name in _TEXT_FIELDS:
            value = data[name]
            if not isinstance(value, str):
                raise _malformed(f"collateral field {name} must be a string")
            values[name] = value
        for name in _BYTES_FIELDS:
            value = data[name]
            if not isinstance(value, str):
                raise _malformed(f"collateral field {name} must be a hex string")
            try:
                values[name] = bytes.fromhex(value)
            except ValueError:
                raise _malformed(f"collateral field {name} is not hex") from None
        chain = data.get("pck_certificate_chain")
        if chain is not None and not isinstance(chain, str):
            raise _malformed("collateral field pck_certificate_chain must be a string or null")
        return cls(pck_certificate_chain=chain, **values)  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, text: str | bytes) -> Collateral:
        """From the JSON text form. Raises :class:`QuoteVerificationError`."""
        try:
            data = load_json(text, "collateral")
        except ValueError as exc:
            raise _malformed(str(exc)) from None
        return cls.from_dict(data)

    @classmethod
    def coerce(cls, collateral: object) -> Collateral:
        """A :class:`Collateral` from itself, its dict or JSON form, or a dcap-qvl object."""
        if isinstance(collateral, Collateral):
            return collateral
        if isinstance(collateral, str | bytes | bytearray):
            return cls.from_json(
                bytes(collateral) if isinstance(collateral, bytearray) else collateral
            )
        if isinstance(collateral, Mapping):
            return cls.from_dict(collateral)
        if isinstance(collateral, dcap_qvl.QuoteCollateralV3):
            return cls.from_json(collateral.to_json())
        raise TypeError(f"collateral must be Collateral, dict or JSON text, not {type(collateral)}")

    def to_dict(self) -> dict[str, str]:
        """The JSON form (byte fields as lowercase hex); ``pck_certificate_chain`` only if set."""
        out: dict[str, str] = {}
        for name in FIELDS:
            value = getattr(self, name)
            out[name] = value.hex() if isinstance(value, bytes) else value
        if self.pck_certificate_chain is not None:
            out["pck_certificate_chain"] = self.pck_certificate_chain
        return out

    def to_json(self) -> str:
        """The JSON text form: one compact object in dcap-qvl's field order."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    # --- what the collateral says about itself ---------------------------------------------

    def _document(self, name: str) -> Mapping[str, object]:
        return _document(name, getattr(self, name))

    @property
    def fmspc(self) -> str:
        """The FMSPC the TCB Info is for, uppercase hex."""
        value = self._document("tcb_info").get("fmspc")
        if not isinstance(value, str):
            raise _malformed("tcb_info has no fmspc")
        return value.upper()

    @property
    def tee(self) -> str:
        """``"TDX"`` or ``"SGX"``: which TEE the TCB Info describes."""
        value = self._document("tcb_info").get("id", "SGX")
        return value if isinstance(value, str) else "SGX"

    def _dates(self, key: str) -> list[int]:
        out = []
        for name in ("tcb_info", "qe_identity"):
            value = self._document(name).get(key)
            if not isinstance(value, str):
                raise _malformed(f"{name} has no {key}")
            try:
                out.append(parse_rfc3339(value))
            except ValueError:
                raise _malformed(f"{name} {key} is not an RFC 3339 time") from None
        return out

    @property
    def tcb_evaluation_data_number(self) -> int:
        """The lower ``tcbEvaluationDataNumber`` of TCB Info and QE Identity: which of
        Intel's TCB recovery events the collateral already accounts for."""
        numbers = []
        for name in ("tcb_info", "qe_identity"):
            value = self._document(name).get("tcbEvaluationDataNumber")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _malformed(f"{name} has no tcbEvaluationDataNumber")
            numbers.append(value)
        return min(numbers)

    def issue_date(self) -> int:
        """The earlier ``issueDate`` of TCB Info and QE Identity (unix seconds): the age of
        the oldest signed document in the collateral."""
        return min(self._dates("issueDate"))

    def freshness(self) -> tuple[int, int, int, int, int]:
        """What orders collateral of one platform in time: TCB evaluation data number,
        TCB Info and QE Identity ``issueDate``, root CA and PCK CRL ``thisUpdate``.

        Collateral from an honest PCCS never goes backwards in any of these; see
        :meth:`older_than`."""
        tcb, qe = self._dates("issueDate")
        root, pck = (int(c.last_update_utc.timestamp()) for c in self._crls())
        return (self.tcb_evaluation_data_number, tcb, qe, root, pck)

    def older_than(self, other: Collateral) -> bool:
        """Whether any part of this collateral is older than the same part of ``other``:
        replacing ``other`` with it would roll something back (a TCB recovery, a
        revocation)."""
        return any(a < b for a, b in zip(self.freshness(), other.freshness(), strict=True))

    def _crls(self) -> list[x509.CertificateRevocationList]:
        try:
            return [x509.load_der_x509_crl(self.root_ca_crl), x509.load_der_x509_crl(self.pck_crl)]
        except ValueError:
            raise _malformed("a CRL is not DER") from None

    def valid_from(self) -> int:
        """The first second at which the collateral verifies: the later ``issueDate`` of
        TCB Info and QE Identity (unix seconds; CRL ``thisUpdate`` is not checked)."""
        return _validity(self)[0]

    def valid_until(self) -> int:
        """The last second at which the collateral verifies: the earliest ``nextUpdate`` of
        TCB Info and QE Identity, or one second before the earliest CRL ``nextUpdate`` (a CRL
        is stale *at* its nextUpdate, a JSON document only after it)."""
        return _validity(self)[1]

    def _validity(self) -> tuple[int, int]:
        times = self._dates("nextUpdate")
        for crl in self._crls():
            nu = crl.next_update_utc
            if nu is None:
                raise _malformed("a CRL has no nextUpdate")
            times.append(int(nu.timestamp()) - 1)
        return max(self._dates("issueDate")), min(times)


@functools.lru_cache(maxsize=64)
def _validity(collateral: Collateral) -> tuple[int, int]:
    """:meth:`Collateral.valid_from` and :meth:`~Collateral.valid_until`, read once per equal
    collateral (bounded; a node asks at every request). A malformed one raises every time."""
    return collateral._validity()


@functools.lru_cache(maxsize=64)
def _document(name: str, text: str) -> Mapping[str, object]:
    """The signed JSON document ``text`` (``tcb_info`` or ``qe_identity``), parsed once per
    exact text (bounded) and read-only: collateral is read on every verification."""
    try:
        doc = load_json(text, name)
    except ValueError:
        raise _malformed(f"{name} is not JSON") from None
    if not isinstance(doc, dict):
        raise _malformed(f"{name} is not a JSON object")
    return MappingProxyType(doc)


@dataclass(frozen=True, slots=True)
class CollateralFloor:
    """The oldest collateral a node accepts (``[node]`` settings in ``node.toml``).

    ``min_tcb_evaluation_data_number``: TCB Info and QE Identity must both carry at least
    this ``tcbEvaluationDataNumber`` (0: no floor). ``min_issue_date``: both must be issued
    at or after this time (unix seconds; 0: no floor). ``max_age``: both must be issued at
    most this many seconds before the verification time (``None``: only their
    ``nextUpdate`` bounds their age).
    """

    min_tcb_evaluation_data_number: int = 0
    min_issue_date: int = 0
    max_age: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_tcb_evaluation_data_number", "min_issue_date"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        if self.max_age is not None and (
            isinstance(self.max_age, bool) or not isinstance(self.max_age, int) or self.max_age <= 0
        ):
            raise ValueError("max_age must be a positive number of seconds or None")

    def check(self, collateral: Collateral, now: int) -> None:
        """Raise :class:`QuoteVerificationError` (``COLLATERAL_STALE``) if ``collateral`` is
        older than this floor at ``now`` (``MALFORMED_COLLATERAL`` if it does not say)."""
        number = collateral.tcb_evaluation_data_number
        if number < self.min_tcb_evaluation_data_number:
            raise QuoteVerificationError(
                QuoteFailure.COLLATERAL_STALE,
                f"tcbEvaluationDataNumber {number} is below this node's floor "
                f"{self.min_tcb_evaluation_data_number}",
            )
        issued = collateral.issue_date()
        if issued < self.min_issue_date:
            raise QuoteVerificationError(
                QuoteFailure.COLLATERAL_STALE,
                f"issued at {issued}, before this node's floor {self.min_issue_date}",
            )
        if self.max_age is not None and now - issued > self.max_age:
            raise QuoteVerificationError(
                QuoteFailure.COLLATERAL_STALE,
                f"issued {now - issued} s ago, more than this node's maximum age {self.max_age} s",
            )

    def fresh_until(self, collateral: Collateral) -> int | None:
        """The last second this floor accepts ``collateral`` at (``None``: no age limit)."""
        return None if self.max_age is None else collateral.issue_date() + self.max_age
