"""Admitted apps, owner chains and version floors through the node's public surfaces.

Every test runs a real in-process committee (``kms.app.testing``): ``NodeService``
instances on ``net.memory`` with their HTTP apps reached through an ASGI client,
key requests quoted by the simulated TEE.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import msgpack
import trio

from kms.api.admin import handle
from kms.app.testing import MEASUREMENT, NOW, app_bundle, local_committee
from kms.client.core import KeyRequestSession
from kms.policy import OwnerChain, OwnerKey, build_event_log, dstack_boot_events
from kms.protocol import KeyRefusal, KeyRequest
from mpc.codec import decode

ROGUE = {**MEASUREMENT, "rtmr3": bytes(48)}


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
    """The bundle's hash is in the quoted body: a bundle swapped in transit does not match."""
    owner, thief = keys(3), keys(4)

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            good = app_bundle(owner, c.mpk).encode()
            s = KeyRequestSession(
                c.chain, owner.app_id(), [("app", 1)], now=NOW, rng=os.urandom, bundle=good
            )
            req = s.attach_quote(c.tee.quote(s.report_data, **MEASUREMENT))
            swapped = app_bundle(thief, c.mpk, measurement=ROGUE).encode()
            forged = KeyRequest(req.body, req.quote, req.event_log, swapped)
            raw = bytes(msgpack.packb(forged.to_wire(), use_bin_type=True))
            r = await c.clients[1].post("/v1/keys", content=raw)
            answer = decode(r.content)
            assert isinstance(answer, KeyRefusal) and answer.reason == "malformed-request"
            assert owner.app_id() not in c.policies[1].registry  # type: ignore[operator]

    run(main)


def _admin_req(token: bytes, op: str, **fields: str) -> bytes:
    return json.dumps({"op": op, "token": token.decode(), **fields}).encode()


async def admitted_by_operators_of(c: Any, nodes: list[int], raw: bytes, root: Path) -> None:
    """The operators of ``nodes`` admit the app by placing ``raw`` in their policies
    directory and reloading (the other members hear nothing while partitioned)."""
    token = b"operator-token"
    for i in nodes:
        (root / f"ops-{i}").mkdir(exist_ok=True)
        (root / f"ops-{i}" / "app.policy").write_bytes(raw)
        reply = handle(c.services[i], token, _admin_req(token, "reload-policies"))
        assert reply["ok"] and reply["admitted"] == 1, reply


def _rotate(old: OwnerKey, new: OwnerKey, chain: OwnerChain) -> OwnerChain:
    return chain.extend(old.rotate(chain, new.public_bytes()))


def test_a_rotated_away_owner_key_cannot_take_the_app_back(tmp_path: Path) -> None:
    """The owner rotated K1 -> K2 after K1 was stolen; the latest policy expired; the node
    restarted and re-read its directory. The thief posts version 4,000,000,000 signed by K1."""
    k1, k2 = keys(10), keys(11)
    app = k1.app_id()
    chain = _rotate(k1, k2, OwnerChain.genesis(k1.public_bytes()))
    lifetime = 3600

    async def first_run() -> dict[int, Path]:
        async with local_committee(tmp_path) as c:
            s, _ = await c.fetch_keys(app, bundle=app_bundle(k1, c.mpk, lifetime=lifetime).encode())
            assert s.done
            v2 = app_bundle(k2, c.mpk, version=2, lifetime=lifetime, rotations=chain.records)
            for i in c.services:
                assert (await c.post_policy(i, v2.encode())).json()["accepted"] is True
            return c.stores

    stores = trio.run(first_run)
    later = NOW + 2 * lifetime  # every policy of the app has expired

    async def after_expiry() -> None:
        async with local_committee(tmp_path, stores=stores) as c:
            c.clock.t = float(later)
            for p in c.policies.values():
                p.ready(later)
                p.reload(later)
            thief = app_bundle(k1, c.mpk, version=4_000_000_000, now=later)
            for i in c.services:
                r = await c.post_policy(i, thief.encode())
                assert r.json()["accepted"] is False, r.json()
                assert r.json()["reason"] == "not_owner"
            # Nor through a key request carrying the thief's bundle (the app is known).
            s, answers = await c.fetch_keys(app, bundle=thief.encode())
            assert not s.done
            # The real owner's renewal is accepted everywhere.
            renewal = app_bundle(k2, c.mpk, version=3, now=later, rotations=chain.records)
            for i in c.services:
                r = await c.post_policy(i, renewal.encode())
                assert r.json()["accepted"] is True, r.json()
            s, _ = await c.fetch_keys(app)
            assert s.done

    run(after_expiry)


