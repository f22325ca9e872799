"""Shared pieces of the kms.attest tests: vector paths, seeded rngs, collateral edits."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kms.attest.simulated import SimulatedTEE

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "phala-dcap-qvl"
EXPECTED = json.loads((VECTORS / "EXPECTED.json").read_text())
MANIFEST = json.loads((VECTORS / "derived_negative" / "manifest.json").read_text())

TDX_QUOTE = (VECTORS / "tdx_quote").read_bytes()
TDX_COLLATERAL = (VECTORS / "tdx_quote_collateral.json").read_text()
TDX_NOW = 1752919234
TDX_VALID_FROM = 1750329147
TDX_VALID_UNTIL = 1752919234  # the PCK CRL's nextUpdate is 1752919235

NOW = 1_760_000_000  # 2025-10-09T08:53:20Z: "now" for simulated platforms


def seeded(seed: int) -> Callable[[int], bytes]:
    """A reproducible rng (tests only; production passes os.urandom)."""
    source = random.Random(seed)
    return source.randbytes


def simulated(seed: int = 1, **kwargs: Any) -> SimulatedTEE:
    return SimulatedTEE(seeded(seed), now=kwargs.pop("now", NOW), **kwargs)


def expected(quote: str) -> dict[str, Any]:
    return next(q for q in EXPECTED["quotes"] if q["quote"] == quote)


def edit_document(
    tee: SimulatedTEE, collateral: dict[str, str], field: str, edit: Callable[[dict[str, Any]], Any]
) -> dict[str, str]:
    """``collateral`` with its ``tcb_info`` or ``qe_identity`` edited and signed again."""
    document = json.loads(collateral[field])
    edit(document)
    text = json.dumps(document, separators=(",", ":"))
    return collateral | {field: text, f"{field}_signature": tee.sign_document(text)}


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]
