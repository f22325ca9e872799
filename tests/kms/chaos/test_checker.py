"""The checker's figures over synthetic observations: each counts what it should, is 0 on a
clean run, and one wrong key, one rogue release, one forked epoch, one MPK change or one lost
share gives exactly 1."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.chaos import checker
from kms.chaos.checker import SAFETY, check, check_observations, percentile, safety_ok

Obs = list[dict[str, Any]]


def _h(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def clean_run(seed: int, n: int = 5, t: int = 3, clients: int = 2, apps: int = 2) -> Obs:
    """A run in which everything went right: every client gets the same keys, every honest
    node serves the same chain and MPK, every member of the last epoch holds its share."""
    rng = random.Random(seed)
    obs: Obs = []
    epochs = rng.randint(1, 4)
    mpk = _h("mpk", seed)
    links = [
        {"epoch": e, "kind": kind, "hash": _h(e, kind, seed), "outcome": _h("o", e, kind)}
        for e in range(epochs)
        for kind in ("membership", "epoch")
    ]
    byz = {n} if rng.random() < 0.5 else set()
    purposes = [rng.randint(1, 3) for _ in range(apps)]
    at = 1000.0
    for k in range(1, clients + 1):
        obs.append(
            {
                "kind": "reach",
                "t": at,
                "client": f"c{k}",
                "running_reachable_members": n,
                "threshold": t,
            }
        )
    for step in range(rng.randint(3, 10)):
        at += rng.uniform(0.1, 2.0)
        for app in range(apps):
            for k in range(1, clients + 1):
                keys = {f"p{j}/1": _h("key", app, j) for j in range(purposes[app])}
                ok = step < 2 or rng.random() < 0.9  # the first two rounds always succeed
                obs.append(
                    {
                        "kind": "fetch",
                        "client": f"c{k}",
                        "rogue": False,
                        "app": f"a{app}",
                        "t0": at,
                        "t1": at + rng.uniform(0.01, 0.5),
                        "ok": ok,
                        "keys": keys if ok else {},
                        "epoch": epochs - 1,
                        "error": None if ok else "timeout",
                        "partials_decrypted": t if ok else 0,
                    }
                )
        obs.append(
            {
                "kind": "fetch",
                "client": "rogue",
                "rogue": True,
                "app": "a0",
                "t0": at,
                "t1": at + 0.2,
                "ok": False,
                "keys": {},
                "epoch": None,
                "error": "refused",
                "partials_decrypted": 0,
            }
        )
        for i in range(1, n + 1):
            obs.append(
                {
                    "kind": "status",
                    "t": at,
                    "node": i,
                    "byzantine": i in byz,
                    "up": True,
                    "reachable": True,
                    "epoch": epochs - 1,
                    "mpk": mpk,
                    "member": True,
                    "serving": True,
                }
            )
            seen = rng.randint(1, len(links))  # a prefix of the chain, as while catching up
            obs.append(
                {"kind": "chain", "t": at, "node": i, "byzantine": i in byz, "links": links[:seen]}
            )
    for i in range(1, n + 1):  # the final poll: every node serves the whole chain
        obs.append({"kind": "chain", "t": at + 1, "node": i, "byzantine": i in byz, "links": links})
        obs.append(
            {
                "kind": "share",
                "t": at + 1,
                "node": i,
                "byzantine": i in byz,
                "epoch": epochs - 1,
                "holds_share": True,
                "matches_public_share": True,
                "attempt_honest_live": n,
                "threshold": t,
            }
        )
    return obs


def figures(obs: Obs) -> checker.Figures:
    return check_observations(sorted(obs, key=checker._time))


seeds = st.integers(min_value=0, max_value=2**32)


@given(seeds)
@settings(max_examples=25, deadline=None)
def test_a_clean_run_has_no_safety_violation(seed: int) -> None:
    f = figures(clean_run(seed))
    assert {name: getattr(f, name) for name in SAFETY} == dict.fromkeys(SAFETY, 0)
    assert f.dangling_certificates_seen == 0
    assert safety_ok(f)


@given(seeds, st.randoms(use_true_random=False))
@settings(max_examples=25, deadline=None)
def test_one_wrong_key_counts_one(seed: int, rnd: random.Random) -> None:
    obs = clean_run(seed)
    accepted = [o for o in obs if o["kind"] == "fetch" and o["ok"] and not o["rogue"]]
    victim = rnd.choice(accepted)
    label = rnd.choice(sorted(victim["keys"]))
    victim["keys"][label] = _h("forged", seed)
    f = figures(obs)
    assert f.wrong_keys_accepted == 1
    assert not safety_ok(f)


@given(seeds, st.randoms(use_true_random=False))
@settings(max_examples=25, deadline=None)
def test_wrong_keys_count_each_result_that_differs(seed: int, rnd: random.Random) -> None:
    obs = clean_run(seed)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for o in obs:
        if o["kind"] == "fetch" and o["ok"] and not o["rogue"]:
            for label in o["keys"]:
                results.setdefault((o["app"], label), []).append(o)
    expected = 0
    for (_, label), fetches in sorted(results.items()):
        # Fewer than half of each key's results forged: the honest value stays the reference.
        forged = rnd.sample(fetches, rnd.randint(0, (len(fetches) - 1) // 2))
        for o in forged:
            o["keys"][label] = _h("forged", label, rnd.randint(0, 1))
        expected += len(forged)
    assert figures(obs).wrong_keys_accepted == expected


def test_failed_fetches_and_rogue_keys_are_not_wrong_keys() -> None:
    obs = clean_run(1)
    for o in obs:
        if o["kind"] == "fetch" and not o["ok"]:
            o["keys"] = {"p0/1": _h("junk")}
    assert figures(obs).wrong_keys_accepted == 0


@given(seeds, st.randoms(use_true_random=False), st.booleans())
@settings(max_examples=30, deadline=None)
def test_one_rogue_release_counts_one(seed: int, rnd: random.Random, by_partial: bool) -> None:
    obs = clean_run(seed)
    rogue = rnd.choice([o for o in obs if o["kind"] == "fetch" and o["rogue"]])
    if by_partial:
        rogue["partials_decrypted"] = 1
    else:
        rogue["ok"] = True  # the rogue combined a key (the node answers' count aside)
    f = figures(obs)
    assert f.unauthorized_releases == 1
    assert f.wrong_keys_accepted == 0


def test_rogue_releases_sum_partials_and_successes() -> None:
    obs = clean_run(2)
    rogue = [o for o in obs if o["kind"] == "fetch" and o["rogue"]]
    rogue[0].update(partials_decrypted=2)
    rogue[-1].update(partials_decrypted=3, ok=True)
    assert figures(obs).unauthorized_releases == 6


@given(seeds, st.randoms(use_true_random=False), st.sampled_from(["hash", "outcome"]))
@settings(max_examples=25, deadline=None)
def test_one_forked_epoch_counts_one(seed: int, rnd: random.Random, field: str) -> None:
    obs = clean_run(seed)
    honest = [o for o in obs if o["kind"] == "chain" and not o["byzantine"]]
    victim = rnd.choice(honest)
    victim["links"] = copy.deepcopy(victim["links"])
    link = rnd.choice(victim["links"])
    link[field] = _h("fork", seed)
    # The other kind of link of the same epoch forked too: still one epoch.
    for other in victim["links"]:
        if other["epoch"] == link["epoch"]:
            other[field] = _h("fork", seed, other["kind"])
    f = figures(obs)
    assert f.conflicting_certificates == 1
    assert f.dangling_certificates_seen == 0


def test_a_byzantine_chain_is_dangling_not_conflicting() -> None:
    obs = clean_run(3)
    obs.append(
        {
            "kind": "chain",
            "t": 5000.0,
            "node": 5,
            "byzantine": True,
            "links": [{"epoch": 99, "kind": "epoch", "hash": _h("x"), "outcome": _h("y")}],
        }
    )
    f = figures(obs)
    assert (f.conflicting_certificates, f.dangling_certificates_seen) == (0, 1)


@given(seeds, st.randoms(use_true_random=False), st.booleans())
@settings(max_examples=30, deadline=None)
def test_one_mpk_change_counts_one(seed: int, rnd: random.Random, stays: bool) -> None:
    obs = clean_run(seed)
    honest = [o for o in obs if o["kind"] == "status" and not o["byzantine"]]
    node = rnd.choice(sorted({o["node"] for o in honest}))
    mine = [o for o in honest if o["node"] == node]
    start = rnd.randrange(len(mine))
    stop = len(mine) if stays else start + 1
    for o in mine[start:stop]:
        o["mpk"] = _h("other mpk")
    assert figures(obs).mpk_changes == 1


def test_a_byzantine_nodes_mpk_does_not_count() -> None:
    obs = clean_run(4)
    for o in obs:
        if o["kind"] == "status" and o["node"] == 5:
            o["byzantine"] = True
            o["mpk"] = _h("evil")
    assert figures(obs).mpk_changes == 0


@given(
    seeds,
    st.randoms(use_true_random=False),
    st.sampled_from(["holds_share", "matches_public_share"]),
)
@settings(max_examples=30, deadline=None)
def test_one_lost_share_counts_one(seed: int, rnd: random.Random, field: str) -> None:
    obs = clean_run(seed)
    shares = [o for o in obs if o["kind"] == "share" and not o["byzantine"]]
    rnd.choice(shares)[field] = False
    assert figures(obs).lost_shares == 1


def test_a_share_lost_when_too_few_honest_members_were_live_is_not_counted() -> None:
    obs = clean_run(5)
    share = next(o for o in obs if o["kind"] == "share" and not o["byzantine"])
    share.update(holds_share=False, attempt_honest_live=share["threshold"] - 1)
    assert figures(obs).lost_shares == 0


def test_only_the_last_epochs_shares_count() -> None:
    obs = clean_run(6)
    last = max(o["epoch"] for o in obs if o["kind"] == "share")
    obs.append(
        {
            "kind": "share",
            "t": 1.0,
            "node": 1,
            "byzantine": False,
            "epoch": last - 1,
            "holds_share": False,
            "matches_public_share": False,
            "attempt_honest_live": 5,
            "threshold": 3,
        }
    )
    assert figures(obs).lost_shares == 0


def _fetch(t0: float, ok: bool, client: str = "c1", ms: float = 100.0) -> dict[str, Any]:
    return {
        "kind": "fetch",
        "client": client,
        "rogue": False,
        "app": "a",
        "t0": t0,
        "t1": t0 + ms / 1000,
        "ok": ok,
        "keys": {"p/1": "k"} if ok else {},
        "epoch": 0,
        "error": None,
        "partials_decrypted": 0,
    }


def test_availability_counts_only_fetches_started_with_t_reachable_members() -> None:
    obs: Obs = [
        {"kind": "reach", "t": 0.0, "client": "c1", "running_reachable_members": 5, "threshold": 3},
        _fetch(1.0, True),
        _fetch(2.0, False),
        {"kind": "reach", "t": 3.0, "client": "c1", "running_reachable_members": 2, "threshold": 3},
        _fetch(4.0, False),  # not counted: the client could reach only 2 members
        _fetch(5.0, False, client="c2"),  # no reach for c2: counted
        {"kind": "reach", "t": 6.0, "client": "c1", "running_reachable_members": 3, "threshold": 3},
        _fetch(7.0, True),
    ]
    assert figures(obs).availability == pytest.approx(2 / 4)


def test_latency_percentiles_are_of_successful_fetches() -> None:
    obs = [_fetch(float(k), True, ms=10.0 * (k + 1)) for k in range(100)] + [
        _fetch(200.0, False, ms=99999)
    ]
    lat = figures(obs).fetch_latency_ms
    assert lat["p50"] == pytest.approx(500.0)
    assert lat["p99"] == pytest.approx(990.0)
    assert percentile([], 50) is None


def _status(
    t: float, node: int, epoch: int | None, up: bool = True, member: bool = True
) -> dict[str, Any]:
    return {
        "kind": "status",
        "t": t,
        "node": node,
        "byzantine": False,
        "up": up,
        "reachable": up,
        "epoch": epoch,
        "mpk": "m",
        "member": member,
        "serving": up,
    }


def test_recovery_runs_from_the_heal_until_every_member_agrees_on_the_epoch() -> None:
    obs = [
        _status(1.0, 1, 0),
        _status(1.0, 2, 0),
        _status(1.0, 3, 0),
        {"kind": "heal", "t": 10.0},
        _status(11.0, 1, 1),
        _status(11.0, 2, 0),
        _status(11.0, 3, None, up=False),
        _status(14.0, 2, 1),
        _status(15.0, 3, 1),  # now all three agree: 5 s after the heal
        _status(16.0, 1, 2),
    ]
    assert figures(obs).recovery_seconds == pytest.approx(5.0)
    removed = [
        *obs[:4],
        _status(12.0, 1, 1),
        _status(12.0, 2, 1),
        _status(12.0, 3, 0, member=False),
    ]
    assert figures(removed).recovery_seconds == pytest.approx(2.0)
    assert figures(obs[:7]).recovery_seconds is None
    assert figures([o for o in obs if o["kind"] != "heal"]).recovery_seconds is None
    # A node removed and stopped before the heal is polled no more: it does not count.
    gone = [*obs[:4], _status(12.0, 1, 1), _status(12.0, 2, 1)]
    assert figures(gone).recovery_seconds == pytest.approx(2.0)


def test_per_fault_kind_splits_fetches_by_overlapping_fault_and_model_label() -> None:
    obs: Obs = [
        {
            "kind": "fault",
            "id": 1,
            "fault": "pause",
            "t0": 10.0,
            "t1": 11.0,
            "targets": ["n1"],
            "params": {},
            "inside_model": True,
        },
        {
            "kind": "fault",
            "id": 2,
            "fault": "partition",
            "t0": 20.0,
            "t1": 30.0,
            "targets": ["n1"],
            "params": {},
            "inside_model": False,
        },
        {
            "kind": "fault",
            "id": 3,
            "fault": "kill",
            "t0": 40.0,
            "t1": None,
            "targets": ["n2"],
            "params": {},
            "inside_model": True,
        },
        {
            "kind": "fault",
            "id": 0,
            "fault": "byzantine",
            "t0": 0.0,
            "t1": None,
            "targets": ["n5"],
            "params": {},
            "inside_model": True,
        },
        _fetch(1.0, True),
        _fetch(10.5, True),
        _fetch(25.0, False),
        _fetch(26.0, True),
        _fetch(45.0, False),
        {"kind": "op", "t": 12.0, "op": "refresh", "ok": True, "detail": ""},
        {"kind": "op", "t": 13.0, "op": "refresh", "ok": False, "detail": "refused"},
        {"kind": "heal", "t": 50.0},
    ]
    f = figures(obs)
    assert f.operations == {"refresh": {"ok": 1, "failed": 1}}
    per = f.per_fault_kind
    assert f.faults_injected == {"byzantine": 1, "kill": 1, "partition": 1, "pause": 1}
    assert per["byzantine"]["fetches"] == 5
    assert per["none"]["fetches"] == 1 and per["none"]["availability"] == 1.0
    assert per["pause"]["fetches"] == 1 and per["pause"]["inside"]["fetches"] == 1
    assert per["partition"]["availability"] == 0.5
    assert per["partition"]["outside_model"] == 1 and per["partition"]["outside"]["fetches"] == 2
    assert per["kill"]["fetches"] == 1 and per["kill"]["availability"] == 0.0


def test_reads_every_jsonl_file_in_time_order_and_counts_unreadable_lines(tmp_path: Path) -> None:
    obs = clean_run(7)
    obs[0]["keys"] = obs[0].get("keys")
    rnd = random.Random(7)
    rnd.shuffle(obs)
    files = [tmp_path / f"part{k}.jsonl" for k in range(3)]
    for k, path in enumerate(files):
        lines = [json.dumps(o) for o in obs[k::3]]
        if k == 1:
            lines += [
                "{not json",
                json.dumps({"kind": "fetch"}),
                json.dumps([1, 2]),
                json.dumps({"kind": "bogus", "t": 1}),
            ]
        path.write_text("\n".join(lines) + "\n\n")
    (tmp_path / "ignored.txt").write_text("{not an observation")
    f = check(tmp_path)
    expected = figures(clean_run(7))
    assert f.unreadable_lines == 4
    f.unreadable_lines = 0
    assert f == expected


def _erase(node: int, t0: float = 5.0) -> dict[str, Any]:
    return {
        "kind": "fault",
        "id": 99,
        "fault": "data_loss",
        "t0": t0,
        "t1": t0 + 60.0,
        "targets": [f"n{node}"],
        "params": {},
        "inside_model": True,
    }


@given(seeds, st.randoms(use_true_random=False), st.booleans())
@settings(max_examples=30, deadline=None)
def test_a_share_the_nemesis_erased_is_not_lost_but_any_other_still_is(
    seed: int, rnd: random.Random, by_flag: bool
) -> None:
    obs = clean_run(seed)
    shares = [o for o in obs if o["kind"] == "share" and not o["byzantine"]]
    erased = rnd.choice(shares)
    erased.update(holds_share=False, matches_public_share=False)
    if by_flag:
        erased["data_lost"] = True
    else:
        obs.append(_erase(erased["node"]))
    assert figures(obs).lost_shares == 0
    # A member the protocol should have given a share still counts, erased node or not.
    other = rnd.choice([s for s in shares if s is not erased])
    other[rnd.choice(["holds_share", "matches_public_share"])] = False
    assert figures(obs).lost_shares == 1


def _chain(t: float, node: int, membership: list[int], epochs: list[int]) -> dict[str, Any]:
    links = [
        {"epoch": e, "kind": "membership", "hash": _h("m", e), "outcome": _h("mo", e)}
        for e in membership
    ] + [{"epoch": e, "kind": "epoch", "hash": _h("e", e), "outcome": _h("eo", e)} for e in epochs]
    return {"kind": "chain", "t": t, "node": node, "byzantine": False, "links": links}


@given(
    st.floats(min_value=0.5, max_value=50.0),
    st.floats(min_value=0.5, max_value=200.0),
    st.integers(min_value=2, max_value=7),
)
@settings(max_examples=40, deadline=None)
def test_recovery_waits_for_the_reshare_a_certified_change_leads_to(
    before: float, reshare: float, n: int
) -> None:
    """Every member agrees on epoch 0 at once after the heal, but a removal certified in
    epoch 0 (node n erased) is pending: recovery is when every member reached epoch 1."""
    heal = 100.0
    obs: Obs = [_erase(n, 10.0), {"kind": "heal", "t": heal}]
    obs += [_chain(90.0, i, [0], [0]) for i in range(1, n)]
    obs += [_status(heal + 1.0, i, 0) for i in range(1, n)]
    obs.append(_status(heal + 1.0, n, None, up=False))  # erased: never restarted
    obs += [_status(heal + before, i, 0) for i in range(1, n)]
    done = heal + before + reshare
    obs += [_status(done, i, 1) for i in range(1, n)]
    obs += [_chain(done + 0.5, i, [0], [0, 1]) for i in range(1, n)]
    assert figures(obs).recovery_seconds == pytest.approx(before + reshare)
    # The reshare never finishes: no recovery.
    unfinished = [o for o in obs if _time(o) < done]
    assert figures(unfinished).recovery_seconds is None


def _time(o: dict[str, Any]) -> float:
    return checker._time(o)


@pytest.mark.parametrize("field", ["running", "locked"])
def test_recovery_waits_while_a_member_reports_a_run_or_a_lock(field: str) -> None:
    obs: Obs = [{"kind": "heal", "t": 10.0}]
    busy = [_status(11.0, i, 0) for i in (1, 2, 3)]
    busy[1][field] = "reshare" if field == "running" else "ab" * 16
    obs += busy
    obs += [_status(13.0, i, 0) for i in (1, 2, 3)]
    assert figures(obs).recovery_seconds == pytest.approx(3.0)


@given(st.floats(min_value=1.0, max_value=500.0), st.floats(min_value=1.0, max_value=500.0))
@settings(max_examples=30, deadline=None)
def test_the_recovery_target_comes_from_the_heal_and_is_met_or_not(
    took: float, target: float
) -> None:
    obs: Obs = [
        {"kind": "heal", "t": 10.0, "recovery_target_seconds": target},
        *[_status(10.0 + took, i, 0) for i in (1, 2, 3)],
    ]
    figs = figures(obs)
    assert figs.recovery_seconds == pytest.approx(took)
    assert figs.recovery_target_seconds == target
    assert figs.recovery_target_met is (figs.recovery_seconds <= target)
    never = figures([obs[0], _status(11.0, 1, 0), _status(11.0, 2, 1)])
    assert never.recovery_seconds is None and never.recovery_target_met is False
    assert figures(obs[1:]).recovery_target_met is None
