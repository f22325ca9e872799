"""A node's status report (``GET /v1/status``) and metrics snapshot (read at each scrape).

Pure reads of the node's parts, given as values: the core, the transport's
statistics, the release role's configuration, the collateral source and the
app policies. Nothing here changes state.
"""

from __future__ import annotations

import math
from typing import Any

from kms.attest.pccs import CollateralProvider
from kms.node.core import NodeCore
from kms.node.metrics import CollateralCounts, NodeSnapshot, PolicyCounts
from kms.node.policies import NodePolicies
from kms.node.release import KeyReleaser
from mpc.cert import RunKind
from mpc.membership import certified_urls
from net.peerid import peer_id_from_ed25519
from net.transport import Transport


def collateral_source(c: CollateralProvider | None) -> str | None:
    """Where the releaser's collateral comes from: ``pccs <url>``, ``file``, both, or None."""
    if c is None:
        return None
    parts = ([f"pccs {c.client.url}"] if c.client is not None else []) + (
        ["file"] if c.fixed is not None else []
    )
    return ", ".join(parts)


def health(core: NodeCore, index: int) -> tuple[bool, bool, str]:
    """(healthy, member, what it means): a node is healthy as a member of the current epoch,
    or, before it has a chain, while its genesis DKG is scheduled or running."""
    st = core.state
    if st is not None:
        if index in st.committee.indices:
            return True, True, f"member of epoch {st.epoch}"
        return False, False, f"not a member of epoch {st.epoch}: this node serves no keys"
    if core.status().running == RunKind.DKG:
        return True, False, "genesis DKG scheduled or running"
    return False, False, "no epoch yet: outside the genesis committee, waiting for the chain"


def schedule(core: NodeCore, now: float) -> dict[str, Any]:
    """When the next decision window starts (a grid from the genesis start, every
    ``window_period`` seconds; a member skips windows while a change is certified and its
    reshare runs) and, before the node has an epoch, the genesis start."""
    cfg = core.config
    out: dict[str, Any] = {"now": round(now, 3), "next_window": None, "genesis": None}
    if core.state is None:
        out["genesis"] = {
            "at": cfg.genesis_start,
            "in_seconds": round(cfg.genesis_start - now, 3),
        }
        return out
    w = max(0, math.floor((now - cfg.genesis_start) / cfg.window_period) + 1)
    at = cfg.genesis_start + w * cfg.window_period
    out["next_window"] = {"index": w, "at": at, "in_seconds": round(at - now, 3)}
    return out


def node_status(
    core: NodeCore,
    index: int,
    transport: Transport,
    releaser: KeyReleaser | None,
    collateral: CollateralProvider | None,
    policies: NodePolicies | None,
    *,
    now: float | None = None,
    own_url: str | None = None,
    release_off: str | None = None,
) -> dict[str, Any]:
    s = core.status()
    st = core.state
    healthy, member, detail = health(core, index)
    window = core.ballots.window
    committee = []
    if st is not None:
        # Members' HTTP URLs where known: this node's own, and those certified with
        # each later member's AddMember in the chain this node keeps.
        urls: dict[int, str] = {
            int(i): u for i, u in certified_urls(core.chain, st, check_signatures=False).items()
        }
        if own_url is not None:
            urls[index] = own_url
        for p in st.committee.members:
            committee.append(
                {
                    "index": p.index,
                    "peer_id": str(peer_id_from_ed25519(p.identity)),
                    "url": urls.get(p.index),
                }
            )
    return {
        "index": index,
        "peer_id": str(transport.local_peer),
        "epoch": s.epoch,
        "threshold": s.threshold,
        "master_public_key": s.mpk.hex() if s.mpk else None,
        "committee": committee,
        "has_share": s.has_share,
        "running": s.running,
        "pending_proposals": [{"id": i, "kind": k, "approvals": n} for i, k, n in s.pending],
        "retained_shares": [
            {"epoch": e, "missing_acknowledgements": [int(m) for m in miss]}
            for e, miss in s.retained
        ],
        "share_holders": [int(i) for i in s.share_holders],
        "share_holders_below_threshold": s.share_holders_below_threshold,
        "share_error": s.share_error,
        "last_refresh": s.last_refresh,
        "refused_approvals": [{"id": i, "reason": r} for i, r in s.refused],
        "approvals_waiting": list(s.waiting),
        "locked_proposal": s.locked,
        "peers": sorted(str(p) for p in transport.connected_peers()),
        "healthy": healthy,
        "member": member,
        "health": detail,
        "decision_window": (
            {"index": window.window, "phase": window.phase.value} if window is not None else None
        ),
        **(schedule(core, now) if now is not None else {}),
        "serves_keys": releaser is not None,
        "serves_keys_reason": None if releaser is not None else release_off,
        "simulated_quotes_accepted": bool(releaser and releaser.simulated_allowed),
        "collateral": collateral_source(collateral),
        "apps": policies.stats() if policies is not None else None,
    }


def node_snapshot(
    core: NodeCore,
    transport: Transport,
    releaser: KeyReleaser | None,
    collateral: CollateralProvider | None,
    policies: NodePolicies | None,
    log_suppressed: int,
) -> NodeSnapshot:
    """What ``/metrics`` reports of the node's current state."""
    st = core.state
    s = core.status()
    ts = transport.statistics()
    c = collateral
    counts = CollateralCounts()
    if c is not None:
        counts = CollateralCounts(
            fetch_failures=c.fetch_failures,
            fetches=c.fetches,
            failures_cached=c.failures_cached,
            rollbacks_refused=c.rollbacks_refused,
            stale_refused=c.client.refused["stale"] if c.client is not None else 0,
            oversized_refused=c.client.refused["oversized"] if c.client is not None else 0,
            platforms=c.sizes(),
        )
    apps = None
    if policies is not None:
        ps = policies.stats()
        apps = PolicyCounts(
            admitted=ps["admitted"],
            frozen=ps.get("frozen_count", 0),
            cache_entries=ps["cache_entries"],
            cache_bytes=ps["cache_bytes"],
            cache_evictions=ps.get("cache_evictions", 0),
        )
    return NodeSnapshot(
        epoch=st.epoch if st else -1,
        peers=len(transport.connected_peers()),
        pending_proposals=len(s.pending),
        last_refresh=s.last_refresh or 0.0,
        retained_shares=len(s.retained),
        known_share_holders=len(s.share_holders),
        share_holders_below_threshold=s.share_holders_below_threshold,
        share_refused=s.share_error is not None,
        has_share=core.share is not None,
        simulated_quotes_accepted=bool(releaser and releaser.simulated_allowed),
        collateral=counts,
        policies=apps,
        transport_refused_peers=ts.refused_peers,
        transport_bytes_sent=ts.bytes_sent,
        transport_frames_sent=ts.frames_sent,
        transport_writes=ts.writes,
        transport_bytes_received=ts.bytes_received,
        transport_dropped_oversize=ts.dropped_oversize,
        log_suppressed=log_suppressed,
    )
