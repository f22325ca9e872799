"""``kms cert verify`` run as a user would: ``valid``/exit 0 only for a certificate the
committee made for this app (and, with ``--qkms-signature``, this version and epoch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dstack_committee import committee
from typer.testing import CliRunner

from kms.cli import app
from kms.dstack import keys

ROOT_DIR = Path(__file__).resolve().parents[3]
C = committee()
APP = bytes.fromhex("0a" * 20)
ROOT_PUB = keys.root_public(bytes.fromhex("11" * 32))
LINK1, QKMS = C.certify(APP, ROOT_PUB, 2, 5)


def _args(**over: str) -> list[str]:
    base = {
        "--mpk": C.mpk.to_bytes().hex(),
        "--app-id": APP.hex(),
        "--pubkey": ROOT_PUB.hex(),
        "--signature": LINK1.hex(),
    }
    base.update(over)
    return ["cert", "verify", *(x for kv in base.items() for x in kv if x is not None)]


def _run(args: list[str]) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, args)
    return r.exit_code, r.stdout, r.stderr


def test_valid_certificate() -> None:
    assert _run(_args()) == (0, "valid\n", "")
    full = _args(**{"--version": "2", "--epoch": "5", "--qkms-signature": QKMS.hex()})
    assert _run(full) == (0, "valid\n", "")
    assert _run(_args(**{"--signature": "0x" + LINK1.hex()}))[0] == 0


def test_the_real_entry_point() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kms.cli", *_args()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT_DIR,
    )
    assert (r.returncode, r.stdout) == (0, "valid\n"), r.stderr
    other = _args(**{"--app-id": "0b" * 20})
    r = subprocess.run(
        [sys.executable, "-m", "kms.cli", *other],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT_DIR,
    )
    assert r.returncode == 1 and r.stdout.startswith("invalid: ")


@pytest.mark.parametrize(
    "over",
    [
        {"--app-id": "0b" * 20},  # a certificate for app A never verifies for app B
        {"--app-id": "0a" * 21},
        {"--pubkey": keys.root_public(bytes.fromhex("12" * 32)).hex()},
        {"--signature": QKMS.hex()},  # the quorum-kms signature is not link 1
        {"--signature": LINK1[:-1].hex() + f"{LINK1[-1] ^ 1:02x}"},
        {"--mpk": committee(seed=9).mpk.to_bytes().hex()},
        {"--version": "3", "--epoch": "5", "--qkms-signature": QKMS.hex()},  # wrong version
        {"--version": "2", "--epoch": "4", "--qkms-signature": QKMS.hex()},  # wrong epoch
        {"--version": "2", "--epoch": "5", "--qkms-signature": LINK1.hex()},
    ],
)
def test_invalid_certificates_exit_1_with_one_line(over: dict[str, str]) -> None:
    code, out, _ = _run(_args(**over))
    assert code == 1
    assert out.startswith("invalid: ") and out.count("\n") == 1


@pytest.mark.parametrize(
    "over",
    [
        {"--signature": "zz" * 48},
        {"--signature": LINK1.hex()[:-2]},
        {"--pubkey": ROOT_PUB.hex()[:-2]},
        {"--pubkey": "04" + ROOT_PUB.hex()[2:]},
        {"--app-id": ""},
        {"--app-id": "00" * 65},
        {"--mpk": "00" * 96},
        {"--mpk": C.mpk.to_bytes().hex()[:-2]},
        {"--version": "2"},  # a version nothing would check
        {"--qkms-signature": QKMS.hex()},
        {"--version": "-1", "--epoch": "5", "--qkms-signature": QKMS.hex()},
    ],
)
def test_malformed_input_exits_2(over: dict[str, str]) -> None:
    code, out, err = _run(_args(**over))
    assert code == 2 and out == ""
    assert "error" in err.lower() or "invalid value" in err.lower()
