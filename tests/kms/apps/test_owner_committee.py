"""An app owner and a CVM against a committee they reach by URL alone, in one process.

Four nodes made by ``kms.app.devnet.create`` run as real ``NodeService``s
(``service_devnet.ServiceDevnet``); after the genesis DKG the commands run through typer's
runner in a worker thread, their HTTP carried to the nodes by ``ServiceDevnet.transport``
(``kms.app.owner.HTTP_TRANSPORT``) and ``kms member``'s admin requests to each node's admin
handler. Nothing is read from ``devnet.json``: the owner has a key file, a policy TOML, the
node URLs and the master public key; the CVM has the devnet's simulated TEE and its own
measurement file.

Attacks, through the nodes' public HTTP surface: a policy for the app signed by another
key; after an owner rotation, the old key's next version (with and without the chain).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from devnet_helpers import in_process_devnet
from service_devnet import ServiceDevnet
from typer.testing import CliRunner

import kms.cli.member
from kms.app import owner, simtee
from kms.cli import app
from kms.client import http as client_http
from kms.policy import AppPolicy, Measurement, OwnerKey, PolicyBundle

runner = CliRunner()


def policy_toml(
    version: int, measurement: Path, purposes: str = '["app", "disk", "ibe.app"]'
) -> str:
    return (
        f"version = {version}\npurposes = {purposes}\nlifetime = 86400\n"
        f'[[measurements]]\nfile = "{measurement}"\n'
    )


class Owner:
    """The owner's and the CVM's commands, run in a worker thread against ``net``."""

    def __init__(self, net: ServiceDevnet, work: Path, mpk: str) -> None:
        self.net = net
        self.work = work
        self.mpk = mpk
        self.urls = ",".join(str(n["http_url"]) for n in net.state["nodes"])
        self.tee = net.directory / "simulated-tee"

    async def cli(self, *args: Any) -> Any:
        def go() -> Any:
            client_http._HEADS.clear()
            return runner.invoke(app, [str(a) for a in args])

        return await self.net.in_thread(go)

    async def sign(self, version: int, key: str = "owner.key", measurement: str = "cvm") -> Any:
        toml = self.work / f"v{version}.toml"
        toml.write_text(policy_toml(version, self.work / f"{measurement}.measurement.toml"))
        return await self.cli(
            "app", "policy", "sign", "--owner-key", self.work / key, "--policy", toml,
            "--mpk", self.mpk, "--out", self.work / f"v{version}.policy",
        )  # fmt: skip

    async def push(self, version: int) -> Any:
        bundle = self.work / f"v{version}.policy"
        return await self.cli("app", "policy", "push", "--urls", self.urls, "--bundle", bundle)

    async def key_get(self, app_id: str, measurement: str = "cvm", *extra: Any) -> Any:
        return await self.cli(
            "key", "get", "--urls", self.urls, "--mpk", self.mpk, "--app", app_id,
            "--simulated-tee", self.tee, "--measurement",
            self.work / f"{measurement}.measurement.toml", *extra,
        )  # fmt: skip

    async def offer(self, bundle: PolicyBundle) -> list[dict[str, Any]]:
        """The bundle posted to every node's ``/v1/policies``, as anybody can."""
        replies = []
        for i in self.net.indices:
            r = await self.net.running[i].client.post(
                "/v1/policies",
                content=bundle.encode(),
                headers={"content-type": "application/msgpack"},
            )
            replies.append(r.json())
        return replies


def signed_by(key: OwnerKey, app_id: bytes, version: int, mpk: str, m: Measurement) -> Any:
    now = int(time.time())
    return AppPolicy.build(
        app_id=app_id,
        version=version,
        owner_key=key.public_bytes(),
        measurements=[m],
        kms_mpk=bytes.fromhex(mpk),
        not_before=now - 60,
        expires=now + 86400,
    ).sign(key)


Scenario = Callable[[Owner], Awaitable[None]]


