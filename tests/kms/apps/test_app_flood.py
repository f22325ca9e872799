"""A flood of brand-new apps' policies, pushed anonymously over HTTP (in-process committee).

Such pushes are never admitted: they sit in a bounded, unpersisted, ungossiped cache.
The node stays responsive, its store does not grow with the flood, and a legitimate
new app registered during the flood (its key request carrying its bundle) gets keys.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from kms.app.testing import app_bundle, flood_new_apps, local_committee
from kms.policy import OwnerKey

STORE_BOUND = 64 * 1024
"""Store growth allowed during a flood: the legitimate app's row and the releases' audit
records and nonces. Nothing of the flood's own apps is ever written."""

CACHE_ENTRIES = 1024

ADMISSION_DEADLINE = 30.0
"""Seconds for every member to admit the app registered during the flood (well under one
normally); a deadline that catches a lost announcement, not a performance bound."""


def _flood(tmp_path: Path, count: int) -> None:
    async def main() -> None:
        async with local_committee(tmp_path, cache_entries=CACHE_ENTRIES) as c:
            known = OwnerKey.from_seed(random.Random(1).randbytes(32))
            s, _ = await c.fetch_keys(known.app_id(), bundle=app_bundle(known, c.mpk).encode())
            assert s.done
            report = await flood_new_apps(c, count, known_app=known.app_id())
            assert report.statuses == {202: count}
            assert 0 <= report.fetch_during_flood < 2.0, report
            assert 0 <= report.new_app_keys < 5.0, report
            for i, growth in report.store_growth.items():
                assert growth <= STORE_BOUND, (i, growth)
            entries, size = report.cache[1]
            assert entries <= CACHE_ENTRIES and size <= 16 * 1024 * 1024
            # The flood's fresh app ids do not make the node query the committee per push.
            asked = c.services[1].metrics.messages_out["kms/policy-query"]
            # The budget is a bucket: its burst, plus what it refilled while the flood ran.
            burst, rate = c.services[1].GOSSIP_BUDGET["ask-push"]
            batches = burst + rate * report.seconds + 2
            assert asked <= (len(c.services) - 1) * batches, (asked, report.seconds)
            assert asked < count, asked

            # Members that released the new app announce it; the others admit it once t
            # announcements arrive, which under the flood's load may be after the last push.
            def admitted() -> list[int]:
                return [q.stats()["admitted"] for q in c.policies.values()]

            with trio.move_on_after(ADMISSION_DEADLINE):
                while admitted() != [2] * len(c.policies):
                    assert all(a <= 2 for a in admitted()), admitted()
                    await trio.sleep(0.05)
            assert admitted() == [2] * len(c.policies), admitted()

    trio.run(main)


def test_a_flood_of_1000_new_apps(tmp_path: Path) -> None:
    _flood(tmp_path, 1000)


@pytest.mark.slow  # ~30 s: every push is a policy signature and an Ed25519 key decode
@pytest.mark.parallel  # in process; its deadlines (2 s, 5 s) sit far above the measured times
def test_a_flood_of_10000_new_apps_costs_the_store_no_more_than_1000(tmp_path: Path) -> None:
    _flood(tmp_path, 10_000)
