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

import json
from collections.abc import Mapping
from dataclasses import dataclass

import dcap_qvl
from cryptography import x509

from kms.attest._time import parse_rfc3339
from kms.attest.errors import QuoteFailure, QuoteVerificationError

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
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise _malformed(f"collateral is not JSON: {exc}") from None
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

    def _document(self, name: str) -> dict[str, object]:
        try:
            doc = json.loads(getattr(self, name))
        except ValueError:
            raise _malformed(f"{name} is not JSON") from None
        if not isinstance(doc, dict):
            raise _malformed(f"{name} is not a JSON object")
        return doc

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

    def _crls(self) -> list[x509.CertificateRevocationList]:
        try:
            return [x509.load_der_x509_crl(self.root_ca_crl), x509.load_der_x509_crl(self.pck_crl)]
        except ValueError:
            raise _malformed("a CRL is not DER") from None

    def valid_from(self) -> int:
        """The first second at which the collateral verifies: the later ``issueDate`` of
        TCB Info and QE Identity (unix seconds; CRL ``thisUpdate`` is not checked)."""
        return max(self._dates("issueDate"))

    def valid_until(self) -> int:
        """The last second at which the collateral verifies: the earliest ``nextUpdate`` of
        TCB Info and QE Identity, or one second before the earliest CRL ``nextUpdate`` (a CRL
        is stale *at* its nextUpdate, a JSON document only after it)."""
        times = self._dates("nextUpdate")
        for crl in self._crls():
            nu = crl.next_update_utc
            if nu is None:
                raise _malformed("a CRL has no nextUpdate")
            times.append(int(nu.timestamp()) - 1)
        return min(times)
