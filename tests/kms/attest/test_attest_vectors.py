"""Real TDX quotes (Phala-Network/dcap-qvl samples) give exactly the verdicts of EXPECTED.json."""

from __future__ import annotations

import hashlib
import struct

import pytest
from attest_helpers import (
    MANIFEST,
    TDX_COLLATERAL,
    TDX_NOW,
    TDX_QUOTE,
    TDX_VALID_FROM,
    TDX_VALID_UNTIL,
    VECTORS,
    expected,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kms.attest import (
    INTEL_ROOT_CA,
    INTEL_ROOT_CA_SHA256,
    Collateral,
    QuoteFailure,
    QuoteVerificationError,
    parse_td_fields,
    verify_quote,
)

FIELD_NAMES = {  # EXPECTED.json name -> TDFields name
    "tee_tcb_svn": "tee_tcb_svn",
    "mr_seam": "mr_seam",
    "mr_signer_seam": "mr_signer_seam",
    "seam_attributes": "seam_attributes",
    "td_attributes": "td_attributes",
    "xfam": "xfam",
    "mr_td": "mr_td",
    "mr_config_id": "mr_config_id",
    "mr_owner": "mr_owner",
    "mr_owner_config": "mr_owner_config",
    "rt_mr0": "rtmr0",
    "rt_mr1": "rtmr1",
    "rt_mr2": "rtmr2",
    "rt_mr3": "rtmr3",
    "report_data": "report_data",
    "tee_tcb_svn_2": "tee_tcb_svn2",
    "mr_servicetd": "mr_service_td",
}


def load_quote(name: str) -> bytes:
    data = (VECTORS / name).read_bytes()
    if name.endswith((".hex", ".txt")):
        return bytes.fromhex(data.decode().strip().removeprefix("0x"))
    return data


def refusal(quote: bytes, collateral: object, now: int) -> QuoteVerificationError:
    with pytest.raises(QuoteVerificationError) as info:
        verify_quote(quote, collateral, now=now)  # type: ignore[arg-type]
    return info.value


def test_the_pinned_root_is_intels_trusted_root_ca_der() -> None:
    assert hashlib.sha256(INTEL_ROOT_CA).hexdigest() == INTEL_ROOT_CA_SHA256
    assert (
        INTEL_ROOT_CA_SHA256 == "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
    )
    assert (VECTORS / "TrustedRootCA.der").read_bytes() == INTEL_ROOT_CA
    cert = x509.load_der_x509_certificate(INTEL_ROOT_CA)
    assert cert.subject.rfc4514_string() == (
        "C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX Root CA"
    )


def test_tdx_quote_is_accepted_up_to_date_with_its_td_fields() -> None:
    case = expected("tdx_quote")
    verified = verify_quote(TDX_QUOTE, TDX_COLLATERAL, now=case["now_unix"])
    assert verified.tcb_status == case["expected"]["tcb_status"] == "UpToDate"
    assert list(verified.advisory_ids) == case["expected"]["advisory_ids"] == []
    assert verified.version == 4
    assert verified.fmspc == case["fmspc"]
    assert not verified.simulated
    fields = case["fields"]
    assert verified.mr_td.hex() == fields["mr_td"]
    assert [r.hex() for r in verified.rtmrs] == [fields[f"rt_mr{i}"] for i in range(4)]
    assert verified.report_data.hex() == fields["report_data"]
    for name, attribute in FIELD_NAMES.items():
        if name in fields:
            assert getattr(verified.fields, attribute).hex() == fields[name], name


def test_the_collateral_may_be_given_as_text_dict_or_object() -> None:
    collateral = Collateral.from_json(TDX_COLLATERAL)
    for form in (TDX_COLLATERAL, TDX_COLLATERAL.encode(), collateral.to_dict(), collateral):
        assert verify_quote(TDX_QUOTE, form, now=TDX_NOW).tcb_status == "UpToDate"


def test_outdated_v5_quote_is_rejected_for_no_matching_tcb_level() -> None:
    case = expected("tdx_quote_outdated")
    quote = load_quote("tdx_quote_outdated")
    error = refusal(
        quote, (VECTORS / "tdx_quote_outdated_collateral.json").read_text(), case["now_unix"]
    )
    assert error.reason is QuoteFailure.TCB_LEVEL_NOT_FOUND
    assert error.message == "No matching TCB level found"
    assert str(error) == "TCB_LEVEL_NOT_FOUND: No matching TCB level found"


def test_sgx_quote_is_rejected_as_not_tdx_although_dcap_qvl_accepts_it() -> None:
    import dcap_qvl

    case = expected("sgx_quote")
    quote = load_quote("sgx_quote")
    collateral_text = (VECTORS / "sgx_quote_collateral.json").read_text()
    report = dcap_qvl.verify_with_root_ca(
        quote,
        dcap_qvl.QuoteCollateralV3.from_json(collateral_text),
        INTEL_ROOT_CA,
        case["now_unix"],
    )
    assert report.status == "ConfigurationAndSWHardeningNeeded"  # what verify_as_sgx expects
    error = refusal(quote, collateral_text, case["now_unix"])
    assert error.reason is QuoteFailure.NOT_TDX
    assert parse_td_fields(quote) is None


def test_near_gas_quote_given_as_hex_is_accepted() -> None:
    case = expected("near-gas-test/quote_hex.txt")
    quote = load_quote("near-gas-test/quote_hex.txt")
    collateral = (VECTORS / "near-gas-test" / "quote_collateral.json").read_text()
    verified = verify_quote(quote, collateral, now=case["now_unix"])
    assert verified.tcb_status == "UpToDate"
    assert verified.mr_td.hex() == case["fields"]["mr_td"]
    assert verified.rtmr3.hex() == case["fields"]["rt_mr3"]


@pytest.mark.parametrize(
    "name",
    [
        "tdx_quote",
        "tdx_quote_outdated",
        "near-gas-test/quote_hex.txt",
        "tdx-quote.hex",
        "quote-from-tappd.hex",
    ],
)
def test_parse_td_fields_reads_every_field_of_every_tdx_vector(name: str) -> None:
    case = expected(name)
    fields = parse_td_fields(load_quote(name))
    assert fields is not None
    assert fields.version == case["header"]["version"]
    for key, attribute in FIELD_NAMES.items():
        if key in case["fields"]:
            assert getattr(fields, attribute).hex() == case["fields"][key], key
    if fields.version == 4:
        assert fields.tee_tcb_svn2 is None and fields.mr_service_td is None


NEGATIVES = [m for m in MANIFEST if m["file"].startswith("derived_negative/")]
EXPECTED_NEGATIVE_REASONS = {
    "derived_negative/report_data_bitflip.bin": QuoteFailure.BAD_QUOTE_SIGNATURE,
    "derived_negative/mr_td_bitflip.bin": QuoteFailure.BAD_QUOTE_SIGNATURE,
    "derived_negative/header_user_data_bitflip.bin": QuoteFailure.BAD_QUOTE_SIGNATURE,
    "derived_negative/attestation_key_bitflip.bin": QuoteFailure.QE_REPORT_BINDING,
    "derived_negative/qe_report_bitflip.bin": QuoteFailure.BAD_QE_REPORT_SIGNATURE,
    "derived_negative/quote_signature_bitflip.bin": QuoteFailure.BAD_QUOTE_SIGNATURE,
    "derived_negative/tcb_info_tampered.json": QuoteFailure.BAD_COLLATERAL_SIGNATURE,
    "derived_negative/qe_identity_tampered.json": QuoteFailure.BAD_COLLATERAL_SIGNATURE,
}


def test_the_manifest_lists_every_derived_negative_file() -> None:
    files = {p.name for p in (VECTORS / "derived_negative").iterdir()} - {"manifest.json"}
    assert {m["file"].removeprefix("derived_negative/") for m in NEGATIVES} == files
    assert set(EXPECTED_NEGATIVE_REASONS) == {m["file"] for m in NEGATIVES}


@pytest.mark.parametrize("case", NEGATIVES, ids=[m["file"] for m in NEGATIVES])
def test_every_mutated_quote_and_tampered_collateral_is_rejected(case: dict) -> None:  # type: ignore[type-arg]
    path = VECTORS / case["file"]
    if path.suffix == ".json":
        quote, collateral = TDX_QUOTE, path.read_text()
    else:
        quote, collateral = path.read_bytes(), (VECTORS / case["collateral"]).read_text()
    assert case["expected"] == "REJECT"
    error = refusal(quote, collateral, case["now_unix"])
    assert error.reason is EXPECTED_NEGATIVE_REASONS[case["file"]]


TIME_CASES = [m for m in MANIFEST if m["file"] == "tdx_quote"]


@pytest.mark.parametrize("case", TIME_CASES, ids=[str(m["now_unix"]) for m in TIME_CASES])
def test_times_outside_the_validity_window_are_rejected(case: dict) -> None:  # type: ignore[type-arg]
    error = refusal(TDX_QUOTE, TDX_COLLATERAL, case["now_unix"])
    assert error.reason in (QuoteFailure.COLLATERAL_EXPIRED, QuoteFailure.COLLATERAL_NOT_YET_VALID)


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (TDX_VALID_FROM - 1, QuoteFailure.COLLATERAL_NOT_YET_VALID),
        (TDX_VALID_UNTIL + 1, QuoteFailure.COLLATERAL_EXPIRED),
        (0, QuoteFailure.COLLATERAL_NOT_YET_VALID),
        (2524608000, QuoteFailure.COLLATERAL_EXPIRED),
    ],
)
def test_the_window_edges_are_exact(now: int, reason: QuoteFailure) -> None:
    assert verify_quote(TDX_QUOTE, TDX_COLLATERAL, now=TDX_VALID_FROM).tcb_status == "UpToDate"
    assert verify_quote(TDX_QUOTE, TDX_COLLATERAL, now=TDX_VALID_UNTIL).tcb_status == "UpToDate"
    assert refusal(TDX_QUOTE, TDX_COLLATERAL, now).reason is reason


