"""The lifecycle of an admitted app under attack, through the node's public surfaces.

Forks are resolved only by the operator's explicit ``resolve-fork`` (admin channel),
never by a file left in the policies directory; a resolved fork cannot be re-frozen by
replaying its losing branch; the version floor never drops; re-sent and oversized
anonymous pushes cost no signature checks; the cache of pushed bundles keeps each
bundle by its hash; digests and queries from a member cost a bounded amount.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import trio

import kms.policy.app as owner_app
from kms.api.admin import handle
from kms.api.answers import policy_reply as offer_reply
from kms.app.testing import MEASUREMENT, NOW, LocalCommittee, app_bundle, local_committee
from kms.policy import OwnerChain, OwnerKey, build_event_log, dstack_boot_events
from kms.policy.gossip import PolicyAnnounce, PolicyDigest, PolicyQuery
from kms.protocol import KeyRefusal, KeyRequest, bundle_hash
from mpc.codec import Message, decode
from net.codec import Envelope, encode_envelope

TOKEN = "operator-token"


def run(fn):  # type: ignore[no-untyped-def]
    return trio.run(fn)


def keys(seed: int) -> OwnerKey:
    return OwnerKey.from_seed(random.Random(seed).randbytes(32))


def _rotate(old: OwnerKey, new: OwnerKey, chain: OwnerChain) -> OwnerChain:
    return chain.extend(old.rotate(chain, new.public_bytes()))


def admin(c: LocalCommittee, node: int, req: dict[str, Any]) -> dict[str, Any]:
    """One request on node ``node``'s admin channel (what ``kms member ...`` sends)."""
    raw = json.dumps({**req, "token": TOKEN}).encode()
    return handle(c.services[node], TOKEN.encode(), raw)


async def as_member(c: LocalCommittee, sender: int, to: int, message: Message) -> None:
    """Member ``sender`` sends ``message`` to ``to`` over the memory network."""
    st = c.services[sender].core.state
    env = Envelope.of(message, epoch=st.epoch if st else 0, sender=sender)
    await c.services[sender].transport.send(
        c.services[to].transport.local_peer, encode_envelope(env)
    )


async def request_naming_bundle(c: LocalCommittee, node: int, app_id: bytes, raw: bytes) -> Any:
    """A CVM's key request that names its bundle by hash without carrying it (asked again
    while the node answers ``retry-later``)."""
    for _ in range(100):
        answer = await _name_bundle_once(c, node, app_id, raw)
        if not (isinstance(answer, KeyRefusal) and answer.reason == "retry-later"):
            return answer
        await trio.sleep(0.02)
    return answer


async def _name_bundle_once(c: LocalCommittee, node: int, app_id: bytes, raw: bytes) -> Any:
    _, req = c.key_request(app_id, bundle=raw)  # a CVM booted for the app
    named = KeyRequest(req.body, req.quote, req.event_log, b"")
    r = await c.clients[node].post(
        "/v1/keys", content=named.encode(), headers={"content-type": "application/msgpack"}
    )
    return decode(r.content)


async def frozen_refusal(c: LocalCommittee, app_id: bytes) -> set[str]:
    s, answers = await c.fetch_keys(app_id)
    assert not s.done
    return {a.reason for a in answers.values() if isinstance(a, KeyRefusal)}