def test_a_new_member_learns_the_chain_from_the_committee_before_accepting(
    tmp_path: Path,
) -> None:
    k1, k2 = keys(20), keys(21)
    app = k1.app_id()
    chain = _rotate(k1, k2, OwnerChain.genesis(k1.public_bytes()))

    async def main() -> None:
        async with local_committee(tmp_path, policies_dir=lambda i: tmp_path / f"ops-{i}") as c:
            # Nodes 1 and 2 admitted the app and saw the rotation; node 3 never heard of it.
            pid = {i: s.transport.local_peer for i, s in c.services.items()}
            c.network.partition([[pid[1], pid[2]], [pid[3]]])
            # Nodes 1 and 2 admit the app (a key request could not: with node 3 cut off,
            # fewer than t other members would answer their committee query).
            await admitted_by_operators_of(c, [1, 2], app_bundle(k1, c.mpk).encode(), tmp_path)
            v2 = app_bundle(k2, c.mpk, version=2, rotations=chain.records).encode()
            for i in (1, 2):
                await c.post_policy(i, v2)
            await trio.sleep(0.1)
            assert app not in c.policies[3].registry  # type: ignore[operator]
            c.network.heal()
            # The thief reaches node 3 first with a policy signed by the rotated-away key.
            thief = app_bundle(k1, c.mpk, version=4_000_000_000).encode()
            r = await c.post_policy(3, thief)
            assert r.status_code == 202 and r.json()["reason"] == "unknown_app"
            # Node 3 asked the committee; t members answered with the real chain.
            with trio.fail_after(5):
                while app not in c.policies[3].registry:  # type: ignore[operator]
                    await trio.sleep(0.01)
            info = (await c.clients[3].get(f"/v1/policies/{app.hex()}")).json()
            assert info["version"] == 2 and info["owner_key"] == k2.public_bytes().hex()
            r = await c.post_policy(3, thief)
            assert r.json()["reason"] == "not_owner"
            s, _ = await c.fetch_keys(app, nodes=[3, 1])
            assert s.done

    run(main)


def test_a_rotation_fork_freezes_the_app_until_the_operator_picks_a_branch(
    tmp_path: Path,
) -> None:
    k1, k2, k3 = keys(30), keys(31), keys(32)
    app = k1.app_id()
    genesis = OwnerChain.genesis(k1.public_bytes())
    real = _rotate(k1, k2, genesis)
    stolen = _rotate(k1, k3, genesis)
    pdir = tmp_path / "operator"
    pdir.mkdir()

    async def main() -> None:
        async with local_committee(tmp_path, policies_dir=lambda i: pdir) as c:
            s, _ = await c.fetch_keys(app, bundle=app_bundle(k1, c.mpk).encode())
            assert s.done
            v2 = app_bundle(k2, c.mpk, version=2, rotations=real.records).encode()
            for i in c.services:  # (or the gossip's echo of an earlier push)
                assert (await c.post_policy(i, v2)).json()["accepted"] is True
            fork = app_bundle(k3, c.mpk, version=2, rotations=stolen.records).encode()
            for i in c.services:
                r = await c.post_policy(i, fork)
                assert r.status_code == 423 and r.json()["reason"] == "app_frozen", r.json()
            # Frozen: no release, no push (even the real owner's), an alert.
            s, answers = await c.fetch_keys(app)
            assert not s.done
            assert {a.reason for a in answers.values() if isinstance(a, KeyRefusal)} == {
                "app-frozen"
            }
            v3 = app_bundle(k2, c.mpk, version=3, rotations=real.records).encode()
            assert (await c.post_policy(1, v3)).json()["reason"] == "app_frozen"
            status = (await c.clients[1].get("/v1/status")).json()
            assert status["apps"]["frozen"] == [app.hex()]
            metrics = (await c.clients[1].get("/metrics")).text
            assert "qkms_apps_frozen 1" in metrics
            # A reload with the real branch's file in the directory lifts nothing: only
            # the operator's explicit resolve-fork, on the owner's word, does.
            (pdir / f"{app.hex()}.policy").write_bytes(v3)
            token = b"operator-token"
            for i in c.services:
                reply = handle(c.services[i], token, _admin_req(token, "reload-policies"))
                assert reply["ok"] and reply["frozen"] == 1, reply
            assert not (await c.fetch_keys(app))[0].done
            for i in c.services:
                req = _admin_req(token, "resolve-fork", app_id=app.hex(), bundle=v3.hex())
                reply = handle(c.services[i], token, req)
                assert reply["ok"] and reply["version"] == 3, reply
            s, _ = await c.fetch_keys(app)
            assert s.done
            assert (await c.post_policy(1, fork)).json()["accepted"] is False

    run(main)


