"""HTTP status codes are chosen in ``kms.api`` only, from the node's typed results: every
reason has one, and the public port answers with it (an in-process committee, its HTTP app
driven through httpx's ASGI transport)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import trio

from kms.api.answers import (
    EVIDENCE_REFUSAL_STATUS,
    KEY_REFUSAL_STATUS,
    POLICY_FAILURE_STATUS,
    key_answer,
    policy_answer,
)
from kms.app.testing import app_boot, app_bundle, local_committee
from kms.node.evidence_log import EvidenceRefusal
from kms.node.keyrelease import KeysNotServed
from kms.node.policies import PoliciesUnavailable
from kms.node.release import KeyRefusalReason, ReleaseRefused
from kms.policy import OwnerKey, PolicyFailure
from kms.policy.registry import OfferOutcome
from kms.protocol import KeyRefusal, KeyRequest, KeyResponse
from mpc.codec import decode


def test_every_reason_has_a_status() -> None:
    assert set(KEY_REFUSAL_STATUS) == set(KeyRefusalReason)
    assert set(EVIDENCE_REFUSAL_STATUS) == set(EvidenceRefusal)
    assert all(400 <= s < 600 for s in KEY_REFUSAL_STATUS.values())
    for reason in KeyRefusalReason:
        code, message = key_answer(ReleaseRefused(reason, "x"))
        assert code == KEY_REFUSAL_STATUS[reason]
        assert isinstance(message, KeyRefusal) and message.reason == reason.value
    assert key_answer(KeysNotServed())[0] == 503
    assert key_answer(ReleaseRefused(KeyRefusalReason.NOT_SERVING, "no share"))[0] == 403
    for failure in PolicyFailure:
        code, body = policy_answer(OfferOutcome(False, b"a", 1, failure, "x"))
        expected = (
            200 if failure is PolicyFailure.DUPLICATE else POLICY_FAILURE_STATUS.get(failure, 409)
        )
        assert code == expected, failure
        assert body["accepted"] is (failure is PolicyFailure.DUPLICATE)
    assert policy_answer(PoliciesUnavailable("x")) == (
        503,
        {"accepted": False, "reason": "not-serving", "detail": "x"},
    )


def test_the_public_port_answers_each_result_with_its_status(tmp_path: Path) -> None:
    owner = OwnerKey.from_seed(bytes([41]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            http = c.clients[1]
            bundle = app_bundle(owner, c.mpk).encode()
            # An app nobody admitted: pushed, it is only cached (202); admitted by a key
            # request carrying its bundle.
            r = await http.post("/v1/policies", content=bundle)
            assert r.status_code == 202 and r.json()["reason"] == "unknown_app"
            r = await http.post("/v1/policies", content=b"\x93junk")
            assert r.status_code == 400 and r.json()["reason"] == "malformed"
            s, _ = await c.fetch_keys(owner.app_id(), bundle=bundle)
            assert s.done
            r = await http.post("/v1/policies", content=bundle)
            assert r.status_code == 200 and r.json()["duplicate"] is True

            _, req = c.key_request(owner.app_id())
            raw = req.encode()
            first = await http.post("/v1/keys", content=raw)
            assert first.status_code == 200 and isinstance(decode(first.content), KeyResponse)
            # The very same request again is answered again (no replay: the same request).
            again = await http.post("/v1/keys", content=raw)
            assert again.status_code == 200 and isinstance(decode(again.content), KeyResponse)
            # The JSON form of the same request is decoded once, by the app: the node sees
            # the same request (answered again too).
            as_json = await http.post(
                "/v1/keys",
                content=json.dumps(req.to_json()),
                headers={"content-type": "application/json"},
            )
            assert as_json.status_code == 200
            # Another request with the used nonce (quoted anew) is a replay.
            log, m = app_boot(owner.app_id())
            body = replace(req.body, timestamp=req.body.timestamp + 1)
            other = KeyRequest(body, c.tee.quote(body.report_data(), **m), log)  # type: ignore[arg-type]
            for content, ctype in (
                (other.encode(), "application/msgpack"),
                (json.dumps(other.to_json()), "application/json"),
            ):
                r = await http.post("/v1/keys", content=content, headers={"content-type": ctype})
                assert r.status_code == 403, ctype
                refusal = decode(r.content) if ctype == "application/msgpack" else None
                if refusal is not None:
                    assert isinstance(refusal, KeyRefusal) and refusal.reason == "replayed-nonce"
                else:
                    assert r.json()["reason"] == "replayed-nonce"
            # Bytes that are no key request, in either encoding: 400, counted as refused.
            for content, ctype in (
                (b"\x92\x01\x02", "application/msgpack"),
                (b"{}", "application/json"),
            ):
                bad = await http.post("/v1/keys", content=content, headers={"content-type": ctype})
                assert bad.status_code == 400, ctype
            metrics = c.services[1].metrics.rejected
            assert metrics["key request: malformed-request"] == 2
            assert metrics["key request: replayed-nonce"] == 2

            r = await http.post("/v1/evidence", content=b"\x93junk")
            assert r.status_code == 400 and r.json()["reason"] == "malformed"

            # A node that releases no keys at all: 503, whatever it is sent.
            c.services[2].releaser = None
            good = c.key_request(owner.app_id())[1].encode()
            for content in (good, b"\x92\x01\x02"):
                r = await c.clients[2].post("/v1/keys", content=content)
                assert r.status_code == 503
                assert KeyRefusal.decode(r.content).reason == "not-serving"

    trio.run(main)
