"""Key release as a CVM gets it from a devnet, in one process.

The devnet of ``kms devnet up`` (five nodes, t = 3, made by ``kms.app.devnet.create``),
each node a real ``NodeService`` built from its ``node.toml`` with its SQLite store
(``service_devnet.ServiceDevnet``), runs its genesis DKG on trio's ``MockClock``; then the
clock runs at wall-clock rate and the library functions the ``kms`` commands call
(``kms.client.http``, ``kms.app.devnet``, ``kms.app.operator``, ``kms.store.audit``) run
in a worker thread, their HTTP carried to the nodes' apps by ``ServiceDevnet.transport``.

``test_key_release_network.py`` keeps what needs node processes: ``kms key get`` itself
and bodies streamed through hypercorn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from devnet_helpers import in_process_devnet
from service_devnet import ServiceDevnet

from kms.app import devnet
from kms.app.audit import fetch_pinned_identity
from kms.app.operator import read_audit
from kms.client import http as client_http
from kms.client.core import KeyReleaseError, KeyRequestSession
from kms.client.http import (
    KeyClient,
    chain_from_bytes,
    fetch_chain,
    fetch_keys,
    get_app_key,
    open_sealed,
    report_evidence,
)
from kms.node.service import share_from_bytes
from kms.protocol import CTX_KEY_RESPONSE, KeyResponse, KeyShareResponse, release_info
from kms.secretfile import write_secret
from kms.store.audit import chain_problems, head_problems
from mpc import hpke, ibe
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership.messages import ChainUpdate
from mpc.sig import SigningKey
from mpc.tkd import derive_partial

Scenario = Callable[["Keys"], Awaitable[None]]


@dataclasses.dataclass
class Keys:
    """A devnet at epoch 0 with its demo app admitted, as ``kms devnet up`` leaves it."""

    net: ServiceDevnet
    transport: httpx.BaseTransport

    @property
    def state(self) -> dict[str, Any]:
        return devnet.read_state(self.net.directory)

    @property
    def mpk(self) -> G2:
        return G2.from_bytes(bytes.fromhex(self.state["master_public_key"]))

    @property
    def app_id(self) -> bytes:
        return bytes.fromhex(self.state["apps"]["demo"])

    def cvm(self, *, rogue: bool = False) -> tuple[dict[ParticipantIndex, str], Any]:
        """``kms key get``'s node URLs and simulated CVM quotes (``devnet.simulated_cvm``)."""
        return devnet.simulated_cvm(self.net.directory, self.state, rogue=rogue)

    def key(self, purpose: str = "app", version: int = 1, *, app: str = "demo") -> Any:
        """What ``kms key get`` runs (``kms.client.http.get_app_key``), cold each time."""
        client_http._HEADS.clear()
        urls, quote = self.cvm()
        app_id = bytes.fromhex(self.state["apps"][app])
        return get_app_key(
            urls, self.mpk, app_id, purpose, version, quote, transport=self.transport
        )

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.net.in_thread(fn, *args)


async def start_keys_devnet(net: ServiceDevnet) -> Keys:
    """Genesis on the mock clock, then wall-clock rate; the demo app admitted at every node
    (``devnet.register_demo_app``, its reload over each node's admin handler)."""
    await net.start()
    sts = await net.wait_for("epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=60)
    mpk = sts[1]["master_public_key"]
    net.real_time()
    app = await net.in_thread(
        lambda: devnet.register_demo_app(net.directory, mpk, admin=net.admin_by_config)
    )
    net.state.update(master_public_key=mpk, apps={"demo": app})
    devnet.write_state(net.directory, net.state)
    return Keys(net, net.transport())


def run(tmp_path: Path, scenario: Scenario, *, nodes: int = 5, threshold: int = 3) -> None:
    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", nodes, threshold, delta=0.3, start_in=5.0, window_period=5.0
        ) as net:
            await scenario(await start_keys_devnet(net))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --- the app key ------------------------------------------------------------------------------


def test_the_cvm_gets_the_same_key_whichever_nodes_answer(tmp_path: Path) -> None:
    async def scenario(k: Keys) -> None:
        first = (await k.run(k.key)).public
        assert first["epoch"] == 0 and len(str(first["fingerprint"])) == 64
        assert len(bytes.fromhex(str(first["secp256k1_public"]))) == 33
        await k.net.stop(1)
        await k.net.stop(2)
        assert (await k.run(k.key)).public == first
        await k.net.start(1, 2)
        other = (await k.run(k.key, "disk", 2)).public
        assert other["fingerprint"] != first["fingerprint"]

    run(tmp_path, scenario)