def test_version_jumps_are_bounded(tmp_path: Path) -> None:
    owner, fresh = keys(40), keys(41)
    app = owner.app_id()

    async def main() -> None:
        async with local_committee(tmp_path, max_version_step=1000) as c:
            s, _ = await c.fetch_keys(app, bundle=app_bundle(owner, c.mpk).encode())
            assert s.done
            r = await c.post_policy(1, app_bundle(owner, c.mpk, version=1002).encode())
            assert r.status_code == 409 and r.json()["reason"] == "version_jump"
            r = await c.post_policy(1, app_bundle(owner, c.mpk, version=1001).encode())
            assert r.json()["accepted"] is True
            # A new app's first version is bounded from 0 too.
            big = app_bundle(fresh, c.mpk, version=5000).encode()
            s, answers = await c.fetch_keys(fresh.app_id(), bundle=big)
            assert not s.done
            assert all(
                isinstance(a, KeyRefusal)
                and a.reason == "bundle-refused"
                and "version_jump" in a.detail
                for a in answers.values()
            )

    run(main)


def test_the_bundle_hash_tag_is_its_own_and_documented() -> None:
    from kms.policy.app import APP_ID_DOMAIN, CTX_APP_POLICY, CTX_OWNER_ROTATION
    from kms.protocol import BUNDLE_HASH_DOMAIN, RELEASE_INFO, bundle_hash
    from mpc.sig import CONTEXTS

    others = {APP_ID_DOMAIN, CTX_APP_POLICY, CTX_OWNER_ROTATION, RELEASE_INFO, *CONTEXTS.values()}
    assert BUNDLE_HASH_DOMAIN not in others
    assert not any(
        o.startswith(BUNDLE_HASH_DOMAIN) or BUNDLE_HASH_DOMAIN.startswith(o) for o in others
    )
    assert bundle_hash(b"x") != bundle_hash(b"y")
    crypto = (Path(__file__).resolve().parents[3] / "docs" / "crypto.md").read_text()
    assert BUNDLE_HASH_DOMAIN.decode() in crypto


def test_a_version_1_key_request_gets_a_typed_refusal(tmp_path: Path) -> None:
    owner = keys(50)

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            s = KeyRequestSession(c.chain, owner.app_id(), [("app", 1)], now=NOW, rng=os.urandom)
            req = s.attach_quote(c.tee.quote(s.report_data, **MEASUREMENT))
            wire = req.to_wire()
            body = wire[2]
            old = ["kms/key-request", 1, ["kms/key-request-body", 1, *body[2:-1]], *wire[3:-1]]
            r = await c.clients[1].post("/v1/keys", content=msgpack.packb(old, use_bin_type=True))
            answer = decode(r.content)
            assert isinstance(answer, KeyRefusal) and answer.reason == "malformed-request"
            assert "unsupported version 1" in answer.detail
            assert (
                'reason="key request: malformed-request"'
                in (await c.clients[1].get("/metrics")).text
            )

    run(main)


