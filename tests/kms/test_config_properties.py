"""Properties of the strict ``node.toml`` parser and of the committee digest."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.app.committee import digest_of
from kms.app.config import SETTINGS, ConfigError, participant_to_toml
from kms.app.setup import participant_record
from mpc import hpke
from mpc.sig import SigningKey

RECORDS = [
    participant_to_toml(
        participant_record(
            SigningKey.from_seed(bytes([i]) * 32), hpke.derive_key_pair(bytes([i + 9]) * 32)[1], i
        )
    )
    for i in (1, 2, 3)
]
BASE: dict[str, Any] = {
    "threshold": 2,
    "genesis_start": 1_900_000_000,
    "delta": 1,
    "window_period": 60,
    "window_length": 5,
    "refresh_interval": 0,
    "admission_policy": "",
}


def render(values: dict[str, Any], order: list[str], floats: list[bool], comments: bool) -> str:
    lines = ["# a committee", "[committee]"]
    for key, as_float in zip(order, floats, strict=True):
        value = values[key]
        if isinstance(value, str):
            text = f'"{value}"'
        elif as_float:
            text = f"{float(value)!r}"
        else:
            text = str(value)
        lines.append(f"{key} = {text}" + (f"  # the {key}" if comments else ""))
    for record in RECORDS:
        lines += ["", "[[committee.genesis]]"]
        lines += [f"{k} = {v}" if k == "index" else f'{k} = "{v}"' for k, v in record.items()]
    return "\n".join(lines) + "\n"


def digest(text: str) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "committee.toml"
        path.write_text(text)
        return digest_of(path)


REFERENCE = digest(render(BASE, list(BASE), [False] * len(BASE), False))


@settings(max_examples=40, deadline=None)
@given(
    order=st.permutations(list(BASE)),
    floats=st.lists(st.booleans(), min_size=len(BASE), max_size=len(BASE)),
    comments=st.booleans(),
)
def test_formatting_never_changes_the_digest(
    order: list[str], floats: list[bool], comments: bool
) -> None:
    floats = [
        f and k not in ("threshold", "admission_policy") for k, f in zip(order, floats, strict=True)
    ]
    assert digest(render(BASE, order, floats, comments)) == REFERENCE


@settings(max_examples=40, deadline=None)
@given(
    key=st.sampled_from(["genesis_start", "delta", "window_period", "window_length"]),
    bump=st.integers(min_value=1, max_value=10**6),
)
def test_any_value_changes_the_digest(key: str, bump: int) -> None:
    # A period long enough for any bumped Δ or window length (a shorter one is refused).
    wide = dict(BASE, window_period=10**7)
    values = dict(wide, **{key: wide[key] + bump / 8})
    reference = digest(render(wide, list(BASE), [False] * len(BASE), False))
    assert digest(render(values, list(BASE), [False] * len(BASE), False)) != reference


def test_threshold_refresh_and_policy_change_the_digest() -> None:
    for change in ({"threshold": 3}, {"refresh_interval": 10}, {"admission_policy": "00"}):
        values = dict(BASE, **change)
        assert digest(render(values, list(BASE), [False] * len(BASE), False)) != REFERENCE


@settings(max_examples=60, deadline=None)
@given(
    key=st.from_regex(r"[a-z][a-z_]{2,20}", fullmatch=True).filter(
        lambda k: k not in {s.key for s in SETTINGS}
    ),
    at=st.integers(min_value=0, max_value=len(BASE)),
)
def test_an_unknown_key_is_reported_on_its_own_line(key: str, at: int) -> None:
    text = render(BASE, list(BASE), [False] * len(BASE), False).splitlines()
    text.insert(2 + at, f"{key} = 1")
    with pytest.raises(ConfigError) as err:
        digest("\n".join(text) + "\n")
    assert f":{3 + at}: unknown key '{key}' in [committee]" in str(err.value)


def test_a_window_period_shorter_than_a_window_lasts_is_refused() -> None:
    # t = 2, Δ = 1, window_length 5: a window that decides nothing lasts 7 s; with the margin
    # of one Δ the period must be at least 8 s, or every member abstains in every window.
    for period, refused in ((7.9, True), (8, False)):
        values = dict(BASE, window_period=period)
        text = render(values, list(BASE), [False] * len(BASE), False)
        if refused:
            with pytest.raises(ConfigError, match=r"window_period 7\.9 s is shorter") as err:
                digest(text)
            assert "late and abstain" in str(err.value)
        else:
            assert digest(text) != REFERENCE