def test_a_stale_policies_dir_file_never_lifts_a_freeze_and_replays_never_refreeze(
    tmp_path: Path,
) -> None:
    """The operator admitted the app with K1's version 1 file and left it there. K1 was
    stolen; the owner rotated to K2 and published up to version 5; the thief forked to K3.
    Reloads and restarts keep the app frozen; only resolve-fork lifts it, with a bundle
    above the floor on a branch seen; the thief's branch replayed afterwards is refused
    without freezing anything, pushed over HTTP or announced by a member."""
    k1, k2, k3 = keys(101), keys(102), keys(103)
    app_id = k1.app_id()
    genesis = OwnerChain.genesis(k1.public_bytes())
    real, stolen = _rotate(k1, k2, genesis), _rotate(k1, k3, genesis)
    pdir = tmp_path / "operator"
    pdir.mkdir()
    fork_holder: dict[str, bytes] = {}

    async def first_run() -> dict[int, Path]:
        async with local_committee(tmp_path, policies_dir=lambda i: pdir) as c:
            (pdir / "a.policy").write_bytes(app_bundle(k1, c.mpk).encode())
            for i in c.services:
                assert admin(c, i, {"op": "reload-policies"})["admitted"] == 1
            for v in range(2, 6):
                raw = app_bundle(k2, c.mpk, version=v, rotations=real.records).encode()
                for i in c.services:
                    assert (await c.post_policy(i, raw)).json()["accepted"] is True
            fork = app_bundle(k3, c.mpk, version=6, rotations=stolen.records).encode()
            fork_holder["fork"] = fork
            for i in c.services:
                assert (await c.post_policy(i, fork)).status_code == 423
            for i in c.services:
                reply = admin(c, i, {"op": "reload-policies"})
                assert reply["ok"] and reply["frozen"] == 1, reply
            assert await frozen_refusal(c, app_id) == {"app-frozen"}
            return c.stores

    stores = trio.run(first_run)

    async def after_restart() -> None:
        async with local_committee(tmp_path, stores=stores, policies_dir=lambda i: pdir) as c:
            # The restart re-read the directory: still frozen, the floor kept.
            assert await frozen_refusal(c, app_id) == {"app-frozen"}
            info = (await c.clients[1].get(f"/v1/policies/{app_id.hex()}")).json()
            assert info["frozen"] is True and info["version_floor"] == 5
            thief = app_bundle(k1, c.mpk, version=7).encode()
            assert (await c.post_policy(1, thief)).json()["reason"] == "app_frozen"

            def resolve(node: int, raw: bytes) -> dict[str, Any]:
                return admin(
                    c, node, {"op": "resolve-fork", "app_id": app_id.hex(), "bundle": raw.hex()}
                )

            # The stale file, the rotated-away key, a version at the floor: all refused.
            reply = resolve(1, (pdir / "a.policy").read_bytes())
            assert not reply["ok"] and reply["reason"] == "stale_version", reply
            reply = resolve(1, thief)
            assert not reply["ok"] and reply["reason"] == "rotation_fork", reply
            at_floor = app_bundle(k2, c.mpk, version=5, rotations=real.records).encode()
            assert resolve(1, at_floor)["reason"] == "stale_version"
            k4 = keys(104)
            other = _rotate(k1, k4, genesis)  # a branch never seen
            unseen = app_bundle(k4, c.mpk, version=9, rotations=other.records).encode()
            assert resolve(1, unseen)["reason"] == "rotation_fork"
            assert await frozen_refusal(c, app_id) == {"app-frozen"}
            # The owner's bundle on the branch kept.
            good = app_bundle(k2, c.mpk, version=6, rotations=real.records).encode()
            for i in c.services:
                reply = resolve(i, good)
                assert reply["ok"] and reply["version"] == 6, reply
            s, _ = await c.fetch_keys(app_id)
            assert s.done
            # A reload with the old file there changes nothing.
            assert admin(c, 1, {"op": "reload-policies"})["ok"]
            info = (await c.clients[1].get(f"/v1/policies/{app_id.hex()}")).json()
            assert info["version"] == 6 and info["owner_key"] == k2.public_bytes().hex()
            # Replaying the thief's branch: a typed refusal, no freeze (HTTP and gossip).
            r = await c.post_policy(1, fork_holder["fork"])
            assert r.status_code == 409 and r.json()["reason"] == "rejected_branch", r.json()
            later = app_bundle(k3, c.mpk, version=8, rotations=stolen.records).encode()
            assert (await c.post_policy(1, later)).json()["reason"] == "rejected_branch"
            await as_member(c, 2, 1, PolicyAnnounce(later))
            await trio.sleep(0.1)
            s, _ = await c.fetch_keys(app_id)
            assert s.done
            status = (await c.clients[1].get("/v1/status")).json()
            assert status["apps"]["frozen"] == []
            # The owner carries on.
            v8 = app_bundle(k2, c.mpk, version=8, rotations=real.records).encode()
            assert (await c.post_policy(1, v8)).json()["accepted"] is True

    run(after_restart)


