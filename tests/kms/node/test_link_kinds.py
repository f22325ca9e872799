"""Typed chain links at the node: ``chain/update`` frames and the stored chain.

A link's kind (``LinkKind``) says which certificate its bytes must be; a frame
whose kind names no link kind, or whose bytes are the other kind of
certificate, is refused as a whole (``InputRejected``, nothing adopted), and
the node's own chain goes out with the kind of each link.
"""

from __future__ import annotations

import random

import msgpack
import pytest
from mesh import Mesh, make_nodes

from kms.node.core import InputRejected, NodeConfig, NodeCore
from mpc.cert import EpochCertificate, RunKind
from mpc.codec import MessageDecodeError
from mpc.ids import ParticipantIndex as PI
from mpc.membership import LinkKind, MembershipCertificate, decode_link, link_kind
from mpc.membership.messages import ChainUpdate
from net.codec import ENVELOPE_VERSION, Envelope, encode_envelope, open_envelope

DELTA = 0.5


def _genesis_cores(seed: int) -> tuple[Mesh, dict[PI, NodeCore]]:
    nodes = make_nodes(range(1, 4), seed)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, 4))
    rng = random.Random(seed)
    cores = {}
    for i in range(1, 4):
        cfg = NodeConfig(
            PI(i), genesis, 2, genesis_start=1.0, delta=DELTA, window_period=20.0, window_length=2.0
        )
        cores[PI(i)] = NodeCore(cfg, nodes[PI(i)].identity, nodes[PI(i)].dkg_key, rng=rng.randbytes)
    ticks = [k * 0.25 for k in range(400)]
    mesh = Mesh(cores, seed=seed, max_delay=DELTA / 3, ticks=ticks)
    mesh.run_until(19.0)
    return mesh, cores


def _frame(kinds: list[object], links: list[bytes]) -> bytes:
    payload = bytes(msgpack.packb(["chain/update", 1, kinds, links], use_bin_type=True))
    return encode_envelope(Envelope(ENVELOPE_VERSION, "chain/update", 0, 2, payload))


def test_a_chain_update_of_typed_links_round_trips_through_a_frame() -> None:
    _, cores = _genesis_cores(seed=11)
    genesis = cores[PI(1)].chain[0]
    assert isinstance(genesis, EpochCertificate) and genesis.transcript.kind is RunKind.DKG
    update = ChainUpdate.of([genesis])
    assert update.kinds == (LinkKind.EPOCH,)
    _, got = open_envelope(_frame(["epoch"], [genesis.encode()]))
    assert got == update
    assert isinstance(got, ChainUpdate) and got.kinds[0] is LinkKind.EPOCH
    assert got.decoded_links() == [genesis]
    served = cores[PI(1)].chain_update(0)
    assert served.kinds and all(type(k) is LinkKind for k in served.kinds)
    assert [link_kind(x) for x in served.decoded_links()] == list(served.kinds)


@pytest.mark.parametrize("kind", ["genesis", "EPOCH", "", b"epoch", 0, None])
def test_a_frame_whose_link_kind_names_no_kind_is_refused(kind: object) -> None:
    _, cores = _genesis_cores(seed=12)
    genesis = cores[PI(1)].chain[0]
    with pytest.raises(MessageDecodeError):
        open_envelope(_frame([kind], [genesis.encode()]))


def test_a_link_of_the_other_kind_is_rejected_and_nothing_is_adopted() -> None:
    _, cores = _genesis_cores(seed=13)
    core = cores[PI(1)]
    genesis = core.chain[0]
    before = core.status()
    core.events()
    # An epoch certificate labelled a membership certificate, and an unknown kind
    # smuggled past decoding (a value built in-process, not read off the wire).
    core.receive(PI(2), ChainUpdate((LinkKind.MEMBERSHIP,), (genesis.encode(),)), 19.5)
    core.receive(PI(3), ChainUpdate(("genesis",), (genesis.encode(),)), 19.5)  # type: ignore[arg-type]
    rejected = [e for e in core.events() if isinstance(e, InputRejected)]
    assert {e.peer for e in rejected} == {PI(2), PI(3)}
    assert core.status() == before


def test_decode_link_decodes_exactly_the_kind_named() -> None:
    _, cores = _genesis_cores(seed=14)
    genesis = cores[PI(1)].chain[0]
    assert decode_link(LinkKind.EPOCH, genesis.encode()) == genesis
    assert decode_link("epoch", genesis.encode()) == genesis  # a store row's column
    assert link_kind(genesis) is LinkKind.EPOCH
    for kind in (LinkKind.MEMBERSHIP, "membership", "genesis"):
        with pytest.raises(MessageDecodeError):
            decode_link(kind, genesis.encode())
    assert not isinstance(decode_link(LinkKind.EPOCH, genesis.encode()), MembershipCertificate)
