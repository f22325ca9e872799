"""App-key certificates (``POST /v1/app-key-cert``), attacked through the public port of an
in-process committee (``kms.app.testing.local_committee``: real services, their HTTP apps).

Each node runs the key-release checks for purpose ``dstack-app-root`` at the requested
root version, which must be the app policy's current one, keeps the first root key it
certified per (app, version) durably, and answers two partials under ``DST_APPCERT``; the
client (``kms.client.http.KeyClient.certify``) combines ``t`` of them and names a node
whose signed partial is wrong, with evidence anyone holding the chain can check.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import coincurve
import httpx
import pytest
import trio

from kms.app.testing import LocalCommittee, app_boot, app_bundle, local_committee
from kms.client.appcert import AppKeyCert, AppKeyCertError
from kms.client.http import certify_app_key, chain_from_bytes
from kms.evidence import verify_wrong_cert_partial
from kms.node.appcert import certified_name
from kms.policy import ROOT_PURPOSE, MinKeyVersion, OwnerKey, Pins
from kms.protocol import (
    AppKeyCertBody,
    AppKeyCertRequest,
    AppKeyCertShare,
    KeyRefusal,
    KeyRequest,
    WrongCertPartialEvidence,
)
from mpc import appcert
from mpc.codec import decode
from mpc.errors import InvalidSignature
from mpc.ids import ParticipantIndex as PI
from mpc.math import G1, G2
from mpc.sig import CTX_APP_CERT_RESPONSE

PURPOSES = ("app", ROOT_PURPOSE)
OTHER = {name: bytes([0xEE]) * 48 for name in ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3")}


def root_public(seed: int) -> bytes:
    return bytes(coincurve.PrivateKey(seed.to_bytes(32, "big")).public_key.format())


PK1, PK2 = root_public(1001), root_public(1002)


async def admitted(c: LocalCommittee, owner: OwnerKey, pins: Pins | None = None) -> bytes:
    """The owner's app, admitted at every node through a key request carrying its bundle."""
    bundle = app_bundle(owner, c.mpk, purposes=PURPOSES, pins=pins).encode()
    s, _ = await c.fetch_keys(owner.app_id(), bundle=bundle)
    assert s.done
    return owner.app_id()


async def certify_at(
    c: LocalCommittee, index: int, app_id: bytes, pk: bytes, **kw: Any
) -> tuple[int, AppKeyCertShare | KeyRefusal]:
    _, req = c.cert_request(app_id, pk, **kw)
    return await c.post_cert(index, req)


def reason(answer: AppKeyCertShare | KeyRefusal) -> str:
    return answer.reason if isinstance(answer, KeyRefusal) else "certified"


def quote_for(c: LocalCommittee, app_id: bytes) -> tuple[Any, bytes]:
    log, m = app_boot(app_id)
    return (lambda rd: c.tee.quote(rd, **m)), log  # type: ignore[arg-type]


def client_certify(
    c: LocalCommittee,
    app_id: bytes,
    pk: bytes,
    transport: httpx.BaseTransport,
    version: int = 1,
) -> AppKeyCert:
    quote, log = quote_for(c, app_id)
    urls = {PI(i): f"http://node-{i}" for i in c.services}
    return certify_app_key(
        urls,
        G2.from_bytes(c.mpk),
        app_id,
        version,
        pk,
        quote,
        event_log=log,
        now=int(c.clock.now()),
        transport=transport,
    )


