"""The settings reference in docs/operator-guide.md is generated from the config schema."""

from __future__ import annotations

from kms.app.config import GUIDE, REGENERATE, SETTINGS, render


def test_the_settings_reference_is_up_to_date() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    assert render(text) == text, f"the settings reference is stale: run `{REGENERATE}`"


def test_every_setting_is_in_the_reference_with_its_default() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for s in SETTINGS:
        assert f"| `{s.key}` | {s.type} | {s.shown_default()} |" in text, s.key
