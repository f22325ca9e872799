"""Chain links kept in SQLite by older code decode to typed links.

The store's ``chain.kind`` column holds the string value of a ``LinkKind``;
the rows written by the code at ``e1d36d0`` (``data/e1d36d0/``) decode with
``decode_link`` to exactly the certificate each names, and the node's loader
gives back the same chain.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_upgrade_e1d36d0 import devnet_copy, load, open_store  # the node's config and store

from kms.node.service import load_chain
from mpc.cert import EpochCertificate, RunKind
from mpc.codec import MessageDecodeError
from mpc.math import G2
from mpc.membership import LinkKind, decode_link, link_epoch, link_kind, verify_chain


@pytest.mark.parametrize("index", [1, 2])
def test_links_an_e1d36d0_store_kept_decode_to_typed_links(tmp_path: Path, index: int) -> None:
    root = devnet_copy(tmp_path)
    cfg = load(root / f"node-{index}" / "node.toml")
    with open_store(cfg) as store:
        rows = store.chain()
        links = load_chain(store)
    assert [(LinkKind(kind), epoch) for kind, epoch, _ in rows] == [
        (LinkKind.EPOCH, 0),
        (LinkKind.MEMBERSHIP, 0),
        (LinkKind.EPOCH, 1),
    ]
    for (kind, epoch, data), link in zip(rows, links, strict=True):
        assert decode_link(kind, data) == link
        assert link_kind(link) is LinkKind(kind) and link_epoch(link) == epoch
        assert link.encode() == data  # decoding and re-encoding changes no stored byte
        other = LinkKind.MEMBERSHIP if kind == LinkKind.EPOCH else LinkKind.EPOCH
        with pytest.raises(MessageDecodeError):
            decode_link(other, data)
    genesis, _, reshare = links
    assert isinstance(genesis, EpochCertificate) and genesis.transcript.kind is RunKind.DKG
    assert isinstance(reshare, EpochCertificate) and reshare.transcript.kind is RunKind.RESHARE
    mpk = G2.from_bytes(genesis.transcript.mpk)
    assert verify_chain(links, mpk=mpk).epoch == 1