def test_a_member_that_does_not_know_an_admitted_app_learns_it_from_a_key_request(
    tmp_path: Path,
) -> None:
    owner = keys(51)

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            raw = app_bundle(owner, c.mpk).encode()
            s, _ = await c.fetch_keys(owner.app_id(), bundle=raw, nodes=[1, 2])
            assert s.done
            # Node 3 never saw the app: the first request it cannot answer makes it ask.
            s, answers = await c.fetch_keys(owner.app_id(), nodes=[3])
            assert isinstance(answers[3], KeyRefusal) and answers[3].reason == "no-policy"
            with trio.fail_after(5):
                while owner.app_id() not in c.policies[3].registry:  # type: ignore[operator]
                    await trio.sleep(0.01)
            s, _ = await c.fetch_keys(owner.app_id(), nodes=[3, 1])
            assert s.done

    run(main)


def test_a_member_that_never_heard_of_the_app_asks_the_committee_before_a_key_request(
    tmp_path: Path,
) -> None:
    """The race at a member that never heard of the app: a thief holding the rotated-away key
    sends it a key request carrying a first version (1000, the most a first version may be).
    Cut off from the committee, the member answers ``retry-later`` and admits nothing; once
    it hears the members, it holds the owner's chain and the thief's key is not the owner."""
    k1, k2 = keys(60), keys(61)
    app = k1.app_id()
    chain = _rotate(k1, k2, OwnerChain.genesis(k1.public_bytes()))

    async def main() -> None:
        async with local_committee(tmp_path, policies_dir=lambda i: tmp_path / f"ops-{i}") as c:
            pid = {i: s.transport.local_peer for i, s in c.services.items()}
            c.network.partition([[pid[1], pid[2]], [pid[3]]])  # node 3 hears nothing
            # Nodes 1 and 2 admit the app (a key request could not: with node 3 cut off,
            # fewer than t other members would answer their committee query).
            await admitted_by_operators_of(c, [1, 2], app_bundle(k1, c.mpk).encode(), tmp_path)
            v2 = app_bundle(k2, c.mpk, version=2, rotations=chain.records).encode()
            for i in (1, 2):
                assert (await c.post_policy(i, v2)).json()["accepted"] is True
            # The thief's CVM is booted for the app with a compose file of its own.
            log, rtmr3 = build_event_log(dstack_boot_events(app_id=app, compose_hash=b"\xee" * 32))
            rogue = {**MEASUREMENT, "rtmr3": rtmr3}
            thief = app_bundle(k1, c.mpk, version=1000, measurement=rogue).encode()
            s, answers = await c.fetch_keys(
                app, bundle=thief, nodes=[3], measurement=rogue, event_log=log.encode(), retry=False
            )
            assert isinstance(answers[3], KeyRefusal) and answers[3].reason == "retry-later"
            assert c.policies[3].describe(app, NOW) is None
            c.network.heal()
            s, answers = await c.fetch_keys(
                app, bundle=thief, nodes=[3], measurement=rogue, event_log=log.encode()
            )
            assert isinstance(answers[3], KeyRefusal), answers
            with trio.fail_after(5):  # digest rounds bring the owner's chain
                while (c.policies[3].describe(app, int(c.clock.t)) or {}).get("version") != 2:
                    c.clock.t += 3601.0
                    await trio.sleep(0.05)
            info = c.policies[3].describe(app, int(c.clock.t)) or {}
            assert info["owner_key"] == k2.public_bytes().hex()
            r = await c.post_policy(3, app_bundle(k1, c.mpk, version=1001, now=NOW).encode())
            assert r.json()["reason"] == "not_owner"

    run(main)


