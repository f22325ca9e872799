"""Attestation: does a TDX quote come from a genuine, patched Intel TDX platform?

A KMS node releases a key share only to a confidential VM whose quote verifies.
This package answers the platform half of that question and returns what the
TD measured (MRTD, RTMR0-3, report data); whether those measurements are
allowed is the app policy's business (`kms.policy`). Verification is Intel
DCAP, done by dcap-qvl 0.7.0 (Phala Network's Rust port of Intel's QVL), plus
the checks a KMS needs that dcap-qvl leaves out. Nothing here reads a clock or
the network: the caller passes `now` (unix seconds) and the collateral, which
`kms.attest.pccs` fetches from a PCCS and caches on disk.

## API

- `verify_quote(quote, collateral, *, now, allowed_statuses={"UpToDate",
  "SWHardeningNeeded"}, root_ca=INTEL_ROOT_CA) -> VerifiedQuote`: raises
  `QuoteVerificationError(reason)` with a `QuoteFailure` reason, or returns
  `tcb_status`, `advisory_ids`, `mr_td`, `rtmr0`..`rtmr3`, `report_data`
  (bytes), `version`, `fmspc`, `simulated` and the full TD report (`fields`).
- `parse_td_fields(quote) -> TDFields | None`: the TD report without
  verification, so that a refusal can say what the TD claimed to be.
- `verify_quote(..., floor=CollateralFloor(...))` first refuses collateral
  older than the floor (`COLLATERAL_STALE`: `tcbEvaluationDataNumber` or
  issue date below it, or older than its maximum age);
  `VerifiedQuote.tcb_evaluation_data_number` is the collateral's (the lower of
  TCB Info's and QE Identity's).
- `parse_tdx_quote(quote) -> ParsedQuote` and `check_pck_chain(parsed, roots,
  *, now)`: the cheap part, before any collateral is needed: the quote parses
  as TDX with an embedded PCK chain, and that chain verifies to a pinned root
  (revocation is left to verification). `verify_quote` takes a `ParsedQuote`
  as well as bytes, so a caller parses once.
- `Verifier(roots, *, simulated_allowed, allowed_statuses, floor)`: the roots
  a node trusts, its floor on TCB statuses and on collateral. Intel's root is
  tried first; simulated roots only if `simulated_allowed`. `precheck(quote,
  now=…)` is the cheap part; `verify` of a `ParsedQuote` verifies under the
  root its PCK chain verifies to.
- `Collateral`: dcap-qvl's `QuoteCollateralV3`, in its JSON form (hex for
  bytes) or as an object.
- `INTEL_ROOT_CA`: Intel's SGX Root CA, DER, compiled in (SHA-256
  `44a0196b…74d3`). A production node never reads a root from configuration.

## What is checked, in order, and why

The order is the order in which a quote is refused, so the `QuoteFailure`
reason names the first check that failed.

1. **The arguments.** The collateral must parse as `QuoteCollateralV3`
   (`MALFORMED_COLLATERAL`). `now`, the admitted statuses and the root are
   the caller's; a wrong one is a `TypeError`/`ValueError`, never a refusal.
2. **The quote decodes, and it is a TDX quote.** The 48-byte header and a
   TD report 1.0 (quote v4) or 1.5 (quote v5, body type 3) must decode, with
   consistent lengths (`MALFORMED_QUOTE`; an unknown version or body type is
   `UNSUPPORTED_QUOTE`). The TEE type must be TDX (0x81): dcap-qvl verifies
   SGX enclave quotes just as happily, and an SGX quote proves nothing about a
   TD (`NOT_TDX`). Bytes after the signed data are ignored, as by every DCAP
   verifier (Intel's own sample quotes carry some).
3. **Trust root** (dcap-qvl from here to step 12). The root CA CRL must be
   signed by the trust root (`UNTRUSTED_ROOT`: collateral issued under another
   root, which is how a simulated quote fails under Intel's root) and not be
   stale, `now < nextUpdate` (`COLLATERAL_EXPIRED`). Then the header: ECDSA-P256
   attestation key and Intel's QE vendor ID (`UNSUPPORTED_QUOTE`).
4. **TCB Info.** `issueDate <= now <= nextUpdate` (`COLLATERAL_NOT_YET_VALID`,
   `COLLATERAL_EXPIRED`); its issuer chain (the TCB signing certificate)
   verifies to the root, every certificate within its validity period and
   not revoked, with both CRLs fresh (`CERTIFICATE_CHAIN`,
   `CERTIFICATE_REVOKED`, `UNTRUSTED_ROOT`, `COLLATERAL_EXPIRED`); its ECDSA
   signature covers the exact bytes of the `tcb_info` string
   (`BAD_COLLATERAL_SIGNATURE`).
5. **QE Identity.** The same checks, and it must describe the TD quoting
   enclave (`TD_QE`, version 2 or 3; `COLLATERAL_MISMATCH`).
6. **PCK certificate chain** (embedded in the quote, certification data type
   5): verifies to the root with revocation; the leaf's SGX extension gives
   the platform's FMSPC, CPUSVN, PCESVN and PCE-ID (`CERTIFICATE_CHAIN`,
   `CERTIFICATE_REVOKED`, `UNTRUSTED_ROOT`, `COLLATERAL_EXPIRED` for an
   expired certificate).
7. **QE report signature**: the PCK key signed the quoting enclave's report
   (`BAD_QE_REPORT_SIGNATURE`).
8. **QE report binding**: `SHA-256(attestation key || QE auth data)` is the
   QE report's report data, so the QE vouches for the key that signed the
   quote (`QE_REPORT_BINDING`).
9. **QE identity**: MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES match
   QE Identity under its masks, the QE is not a debug enclave, and its ISVSVN
   reaches a QE TCB level (`QE_IDENTITY_MISMATCH`).
10. **Quote signature**: the attestation key signed the header and TD report,
    so MRTD, the RTMRs and report data are what the TDX module reported
    (`BAD_QUOTE_SIGNATURE`).
11. **Platform TCB level.** The PCK certificate's FMSPC must be TCB Info's
    (`COLLATERAL_MISMATCH`); the highest TCB level whose SGX components,
    PCESVN and TDX components the platform reaches gives the status
    (`TCB_LEVEL_NOT_FOUND`); the TDX module (MRSIGNERSEAM, SEAMATTRIBUTES,
    module ISVSVN) must match a `TDX_xx` identity (`TDX_MODULE_MISMATCH`);
    module and QE statuses converge into the platform status as Intel's
    QVL does, and a `Revoked` result is refused (`TCB_REVOKED`).
12. **TD attributes**: not debug, no profiling, not migratable,
    SEPT_VE_DISABLE set, no reserved bits (`TD_ATTRIBUTES`). A debuggable TD's
    memory is readable by the host, so its measurements mean nothing.
13. **Same report.** The TD report dcap-qvl verified is compared with the one
    the returned fields were read from (`UNKNOWN` if they ever differed).
14. **TCB status admitted**: by default `UpToDate` and `SWHardeningNeeded`;
    anything else (`OutOfDate`, `ConfigurationNeeded`, ...) must be admitted by
    the caller, e.g. from the app's policy (`TCB_STATUS_NOT_ALLOWED`). The
    advisory IDs are returned either way.

dcap-qvl's failures are `ValueError`s with an `anyhow` message chain; they are
mapped to reasons by `kms.attest.errors.MESSAGE_TABLE`, tested against
dcap-qvl's exact strings. A message the table does not know is refused as
`UNKNOWN`. Not checked by dcap-qvl 0.7.0, and so not by this package: the PCK
CRL issuer chain, TCB Info's `pceId`, CRL `thisUpdate`, and the trust
anchor's own validity period.

## What is remembered between quotes

Nothing that could let a quote through that a fresh verification refuses; all
of it bounded (LRU): a PCK chain whose signatures verified to a pinned root,
keyed by its exact certificates and the roots tried (its validity period is
checked at every use); collateral's signed JSON documents, parsed once per
exact text (for the floor's and the metadata's reads); collateral converted to
dcap-qvl's object, once per equal collateral; and dcap-qvl's verdict (TCB
status and advisory IDs) on a quote it accepted, 1,024 of them.

A verdict is reused for a later quote only if that quote equals the verified
one in every byte except its own signature and the TD's measured fields
(MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0-3, REPORTDATA: contiguous
bytes 136-583 of the TD report, which no DCAP check reads), under the same
root and equal collateral, and only once that quote's signature over its
header and TD report verifies under the attestation key both carry (ECDSA
P-256, `cryptography`). Everything else dcap-qvl's verdict depends on is then
the same bytes: header (versions, QE and PCE SVN, QE vendor), TEE TCB SVN,
MRSEAM, MRSIGNERSEAM, SEAM and TD attributes, XFAM, TD report 1.5's second
TCB SVN and MRSERVICETD, the attestation key, QE report and its signature, QE
auth data, PCK chain, and any trailing bytes; the fields returned must be
that quote's bytes, every one of them. A verdict is reused from the second it
was reached (not before) until a second before the first expiry among TCB
Info, QE Identity, both CRLs, their issuer chains and the PCK chain (a leap
second is read a second earlier by dcap-qvl), and for at most an hour
(`VERDICT_REUSE_SECONDS`); the caller's admitted statuses and collateral
floor are applied to it at every use. The chains are read from the quote's
bytes and the collateral's text, never from a `ParsedQuote`'s certificates.
Never remembered: a verdict reached with collateral that carries its own PCK
chain (dcap-qvl then verifies that one), or when the quote's PCK chain or the
collateral's TCB Info or QE Identity issuer chain holds a PEM block other
than a certificate (dcap-qvl reads every block whatever its label and takes
the first as leaf or signer, `cryptography` only certificates, so the expiry
would be read from another chain). A quote that does not meet
all of this, or whose signature does not verify, is verified by dcap-qvl in
full, so every refusal is dcap-qvl's own. `tests/kms/attest/test_attest_caches.py`
compares, byte by byte over a quote (altered, and signed again by its
platform's key), what verification answers with a verdict remembered and
with none.

## Simulated quotes

`kms.attest.simulated.SimulatedTEE` mints quotes (v4 and v5) and collateral in
exactly Intel's formats under a generated root, reproducibly from an injected
`rng`. They pass the very same dcap-qvl call given that root, so every code
path runs without TDX hardware. Because nothing but the root tells them from
real quotes, a node accepts them only through a `Verifier` built with
`simulated_allowed=True`, and `VerifiedQuote.simulated` is then true so the
node can say so in its status, metrics and logs.
"""

from __future__ import annotations

from kms.attest.collateral import Collateral, CollateralFloor
from kms.attest.errors import MESSAGE_TABLE, QuoteFailure, QuoteVerificationError, classify
from kms.attest.roots import INTEL_ROOT_CA, INTEL_ROOT_CA_SHA256
from kms.attest.verify import (
    ADMISSIBLE_STATUSES,
    DEFAULT_ALLOWED_STATUSES,
    ParsedQuote,
    TDFields,
    VerifiedQuote,
    Verifier,
    check_pck_chain,
    parse_td_fields,
    parse_tdx_quote,
    verify_quote,
)

__all__ = [
    "ADMISSIBLE_STATUSES",
    "DEFAULT_ALLOWED_STATUSES",
    "INTEL_ROOT_CA",
    "INTEL_ROOT_CA_SHA256",
    "MESSAGE_TABLE",
    "Collateral",
    "CollateralFloor",
    "ParsedQuote",
    "QuoteFailure",
    "QuoteVerificationError",
    "TDFields",
    "VerifiedQuote",
    "Verifier",
    "check_pck_chain",
    "classify",
    "parse_td_fields",
    "parse_tdx_quote",
    "verify_quote",
]
