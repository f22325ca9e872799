"""What verification remembers between quotes, and that it never lets a quote through that a
fresh verification would refuse.

Remembered (bounded): a PCK chain whose signatures verified to a pinned root, keyed by its
exact certificates and the roots tried; collateral's parsed JSON documents, keyed by their
exact text; collateral converted to dcap-qvl's object, keyed by the collateral itself.
"""

from __future__ import annotations

import pytest
from attest_helpers import NOW, edit_document, flip, simulated

from kms.attest import (
    Collateral,
    CollateralFloor,
    QuoteFailure,
    QuoteVerificationError,
    Verifier,
    check_pck_chain,
    parse_tdx_quote,
)
from kms.attest import verify as verify_module

TEE = simulated(61)
OTHER = simulated(62)
COLLATERAL = Collateral.from_dict(TEE.collateral(NOW))
VERIFIER = Verifier([TEE.root_ca_der], simulated_allowed=True)


def reason(fn: object, *args: object, **kwargs: object) -> QuoteFailure:
    with pytest.raises(QuoteVerificationError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value.reason


def test_a_platforms_chain_is_checked_once_and_reused() -> None:
    verify_module._CHAINS.clear()
    first, second = parse_tdx_quote(TEE.quote(b"")), parse_tdx_quote(TEE.quote(b"\x01"))
    assert first.pck_chain == second.pck_chain  # one platform, one chain
    assert check_pck_chain(first, VERIFIER.roots, now=NOW) == TEE.root_ca_der
    assert len(verify_module._CHAINS) == 1
    assert check_pck_chain(second, VERIFIER.roots, now=NOW) == TEE.root_ca_der
    assert len(verify_module._CHAINS) == 1


def test_a_remembered_chain_is_still_judged_at_now() -> None:
    parsed = parse_tdx_quote(TEE.quote(b""))
    check_pck_chain(parsed, VERIFIER.roots, now=NOW)
    later = NOW + 20 * 365 * 86_400
    assert reason(check_pck_chain, parsed, VERIFIER.roots, now=later) is (
        QuoteFailure.CERTIFICATE_CHAIN
    )
    assert reason(check_pck_chain, parsed, VERIFIER.roots, now=0) is QuoteFailure.CERTIFICATE_CHAIN
    assert check_pck_chain(parsed, VERIFIER.roots, now=NOW) == TEE.root_ca_der


def test_a_remembered_chain_never_answers_for_another_chain_or_other_roots() -> None:
    check_pck_chain(parse_tdx_quote(TEE.quote(b"")), VERIFIER.roots, now=NOW)
    # Another platform's chain, under another root: a miss, refused as before.
    rogue = parse_tdx_quote(OTHER.quote(b""))
    assert reason(check_pck_chain, rogue, VERIFIER.roots, now=NOW) is QuoteFailure.UNTRUSTED_ROOT
    # The same chain under roots without its own: a miss too.
    parsed = parse_tdx_quote(TEE.quote(b""))
    assert reason(check_pck_chain, parsed, (OTHER.root_ca_der,), now=NOW) is (
        QuoteFailure.UNTRUSTED_ROOT
    )
    # A chain with a certificate altered (its signature no longer verifies): a miss, refused.
    quote = TEE.quote(b"")
    pem = TEE.pck_chain_pem.encode()
    at = quote.index(pem) + pem.index(b"\n") + 200  # inside the leaf's base64
    tampered = quote[:at] + (b"A" if quote[at : at + 1] != b"A" else b"B") + quote[at + 1 :]
    try:
        altered = parse_tdx_quote(tampered)
    except QuoteVerificationError as exc:
        assert exc.reason is QuoteFailure.CERTIFICATE_CHAIN
    else:
        assert altered.pck_chain != parsed.pck_chain
        with pytest.raises(QuoteVerificationError):
            check_pck_chain(altered, VERIFIER.roots, now=NOW)


def test_a_cached_chain_does_not_save_a_tampered_quote() -> None:
    good = TEE.quote(b"")
    assert VERIFIER.verify(parse_tdx_quote(good), COLLATERAL, now=NOW).mr_td
    forged = parse_tdx_quote(flip(TEE.quote(b""), 184))  # an altered TD report byte
    assert reason(VERIFIER.verify, forged, COLLATERAL, now=NOW) is QuoteFailure.BAD_QUOTE_SIGNATURE


def test_the_chain_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = verify_module._Lru(3)
    value = verify_module._VerifiedChain(b"root", 0.0, 1.0)
    for k in range(10):
        cache.put((k,), value)
        assert len(cache) <= 3
    assert cache.get((0,)) is None and cache.get((9,)) is value
    cache.get((7,))  # used: kept over 8
    cache.put((10,), value)
    assert cache.get((7,)) is value and cache.get((8,)) is None
    assert verify_module._CHAINS.size == verify_module.CHAIN_CACHE_SIZE


def test_collateral_documents_are_read_from_their_own_text() -> None:
    raw = TEE.collateral(NOW)
    assert Collateral.from_dict(raw).tcb_evaluation_data_number == (
        COLLATERAL.tcb_evaluation_data_number
    )
    bumped = Collateral.from_dict(
        edit_document(TEE, raw, "tcb_info", lambda d: d.__setitem__("tcbEvaluationDataNumber", 99))
    )
    number = COLLATERAL.tcb_evaluation_data_number
    assert bumped.tcb_evaluation_data_number == min(99, number)
    floor = CollateralFloor(min_tcb_evaluation_data_number=number + 1)
    assert reason(floor.check, COLLATERAL, NOW) is QuoteFailure.COLLATERAL_STALE
    with pytest.raises(TypeError):
        COLLATERAL._document("tcb_info")["fmspc"] = "x"  # type: ignore[index]


def test_collateral_with_a_bad_signature_is_refused_after_good_collateral_verified() -> None:
    quote = parse_tdx_quote(TEE.quote(b""))
    assert VERIFIER.verify(quote, COLLATERAL, now=NOW).tcb_status == "UpToDate"
    raw = TEE.collateral(NOW)
    bad = Collateral.from_dict(
        raw | {"tcb_info_signature": flip(bytes.fromhex(raw["tcb_info_signature"]), 3).hex()}
    )
    assert bad != COLLATERAL
    assert reason(VERIFIER.verify, quote, bad, now=NOW) is QuoteFailure.BAD_COLLATERAL_SIGNATURE
    # And the good collateral still verifies afterwards.
    assert VERIFIER.verify(quote, COLLATERAL, now=NOW).tcb_status == "UpToDate"


def test_a_platforms_facts_are_read_from_its_own_chain() -> None:
    verify_module._PLATFORMS.clear()
    fresh = parse_tdx_quote(TEE.quote(b""))
    assert len(verify_module._PLATFORMS) == 1
    again = parse_tdx_quote(TEE.quote(b"\x02"))
    assert (again.fmspc, again.ca, again.pck_chain, again.platform_instance_id) == (
        fresh.fmspc,
        fresh.ca,
        fresh.pck_chain,
        fresh.platform_instance_id,
    )
    assert again.fields.report_data == b"\x02" + bytes(63)  # the TD fields are this quote's
    other = simulated(63, fmspc=bytes.fromhex("00A06F000000"))
    theirs = parse_tdx_quote(other.quote(b""))
    assert theirs.fmspc == "00A06F000000" != fresh.fmspc
    assert theirs.pck_chain != fresh.pck_chain
    # A quote whose chain does not parse is refused as before, and not remembered.
    size = len(verify_module._PLATFORMS)
    quote = TEE.quote(b"")
    pem = TEE.pck_chain_pem.encode()
    broken = quote.replace(pem, pem.replace(b"BEGIN CERTIFICATE", b"BEGIN CERTIFICATX"))
    assert reason(parse_tdx_quote, broken) in (
        QuoteFailure.CERTIFICATE_CHAIN,
        QuoteFailure.MALFORMED_QUOTE,
    )
    assert len(verify_module._PLATFORMS) == size
