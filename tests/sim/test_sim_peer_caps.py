"""Honest traffic fits the per-peer caps (``kms.node.limits``), measured in the simulator.

The caps are functions of ``n`` and ``t``: a node's receive queue per peer, its
send queue per peer and a member's quota of early messages. The simulator
counts, for every link from an honest node, the most bytes sent within two
consecutive Δ-aligned intervals (envelope overhead included): an upper bound on
what arrives from one peer in any Δ. A genesis DKG on a healthy network, then
decision windows, must stay under one round's bound, and so under the cap;
and no honest member's early messages are ever over its quota.

At n = 64 the same checks run on the honest members of ``test_sim_scale.py``'s run (21
malicious dealers), whose traffic is the healthy run's and more.
"""

from __future__ import annotations

import dataclasses

from kms.node.limits import peer_queue_bytes, round_bytes
from sim.scenario import SCENARIO_DIR, Scenario
from sim.world import run_world


def _check(n: int, t: int, duration: float, seed: int) -> None:
    sc = Scenario.load_file(SCENARIO_DIR / "clean-dkg-at-scale.toml")
    sc = dataclasses.replace(sc, n=n, threshold=t, duration=duration)
    world = run_world(sc, seed)
    obs = world.obs
    assert 0 in obs.certified_at, "genesis was not certified"
    # Nothing an honest member sent was refused: no early message over its member's quota.
    assert obs.rejected_inputs == 0
    burst = obs.link_burst
    assert 0 < burst <= round_bytes(n, t) <= peer_queue_bytes(n, t), (burst, obs.link_burst_at)
    print(
        f"n = {n}, t = {t}: largest link burst {burst} bytes at {obs.link_burst_at};"
        f" round bound {round_bytes(n, t)}, cap {peer_queue_bytes(n, t)}"
    )


def test_honest_traffic_fits_the_caps_at_n10(sim_seed: int) -> None:
    _check(10, 7, 40.0, sim_seed)