def test_the_version_floor_never_drops_on_a_rotation(tmp_path: Path) -> None:
    k1, k2 = keys(601), keys(602)
    app_id = k1.app_id()
    chain = _rotate(k1, k2, OwnerChain.genesis(k1.public_bytes()))

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            s, _ = await c.fetch_keys(app_id, bundle=app_bundle(k1, c.mpk).encode())
            assert s.done
            v900 = app_bundle(k1, c.mpk, version=900).encode()
            assert (await c.post_policy(1, v900)).json()["accepted"] is True
            low = app_bundle(k2, c.mpk, version=1, rotations=chain.records).encode()
            r = await c.post_policy(1, low)
            assert r.json()["reason"] == "stale_version", r.json()
            jump = app_bundle(k2, c.mpk, version=900 + 1001, rotations=chain.records).encode()
            assert (await c.post_policy(1, jump)).json()["reason"] == "version_jump"
            ok = app_bundle(k2, c.mpk, version=901, rotations=chain.records).encode()
            assert (await c.post_policy(1, ok)).json()["accepted"] is True

    run(main)


def _long_chain(n: int, seed: int) -> tuple[OwnerChain, OwnerKey]:
    owners = [keys(seed + i) for i in range(n + 1)]
    chain = OwnerChain.genesis(owners[0].public_bytes())
    for i in range(n):
        chain = _rotate(owners[i], owners[i + 1], chain)
    return chain, owners[-1]


def test_anonymous_pushes_of_long_chains_cost_no_signature_checks(tmp_path: Path) -> None:
    """A self-made app rotated 256 times, pushed again and again: refused before any
    signature check; a re-push of any bundle seen is answered from its hash."""
    chain, last = _long_chain(256, 9000)
    short, short_last = _long_chain(3, 9500)

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            heavy = app_bundle(last, c.mpk, rotations=chain.records).encode()
            before = owner_app.verifications
            for _ in range(5):
                r = await c.post_policy(1, heavy)
                assert r.status_code == 409 and r.json()["reason"] == "too_many_rotations"
            assert owner_app.verifications == before
            light = app_bundle(short_last, c.mpk, rotations=short.records).encode()
            r = await c.post_policy(1, light)
            assert r.status_code == 202 and r.json()["reason"] == "unknown_app"
            once = owner_app.verifications
            assert once - before <= 3
            with trio.fail_after(10):
                for _ in range(50):
                    r = await c.post_policy(1, light)
                    assert r.json()["reason"] == "unknown_app"
            assert owner_app.verifications == once
            # A bundle with a bad signature is refused once and remembered.
            bad = bytearray(app_bundle(keys(9600), c.mpk).encode())
            bad[-5] ^= 1
            first = (await c.post_policy(1, bytes(bad))).json()["reason"]
            assert (await c.post_policy(1, bytes(bad))).json()["reason"] == first

    run(main)


def test_the_cache_keeps_each_pushed_bundle_by_its_hash(tmp_path: Path) -> None:
    """One push of another bundle of the app (here by its rotated-away first owner key)
    does not displace the owner's bundle its CVM names by hash."""
    k1, k2 = keys(301), keys(302)
    app_id = k1.app_id()
    chain = _rotate(k1, k2, OwnerChain.genesis(k1.public_bytes()))

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            legit = app_bundle(k2, c.mpk, version=7, rotations=chain.records).encode()
            assert (await c.post_policy(1, legit)).status_code == 202
            thief = app_bundle(k1, c.mpk, version=7).encode()
            assert (await c.post_policy(1, thief)).status_code == 202
            status = (await c.clients[1].get("/v1/status")).json()
            # The byte bound counts the bundles' encodings (kept encoded, decoded on use).
            assert status["apps"]["cache_entries"] == 2
            assert status["apps"]["cache_bytes"] == 2 * 256 + len(legit) + len(thief)
            assert bundle_hash(legit) != bundle_hash(thief)
            # The CVM names its bundle by hash only: node 1 still has it.
            answer = await request_naming_bundle(c, 1, app_id, legit)
            assert not isinstance(answer, KeyRefusal), answer

    run(main)


