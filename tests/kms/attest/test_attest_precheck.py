"""The cheap quote checks a node runs before fetching collateral, and the collateral floor.

Whatever bytes arrive, ``parse_tdx_quote`` and ``check_pck_chain`` refuse with a
QuoteVerificationError or accept: a request handler never crashes on them.
"""

from __future__ import annotations

import pytest
from attest_helpers import NOW, TDX_COLLATERAL, TDX_NOW, TDX_QUOTE, simulated
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kms.attest import (
    INTEL_ROOT_CA,
    Collateral,
    CollateralFloor,
    QuoteFailure,
    QuoteVerificationError,
    Verifier,
    check_pck_chain,
    parse_tdx_quote,
    verify_quote,
)

TEE = simulated(51)
ROOTS = [INTEL_ROOT_CA, TEE.root_ca_der]
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def precheck(quote: bytes, now: int = NOW) -> str:
    try:
        check_pck_chain(parse_tdx_quote(quote), ROOTS, now=now)
    except QuoteVerificationError as exc:
        return exc.reason.name
    return "ACCEPTED"


def test_genuine_chains_pass_and_name_their_root() -> None:
    assert check_pck_chain(parse_tdx_quote(TDX_QUOTE), ROOTS, now=TDX_NOW) == INTEL_ROOT_CA
    assert check_pck_chain(parse_tdx_quote(TEE.quote(b"")), ROOTS, now=NOW) == TEE.root_ca_der
    rogue = simulated(52).quote(b"")
    assert precheck(rogue) == "UNTRUSTED_ROOT"
    # Outside its certificates' validity.
    assert precheck(TEE.quote(b""), now=NOW + 20 * 365 * 86_400) == "CERTIFICATE_CHAIN"


def _self_signed_rsa_pem() -> bytes:
    import datetime

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "not a PCK")])
    t = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(t)
        .not_valid_after(t + datetime.timedelta(days=365 * 30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_chain_swapped_for_other_certificates_is_refused() -> None:
    quote = TEE.quote(b"")
    chain = TEE.pck_chain_pem.encode()
    assert chain in quote
    leaf_end = chain.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
    for replacement in (
        _self_signed_rsa_pem() * 2,  # another algorithm
        chain[:leaf_end] * 3,  # the leaf alone, repeated
        chain[leaf_end:],  # the chain without its leaf
    ):
        swapped = quote.replace(chain, replacement.ljust(len(chain), b"\n")[: len(chain)])
        assert precheck(swapped) in {"CERTIFICATE_CHAIN", "UNTRUSTED_ROOT", "MALFORMED_QUOTE"}


@FUZZ
@given(data=st.binary(max_size=6000))
def test_arbitrary_bytes_are_refused(data: bytes) -> None:
    assert precheck(data) != "ACCEPTED"


@FUZZ
@given(at=st.integers(0, 5000), value=st.binary(min_size=1, max_size=8), cut=st.booleans())
# A PCK certificate whose subject name does not parse: refused, never a ValueError.
@example(at=3853, value=b"A/", cut=False)
def test_mutated_quotes_are_refused_or_keep_their_chain(at: int, value: bytes, cut: bool) -> None:
    base = TEE.quote(b"fuzz")
    quote = bytearray(base)
    at %= len(quote)
    quote[at : at + len(value)] = value
    if cut:
        del quote[at + len(value) :]
    result = precheck(bytes(quote))
    if result == "ACCEPTED":
        assert parse_tdx_quote(bytes(quote)).fmspc == TEE.fmspc.hex().upper()


def test_the_collateral_floor_refuses_old_collateral() -> None:
    quote = TEE.quote(b"")
    current = TEE.collateral(NOW, evaluation_data_number=19)
    verified = verify_quote(quote, current, now=NOW, root_ca=TEE.root_ca_der)
    assert verified.tcb_evaluation_data_number == 19
    intel = verify_quote(TDX_QUOTE, TDX_COLLATERAL, now=TDX_NOW)
    assert (
        intel.tcb_evaluation_data_number
        == Collateral.from_json(TDX_COLLATERAL).tcb_evaluation_data_number
    )
    cases = [
        (CollateralFloor(min_tcb_evaluation_data_number=20), current),
        (CollateralFloor(min_issue_date=NOW), current),  # issued a day before NOW
        (CollateralFloor(max_age=3600), current),
    ]
    for floor, coll in cases:
        with pytest.raises(QuoteVerificationError) as refused:
            Verifier([TEE.root_ca_der], simulated_allowed=True, floor=floor).verify(
                parse_tdx_quote(quote), coll, now=NOW
            )
        assert refused.value.reason is QuoteFailure.COLLATERAL_STALE
    ok = CollateralFloor(min_tcb_evaluation_data_number=19, min_issue_date=NOW - 86_400)
    Verifier([TEE.root_ca_der], simulated_allowed=True, floor=ok).verify(quote, current, now=NOW)
    for bad in ({"min_tcb_evaluation_data_number": -1}, {"max_age": 0}, {"min_issue_date": True}):
        with pytest.raises(ValueError):
            CollateralFloor(**bad)  # type: ignore[arg-type]


def test_older_collateral_is_older_in_any_part() -> None:
    new = Collateral.from_dict(TEE.collateral(NOW, evaluation_data_number=18))
    assert not new.older_than(new)
    assert Collateral.from_dict(TEE.collateral(NOW, evaluation_data_number=17)).older_than(new)
    assert Collateral.from_dict(TEE.collateral(NOW - 60, evaluation_data_number=18)).older_than(new)
    assert not Collateral.from_dict(TEE.collateral(NOW + 60, evaluation_data_number=18)).older_than(
        new
    )
