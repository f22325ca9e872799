"""A live devnet under a flood: brand-new apps' policies and large bodies, all at once.

A devnet of 4 node processes (t = 3) with the settings a production committee
uses: a new app is admitted only by an attested key request that carries its
signed policy bundle; anonymous pushes of apps a node has not admitted go to
a bounded, unpersisted cache. ``bench.flood`` posts every new app's policy to
every node while streaming 256 MiB bodies at ``/v1/keys``, ``/v1/policies``
and ``/v1/evidence`` of every node, fetches the demo app's key 20 times
spread over the flood, and registers a legitimate new app half way through. It floods with 100 apps,
then with 400, and finds the same store growth.

Slow (about half a minute): node processes, a DKG, and 2,000 pushes over HTTP.
It is the only test that shows these bounds on real processes at once;
``tests/kms/apps/test_app_flood.py`` shows them in process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.flood import FloodFigures, flood, generate_bundles, running_devnet
from kms.app import devnet

MIB = 1024 * 1024
FETCH_DEADLINE = 2.0
LEGIT_DEADLINE = 15.0
"""A deadline that catches a hang or serial timeouts, not load: the legitimate CVM's fetch
takes 0.7-2 s on a quiet machine and took 5.8 s beside the other lanes of ``make test``."""
MEMORY_BOUND = 64 * MIB
STORE_USED_BOUND = 64 * 1024
"""Pages in use a node's store may gain in one flood: the 20 releases' nonces and audit
records and the legitimate app's row. Nothing of the flood's own apps is written."""
STORE_FILE_BOUND = 1 * MIB
"""Bytes the store's files (``node.db`` and its WAL) may gain in one flood: the same
writes as WAL frames, before any checkpoint reuses the WAL."""
SAME_USED = 16 * 1024
SAME_FILE = 64 * 1024
"""How far apart two floods' store growths may be (a few pages) for them to count as the
same: the growth comes from the releases and the legitimate app, not the flood."""


def _check(run: FloodFigures) -> None:
    summary = {k: v for k, v in run.as_json().items() if k != "per_node"}
    assert run.post_statuses == {"202": run.posts}, summary
    assert run.body_streams >= 24 and set(run.body_answers) <= {"413", "closed"}, summary
    assert run.body_max_sent < 64 * MIB, summary
    assert not run.fetch_failures and len(run.fetch_latencies) == 20, summary
    assert run.fetch_max < FETCH_DEADLINE, summary
    assert run.legit_error is None and run.legit_seconds is not None, summary
    assert run.legit_seconds < LEGIT_DEADLINE, summary
    for n in run.per_node:
        assert n.healthy_after, n
        assert n.memory_growth < MEMORY_BOUND, n
        assert 0 <= n.store_used_growth <= STORE_USED_BOUND, n
        assert 0 <= n.store_file_growth <= STORE_FILE_BOUND, n
        # Of all the apps, only the legitimate ones are written: this flood's, and the
        # previous flood's at a node that learnt it from its peers' digests only now.
        assert n.rows_added.get("apps", 0) <= 2 and "app_rotations" not in n.rows_added, n


@pytest.mark.slow
def test_a_live_flood_of_new_apps_and_large_bodies(tmp_path: Path) -> None:
    d = tmp_path / "devnet"
    with running_devnet(d, nodes=4, threshold=3):
        mpk = devnet.read_state(d)["master_public_key"]
        bundles = generate_bundles(500, mpk)
        first = flood(d, 100, bundles=bundles[:100])
        _check(first)
        second = flood(d, 400, bundles=bundles[100:])
        _check(second)
    # Four times the flood, the same growth: what the store gains does not depend on its
    # size (``bench.flood`` compares 1,000 and 10,000 apps).
    for a, b in zip(first.per_node, second.per_node, strict=True):
        assert abs(b.store_used_growth - a.store_used_growth) <= SAME_USED, (a, b)
        assert abs(b.store_file_growth - a.store_file_growth) <= SAME_FILE, (a, b)
        # 500 apps flooded, two legitimate apps admitted: at most two rows.
        assert a.rows_added.get("apps", 0) + b.rows_added.get("apps", 0) <= 2, (a, b)