def test_a_members_digest_and_queries_cost_a_bounded_amount(tmp_path: Path) -> None:
    """An empty digest over the whole id range is answered from the first apps in the
    range only (at most the answers allowed); a stream of queries is rate-limited."""
    owners = [keys(7000 + i) for i in range(40)]

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            for o in owners:
                s, _ = await c.fetch_keys(o.app_id(), bundle=app_bundle(o, c.mpk).encode())
                assert s.done
            out = c.services[1].metrics.messages_out
            await trio.sleep(0.1)
            before = out["kms/policy-announce"]
            await as_member(c, 2, 1, PolicyDigest(b"", b"", ()))
            await trio.sleep(0.1)
            assert out["kms/policy-announce"] - before <= 32
            before = out["kms/policy-announce"]
            for _ in range(500):
                await as_member(c, 2, 1, PolicyQuery(owners[0].app_id()))
            await trio.sleep(0.2)
            answered = out["kms/policy-announce"] - before
            assert answered < 100, answered
            rejected = c.services[1].metrics.rejected
            assert sum(v for k, v in rejected.items() if "rate" in k) > 0, dict(rejected)

    run(main)


def test_a_key_request_signed_by_a_rotated_away_key_waits_for_the_committee(
    tmp_path: Path,
) -> None:
    """Node 3 has not admitted the app; the committee holds it under K2 (rotated from K1).
    A thief holding K1 sends node 3 a key request from a genuine CVM running its own image,
    carrying a bundle K1 signed that admits that image. Node 3 asks the committee first
    (``retry-later``), learns the chain from t members, and refuses the thief."""
    k1, k2 = keys(801), keys(802)
    app_id = k1.app_id()
    chain = _rotate(k1, k2, OwnerChain.genesis(k1.public_bytes()))
    rogue = {**MEASUREMENT, "rtmr3": b"\xee" * 48}

    async def main() -> None:
        async with local_committee(tmp_path, policies_dir=lambda i: tmp_path / f"ops-{i}") as c:
            pid = {i: s.transport.local_peer for i, s in c.services.items()}
            c.network.partition([[pid[1], pid[2]], [pid[3]]])
            # Nodes 1 and 2 admit the app (a key request could not: with node 3 cut off,
            # fewer than t other members would answer their committee query).
            for i in (1, 2):
                (tmp_path / f"ops-{i}").mkdir()
                (tmp_path / f"ops-{i}" / "app.policy").write_bytes(app_bundle(k1, c.mpk).encode())
                assert admin(c, i, {"op": "reload-policies"})["admitted"] == 1
            v2 = app_bundle(k2, c.mpk, version=2, rotations=chain.records).encode()
            for i in (1, 2):
                assert (await c.post_policy(i, v2)).json()["accepted"] is True
            c.network.heal()
            thief = app_bundle(k1, c.mpk, version=3, measurement=rogue).encode()
            s, answers = await c.fetch_keys(app_id, bundle=thief, nodes=[3], measurement=rogue)
            assert isinstance(answers[3], KeyRefusal), answers
            assert answers[3].reason != "retry-later", answers
            with trio.fail_after(5):  # a digest round brings the owner's latest policy
                while True:
                    info = (await c.clients[3].get(f"/v1/policies/{app_id.hex()}")).json()
                    if info.get("owner_key") == k2.public_bytes().hex():
                        break
                    c.clock.t += 3601.0
                    await trio.sleep(0.05)
            s, answers = await c.fetch_keys(app_id, bundle=thief, nodes=[3], measurement=rogue)
            assert isinstance(answers[3], KeyRefusal), answers
            # The owner's own CVM gets its keys there.
            s, _ = await c.fetch_keys(app_id, nodes=[3, 1])
            assert s.done

    run(main)


