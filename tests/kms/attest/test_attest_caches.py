"""What verification remembers between quotes, and that it never lets a quote through that a
fresh verification would refuse.

Remembered (bounded): a PCK chain whose signatures verified to a pinned root, keyed by its
exact certificates and the roots tried; collateral's parsed JSON documents, keyed by their
exact text; collateral converted to dcap-qvl's object, keyed by the collateral itself; and
dcap-qvl's verdict on a quote, reused for a quote equal to it in every byte but its signature
and the TD's measured fields, under the same root and collateral, once that quote's own
signature verifies, and only while everything it was reached with is valid.
"""

from __future__ import annotations

import dataclasses
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
    simulated,
)
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kms.attest import (
    Collateral,
    CollateralFloor,
    QuoteFailure,
    QuoteVerificationError,
    VerifiedQuote,
    Verifier,
    check_pck_chain,
    parse_tdx_quote,
    verify_quote,
)
from kms.attest import simulated as sim
from kms.attest import verify as verify_module
from kms.attest._time import rfc3339
from kms.attest.simulated import SimulatedTEE, _sign_raw

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


# --- dcap-qvl verdicts reused for later quotes of the same platform ---------------------------


class _Counting:
    """dcap-qvl's full verification, counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = dcap_qvl.verify_with_root_ca

        def counted(*args: object) -> object:
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(dcap_qvl, "verify_with_root_ca", counted)


def _outcome(quote: bytes, collateral: Collateral, now: int = NOW, **kwargs: object) -> object:
    """What verification says of ``quote``: its refusal reason, or everything it returned."""
    try:
        return VERIFIER.verify(parse_tdx_quote(quote), collateral, now=now, **kwargs)  # type: ignore[arg-type]
    except QuoteVerificationError as exc:
        return exc.reason


def _signed_length(quote: bytes) -> int:
    return 48 + 584 if quote[0] == 4 else 54 + int.from_bytes(quote[50:54], "little")


def _resigned(tee: SimulatedTEE, quote: bytes) -> bytes:
    """``quote`` signed again by its platform's own attestation key: what the genuine quoting
    enclave produces for a TD with these report bytes."""
    end = _signed_length(quote)
    signature = _sign_raw(tee._attestation_key, quote[:end])
    return quote[: end + 4] + signature + quote[end + 68 :]


def test_a_platforms_next_quote_reuses_the_verdict_after_its_own_signature_verifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verify_module._VERDICTS.clear()
    dcap = _Counting(monkeypatch)
    first = VERIFIER.verify(parse_tdx_quote(TEE.quote(b"\x01")), COLLATERAL, now=NOW)
    assert dcap.calls == 1
    quote = TEE.quote(b"\x02", mr_td=b"\x07" * 48, rtmr3=b"\x09" * 48, mr_owner=b"\x05" * 48)
    second = VERIFIER.verify(parse_tdx_quote(quote), COLLATERAL, now=NOW + 60)
    assert dcap.calls == 1  # reused
    assert second.report_data == b"\x02" + bytes(63) and second.mr_td == b"\x07" * 48
    assert second.rtmr3 == b"\x09" * 48 and second.fields.mr_owner == b"\x05" * 48
    assert (second.tcb_status, second.advisory_ids, second.fmspc) == (
        first.tcb_status,
        first.advisory_ids,
        first.fmspc,
    )
    # A quote of those fields with its signature not theirs: dcap-qvl refuses it.
    for offset in (48 + 140, 48 + 330, 48 + 530):  # MRTD, RTMR0, REPORTDATA
        assert reason(
            VERIFIER.verify, parse_tdx_quote(flip(quote, offset)), COLLATERAL, now=NOW
        ) is (QuoteFailure.BAD_QUOTE_SIGNATURE)
    end = _signed_length(quote)
    assert (
        reason(VERIFIER.verify, parse_tdx_quote(flip(quote, end + 4 + 10)), COLLATERAL, now=NOW)
        is QuoteFailure.BAD_QUOTE_SIGNATURE
    )
    assert dcap.calls == 5


def test_an_attacker_key_in_a_known_quote_is_refused_by_dcap_qvl() -> None:
    # The attacker holds a genuine quote (public) and signs a TD report of its choice with a
    # key of its own, put where the attestation key is: the QE report does not vouch for it.
    VERIFIER.verify(parse_tdx_quote(TEE.quote(b"")), COLLATERAL, now=NOW)
    quote = TEE.quote(b"chosen", mr_td=b"\x66" * 48)
    end = _signed_length(quote)
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]
    forged = quote[: end + 4] + _sign_raw(key, quote[:end]) + point + quote[end + 132 :]
    assert _outcome(forged, COLLATERAL) is QuoteFailure.QE_REPORT_BINDING


@pytest.mark.parametrize("version", [4, 5])
def test_a_remembered_verdict_answers_exactly_as_a_fresh_verification(version: int) -> None:
    """For quotes that differ from a verified one in one byte, signed again by the platform's
    own attestation key (or not): with the verdict remembered, verification says exactly what
    it says with nothing remembered."""
    good = TEE.quote(b"good", version=version)
    end = _signed_length(good)
    offsets = sorted({*range(0, end, 5), *range(end, min(len(good), end + 400), 9), len(good) - 1})
    variants = [flip(good, at, 0x02) for at in offsets]
    variants += [_resigned(TEE, v) for v in variants[: len(variants) * 2 // 3]]
    variants += [
        TEE.quote(
            b"", td_attributes=bytes([0x01]) + bytes(3) + bytes([0x10]) + bytes(3), version=version
        ),
        TEE.quote(b"", xfam=bytes([0xE7, 0x02]) + bytes(6), version=version),
    ]
    if version == 5:
        variants.append(TEE.quote(b"", mr_service_td=b"\x01" * 48, version=5))
    for variant in variants:
        verify_module._VERDICTS.clear()
        fresh = _outcome(variant, COLLATERAL)
        _outcome(good, COLLATERAL)  # its verdict remembered
        assert _outcome(variant, COLLATERAL) == fresh, variant.hex()


def test_a_remembered_verdict_is_not_reused_past_an_expiry_or_before_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verify_module._VERDICTS.clear()
    dcap = _Counting(monkeypatch)
    VERIFIER.verify(parse_tdx_quote(TEE.quote(b"")), COLLATERAL, now=NOW)
    last = COLLATERAL.valid_until()
    assert _outcome(TEE.quote(b"\x01"), COLLATERAL, now=last + 1) is QuoteFailure.COLLATERAL_EXPIRED
    before = COLLATERAL.valid_from() - 1  # earlier than the verdict: dcap-qvl verifies
    with pytest.raises(QuoteVerificationError) as info:
        verify_quote(TEE.quote(b"\x01"), COLLATERAL, now=before, root_ca=TEE.root_ca_der)
    assert info.value.reason is QuoteFailure.COLLATERAL_NOT_YET_VALID
    assert dcap.calls == 3
    # Past the reuse bound (collateral still valid): dcap-qvl verifies again.
    later = NOW + verify_module.VERDICT_REUSE_SECONDS + 1
    assert later <= last
    assert isinstance(_outcome(TEE.quote(b"\x02"), COLLATERAL, now=later), VerifiedQuote)
    assert dcap.calls == 4


def test_a_remembered_verdict_never_answers_for_other_collateral_or_another_root() -> None:
    VERIFIER.verify(parse_tdx_quote(TEE.quote(b"")), COLLATERAL, now=NOW)
    raw = TEE.collateral(NOW)
    revoked = Collateral.from_dict(TEE.collateral(NOW, revoke=["pck"]))
    assert _outcome(TEE.quote(b"\x01"), revoked) is QuoteFailure.CERTIFICATE_REVOKED

    # TCB Info that rates this platform's level OutOfDate: the new verdict, not the old.
    def out_of_date(document: dict[str, object]) -> None:
        for level in document["tcbLevels"]:  # type: ignore[attr-defined]
            level["tcbStatus"] = "OutOfDate"

    older = Collateral.from_dict(edit_document(TEE, raw, "tcb_info", out_of_date))
    assert _outcome(TEE.quote(b"\x02"), older) is QuoteFailure.TCB_STATUS_NOT_ALLOWED
    # Under a root that is not the quote's: refused, the remembered verdict unused.
    with pytest.raises(QuoteVerificationError) as info:
        verify_quote(TEE.quote(b"\x03"), COLLATERAL, now=NOW, root_ca=OTHER.root_ca_der)
    assert info.value.reason is QuoteFailure.UNTRUSTED_ROOT


def test_a_reused_verdict_still_meets_the_callers_statuses_and_floor() -> None:
    VERIFIER.verify(parse_tdx_quote(TEE.quote(b"")), COLLATERAL, now=NOW)
    quote = parse_tdx_quote(TEE.quote(b"\x01"))
    assert (
        reason(VERIFIER.verify, quote, COLLATERAL, now=NOW, allowed_statuses={"OutOfDate"})
        is QuoteFailure.TCB_STATUS_NOT_ALLOWED
    )
    strict = Verifier(
        [TEE.root_ca_der],
        simulated_allowed=True,
        floor=CollateralFloor(
            min_tcb_evaluation_data_number=COLLATERAL.tcb_evaluation_data_number + 1
        ),
    )
    assert reason(strict.verify, quote, COLLATERAL, now=NOW) is QuoteFailure.COLLATERAL_STALE


def test_intels_own_quote_reuses_its_verdict_and_refuses_an_altered_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verify_module._VERDICTS.clear()
    dcap = _Counting(monkeypatch)
    intel = Verifier()
    collateral = Collateral.from_json(TDX_COLLATERAL)
    now = TDX_NOW - 60  # at TDX_NOW, its last valid second, a verdict is not kept
    first = intel.verify(parse_tdx_quote(TDX_QUOTE), collateral, now=now)
    again = intel.verify(parse_tdx_quote(TDX_QUOTE), collateral, now=now + 30)
    assert dcap.calls == 1 and again == first and not first.simulated
    altered = flip(TDX_QUOTE, _signed_length(TDX_QUOTE) - 10)  # a REPORTDATA byte
    assert reason(intel.verify, parse_tdx_quote(altered), collateral, now=now) is (
        QuoteFailure.BAD_QUOTE_SIGNATURE
    )
    assert reason(intel.verify, parse_tdx_quote(TDX_QUOTE), collateral, now=TDX_NOW + 1) is (
        QuoteFailure.COLLATERAL_EXPIRED
    )


def test_the_verdict_cache_is_bounded() -> None:
    assert verify_module._VERDICTS.size == verify_module.VERDICT_CACHE_SIZE
    for k in range(verify_module.VERDICT_CACHE_SIZE + 10):
        verify_module._VERDICTS.put((k,), None)
    assert len(verify_module._VERDICTS) == verify_module.VERDICT_CACHE_SIZE
    verify_module._VERDICTS.clear()


def _with_chain(tee: SimulatedTEE, chain_pem: bytes) -> None:
    """Make ``tee``'s later quotes embed ``chain_pem`` as their PCK chain: the host can, since
    the QE report binds the attestation key and QE auth data, not the chain."""
    inner = tee._certification_data[6:]
    head = inner[: 384 + 64] + struct.pack("<H", len(sim.QE_AUTH_DATA)) + sim.QE_AUTH_DATA
    body = head + struct.pack("<HI", sim.CERT_DATA_PCK_CHAIN, len(chain_pem)) + chain_pem
    tee._certification_data = struct.pack("<HI", sim.CERT_DATA_QE_REPORT, len(body)) + body


def _short_lived_pck(tee: SimulatedTEE, not_after: int) -> Any:
    """A genuine PCK certificate of ``tee``'s PCK key, signed by its PCK CA, expiring early."""
    return sim._certificate(
        key=tee._pck.key,
        serial=tee._pck.serial ^ 0x5A5A,
        subject="SimTEE PCK Certificate (NOT Intel)",
        issuer=tee._pck_ca,
        not_before=tee.epoch,
        not_after=not_after,
        ca_path_length=None,
        extra_extensions=[
            sim._sgx_extension(
                ppid=tee.ppid, fmspc=tee.fmspc, platform_instance_id=tee.platform_instance_id
            )
        ],
    )


