"""One corrupt member answering with valid partials of the PREVIOUS epoch (it kept its old
share) after an epoch switch must not stall a CVM.

Setting: n = 5, t = 3, the committee refreshed 0 -> 1, so a client's verified chain has a
previous state and its sessions accept epoch-0 answers (a switch in progress). Node 1 is
corrupt: it keeps its epoch-0 share and answers every request with the epoch-0 partials it
computes with it, through the node's own pipeline, signed by its identity. Nodes 2-5 are
honest and on epoch 1. Such an answer is neither a failure nor progress for epoch 1; the
client must still ask further members until one epoch has ``t`` partials, and get its
certificate (``KeyClient.certify``) and its key (``KeyClient.fetch``) for epoch 1.
"""

from __future__ import annotations

import random

import httpx
import pytest
from mesh import Mesh, make_nodes

from kms.attest import Verifier
from kms.attest.simulated import SimulatedTEE
from kms.client.http import KeyClient
from kms.node.appcert import AppKeyCertifier, Certified, CertInputs
from kms.node.core import NodeConfig, NodeCore
from kms.node.release import Admitted, KeyReleaser
from kms.policy import ROOT_PURPOSE, AppPolicy, Measurement, OwnerKey
from kms.protocol import AppKeyCertRequest
from mpc import appcert
from mpc.ids import ParticipantIndex as PI
from mpc.membership import Refresh, verify_chain_epochs

NOW = 1_800_000_000
MR = {n: bytes([i + 1]) * 48 for i, n in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))}
PK = bytes.fromhex("02bfe2bac21d6244039c643187a767f6c2e937defff420af151ba72c64575bd6f5")


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    nodes = make_nodes(range(1, 6), 71)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, 6))
    rng = random.Random(71)
    cores = {
        PI(i): NodeCore(
            NodeConfig(
                PI(i),
                genesis,
                3,
                genesis_start=1.0,
                delta=0.5,
                window_period=20.0,
                window_length=2.0,
            ),
            nodes[PI(i)].identity,
            nodes[PI(i)].dkg_key,
            rng=rng.randbytes,
        )
        for i in range(1, 6)
    }
    mesh = Mesh(cores, seed=0, max_delay=0.15, ticks=[k * 0.25 for k in range(400)])
    mesh.run_until(19.0)
    old = {i: cores[i].share for i in cores}
    pid = cores[PI(1)].propose(Refresh())
    for i in (2, 3, 4, 5):
        cores[PI(i)].approve(pid)
    mesh.run_until(60.0)
    states = verify_chain_epochs(cores[PI(1)].chain, mpk=cores[PI(1)].state.mpk)
    assert [s.epoch for s in states] == [0, 1]
    tee = SimulatedTEE(random.Random(4).randbytes, now=NOW)
    owner = OwnerKey.from_seed(bytes([7]) * 32)
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=1,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.explicit(**MR)],
        kms_mpk=states[-1].mpk.to_bytes(),
        not_before=NOW - 60,
        purposes=("app", ROOT_PURPOSE),
    )
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    collateral = tee.collateral(NOW)
    certifiers = {i: AppKeyCertifier(KeyReleaser(i, nodes[i].identity, verifier)) for i in cores}
    return cores, old, states, tee, owner, policy, collateral, certifiers


