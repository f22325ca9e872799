"""A JSON-form request that the codec cannot map is a typed 400, never a 500.

JSON can carry a lone UTF-16 surrogate (``"\\ud800"``), which no UTF-8 string
can hold: in any string field of ``POST /v1/keys`` or ``POST /v1/evidence`` it
is refused as malformed and counted, and the node's handler never sees it.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
import trio

from kms.api.http import make_app
from kms.node.evidence_log import EvidenceRefusal, EvidenceRefused
from kms.node.policies import PoliciesUnavailable
from kms.node.release import KeyRefusalReason, ReleaseRefused
from kms.protocol import (
    EphemeralKey,
    KeyRequest,
    KeyRequestBody,
    KeyShareResponse,
    PurposeVersion,
    WrongPartialEvidence,
)
from mpc.codec import MessageDecodeError


class Source:
    def __init__(self) -> None:
        self.rejected: Counter[str] = Counter()
        self.seen: list[str] = []

    def status(self) -> dict[str, Any]:
        return {"healthy": True}

    def metrics_text(self) -> str:
        return ""

    async def release(self, request: KeyRequest) -> ReleaseRefused:
        self.seen.append("release")
        return ReleaseRefused(KeyRefusalReason.NO_POLICY, "x")

    def refuse_key_request(self, exc: MessageDecodeError) -> ReleaseRefused:
        # What the node does with a body that does not decode: count it, refuse it.
        self.count_rejected("key request: malformed-request")
        return ReleaseRefused(KeyRefusalReason.MALFORMED, str(exc)[:500])

    def chain_bytes(self) -> bytes:
        return b""

    def chain_page(self, start: int, limit: int, max_bytes: int) -> tuple[int, int, int, bytes]:
        raise AssertionError("not called")

    def count_rejected(self, label: str) -> None:
        self.rejected[label] += 1

    def offer_evidence(self, raw: bytes) -> EvidenceRefused:
        self.seen.append("evidence")
        return EvidenceRefused(EvidenceRefusal.MALFORMED, "x")

    def audit_head(self) -> dict[str, Any]:
        return {}

    def offer_policy(self, raw: bytes) -> PoliciesUnavailable:
        return PoliciesUnavailable("x")

    def policy_info(self, app_id: bytes) -> dict[str, Any] | None:
        return None


PV = PurposeVersion("app", 1)
REQUEST = KeyRequest(
    KeyRequestBody(
        b"\x01" * 20, (PV,), (EphemeralKey(1, b"\x09" * 32),), 1_800_000_000, b"\x00" * 16, 0, 0
    ),
    b"\x00" * 64,
    b"",
)
EVIDENCE = WrongPartialEvidence(
    REQUEST,
    KeyShareResponse(b"\x02" * 32, PV, 1, 1, b"\x03" * 32, b"\x04" * 48, b"\x05" * 64),
    b"\x06" * 32,
)


def _with_surrogate(doc: dict[str, Any]) -> str:
    text = json.dumps(doc)
    evil = text.replace('"purpose": "app"', '"purpose": "\\ud800"')
    assert evil != text
    return evil


async def _post(path: str, content: str) -> tuple[httpx.Response, Source]:
    source = Source()
    transport = httpx.ASGITransport(app=make_app(source), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        response = await client.post(
            path, content=content, headers={"content-type": "application/json"}
        )
    return response, source


@pytest.mark.parametrize(
    ("path", "doc", "label"),
    [
        ("/v1/keys", REQUEST.to_json(), "key request: malformed-request"),
        ("/v1/evidence", EVIDENCE.to_json(), "evidence: malformed"),
    ],
)
def test_a_lone_surrogate_in_a_json_request_is_a_typed_400(
    path: str, doc: dict[str, Any], label: str
) -> None:
    async def main() -> None:
        response, source = await _post(path, _with_surrogate(doc))
        assert response.status_code == 400, response.text
        assert "surrogate" in response.text
        assert "malformed" in response.text
        assert source.rejected == Counter({label: 1})
        assert source.seen == []
        # Without the surrogate, the same document is refused for another reason.
        plain, source = await _post(path, json.dumps(doc))
        assert plain.status_code in (400, 403) and "surrogate" not in plain.text

    trio.run(main)
