"""The clock-free calendar arithmetic and the DER encoder behind the simulated PKI."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from kms.attest import _der as der
from kms.attest import verify_quote
from kms.attest._time import asn1_time, civil_from_days, days_from_civil, parse_rfc3339, rfc3339

UTC = dt.UTC


@given(st.integers(0, 253402300799))  # 1970-01-01 .. 9999-12-31T23:59:59
def test_rfc3339_agrees_with_datetime(t: int) -> None:
    expected = dt.datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert rfc3339(t) == expected
    assert parse_rfc3339(expected) == t


@given(st.integers(-719_162, 2_932_896))  # 0001-01-01 .. 9999-12-31
def test_civil_days_round_trip(days: int) -> None:
    date = dt.date(1970, 1, 1) + dt.timedelta(days=days)
    assert civil_from_days(days) == (date.year, date.month, date.day)
    assert days_from_civil(date.year, date.month, date.day) == days


@pytest.mark.parametrize(
    ("text", "t"),
    [
        ("2025-07-19T10:00:35Z", 1752919235),
        ("2025-07-19T10:00:35.123456Z", 1752919235),
        ("2025-07-19T12:00:35+02:00", 1752919235),
        ("2025-07-19t10:00:35z", 1752919235),
        ("2024-02-29T00:00:00Z", 1709164800),
    ],
)
def test_parse_rfc3339_accepts_fractions_and_offsets(text: str, t: int) -> None:
    assert parse_rfc3339(text) == t


@pytest.mark.parametrize(
    "text", ["yesterday", "2025-07-19", "2025-13-01T00:00:00Z", "2025-07-19T10:00:35"]
)
def test_parse_rfc3339_rejects_what_is_not_a_date_time(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339(text)


def test_x509_times_switch_to_generalized_time_in_2050() -> None:
    assert asn1_time(2524607999) == ("491231235959Z", False)
    assert asn1_time(2524608000) == ("20500101000000Z", True)
    assert asn1_time(0) == ("700101000000Z", False)


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (0, "020100"),
        (127, "02017f"),
        (128, "02020080"),
        (256, "02020100"),
        (2**64, "0209010000000000000000"),
    ],
)
def test_integers_are_minimal_twos_complement(value: int, encoding: str) -> None:
    assert der.integer(value).hex() == encoding


def test_primitives_match_x690() -> None:
    assert der.oid("1.2.840.10045.4.3.2").hex() == "06082a8648ce3d040302"
    assert der.oid("1.2.840.113741.1.13.1").hex() == "06092a864886f84d010d01"
    assert der.named_bits(5, 6).hex() == "03020106"  # keyCertSign | cRLSign
    assert der.named_bits(0, 1).hex() == "030206c0"  # digitalSignature | nonRepudiation
    assert der.boolean(True).hex() == "0101ff"
    assert der.tlv(0x04, bytes(200))[:3].hex() == "0481c8"
    assert der.tlv(0x04, bytes(300))[:4].hex() == "0482012c"
    assert der.set_of(b"\x02\x01\x02", b"\x02\x01\x01") == bytes.fromhex("3106020101020102")
    with pytest.raises(ValueError):
        der.integer(-1)
    with pytest.raises(ValueError):
        der.oid("3.1")


def test_certificates_valid_past_2049_carry_generalized_time() -> None:
    from attest_helpers import simulated

    now = 2_300_000_000  # 2042: the root expires in 2050, the others in 2049
    tee = simulated(61, now=now)
    root = x509.load_der_x509_certificate(tee.root_ca_der)
    assert root.not_valid_after_utc.timestamp() == now + 8 * 365 * 86_400
    assert root.not_valid_after_utc.year == 2050
    leaf = x509.load_pem_x509_certificates(tee.pck_chain_pem.encode())[0]
    assert leaf.not_valid_after_utc.timestamp() == now + 7 * 365 * 86_400
    assert (
        root.subject.rfc4514_string()
        == "O=SimTEE Test PKI (NOT Intel),CN=SimTEE Root CA (NOT Intel)"
    )
    verified = verify_quote(tee.quote(b""), tee.collateral(now), now=now, root_ca=tee.root_ca_der)
    assert verified.simulated