def test_collateral_reports_its_own_validity_window() -> None:
    collateral = Collateral.from_json(TDX_COLLATERAL)
    assert collateral.valid_from() == TDX_VALID_FROM
    assert collateral.valid_until() == TDX_VALID_UNTIL
    assert collateral.fmspc == "B0C06F000000"
    assert collateral.tee == "TDX"


def test_trailing_bytes_after_the_signed_quote_are_ignored_as_by_dcap_qvl() -> None:
    (length,) = struct.unpack_from("<I", TDX_QUOTE, 632)
    assert len(TDX_QUOTE) - (636 + length) == 70
    trimmed = TDX_QUOTE[: 636 + length]
    assert (
        verify_quote(trimmed, TDX_COLLATERAL, now=TDX_NOW).mr_td
        == verify_quote(TDX_QUOTE, TDX_COLLATERAL, now=TDX_NOW).mr_td
    )


def test_a_real_v5_quote_signs_header_body_descriptor_and_td_report_15() -> None:
    # The layout the simulated v5 quotes follow, checked on Intel's own bytes.
    quote = load_quote("tdx_quote_outdated")
    body_type, body_size = struct.unpack_from("<HI", quote, 48)
    assert (body_type, body_size) == (3, 648)
    end = 54 + body_size
    signature, key = quote[end + 4 : end + 68], quote[end + 68 : end + 132]
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + key)
    der = encode_dss_signature(int.from_bytes(signature[:32]), int.from_bytes(signature[32:]))
    public.verify(der, quote[:end], ec.ECDSA(hashes.SHA256()))


def test_an_intel_quote_under_another_root_is_refused_as_untrusted_root() -> None:
    from attest_helpers import simulated

    error = refusal_with_root(simulated().root_ca_der)
    assert error.reason is QuoteFailure.UNTRUSTED_ROOT


def refusal_with_root(root: bytes) -> QuoteVerificationError:
    with pytest.raises(QuoteVerificationError) as info:
        verify_quote(TDX_QUOTE, TDX_COLLATERAL, now=TDX_NOW, root_ca=root)
    return info.value
