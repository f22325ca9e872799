"""``kms encrypt`` / ``kms decrypt`` through typer's runner: encryption goes to the app's
inbox (purpose ``ibe.<name>``) with OS randomness, and decryption asks key release for
exactly the key id the ciphertext names, so an image needs the inbox purpose to read it.

The network half of ``kms decrypt`` (``fetch_keys``) is replaced by a committee stand-in
that releases only the purposes a given policy lists, from a toy master secret.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from kms.app import devnet
from kms.cli import app
from kms.client.core import KeyReleaseError
from mpc import ibe
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.tkd import DerivedPoint, KeyId, derive_point_base

runner = CliRunner()
SECRET = 42
MPK = SECRET * G2.generator()
APP_ID = b"demo-app"
# Made by the former ``kms encrypt`` code (purpose "app", r not hedged), s = 42.
UNHEDGED_CIPHERTEXT = bytes.fromhex(
    "514b49424501"
    "a1b02c2e9792a8553eb44225b91f37f2acaf439581ae1ae417a24a937ce74a4184261a1100d9d1495e1457edead3d2ba"
    "006ef7d972cd8ca1ded917464cb2bb3a38cd5039c73545c96b33a5933c872d2fda6bcd407068172a7953aea7803ad727"
    "0019"
    "514b4d532d4944010864656d6f2d6170700361707000000001"
    "0401b82ef5"
    "bb3ddcd82a967e904a8f9b8c24a72c9c"
)


def stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, purposes: set[str]
) -> tuple[Path, list[tuple[str, int]]]:
    """A devnet directory whose key release grants only ``purposes``; and what was asked."""
    d = tmp_path / "devnet"
    d.mkdir(exist_ok=True)
    devnet.write_state(
        d,
        {
            "master_public_key": MPK.to_bytes().hex(),
            "nodes": [{"index": 1, "http_url": "http://node-1"}],
            "apps": {"demo": APP_ID.hex()},
        },
    )
    asked: list[tuple[str, int]] = []

    def fetch_keys(urls: Any, mpk: G2, app_id: bytes, wanted: Any, quote_for: Any, **_: Any) -> Any:
        derived = {}
        for p, v in wanted:
            asked.append((p, v))
            if p not in purposes:
                raise KeyReleaseError(f"refused by every node: {{1: 'policy-refused'}} ({p})")
            kid = KeyId(app_id, p, v)
            derived[(p, v)] = DerivedPoint(kid, SECRET * derive_point_base(kid))
        return SimpleNamespace(rejected=[], derived=derived, epoch=0)

    import kms.client.http

    monkeypatch.setattr(kms.client.http, "fetch_keys", fetch_keys)
    from kms.app import cvm

    monkeypatch.setattr(
        cvm,
        "nodes_by_index",
        lambda urls, timeout=5.0: cvm.Nodes({ParticipantIndex(1): urls[0]}, []),
    )
    monkeypatch.setattr(
        cvm, "quoting", lambda app_id, **_: cvm.Quoting(lambda rd: b"", b"", "stand-in")
    )
    return d, asked


def encrypt(tmp_path: Path, *extra: str) -> Path:
    plain = tmp_path / "plain"
    plain.write_bytes(b"for the inbox")
    sealed = tmp_path / "sealed"
    result = runner.invoke(
        app,
        [
            "encrypt",
            "--mpk",
            MPK.to_bytes().hex(),
            "--app",
            APP_ID.hex(),
            *extra,
            str(plain),
            str(sealed),
        ],
    )
    assert result.exit_code == 0, result.output
    return sealed


def decrypt(d: Path, sealed: Path, out: Path) -> Any:
    return runner.invoke(
        app, ["decrypt", "--devnet", str(d), "--app", "demo", str(sealed), str(out)]
    )


def test_encrypt_goes_to_the_inbox_and_is_randomised(tmp_path: Path) -> None:
    a = encrypt(tmp_path).read_bytes()
    assert ibe.read_header(a).key_id == KeyId(APP_ID, "ibe.app", 1)
    b = encrypt(tmp_path).read_bytes()
    assert a != b  # the same file twice: OS randomness gives another ciphertext
    c = encrypt(tmp_path, "--inbox", "mail", "--version", "3").read_bytes()
    assert ibe.read_header(c).key_id == KeyId(APP_ID, "ibe.mail", 3)


def test_encrypt_refuses_a_bad_inbox_name(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    result = runner.invoke(
        app,
        [
            "encrypt",
            *("--mpk", MPK.to_bytes().hex(), "--app", APP_ID.hex(), "--inbox", "Bad Name"),
            *(str(plain), str(tmp_path / "out")),
        ],
    )
    assert result.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_an_image_admitted_only_for_signing_cannot_decrypt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = encrypt(tmp_path)
    d, asked = stand_in(tmp_path, monkeypatch, {"sign", "app"})
    result = decrypt(d, sealed, tmp_path / "opened")
    assert result.exit_code == 1
    assert "policy-refused" in result.output
    assert asked == [("ibe.app", 1)]  # type: ignore[attr-defined]
    assert not (tmp_path / "opened").exists()


def test_an_image_admitted_for_the_inbox_decrypts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed = encrypt(tmp_path)
    d, asked = stand_in(tmp_path, monkeypatch, {"sign", "ibe.app"})
    result = decrypt(d, sealed, tmp_path / "opened")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "opened").read_bytes() == b"for the inbox"


def test_a_ciphertext_made_before_inboxes_still_decrypts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made to purpose ``app`` by the former ``kms encrypt``: the reader asks for ``app``."""
    sealed = tmp_path / "old"
    sealed.write_bytes(UNHEDGED_CIPHERTEXT)
    d, asked = stand_in(tmp_path, monkeypatch, {"app"})
    result = decrypt(d, sealed, tmp_path / "opened")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "opened").read_bytes() == b"hello"
    assert asked == [("app", 1)]  # type: ignore[attr-defined]


def test_a_ciphertext_for_another_app_is_refused_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.write_bytes(ibe.encrypt(MPK, ibe.inbox_key_id(b"other-app"), b"x", rng=os.urandom))
    d, asked = stand_in(tmp_path, monkeypatch, {"ibe.app"})
    result = decrypt(d, other, tmp_path / "opened")
    assert result.exit_code == 1
    assert asked == []  # type: ignore[attr-defined]