def owner_on(
    net: ServiceDevnet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mpk: str,
    measurements: tuple[str, ...] = ("cvm",),
) -> Owner:
    """An owner whose commands reach ``net`` (HTTP through its transport, ``kms member``'s
    admin requests to each node's handler), with a random measurement file per name."""
    net.real_time()
    monkeypatch.setattr(owner, "HTTP_TRANSPORT", net.transport())

    def admin(config: Path, request: dict[str, Any], json_out: bool = False) -> Any:
        reply = net.admin_by_config(config, request)
        assert reply.get("ok"), reply
        return reply

    monkeypatch.setattr(kms.cli.member, "admin", admin)
    work = tmp_path / "owner"
    work.mkdir()
    for name in measurements:
        (work / f"{name}.measurement.toml").write_text(
            simtee.measurement_toml(simtee.random_measurement())
        )
    return Owner(net, work, mpk)


async def owner_with_app(
    net: ServiceDevnet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mpk: str
) -> tuple[Owner, str]:
    """``owner_on``, then a new app whose version 1 admits the ``cvm`` measurement,
    admitted by every node's operator; the owner and the app id (hex)."""
    o = owner_on(net, tmp_path, monkeypatch, mpk)
    assert (await o.cli("app", "create", "--owner-key", o.work / "owner.key")).exit_code == 0
    app_id = owner.load_owner(o.work / "owner.key").app_id.hex()
    assert (await o.sign(1)).exit_code == 0
    for i in net.indices:
        r = await o.cli("member", "admit-app", "--config", net.config_path(i), o.work / "v1.policy")
        assert r.exit_code == 0, r.output
    return o, app_id


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: Scenario) -> None:
    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 4, 2, delta=0.3, start_in=5.0, window_period=5.0
        ) as net:
            await net.start()
            sts = await net.wait_for(
                "epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=60
            )
            mpk = sts[1]["master_public_key"]
            await scenario(owner_on(net, tmp_path, monkeypatch, mpk, ("cvm", "rogue")))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.slow
