"""Upgrading nodes whose stores were written by the code at ``e1d36d0``.

``data/e1d36d0/`` comes from a devnet of that code (``data/e1d36d0/generate.py``):
nodes 1 and 2 of a 3-node, threshold-2 committee after a genesis DKG, an owner
rotation of the ``demo`` app (policy version 2 signed by the second owner), key
fetches in epochs 0 and 1, and a refresh while node 3 was down (so both keep
their epoch-0 share as retained). ``keys.json`` holds the app keys the old
committee released. ``tests/net/data/e1d36d0-frames.json`` holds frames node 2
sent in that run.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from kms.api.http import make_app
from kms.app import devnet
from kms.app.config import load
from kms.app.setup import make_collateral, make_releaser, open_store
from kms.app.testing import SettableClock
from kms.client.core import KeyRequestSession
from kms.node.service import NodeService, share_to_bytes
from kms.policy import RotationRecord
from kms.protocol import KeyRefusal, KeyResponse
from kms.store import SCHEMA_VERSION
from mpc.codec import decode
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import verify_chain
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519

FIXTURE = Path(__file__).parent / "data" / "e1d36d0"
RECORDED = json.loads((FIXTURE / "keys.json").read_text())
FRAMES = json.loads(
    (Path(__file__).parents[2] / "net" / "data" / "e1d36d0-frames.json").read_text()
)
NOW = int(RECORDED["time"])
"""When the old devnet stopped: the nodes' clock in these tests."""
APP_ID = bytes.fromhex(RECORDED["app_id"])


def devnet_copy(tmp_path: Path) -> Path:
    """The fixture as an operator would have it: a devnet directory, passphrases 0600.

    ``node.toml`` names the simulated TEE's files by the absolute path the old devnet
    had; they are pointed at the copy (moving a node's directory, nothing else).
    """
    dst = tmp_path / "devnet"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for i in (1, 2):
        node = dst / f"node-{i}"
        (node / "passphrase").chmod(0o600)
        toml = node / "node.toml"
        old = tomllib.loads(toml.read_text())["node"]["simulated_tee"]
        toml.write_text(toml.read_text().replace(old, str(dst)))
    return dst


def raw_meta(path: Path, name: str, *, immutable: bool = False) -> bytes | None:
    # immutable: reading the committed fixture must not leave -wal/-shm files next to it
    uri = f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")
    with closing(sqlite3.connect(uri, uri=True)) as db:
        row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else bytes(row[0])


def test_the_fixture_was_written_with_schema_1(tmp_path: Path) -> None:
    for i in (1, 2):
        assert raw_meta(FIXTURE / f"node-{i}" / "node.db", "schema_version", immutable=True) == b"1"


@pytest.mark.parametrize("index", [1, 2])
def test_an_e1d36d0_store_opens_migrates_and_keeps_its_state(tmp_path: Path, index: int) -> None:
    root = devnet_copy(tmp_path)
    cfg = load(root / f"node-{index}" / "node.toml")
    with open_store(cfg) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        # Identity: the participant record in the genesis section is this store's key.
        ident = store.load_identity()
        assert ident is not None
        genesis = {int(p.index): p for p in cfg.protocol.genesis}
        assert peer_id_from_ed25519(genesis[index].identity) == peer_id_from_ed25519(
            _identity_public(ident[0])
        )
        # The certified epoch with a share, and the retained share of epoch 0.
        current = store.current_epoch()
        assert current is not None and current.epoch == 1 and current.share is not None
        assert store.retained_shares() == [0]
        assert store.retained_share(0) != current.share
        assert [(kind, epoch) for kind, epoch, _ in store.chain()] == [
            ("epoch", 0),
            ("membership", 0),
            ("epoch", 1),
        ]
        # The audit log: one record per purpose per fetch (app and disk, in epochs 0 and 1).
        store.audit_verify()
        entries = store.audit_entries(0, 100)
        assert len(entries) == 4
        assert {json.loads(e.entry)["app"] for e in entries} == {RECORDED["app_id"]}
        assert store.apps() == []  # the apps table is new: filled from the policies directory
    assert raw_meta(cfg.store, "schema_version") == str(SCHEMA_VERSION).encode()
    with open_store(cfg) as store:  # migrated once: opening again changes nothing
        assert store.schema_version == SCHEMA_VERSION


def _identity_public(seed: bytes) -> bytes:
    from mpc.sig import SigningKey

    return SigningKey.from_seed(seed).verify_key().to_bytes()


Nodes = dict[int, tuple[NodeService, httpx.AsyncClient]]


@asynccontextmanager
async def upgraded_nodes(
    root: Path, indices: tuple[int, ...] = (1, 2)
) -> AsyncIterator[tuple[Nodes, MemoryNetwork]]:
    """Nodes started by today's code from the migrated e1d36d0 directories, as
    ``kms node run`` builds them, on a memory network, with the clock of the old run."""
    network = MemoryNetwork()
    clock = SettableClock(float(NOW))
    nodes: Nodes = {}
    stores = []
    transports = []
    async with trio.open_nursery() as nursery:
        for i in indices:
            cfg = load(root / f"node-{i}" / "node.toml")
            store = open_store(cfg)
            stores.append(store)
            ident = store.load_identity()
            assert ident is not None
            transport = MemoryTransport(network, peer_id_from_ed25519(_identity_public(ident[0])))
            await transport.__aenter__()
            transports.append(transport)
            service = NodeService(cfg.protocol, store, transport, {}, clock=clock)
            service.collateral = make_collateral(cfg)
            service.releaser = make_releaser(cfg, service)
            service.policy_sync_interval = 3600.0
            await nursery.start(service.run)
            app: Any = make_app(service)
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=f"http://node-{i}"
            )
            nodes[i] = (service, client)
        try:
            yield nodes, network
        finally:
            for _, client in nodes.values():
                await client.aclose()
            nursery.cancel_scope.cancel()
    for transport in transports:
        await transport.__aexit__(None, None, None)
    for store in stores:
        store.close()