def test_the_certificate_verifies_under_the_mpk_for_its_app_only(tmp_path: Path) -> None:
    owner, other = OwnerKey.from_seed(bytes([51]) * 32), OwnerKey.from_seed(bytes([52]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            app_b = await admitted(c, other)
            transport = c.blocking_transport()
            cert = await trio.to_thread.run_sync(client_certify, c, app, PK1, transport)
            mpk = G2.from_bytes(c.mpk)
            assert (cert.app_id, cert.version, cert.root_public) == (app, 1, PK1)
            assert cert.epoch == c.chain.epoch and cert.rejected == ()
            link, qkms = cert.link_signature, cert.qkms_signature
            assert appcert.verify(mpk, appcert.link_message(app, PK1), link)
            assert appcert.verify(mpk, appcert.qkms_message(app, PK1, 1, cert.epoch), qkms)
            # Not for app B, another key, another version or epoch, nor swapped.
            assert not appcert.verify(mpk, appcert.link_message(app_b, PK1), link)
            assert not appcert.verify(mpk, appcert.qkms_message(app_b, PK1, 1, cert.epoch), qkms)
            assert not appcert.verify(mpk, appcert.link_message(app, PK2), link)
            assert not appcert.verify(mpk, appcert.qkms_message(app, PK1, 2, cert.epoch), qkms)
            assert not appcert.verify(mpk, appcert.qkms_message(app, PK1, 1, cert.epoch + 1), qkms)
            assert not appcert.verify(mpk, appcert.link_message(app, PK1), qkms)
            # App B's CVM cannot have app A's key certified: its quote's event log names B.
            _, req = c.cert_request(app, PK2, measurement=app_boot(app_b)[1])
            for i in c.services:
                code, answer = await c.post_cert(i, req)
                assert code == 403 and reason(answer) == "policy-refused", answer

    trio.run(main)


def test_a_cvm_the_policy_does_not_admit_gets_no_certificate(tmp_path: Path) -> None:
    owner = OwnerKey.from_seed(bytes([53]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            for i in c.services:
                code, answer = await certify_at(c, i, app, PK1, measurement=OTHER)
                assert code == 403 and reason(answer) == "policy-refused", answer
            # A policy that does not allow the purpose dstack-app-root: refused too.
            plain = OwnerKey.from_seed(bytes([54]) * 32)
            s, _ = await c.fetch_keys(plain.app_id(), bundle=app_bundle(plain, c.mpk).encode())
            assert s.done
            code, answer = await certify_at(c, 1, plain.app_id(), PK1)
            assert code == 403 and reason(answer) == "policy-refused"
            assert isinstance(answer, KeyRefusal) and "purpose" in answer.detail

    trio.run(main)


def test_a_key_release_quote_is_no_certificate_request_and_the_reverse(tmp_path: Path) -> None:
    owner = OwnerKey.from_seed(bytes([55]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            _, key_req = c.key_request(app, purposes=((ROOT_PURPOSE, 1),))
            _, cert_req = c.cert_request(app, PK1)
            # The key request's quote (report data = SHA-512 of a key-request body) with a
            # certificate body: refused.
            forged = replace(cert_req, quote=key_req.quote)
            code, answer = await c.post_cert(1, forged)
            assert code == 403 and reason(answer) == "report-data-mismatch", answer
            # The certificate request's quote with a key-request body: refused.
            reverse = replace(key_req, quote=cert_req.quote)
            r = await c.clients[2].post(
                "/v1/keys",
                content=reverse.encode(),
                headers={"content-type": "application/msgpack"},
            )
            refusal = decode(r.content)
            assert r.status_code == 403 and isinstance(refusal, KeyRefusal)
            assert refusal.reason == "report-data-mismatch"
            # A whole key request posted to the certificate route does not decode as one.
            code, answer = await c.post_cert(3, key_req.encode())
            assert code == 400 and reason(answer) == "malformed-request"
            # Both originals still pass where they belong.
            code, answer = await c.post_cert(1, cert_req)
            assert code == 200 and isinstance(answer, AppKeyCertShare)

    trio.run(main)


def test_a_second_key_for_one_app_version_is_refused_even_after_a_restart(tmp_path: Path) -> None:
    owner = OwnerKey.from_seed(bytes([56]) * 32)
    stores: dict[int, Path] = {}

    async def first() -> None:
        async with local_committee(tmp_path / "a", n=3, threshold=2) as c:
            stores.update(c.stores)
            app = await admitted(c, owner)
            code, answer = await certify_at(c, 1, app, PK1)
            assert code == 200 and isinstance(answer, AppKeyCertShare)
            code, answer = await certify_at(c, 1, app, PK2)
            assert code == 403 and reason(answer) == "app-key-conflict", answer
            assert PK1.hex() in answer.detail  # type: ignore[union-attr]
            text = c.services[1].metrics_text()
            assert "qkms_app_key_conflicts_total 1.0" in text
            assert (
                'qkms_app_key_cert_requests_total{outcome="refused",reason="app-key-conflict"} 1.0'
                in text
            )
            # The same key again (a fresh request) is certified.
            code, answer = await certify_at(c, 1, app, PK1)
            assert code == 200 and isinstance(answer, AppKeyCertShare)
            # Another node that certified nothing yet takes PK2 first: it is per node.
            code, answer = await certify_at(c, 2, app, PK2)
            assert code == 200

    async def after_restart() -> None:
        async with local_committee(tmp_path / "b", n=3, threshold=2, stores=stores) as c:
            app = owner.app_id()
            assert c.services[1].store.get_meta(certified_name(app, 1)) == PK1
            code, answer = await certify_at(c, 1, app, PK2)
            assert code == 403 and reason(answer) == "app-key-conflict", answer
            code, answer = await certify_at(c, 1, app, PK1)
            assert code == 200 and isinstance(answer, AppKeyCertShare)

    trio.run(first)
    trio.run(after_restart)


def test_only_the_current_root_version_is_certified(tmp_path: Path) -> None:
    plain = OwnerKey.from_seed(bytes([57]) * 32)
    pinned = OwnerKey.from_seed(bytes([58]) * 32)
    pins = Pins.build(min_key_versions=[MinKeyVersion(ROOT_PURPOSE, 2)])

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, plain)
            code, answer = await certify_at(c, 1, app, PK1, version=2)
            assert code == 403 and reason(answer) == "not-current-root-version", answer
            code, answer = await certify_at(c, 1, app, PK1, version=1)
            assert code == 200
            app2 = await admitted(c, pinned, pins)
            code, answer = await certify_at(c, 1, app2, PK1, version=3)
            assert code == 403 and reason(answer) == "not-current-root-version", answer
            code, answer = await certify_at(c, 1, app2, PK1, version=1)  # below the pin
            assert code == 403 and reason(answer) == "policy-refused", answer
            code, answer = await certify_at(c, 1, app2, PK2, version=2)
            assert code == 200 and isinstance(answer, AppKeyCertShare)
            assert answer.version == 2

    trio.run(main)


def test_a_replayed_nonce_is_refused_in_the_nonce_space_key_release_shares(
    tmp_path: Path,
) -> None:
    owner = OwnerKey.from_seed(bytes([59]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            _, req = c.cert_request(app, PK1)
            code, first = await c.post_cert(1, req)
            assert code == 200
            # The same request again is answered again, with the same (deterministic) share.
            code, answer = await c.post_cert(1, req)
            assert code == 200 and answer == first
            # Another request with its nonce (quoted anew) is a replay.
            log, m = app_boot(app)
            body = replace(req.body, timestamp=req.body.timestamp + 1)
            other = AppKeyCertRequest(body, c.tee.quote(body.report_data(), **m), log)  # type: ignore[arg-type]
            code, answer = await c.post_cert(1, other)
            assert code == 403 and reason(answer) == "replayed-nonce"
            # A key release's nonce, used again by a certificate request (quoted anew).
            _, key_req = c.key_request(app)
            r = await c.clients[2].post("/v1/keys", content=key_req.encode())
            assert r.status_code == 200
            log, m = app_boot(app)
            body = replace(req.body, nonce=key_req.body.nonce)
            again = AppKeyCertRequest(body, c.tee.quote(body.report_data(), **m), log)  # type: ignore[arg-type]
            code, answer = await c.post_cert(2, again)
            assert code == 403 and reason(answer) == "replayed-nonce"

    trio.run(main)


class CorruptCert(httpx.BaseTransport):
    """Node ``index`` as its corrupt operator serves it: its certificate answers carry a
    wrong link partial (a valid point), signed with its own identity key."""

    def __init__(self, inner: httpx.BaseTransport, c: LocalCommittee, index: int) -> None:
        self.inner, self.c, self.index = inner, c, index

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        r = self.inner.handle_request(request)
        if request.url.host != f"node-{self.index}" or request.url.path != "/v1/app-key-cert":
            return r
        r.read()
        share = decode(r.content)
        assert isinstance(share, AppKeyCertShare)
        wrong = (G1.from_bytes(share.link_partial) + G1.generator()).to_bytes()
        unsigned = replace(share, link_partial=wrong, signature=bytes(64))
        key = self.c.services[self.index].identity
        signed = replace(unsigned, signature=key.sign(CTX_APP_CERT_RESPONSE, unsigned.statement()))
        return httpx.Response(200, content=signed.encode())


def test_a_node_that_signs_a_wrong_partial_is_named_and_the_client_still_gets_a_certificate(
    tmp_path: Path,
) -> None:
    owner = OwnerKey.from_seed(bytes([60]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            corrupt = CorruptCert(c.blocking_transport(), c, 1)
            cert = await trio.to_thread.run_sync(client_certify, c, app, PK1, corrupt)
            mpk = G2.from_bytes(c.mpk)
            assert appcert.verify(mpk, appcert.link_message(app, PK1), cert.link_signature)
            assert [int(r.index) for r in cert.rejected] == [1]
            evidence = cert.rejected[0].evidence
            assert evidence is not None
            # Third-party verifiable, from the verified chain alone, and on the wire.
            r = await c.clients[2].get("/v1/chain")
            chain = chain_from_bytes(r.content, mpk)
            wire = WrongCertPartialEvidence.decode(evidence.encode())
            assert verify_wrong_cert_partial(wire, chain) == (
                "the signed link partial does not match the node's public share"
            )
            # An honest node's answer proves nothing against it.
            _, req = c.cert_request(app, PK1)
            code, honest = await c.post_cert(2, req)
            assert code == 200 and isinstance(honest, AppKeyCertShare)
            with pytest.raises(InvalidSignature):
                verify_wrong_cert_partial(WrongCertPartialEvidence(req, honest), chain)
            # Nor can evidence be made up: the share re-signed by somebody else.
            forged = replace(evidence.share, link_partial=honest.link_partial)
            with pytest.raises(InvalidSignature):
                verify_wrong_cert_partial(replace(evidence, share=forged), chain)
            # With two corrupt nodes of three (t = 2) no certificate, and both named.
            both = CorruptCert(corrupt, c, 2)
            with pytest.raises(AppKeyCertError) as err:
                await trio.to_thread.run_sync(client_certify, c, app, PK1, both)
            assert err.value.bad_nodes == [1, 2]

    trio.run(main)


def test_bad_bodies_never_crash_the_node(tmp_path: Path) -> None:
    owner = OwnerKey.from_seed(bytes([61]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            _, req = c.cert_request(app, PK1)
            good = req.to_json()
            not_on_curve = "02" + "ff" * 32
            bad_json: list[Any] = [
                {},
                [],
                "x",
                {**good, "body": {**good["body"], "root_public": not_on_curve}},
                {**good, "body": {**good["body"], "root_public": "04" + "11" * 32}},
                {**good, "body": {**good["body"], "app_id": ""}},
                {**good, "body": {**good["body"], "policy_hash": "00" * 5}},
                {**good, "body": {**good["body"], "version": -1}},
                {**good, "body": {**good["body"], "nonce": "00"}},
                {**good, "bundle": "00" * 8},  # not the hash the body names
            ]
            http = c.clients[1]
            store = c.services[1].store
            head = store.audit_head()
            for body in bad_json:
                r = await http.post(
                    "/v1/app-key-cert",
                    content=json.dumps(body),
                    headers={"content-type": "application/json"},
                )
                assert r.status_code == 400, (body, r.text)
                assert r.json()["reason"] == "malformed-request"
            for raw in (b"", b"\x93junk", b"\xc1", b"\x92\xa3abc\x01", req.encode()[:-7]):
                code, answer = await c.post_cert(1, raw)
                assert code == 400 and reason(answer) == "malformed-request"
            # A body of another message type (a key request's body) is no certificate request.
            _, key_req = c.key_request(app)
            code, answer = await c.post_cert(1, key_req.body.encode())
            assert code == 400
            # A quote that is junk: refused with a reason, not a crash.
            code, answer = await c.post_cert(1, replace(req, quote=b"\x04\x00" * 100))
            assert code == 403 and reason(answer) == "quote-rejected"
            # Refusals wrote nothing: no audit record, no key record.
            assert store.audit_head() == head
            assert store.get_meta(certified_name(app, 1)) is None
            # The node still certifies, and records it.
            code, answer = await c.post_cert(1, req)
            assert code == 200 and isinstance(answer, AppKeyCertShare)
            assert store.audit_head()[0] == head[0] + 1
            assert store.get_meta(certified_name(app, 1)) == PK1

    trio.run(main)


def test_the_body_validates_its_root_key_and_is_told_apart_from_a_key_request() -> None:
    body = AppKeyCertBody(bytes(20), 1, PK1, 1, bytes(16), 0, 0)
    body.validate()
    assert AppKeyCertBody.decode(body.encode()) == body
    assert body.encode()[:40].find(b"kms/app-key-cert-body") >= 0
    for pk in (b"\x02" + b"\xff" * 32, b"\x04" + PK1[1:], bytes(33)):
        with pytest.raises(Exception, match="root_public"):
            replace(body, root_public=pk).validate()
    assert not isinstance(decode(body.encode()), KeyRequest)


def test_a_certificate_request_carrying_its_bundle_admits_a_new_app(tmp_path: Path) -> None:
    """As a key request may: the node checks the bundle, asks the committee, and admits the
    app when the request (whose event log names the app) passes."""
    owner = OwnerKey.from_seed(bytes([62]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = owner.app_id()
            bundle = app_bundle(owner, c.mpk, purposes=PURPOSES).encode()
            # Without the bundle: no node knows the app.
            code, answer = await certify_at(c, 1, app, PK1)
            assert code == 403 and reason(answer) in ("no-policy", "retry-later"), answer
            # With it, by the client (which asks again while nodes consult the committee).
            transport = c.blocking_transport()
            quote, log = quote_for(c, app)
            urls = {PI(i): f"http://node-{i}" for i in c.services}

            def run() -> AppKeyCert:
                return certify_app_key(
                    urls,
                    G2.from_bytes(c.mpk),
                    app,
                    1,
                    PK1,
                    quote,
                    event_log=log,
                    bundle=bundle,
                    now=int(c.clock.now()),
                    transport=transport,
                )

            cert = await trio.to_thread.run_sync(run)
            assert appcert.verify(
                G2.from_bytes(c.mpk), appcert.link_message(app, PK1), cert.link_signature
            )
            # A CVM of another app carrying this bundle admits nothing: its log names its app.
            stranger = OwnerKey.from_seed(bytes([63]) * 32)
            s_bundle = app_bundle(stranger, c.mpk, purposes=PURPOSES).encode()
            log_a, m_a = app_boot(app)
            _, req = c.cert_request(
                stranger.app_id(), PK2, bundle=s_bundle, measurement=m_a, event_log=log_a
            )
            code, answer = await c.post_cert(3, req)
            assert code == 403 and reason(answer) in ("policy-refused", "retry-later"), answer

    trio.run(main)
