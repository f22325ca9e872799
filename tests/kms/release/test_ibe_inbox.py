"""An app's IBE inbox is a purpose of its own: a CVM admitted only for signing keys
cannot obtain the point that opens what senders encrypted to the app.

Run through the key-release wire path: a real committee (node cores on the mesh),
the simulated TEE's quotes verified by the real DCAP code, signed app policies,
the node's ``KeyReleaser`` on the encoded request, and the CVM-side session that
combines partials against the pinned master key.
"""

from __future__ import annotations

import os
import random

import pytest
from release_committee import InProcessReleaser, genesis_cores

from kms.attest import Verifier
from kms.attest.simulated import SimulatedTEE
from kms.client.core import KeyReleaseError, KeyRequestSession
from kms.node.release import KeyRefusalReason, Released
from kms.policy import AppPolicy, Measurement, OwnerKey
from mpc import ibe
from mpc.errors import DecryptionError
from mpc.ids import ParticipantIndex as PI
from mpc.membership import verify_chain
from mpc.tkd import DerivedPoint, KeyId

NOW = 1_800_000_000
MR = {
    name: bytes([0x30 + i]) * 48
    for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3"))
}
N, T = 4, 2


@pytest.fixture(scope="module")
def world():  # type: ignore[no-untyped-def]
    nodes, cores, rng = genesis_cores(N, T, key_seed=31, rng_seed=6, mesh_seed=2)
    mpk = cores[PI(1)].state.mpk
    chain = verify_chain(cores[PI(2)].chain, mpk=mpk)
    tee = SimulatedTEE(random.Random(12).randbytes, now=NOW)
    owner = OwnerKey.from_seed(bytes([7]) * 32)
    verifier = Verifier([tee.root_ca_der], simulated_allowed=True)
    collateral = tee.collateral(NOW)

    def releasers(purposes: tuple[str, ...]) -> dict[PI, InProcessReleaser]:
        policy = AppPolicy.build(
            app_id=owner.app_id(),
            version=1,
            owner_key=owner.public_bytes(),
            measurements=[Measurement.explicit(**MR)],
            kms_mpk=mpk.to_bytes(),
            not_before=NOW - 60,
            purposes=purposes,
        )
        return {
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

    return cores, chain, tee, owner, mpk, releasers


def fetch(world, releasers, purposes, seed):  # type: ignore[no-untyped-def]
    """Ask every node, as the admitted CVM image would; return the session and the answers."""
    cores, chain, tee, owner, mpk, _ = world
    s = KeyRequestSession(
        chain, owner.app_id(), purposes, now=NOW, rng=random.Random(seed).randbytes
    )
    s.attach_quote(tee.quote(s.report_data, **MR))
    answers = {}
    for i, releaser in releasers.items():
        res = releaser.handle(
            s.request.encode(),
            now=NOW,
            epoch=chain.epoch,
            share=cores[i].share,
            seen_nonce=lambda n: False,
        )
        answers[i] = res
        s.receive(i, res.response if isinstance(res, Released) else res.refusal)
    return s, answers


def test_an_image_admitted_only_for_signing_cannot_read_the_inbox(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, mpk, releasers = world
    inbox = ibe.inbox_key_id(owner.app_id())
    sealed = ibe.encrypt(mpk, inbox, b"for the app's inbox only", rng=os.urandom)
    signer = releasers(("sign",))

    # Asking for the inbox's point: every node refuses, with a typed reason.
    s, answers = fetch(world, signer, [("ibe.app", 1)], seed=1)
    assert {a.reason for a in answers.values()} == {KeyRefusalReason.POLICY}
    assert all("purpose_not_allowed" in a.refusal.detail for a in answers.values())
    with pytest.raises(KeyReleaseError):
        s.derived()

    # What it is admitted for, its signing purpose, does not open the inbox either.
    s, _ = fetch(world, signer, [("sign", 1)], seed=2)
    (sign_point,) = s.derived().values()
    assert sign_point.key_id == KeyId(owner.app_id(), "sign", 1)
    with pytest.raises(DecryptionError):
        ibe.decrypt(sign_point, mpk, sealed)
    with pytest.raises(DecryptionError):  # nor the same point presented under the inbox's id
        ibe.decrypt(DerivedPoint(inbox, sign_point.point), mpk, sealed)


def test_an_image_whose_policy_lists_the_inbox_reads_it(world) -> None:  # type: ignore[no-untyped-def]
    cores, chain, tee, owner, mpk, releasers = world
    sealed = ibe.encrypt(mpk, ibe.inbox_key_id(owner.app_id()), b"hello inbox", rng=os.urandom)
    reader = releasers(("ibe.app", "sign"))
    s, answers = fetch(world, reader, [("sign", 1), ("ibe.app", 1)], seed=3)
    assert all(isinstance(a, Released) for a in answers.values())
    derived = s.derived()
    assert ibe.decrypt(
        derived[next(p for p in derived if p.purpose == "ibe.app")], mpk, sealed
    ) == (b"hello inbox")


def test_the_inbox_point_is_not_the_app_purposes_point(world) -> None:  # type: ignore[no-untyped-def]
    """An image admitted for the default purpose ``app`` does not get the ``app`` inbox."""
    cores, chain, tee, owner, mpk, releasers = world
    sealed = ibe.encrypt(mpk, ibe.inbox_key_id(owner.app_id()), b"x", rng=os.urandom)
    s, answers = fetch(world, releasers(("app",)), [("app", 1)], seed=4)
    (point,) = s.derived().values()
    with pytest.raises(DecryptionError):
        ibe.decrypt(point, mpk, sealed)
    s, answers = fetch(world, releasers(("app",)), [("ibe.app", 1)], seed=5)
    assert {a.reason for a in answers.values()} == {KeyRefusalReason.POLICY}
