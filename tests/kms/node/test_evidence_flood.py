"""One corrupt member cannot fill an honest node's disk through ``POST /v1/evidence``.

The corrupt member signs, with its own identity, wrong answers to key requests it
made up (junk quote, a fat event log): each is evidence that verifies against the
chain, and each is distinct. The endpoint is unauthenticated. The honest node must
keep a bounded amount of it (one proof convicts), stay out of storage-full mode on a
disk with little room left, and go on answering CVMs. Everything goes through the
node's HTTP app and its store file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kms.app.testing import app_bundle, local_committee  # noqa: E402
from kms.policy import OwnerKey  # noqa: E402
from kms.protocol import (  # noqa: E402
    EphemeralKey,
    KeyRequest,
    KeyRequestBody,
    KeyResponse,
    KeyShareResponse,
    PurposeVersion,
    WrongPartialEvidence,
)
from mpc import hpke  # noqa: E402
from mpc.sig import CTX_KEY_RESPONSE, SigningKey  # noqa: E402


def forged_evidence(identity: SigningKey, index: int, epoch: int, k: int, pad: int) -> bytes:
    """Evidence that member ``index`` signed a wrong partial, minted by that member alone."""
    sk, pk = hpke.derive_key_pair(k.to_bytes(32, "big"))
    pv = PurposeVersion("app", 1)
    body = KeyRequestBody(
        b"\x01" * 20, (pv,), (EphemeralKey(index, pk),), 1_800_000_000 + k, os.urandom(16), 0, epoch
    )
    req = KeyRequest(body, os.urandom(64), os.urandom(pad))  # junk quote, fat event log
    unsigned = KeyShareResponse(
        req.request_hash(), pv, epoch, index, b"\x03" * 32, b"\x04" * 64, b"\x00" * 64
    )
    sig = identity.sign(CTX_KEY_RESPONSE, unsigned.statement())
    share = KeyShareResponse(req.request_hash(), pv, epoch, index, b"\x03" * 32, b"\x04" * 64, sig)
    return WrongPartialEvidence(req, share, sk.private_bytes()).encode()


async def post(http: Any, raw: bytes) -> Any:
    return await http.post("/v1/evidence", content=raw)


def test_a_corrupt_member_cannot_fill_an_honest_disk_with_evidence(tmp_path: Path) -> None:
    owner = OwnerKey.from_seed(bytes([47]) * 32)
    app = owner.app_id()

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            bundle = app_bundle(owner, c.mpk).encode()
            assert (await c.fetch_keys(app, bundle=bundle))[0].done
            corrupt = c.services[1]  # t - 1 = 1 corrupt member
            victim, http = c.services[2], c.clients[2]
            epoch = victim.core.state.epoch
            before = c.store_bytes(2)
            pad, n = 200 * 1024, 12
            ids = set()
            for k in range(n):
                r = await post(http, forged_evidence(corrupt.identity, 1, epoch, k, pad))
                assert r.status_code == 200, r.text  # it does prove node 1 signed a bad partial
                assert r.json()["node"] == 1
                ids.add(r.json()["id"])
            kept = victim.evidence()
            assert 1 <= len(kept) <= 2 and ids == {e["id"] for e in kept}
            # What the node stored does not grow with what the member sends.
            assert c.store_bytes(2) - before < 3 * pad

            # A disk with little room left (~1.6 MiB): the flood goes on and the node runs.
            db = victim.store._conn()  # fault injection on the store's own connection
            pages = int(db.execute("PRAGMA page_count").fetchone()[0])
            db.execute(f"PRAGMA max_page_count = {pages + 400}")
            for k in range(n, n + 20):
                r = await post(http, forged_evidence(corrupt.identity, 1, epoch, k, pad))
                assert r.status_code == 200, r.text
            st = (await http.get("/v1/status")).json()
            assert st["storage"]["full"] is False
            s, answers = await c.fetch_keys(app, bundle=bundle, nodes=[2, 3])
            assert s.done and isinstance(answers[2], KeyResponse)

    trio.run(main)


def test_evidence_beyond_the_log_bound_is_refused_typed_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            victim, http = c.services[3], c.clients[3]
            epoch = victim.core.state.epoch
            victim.evidence_log.max_entries = 2
            for k in range(2):
                r = await post(http, forged_evidence(c.services[1].identity, 1, epoch, k, 64))
                assert r.status_code == 200, r.text
            r = await post(http, forged_evidence(c.services[2].identity, 2, epoch, 9, 64))
            assert r.status_code == 503 and r.json()["reason"] == "evidence-log-full", r.text
            assert len(victim.evidence()) == 2
            text = (await http.get("/metrics")).text
            assert 'reason="evidence: log full"' in text
            assert (await http.get("/v1/status")).json()["storage"]["full"] is False

    trio.run(main)


def test_a_piece_and_its_index_are_written_in_one_transaction(tmp_path: Path) -> None:
    """``NodeStore.set_metas`` (what the evidence log writes with) writes all or nothing."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_disk_full import fill_disk, free_disk

    from kms.app import testing as kt
    from kms.store import NodeStore, StorageFull, TEESealer

    store = NodeStore(tmp_path / "s.db", TEESealer(lambda: kt._SEALER_KEY))
    try:
        store.set_meta("evidence/index", b"[]")
        fill_disk(store)
        with pytest.raises(StorageFull):
            store.set_metas([("evidence/index", b'["x"]'), ("evidence/x", b"\xee" * 100_000)])
        assert store.get_meta("evidence/index") == b"[]"
        assert store.get_meta("evidence/x") is None
        free_disk(store)
        store.set_metas([("evidence/index", b'["x"]'), ("evidence/x", b"\xee" * 100_000)])
        assert store.get_meta("evidence/x") == b"\xee" * 100_000
    finally:
        store.close()
