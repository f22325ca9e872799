"""The run's report: ``report.json`` (byte-identical for one scenario and seed) and its summary.

Only values derived from the seeded run go in: no wall-clock time, no host
name, no dict or set iteration order that depends on hashing. Floats are
rounded to microseconds of virtual time so that their text is stable.
"""

from __future__ import annotations

import json
from typing import Any

from mpc.math import G2
from mpc.math.poly import interpolate_at
from sim.world import World

REPORT_VERSION = 1


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def exposure(world: World) -> tuple[bool, list[dict[str, Any]], bool]:
    """Per epoch: how many corrupt nodes held a share, against the threshold.

    Returns (exposed, rows, reconstructed): ``reconstructed`` is whether the
    coalition's shares interpolate to a secret matching the master public
    key, which is what "exposed" means in practice.
    """
    rows = []
    exposed = False
    reconstructed = False
    info = world.obs.epoch_info
    for epoch, holders in sorted(world.obs.corrupt_shares.items()):
        t = info[epoch][1] if epoch in info else world.scenario.threshold
        rows.append({"epoch": epoch, "corrupt_holders": sorted(holders), "threshold": t})
        if len(holders) >= t:
            exposed = True
            pts = [(h.index, h.value.value) for _, h in sorted(holders.items())][:t]
            secret = interpolate_at(pts)
            if world.obs.mpks:
                mpk = sorted(world.obs.mpks)[0]
                reconstructed = reconstructed or (secret * G2.generator()).to_bytes() == mpk
    return exposed, rows, reconstructed


def epochs(world: World) -> list[dict[str, Any]]:
    obs = world.obs
    out: dict[int, dict[str, Any]] = {}
    for epoch, (committee, t, kind) in sorted(obs.epoch_info.items()):
        out[epoch] = {
            "epoch": epoch,
            "kind": kind,
            "committee": list(committee),
            "threshold": t,
            "certified_at": _r(obs.certified_at.get(epoch)),
        }
    sc = world.scenario
    if 0 not in out:
        out[0] = {
            "epoch": 0,
            "kind": "dkg",
            "committee": list(range(1, sc.n + 1)),
            "threshold": sc.threshold,
            "certified_at": None,
        }
    for _at, kind, epoch, _attempt, _node, _reason in obs.run_failures:
        if epoch not in out:
            last = out[max(out)]
            out[epoch] = {
                "epoch": epoch,
                "kind": kind,
                "committee": last["committee"],
                "threshold": last["threshold"],
                "certified_at": None,
            }
    return [out[e] for e in sorted(out)]


def mpk_stable(world: World) -> bool:
    """One master public key across every certified epoch, seen the same by every honest node."""
    if len(world.obs.mpks) != 1:
        return False
    mpk = next(iter(world.obs.mpks))
    for node in world.honest_nodes():
        core = node.core
        if core is not None and core.state is not None and core.state.mpk.to_bytes() != mpk:
            return False
    return True


def share_holders(world: World) -> dict[str, Any] | None:
    """At the end: the newest epoch any honest node is at, its committee, and which of its
    honest members (up at the end, at that epoch) hold a share of it."""
    best = None
    for node in world.honest_nodes():
        core = node.core
        st = core.state if core is not None else None
        if st is not None and (best is None or st.epoch > best.epoch):
            best = st
    if best is None:
        return None
    committee = [int(i) for i in best.committee.indices]
    holders, without = [], []
    for node in world.honest_nodes():
        core = node.core
        if node.index not in committee or core is None or core.state is None:
            continue
        if core.state.epoch != best.epoch:
            without.append(node.index)
        elif core.share is not None:
            holders.append(node.index)
        else:
            without.append(node.index)
    return {
        "epoch": best.epoch,
        "committee": committee,
        "holders": sorted(holders),
        "without_share": sorted(without),
    }


def build(world: World) -> dict[str, Any]:
    obs = world.obs
    sc = world.scenario
    exposed, rows, reconstructed = exposure(world)
    requests = obs.requests
    served_ok = sum(1 for r in requests if r.served and r.correct)
    wrong = sum(1 for r in requests if r.served and not r.correct)
    failures: dict[tuple[str, int, int], dict[str, Any]] = {}
    for at, kind, epoch, attempt, node, reason in obs.run_failures:
        f = failures.setdefault(
            (kind, epoch, attempt),
            {
                "kind": kind,
                "epoch": epoch,
                "attempt": attempt,
                "at": _r(at),
                "nodes": [],
                "reason": reason,
            },
        )
        if node not in f["nodes"]:
            f["nodes"].append(node)
    return {
        "version": REPORT_VERSION,
        "scenario": sc.name,
        "seed": world.seed,
        "n": sc.n,
        "threshold": sc.threshold,
        "duration": _r(sc.duration),
        "mode": "protocol",
        "cost_accounting": False,
        "mpk_stable": mpk_stable(world),
        "mpk": sorted(obs.mpks)[0].hex() if len(obs.mpks) == 1 else None,
        "secret_exposed": exposed,
        "secret_reconstructed": reconstructed,
        "exposure": rows,
        "epochs": epochs(world),
        "disqualified": world.disqualified(),
        "run_failures": [failures[k] for k in sorted(failures)],
        "membership_certified_at": {str(k): _r(v) for k, v in sorted(obs.membership_at.items())},
        "availability": _r(served_ok / len(requests)) if requests else None,
        "key_requests": len(requests),
        "key_requests_served": served_ok,
        "wrong_keys_accepted": wrong,
        "wrong_partials_detected": sum(len(r.wrong_partials) for r in requests),
        "nodes_blamed_for_wrong_partials": sorted({i for r in requests for i in r.wrong_partials}),
        "requests": [[_r(r.at), int(r.served and r.correct)] for r in requests],
        "messages": obs.messages,
        "bytes": obs.total_bytes,
        "messages_per_node": {
            str(i): {
                "sent": world.nodes[i].sent_messages,
                "sent_bytes": world.nodes[i].sent_bytes,
                "received": world.nodes[i].received_messages,
                "received_bytes": world.nodes[i].received_bytes,
                "rejected": world.nodes[i].rejected,
                "crashes": world.nodes[i].crashes,
            }
            for i in sorted(world.nodes)
        },
        "network": {
            "lost": world.network.stats.lost,
            "partitioned": world.network.stats.partitioned,
            "duplicated": world.network.stats.duplicated,
            "dropped_at_down_nodes": obs.dropped_down,
            "undecodable": obs.undecodable,
        },
        "rejected_inputs": obs.rejected_inputs,
        "proposals_refused": obs.proposals_refused,
        "corrupt_nodes": sc.corrupt_nodes(),
        "share_holders": share_holders(world),
        "faults": [
            {"kind": k, "from": _r(a), "until": _r(b), "what": w}
            for k, a, b, w in sorted(obs.faults, key=lambda f: (f[1], f[0], f[3]))
        ],
    }


def dumps(report: dict[str, Any]) -> str:
    """Canonical JSON text: sorted keys, two-space indent, final newline."""
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
