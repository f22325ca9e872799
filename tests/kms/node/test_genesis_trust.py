"""Who chooses the master public key: a genesis certificate is adopted from a peer only
with the endorsements of ``t`` genesis members (or a pinned MPK), never on the word of
the certificate itself; the identity point is never a master public key."""

from __future__ import annotations

import random
from typing import Any

import pytest
from mesh import Mesh, make_nodes

from kms.node.core import (
    GENESIS_ENDORSEMENTS_RUN,
    InputRejected,
    NodeConfig,
    NodeCore,
    Restored,
    StoreRecord,
)
from mpc.cert import (
    ZERO_HASH,
    EpochCertificate,
    EpochTranscript,
    cert_base,
    hash_indices,
    hash_points,
)
from mpc.codec import MessageDecodeError, decode
from mpc.dkg.messages import Participant
from mpc.ids import ParticipantIndex as PI
from mpc.math import G1, G2
from mpc.math.fields import R
from mpc.math.poly import interpolate_at
from mpc.membership.messages import (
    ChainRequest,
    ChainUpdate,
    GenesisEndorsement,
    GenesisEndorsements,
    endorsing_members,
)

DELTA = 0.5
N, T = 4, 3
ATTACKER = PI(4)
HONEST = (PI(1), PI(2), PI(3))


def committee(
    seed: int, extra: dict[int, dict[str, Any]] | None = None
) -> tuple[dict[PI, Any], dict[PI, NodeCore]]:
    nodes = make_nodes(range(1, N + 1), seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, N + 1))
    rng = random.Random(seed)
    cores = {}
    for i in range(1, N + 1):
        cfg = NodeConfig(
            PI(i),
            genesis,
            T,
            genesis_start=1.0,
            delta=DELTA,
            window_period=20.0,
            window_length=2.0,
            **(extra or {}).get(i, {}),
        )
        cores[PI(i)] = NodeCore(cfg, nodes[PI(i)].identity, nodes[PI(i)].dkg_key, rng=rng.randbytes)
    return nodes, cores


def mesh_of(cores: dict[PI, NodeCore], seed: int, route: Any = None) -> Mesh:
    ticks = [k * 0.25 for k in range(int(120 / 0.25) + 1)]
    return Mesh(cores, seed=seed, max_delay=DELTA / 3, ticks=ticks, route=route)


def forged_genesis(genesis: tuple[Participant, ...], *, secret: int | None) -> EpochCertificate:
    """A genesis certificate for a key the forger alone knows (``secret``), signed with
    it: a valid threshold signature under the MPK it names. ``secret=None``: the
    identity point as the MPK, with the identity point as the signature."""
    rnd = random.Random(99)
    if secret is None:
        poly = [G2.identity()] + [rnd.randrange(1, R) * G2.generator() for _ in range(T - 1)]
    else:
        poly = [secret * G2.generator()] + [
            rnd.randrange(1, R) * G2.generator() for _ in range(T - 1)
        ]
    raw = tuple(p.to_bytes() for p in poly)
    tr = EpochTranscript(
        kind="dkg",
        epoch=0,
        attempt=0,
        mpk=raw[0],
        threshold=T,
        committee=genesis,
        qual_hash=hash_indices([int(p.index) for p in genesis]),
        public_polynomial_hash=hash_points(raw),
        admission_policy_hash=ZERO_HASH,
        previous_certificate_hash=ZERO_HASH,
    )
    sig = G1.identity() if secret is None else secret * cert_base(tr.encode())
    return EpochCertificate(tr, raw, sig.to_bytes())