def test_after_migration_the_nodes_serve_the_same_keys(tmp_path: Path) -> None:
    trio.run(_after_migration_the_nodes_serve_the_same_keys, tmp_path)


async def _after_migration_the_nodes_serve_the_same_keys(tmp_path: Path) -> None:
    root = devnet_copy(tmp_path)
    mpk = G2.from_bytes(bytes.fromhex(RECORDED["master_public_key"]))
    async with upgraded_nodes(root) as (nodes, _network):
        one = nodes[1][0]
        st = one.core.state
        assert st is not None and st.epoch == 1 and st.mpk == mpk
        assert one.core.share is not None
        assert one.core.retained_epochs == [0]  # the old share is still kept
        # The owner rotation survived: the app is admitted from the policies directory
        # with its rotation record, at the version the second owner signed.
        for service, _ in nodes.values():
            assert service.policies is not None
            service.policies.ready(NOW)
            (app,) = service.store.apps()
            assert app.app_id == APP_ID and app.version_floor == 2
            assert app.admitted_by == "operator" and not app.frozen
            record = decode(app.rotations[0][1])
            assert isinstance(record, RotationRecord)
            assert record.encode().hex() == RECORDED["owner_rotation"]["rotation_record"]
        # The devnet's demo CVM asks both nodes for the keys it got from the old code.
        chain = verify_chain(one.core.chain, mpk=mpk)
        purposes = [("app", 1), ("disk", 1)]
        session = KeyRequestSession(chain, APP_ID, purposes, now=NOW, rng=os.urandom)
        quote = devnet.simulated_tee(root).quote(session.report_data, **devnet.DEMO_MEASUREMENT)
        request = session.attach_quote(quote)
        for i, (_, client) in nodes.items():
            r = await client.post(
                "/v1/keys",
                content=request.encode(),
                headers={"content-type": "application/msgpack"},
            )
            answer = decode(r.content)
            assert isinstance(answer, KeyResponse), answer
            session.receive(ParticipantIndex(i), answer)
        assert session.epoch_used() == 1
        got = {p.purpose: d.app_key().secret.data.hex() for p, d in session.derived().items()}
    want = {k["purpose"]: k["app_key"] for k in RECORDED["keys"]}
    assert got == want


def test_an_old_version_peer_is_refused_without_a_crash_or_a_fork(tmp_path: Path) -> None:
    trio.run(_an_old_version_peer_is_refused_without_a_crash_or_a_fork, tmp_path)


async def _an_old_version_peer_is_refused_without_a_crash_or_a_fork(tmp_path: Path) -> None:
    """Node 2 still runs e1d36d0 and sends what it sent then, over the network, to
    node 1, which runs today's code."""
    root = devnet_copy(tmp_path)
    async with upgraded_nodes(root, (1,)) as (nodes, network):
        one, _ = nodes[1]
        two_peer = one.peer_of(ParticipantIndex(2))
        assert two_peer is not None
        st = one.core.state
        assert st is not None and one.core.share is not None
        before = (st.epoch, st.mpk, share_to_bytes(one.core.share), list(one.store.chain()))
        audit_before = one.store.audit_head()
        assert {f["sender"] for f in FRAMES} == {2}
        async with MemoryTransport(network, two_peer) as old_node:
            for f in FRAMES:
                await old_node.send(one.transport.local_peer, bytes.fromhex(f["frame"]))
            with trio.fail_after(10):
                while sum(one.metrics.rejected.values()) < len(FRAMES):
                    await trio.sleep(0.01)
            await trio.sleep(0.1)  # nothing else arrives, nothing else happens
        assert one.metrics.rejected == {"envelope: unknown-version": len(FRAMES)}
        assert sum(one.metrics.messages_in.values()) == 0
        st = one.core.state
        assert st is not None and one.core.share is not None
        after = (st.epoch, st.mpk, share_to_bytes(one.core.share), list(one.store.chain()))
        assert after == before
        assert one.store.audit_head() == audit_before
        assert one.core.status().running is None


def test_a_measurement_the_migrated_policy_does_not_admit_is_refused(tmp_path: Path) -> None:
    trio.run(_a_measurement_the_migrated_policy_does_not_admit_is_refused, tmp_path)


async def _a_measurement_the_migrated_policy_does_not_admit_is_refused(tmp_path: Path) -> None:
    """A CVM measurement the migrated policy does not admit gets a refusal, not keys."""
    root = devnet_copy(tmp_path)
    mpk = G2.from_bytes(bytes.fromhex(RECORDED["master_public_key"]))
    async with upgraded_nodes(root) as (nodes, _network):
        one, client = nodes[1]
        chain = verify_chain(one.core.chain, mpk=mpk)
        session = KeyRequestSession(chain, APP_ID, [("app", 1)], now=NOW, rng=os.urandom)
        quote = devnet.simulated_tee(root).quote(session.report_data, **devnet.ROGUE_MEASUREMENT)
        r = await client.post(
            "/v1/keys",
            content=session.attach_quote(quote).encode(),
            headers={"content-type": "application/msgpack"},
        )
        assert isinstance(decode(r.content), KeyRefusal)
