"""A corrupt member forwarding a CVM's request to every other member must not deny it service.

n = 3, t = 2, node 1 corrupt, nodes 2 and 3 honest. The corrupt member is in the client's
first batch (``t`` nodes at once, lowest index first). Before answering, it re-sends the
very same request bytes to every other member, which answer the copy and record its nonce.
The CVM's own, identical request must still be answered (a key release is encrypted again
to the same ephemeral key, a certificate partial is deterministic), without a second nonce
or audit record: so the CVM gets its certificate and its key from the two honest members,
and forwarding the request again and again does not grow any member's store.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from test_app_key_cert import PK1, admitted, client_certify, quote_for

from kms.app.testing import LocalCommittee, local_committee
from kms.client.http import fetch_keys
from kms.node.release import NonceUse, nonce_entry, nonce_use
from kms.policy import ROOT_PURPOSE, OwnerKey
from kms.protocol import KeyRefusal
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2


class ReplayingMember(httpx.BaseTransport):
    """Node ``index`` run by its corrupt operator: it forwards every request it gets on
    ``route`` to all other members first (as anyone may, over the public API), then
    refuses."""

    def __init__(
        self, inner: httpx.BaseTransport, c: LocalCommittee, index: int, route: str
    ) -> None:
        self.inner, self.c, self.index, self.route = inner, c, index, route
        self.stolen: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != f"node-{self.index}" or request.url.path != self.route:
            return self.inner.handle_request(request)
        body = request.read()
        for j in self.c.services:
            if j == self.index:
                continue
            copy = httpx.Request(
                "POST",
                f"http://node-{j}{self.route}",
                content=body,
                headers={"content-type": "application/msgpack"},
            )
            r = self.inner.handle_request(copy)
            r.read()
            self.stolen.append(r.status_code)
        return httpx.Response(403, content=KeyRefusal("not-serving", "busy").encode())


def audit_sizes(c: LocalCommittee) -> dict[int, int]:
    return {j: s.store.audit_head()[0] for j, s in c.services.items()}


def test_a_member_forwarding_the_request_does_not_deny_the_certificate(tmp_path: Path) -> None:
    owner = OwnerKey.from_seed(bytes([77]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            before = audit_sizes(c)
            evil = ReplayingMember(c.blocking_transport(), c, 1, "/v1/app-key-cert")
            cert = await trio.to_thread.run_sync(client_certify, c, app, PK1, evil)
            assert cert.link_signature and cert.qkms_signature
            # The honest members certified the corrupt member's copy ...
            assert evil.stolen.count(200) == 2, evil.stolen
            # ... and the CVM's own identical request too, without a second audit record.
            after = audit_sizes(c)
            assert after == {1: before[1], 2: before[2] + 1, 3: before[3] + 1}, (before, after)
            assert cert.refusals == {1: ("not-serving", "busy")}, cert.refusals

    trio.run(main)


def test_a_member_forwarding_the_request_does_not_deny_the_key(tmp_path: Path) -> None:
    owner = OwnerKey.from_seed(bytes([78]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            quote, log = quote_for(c, app)
            urls = {PI(i): f"http://node-{i}" for i in c.services}
            evil = ReplayingMember(c.blocking_transport(), c, 1, "/v1/keys")
            before = audit_sizes(c)

            def fetch() -> object:
                return fetch_keys(
                    urls,
                    G2.from_bytes(c.mpk),
                    app,
                    [(ROOT_PURPOSE, 1)],
                    quote,
                    event_log=log,
                    now=int(c.clock.now()),
                    transport=evil,
                )

            # Two honest members of three (t = 2): the key.
            res = await trio.to_thread.run_sync(fetch)
            assert (ROOT_PURPOSE, 1) in res.derived  # type: ignore[attr-defined]
            assert evil.stolen.count(200) == 2, evil.stolen
            after = audit_sizes(c)
            assert after == {1: before[1], 2: before[2] + 1, 3: before[3] + 1}, (before, after)

    trio.run(main)


def test_a_nonce_recorded_without_a_request_hash_is_still_a_replay(tmp_path: Path) -> None:
    """A replay cache entry written before request hashes were kept (the expiry alone) keeps
    refusing its nonce, identical request or not, until it expires."""
    owner = OwnerKey.from_seed(bytes([79]) * 32)

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            app = await admitted(c, owner)
            _, req = c.cert_request(app, PK1)
            now = int(c.clock.now())
            store = c.services[2].store
            store.set_meta("nonce/" + req.body.nonce.hex(), (now + 600).to_bytes(8, "big"))
            code, answer = await c.post_cert(2, req)
            assert code == 403 and isinstance(answer, KeyRefusal)
            assert answer.reason == "replayed-nonce"
            code, _ = await c.post_cert(3, req)  # no entry there: certified
            assert code == 200

    trio.run(main)


def test_the_replay_cache_entry_names_the_request() -> None:
    rh, other = bytes(range(32)), bytes(32)
    entry = nonce_entry(1000, rh)
    assert entry == (1000).to_bytes(8, "big") + rh
    assert nonce_use(None, now=10, request_hash=rh) is NonceUse.FRESH
    assert nonce_use(entry, now=10, request_hash=rh) is NonceUse.REPEAT
    assert nonce_use(entry, now=10, request_hash=other) is NonceUse.REPLAYED
    assert nonce_use(entry, now=1000, request_hash=other) is NonceUse.FRESH  # expired
    legacy = (1000).to_bytes(8, "big")
    assert nonce_use(legacy, now=10, request_hash=rh) is NonceUse.REPLAYED
    assert nonce_use(legacy, now=1000, request_hash=rh) is NonceUse.FRESH


def test_the_replay_cache_entry_names_the_epoch_that_answered() -> None:
    rh, other = bytes(range(32)), bytes(32)
    entry = nonce_entry(1000, rh, 7)
    assert entry == (1000).to_bytes(8, "big") + rh + (7).to_bytes(8, "big")
    assert nonce_use(entry, now=10, request_hash=rh, epoch=7) is NonceUse.REPEAT
    # Answered before from another epoch's share: a new release, recorded again.
    assert nonce_use(entry, now=10, request_hash=rh, epoch=8) is NonceUse.FRESH
    assert nonce_use(entry, now=10, request_hash=other, epoch=8) is NonceUse.REPLAYED
    assert nonce_use(entry, now=1000, request_hash=other, epoch=7) is NonceUse.FRESH
    # From an earlier epoch than the entry names: a node does not go back, a replay.
    assert nonce_use(entry, now=10, request_hash=rh, epoch=6) is NonceUse.REPLAYED
    # An entry written before epochs were kept names none: answered and recorded again.
    assert nonce_use(nonce_entry(1000, rh), now=10, request_hash=rh, epoch=8) is NonceUse.FRESH
    assert nonce_use(nonce_entry(1000, rh), now=10, request_hash=rh) is NonceUse.REPEAT
    # An entry of no length this code writes is a replay, whatever the request.
    for cut in (9, 39, 41, 44, 47, 49):
        odd = (entry + bytes(8))[:cut]
        assert nonce_use(odd, now=10, request_hash=rh, epoch=7) is NonceUse.REPLAYED
