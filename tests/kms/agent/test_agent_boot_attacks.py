"""Attacks on the agent's boot (kms/agent/runtime.py), run as the attacker runs them: the
host that delivers the env file, ONE corrupt committee member (t-1 = 1 of n = 3, t = 2)
with the two honest members up, a thief holding a rotated-away owner key, a second agent
on the same socket path. Each test asserts the attack now FAILS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import trio
from agentboot import APP, OWNER, PURPOSES, Lying, admit, boot_in_thread, patch_clock
from typer.testing import CliRunner

from kms.agent.envfile import SignedEnv
from kms.agent.runtime import AgentError, current_policy
from kms.app import testing
from kms.cli import app as cli
from kms.policy import OwnerChain, OwnerKey, Pins
from kms.policy.policy import MinKeyVersion
from mpc import ibe
from mpc.math import G2

URLS = ["http://node-1", "http://node-2", "http://node-3"]


def _honest(_: httpx.Request) -> None:
    return None


def _seal(mpk: bytes, plain: bytes) -> bytes:
    return ibe.encrypt(G2.from_bytes(mpk), ibe.inbox_key_id(APP, "env", 1), plain, rng=os.urandom)


# --- 1. the host forges the env file -------------------------------------------------------


def _boot_with_env(c, tmp_path, monkeypatch, data: bytes):
    env_file = tmp_path / "encrypted-env"
    env_file.write_bytes(data)
    return boot_in_thread(
        c,
        monkeypatch,
        URLS,
        Lying(c.blocking_transport(), _honest),
        env_file=env_file,
        env_out=tmp_path / "env",
    )


def test_the_host_cannot_forge_the_apps_env_with_public_values(tmp_path, monkeypatch):
    """The host knows the MPK and the app id: it seals its own env to the inbox, bare or
    wrapped and signed by a key of its own. The agent refuses both, writes nothing; the
    owner's own signed file opens."""
    patch_clock(monkeypatch)
    thief = OwnerKey.from_seed(bytes([0x99]) * 32)

    async def main():
        async with testing.local_committee(tmp_path, n=3, threshold=2) as c:
            await admit(c, tmp_path, testing.app_bundle(OWNER, c.mpk, purposes=PURPOSES))
            forged_plain = b"ENV_VERSION=999999\nPAYOUT=0xATTACKER\n"
            forged = _seal(c.mpk, forged_plain)
            with pytest.raises(AgentError) as bare:
                await _boot_with_env(c, tmp_path, monkeypatch, forged)
            assert "owner-signed" in str(bare.value)
            own_key = SignedEnv.sign(thief, APP, forged)
            with pytest.raises(AgentError) as signed:
                await _boot_with_env(c, tmp_path, monkeypatch, own_key.encode())
            assert "current owner key" in str(signed.value)
            # The owner's signature moved onto another ciphertext does not verify.
            genuine = SignedEnv.sign(OWNER, APP, _seal(c.mpk, b"ENV_VERSION=7\n"))
            moved = SignedEnv(APP, forged, genuine.owner_key, genuine.signature)
            with pytest.raises(AgentError) as swapped:
                await _boot_with_env(c, tmp_path, monkeypatch, moved.encode())
            assert "does not verify" in str(swapped.value)
            assert not (tmp_path / "env").exists()
            _, env, _ = await _boot_with_env(c, tmp_path, monkeypatch, genuine.encode())
            assert env == b"ENV_VERSION=7\n"

    trio.run(main)