def test_secret_material_goes_only_to_the_out_file(tmp_path: Path) -> None:
    """``kms key get --json --out FILE``: the secret half goes to a 0600 file, the shown
    half (what ``--json`` prints) holds none of it."""

    async def scenario(k: Keys) -> None:
        res = await k.run(k.key)
        out = tmp_path / "keys.json"
        write_secret(out, json.dumps(res.secret))
        shown = json.dumps(res.public, separators=(",", ":"), sort_keys=True)
        secrets = json.loads(out.read_text())
        assert out.stat().st_mode & 0o777 == 0o600
        assert secrets["app_key"] not in shown and secrets["ed25519_seed"] not in shown

    run(tmp_path, scenario)


def test_a_measurement_outside_the_policy_is_refused_by_every_node(tmp_path: Path) -> None:
    async def scenario(k: Keys) -> None:
        urls, quote = k.cvm(rogue=True)

        def rogue() -> str:
            with pytest.raises(KeyReleaseError) as err:
                get_app_key(urls, k.mpk, k.app_id, "app", 1, quote, transport=k.transport)
            return str(err.value)  # what ``kms key get --json`` prints as "error"

        assert (await k.run(rogue)).count("policy-refused") >= 3

    run(tmp_path, scenario)


def test_encrypt_to_the_app_offline_then_decrypt_inside_the_cvm(tmp_path: Path) -> None:
    async def scenario(k: Keys) -> None:
        plain = b"for the demo app only" * 10
        # Offline (``kms encrypt``): only the master public key and the app id.
        sealed = ibe.encrypt(k.mpk, ibe.inbox_key_id(k.app_id, "app", 1), plain, rng=os.urandom)
        urls, quote = k.cvm()
        opened = await k.run(lambda: open_sealed(urls, k.mpk, sealed, quote, transport=k.transport))
        assert opened == plain
        # An inbox the demo policy does not list (it lists ibe.app): every node refuses it.
        other = ibe.encrypt(k.mpk, ibe.inbox_key_id(k.app_id, "archive", 1), plain, rng=os.urandom)

        def refused() -> str:
            with pytest.raises(KeyReleaseError) as err:
                open_sealed(urls, k.mpk, other, quote, transport=k.transport)
            return str(err.value)  # ``kms decrypt`` fails with it and writes nothing

        assert "policy-refused" in await k.run(refused)

    run(tmp_path, scenario)


# --- audit ---------------------------------------------------------------------------------


def test_the_audit_chain_verifies_and_detects_an_edited_record(tmp_path: Path) -> None:
    """``kms audit verify``'s checks: the whole chain over the admin channel, the public
    signed head; then a record edited on disk breaks the chain."""

    async def scenario(k: Keys) -> None:
        net = k.net
        await k.run(k.key)
        config = net.config_path(1)  # the client asks nodes in index order

        def verify_chain() -> list[str]:
            doc, entries = read_audit(config, admin=net.admin_by_config)
            verify_chain.doc = doc  # type: ignore[attr-defined]
            return chain_problems(entries, doc, None)

        assert await k.run(verify_chain) == []
        doc = verify_chain.doc  # type: ignore[attr-defined]
        assert doc["count"] >= 1
        # The public port serves the signed head, not the log.
        r = await net.get(1, "/v1/audit/head")
        assert r.status_code == 200
        public = r.json()
        assert head_problems(public) == [] and public["head"] == doc["head"]
        # The identity that signed it is the one the chain verified from the key gives node 1.
        urls, _ = k.cvm()
        pinned = await k.run(
            lambda: fetch_pinned_identity(
                urls[ParticipantIndex(1)], k.mpk, 1, transport=k.transport
            )
        )
        assert pinned.identity.hex() == public["identity"] == doc["identity"] and pinned.current
        assert (await net.get(1, "/v1/audit")).status_code == 403
        # Someone with access to the disk edits a record of node 1 (the append-only
        # triggers only guard against the code's own bugs, so they drop them first).
        con = sqlite3.connect(net.store_path(1))
        try:
            triggers = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'"
                )
            ]
            for t in triggers:
                con.execute(f"DROP TRIGGER {t}")
            con.execute(
                'UPDATE audit SET entry = replace(entry, \'"purpose":"app"\', \'"purpose":"xyz"\') WHERE position = (SELECT MIN(position) FROM audit)'
            )
            con.commit()
        finally:
            con.close()
        assert await k.run(verify_chain) != []

    run(tmp_path, scenario)