def test_members_that_answer_unknown_first_do_not_let_a_key_request_admit_a_thiefs_chain(
    tmp_path: Path,
) -> None:
    """Nodes 1 and 2 hold the app under K2 (rotated from K1). Node 3 has not admitted it
    and hears only node 4, which answers "unknown" at once (ignorant, or one of the t - 1
    corrupt members lying). A thief holding K1 sends node 3 a key request carrying a K1
    bundle. However long node 1 and 2's answers take, node 3 keeps answering retry-later:
    t other members must answer, so at least one is honest. Once they do, the thief is
    refused."""
    k1, k2 = keys(901), keys(902)
    app_id = k1.app_id()
    chain = _rotate(k1, k2, OwnerChain.genesis(k1.public_bytes()))
    pdir = tmp_path / "operator"
    pdir.mkdir()

    async def main() -> None:
        async with local_committee(
            tmp_path, n=4, threshold=2, policies_dir=lambda i: pdir if i in (1, 2) else None
        ) as c:
            pid = {i: s.transport.local_peer for i, s in c.services.items()}
            c.network.partition([[pid[1], pid[2]], [pid[3], pid[4]]])
            owner = app_bundle(k2, c.mpk, version=2, rotations=chain.records)
            (pdir / "app.policy").write_bytes(owner.encode())
            for i in (1, 2):
                assert admin(c, i, {"op": "reload-policies"})["admitted"] == 1
            # The thief's CVM is booted for the app (its RTMR3 carries the app id) with a
            # compose file of its own, which only the thief's policy admits.
            log, rtmr3 = build_event_log(
                dstack_boot_events(app_id=app_id, compose_hash=b"\xee" * 32)
            )
            rogue = {**MEASUREMENT, "rtmr3": rtmr3}
            thief = app_bundle(k1, c.mpk, version=3, measurement=rogue).encode()

            async def steal() -> dict[int, Any]:
                _, answers = await c.fetch_keys(
                    app_id,
                    bundle=thief,
                    nodes=[3],
                    measurement=rogue,
                    event_log=log.encode(),
                    retry=False,
                )
                return answers

            deadline = trio.current_time() + 2.5  # well past any fixed wait of a second
            while trio.current_time() < deadline:
                answers = await steal()
                assert isinstance(answers[3], KeyRefusal), answers
                assert answers[3].reason == "retry-later", answers
                await trio.sleep(0.1)
            c.network.heal()
            with trio.fail_after(10):
                while True:
                    answers = await steal()
                    assert isinstance(answers[3], KeyRefusal), answers
                    if answers[3].reason != "retry-later":
                        break
                    await trio.sleep(0.1)
            # Node 3 holds the owner's chain now, not the thief's.
            info = (await c.clients[3].get(f"/v1/policies/{app_id.hex()}")).json()
            assert info.get("owner_key") in (None, k2.public_bytes().hex()), info

    run(main)


def test_a_vouch_from_a_member_no_longer_in_the_committee_never_counts(tmp_path: Path) -> None:
    """Committee admission needs t vouches from current members. A member that vouched and
    was then removed (or a corrupt member of an earlier epoch) does not count, so t - 1
    corrupt members of two epochs together cannot reach t."""
    k = keys(951)

    async def main() -> None:
        async with local_committee(tmp_path, n=4, threshold=2) as c:
            raw = app_bundle(k, c.mpk).encode()
            node = c.policies[4]
            everyone = frozenset({1, 2, 3, 4})
            reply = offer_reply(node.offer(raw, NOW, voucher=1, members=everyone))
            assert reply["accepted"] is False  # one vouch of two
            # Member 1 leaves the committee; member 2 vouches.
            reply = offer_reply(node.offer(raw, NOW, voucher=2, members=frozenset({2, 3, 4})))
            assert reply["accepted"] is False, reply
            assert node.describe(k.app_id(), NOW) is None
            # A second current member's vouch admits it.
            reply = offer_reply(node.offer(raw, NOW, voucher=3, members=frozenset({2, 3, 4})))
            assert reply["accepted"] is True, reply

    run(main)
