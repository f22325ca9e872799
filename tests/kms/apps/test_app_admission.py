"""Admitted apps, owner chains and version floors through the node's public surfaces.

Every test runs a real in-process committee (``kms.node.testing``): ``NodeService``
instances on ``net.memory`` with their HTTP apps reached through an ASGI client,
key requests quoted by the simulated TEE.
"""

from __future__ import annotations

import random
from pathlib import Path

import trio

from kms.node.testing import NOW, app_bundle, local_committee
from kms.policy import OwnerChain, OwnerKey
from kms.protocol import KeyRefusal


def run(fn):  # type: ignore[no-untyped-def]
    return trio.run(fn)


def keys(seed: int) -> OwnerKey:
    return OwnerKey.from_seed(random.Random(seed).randbytes(32))


def test_a_cvm_registers_its_app_with_its_key_request(tmp_path: Path) -> None:
    owner = keys(1)

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            raw = app_bundle(owner, c.mpk).encode()
            # Pushed over HTTP alone, the app is not admitted: cached, not kept.
            r = await c.post_policy(1, raw)
            assert r.status_code == 202 and r.json()["reason"] == "unknown_app"
            s, answers = await c.fetch_keys(owner.app_id())
            assert not s.done
            assert {a.reason for a in answers.values() if isinstance(a, KeyRefusal)} == {
                "no-policy"
            }
            # Its CVM's key request carrying the bundle admits it at every node.
            s, _ = await c.fetch_keys(owner.app_id(), bundle=raw)
            assert s.done
            for i in c.services:
                info = (await c.clients[i].get(f"/v1/policies/{owner.app_id().hex()}")).json()
                assert info["version"] == 1
            # A request that names a cached bundle by hash works too (node 1 cached it).
            other = keys(2)
            raw2 = app_bundle(other, c.mpk).encode()
            await c.post_policy(1, raw2)
            s, answers = await c.fetch_keys(other.app_id(), bundle=raw2, nodes=[1, 2])
            assert s.done

    run(main)


def test_a_request_whose_bundle_was_swapped_is_refused(tmp_path: Path) -> None:
    owner, thief = keys(3), keys(4)

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            from kms.client.core import KeyRequestSession
            from kms.node.testing import MEASUREMENT
            from kms.protocol import KeyRequest
            from mpc.codec import decode

            good = app_bundle(owner, c.mpk).encode()
            s = KeyRequestSession(c.chain, owner.app_id(), [("app", 1)], now=NOW, rng=random.Random(1).randbytes, bundle=good)
            req = s.attach_quote(c.tee.quote(s.report_data, **MEASUREMENT))
            swapped = app_bundle(thief, c.mpk, app_id=owner.app_id()).encode()
            forged = KeyRequest(req.body, req.quote, req.event_log, swapped)
            r = await c.clients[1].post("/v1/keys", content=forged.to_wire_bytes() if hasattr(forged, "to_wire_bytes") else _raw(forged))
            answer = decode(r.content)
            assert isinstance(answer, KeyRefusal) and answer.reason == "malformed-request"

    run(main)


def _raw(msg) -> bytes:  # type: ignore[no-untyped-def]
    import msgpack

    return bytes(msgpack.packb(msg.to_wire(), use_bin_type=True))