# --- policies ------------------------------------------------------------------------------


def test_policy_push_is_effective_everywhere_only_when_every_node_acknowledges(
    tmp_path: Path,
) -> None:
    """``kms app create``, ``kms app policy push`` and ``show`` (``kms.app.devnet``)."""

    async def scenario(k: Keys) -> None:
        net, d, t = k.net, k.net.directory, k.transport
        created = await k.run(lambda: devnet.create_app(d, "billing", admin=net.admin_by_config))
        assert created["effective_everywhere"] is True and created["version"] == 1
        got = (await k.run(lambda: k.key(app="billing"))).public
        assert got["app_id"] == created["app_id"]
        app_id = bytes.fromhex(created["app_id"])

        def push() -> dict[str, Any]:
            state = devnet.read_state(d)
            return devnet.push_next_policy(d, state, app_id, "billing", 7 * 86400, transport=t)

        pushed = await k.run(push)
        assert pushed["version"] == 2 and pushed["acknowledged"] == [1, 2, 3, 4, 5]
        await net.stop(5)
        report = await k.run(push)
        assert report["effective_everywhere"] is False  # ``kms app policy push`` exits 1
        assert [entry["index"] for entry in report["lagging"]] == [5]
        await net.start(5)
        shown = await k.run(lambda: devnet.policies_held(devnet.read_state(d), app_id, transport=t))
        assert max(shown["versions"]) == 3

        async def versions(want: dict[int, int]) -> bool:
            held = {}
            for i in want:
                r = await net.get(i, f"/v1/policies/{app_id.hex()}")
                held[i] = r.json().get("version") if r.status_code == 200 else None
            return held == want

        # Node 5 missed version 3; its peers' digests bring it the policy (gossip).
        await net.wait_for("node 5 to catch up", lambda: versions({5: 3}), 60, 0.5)
        # A new version handed to node 1 alone reaches every node.
        bundle = devnet.demo_policy(
            devnet.owner_of(d, "billing"), k.state["master_public_key"], version=4
        )
        r = await net.running[1].client.post(
            "/v1/policies",
            content=bundle.encode(),
            headers={"content-type": "application/msgpack"},
        )
        assert r.json()["accepted"] is True
        await net.wait_for(
            "version 4 everywhere", lambda: versions({i: 4 for i in range(1, 6)}), 60, 0.5
        )

    run(tmp_path, scenario)


# --- bodies, other committees, evidence -----------------------------------------------------


def test_json_bodies_give_the_same_key_as_msgpack(tmp_path: Path) -> None:
    async def scenario(k: Keys) -> None:
        urls, quote = k.cvm()
        app_id, mpk = k.app_id, k.mpk

        def check() -> None:
            want = fetch_keys(urls, mpk, app_id, [("app", 1)], quote, transport=k.transport)
            want_point = want.derived[("app", 1)]
            with httpx.Client(timeout=10, transport=k.transport) as http:
                r = http.get(
                    urls[ParticipantIndex(1)] + "/v1/chain",
                    headers={"accept": "application/json"},
                )
                assert r.headers["content-type"].startswith("application/json")
                chain = chain_from_bytes(ChainUpdate.decode_json(r.content).encode(), mpk)
                s = KeyRequestSession(
                    chain, app_id, [("app", 1)], now=int(time.time()), rng=os.urandom
                )
                body = json.dumps(s.attach_quote(quote(s.report_data)).to_json())
                for i in (1, 2, 3):
                    r = http.post(
                        urls[ParticipantIndex(i)] + "/v1/keys",
                        content=body,
                        headers={"content-type": "application/json"},
                    )
                    assert r.status_code == 200
                    assert r.headers["content-type"].startswith("application/json")
                    s.receive(ParticipantIndex(i), KeyResponse.decode_json(r.content))
                assert s.done and s.derived()[s.purposes[0]] == want_point
                # Malformed JSON is refused with a reason, deep nesting before parsing;
                # both counted.
                url = urls[ParticipantIndex(2)]
                for bad in ("{", '{"@type": "kms/key-request"}', "[" * 100_000):
                    r = http.post(
                        url + "/v1/keys", content=bad, headers={"content-type": "application/json"}
                    )
                    assert r.status_code == 400 and r.json()["reason"] == "malformed-request"
                assert http.get(url + "/health").status_code == 200
                metrics = http.get(url + "/metrics").text
                assert 'key request: malformed-request"} 3' in metrics

        await k.run(check)

    run(tmp_path, scenario)


