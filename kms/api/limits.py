"""Size limits of the HTTP API, shared by the app (``kms.api.http``) and its OpenAPI document."""

from __future__ import annotations

MAX_BODY = 512 * 1024
"""The largest request body any route reads (a ``KeyRequest`` with a full event log fits)."""
CHAIN_PAGE_LINKS = 64
"""Links in one page of ``GET /v1/chain?from=…``, at most (and by default)."""
CHAIN_PAGE_BYTES = 1 << 20
"""Encoded link bytes in one page, at most (and by default)."""
