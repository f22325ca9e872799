"""Policy digests over in-memory gossip: paged by app-id range, no truncation past 1,024
apps, and in-sync members exchange nothing but digests."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from kms.app.testing import NOW, LocalCommittee, app_bundle, local_committee
from kms.policy import OwnerKey
from kms.policy.gossip import MAX_DIGEST_ENTRIES
from mpc.sig import set_key_cache

APPS = MAX_DIGEST_ENTRIES + 76


async def _sync_rounds(c: LocalCommittee, rounds: int) -> None:
    for _ in range(rounds):
        c.clock.t += 3601.0  # past every node's next digest time
        await trio.sleep(0.12)  # timer ticks, digests and answers delivered


def test_in_sync_members_exchange_only_digests_and_a_lagging_one_catches_up(
    tmp_path: Path,
) -> None:
    rng = random.Random(5)
    owners = [OwnerKey.generate(rng.randbytes) for _ in range(APPS)]
    full, partial = tmp_path / "full", tmp_path / "partial"
    full.mkdir()
    partial.mkdir()
    mpk_holder: dict[str, bytes] = {}

    async def main() -> None:
        # First learn the committee's key (the nodes are deterministic), then write the files.
        async with local_committee(tmp_path / "probe") as probe:
            mpk_holder["mpk"] = probe.mpk
        mpk = mpk_holder["mpk"]
        ids = sorted(o.app_id() for o in owners)
        missing = set(ids[-40:])  # the last 40 apps: all past the first page
        for o in owners:
            raw = app_bundle(o, mpk, lifetime=30 * 86400).encode()
            (full / f"{o.app_id().hex()}.policy").write_bytes(raw)
            if o.app_id() not in missing:
                (partial / f"{o.app_id().hex()}.policy").write_bytes(raw)
        dirs = {1: full, 2: full, 3: partial}
        async with local_committee(tmp_path / "run", policies_dir=dirs.__getitem__) as c:
            for p in c.policies.values():
                p.ready(NOW)
            assert [len(c.policies[i].registry or ()) for i in (1, 2, 3)] == [APPS, APPS, APPS - 40]
            # Node 3 lags on the second page; digests bring it every missing app.
            with trio.fail_after(30):
                while len(c.policies[3].registry or ()) < APPS:
                    await _sync_rounds(c, 1)

            # Answers to the catch-up's last digests may still be on their way (the rounds
            # run on real time): wait for one round in which nobody announces.
            def announced() -> dict[int, float]:
                return {
                    i: s.metrics.messages_out["kms/policy-announce"] for i, s in c.services.items()
                }

            with trio.fail_after(30):
                while True:
                    settled = announced()
                    await _sync_rounds(c, 1)
                    if announced() == settled:
                        break
            # Now in sync: full rounds of digests (both pages) make no announcement.
            before = announced()
            digests = {
                i: s.metrics.messages_out["kms/policy-digest"] for i, s in c.services.items()
            }
            await _sync_rounds(c, 4)
            for i, s in c.services.items():
                assert s.metrics.messages_out["kms/policy-announce"] == before[i]
                assert s.metrics.messages_out["kms/policy-digest"] > digests[i]

    # Each of the 1,100 owner keys is decoded several times per node: decode each once
    # (the cost of key decoding is not what this test is about).
    previous = set_key_cache({})
    try:
        trio.run(main)
    finally:
        set_key_cache(previous)