def test_a_corrupt_member_cannot_hand_the_committee_its_own_master_key() -> None:
    """One corrupt genesis member answers every chain request at start-up with a genesis
    certificate for an MPK whose secret only it knows (so it can sign it itself). The
    honest members refuse it, run the real DKG and all end on the real genesis."""
    _nodes, cores = committee(seed=11)
    genesis = cores[PI(1)].config.genesis
    attacker_secret = random.Random(7).randrange(1, R)
    forged = forged_genesis(genesis, secret=attacker_secret)
    update = ChainUpdate(("epoch",), (forged.encode(),)).encode()
    mesh = mesh_of(cores, seed=11)
    # The honest nodes ask everyone for the chain on their first tick: the attacker
    # answers first, and keeps answering.
    for at in (0.01, 0.5, 3.0, 10.0):
        for i in HONEST:
            mesh.inject(ATTACKER, i, update, at)
    mesh.run_until(25.0)
    forged_mpk = attacker_secret * G2.generator()
    for i in HONEST:
        st = cores[i].state
        assert st is not None, f"node {int(i)} has no chain"
        assert st.mpk != forged_mpk, f"node {int(i)} adopted the forged master key"
        assert cores[i].share is not None
    # The real genesis: the honest members' shares reconstruct its key, and every
    # member, the attacker's own node included, holds that chain.
    real = cores[PI(1)].state
    assert real is not None
    shares = [(int(i), cores[i].share.value.value) for i in HONEST]  # type: ignore[union-attr]
    assert interpolate_at(shares) * G2.generator() == real.mpk
    for i in (*HONEST, ATTACKER):
        assert cores[i].chain[0].fingerprint() == cores[PI(1)].chain[0].fingerprint()


def test_the_identity_point_as_master_key_is_refused_by_every_honest_node() -> None:
    """Under the identity point every certificate check passes with the identity
    signature and every app key is a public constant: such a genesis is refused."""
    _nodes, cores = committee(seed=12)
    forged = forged_genesis(cores[PI(1)].config.genesis, secret=None)
    update = ChainUpdate(("epoch",), (forged.encode(),)).encode()
    mesh = mesh_of(cores, seed=12)
    for at in (0.01, 3.0):
        for i in HONEST:
            mesh.inject(ATTACKER, i, update, at)
    mesh.run_until(25.0)
    for i in HONEST:
        st = cores[i].state
        assert st is not None and not st.mpk.is_identity()
        assert cores[i].share is not None
        assert any(isinstance(e, InputRejected) and e.peer == ATTACKER for e in mesh.events[i]), (
            "the forged chain was not refused"
        )


def served_endorsements(core: NodeCore, now: float) -> tuple[GenesisEndorsement, ...]:
    """What ``core`` sends a peer that asks for the chain from genesis."""
    core.messages_to_send()
    # A member asks (a stranger's chain requests are not answered).
    asker = PI(3) if core.me != PI(3) else PI(2)
    core.receive(asker, decode(ChainRequest(0).encode()), now)
    sent = [ob.message for ob in core.messages_to_send() if ob.to == asker]
    bundles = [m for m in sent if isinstance(m, GenesisEndorsements)]
    return bundles[0].endorsements if bundles else ()