@pytest.mark.slow
@pytest.mark.parallel
def test_a_node_of_another_committee_is_ignored_and_reported(tmp_path: Path) -> None:
    """A node serving another master public key (a second in-process devnet) sits among
    the URLs in node 2's place. Two geneses: long, but computing only (``parallel``)."""

    async def main() -> None:
        async with (
            in_process_devnet(
                tmp_path / "devnet", 5, 3, delta=0.3, start_in=5.0, window_period=5.0
            ) as net,
            in_process_devnet(
                tmp_path / "other", 3, 2, delta=0.3, start_in=5.0, window_period=5.0
            ) as other,
        ):
            await other.start()
            await other.wait_for(
                "the other committee's epoch 0",
                lambda: other.converged(other.indices, epoch=0),
                timeout=60,
            )
            k = await start_keys_devnet(net)
            both = _Both(k.transport, other.transport())
            urls, quote = k.cvm()
            impostor = str(other.entry(1)["http_url"])
            urls[ParticipantIndex(2)] = impostor  # node 2's URL now leads to the other committee

            def fetch(urls: dict[ParticipantIndex, str]) -> Any:
                with KeyClient(urls, k.mpk, transport=both) as client:
                    return client.fetch(k.app_id, [("app", 1)], quote)

            res = await k.run(fetch, urls)
            assert any(impostor in line and "ChainError" in line for line in res.ignored_nodes)
            # Its chain does not verify under the pinned key, so it is never asked for a
            # partial: the nodes of the real committee serve the key.
            assert ParticipantIndex(2) not in res.asked and not res.refusals, (
                res.asked,
                res.refusals,
            )
            honest, _ = k.cvm()
            assert (await k.run(fetch, honest)).derived == res.derived

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class _Both(httpx.BaseTransport):
    """Requests to either of two in-process devnets' nodes."""

    def __init__(self, a: httpx.BaseTransport, b: httpx.BaseTransport) -> None:
        self.a, self.b = a, b

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        first = self.a.net.index_of_url(origin) is not None  # type: ignore[attr-defined]
        return (self.a if first else self.b).handle_request(request)


def test_a_cvm_discloses_a_wrong_partial_and_the_other_nodes_keep_the_evidence(
    tmp_path: Path,
) -> None:
    """Node 2 turns liar (its identity and node 4's share read from their stores); the CVM
    proves it to the rest, and ``kms member evidence`` at node 1 lists it."""

    async def scenario(k: Keys) -> None:
        net = k.net
        urls, quote = k.cvm()
        mpk, app_id = k.mpk, k.app_id
        ident = net.running[2].store.load_identity()
        other = net.running[4].store.current_epoch()
        assert ident is not None and other is not None and other.share
        liar_key = SigningKey.from_seed(ident[0])
        wrong = share_from_bytes(other.share)  # node 4's share, presented as node 2's

        def disclose() -> Any:
            chain, _ = fetch_chain(list(urls.values()), mpk, transport=k.transport)
            session = KeyRequestSession(
                chain, app_id, [("app", 1)], now=int(time.time()), rng=os.urandom
            )
            request = session.attach_quote(quote(session.report_data))
            pv, rh = request.body.purposes[0], request.request_hash()
            info = release_info(rh, pv, chain.epoch, 2)
            eph = request.body.ephemeral_key(2)
            assert eph is not None
            partial = derive_partial(
                type(wrong)(ParticipantIndex(2), wrong.value), pv.key_id(app_id)
            )
            enc, ct = hpke.seal(eph, info, info, partial.to_bytes(), rng=os.urandom)
            unsigned = KeyShareResponse(rh, pv, chain.epoch, 2, enc, ct, bytes(64))
            signed = KeyShareResponse(
                rh,
                pv,
                chain.epoch,
                2,
                enc,
                ct,
                liar_key.sign(CTX_KEY_RESPONSE, unsigned.statement()),
            )
            session.receive(ParticipantIndex(2), KeyResponse((signed,)))
            with httpx.Client(timeout=10, transport=k.transport) as http:
                for i in (1, 3):  # honest answers, over HTTP; the lie shows when t are in
                    r = http.post(urls[ParticipantIndex(i)] + "/v1/keys", content=request.encode())
                    session.receive(ParticipantIndex(i), KeyResponse.decode(r.content))
            assert session.bad_nodes() == [ParticipantIndex(2)]
            evidence = session.rejected[0].evidence
            assert evidence is not None
            return evidence, report_evidence(urls, evidence, transport=k.transport)

        evidence, replies = await k.run(disclose)
        assert sorted(replies) == [1, 3, 4, 5]
        assert all(x["accepted"] is True and x["node"] == 2 for x in replies.values()), replies
        # ``kms member evidence --config node-1``: the admin channel's "evidence".
        listed = net.admin(1, {"op": "evidence"})
        assert listed["ok"] is True
        entries = listed["evidence"]
        assert any(e["culprit"] == 2 and e["kind"] == "wrong-partial" for e in entries), listed
        # Evidence whose disclosed key is not the one the request bound proves nothing.
        forged = dataclasses.replace(evidence, ephemeral_private=bytes(range(32)))
        client = net.running[1].client
        r = await client.post("/v1/evidence", content=forged.encode())
        assert r.status_code == 409 and r.json()["reason"] == "does-not-verify"
        r = await client.post("/v1/evidence", content=b"junk")
        assert r.status_code == 400 and r.json()["reason"] == "malformed"

    run(tmp_path, scenario)