class Committee(httpx.BaseTransport):
    """HTTP of the five nodes: /v1/chain from node 1's core; /v1/app-key-cert through each
    node's certification pipeline (honest: epoch 1 and its share; corrupt node 1: epoch 0
    and the old share it kept)."""

    def __init__(self, world, corrupt: set[int]) -> None:  # type: ignore[no-untyped-def]
        self.w, self.corrupt = world, corrupt
        self.asked: list[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        cores, old, states, tee, owner, policy, collateral, certifiers = self.w
        i = int(request.url.host.removeprefix("node-"))
        if request.url.path == "/v1/chain":
            return httpx.Response(200, content=cores[PI(1)].chain_update(0).encode())
        assert request.url.path == "/v1/app-key-cert"
        self.asked.append(i)
        req = AppKeyCertRequest.decode(request.read())
        epoch, share = (0, old[PI(i)]) if i in self.corrupt else (1, cores[PI(i)].share)
        cert = certifiers[PI(i)]
        needs = cert.check(req, now=NOW, share=share)
        assert cert.screen(needs, now=NOW, nonce_seen=False) is None  # type: ignore[arg-type]
        res = cert.answer(
            needs,  # type: ignore[arg-type]
            CertInputs(NOW, epoch, share, False, Admitted(policy), collateral, None),
        )
        assert isinstance(res, Certified), res
        return httpx.Response(200, content=res.share.encode())


def certify(world, transport: Committee):  # type: ignore[no-untyped-def]
    cores, old, states, tee, owner, policy, collateral, certifiers = world
    urls = {PI(i): f"http://node-{i}" for i in range(1, 6)}
    with KeyClient(urls, states[-1].mpk, timeout=10.0, hedge_after=4.0, transport=transport) as c:
        return c.certify(owner.app_id(), 1, PK, lambda rd: tee.quote(rd, **MR), now=NOW)


def test_all_honest_gets_the_certificate(world) -> None:  # type: ignore[no-untyped-def]
    cert = certify(world, Committee(world, corrupt=set()))
    mpk = world[2][-1].mpk
    assert cert.epoch == 1
    assert appcert.verify(mpk, appcert.link_message(cert.app_id, PK), cert.link_signature)


def test_a_member_answering_for_the_previous_epoch_does_not_stall_certify(world) -> None:  # type: ignore[no-untyped-def]
    t = Committee(world, corrupt={1})
    cert = certify(world, t)
    mpk = world[2][-1].mpk
    assert cert.epoch == 1
    assert appcert.verify(mpk, appcert.link_message(cert.app_id, PK), cert.link_signature)
    # The corrupt member's epoch-0 answer was neither refused nor rejected: the client
    # asked one more member to complete epoch 1, and not every member.
    assert sorted(t.asked) == [1, 2, 3, 4], t.asked
    assert cert.refusals == {} and cert.rejected == ()


class KeyCommittee(Committee):
    """The same five nodes on POST /v1/keys (``KeyReleaser.check/screen/answer``)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        from kms.node.release import Released, ReleaseInputs
        from kms.protocol import KeyRequest

        cores, old, states, tee, owner, policy, collateral, certifiers = self.w
        i = int(request.url.host.removeprefix("node-"))
        if request.url.path == "/v1/chain":
            return httpx.Response(200, content=cores[PI(i)].chain_update(0).encode())
        assert request.url.path == "/v1/keys"
        self.asked.append(i)
        req = KeyRequest.decode(request.read())
        epoch, share = (0, old[PI(i)]) if i in self.corrupt else (1, cores[PI(i)].share)
        rel = KeyReleaser(PI(i), certifiers[PI(i)]._key, certifiers[PI(i)]._verifier)
        needs = rel.check(req, now=NOW, share=share)
        assert rel.screen(needs, now=NOW, nonce_seen=False) is None  # type: ignore[arg-type]
        res = rel.answer(
            needs,  # type: ignore[arg-type]
            ReleaseInputs(
                NOW, epoch, share, False, Admitted(policy), collateral, random.Random(i).randbytes
            ),
        )
        assert isinstance(res, Released), res
        return httpx.Response(200, content=res.response.encode())


def test_a_member_answering_for_the_previous_epoch_does_not_stall_fetch(world) -> None:  # type: ignore[no-untyped-def]
    cores, old, states, tee, owner, policy, collateral, certifiers = world
    urls = {PI(i): f"http://node-{i}" for i in range(1, 6)}

    def fetch(t: KeyCommittee):  # type: ignore[no-untyped-def]
        with KeyClient(urls, states[-1].mpk, timeout=10.0, hedge_after=4.0, transport=t) as c:
            return c.fetch(owner.app_id(), [("app", 1)], lambda rd: tee.quote(rd, **MR), now=NOW)

    honest = fetch(KeyCommittee(world, corrupt=set()))
    assert honest.epoch == 1
    t = KeyCommittee(world, corrupt={1})
    res = fetch(t)
    assert res.epoch == 1
    assert sorted(t.asked) == [1, 2, 3, 4], t.asked
    assert res.rejected == () and res.refusals == {}
    key = res.derived[("app", 1)]
    assert key.app_key().secret.data == honest.derived[("app", 1)].app_key().secret.data
