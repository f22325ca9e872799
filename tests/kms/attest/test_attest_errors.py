"""dcap-qvl's failure messages map to QuoteFailure reasons, row by row of MESSAGE_TABLE.

Each LIVE case provokes one failure in dcap-qvl 0.7.0 and pins its exact message, so
that a dcap-qvl upgrade that rewords a message fails here rather than silently turning
a reason into UNKNOWN. STATIC cases are messages found in dcap-qvl's binary that are
impractical to provoke; they are classified only.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dcap_qvl
import pytest
from attest_helpers import (
    NOW,
    TDX_COLLATERAL,
    TDX_NOW,
    TDX_QUOTE,
    VECTORS,
    edit_document,
    simulated,
)

from kms.attest import (
    INTEL_ROOT_CA,
    MESSAGE_TABLE,
    QuoteFailure,
    QuoteVerificationError,
    classify,
    errors,
)
from kms.attest.errors import one_line

F = QuoteFailure
TEE = simulated(7)
SIM = TEE.collateral(NOW)
QUOTE = TEE.quote(b"errors")
ROOT = TEE.root_ca_der
OTHER = simulated(8)


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[], Any]
    message: str
    reason: QuoteFailure


def sim(
    quote: bytes = QUOTE, collateral: dict[str, str] = SIM, root: bytes = ROOT, now: int = NOW
) -> Callable[[], Any]:
    return lambda: dcap_qvl.verify_with_root_ca(
        quote, dcap_qvl.QuoteCollateralV3.from_json(json.dumps(collateral)), root, now
    )


def intel(
    quote: bytes = TDX_QUOTE, collateral: str = TDX_COLLATERAL, now: int = TDX_NOW
) -> Callable[[], Any]:
    return lambda: dcap_qvl.verify_with_root_ca(
        quote, dcap_qvl.QuoteCollateralV3.from_json(collateral), INTEL_ROOT_CA, now
    )


def patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def tcb(edit: Callable[[dict[str, Any]], Any]) -> dict[str, str]:
    return edit_document(TEE, SIM, "tcb_info", edit)


def qe(edit: Callable[[dict[str, Any]], Any]) -> dict[str, str]:
    return edit_document(TEE, SIM, "qe_identity", edit)


def module(edit: Callable[[dict[str, Any]], Any]) -> dict[str, str]:
    return tcb(lambda d: edit(d["tdxModuleIdentities"][0]))


def td_attributes(value: str) -> bytes:
    return TEE.quote(b"", td_attributes=bytes.fromhex(value))


P = "Verification failed: "
C = "\n\nCaused by:\n    "
LATE = NOW + 7 * 365 * 86_400 + 10

LIVE = [
    Case(
        "root CRL expired",
        intel(now=2524608000),
        P + "CrlExpired { time: UnixTime(2524608000), next_update: UnixTime(1775215317) }",
        F.COLLATERAL_EXPIRED,
    ),
    Case(
        "PCK CRL expired",
        intel(now=TDX_NOW + 2),
        P
        + "Failed to verify certificate chain"
        + C
        + "CrlExpired { time: UnixTime(1752919236), next_update: UnixTime(1752919235) }",
        F.COLLATERAL_EXPIRED,
    ),
    Case(
        "certificate expired",
        sim(collateral=TEE.collateral(LATE), now=LATE),
        P
        + "Failed to verify certificate chain"
        + C
        + f"CertExpired {{ time: UnixTime({LATE}), not_after: UnixTime({NOW + 7 * 365 * 86_400}) }}",
        F.COLLATERAL_EXPIRED,
    ),
    Case(
        "TCB Info expired",
        sim(collateral=tcb(lambda d: d.__setitem__("nextUpdate", "2025-10-01T00:00:00Z"))),
        P + "TCBInfo expired",
        F.COLLATERAL_EXPIRED,
    ),
    Case(
        "QE Identity expired",
        sim(collateral=qe(lambda d: d.__setitem__("nextUpdate", "2025-10-01T00:00:00Z"))),
        P + "QE Identity expired",
        F.COLLATERAL_EXPIRED,
    ),
    Case(
        "TCB Info not yet issued",
        intel(now=0),
        P + "TCBInfo issue date is in the future",
        F.COLLATERAL_NOT_YET_VALID,
    ),
    Case(
        "QE Identity not yet issued",
        intel(now=1750329146),
        P + "QE Identity issue date is in the future",
        F.COLLATERAL_NOT_YET_VALID,
    ),
    Case(
        "PCK certificate with trailing data",
        sim(quote=patch(QUOTE, 1258 + 28, b"B")),
        P + "Failed to parse PCK certificate" + C + "TrailingData(SignedData)",
        F.CERTIFICATE_CHAIN,
    ),
    Case(
        "certificate not yet valid",
        sim(collateral=TEE.collateral(NOW - 10 * 86_400), now=NOW - 10 * 86_400),
        P
        + "Failed to verify certificate chain"
        + C
        + f"CertNotValidYet {{ time: UnixTime({NOW - 10 * 86_400}), not_before: UnixTime({NOW - 86_400}) }}",
        F.COLLATERAL_NOT_YET_VALID,
    ),
    Case(
        "PCK revoked",
        sim(collateral=TEE.collateral(NOW, revoke=["pck"])),
        P + "Failed to verify certificate chain" + C + "CertRevoked",
        F.CERTIFICATE_REVOKED,
    ),
    Case(
        "TCB signer revoked",
        sim(collateral=TEE.collateral(NOW, revoke=["tcb_signing"])),
        P + "Failed to verify certificate chain" + C + "CertRevoked",
        F.CERTIFICATE_REVOKED,
    ),
    Case(
        "root is not DER",
        sim(root=b"\x30\x00"),
        P + "Failed to load root ca" + C + "BadDer",
        F.UNTRUSTED_ROOT,
    ),
    Case(
        "root CRL not signed by the root",
        sim(root=INTEL_ROOT_CA),
        P + "Failed to parse root CA CRL" + C + "InvalidCrlSignatureForPublicKey",
        F.UNTRUSTED_ROOT,
    ),
    Case(
        "PCK chain to another root",
        sim(quote=TDX_QUOTE),
        P + "Failed to verify certificate chain" + C + "UnknownIssuer",
        F.UNTRUSTED_ROOT,
    ),
    Case(
        "root CRL not DER",
        sim(collateral=SIM | {"root_ca_crl": "3000"}),
        P + "Failed to parse root CA CRL" + C + "BadDer",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "PCK CRL not DER",
        sim(collateral=SIM | {"pck_crl": "3000"}),
        P + "Failed to parse PCK CRL" + C + "BadDer",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "TCB chain PEM garbage",
        sim(
            collateral=SIM
            | {
                "tcb_info_issuer_chain": "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"
            }
        ),
        P + "Failed to parse certs" + C + "invalid data: Invalid symbol 33, offset 0.",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "TCB chain certificate garbage",
        sim(
            collateral=SIM
            | {
                "tcb_info_issuer_chain": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            }
        ),
        P + "Failed to parse TCB Info leaf certificate" + C + "TrailingData(SignedData)",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "QE chain certificate garbage",
        sim(
            collateral=SIM
            | {
                "qe_identity_issuer_chain": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            }
        ),
        P + "Failed to parse QE Identity leaf certificate" + C + "TrailingData(SignedData)",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "quote truncated",
        sim(quote=QUOTE[:1000]),
        P + "Failed to decode quote" + C + "Not enough data to fill buffer",
        F.MALFORMED_QUOTE,
    ),
    Case(
        "signature data too long",
        sim(quote=patch(QUOTE, 632, b"\xff\xff\xff\x00")),
        P + "Failed to decode quote" + C + "Data length exceeds maximum",
        F.MALFORMED_QUOTE,
    ),
    Case(
        "QE auth data shortened",
        sim(quote=patch(QUOTE, 1218, b"\x1f\x00")),
        P
        + "Failed to decode quote"
        + C
        + "Could not decode `QEReportCertificationData::certification_data`:\n    \tCould not decode `CertificationData::body`:\n    \t\tNot enough data to fill buffer\n    ",
        F.MALFORMED_QUOTE,
    ),
    Case(
        "v5 body size",
        sim(quote=patch(TEE.quote(b"", version=5), 50, b"\x00\x01")),
        P + "Failed to decode quote" + C + "Invalid body size",
        F.MALFORMED_QUOTE,
    ),
    Case(
        "quote version 6",
        sim(quote=patch(QUOTE, 0, b"\x06\x00")),
        P + "Failed to decode quote" + C + "Unsupported quote version",
        F.UNSUPPORTED_QUOTE,
    ),
    Case(
        "v5 body type",
        sim(quote=patch(TEE.quote(b"", version=5), 48, b"\x09\x00")),
        P + "Failed to decode quote" + C + "Unsupported body type",
        F.UNSUPPORTED_QUOTE,
    ),
    Case(
        "TDX TEE type in a v3 quote",
        sim(quote=patch(QUOTE, 0, b"\x03\x00")),
        P + "Failed to decode quote" + C + "Invalid TEE type",
        F.UNSUPPORTED_QUOTE,
    ),
    Case(
        "attestation key type",
        sim(quote=patch(QUOTE, 2, b"\x03\x00")),
        P + "Unsupported DCAP attestation key type",
        F.UNSUPPORTED_QUOTE,
    ),
    Case(
        "QE vendor",
        sim(quote=patch(QUOTE, 12, b"\x00")),
        P + "Unknown QE vendor ID",
        F.UNSUPPORTED_QUOTE,
    ),
    Case(
        "PCK chain type",
        sim(quote=patch(QUOTE, 1252, b"\x04\x00")),
        P + "Unsupported DCAP PCK cert format: 4. Use get_collateral() to fetch PCK certificate.",
        F.UNSUPPORTED_QUOTE,
    ),
    Case(
        "TCB Info altered",
        sim(
            collateral=SIM
            | {
                "tcb_info": SIM["tcb_info"].replace(
                    '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18'
                )
            }
        ),
        P + "Signature is invalid for tcb_info in quote_collateral",
        F.BAD_COLLATERAL_SIGNATURE,
    ),
    Case(
        "QE Identity altered",
        sim(
            collateral=SIM
            | {
                "qe_identity": SIM["qe_identity"].replace(
                    '"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18'
                )
            }
        ),
        P + "Signature is invalid for qe_identity in quote_collateral",
        F.BAD_COLLATERAL_SIGNATURE,
    ),
    Case(
        "SGX TCB Info",
        sim(collateral=tcb(lambda d: d.__setitem__("id", "SGX"))),
        P + "TDX quote with non-TDX TCB info in the collateral",
        F.COLLATERAL_MISMATCH,
    ),
    Case(
        "SGX QE Identity",
        intel(collateral=(VECTORS / "sgx_quote_collateral.json").read_text(), now=1752919277),
        P
        + "Unsupported QE Identity id/version for the quote TEE type: QE version 2 (expected TD_QE version [2, 3])",
        F.COLLATERAL_MISMATCH,
    ),
    Case(
        "FMSPC",
        sim(collateral=tcb(lambda d: d.__setitem__("fmspc", "00606A000000"))),
        P + "Fmspc mismatch",
        F.COLLATERAL_MISMATCH,
    ),
    Case(
        "collateral not JSON",
        lambda: dcap_qvl.QuoteCollateralV3.from_json("{}"),
        "Failed to parse JSON: missing field `pck_crl_issuer_chain` at line 1 column 2",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "TCB Info not JSON",
        sim(collateral=SIM | {"tcb_info": "nope", "tcb_info_signature": TEE.sign_document("nope")}),
        P + "Failed to decode TcbInfo" + C + "expected ident at line 1 column 2",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "QE Identity not JSON",
        sim(
            collateral=SIM
            | {"qe_identity": "nope", "qe_identity_signature": TEE.sign_document("nope")}
        ),
        P + "Failed to decode QeIdentity" + C + "expected ident at line 1 column 2",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "TCB Info date",
        sim(collateral=tcb(lambda d: d.__setitem__("issueDate", "yesterday"))),
        P
        + "Failed to parse TCB Info issue date"
        + C
        + "Failed to parse RFC3339 datetime: premature end of input",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "TCB level date",
        sim(collateral=tcb(lambda d: d["tcbLevels"][0].__setitem__("tcbDate", "x"))),
        P
        + "Invalid TCB level tcbDate"
        + C
        + "Failed to parse RFC3339 datetime: premature end of input",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "TDX component count",
        sim(
            collateral=tcb(
                lambda d: d["tcbLevels"][0]["tcb"].__setitem__(
                    "tdxtcbcomponents", [{"svn": 0}] * 15
                )
            )
        ),
        P + "TDX component count mismatch: expected 16, got 15",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "no tdxModule",
        sim(collateral=tcb(lambda d: d.pop("tdxModule"))),
        P + "TDX module identity check" + C + "TDX TCB Info is missing tdxModule field",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "module status",
        sim(
            collateral=module(
                lambda m: m["tcbLevels"][0].__setitem__("tcbStatus", "SWHardeningNeeded")
            )
        ),
        P
        + "TDX module TCB level check"
        + C
        + "Unrecognized TCB status SWHardeningNeeded in TDX module identity",
        F.MALFORMED_COLLATERAL,
    ),
    Case(
        "TCB Info chain empty",
        sim(collateral=SIM | {"tcb_info_issuer_chain": ""}),
        P + "Certificate chain is too short for TCB Info",
        F.CERTIFICATE_CHAIN,
    ),
    Case(
        "QE Identity chain empty",
        sim(collateral=SIM | {"qe_identity_issuer_chain": ""}),
        P + "Certificate chain is too short for QE Identity",
        F.CERTIFICATE_CHAIN,
    ),
    Case(
        "PCK CRL of another PKI",
        sim(collateral=SIM | {"pck_crl": OTHER.collateral(NOW)["pck_crl"]}),
        P + "Failed to verify certificate chain" + C + "InvalidCrlSignatureForPublicKey",
        F.CERTIFICATE_CHAIN,
    ),
    Case(
        "PCK CRL by the root",
        sim(collateral=SIM | {"pck_crl": SIM["root_ca_crl"]}),
        P + "Failed to verify certificate chain" + C + "UnknownRevocationStatus",
        F.CERTIFICATE_CHAIN,
    ),
    Case(
        "PCK certificate PEM",
        sim(quote=patch(QUOTE, 1258 + 40, b"!")),
        P
        + "Failed to extract PCK certificates from quote"
        + C
        + "0: Failed to parse certs\n    1: invalid data: Invalid symbol 33, offset 12.",
        F.CERTIFICATE_CHAIN,
    ),
    Case(
        "PCK certificate DER",
        sim(quote=patch(QUOTE, 1258 + 29, b"A")),
        P + "Failed to parse PCK certificate" + C + "BadDer",
        F.CERTIFICATE_CHAIN,
    ),
    Case(
        "QE report signature",
        sim(quote=patch(QUOTE, 770 + 48, b"\x17")),
        P + "Signature is invalid for qe_report in quote",
        F.BAD_QE_REPORT_SIGNATURE,
    ),
    Case(
        "attestation key",
        intel(quote=patch(TDX_QUOTE, 700, bytes([TDX_QUOTE[700] ^ 1]))),
        P + "QE report hash mismatch",
        F.QE_REPORT_BINDING,
    ),
    Case(
        "QE MRSIGNER",
        sim(collateral=qe(lambda d: d.__setitem__("mrsigner", "00" * 32))),
        P
        + "QE MRSIGNER mismatch: expected "
        + "00" * 32
        + ", got DC9E2A7C6F948F17474E34A7FC43ED030F7C1563F1BABDDF6340C82E0E54A8C5",
        F.QE_IDENTITY_MISMATCH,
    ),
    Case(
        "QE ISVPRODID",
        sim(collateral=qe(lambda d: d.__setitem__("isvprodid", 3))),
        P + "QE ISVPRODID mismatch: expected 3, got 2",
        F.QE_IDENTITY_MISMATCH,
    ),
    Case(
        "QE ATTRIBUTES",
        sim(collateral=qe(lambda d: d.__setitem__("attributes", "13" + "00" * 15))),
        P + "QE ATTRIBUTES mismatch at byte 0: expected 13 (masked), got 11 (masked)",
        F.QE_IDENTITY_MISMATCH,
    ),
    Case(
        "QE MISCSELECT",
        sim(collateral=qe(lambda d: d.__setitem__("miscselect", "00000001"))),
        P + "QE MISCSELECT mismatch: expected 01000000 (masked), got 00000000 (masked)",
        F.QE_IDENTITY_MISMATCH,
    ),
    Case(
        "QE without TCB levels",
        sim(collateral=qe(lambda d: d.__setitem__("tcbLevels", []))),
        P + "No TCB levels found in QE Identity",
        F.QE_IDENTITY_MISMATCH,
    ),
    Case(
        "QE ISVSVN",
        sim(collateral=qe(lambda d: d["tcbLevels"][0]["tcb"].__setitem__("isvsvn", 9))),
        P + "QE ISVSVN 4 is below minimum required 9 from QE Identity",
        F.QE_IDENTITY_MISMATCH,
    ),
    Case(
        "quote signature",
        intel(quote=patch(TDX_QUOTE, 184, bytes([TDX_QUOTE[184] ^ 1]))),
        P + "ISV enclave report signature is invalid",
        F.BAD_QUOTE_SIGNATURE,
    ),
    Case(
        "platform revoked",
        sim(collateral=simulated(7, tcb_status="Revoked").collateral(NOW)),
        P + "TCB status is invalid: Revoked",
        F.TCB_REVOKED,
    ),
    Case(
        "QE revoked",
        sim(collateral=qe(lambda d: d["tcbLevels"][0].__setitem__("tcbStatus", "Revoked"))),
        P + "TCB status is invalid: Revoked",
        F.TCB_REVOKED,
    ),
    Case(
        "no TCB level",
        intel(
            quote=(VECTORS / "tdx_quote_outdated").read_bytes(),
            collateral=(VECTORS / "tdx_quote_outdated_collateral.json").read_text(),
            now=1774003274,
        ),
        P + "No matching TCB level found",
        F.TCB_LEVEL_NOT_FOUND,
    ),
    Case(
        "module identity",
        sim(collateral=module(lambda m: m.__setitem__("id", "TDX_02"))),
        P
        + "TDX module TCB level check"
        + C
        + "No TDX module identity with id TDX_01 found in TCB Info",
        F.TDX_MODULE_MISMATCH,
    ),
    Case(
        "module MRSIGNER",
        sim(collateral=module(lambda m: m.__setitem__("mrsigner", "11" * 48))),
        P
        + "TDX module identity check"
        + C
        + "TDX module MRSIGNER mismatch: expected "
        + "11" * 48
        + ", got "
        + "00" * 48,
        F.TDX_MODULE_MISMATCH,
    ),
    Case(
        "module SEAMATTRIBUTES",
        sim(collateral=module(lambda m: m.__setitem__("attributes", "0100000000000000"))),
        P
        + "TDX module identity check"
        + C
        + "TDX module SEAMATTRIBUTES mismatch at byte 0: expected 01 (masked), got 00 (masked)",
        F.TDX_MODULE_MISMATCH,
    ),
    Case(
        "module ISVSVN",
        sim(collateral=module(lambda m: m["tcbLevels"][0]["tcb"].__setitem__("isvsvn", 9))),
        P
        + "TDX module TCB level check"
        + C
        + "TDX module ISVSVN 6 is below minimum required from TDX module TCB levels",
        F.TDX_MODULE_MISMATCH,
    ),
    Case(
        "TD debug",
        sim(quote=td_attributes("0100001000000000")),
        P + "Debug mode is enabled",
        F.TD_ATTRIBUTES,
    ),
    Case(
        "TD profiling",
        sim(quote=td_attributes("1000001000000000")),
        P + "TD profiling is enabled",
        F.TD_ATTRIBUTES,
    ),
    Case(
        "SEPT_VE_DISABLE clear",
        sim(quote=td_attributes("0000000000000000")),
        P + "SEPT_VE_DISABLE is not enabled",
        F.TD_ATTRIBUTES,
    ),
    Case(
        "TD migratable",
        sim(quote=td_attributes("0000003000000000")),
        P + "TD migration is enabled",
        F.TD_ATTRIBUTES,
    ),
    Case(
        "TD reserved bits",
        sim(quote=td_attributes("0000001002000000")),
        P + "Reserved bits in TD attributes are set",
        F.TD_ATTRIBUTES,
    ),
]

STATIC = [
    (P + "Unsupported DCAP quote version", F.UNSUPPORTED_QUOTE),
    (P + "TDX TEE quote must have version 4 or 5", F.UNSUPPORTED_QUOTE),
    (P + "SGX TEE quote must have version 3", F.NOT_TDX),
    (P + "Unsupported TEE type: 5", F.NOT_TDX),
    (P + "Unsupported certification data type: 7", F.UNSUPPORTED_QUOTE),
    (P + "Invalid QE auth data length", F.QE_REPORT_BINDING),
    (
        P
        + "Failed to decode quote"
        + C
        + "Could not decode `Header::version`:\n    \tNot enough data to fill buffer\n    ",
        F.MALFORMED_QUOTE,
    ),
    (P + "SGX quote with non-SGX TCB info in the collateral", F.COLLATERAL_MISMATCH),
    (P + "QE report validation failed" + C + "Debug mode is enabled", F.QE_IDENTITY_MISMATCH),
    (P + "Failed to evaluate the current TDX TCB (TEE_TCB_SVN2)", F.TCB_LEVEL_NOT_FOUND),
    (P + "SERVTD_EXT is enabled", F.TD_ATTRIBUTES),
    (P + "Invalid MR service TD", F.TD_ATTRIBUTES),
    (P + "Empty PCK certificate chain", F.CERTIFICATE_CHAIN),
    (P + "Intel extension not found", F.CERTIFICATE_CHAIN),
    (P + "Failed to parse PCK CRL" + C + "InvalidCrlNumber", F.MALFORMED_COLLATERAL),
    (P + "Failed to parse root CA CRL" + C + "UnsupportedCrlVersion", F.MALFORMED_COLLATERAL),
    (P + "Failed to verify certificate chain" + C + "CaUsedAsEndEntity", F.CERTIFICATE_CHAIN),
    (P + "Failed to verify certificate chain" + C + "RequiredEkuNotFound", F.CERTIFICATE_CHAIN),
    (P + "something dcap-qvl has never said", F.UNKNOWN),
]


@pytest.mark.parametrize("case", LIVE, ids=[c.name for c in LIVE])
def test_dcap_qvl_says_exactly_this_and_it_maps_to_the_reason(case: Case) -> None:
    with pytest.raises(ValueError) as info:
        case.run()
    assert str(info.value) == case.message
    error = classify(str(info.value))
    assert error.reason is case.reason
    assert error.message == one_line(case.message)
    assert "\n" not in error.message and not error.message.startswith("Verification failed")


@pytest.mark.parametrize(("message", "reason"), STATIC, ids=[m[len(P) :][:40] for m, _ in STATIC])
def test_messages_from_the_binary_map_to_their_reason(message: str, reason: QuoteFailure) -> None:
    assert classify(message).reason is reason


def test_every_row_of_the_table_is_exercised() -> None:
    # A row no case reaches is either dead or untested.
    # UNPROVOKED lists the rows for messages in dcap-qvl's binary that no case reaches.
    messages = [one_line(c.message) for c in LIVE] + [one_line(m) for m, _ in STATIC]
    needles = [needle for needle, _ in MESSAGE_TABLE]
    assert len(set(needles)) == len(needles)
    unreached = {n for n in needles if not any(n in m for m in messages)}
    assert unreached == UNPROVOKED


UNPROVOKED = {
    "Failed to parse root CA certificate",
    "Failed to parse quote",
    "Failed to decode QE report",
    "Failed to get TD10 report",
    "Failed to get signed quote scope",
    "Unsupported cert type",
    "should be valid JSON",
    "RFC3339 datetime is before Unix epoch",
    "Failed to decode TCB FMSPC",
    "Invalid TDX module tcbDate",
    "Failed to parse QE TCB date",
    "Unknown TCB status",
    "Failed to decode certificate",
    "Empty certificate chain",
    "No certificates found",
    "Failed to parse PCK extension",
    "Failed to find Fmspc",
    "Fmspc length mismatch",
    "PceSvn",
    "CpuSvn",
}


def test_every_reason_is_documented_and_its_value_is_its_name() -> None:
    source = inspect.getsource(errors)
    for reason in QuoteFailure:
        assert reason.value == reason.name
        assert f'{reason.name} = "{reason.name}"\n    """' in source, reason


def test_the_error_prints_reason_and_message() -> None:
    error = QuoteVerificationError(F.BAD_QUOTE_SIGNATURE, "ISV enclave report signature is invalid")
    assert str(error) == "BAD_QUOTE_SIGNATURE: ISV enclave report signature is invalid"
    assert str(QuoteVerificationError(F.NOT_TDX)) == "NOT_TDX"
    assert error.reason is F.BAD_QUOTE_SIGNATURE and error.tcb_status is None


def test_one_line_joins_the_cause_chain() -> None:
    raw = P + "Failed to verify certificate chain" + C + "CertRevoked"
    assert one_line(raw) == "Failed to verify certificate chain: CertRevoked"
    nested = P + "A" + C + "0: B\n    1: C"
    assert one_line(nested) == "A: B: C"