def test_a_global_cap_stops_registration_by_key_request_only(tmp_path: Path) -> None:
    a, b = keys(70), keys(71)

    async def main() -> None:
        async with local_committee(tmp_path, max_apps=1) as c:
            s, _ = await c.fetch_keys(a.app_id(), bundle=app_bundle(a, c.mpk).encode())
            assert s.done
            s, answers = await c.fetch_keys(b.app_id(), bundle=app_bundle(b, c.mpk).encode())
            assert not s.done
            assert all(
                isinstance(x, KeyRefusal)
                and x.reason == "bundle-refused"
                and "policy_max_apps" in x.detail
                for x in answers.values()
            )

    run(main)


def test_members_answering_with_forked_chains_freeze_the_app_at_a_new_member(
    tmp_path: Path,
) -> None:
    k1, k2, k3 = keys(80), keys(81), keys(82)
    app = k1.app_id()
    genesis = OwnerChain.genesis(k1.public_bytes())
    left, right = _rotate(k1, k2, genesis), _rotate(k1, k3, genesis)

    async def main() -> None:
        async with local_committee(tmp_path, policies_dir=lambda i: tmp_path / f"ops-{i}") as c:
            pid = {i: s.transport.local_peer for i, s in c.services.items()}
            c.network.partition([[pid[1], pid[2]], [pid[3]]])
            # Nodes 1 and 2 admit the app (a key request could not: with node 3 cut off,
            # fewer than t other members would answer their committee query).
            await admitted_by_operators_of(c, [1, 2], app_bundle(k1, c.mpk).encode(), tmp_path)
            c.network.partition([[pid[1]], [pid[2]], [pid[3]]])
            # The owner rotated at node 1, the thief (holding k1) at node 2.
            on_left = app_bundle(k2, c.mpk, version=2, rotations=left.records).encode()
            on_right = app_bundle(k3, c.mpk, version=2, rotations=right.records).encode()
            assert (await c.post_policy(1, on_left)).json()["accepted"] is True
            assert (await c.post_policy(2, on_right)).json()["accepted"] is True
            c.network.heal()
            # Node 3 is asked about the app: both members answer, with different chains.
            r = await c.post_policy(3, on_left)
            assert r.status_code == 202
            with trio.fail_after(5):
                while not c.policies[3].is_frozen(app, NOW):
                    await trio.sleep(0.01)
            s, answers = await c.fetch_keys(app, nodes=[3])
            assert isinstance(answers[3], KeyRefusal) and answers[3].reason == "app-frozen"
            status = (await c.clients[3].get("/v1/status")).json()
            assert status["apps"]["frozen"] == [app.hex()]

    run(main)


def test_the_cache_of_pushed_bundles_is_bounded_in_bytes_and_evicts_the_oldest(
    tmp_path: Path,
) -> None:
    owners = [keys(100 + i) for i in range(40)]

    async def main() -> None:
        async with local_committee(tmp_path, cache_bytes=12_000) as c:
            raws = [app_bundle(o, c.mpk).encode() for o in owners]
            for raw in raws:
                assert (await c.post_policy(1, raw)).status_code == 202
            stats = (await c.clients[1].get("/v1/status")).json()["apps"]
            assert stats["cache_bytes"] <= 12_000 and stats["cache_evictions"] > 0
            assert stats["admitted"] == 0
            # The newest is still cached and can be named by hash; the oldest cannot.
            s, _ = await c.fetch_keys(owners[-1].app_id(), bundle=raws[-1], nodes=[1])
            assert owners[-1].app_id() in c.policies[1].registry  # type: ignore[operator]
            from kms.protocol import bundle_hash

            s = KeyRequestSession(
                c.chain, owners[0].app_id(), [("app", 1)], now=NOW, rng=os.urandom
            )
            from dataclasses import replace

            body = replace(s.body, policy_hash=bundle_hash(raws[0]))
            req = KeyRequest(body, c.tee.quote(body.report_data(), **MEASUREMENT))
            r = await c.clients[1].post("/v1/keys", content=req.encode())
            answer = decode(r.content)
            assert isinstance(answer, KeyRefusal) and answer.reason == "bundle-refused"
            assert "not cached" in answer.detail

    run(main)