# --- collateral ------------------------------------------------------------------------------


def test_devnet_nodes_take_collateral_from_the_devnets_pccs_and_cache_it(tmp_path: Path) -> None:
    """The devnet's PCCS (``devnet.start_pccs``, as ``kms devnet up`` serves it, on a
    loopback port): every asked node fetched the collateral from it and cached it."""

    async def main() -> None:
        port = devnet.free_port()
        pccs_url = f"http://127.0.0.1:{port}"
        async with in_process_devnet(
            tmp_path / "devnet", 5, 3, delta=0.3, start_in=5.0, window_period=5.0, pccs_url=pccs_url
        ) as net:
            server = devnet.start_pccs(net.directory, port)
            try:
                k = await start_keys_devnet(net)
                await k.run(k.key)  # every asked node has needed collateral by now
                state = k.state
                assert state["pccs_url"] == pccs_url
                for n in state["nodes"][:3]:
                    st = await net.status(int(n["index"]))
                    assert st is not None and st["collateral"] == f"pccs {pccs_url}, file"
                    cached = list((Path(n["config"]).parent / "collateral").glob("*.json"))
                    assert [c.name for c in cached] == ["53494D544545-platform.json"]
            finally:
                await trio.to_thread.run_sync(server.stop)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# --- paused nodes -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cold_cvm_is_not_held_up_by_two_paused_nodes(tmp_path: Path) -> None:
    """Nodes 1 and 2 paused (their HTTP apps take requests and answer none, as a
    SIGSTOPped process's socket does): a cold client hedges its chain fetch and its
    partials. A cold ``fetch_keys`` takes at most 1.5 s; a cold ``get_app_key`` (what
    ``kms key get`` runs) at most 1 s more than with every node up, or 1.5 s.

    Slow (not ``parallel``): it keeps wall-clock deadlines, so it runs in the serial phase."""

    async def scenario(k: Keys) -> None:
        urls, quote = k.cvm()

        def cold() -> tuple[float, bytes]:
            client_http._HEADS.clear()  # cold: no verified head cached in this process
            start = time.monotonic()
            res = fetch_keys(urls, k.mpk, k.app_id, [("app", 1)], quote, transport=k.transport)
            return time.monotonic() - start, res.derived[("app", 1)].point.to_bytes()

        def timed_key(runs: int = 2) -> tuple[float, dict[str, Any]]:
            best, out = float("inf"), {}
            for _ in range(runs):
                start = time.monotonic()
                out = k.key().public
                best = min(best, time.monotonic() - start)
            return best, out

        _, expected = await k.run(cold)
        baseline, first = await k.run(timed_key)
        k.net.pause(1)
        k.net.pause(2)  # the lowest indices: the ones a client asks first
        try:
            in_process, derived = await k.run(cold)
            cli, again = await k.run(timed_key)
        finally:
            k.net.resume(1)
            k.net.resume(2)
        print(
            f"cold fetch {in_process:.2f} s; get_app_key {cli:.2f} s paused, {baseline:.2f} s not"
        )
        assert derived == expected and again["fingerprint"] == first["fingerprint"]
        assert in_process <= 1.5, f"a cold fetch took {in_process:.2f} s with 2 nodes paused"
        assert cli <= max(1.5, baseline + 1.0), (
            f"a cold get_app_key took {cli:.2f} s with 2 nodes paused ({baseline:.2f} s without)"
        )

    run(tmp_path, scenario)