@pytest.mark.parallel
def test_an_owner_and_a_cvm_on_a_committee_reached_by_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(o: Owner) -> None:
        net, work = o.net, o.work
        r = await o.cli("app", "create", "--owner-key", work / "owner.key")
        assert r.exit_code == 0, r.output
        app_id = owner.load_owner(work / "owner.key").app_id.hex()
        assert (await o.sign(1)).exit_code == 0

        # Before any operator admits the app, no node releases its keys.
        r = await o.key_get(app_id)
        assert r.exit_code == 1, r.output

        # Every operator admits it from the owner's bundle.
        for i in net.indices:
            r = await o.cli(
                "member", "admit-app", "--config", net.config_path(i), work / "v1.policy"
            )
            assert r.exit_code == 0, r.output
            assert f"app {app_id} version 1" in r.output
            # The first node admits it from the file; a later one may have taken it from
            # the members already (they announce a version they accept), then 0 is new.
            assert "admitted 1" in r.output or (i != net.indices[0] and "admitted 0" in r.output)
            assert (net.config_path(i).parent / "policies" / f"{app_id}-v1.policy").is_file()

        r = await o.key_get(app_id, "cvm", "--json")
        assert r.exit_code == 0, r.output
        assert f'"app_id":"{app_id}"' in r.output and '"epoch":0' in r.output
        fingerprint = r.output.split('"fingerprint":"')[1][:64]

        # Encrypted to the app's inbox with the master public key alone; opened by the CVM.
        (work / "plain").write_bytes(b"for the app")
        r = await o.cli("encrypt", "--mpk", o.mpk, "--app", app_id, work / "plain", work / "sealed")
        assert r.exit_code == 0 and "encrypted 11 bytes" in r.output, r.output
        r = await o.cli(
            "decrypt", work / "sealed", work / "opened", "--urls", o.urls, "--mpk", o.mpk,
            "--simulated-tee", o.tee, "--measurement", work / "cvm.measurement.toml",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert (work / "opened").read_bytes() == b"for the app"

        # An image the policy does not list: every node's refusal with its detail.
        r = await o.key_get(app_id, "rogue")
        assert r.exit_code == 1, r.output
        refusals = [line for line in r.output.splitlines() if " refused: " in line]
        assert len(refusals) >= 2, r.output
        for line in refusals:
            reason, detail = line.split(" refused: ", 1)[1].split(": ", 1)
            assert reason == "policy-refused" and detail.strip(), line

        # The next version, pushed to the URLs: effective everywhere.
        assert (await o.sign(2)).exit_code == 0
        r = await o.push(2)
        assert r.exit_code == 0, r.output
        assert "version 2: effective everywhere" in r.output
        r = await o.cli("app", "policy", "show", "--urls", o.urls, "--app", app_id, "--json")
        assert r.exit_code == 0 and '"versions":[2]' in r.output, r.output

        # Attack: a policy for this app signed by another key. Every node refuses it.
        thief = OwnerKey.from_seed(bytes(range(32)))
        m = simtee.load_measurement(work / "rogue.measurement.toml")
        forged = PolicyBundle(signed_by(thief, bytes.fromhex(app_id), 3, o.mpk, m), ())
        assert all(not x["accepted"] for x in await o.offer(forged))
        assert (await o.key_get(app_id, "rogue")).exit_code == 1

        # The owner hands the app to a new key, with version 3.
        (work / "v3.toml").write_text(policy_toml(3, work / "cvm.measurement.toml"))
        r = await o.cli(
            "app", "rotate-owner", "--owner-key", work / "owner.key",
            "--new-owner-key", work / "new.key", "--policy", work / "v3.toml",
            "--mpk", o.mpk, "--out", work / "v3.policy",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert (await o.push(3)).exit_code == 0

        # The old key file signs nothing more...
        r = await o.sign(4, key="owner.key")
        assert r.exit_code == 2 and "handed app" in r.output, r.output
        # ...and a version the old key signs anyway is refused by every node, with or
        # without the chain that hands the app on.
        old = owner.load_owner(work / "owner.key")
        stale = signed_by(old.key, old.app_id, 4, o.mpk, m)
        for rotations in ((), old.chain.records):
            replies = await o.offer(PolicyBundle(stale, rotations))
            assert all(not x["accepted"] for x in replies), replies
        assert (await o.key_get(app_id, "rogue")).exit_code == 1

        # A second app whose image is pinned by compose hash: its CVM's first request,
        # carrying the bundle, admits it at the nodes (no operator step), since the
        # simulated TEE boots like dstack and its RTMR3 event log names the app.
        r = await o.cli("app", "create", "--owner-key", work / "second.key")
        assert r.exit_code == 0, r.output
        second = owner.load_owner(work / "second.key").app_id.hex()
        regs = simtee.random_measurement()
        del regs["rtmr3"]
        regs["compose_hash"] = bytes(range(32))
        (work / "composed.measurement.toml").write_text(simtee.measurement_toml(regs))
        (work / "s1.toml").write_text(policy_toml(1, work / "composed.measurement.toml"))
        r = await o.cli(
            "app", "policy", "sign", "--owner-key", work / "second.key", "--policy",
            work / "s1.toml", "--mpk", o.mpk, "--out", work / "s1.policy",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert (await o.key_get(second, "composed")).exit_code == 1
        r = await o.key_get(second, "composed", "--bundle", work / "s1.policy", "--json")
        assert r.exit_code == 0, r.output
        assert f'"app_id":"{second}"' in r.output
        # Without the bundle now: the nodes admitted the app.
        assert (await o.key_get(second, "composed")).exit_code == 0

        # The new key signs version 4; one node is down, so the push names it.
        assert (await o.sign(4, key="new.key")).exit_code == 0
        down = net.indices[-1]
        await net.stop(down)
        r = await o.push(4)
        assert r.exit_code == 1, r.output
        lagging = [line for line in r.output.splitlines() if line.startswith("lagging ")]
        assert [line.split()[1].rstrip(":") for line in lagging] == [
            str(net.entry(down)["http_url"])
        ]
        r = await o.key_get(app_id, "cvm", "--json")
        assert r.exit_code == 0, r.output
        assert f'"fingerprint":"{fingerprint}"' in r.output

    run(tmp_path, monkeypatch, scenario)