def _isolate(node: PI, until: float, *, drop_endorsements: bool = False) -> Any:
    """A route that cuts ``node`` off until ``until`` (it misses genesis), and optionally
    keeps every genesis endorsement from reaching it."""

    def route(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if now < until and node in (sender, to):
            return []
        if drop_endorsements and to == node:
            if isinstance(message, GenesisEndorsement | GenesisEndorsements):
                return []
        return None

    return route


def test_a_member_that_missed_genesis_adopts_it_on_t_endorsements() -> None:
    _nodes, cores = committee(seed=13)
    mesh = mesh_of(cores, seed=13, route=_isolate(PI(3), 22.0))
    mesh.run_until(45.0)
    real = cores[PI(1)].state
    assert real is not None
    late = cores[PI(3)]
    assert late.state is not None, "the member that missed genesis never adopted it"
    assert late.chain[0].fingerprint() == cores[PI(1)].chain[0].fingerprint()
    assert late.share is None  # it missed the run: a refresh gives it a share later
    # The others endorsed what they computed; the late member did not.
    assert sorted(cores[PI(1)]._endorsements) == [1, 2, 4]


def test_without_endorsements_a_member_waits_unless_the_mpk_is_pinned() -> None:
    route = _isolate(PI(3), 22.0, drop_endorsements=True)
    _nodes, cores = committee(seed=13)
    mesh = mesh_of(cores, seed=13, route=route)
    mesh.run_until(45.0)
    real = cores[PI(1)].state
    assert real is not None
    assert cores[PI(3)].state is None, "adopted a genesis nobody endorsed to it"
    # The same run again, with the genesis key pinned in node 3's configuration.
    _nodes, cores = committee(seed=13, extra={3: {"genesis_mpk": real.mpk.to_bytes()}})
    mesh = mesh_of(cores, seed=13, route=route)
    mesh.run_until(45.0)
    st = cores[PI(3)].state
    assert st is not None and st.mpk == real.mpk
    # A pin for another key: the real genesis is refused.
    wrong = (random.Random(5).randrange(1, R) * G2.generator()).to_bytes()
    _nodes, cores = committee(seed=13, extra={3: {"genesis_mpk": wrong}})
    mesh = mesh_of(cores, seed=13, route=_isolate(PI(3), 22.0))
    mesh.run_until(45.0)
    assert cores[PI(3)].state is None


def test_a_restarted_node_serves_the_endorsements_it_persisted() -> None:
    nodes, cores = committee(seed=14)
    mesh = mesh_of(cores, seed=14)
    mesh.run_until(25.0)
    old = cores[PI(2)]
    records: dict[str, bytes] = {}
    for ev in mesh.events[PI(2)]:
        if isinstance(ev, StoreRecord) and ev.run == GENESIS_ENDORSEMENTS_RUN:
            records[ev.key] = ev.data
    assert len(records) >= T
    revived = NodeCore(
        old.config,
        nodes[PI(2)].identity,
        nodes[PI(2)].dkg_key,
        rng=random.Random(3).randbytes,
        restored=Restored(
            chain=tuple(old.chain),
            share=old.share,
            records=lambda run: records if run == GENESIS_ENDORSEMENTS_RUN else {},
        ),
    )
    revived.advance_time(30.0)
    revived.messages_to_send()
    revived.receive(PI(1), decode(ChainRequest(0).encode()), 30.0)
    out = [ob.message for ob in revived.messages_to_send() if ob.to == PI(1)]
    assert isinstance(out[0], GenesisEndorsements) and isinstance(out[1], ChainUpdate)
    genesis = old.chain[0]
    assert isinstance(genesis, EpochCertificate)
    assert len(endorsing_members(genesis.transcript, out[0].endorsements, old.config.genesis)) >= T


def test_identity_master_key_refused_by_client_policy_and_chain() -> None:
    from kms.client.http import KeyClient
    from kms.policy.policy import PolicyStore
    from mpc.cert import IDENTITY_MPK, IdentityMasterKey
    from mpc.errors import LocalProtocolError
    from mpc.membership import ChainError, genesis_state

    with pytest.raises(IdentityMasterKey):
        KeyClient({PI(1): "http://127.0.0.1:9"}, G2.identity())
    with pytest.raises(LocalProtocolError):
        PolicyStore(IDENTITY_MPK)
    _nodes, cores = committee(seed=15)
    forged = forged_genesis(cores[PI(1)].config.genesis, secret=None)
    with pytest.raises(ChainError):
        genesis_state(G2.identity(), forged)
    with pytest.raises(IdentityMasterKey):
        forged.verify(G2.identity())
    with pytest.raises(MessageDecodeError):
        EpochCertificate.decode(forged.encode())
    with pytest.raises(LocalProtocolError):
        NodeConfig(PI(1), cores[PI(1)].config.genesis, T, 1.0, DELTA, genesis_mpk=IDENTITY_MPK)


def test_endorsements_that_arrive_after_the_chain_still_let_a_node_adopt_it() -> None:
    nodes, cores = committee(seed=16)
    mesh = mesh_of(cores, seed=16)
    mesh.run_until(25.0)
    honest = cores[PI(1)]
    assert honest.state is not None
    fresh = NodeCore(
        honest.config, nodes[PI(1)].identity, nodes[PI(1)].dkg_key, rng=random.Random(1).randbytes
    )
    fresh.advance_time(30.0)
    fresh.messages_to_send()
    fresh.events()
    # The real chain, without its endorsements: kept aside, not adopted.
    fresh.receive(PI(2), decode(honest.chain_update(0).encode()), 30.0)
    assert fresh.state is None
    assert any(
        isinstance(e, InputRejected) and "genesis refused" in e.reason for e in fresh.events()
    )
    # t - 1 endorsements are not enough; the t-th one is.
    bundle = served_endorsements(honest, 30.0)
    assert len(bundle) == N
    fresh.receive(PI(2), decode(GenesisEndorsements(bundle[: T - 1]).encode()), 30.1)
    assert fresh.state is None
    fresh.receive(PI(2), decode(GenesisEndorsements(bundle).encode()), 30.2)
    assert fresh.state is not None and fresh.state.mpk == honest.state.mpk
    asked = [ob for ob in fresh.messages_to_send() if isinstance(ob.message, ChainRequest)]
    assert [int(ob.to) for ob in asked] == [2]
