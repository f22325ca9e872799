"""Whatever bytes arrive as a quote or collateral, verification refuses with a
QuoteVerificationError (or accepts): it never crashes, never raises anything else."""

from __future__ import annotations

import json
import struct

from attest_helpers import NOW, TDX_COLLATERAL, TDX_NOW, TDX_QUOTE, simulated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kms.attest import Collateral, QuoteVerificationError, TDFields, parse_td_fields, verify_quote

TEE = simulated(31)
SIM_COLLATERAL = Collateral.from_dict(TEE.collateral(NOW))
INTEL_COLLATERAL = Collateral.from_json(TDX_COLLATERAL)
BASES = {
    "simulated v4": (TEE.quote(b"fuzz"), SIM_COLLATERAL, TEE.root_ca_der, NOW),
    "simulated v5": (TEE.quote(b"fuzz", version=5), SIM_COLLATERAL, TEE.root_ca_der, NOW),
    "intel v4": (TDX_QUOTE, INTEL_COLLATERAL, None, TDX_NOW),
}
# Offsets of the length and type fields a decoder trusts (v4 layout).
FIELDS = [0, 2, 4, 48, 50, 632, 764, 766, 1218, 1252, 1254]
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def outcome(quote: bytes, collateral: Collateral, root: bytes | None, now: int) -> str:
    kwargs = {"root_ca": root} if root is not None else {}
    try:
        verify_quote(quote, collateral, now=now, **kwargs)  # type: ignore[arg-type]
    except QuoteVerificationError as exc:
        assert exc.reason.value == exc.reason.name
        assert "\n" not in exc.message
        return exc.reason.name
    return "ACCEPTED"


@FUZZ
@given(data=st.binary(max_size=6000), base=st.sampled_from(sorted(BASES)))
def test_arbitrary_bytes_are_refused(data: bytes, base: str) -> None:
    _, collateral, root, now = BASES[base]
    assert outcome(data, collateral, root, now) != "ACCEPTED"
    fields = parse_td_fields(data)
    assert fields is None or isinstance(fields, TDFields)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(BASES)))
    quote = bytearray(BASES[name][0])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["byte", "field", "truncate", "insert", "append"]))
        if kind == "byte" and quote:
            quote[draw(st.integers(0, len(quote) - 1))] = draw(st.integers(0, 255))
        elif kind == "field":
            offset = draw(st.sampled_from(FIELDS))
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.integers(0, 2 ** (8 * width) - 1))
            quote[offset : offset + width] = value.to_bytes(width, "little")
        elif kind == "truncate":
            del quote[draw(st.integers(0, len(quote))) :]
        elif kind == "insert":
            at = draw(st.integers(0, len(quote)))
            quote[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            quote.extend(draw(st.binary(min_size=1, max_size=256)))
    return name, bytes(quote)


@FUZZ
@given(case=mutated())
def test_mutated_valid_quotes_are_refused_or_still_the_same_quote(case: tuple[str, bytes]) -> None:
    name, quote = case
    base, collateral, root, now = BASES[name]
    result = outcome(quote, collateral, root, now)
    if result == "ACCEPTED":
        # Only bytes outside the signed header and TD report can change unnoticed.
        signed = 48 + (584 if base[0] == 4 else 654)
        assert quote[:signed] == base[:signed]
    parse_td_fields(quote)


@FUZZ
@given(
    field=st.sampled_from(sorted(SIM_COLLATERAL.to_dict())),
    offset=st.integers(0, 10_000),
    text=st.text(max_size=8),
)
def test_altered_collateral_is_refused_or_harmless(field: str, offset: int, text: str) -> None:
    quote, collateral, root, now = BASES["simulated v4"]
    form = collateral.to_dict()
    value = form[field]
    offset %= len(value) + 1
    form[field] = value[:offset] + text + value[offset + len(text) :]
    try:
        changed = Collateral.from_dict(form)
    except QuoteVerificationError:
        return
    outcome(quote, changed, root, now)


@FUZZ
@given(
    document=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_arbitrary_json_as_collateral_is_refused(document: object) -> None:
    quote, _, root, now = BASES["simulated v4"]
    for form in (document, json.dumps(document)):
        try:
            verify_quote(quote, form, now=now, root_ca=root)  # type: ignore[arg-type]
        except QuoteVerificationError:
            continue
        except TypeError:
            assert not isinstance(form, str | dict)  # only non-JSON-object Python values
            continue
        raise AssertionError("accepted")


def test_the_length_fields_really_are_where_the_fuzzer_looks() -> None:
    quote = BASES["simulated v4"][0]
    assert struct.unpack_from("<I", quote, 632)[0] == len(quote) - 636
    assert struct.unpack_from("<H", quote, 764)[0] == 6
    assert struct.unpack_from("<H", quote, 1252)[0] == 5
