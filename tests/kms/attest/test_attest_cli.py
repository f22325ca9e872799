"""``kms attest verify``: typer's CliRunner in-process, and a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from attest_helpers import NOW, TDX_NOW, VECTORS, expected, simulated
from typer.testing import CliRunner

from kms.attest.cli import attest_app

ROOT = Path(__file__).resolve().parents[3]
KEYS = [
    "ok",
    "tcb_status",
    "advisory_ids",
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "report_data",
    "error",
]
TDX = str(VECTORS / "tdx_quote")
TDX_COLL = str(VECTORS / "tdx_quote_collateral.json")
runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(attest_app, ["verify", *args])
    return result.exit_code, result.stdout, result.stderr


def run_json(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out, _ = run(*args, "--json")
    assert out.count("\n") == 1 and out.endswith("\n")
    result = json.loads(out)
    assert list(result) == KEYS
    return code, result


@pytest.fixture
def sim_files(tmp_path: Path) -> dict[str, str]:
    tee = simulated(51, tcb_status="OutOfDate", advisory_ids=["INTEL-SA-00615"])
    files = {
        "quote": tmp_path / "quote.bin",
        "collateral": tmp_path / "collateral.json",
        "root": tmp_path / "root.der",
    }
    files["quote"].write_bytes(tee.quote(b"cli", mr_td=b"\x01" * 48))
    files["collateral"].write_text(json.dumps(tee.collateral(NOW)))
    files["root"].write_bytes(tee.root_ca_der)
    return {k: str(v) for k, v in files.items()}


def test_an_accepted_quote_prints_its_fields_and_exits_0() -> None:
    code, result = run_json(TDX, "--collateral", TDX_COLL, "--at", str(TDX_NOW))
    fields = expected("tdx_quote")["fields"]
    assert code == 0
    assert result == {
        "ok": True,
        "tcb_status": "UpToDate",
        "advisory_ids": [],
        "mr_td": fields["mr_td"],
        "rtmr0": fields["rt_mr0"],
        "rtmr1": fields["rt_mr1"],
        "rtmr2": fields["rt_mr2"],
        "rtmr3": fields["rt_mr3"],
        "report_data": fields["report_data"],
        "error": None,
    }


def test_the_quote_may_be_hex_with_or_without_0x(tmp_path: Path) -> None:
    raw = (VECTORS / "tdx_quote").read_bytes()
    for name, text in (("a.hex", "0x" + raw.hex() + "\n"), ("b.hex", raw.hex().upper())):
        (tmp_path / name).write_text(text)
        code, result = run_json(
            str(tmp_path / name), "--collateral", TDX_COLL, "--at", str(TDX_NOW)
        )
        assert code == 0 and result["ok"]


def test_a_rejected_quote_reports_reason_message_and_parsed_fields_and_exits_1() -> None:
    case = expected("tdx_quote_outdated")
    code, result = run_json(
        str(VECTORS / "tdx_quote_outdated"),
        "--collateral",
        str(VECTORS / "tdx_quote_outdated_collateral.json"),
        "--at",
        str(case["now_unix"]),
    )
    assert code == 1
    assert result["ok"] is False and result["tcb_status"] is None
    assert result["error"] == "TCB_LEVEL_NOT_FOUND: No matching TCB level found"
    assert result["mr_td"] == case["fields"]["mr_td"]
    assert result["report_data"] == case["fields"]["report_data"]


def test_an_sgx_quote_is_rejected_with_null_fields() -> None:
    code, result = run_json(
        str(VECTORS / "sgx_quote"),
        "--collateral",
        str(VECTORS / "sgx_quote_collateral.json"),
        "--at",
        "1752919277",
    )
    assert code == 1 and result["error"] == "NOT_TDX: not a TDX quote (SGX)"
    assert all(result[k] is None for k in ("mr_td", "rtmr0", "rtmr3", "report_data"))


def test_garbage_and_expired_collateral_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x04\x00junk")
    code, result = run_json(str(tmp_path / "junk"), "--collateral", TDX_COLL, "--at", str(TDX_NOW))
    assert code == 1 and result["error"].startswith("MALFORMED_QUOTE: ")
    code, result = run_json(TDX, "--collateral", TDX_COLL, "--at", str(TDX_NOW + 2))
    assert code == 1 and result["error"].startswith(
        "COLLATERAL_EXPIRED: Failed to verify certificate chain: CrlExpired"
    )
    assert result["mr_td"] == expected("tdx_quote")["fields"]["mr_td"]


def test_a_simulated_quote_needs_its_root_and_its_status_admitted(
    sim_files: dict[str, str],
) -> None:
    base = (sim_files["quote"], "--collateral", sim_files["collateral"], "--at", str(NOW))
    code, result = run_json(*base)
    assert code == 1 and result["error"].startswith("UNTRUSTED_ROOT: Failed to parse root CA CRL")
    code, result = run_json(*base, "--root-ca", sim_files["root"])
    assert code == 1
    assert result["error"].startswith(
        "TCB_STATUS_NOT_ALLOWED: TCB status OutOfDate (INTEL-SA-00615)"
    )
    assert result["tcb_status"] == "OutOfDate" and result["advisory_ids"] == ["INTEL-SA-00615"]
    code, result = run_json(
        *base,
        "--root-ca",
        sim_files["root"],
        "--allow-status",
        "UpToDate",
        "--allow-status",
        "OutOfDate",
    )
    assert code == 0 and result["tcb_status"] == "OutOfDate" and result["mr_td"] == "01" * 48
    code, out, _ = run(*base, "--root-ca", sim_files["root"], "--allow-status", "OutOfDate")
    assert code == 0 and "SIMULATED" in out and "mr_td        " + "01" * 48 in out


def test_the_root_may_be_pem(sim_files: dict[str, str], tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = Path(sim_files["root"]).read_bytes()
    pem = tmp_path / "root.pem"
    pem.write_bytes(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM))
    code, result = run_json(
        sim_files["quote"],
        "--collateral",
        sim_files["collateral"],
        "--at",
        str(NOW),
        "--root-ca",
        str(pem),
        "--allow-status",
        "OutOfDate",
    )
    assert code == 0 and result["ok"]


def test_at_defaults_to_now(tmp_path: Path) -> None:
    now = int(time.time())
    tee = simulated(52, now=now)
    (tmp_path / "q").write_bytes(tee.quote(b""))
    (tmp_path / "c").write_text(json.dumps(tee.collateral(now)))
    (tmp_path / "r").write_bytes(tee.root_ca_der)
    code, result = run_json(
        str(tmp_path / "q"), "--collateral", str(tmp_path / "c"), "--root-ca", str(tmp_path / "r")
    )
    assert code == 0 and result["ok"]


def test_human_output_names_the_verdict() -> None:
    code, out, _ = run(TDX, "--collateral", TDX_COLL, "--at", str(TDX_NOW))
    assert code == 0 and out.startswith(
        "accepted: TCB status UpToDate, verified under Intel's root"
    )
    code, out, _ = run(TDX, "--collateral", TDX_COLL, "--at", "0")
    assert code == 1 and out.startswith("rejected: COLLATERAL_NOT_YET_VALID: ")


@pytest.mark.parametrize(
    "args",
    [
        [TDX],
        [TDX, "--collateral", "/nonexistent/collateral.json"],
        ["/nonexistent/quote", "--collateral", TDX_COLL],
        [TDX, "--collateral", TDX],
        [TDX, "--collateral", TDX_COLL, "--allow-status", "Fine"],
        [TDX, "--collateral", TDX_COLL, "--at", "-1"],
        [TDX, "--collateral", TDX_COLL, "--at", "soon"],
        [TDX, "--collateral", TDX_COLL, "--root-ca", "/nonexistent/root.der"],
    ],
    ids=[
        "no collateral",
        "collateral missing",
        "quote missing",
        "collateral not JSON",
        "unknown status",
        "negative time",
        "time not a number",
        "root missing",
    ],
)
def test_bad_usage_and_unreadable_files_exit_2(args: list[str]) -> None:
    code, out, _ = run(*args, "--json")
    assert code == 2 and out == ""


def subprocess_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from kms.attest.cli import attest_app; attest_app()",
            "verify",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_as_a_subprocess_exit_status_and_output_are_the_same() -> None:
    accepted = subprocess_verify(TDX, "--collateral", TDX_COLL, "--at", str(TDX_NOW), "--json")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["tcb_status"] == "UpToDate"
    assert accepted.stdout.count("\n") == 1
    rejected = subprocess_verify(TDX, "--collateral", TDX_COLL, "--at", "2524608000", "--json")
    assert rejected.returncode == 1
    assert json.loads(rejected.stdout)["error"].startswith("COLLATERAL_EXPIRED: CrlExpired")
    usage = subprocess_verify(TDX, "--collateral", "/nonexistent.json")
    assert usage.returncode == 2 and usage.stdout == "" and "cannot read" in usage.stderr