def test_an_env_signed_by_a_rotated_away_owner_key_is_refused(tmp_path, monkeypatch):
    patch_clock(monkeypatch)
    new_owner = OwnerKey.from_seed(bytes([0x43]) * 32)
    rot = OWNER.rotate(OwnerChain.genesis(OWNER.public_bytes()), new_owner.public_bytes())

    async def main():
        async with testing.local_committee(tmp_path, n=3, threshold=2) as c:
            current = testing.app_bundle(
                new_owner, c.mpk, version=2, purposes=PURPOSES, rotations=(rot,)
            )
            await admit(c, tmp_path, current)
            stale = SignedEnv.sign(OWNER, APP, _seal(c.mpk, b"PAYOUT=0xTHIEF\n"))
            with pytest.raises(AgentError, match="current owner key"):
                await _boot_with_env(c, tmp_path, monkeypatch, stale.encode())
            fresh = SignedEnv.sign(new_owner, APP, _seal(c.mpk, b"PAYOUT=0xOWNER\n"))
            _, env, _ = await _boot_with_env(c, tmp_path, monkeypatch, fresh.encode())
            assert env == b"PAYOUT=0xOWNER\n"

    trio.run(main)


def test_env_encrypt_signs_with_the_owner_key_and_refuses_bad_app_ids(tmp_path):
    owner_file = tmp_path / "app.owner"
    owner_file.write_text(bytes([0x42]).hex() * 32 + "\n")
    (tmp_path / "in").write_bytes(b"A=1\n")
    mpk = _some_mpk()
    runner = CliRunner()
    base = ["env", "encrypt", "--mpk", mpk.hex(), "--owner-key", str(owner_file)]
    for bad in (APP.hex()[:-2], APP.hex() + "00", "zz"):
        r = runner.invoke(cli, [*base, "--app", bad, str(tmp_path / "in"), str(tmp_path / "o")])
        assert r.exit_code != 0 and "20 bytes" in r.output, r.output
    other = OwnerKey.from_seed(bytes([7]) * 32).app_id().hex()
    r = runner.invoke(cli, [*base, "--app", other, str(tmp_path / "in"), str(tmp_path / "o")])
    assert r.exit_code != 0 and not (tmp_path / "o").exists()
    r = runner.invoke(cli, [*base, "--app", APP.hex(), str(tmp_path / "in"), str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    signed = SignedEnv.decode((tmp_path / "o").read_bytes())
    assert signed.opened_by(APP, OWNER.public_bytes()) == signed.sealed


def _some_mpk() -> bytes:
    return (12345 * G2.generator()).to_bytes()


# --- 2. a corrupt member claims an honest member's index -----------------------------------


def test_a_corrupt_member_cannot_hide_an_honest_one_by_claiming_its_index(tmp_path, monkeypatch):
    """Node 1 says it is node 2 in its unauthenticated /v1/status: node 2 is still asked
    (every claimant of an index is tried) and the agent boots."""
    patch_clock(monkeypatch)

    def corrupt(req: httpx.Request):
        if req.url.host == "node-1" and req.url.path == "/v1/status":
            return httpx.Response(200, json={"index": 2})
        return None

    async def main():
        async with testing.local_committee(tmp_path, n=3, threshold=2) as c:
            await admit(c, tmp_path, testing.app_bundle(OWNER, c.mpk, purposes=PURPOSES))
            keys, _, _ = await boot_in_thread(
                c, monkeypatch, URLS, Lying(c.blocking_transport(), corrupt)
            )
            assert keys.app_id == APP and keys.root_version == 1

    trio.run(main)


# --- 3. a corrupt member trickles or inflates its answers ----------------------------------


def _trickle_server(seconds: float) -> tuple[socket.socket, threading.Thread]:
    """An HTTP server answering each request with a chunked body, one whitespace byte
    every 2 s for ``seconds`` (each read well inside httpx's 5 s read timeout)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def one(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    conn.sendall(b"1\r\n \r\n")
                    time.sleep(2.0)
                conn.sendall(b"2\r\n{}\r\n0\r\n\r\n")
            except OSError:
                pass

    def run() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return srv, th


STALL = 40.0


def test_a_trickling_member_does_not_hold_the_boot(tmp_path, monkeypatch):
    """Node 3 trickles its /v1/status and /v1/policies answers one byte per 2 s for 40 s:
    the agent boots within its deadlines, long before."""
    patch_clock(monkeypatch)
    srv, th = _trickle_server(STALL)
    port = srv.getsockname()[1]
    real = httpx.HTTPTransport()

    def corrupt(req: httpx.Request):
        if req.url.host == "node-3" and (
            req.url.path.startswith("/v1/policies/") or req.url.path == "/v1/status"
        ):
            fwd = httpx.Request(
                "GET", f"http://127.0.0.1:{port}{req.url.path}", extensions=req.extensions
            )
            return real.handle_request(fwd)
        return None

    async def main():
        async with testing.local_committee(tmp_path, n=3, threshold=2) as c:
            await admit(c, tmp_path, testing.app_bundle(OWNER, c.mpk, purposes=PURPOSES))
            t0 = time.monotonic()
            keys, _, _ = await boot_in_thread(
                c, monkeypatch, URLS, Lying(c.blocking_transport(), corrupt)
            )
            took = time.monotonic() - t0
            assert keys.root_version == 1
            assert took < 20, f"the boot took {took:.1f} s"

    try:
        trio.run(main)
    finally:
        srv.close()
        real.close()


def test_a_huge_policy_answer_is_not_read_whole():
    """One member answers 160 MiB: the agent stops reading at its cap."""
    import resource

    size = 160 << 20
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    sent = [0]

    def run():
        conn, _ = srv.accept()
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % (size + 2)
                )
                chunk = b" " * (1 << 20)
                for _ in range(size >> 20):
                    conn.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass
        srv.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(AgentError, match="longer than"):
        current_policy([f"http://127.0.0.1:{srv.getsockname()[1]}"], APP, b"x" * 96)
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) << 10
    th.join(10)
    assert grew < (64 << 20), f"peak RSS grew by {grew >> 20} MiB"
    assert sent[0] < size


# --- 4. a rotated-away (stolen) owner key plus one corrupt member --------------------------


def _rotation():
    new_owner = OwnerKey.from_seed(bytes([0x43]) * 32)
    rot = OWNER.rotate(OwnerChain.genesis(OWNER.public_bytes()), new_owner.public_bytes())
    return new_owner, rot


def test_a_rotated_away_owner_key_does_not_set_the_root_version(tmp_path, monkeypatch):
    """The thief signs version 999 pinning root version 77 with the rotated-away key and
    node 3 serves it: the agent takes the honest nodes' version 2 (root version 1)."""
    patch_clock(monkeypatch)
    new_owner, rot = _rotation()

    async def main():
        async with testing.local_committee(tmp_path, n=3, threshold=2) as c:
            v1 = testing.app_bundle(OWNER, c.mpk, purposes=PURPOSES)
            current = testing.app_bundle(
                new_owner, c.mpk, version=2, purposes=PURPOSES, rotations=(rot,)
            )
            await admit(c, tmp_path, v1, current)
            thief = testing.app_bundle(
                OWNER,
                c.mpk,
                version=999,
                purposes=PURPOSES,
                pins=Pins.build(min_key_versions=(MinKeyVersion("dstack-app-root", 77),)),
            )

            def corrupt(req: httpx.Request):
                if req.url.host == "node-3" and req.url.path.startswith("/v1/policies/"):
                    return httpx.Response(200, json={"bundle": thief.encode().hex()})
                return None

            keys, _, _ = await boot_in_thread(
                c, monkeypatch, URLS, Lying(c.blocking_transport(), corrupt)
            )
            assert keys.root_version == 1

    trio.run(main)


def test_a_forked_owner_chain_stops_the_boot(tmp_path, monkeypatch):
    """The thief signs a second rotation 1 (to its own key) with the stolen first key and
    node 3 serves a policy under it: two rotations from one key, the agent refuses."""
    patch_clock(monkeypatch)
    new_owner, rot = _rotation()
    thief_key = OwnerKey.from_seed(bytes([0x66]) * 32)
    fork = OWNER.rotate(OwnerChain.genesis(OWNER.public_bytes()), thief_key.public_bytes())

    async def main():
        async with testing.local_committee(tmp_path, n=3, threshold=2) as c:
            current = testing.app_bundle(
                new_owner, c.mpk, version=2, purposes=PURPOSES, rotations=(rot,)
            )
            await admit(c, tmp_path, current)
            thief = testing.app_bundle(
                thief_key, c.mpk, version=999, purposes=PURPOSES, rotations=(fork,)
            )

            def corrupt(req: httpx.Request):
                if req.url.host == "node-3" and req.url.path.startswith("/v1/policies/"):
                    return httpx.Response(200, json={"bundle": thief.encode().hex()})
                return None

            with pytest.raises(AgentError, match="forked owner chains"):
                await boot_in_thread(c, monkeypatch, URLS, Lying(c.blocking_transport(), corrupt))

    trio.run(main)


# --- 5. a refused certificate ends with an AgentError ---------------------------------------


def test_a_certificate_refusal_is_an_agent_error(tmp_path, monkeypatch):
    """Every node fails the certificate request: the boot ends with AgentError (the one
    `error:` line of `kms agent run`), not an uncaught exception."""
    patch_clock(monkeypatch)

    def refuse(req: httpx.Request):
        if req.url.path == "/v1/app-key-cert":
            return httpx.Response(503, text="no")
        return None

    async def main():
        async with testing.local_committee(tmp_path, n=3, threshold=2) as c:
            await admit(c, tmp_path, testing.app_bundle(OWNER, c.mpk, purposes=PURPOSES))
            with pytest.raises(AgentError, match="certified no app key"):
                await boot_in_thread(c, monkeypatch, URLS, Lying(c.blocking_transport(), refuse))

    trio.run(main)


# --- 6. two agents on one socket path --------------------------------------------------------

CHILD = r"""
import sys
from pathlib import Path
from kms.agent.runtime import AgentError, serve

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": sys.argv[2].encode()})

import os, time
import hypercorn.trio, trio
print("ready", flush=True)
while not os.path.exists(sys.argv[1] + ".go"):
    time.sleep(0.001)
try:
    serve(app, Path(sys.argv[1]), None, on_ready=lambda: print("serving on", sys.argv[1], flush=True))
except AgentError as exc:
    print("error:", exc, flush=True)
    sys.exit(1)
"""


def test_two_agents_on_one_socket_only_one_serves(tmp_path: Path) -> None:
    sock = tmp_path / "dstack.sock"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(sock), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("A", "B")
    ]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        Path(str(sock) + ".go").touch()
        said = [p.stdout.readline().strip() for p in procs]
        assert sorted(said)[1] == f"serving on {sock}", said
        assert sorted(said)[0].startswith("error: another agent holds"), said
        loser = procs[0] if said[0].startswith("error:") else procs[1]
        winner = procs[1] if loser is procs[0] else procs[0]
        assert loser.wait(30) == 1  # it stops (interpreter teardown may take a moment)
        assert winner.poll() is None
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as c:
            assert c.get("http://x/").text == ("A" if winner is procs[0] else "B")
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()


def test_the_socket_lock_comes_before_the_boot(tmp_path: Path) -> None:
    """With another process holding ``<socket>.lock``, ``run`` stops at once: no quote is
    taken, no request sent."""
    from kms.agent.runtime import AgentSetup, run

    sock = tmp_path / "dstack.sock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
            "fcntl.flock(fd,fcntl.LOCK_EX);print('held',flush=True);time.sleep(60)",
            str(sock) + ".lock",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )

    class Untouchable:
        def __getattr__(self, name: str):
            raise AssertionError(f"the boot went on: {name}")

    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        setup = AgentSetup(Untouchable(), b"", ("http://node-1",), sock)  # type: ignore[arg-type]
        with pytest.raises(AgentError, match="another agent holds"):
            run(setup)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
