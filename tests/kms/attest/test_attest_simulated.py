"""The simulated TEE: real layouts under a generated root, refused unless allowed, reproducible."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import dcap_qvl
import pytest
from attest_helpers import (
    NOW,
    TDX_COLLATERAL,
    TDX_NOW,
    TDX_QUOTE,
    edit_document,
    flip,
    seeded,
    simulated,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from kms.attest import (
    DEFAULT_ALLOWED_STATUSES,
    INTEL_ROOT_CA,
    Collateral,
    QuoteFailure,
    QuoteVerificationError,
    Verifier,
    parse_td_fields,
    verify_quote,
)
from kms.attest.simulated import PLATFORM_STATUSES, SimulatedTEE

TEE = simulated(11)
COLLATERAL = TEE.collateral(NOW)
MEASUREMENTS: dict[str, Any] = {
    "mr_td": hashlib.sha384(b"mrtd").digest(),
    "rtmr0": hashlib.sha384(b"rtmr0").digest(),
    "rtmr1": hashlib.sha384(b"rtmr1").digest(),
    "rtmr2": hashlib.sha384(b"rtmr2").digest(),
    "rtmr3": hashlib.sha384(b"rtmr3").digest(),
}
REPORT_DATA = hashlib.sha512(b"key request").digest()


def refused(
    quote: bytes, collateral: object = COLLATERAL, **kwargs: object
) -> QuoteVerificationError:
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("root_ca", TEE.root_ca_der)
    with pytest.raises(QuoteVerificationError) as info:
        verify_quote(quote, collateral, **kwargs)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("version", [4, 5])
def test_a_simulated_quote_verifies_under_its_root_with_every_field_read_back(version: int) -> None:
    quote = TEE.quote(REPORT_DATA, version=version, **MEASUREMENTS)
    verified = verify_quote(quote, COLLATERAL, now=NOW, root_ca=TEE.root_ca_der)
    assert verified.tcb_status == "UpToDate" and verified.advisory_ids == ()
    assert verified.simulated
    assert verified.version == version
    assert verified.fmspc == "53494D544545"
    assert verified.report_data == REPORT_DATA
    for name, value in MEASUREMENTS.items():
        assert getattr(verified, name) == value
    assert parse_td_fields(quote) == verified.fields
    if version == 5:
        assert verified.fields.tee_tcb_svn2 == verified.fields.tee_tcb_svn
        assert verified.fields.mr_service_td == bytes(48)
        assert isinstance(dcap_qvl.parse_quote(quote).report, dcap_qvl.TdReport15)


def test_the_quote_has_intels_v4_layout() -> None:
    quote = TEE.quote(b"short")
    version, key_type, tee_type = struct.unpack_from("<HHI", quote, 0)
    assert (version, key_type, tee_type) == (4, 2, 0x81)
    assert quote[12:28].hex() == "939a7233f79c4ca9940a0db3957f0607"
    assert quote[568:632] == b"short" + bytes(59)  # REPORTDATA, zero-padded
    (length,) = struct.unpack_from("<I", quote, 632)
    assert len(quote) == 636 + length
    assert struct.unpack_from("<HIH", quote, 764)[0] == 6  # certification data: QE report
    assert struct.unpack_from("<H", quote, 1218)[0] == 32  # QE auth data
    assert struct.unpack_from("<H", quote, 1252)[0] == 5  # PCK chain, PEM
    assert quote[1258:].startswith(b"-----BEGIN CERTIFICATE-----")
    parsed = dcap_qvl.parse_quote(quote)
    assert parsed.quote_type() == "TDX" and parsed.ca() == "platform"
    extension = parsed.pck_extension()
    assert extension is not None and extension.fmspc == bytes.fromhex("53494D544545")
    assert extension.ppid == TEE.ppid


def test_simulated_quotes_are_refused_under_intels_root() -> None:
    quote = TEE.quote(REPORT_DATA)
    assert refused(quote, root_ca=INTEL_ROOT_CA).reason is QuoteFailure.UNTRUSTED_ROOT
    with pytest.raises(QuoteVerificationError) as info:
        verify_quote(quote, COLLATERAL, now=NOW)  # Intel's root is the default
    assert info.value.reason is QuoteFailure.UNTRUSTED_ROOT


def test_another_simulated_platform_does_not_vouch_for_this_one() -> None:
    other = simulated(12)
    quote = TEE.quote(REPORT_DATA)
    assert refused(quote, root_ca=other.root_ca_der).reason is QuoteFailure.UNTRUSTED_ROOT
    assert refused(quote, other.collateral(NOW)).reason is QuoteFailure.UNTRUSTED_ROOT


def test_the_verifier_accepts_simulated_quotes_only_when_allowed() -> None:
    quote = TEE.quote(REPORT_DATA, **MEASUREMENTS)
    allowed = Verifier([INTEL_ROOT_CA, TEE.root_ca_der], simulated_allowed=True)
    verified = allowed.verify(quote, COLLATERAL, now=NOW)
    assert verified.simulated and verified.mr_td == MEASUREMENTS["mr_td"]

    for verifier in (
        Verifier([INTEL_ROOT_CA, TEE.root_ca_der], simulated_allowed=False),
        Verifier([INTEL_ROOT_CA, TEE.root_ca_der]),
        Verifier(),
    ):
        assert verifier.roots == (INTEL_ROOT_CA,)
        with pytest.raises(QuoteVerificationError) as info:
            verifier.verify(quote, COLLATERAL, now=NOW)
        assert info.value.reason is QuoteFailure.UNTRUSTED_ROOT


def test_the_verifier_still_accepts_real_quotes_and_says_they_are_not_simulated() -> None:
    for verifier in (
        Verifier(),
        Verifier([INTEL_ROOT_CA, TEE.root_ca_der], simulated_allowed=True),
    ):
        verified = verifier.verify(TDX_QUOTE, TDX_COLLATERAL, now=TDX_NOW)
        assert verified.tcb_status == "UpToDate" and not verified.simulated


def test_the_verifier_tries_intels_root_first_and_only_falls_through_on_untrusted_root() -> None:
    verifier = Verifier([TEE.root_ca_der, INTEL_ROOT_CA], simulated_allowed=True)
    assert verifier.roots == (INTEL_ROOT_CA, TEE.root_ca_der)
    assert verifier.simulated_roots == (TEE.root_ca_der,)
    # A refusal other than UNTRUSTED_ROOT is final, from whichever root said it.
    forged = flip(TEE.quote(REPORT_DATA), 184)
    with pytest.raises(QuoteVerificationError) as info:
        verifier.verify(forged, COLLATERAL, now=NOW)
    assert info.value.reason is QuoteFailure.BAD_QUOTE_SIGNATURE


def test_a_verifier_needs_a_usable_root() -> None:
    with pytest.raises(ValueError, match="simulated_allowed"):
        Verifier([TEE.root_ca_der])
    assert Verifier([TEE.root_ca_der], simulated_allowed=True).roots == (TEE.root_ca_der,)
    with pytest.raises(TypeError):
        Verifier(INTEL_ROOT_CA)  # type: ignore[arg-type]  # one root is not a list of roots
    with pytest.raises(ValueError, match="inadmissible"):
        Verifier(allowed_statuses={"Revoked"})


@pytest.mark.parametrize("status", [s for s in PLATFORM_STATUSES if s != "Revoked"])
def test_each_minted_tcb_status_comes_back(status: str) -> None:
    advisories = () if status == "UpToDate" else ("INTEL-SA-00837", "INTEL-SA-00960")
    tee = simulated(13, tcb_status=status, advisory_ids=advisories)
    verified = verify_quote(
        tee.quote(b"s"),
        tee.collateral(NOW),
        now=NOW,
        root_ca=tee.root_ca_der,
        allowed_statuses={status},
    )
    assert verified.tcb_status == status
    assert verified.advisory_ids == advisories


@pytest.mark.parametrize(
    "status", ["OutOfDate", "ConfigurationNeeded", "OutOfDateConfigurationNeeded"]
)
def test_a_status_not_admitted_is_refused_with_the_status_named(status: str) -> None:
    tee = simulated(14, tcb_status=status, advisory_ids=["INTEL-SA-00615"])
    assert status not in DEFAULT_ALLOWED_STATUSES
    error = refused(tee.quote(b"s"), tee.collateral(NOW), root_ca=tee.root_ca_der)
    assert error.reason is QuoteFailure.TCB_STATUS_NOT_ALLOWED
    assert error.tcb_status == status and error.advisory_ids == ("INTEL-SA-00615",)
    assert f"TCB status {status} (INTEL-SA-00615) is not admitted" in error.message
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True, allowed_statuses={status})
    assert verifier.verify(tee.quote(b"s"), tee.collateral(NOW), now=NOW).tcb_status == status


def test_sw_hardening_needed_is_admitted_by_default() -> None:
    tee = simulated(15, tcb_status="SWHardeningNeeded")
    verified = verify_quote(tee.quote(b""), tee.collateral(NOW), now=NOW, root_ca=tee.root_ca_der)
    assert verified.tcb_status == "SWHardeningNeeded"


def test_a_revoked_tcb_is_refused_whatever_is_admitted() -> None:
    tee = simulated(16, tcb_status="Revoked")
    error = refused(tee.quote(b""), tee.collateral(NOW), root_ca=tee.root_ca_der)
    assert error.reason is QuoteFailure.TCB_REVOKED
    with pytest.raises(ValueError, match="Revoked"):
        verify_quote(tee.quote(b""), tee.collateral(NOW), now=NOW, allowed_statuses={"Revoked"})


def test_same_seed_gives_byte_identical_roots_quotes_and_collateral() -> None:
    a, b = simulated(21), simulated(21)
    assert a.root_ca_der == b.root_ca_der
    assert a.collateral(NOW) == b.collateral(NOW)
    for version in (4, 5):
        assert a.quote(REPORT_DATA, version=version, **MEASUREMENTS) == b.quote(
            REPORT_DATA, version=version, **MEASUREMENTS
        )
    # Quoting draws nothing from the rng: the order of calls does not matter.
    assert a.quote(b"x") == a.quote(b"x")
    c = simulated(22)
    assert c.root_ca_der != a.root_ca_der and c.quote(b"x") != a.quote(b"x")


def test_every_key_and_identifier_comes_from_the_rng() -> None:
    drawn: list[int] = []
    source = seeded(23)

    def rng(n: int) -> bytes:
        drawn.append(n)
        return source(n)

    SimulatedTEE(rng, now=NOW)
    assert sum(drawn) == 5 * 48 + 4 * 16 + 3 * 16  # 5 keys, 4 serials, PPID, instance ID, QE ID


def test_the_pki_is_well_formed_x509_in_intels_shape() -> None:
    root = x509.load_der_x509_certificate(TEE.root_ca_der)
    chain = x509.load_pem_x509_certificates(TEE.pck_chain_pem.encode())
    leaf, pck_ca, root_again = chain
    assert root_again == root
    root.verify_directly_issued_by(root)
    pck_ca.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(pck_ca)
    assert "NOT Intel" in root.subject.rfc4514_string()
    assert "Platform" in pck_ca.subject.rfc4514_string()
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    constraints = pck_ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_cert_sign
    with pytest.raises(x509.ExtensionNotFound):
        leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert root.not_valid_before_utc.timestamp() == NOW - 86_400
    assert leaf.not_valid_after_utc.timestamp() == NOW + 7 * 365 * 86_400
    for field in ("root_ca_crl", "pck_crl"):
        crl = x509.load_der_x509_crl(bytes.fromhex(COLLATERAL[field]))
        issuer = root if field == "root_ca_crl" else pck_ca
        assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        assert crl.next_update_utc is not None
        assert crl.next_update_utc.timestamp() == NOW + 30 * 86_400


def test_collateral_is_valid_from_a_day_before_until_thirty_days_after() -> None:
    quote = TEE.quote(b"")
    collateral = Collateral.from_dict(COLLATERAL)
    assert (collateral.valid_from(), collateral.valid_until()) == (
        NOW - 86_400,
        NOW + 30 * 86_400 - 1,
    )
    assert collateral.fmspc == "53494D544545"
    for now in (collateral.valid_from(), NOW, collateral.valid_until()):
        verify_quote(quote, COLLATERAL, now=now, root_ca=TEE.root_ca_der)
    assert (
        refused(quote, now=collateral.valid_from() - 1).reason
        is QuoteFailure.COLLATERAL_NOT_YET_VALID
    )
    assert (
        refused(quote, now=collateral.valid_until() + 1).reason is QuoteFailure.COLLATERAL_EXPIRED
    )
    # Fresh collateral keeps the platform verifiable for the certificates' lifetime.
    later = NOW + 3 * 365 * 86_400
    verify_quote(quote, TEE.collateral(later), now=later, root_ca=TEE.root_ca_der)


@pytest.mark.parametrize(
    ("revoke", "reason"),
    [
        (["pck"], QuoteFailure.CERTIFICATE_REVOKED),
        (["pck_ca"], QuoteFailure.CERTIFICATE_REVOKED),
        (["tcb_signing"], QuoteFailure.CERTIFICATE_REVOKED),
    ],
)
def test_revoked_certificates_are_refused(revoke: list[str], reason: QuoteFailure) -> None:
    assert refused(TEE.quote(b""), TEE.collateral(NOW, revoke=revoke)).reason is reason


@pytest.mark.parametrize(
    ("attributes", "what"),
    [
        ("0100001000000000", "Debug mode"),
        ("1000001000000000", "profiling"),
        ("0000000000000000", "SEPT_VE_DISABLE"),
        ("0000003000000000", "migration"),
        ("0000001002000000", "Reserved bits"),
    ],
)
def test_a_td_in_an_unsafe_mode_is_refused(attributes: str, what: str) -> None:
    error = refused(TEE.quote(b"", td_attributes=bytes.fromhex(attributes)))
    assert error.reason is QuoteFailure.TD_ATTRIBUTES and what in error.message


@pytest.mark.parametrize("offset", [28, 184, 376, 424, 472, 520, 568, 631])
def test_any_altered_td_report_byte_breaks_the_quote_signature(offset: int) -> None:
    assert refused(flip(TEE.quote(REPORT_DATA), offset)).reason is QuoteFailure.BAD_QUOTE_SIGNATURE


def test_collateral_for_another_fmspc_is_refused() -> None:
    collateral = edit_document(
        TEE, COLLATERAL, "tcb_info", lambda d: d.__setitem__("fmspc", "00606A000000")
    )
    assert refused(TEE.quote(b""), collateral).reason is QuoteFailure.COLLATERAL_MISMATCH


def test_minting_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="status"):
        simulated(1, tcb_status="Fine")
    with pytest.raises(ValueError, match="64"):
        TEE.quote(bytes(65))
    with pytest.raises(ValueError, match="48"):
        TEE.quote(b"", mr_td=bytes(32))
    with pytest.raises(ValueError, match="version"):
        TEE.quote(b"", version=3)
    with pytest.raises(ValueError, match="revoke"):
        TEE.collateral(NOW, revoke=["root"])