def _relabelled(pem: str) -> str:
    """A certificate under another PEM label: dcap-qvl reads it, ``cryptography`` does not."""
    return pem.replace("BEGIN CERTIFICATE", "BEGIN X").replace("END CERTIFICATE", "END X")


def _as_a_node_verifies(tee: SimulatedTEE, collateral: Collateral) -> Any:
    """Verification as a node runs it: the cheap pre-check, then the quote under its root."""
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)

    def verify(quote: bytes, now: int) -> VerifiedQuote:
        return verifier.verify(verifier.precheck(quote, now=now), collateral, now=now)

    return verify


def _expires_as_dcap_qvl_says(verify: Any, tee: SimulatedTEE, at: int) -> None:
    """A quote verified at ``NOW``; at ``at``, the next quote is refused as expired with its
    verdict remembered, as it is with none."""

    def outcome(quote: bytes, now: int) -> object:
        try:
            return verify(quote, now)
        except QuoteVerificationError as exc:
            return exc.reason

    verify_module._VERDICTS.clear()
    assert outcome(tee.quote(b"first"), NOW).tcb_status == "UpToDate"  # type: ignore[attr-defined]
    cached = outcome(tee.quote(b"second"), at)
    verify_module._VERDICTS.clear()
    assert cached == outcome(tee.quote(b"second"), at) == QuoteFailure.COLLATERAL_EXPIRED


