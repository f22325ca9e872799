"""A policy change a full disk refused is not held: the node's memory stays its store.

An owner (or whoever holds a stolen owner key) pushes to a node whose disk is full.
The push is answered 503 ``storage-full``. Once space returns the node must serve
what its store holds, not the refused change; the same bundle pushed again must be
checked and stored (not answered ``duplicate`` from its hash); and a restart must
find the floor and any freeze the running node showed. The disk is filled as in
``test_disk_full.py``; everything goes through the node's HTTP app and its store file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from test_disk_full import fill_disk, free_disk  # noqa: E402

from kms.api import admin  # noqa: E402
from kms.app import testing as kt  # noqa: E402
from kms.app.testing import app_bundle, local_committee  # noqa: E402
from kms.node.policies import NodePolicies  # noqa: E402
from kms.policy import OwnerChain, OwnerKey  # noqa: E402
from kms.protocol import KeyRefusal  # noqa: E402
from kms.store import NodeStore, TEESealer  # noqa: E402

# Purposes long enough that the bundle's row needs pages the full disk does not have.
BIG = ("app", *[f"p{i:03d}".ljust(60, "x") for i in range(60)])


def restarted_view(path: Path, mpk: bytes, app: bytes) -> dict[str, Any] | None:
    """What a node knows of ``app`` after a restart: what its policies load from the store."""
    store = NodeStore(path, TEESealer(lambda: kt._SEALER_KEY))
    try:
        return NodePolicies(store, lambda: mpk).describe(app, int(kt.NOW))
    finally:
        store.close()


async def wait_recovered(http: Any) -> None:
    with trio.fail_after(15):
        while (await http.get("/v1/status")).json()["storage"]["full"]:
            await trio.sleep(0.1)


def _rotate(old: OwnerKey, new: OwnerKey, chain: OwnerChain) -> OwnerChain:
    return chain.extend(old.rotate(chain, new.public_bytes()))


def test_a_push_refused_for_a_full_disk_is_not_served_and_a_repush_is_stored(
    tmp_path: Path,
) -> None:
    owner = OwnerKey.from_seed(bytes([61]) * 32)
    app = owner.app_id()
    out: dict[str, Any] = {}

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            v1 = app_bundle(owner, c.mpk, version=1).encode()
            assert (await c.fetch_keys(app, bundle=v1))[0].done
            svc, http = c.services[3], c.clients[3]
            fill_disk(svc.store)
            v2 = app_bundle(owner, c.mpk, version=2, purposes=BIG).encode()
            r = await c.post_policy(3, v2)
            assert r.status_code == 503 and r.json()["reason"] == "storage-full"
            free_disk(svc.store)
            await wait_recovered(http)
            # The refused version is not served: the node holds what its store holds.
            got = (await http.get(f"/v1/policies/{app.hex()}")).json()
            assert got["version"] == 1, got
            assert {a.app_id: a for a in svc.store.apps()}[app].version_floor == 1
            # The same bundle pushed again is checked and stored now.
            again = await c.post_policy(3, v2)
            assert again.status_code == 200 and again.json()["accepted"] is True, again.json()
            assert {a.app_id: a for a in svc.store.apps()}[app].version_floor == 2
            assert (await http.get(f"/v1/policies/{app.hex()}")).json()["version"] == 2
            out["mpk"], out["path"] = c.mpk, c.stores[3]

    trio.run(main)
    view = restarted_view(out["path"], out["mpk"], app)
    assert view is not None and view["version"] == 2  # the floor did not drop


def test_a_freeze_refused_for_a_full_disk_is_stored_when_the_fork_is_sent_again(
    tmp_path: Path,
) -> None:
    """A thief holding owner key k1 rotated to k3 first, and node 3 serves the thief's
    policy. The real owner publishes its rotation k1 -> k2 (a fork: the app must freeze)
    while node 3's disk is full. The node must not show a freeze it has not stored; once
    the fork is sent again it freezes and stores the freeze, which a restart keeps."""
    k1, k2, k3 = (OwnerKey.from_seed(bytes([s]) * 32) for s in (70, 71, 72))
    app = k1.app_id()
    g = OwnerChain.genesis(k1.public_bytes())
    thief, real = _rotate(k1, k3, g), _rotate(k1, k2, g)
    cur = k2
    for s in range(100, 140):  # the real branch goes on (a row that needs new pages)
        nxt = OwnerKey.from_seed(bytes([s]) * 32)
        real = _rotate(cur, nxt, real)
        cur = nxt
    out: dict[str, Any] = {}

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            assert (await c.fetch_keys(app, bundle=app_bundle(k1, c.mpk).encode()))[0].done
            tb = app_bundle(k3, c.mpk, version=2, rotations=thief.records).encode()
            for i in c.services:
                assert (await c.post_policy(i, tb)).json()["accepted"] is True
            svc, http = c.services[3], c.clients[3]
            fill_disk(svc.store)
            rb = app_bundle(cur, c.mpk, version=3, rotations=real.records, purposes=BIG).encode()
            r = await c.post_policy(3, rb)
            assert r.status_code == 503, r.text
            free_disk(svc.store)
            await wait_recovered(http)
            st = (await http.get("/v1/status")).json()
            assert st["apps"]["frozen"] == []  # not stored, so not shown
            assert {a.app_id: a for a in svc.store.apps()}[app].frozen is False
            again = await c.post_policy(3, rb)
            assert again.json()["reason"] == "app_frozen", again.json()
            assert {a.app_id: a for a in svc.store.apps()}[app].frozen is True
            st = (await http.get("/v1/status")).json()
            assert st["apps"]["frozen"] == [app.hex()]
            out["mpk"], out["path"] = c.mpk, c.stores[3]

    trio.run(main)
    view = restarted_view(out["path"], out["mpk"], app)
    assert view is not None and view.get("frozen") is True, view  # the thief is not served


def test_an_admission_by_key_request_refused_for_a_full_disk_is_not_held(
    tmp_path: Path,
) -> None:
    """A CVM's key request carries the bundle of an app node 3 has not admitted; node 3's
    disk is full, so it answers 503 and must not hold the app it could not store."""
    owner = OwnerKey.from_seed(bytes([80]) * 32)
    app = owner.app_id()

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            svc, http = c.services[3], c.clients[3]
            bundle = app_bundle(owner, c.mpk, purposes=BIG).encode()
            fill_disk(svc.store)
            _, answers = await c.fetch_keys(app, bundle=bundle, nodes=[3])
            assert isinstance(answers[3], KeyRefusal) and answers[3].reason == "storage-full"
            free_disk(svc.store)
            await wait_recovered(http)
            assert app not in {a.app_id for a in svc.store.apps()}
            r = await http.get(f"/v1/policies/{app.hex()}")
            assert r.status_code == 404, r.text  # not admitted: the store does not hold it
            # A CVM asking again is answered, and the admission is stored this time.
            s, answers = await c.fetch_keys(app, bundle=bundle)
            assert s.done, answers
            assert app in {a.app_id for a in svc.store.apps()}

    trio.run(main)


def test_a_directory_reload_refused_for_a_full_disk_is_not_held(tmp_path: Path) -> None:
    """The operator drops version 2 into node 3's policies directory and asks for a reload
    (admin ``reload-policies``) while the disk is full: refused, and not served after."""
    owner = OwnerKey.from_seed(bytes([90]) * 32)
    app = owner.app_id()
    pdir = tmp_path / "policies-3"
    pdir.mkdir()

    def admin_reload(svc: Any) -> dict[str, Any]:
        raw = json.dumps({"op": "reload-policies", "token": "t"}).encode()
        return admin.handle(svc, b"t", raw)

    async def main() -> None:
        async with local_committee(
            tmp_path, n=3, threshold=2, policies_dir=lambda i: pdir if i == 3 else None
        ) as c:
            v1 = app_bundle(owner, c.mpk, version=1).encode()
            assert (await c.fetch_keys(app, bundle=v1))[0].done
            svc, http = c.services[3], c.clients[3]
            (pdir / "app.policy").write_bytes(
                app_bundle(owner, c.mpk, version=2, purposes=BIG).encode()
            )
            fill_disk(svc.store)
            reply = admin_reload(svc)
            assert reply["ok"] is False and reply["reason"] == "storage-full", reply
            free_disk(svc.store)
            await wait_recovered(http)
            assert (await http.get(f"/v1/policies/{app.hex()}")).json()["version"] == 1
            reply = admin_reload(svc)
            assert reply["ok"] is True and reply["updated"] == 1, reply
            assert {a.app_id: a for a in svc.store.apps()}[app].version_floor == 2
            assert (await http.get(f"/v1/policies/{app.hex()}")).json()["version"] == 2

    trio.run(main)
