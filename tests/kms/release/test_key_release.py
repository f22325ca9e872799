"""Key release end to end, in process: a real committee (node cores on the mesh), the
simulated TEE's quotes verified by the real DCAP code, signed app policies, and the
CVM-side session that combines partials against the pinned master key."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from release_committee import InProcessReleaser, genesis_cores

from kms.attest import Verifier
from kms.attest.simulated import SimulatedTEE
from kms.client.core import KeyReleaseError, KeyRequestSession, verify_wrong_partial
from kms.node.release import KeyRefusalReason, Released
from kms.policy import AppPolicy, Measurement, OwnerKey
from kms.protocol import KeyResponse, KeyShareResponse
from mpc.errors import InvalidSignature
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.membership import verify_chain
from mpc.tkd import KeyId, derive_point_base

NOW = 1_800_000_000
MR = {
    name: bytes([i + 1]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    nodes, cores, rng = genesis_cores(5, 3, key_seed=77, rng_seed=5, mesh_seed=1)
    mpk = cores[PI(1)].state.mpk
    chain = verify_chain(cores[PI(3)].chain, mpk=mpk)  # the CVM's own verification
    tee = SimulatedTEE(random.Random(9).randbytes, now=NOW)
    owner = OwnerKey.from_seed(bytes(32))
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=1,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**MR)],
        kms_mpk=mpk.to_bytes(),
        not_before=NOW - 60,
        purposes=("app", "disk"),
    )
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    collateral = tee.collateral(NOW)
    releasers = {
        i: InProcessReleaser(
            i,
            nodes[i].identity,
            verifier,
            collateral,
            {owner.app_id(): policy},
            rng=rng.randbytes,
        )
        for i in cores
    }
    return cores, chain, tee, owner, policy, releasers, nodes


def request(world, *, measurements=MR, now=NOW, purposes=(("app", 1),), seed=1):  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, *_ = world
    s = KeyRequestSession(
        chain, owner.app_id(), purposes, now=now, rng=random.Random(seed).randbytes
    )
    s.attach_quote(tee.quote(s.report_data, **measurements))
    return s


def ask(world, session, indices, *, nonces=None, now=NOW):  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, policy, releasers, nodes = world
    seen = set() if nonces is None else nonces
    out = {}
    for i in indices:
        res = releasers[PI(i)].handle(
            session.request.encode(),
            now=now,
            epoch=chain.epoch,
            share=cores[PI(i)].share,
            seen_nonce=seen.__contains__,
        )
        out[PI(i)] = res
        if isinstance(res, Released):
            session.receive(PI(i), res.response)
        else:
            session.receive(PI(i), res.refusal)
    return out


def test_any_three_nodes_release_the_same_key(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, *_ = world
    keys = set()
    for subset in ([1, 2, 3], [3, 4, 5], [1, 3, 5]):
        s = request(world, seed=sum(subset))
        ask(world, s, subset)
        assert s.done
        (derived,) = s.derived().values()
        keys.add(derived.app_key().secret.data)
    assert len(keys) == 1


def test_released_partials_are_bound_to_the_request_and_audited(world) -> None:  # type: ignore[no-untyped-def]
    s = request(world, purposes=(("app", 1), ("disk", 2)))
    res = ask(world, s, [1, 2, 3])
    assert s.done and len(s.derived()) == 2
    rec = res[PI(1)].audit
    assert {r.purpose for r in rec} == {"app", "disk"}
    for r in rec:
        d = r.as_dict()
        assert "share" not in str(d).lower() and d["simulated"] == 1


@pytest.mark.parametrize(
    ("name", "mutate", "reason"),
    [
        (
            "a measurement outside the policy",
            {"measurements": {**MR, "rtmr3": bytes(48)}},
            KeyRefusalReason.POLICY,
        ),
        ("a stale timestamp", {"now": NOW - 3600}, KeyRefusalReason.STALE),
        (
            "a purpose the policy does not allow",
            {"purposes": (("backup", 1),)},
            KeyRefusalReason.POLICY,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_each_check_refuses_on_its_own(world, name, mutate, reason) -> None:  # type: ignore[no-untyped-def]
    s = request(world, **mutate)
    res = ask(world, s, [1])
    assert res[PI(1)].reason is reason


def test_report_data_binding_and_replay(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, policy, releasers, nodes = world
    s = request(world)
    other = request(world, seed=99)
    # The quote of another request does not bind this body.
    forged = replace(s.request, quote=other.request.quote)
    r = releasers[PI(1)].handle(
        forged.encode(), now=NOW, epoch=0, share=cores[PI(1)].share, seen_nonce=lambda n: False
    )
    assert r.reason is KeyRefusalReason.BINDING
    used = set()
    first = releasers[PI(1)].handle(
        s.request.encode(), now=NOW, epoch=0, share=cores[PI(1)].share, seen_nonce=used.__contains__
    )
    assert isinstance(first, Released)
    used.add(first.nonce)
    again = releasers[PI(1)].handle(
        s.request.encode(), now=NOW, epoch=0, share=cores[PI(1)].share, seen_nonce=used.__contains__
    )
    assert again.reason is KeyRefusalReason.REPLAY


def test_a_quote_under_an_untrusted_root_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, policy, releasers, nodes = world
    rogue = SimulatedTEE(random.Random(10).randbytes, now=NOW)
    s = KeyRequestSession(
        chain, owner.app_id(), (("app", 1),), now=NOW, rng=random.Random(3).randbytes
    )
    s.attach_quote(rogue.quote(s.report_data, **MR))
    r = releasers[PI(2)].handle(
        s.request.encode(), now=NOW, epoch=0, share=cores[PI(2)].share, seen_nonce=lambda n: False
    )
    assert r.reason is KeyRefusalReason.QUOTE


def test_a_wrong_partial_is_named_bypassed_and_proven(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, policy, releasers, nodes = world
    s = request(world, seed=7)
    good = releasers[PI(2)].handle(
        s.request.encode(), now=NOW, epoch=0, share=cores[PI(2)].share, seen_nonce=lambda n: False
    )
    # Node 2 lies: it encrypts someone else's partial under its own index and signs it.
    honest_share = good.response.shares[0]
    liar = releasers[PI(2)]
    wrong_share = cores[PI(4)].share  # a valid point, but not node 2's
    bad = liar.handle(
        s.request.encode(),
        now=NOW,
        epoch=0,
        share=type(wrong_share)(PI(2), wrong_share.value),
        seen_nonce=lambda n: False,
    )
    s.receive(PI(2), bad.response)
    # Partials are combined optimistically: the lie shows once t answers are in.
    assert s.bad_nodes() == []
    ask(world, s, [1, 3])
    assert not s.done
    assert s.bad_nodes() == [PI(2)]
    ev = s.rejected[0].evidence
    assert ev is not None
    assert "public share" in verify_wrong_partial(ev, chain)
    with pytest.raises(InvalidSignature):  # the honest answer is no evidence
        verify_wrong_partial(replace(ev, response=honest_share), chain)
    # The client asks another node and still gets the key.
    ask(world, s, [4])
    assert s.done
    h = derive_point_base(KeyId(owner.app_id(), "app", 1))
    assert s.derived()[s.purposes[0]].point != h  # sanity: a real point


def test_fewer_than_t_reachable_nodes_is_a_clear_error(world) -> None:  # type: ignore[no-untyped-def]
    s = request(world, seed=11)
    ask(world, s, [1, 2])
    with pytest.raises(KeyReleaseError, match="not enough good partials"):
        s.derived()


def test_an_answer_for_another_epoch_is_ignored_and_reported(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, *_ = world
    s = request(world, seed=12)
    res = ask(world, s, [1])
    share: KeyShareResponse = res[PI(1)].response.shares[0]
    s2 = request(world, seed=12)
    s2.receive(PI(1), KeyResponse((replace(share, epoch=5),)))
    assert any("epoch" in r.reason for r in s2.rejected)


def _releaser_with(world, policy, *, tee=None):  # type: ignore[no-untyped-def]
    cores, chain, base_tee, owner, _, releasers, nodes = world
    tee = tee or base_tee
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    collateral = tee.collateral(NOW)
    return InProcessReleaser(
        PI(1),
        nodes[PI(1)].identity,
        verifier,
        collateral,
        {owner.app_id(): policy},
        rng=random.Random(1).randbytes,
    )


def test_a_tcb_status_the_verifier_does_not_admit_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, policy, releasers, nodes = world
    stale = SimulatedTEE(random.Random(21).randbytes, now=NOW, tcb_status="OutOfDate")
    r = _releaser_with(world, policy, tee=stale)
    s = KeyRequestSession(
        chain, owner.app_id(), (("app", 1),), now=NOW, rng=random.Random(4).randbytes
    )
    s.attach_quote(stale.quote(s.report_data, **MR))
    res = r.handle(
        s.request.encode(), now=NOW, epoch=0, share=cores[PI(1)].share, seen_nonce=lambda n: False
    )
    assert res.reason is KeyRefusalReason.QUOTE and "TCB_STATUS_NOT_ALLOWED" in res.refusal.detail


def test_a_policy_older_than_the_cvm_asks_for_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, policy, releasers, nodes = world
    s = KeyRequestSession(
        chain,
        owner.app_id(),
        (("app", 1),),
        now=NOW,
        rng=random.Random(5).randbytes,
        min_policy_version=2,
    )
    s.attach_quote(tee.quote(s.report_data, **MR))
    res = releasers[PI(1)].handle(
        s.request.encode(), now=NOW, epoch=0, share=cores[PI(1)].share, seen_nonce=lambda n: False
    )
    assert res.reason is KeyRefusalReason.POLICY and res.refusal.detail.startswith(
        "version_below_requested"
    )


def test_an_expired_policy_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, policy, releasers, nodes = world
    old = replace(policy, not_before=NOW - 1000, expires=NOW - 10)
    r = _releaser_with(world, old)
    s = request(world, seed=31)
    res = r.handle(
        s.request.encode(), now=NOW, epoch=0, share=cores[PI(1)].share, seen_nonce=lambda n: False
    )
    assert res.reason is KeyRefusalReason.POLICY and res.refusal.detail.startswith("expired")


def test_the_compose_hash_comes_from_the_replayed_event_log(world) -> None:  # type: ignore[no-untyped-def]
    from kms.policy.eventlog import build_event_log, dstack_boot_events

    cores, chain, tee, owner, policy, releasers, nodes = world
    compose = bytes(range(32))
    log, rtmr3 = build_event_log(dstack_boot_events(app_id=owner.app_id(), compose_hash=compose))
    by_compose = replace(
        policy,
        measurements=(
            Measurement.compose(
                mr_td=MR["mr_td"],
                rtmr0=MR["rtmr0"],
                rtmr1=MR["rtmr1"],
                rtmr2=MR["rtmr2"],
                compose_hash=compose,
            ),
        ),
    )
    r = _releaser_with(world, by_compose)
    meas = {**MR, "rtmr3": rtmr3}

    def ask_with(event_log: bytes, seed: int):  # type: ignore[no-untyped-def]
        s = KeyRequestSession(
            chain, owner.app_id(), (("app", 1),), now=NOW, rng=random.Random(seed).randbytes
        )
        s.attach_quote(tee.quote(s.report_data, **meas), event_log)
        return r.handle(
            s.request.encode(),
            now=NOW,
            epoch=0,
            share=cores[PI(1)].share,
            seen_nonce=lambda n: False,
        )

    assert isinstance(ask_with(log.encode(), 41), Released)
    tampered, _ = build_event_log(dstack_boot_events(app_id=owner.app_id(), compose_hash=bytes(32)))
    refused = ask_with(tampered.encode(), 42)
    assert refused.reason is KeyRefusalReason.POLICY
    assert ask_with(b"", 43).reason is KeyRefusalReason.POLICY


def test_kms_evidence_verify_checks_a_saved_chain(world, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from kms.cli import app as cli

    cores, chain, tee, owner, policy, releasers, nodes = world
    s = request(world, seed=51)
    wrong = cores[PI(4)].share
    bad = releasers[PI(2)].handle(
        s.request.encode(),
        now=NOW,
        epoch=0,
        share=type(wrong)(PI(2), wrong.value),
        seen_nonce=lambda n: False,
    )
    s.receive(PI(2), bad.response)
    ask(world, s, [1, 3])
    evidence = tmp_path / "evidence.msgpack"
    evidence.write_bytes(s.rejected[0].evidence.encode())
    saved = tmp_path / "chain.msgpack"
    saved.write_bytes(cores[PI(1)].chain_update(0).encode())
    mpk = chain.mpk.to_bytes().hex()
    runner = CliRunner()
    ok = runner.invoke(
        cli, ["evidence", "verify", str(evidence), "--mpk", mpk, "--chain", str(saved), "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert '"ok":true' in ok.output and '"node":2' in ok.output
    # The honest answer of node 2 proves nothing.
    good = releasers[PI(2)].handle(
        s.request.encode(), now=NOW, epoch=0, share=cores[PI(2)].share, seen_nonce=lambda n: False
    )
    honest = replace(s.rejected[0].evidence, response=good.response.shares[0])
    evidence.write_bytes(honest.encode())
    nope = runner.invoke(
        cli, ["evidence", "verify", str(evidence), "--mpk", mpk, "--chain", str(saved), "--json"]
    )
    assert nope.exit_code == 1 and '"ok":false' in nope.output
    # Another pinned key: the saved chain does not verify, nothing is checked.
    other = runner.invoke(
        cli,
        [
            "evidence",
            "verify",
            str(evidence),
            "--mpk",
            (7 * G2.generator()).to_bytes().hex(),
            "--chain",
            str(saved),
        ],
    )
    assert other.exit_code == 2


# --- the client shell over real HTTP: one loopback server in front of the releasers ---


class _Committee:
    """Serve ``/v1/chain`` and ``/v1/keys/{index}`` for the in-process releasers, over HTTP.

    ``slow`` indices answer after ``delay`` seconds; ``liars`` answer with a wrong partial; ``epoch`` is the epoch
    the nodes claim in their answers; ``chain_hits`` counts chain fetches.
    """

    def __init__(self, world) -> None:  # type: ignore[no-untyped-def]
        self.world = world
        self.slow: set[int] = set()
        self.delay = 0.0
        self.epoch = 0
        self.chain_hits = 0
        self.key_hits: list[int] = []
        self.liars: set[int] = set()

    def app(self):  # type: ignore[no-untyped-def]
        import trio
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        cores, chain, tee, owner, policy, releasers, nodes = self.world
        seen: set[bytes] = set()

        async def chain_route(request):  # type: ignore[no-untyped-def]
            self.chain_hits += 1
            return Response(cores[PI(1)].chain_update(0).encode())

        async def keys(request):  # type: ignore[no-untyped-def]
            i = int(request.path_params["index"])
            self.key_hits.append(i)
            if i in self.slow:
                await trio.sleep(self.delay)
            share = cores[PI(i)].share
            if i in self.liars:  # signs and seals another node's partial under its index
                share = type(share)(PI(i), cores[PI(i % 5 + 1)].share.value)
            res = releasers[PI(i)].handle(
                await request.body(),
                now=NOW,
                epoch=self.epoch,
                share=share,
                seen_nonce=lambda n: (n + bytes([i])) in seen,
            )
            return Response(res.response.encode() if isinstance(res, Released) else res.encode())

        return Starlette(
            routes=[
                Route("/n{index}/v1/chain", chain_route),
                Route("/n{index}/v1/keys", keys, methods=["POST"]),
            ]
        )


@pytest.fixture
def served(world):  # type: ignore[no-untyped-def]
    import threading
    from functools import partial

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from kms.app.devnet import free_port

    committee = _Committee(world)
    port = free_port()
    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    cfg.errorlog = None
    box: dict[str, object] = {}

    async def main() -> None:
        box["token"] = trio.lowlevel.current_trio_token()
        box["stop"] = stop = trio.Event()
        await serve(committee.app(), cfg, shutdown_trigger=stop.wait, mode="asgi")

    thread = threading.Thread(target=partial(trio.run, main), daemon=True)
    thread.start()
    import httpx

    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/n1/v1/chain", timeout=1.0)
            break
        except httpx.TransportError:
            threading.Event().wait(0.05)
    committee.chain_hits = 0
    urls = {PI(i): f"http://127.0.0.1:{port}/n{i}" for i in range(1, 6)}
    yield committee, urls
    trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])  # type: ignore[attr-defined]
    thread.join(timeout=10)


def _quote_for(world):  # type: ignore[no-untyped-def]
    tee = world[2]
    return lambda rd: tee.quote(rd, **MR)


def test_key_client_verifies_the_chain_once_and_reuses_it(world, served) -> None:  # type: ignore[no-untyped-def]
    from kms.client.http import KeyClient

    committee, urls = served
    cores, chain, tee, owner, *_ = world
    with KeyClient(urls, chain.mpk) as client:
        first = client.fetch(owner.app_id(), [("app", 1)], _quote_for(world), now=NOW)
        second = client.fetch(owner.app_id(), [("app", 1)], _quote_for(world), now=NOW)
    assert first.derived == second.derived
    assert committee.chain_hits == 5  # every node once, at the first request only
    assert first.asked == (PI(1), PI(2), PI(3))


def test_a_warm_key_client_still_refuses_a_wrong_partial(world, served) -> None:  # type: ignore[no-untyped-def]
    """The partials of every fetch are checked against the pinned key, however warm the
    client: a node lying on the tenth fetch is named with its evidence and bypassed."""
    from kms.client.http import KeyClient

    committee, urls = served
    cores, chain, tee, owner, *_ = world
    with KeyClient(urls, chain.mpk) as client:
        for _ in range(9):
            first = client.fetch(owner.app_id(), [("app", 1)], _quote_for(world), now=NOW)
            assert first.rejected == ()
        committee.liars = {2}
        res = client.fetch(owner.app_id(), [("app", 1)], _quote_for(world), now=NOW)
    assert res.derived == first.derived
    assert [r.index for r in res.rejected] == [PI(2)]
    evidence = res.rejected[0].evidence
    assert evidence is not None
    assert "public share" in verify_wrong_partial(evidence, chain)
    assert res.asked == (PI(1), PI(2), PI(3), PI(4))
    assert committee.chain_hits == 5  # the chain verified once, at the first fetch


def test_key_client_asks_another_node_when_one_is_slow(world, served) -> None:  # type: ignore[no-untyped-def]
    from kms.client.http import KeyClient

    committee, urls = served
    cores, chain, tee, owner, *_ = world
    committee.slow, committee.delay = {2}, 3.0
    with KeyClient(urls, chain.mpk, hedge_after=0.2) as client:
        client.chain()
        res = client.fetch(owner.app_id(), [("app", 1)], _quote_for(world), now=NOW)
    # Node 2 did not answer within 0.2 s, so node 4 was asked and completed the key
    # long before node 2's 3 s were up.
    assert PI(4) in res.asked
    assert res.derived[("app", 1)] is not None


def test_key_client_fetches_the_chain_again_when_nodes_answer_for_a_later_epoch(  # type: ignore[no-untyped-def]
    world, served
) -> None:
    from kms.client.http import KeyClient

    committee, urls = served
    cores, chain, tee, owner, *_ = world
    committee.epoch = 1  # nodes claim an epoch the served chain does not reach
    with KeyClient(urls, chain.mpk) as client, pytest.raises(KeyReleaseError):
        client.fetch(owner.app_id(), [("app", 1)], _quote_for(world), now=NOW)
    assert committee.chain_hits == 10  # fetched, then fetched again before the retry


def test_key_client_ignores_a_node_serving_another_master_key(world, served) -> None:  # type: ignore[no-untyped-def]
    from kms.client.http import KeyClient

    committee, urls = served
    cores, chain, tee, owner, *_ = world
    other = G2.generator() * 5
    with KeyClient(urls, other) as client, pytest.raises(KeyReleaseError, match="pinned"):
        client.chain()


def test_requests_and_answers_survive_their_json_form(world) -> None:  # type: ignore[no-untyped-def]
    import json

    from kms.protocol import KeyRefusal, KeyRequest

    cores, chain, tee, owner, policy, releasers, nodes = world
    s = request(world, seed=61, purposes=(("app", 3), ("disk", 1)))
    back = KeyRequest.decode_json(json.dumps(s.request.to_json()))
    assert back.encode() == s.request.encode()
    assert back.body.report_data() == s.report_data  # the binding survives
    answer = releasers[PI(1)].handle(
        back.encode(), now=NOW, epoch=0, share=cores[PI(1)].share, seen_nonce=lambda n: False
    )
    resp = KeyResponse.decode_json(json.dumps(answer.response.to_json()).encode())
    s.receive(PI(1), resp)
    assert not s.rejected
    refusal = KeyRefusal("stale-request", "x")
    assert KeyRefusal.decode_json(json.dumps(refusal.to_json())) == refusal