def test_a_short_lived_pck_leaf_hidden_under_another_pem_label_ends_no_verdict_late() -> None:
    # dcap-qvl reads every PEM block of the chain whatever its label and takes the first as the
    # leaf; cryptography reads only CERTIFICATE blocks. A leaf expiring in 600 s, relabelled,
    # ahead of the long-lived chain: the verdict must not outlive it.
    tee = simulated(3202)
    hidden = _relabelled(_short_lived_pck(tee, NOW + 600).pem)
    _with_chain(tee, (hidden + tee.pck_chain_pem).encode())
    collateral = Collateral.from_dict(tee.collateral(NOW))
    _expires_as_dcap_qvl_says(_as_a_node_verifies(tee, collateral), tee, NOW + 900)


def test_a_verdict_reached_with_the_collaterals_own_pck_chain_is_not_reused() -> None:
    # dcap-qvl verifies the collateral's PCK chain when it carries one, not the quote's.
    tee = simulated(3201)
    leaf = _short_lived_pck(tee, NOW + 600)
    chain = leaf.pem + tee._pck_ca.pem + tee._root.pem
    collateral = Collateral.from_dict(tee.collateral(NOW) | {"pck_certificate_chain": chain})

    def verify(quote: bytes, now: int) -> VerifiedQuote:
        return verify_quote(quote, collateral, now=now, root_ca=tee.root_ca_der)

    _expires_as_dcap_qvl_says(verify, tee, NOW + 900)


