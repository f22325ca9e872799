"""What whoever can open the guest socket gets, beyond the derived keys: the app root
itself, and the power to certify a root key of its own first.

``GetQuote`` quotes any 64 bytes of report data (as dstack's does), and a key release or
a certificate request is bound only by its report data. So a socket holder (the app)
quotes its own ``KeyRequest`` for ``("dstack-app-root", v)`` and the committee releases
``σ`` to it, from which it derives the agent's root; or it quotes an
``AppKeyCertRequest`` for a key of its choosing, after which the agent's genuine root is
refused ``app-key-conflict`` at every node that certified the other one. docs/dstack.md
("Who holds the guest socket") states this; this test is what the statement rests on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import coincurve
import httpx
import trio

from kms.agent.api import AgentKeys, make_app
from kms.agent.tee import TeeView
from kms.app.testing import app_boot, app_bundle, local_committee
from kms.client.appcert import AppKeyCertSession
from kms.client.core import KeyRequestSession
from kms.dstack import keys as dkeys
from kms.policy import ROOT_PURPOSE, OwnerKey
from kms.protocol import AppKeyCertShare, KeyRefusal, KeyResponse
from mpc.codec import decode
from mpc.ids import ParticipantIndex


class _Cvm:
    """The admitted CVM's TEE: the committee's simulated platform, booted for the app."""

    def __init__(self, committee: Any, app_id: bytes) -> None:
        self.log, self.measurement = app_boot(app_id)
        self.tee = committee.tee

    def quote(self, report_data: bytes) -> bytes:
        return bytes(self.tee.quote(report_data, **self.measurement))

    def event_log(self) -> list[dict[str, Any]]:
        return list(json.loads(self.log))

    def app_compose(self) -> str:
        return "{}"

    def vm_config(self) -> str:
        return ""


def _root_of(session: KeyRequestSession, app: bytes) -> bytes:
    [(pv, point)] = session.derived().items()
    return dkeys.app_root_from_sigma(point.point.to_bytes(), pv.key_id(app).encode())


def test_the_socket_holder_can_obtain_the_root_and_squat_its_certificate(
    tmp_path: Path,
) -> None:
    owner = OwnerKey.from_seed(bytes([77]) * 32)
    app = owner.app_id()

    async def main() -> None:
        async with local_committee(tmp_path, n=3, threshold=2) as c:
            bundle = app_bundle(owner, c.mpk, purposes=("app", ROOT_PURPOSE)).encode()
            admitted, _ = await c.fetch_keys(app, bundle=bundle)
            assert admitted.done
            cvm = _Cvm(c, app)
            agent_session, _ = await c.fetch_keys(app, purposes=((ROOT_PURPOSE, 1),))
            root = _root_of(agent_session, app)
            root_pub = dkeys.root_public(root)
            m = cvm.measurement
            view = TeeView(
                app_id=app,
                instance_id=b"",
                device_id=hashlib.sha256(b"").digest(),
                compose_hash=bytes(32),
                os_image_hash=b"",
                mr_aggregated=bytes(32),
                mrtd=m["mr_td"],
                rtmr=(m["rtmr0"], m["rtmr1"], m["rtmr2"], m["rtmr3"]),
                event_log=cvm.event_log(),
                app_compose="{}",
                vm_config="",
                key_provider_info="",
            )
            keys = AgentKeys(
                root=root,
                root_public=root_pub,
                app_id=app,
                root_version=1,
                link1=bytes(48),
                qkms_cert=(1, 1, bytes(48)),
                mpk=c.mpk,
            )
            guest = make_app(keys, view, cvm)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=guest), base_url="http://localhost"
            ) as socket_holder:

                async def get_quote(report_data: bytes) -> bytes:
                    r = await socket_holder.post(
                        "/GetQuote", json={"report_data": report_data.hex()}
                    )
                    assert r.status_code == 200, r.text
                    return bytes.fromhex(r.json()["quote"])

                # 1. Its own key request for the root purpose, quoted by the agent.
                mine = KeyRequestSession(
                    c.chain, app, ((ROOT_PURPOSE, 1),), now=int(c.clock.now()), rng=os.urandom
                )
                request = mine.attach_quote(await get_quote(mine.report_data), cvm.log)
                for i in sorted(c.services):
                    r = await c.clients[i].post(
                        "/v1/keys",
                        content=request.encode(),
                        headers={"content-type": "application/msgpack"},
                    )
                    answer = decode(r.content)
                    assert isinstance(answer, KeyResponse | KeyRefusal)
                    mine.receive(ParticipantIndex(i), answer)
                assert _root_of(mine, app) == root

                # 2. A certificate for a key of its choosing, first ...
                chosen = coincurve.PrivateKey(b"\x42" * 32).public_key.format()
                cert = AppKeyCertSession(
                    c.chain, app, 1, chosen, now=int(c.clock.now()), rng=os.urandom
                )
                cert_request = cert.attach_quote(await get_quote(cert.report_data), cvm.log)
                for i in c.services:
                    code, share = await c.post_cert(i, cert_request)
                    assert code == 200 and isinstance(share, AppKeyCertShare)
                # ... after which the agent's genuine root is refused at every node.
                _, genuine = c.cert_request(app, root_pub)
                for i in c.services:
                    code, refusal = await c.post_cert(i, genuine)
                    assert code == 403 and refusal.reason == "app-key-conflict", refusal

    trio.run(main)
