"""Policy changes racing a key request: the request is judged by the app's state after any
wait, and a bundle older than one a member holds never admits its app.

Both are attacks on a node that admits an app from the bundle a key request carries:

* while the node fetches collateral for the quote, its operator admits the owner's newer
  version (which revokes the CVM's image), or an owner-rotation fork freezes the app: the
  request in flight must be refused like a new one (``policy-refused``, ``app-frozen``);
* a member answers the committee query with the owner's newer version: the request's older
  bundle must not be used, and the app is not admitted at the older version.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import trio

from kms.api.admin import handle
from kms.app.testing import MEASUREMENT, app_bundle, local_committee
from kms.node.keyrelease import FixedCollateral
from kms.policy import OwnerChain, OwnerKey
from kms.protocol import KeyRefusal, KeyResponse
from mpc.codec import decode

OTHER = {**MEASUREMENT, "rtmr3": b"\x42" * 48}  # a later version admits only another image


def keys(seed: int) -> OwnerKey:
    return OwnerKey.from_seed(random.Random(seed).randbytes(32))


class GatedCollateral(FixedCollateral):
    """A collateral source whose fetch (prepare) can be held open: a slow PCCS."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner._collateral)
        self.armed = False
        self.entered = trio.Event()
        self.go = trio.Event()

    async def prepare(self, quote: Any, *, now: int) -> None:
        if self.armed:
            self.entered.set()
            await self.go.wait()


def _admin(token: bytes, op: str, **f: str) -> bytes:
    return json.dumps({"op": op, "token": token.decode(), **f}).encode()


async def _race(tmp_path: Path, change: str) -> tuple[Any, Any, Any]:
    k1, k2, k3 = keys(501), keys(502), keys(503)
    app = k1.app_id()
    ops = tmp_path / "ops-3"
    ops.mkdir()
    async with local_committee(tmp_path, policies_dir=lambda i: tmp_path / f"ops-{i}") as c:
        v1 = app_bundle(k1, c.mpk).encode()  # admits the CVM's image (app_boot)
        gate = GatedCollateral(c.services[3].keys.collateral)
        c.services[3].keys.collateral = gate
        # First request: node 3 asks the committee (retry-later); members answer unknown.
        s, answers = await c.fetch_keys(app, bundle=v1, nodes=[3], retry=False)
        assert isinstance(answers[3], KeyRefusal) and answers[3].reason == "retry-later"
        await trio.sleep(0.3)
        gate.armed = True
        s, req = c.key_request(app, bundle=v1)
        result: dict[str, Any] = {}

        async def send() -> None:
            r = await c.clients[3].post(
                "/v1/keys", content=req.encode(), headers={"content-type": "application/msgpack"}
            )
            result["status"] = r.status_code
            result["answer"] = decode(r.content)

        async with trio.open_nursery() as n:
            n.start_soon(send)
            with trio.fail_after(5):
                await gate.entered.wait()  # the request passed the gate as a Candidate(v1)
            # Meanwhile node 3's operator admits the owner's version 2, which revokes the
            # CVM's image ...
            v2 = app_bundle(k1, c.mpk, version=2, measurement=OTHER).encode()
            (ops / "app.policy").write_bytes(v2)
            token = b"operator-token"
            reply = handle(c.services[3], token, _admin(token, "reload-policies"))
            assert reply["ok"] and reply["admitted"] == 1, reply
            if change == "frozen":
                # ... and an owner-rotation fork freezes the app.
                g = OwnerChain.genesis(k1.public_bytes())
                real = g.extend(k1.rotate(g, k2.public_bytes()))
                stolen = g.extend(k1.rotate(g, k3.public_bytes()))
                r = await c.post_policy(
                    3, app_bundle(k2, c.mpk, version=3, rotations=real.records).encode()
                )
                assert r.json()["accepted"] is True, r.json()
                r = await c.post_policy(
                    3, app_bundle(k3, c.mpk, version=3, rotations=stolen.records).encode()
                )
                assert r.status_code == 423, r.json()
            gate.go.set()
        gate.armed = False
        info = c.policies[3].describe(app, int(c.clock.now()))
        # The same CVM, asking again now, is refused:
        s2, again = await c.fetch_keys(app, bundle=v1, nodes=[3], retry=False)
        return result, info, again[3]


def test_a_newer_version_admitted_during_the_fetch_refuses_the_request_in_flight(
    tmp_path: Path,
) -> None:
    result, info, again = trio.run(_race, tmp_path, "newer")
    assert info is not None and info["version"] == 2
    assert isinstance(again, KeyRefusal) and again.reason == "policy-refused", again
    assert result["status"] == 403, result
    assert isinstance(result["answer"], KeyRefusal), result
    assert result["answer"].reason == "policy-refused", result


def test_an_app_frozen_during_the_fetch_refuses_the_request_in_flight(tmp_path: Path) -> None:
    result, info, again = trio.run(_race, tmp_path, "frozen")
    assert info is not None and info.get("frozen") is True
    assert isinstance(again, KeyRefusal) and again.reason == "app-frozen", again
    assert result["status"] == 403, result
    assert isinstance(result["answer"], KeyRefusal), result
    assert result["answer"].reason == "app-frozen", result


def test_a_bundle_older_than_one_a_member_holds_does_not_admit_its_app(tmp_path: Path) -> None:
    k1 = OwnerKey.from_seed(random.Random(601).randbytes(32))
    app = k1.app_id()
    out: dict[str, Any] = {}

    async def main() -> None:
        async with local_committee(tmp_path, policies_dir=lambda i: tmp_path / f"ops-{i}") as c:
            v1 = app_bundle(k1, c.mpk).encode()  # admits the CVM's image
            v2 = app_bundle(k1, c.mpk, version=2, measurement=OTHER).encode()  # revokes it
            # Node 1's operator holds the owner's version 2 (gossip has not spread it yet).
            (tmp_path / "ops-1").mkdir()
            (tmp_path / "ops-1" / "app.policy").write_bytes(v2)
            tok = b"operator-token"
            r = handle(
                c.services[1],
                tok,
                json.dumps({"op": "reload-policies", "token": tok.decode()}).encode(),
            )
            assert r["ok"] and r["admitted"] == 1, r
            _, a1 = await c.fetch_keys(app, nodes=[1], retry=False)
            assert isinstance(a1[1], KeyRefusal) and a1[1].reason == "policy-refused", a1
            # The CVM sends the old version 1 to node 3, retrying while node 3 asks the
            # committee; node 1 answers with version 2.
            _, answers = await c.fetch_keys(app, bundle=v1, nodes=[3])
            out["answer"] = answers[3]
            out["info3"] = c.policies[3].describe(app, int(c.clock.now()))

    trio.run(main)
    assert not isinstance(out["answer"], KeyResponse), out
    assert isinstance(out["answer"], KeyRefusal), out
    assert out["info3"] is None or out["info3"]["version"] != 1, out