def test_a_leap_second_expiry_ends_the_verdict_no_later_than_dcap_qvl() -> None:
    # "…:22:60Z": dcap-qvl (chrono) reads it a second before kms.attest's parser does.
    tee = simulated(3203)
    minute = (NOW + 1800) // 60 * 60
    text = rfc3339(minute - 60)[:-3] + "60Z"
    raw = edit_document(
        tee, tee.collateral(NOW), "tcb_info", lambda d: d.__setitem__("nextUpdate", text)
    )
    collateral = Collateral.from_dict(raw)

    def verify(quote: bytes, now: int) -> VerifiedQuote:
        return verify_quote(quote, collateral, now=now, root_ca=tee.root_ca_der)

    _expires_as_dcap_qvl_says(verify, tee, minute)


def test_a_parsed_quote_whose_fields_are_not_its_bytes_gets_no_reused_verdict() -> None:
    VERIFIER.verify(parse_tdx_quote(TEE.quote(b"first")), COLLATERAL, now=NOW)
    parsed = parse_tdx_quote(TEE.quote(b"second"))
    for name in ("rtmr0", "rtmr1", "rtmr2", "mr_config_id", "mr_owner", "mr_owner_config"):
        fields: Any = parsed.fields
        forged = dataclasses.replace(
            parsed, fields=dataclasses.replace(fields, **{name: b"\xee" * 48})
        )
        # Not reused, and dcap-qvl's report is not the fields: refused, cached or fresh.
        assert reason(VERIFIER.verify, forged, COLLATERAL, now=NOW + 5) is QuoteFailure.UNKNOWN
        verify_module._VERDICTS.clear()
        assert reason(VERIFIER.verify, forged, COLLATERAL, now=NOW + 5) is QuoteFailure.UNKNOWN


