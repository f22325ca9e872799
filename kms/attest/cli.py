"""``kms attest``: verify a TDX quote from the command line.

``kms attest verify QUOTE --collateral FILE [--at UNIX_SECONDS] [--root-ca DER_FILE]
[--allow-status STATUS ...] [--json]``

* ``QUOTE``: a file holding the raw quote, or its hex (``0x`` prefix and
  whitespace allowed).
* ``--collateral``: dcap-qvl ``QuoteCollateralV3`` JSON (byte fields in hex),
  as cached by ``kms.attest.pccs`` or written by the simulated TEE.
* ``--at``: verification time in unix seconds; default now.
* ``--root-ca``: trust anchor, DER (or PEM); default Intel's pinned root. Any
  other root makes the result a *simulated* one.
* ``--allow-status``: admitted TCB status, repeatable; default ``UpToDate``
  and ``SWHardeningNeeded``.
* ``--json``: one JSON object on one line: ``ok``, ``tcb_status``,
  ``advisory_ids``, ``mr_td``, ``rtmr0``..``rtmr3``, ``report_data`` (lowercase
  hex, ``null`` when the quote could not be parsed) and ``error`` (``null`` or
  ``"<REASON>: <message>"``).

Exit status: 0 accepted, 1 rejected, 2 bad usage or unreadable files (the
collateral file must at least be a JSON object with the collateral fields; its
contents are then judged by verification).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kms.attest.collateral import Collateral
from kms.attest.errors import QuoteVerificationError
from kms.attest.roots import INTEL_ROOT_CA
from kms.attest.verify import (
    ADMISSIBLE_STATUSES,
    DEFAULT_ALLOWED_STATUSES,
    TDFields,
    VerifiedQuote,
    parse_td_fields,
    verify_quote,
)

attest_app = typer.Typer(
    help="TDX attestation: verify quotes against Intel DCAP collateral.", no_args_is_help=True
)


@attest_app.callback()
def _group() -> None:
    """TDX attestation: verify quotes against Intel DCAP collateral."""


_HEX = re.compile(rb"[0-9a-fA-F]+")
_FIELDS = ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "report_data")


class _UsageProblem(Exception):
    """Bad input the user must fix: exit status 2."""


def read_quote(path: Path) -> bytes:
    """The quote in ``path``: its hex (optional ``0x``, whitespace ignored) or raw bytes."""
    data = _read(path)
    compact = b"".join(data.split())
    if compact[:2] in (b"0x", b"0X"):
        compact = compact[2:]
    if compact and len(compact) % 2 == 0 and _HEX.fullmatch(compact):
        return bytes.fromhex(compact.decode())
    return data


def read_root(path: Path) -> bytes:
    """A root certificate as DER, from a DER or PEM file."""
    data = _read(path)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise _UsageProblem(f"{path}: not a PEM certificate ({exc})") from None
        return cert.public_bytes(serialization.Encoding.DER)
    return data


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _UsageProblem(f"cannot read {path}: {exc.strerror or exc}") from None


def _fields_json(fields: TDFields | VerifiedQuote | None) -> dict[str, str | None]:
    return {name: getattr(fields, name).hex() if fields is not None else None for name in _FIELDS}


def outcome(
    quote: bytes,
    collateral: Collateral,
    *,
    now: int,
    allowed_statuses: frozenset[str],
    root_ca: bytes,
) -> dict[str, Any]:
    """The ``--json`` object for one verification."""
    try:
        verified = verify_quote(
            quote, collateral, now=now, allowed_statuses=allowed_statuses, root_ca=root_ca
        )
    except QuoteVerificationError as exc:
        return {
            "ok": False,
            "tcb_status": exc.tcb_status,
            "advisory_ids": list(exc.advisory_ids),
            **_fields_json(parse_td_fields(quote)),
            "error": str(exc) if exc.message else f"{exc.reason.value}: refused",
        }
    return {
        "ok": True,
        "tcb_status": verified.tcb_status,
        "advisory_ids": list(verified.advisory_ids),
        **_fields_json(verified),
        "error": None,
    }


def _human(result: dict[str, Any], *, simulated: bool) -> str:
    lines = []
    if result["ok"]:
        root = "a SIMULATED root (not Intel)" if simulated else "Intel's root"
        lines.append(f"accepted: TCB status {result['tcb_status']}, verified under {root}")
    else:
        lines.append(f"rejected: {result['error']}")
        if result["tcb_status"] is not None:
            lines.append(f"tcb status   {result['tcb_status']}")
    if result["advisory_ids"]:
        lines.append(f"advisories   {', '.join(result['advisory_ids'])}")
    if result["mr_td"] is None:
        lines.append("the quote could not be parsed")
    else:
        lines.extend(f"{name:<12} {result[name]}" for name in _FIELDS)
    return "\n".join(lines)


def _usage_error(message: str) -> typer.Exit:
    sys.stderr.write(f"error: {message}\n")
    return typer.Exit(2)


@attest_app.command("verify")
def verify_command(
    quote: Annotated[
        Path, typer.Argument(help="File with the raw quote, or its hex (0x prefix allowed).")
    ],
    collateral: Annotated[
        Path,
        typer.Option("--collateral", help="Collateral, dcap-qvl QuoteCollateralV3 JSON."),
    ],
    at: Annotated[
        int | None,
        typer.Option("--at", help="Verification time, unix seconds (default: now).", min=0),
    ] = None,
    root_ca: Annotated[
        Path | None,
        typer.Option("--root-ca", help="Trust anchor, DER or PEM (default: Intel's root)."),
    ] = None,
    allow_status: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-status",
            help="Admitted TCB status; repeat for several "
            "(default: UpToDate and SWHardeningNeeded).",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on one line.")
    ] = False,
) -> None:
    """Verify a TDX quote: exit 0 if accepted, 1 if rejected, 2 on bad usage."""
    statuses = frozenset(allow_status) if allow_status else DEFAULT_ALLOWED_STATUSES
    unknown = sorted(statuses - ADMISSIBLE_STATUSES)
    if unknown:
        raise _usage_error(
            f"unknown TCB status {', '.join(unknown)}; one of {', '.join(sorted(ADMISSIBLE_STATUSES))}"
        )
    try:
        raw = read_quote(quote)
        root = read_root(root_ca) if root_ca is not None else INTEL_ROOT_CA
        collateral_text = _read(collateral)
    except _UsageProblem as exc:
        raise _usage_error(str(exc)) from None
    try:
        coll = Collateral.from_json(collateral_text)
    except QuoteVerificationError as exc:
        raise _usage_error(f"{collateral}: {exc.message}") from None
    now = at if at is not None else int(time.time())
    result = outcome(raw, coll, now=now, allowed_statuses=statuses, root_ca=root)
    if json_out:
        sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(_human(result, simulated=root != INTEL_ROOT_CA) + "\n")
    raise typer.Exit(0 if result["ok"] else 1)