@pytest.mark.parametrize("field", ["tcb_info_issuer_chain", "qe_identity_issuer_chain"])
def test_a_short_lived_signer_hidden_in_the_collaterals_issuer_chain_ends_no_verdict_late(
    field: str,
) -> None:
    # The same trick in the collateral: a TCB signing certificate of the same key, expiring in
    # 600 s, first and relabelled; dcap-qvl verifies TCB Info or QE Identity with it.
    tee = simulated(3301)
    short = sim._certificate(
        key=tee._tcb_signer.key,
        serial=tee._tcb_signer.serial ^ 0x5A5A,
        subject="SimTEE TCB Signing (NOT Intel)",
        issuer=tee._root,
        not_before=tee.epoch,
        not_after=NOW + 600,
        ca_path_length=None,
    ).pem
    raw = tee.collateral(NOW)
    collateral = Collateral.from_dict(raw | {field: _relabelled(short) + raw[field]})
    _expires_as_dcap_qvl_says(_as_a_node_verifies(tee, collateral), tee, NOW + 1800)


def test_a_parsed_quote_carrying_another_chain_than_its_bytes_ends_no_verdict_late() -> None:
    # The first quote's bytes embed a PCK leaf expiring in 600 s; the ParsedQuote handed in
    # carries the platform's long-lived chain instead. The verdict is bounded by the bytes.
    tee = simulated(3302)
    long_lived = parse_tdx_quote(tee.quote(b"")).pck_chain
    short = _short_lived_pck(tee, NOW + 600).pem
    _with_chain(tee, (short + tee._pck_ca.pem + tee._root.pem).encode())
    collateral = Collateral.from_dict(tee.collateral(NOW))
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    first = dataclasses.replace(parse_tdx_quote(tee.quote(b"first")), pck_chain=long_lived)
    verify_module._VERDICTS.clear()
    assert verifier.verify(first, collateral, now=NOW).tcb_status == "UpToDate"

    def verify(quote: bytes, now: int) -> VerifiedQuote:
        return verifier.verify(quote, collateral, now=now)

    later = NOW + 1800
    assert reason(verify, tee.quote(b"second"), later) is QuoteFailure.COLLATERAL_EXPIRED
    verify_module._VERDICTS.clear()
    assert reason(verify, tee.quote(b"second"), later) is QuoteFailure.COLLATERAL_EXPIRED
