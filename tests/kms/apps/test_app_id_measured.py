"""Admitting a new app takes a CVM that measured the app's id in RTMR3.

App ids are derived from owner keys, so anyone can mint them; a genuine CVM
boot is what costs. A key request that would admit a new app (it carries the
app's bundle) is released, and the app's durable record written, only if the
request's RTMR3 event log, replayed against the quote, carries a boot-prefix
``app-id`` equal to the app: whatever kind of measurement entry the policy
uses. Otherwise ``policy-refused: app_id_not_measured`` and nothing is kept.
So one genuine CVM boot admits at most one app.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import trio

from kms.app.testing import MEASUREMENT, app_bundle, local_committee
from kms.policy import OwnerKey, build_event_log, dstack_boot_events
from kms.protocol import KeyRefusal, KeyResponse
from mpc.codec import decode

COMPOSE = hashlib.sha256(b"an admitted compose file").digest()


def keys(seed: int) -> OwnerKey:
    return OwnerKey.from_seed(random.Random(seed).randbytes(32))


def boot(app_id: bytes) -> tuple[bytes, dict[str, bytes]]:
    """The RTMR3 log of a dstack CVM booted with ``app_id``, and its registers."""
    log, rtmr3 = build_event_log(dstack_boot_events(app_id=app_id, compose_hash=COMPOSE))
    return log.encode(), {**MEASUREMENT, "rtmr3": rtmr3}


async def ask(c, app_id: bytes, bundle: bytes, log: bytes, m: dict[str, bytes]):  # type: ignore[no-untyped-def]
    """One CVM request to every node, asked again (fresh) while a node answers
    ``retry-later`` (it is asking the committee about an app it has not admitted)."""
    for _ in range(100):
        answers = await ask_once(c, app_id, bundle, log, m)
        if not any(getattr(a, "reason", None) == "retry-later" for a in answers.values()):
            return answers
        await trio.sleep(0.02)
    return answers


async def ask_once(c, app_id: bytes, bundle: bytes, log: bytes, m: dict[str, bytes]):  # type: ignore[no-untyped-def]
    _, req = c.key_request(app_id, bundle=bundle, measurement=m, event_log=log)
    answers = {}
    for i in sorted(c.services):
        r = await c.clients[i].post(
            "/v1/keys", content=req.encode(), headers={"content-type": "application/msgpack"}
        )
        answers[i] = decode(r.content)
    return answers


def test_a_new_app_is_admitted_only_by_a_cvm_whose_rtmr3_carries_its_app_id(
    tmp_path: Path,
) -> None:
    genuine_app = keys(11)
    minted = keys(12)  # an app id minted by whoever holds one genuine CVM of another app

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            # The one genuine CVM: booted for genuine_app; its RTMR3 is pinned explicitly
            # by the minted app's policy (anyone can write such a policy).
            log, registers = boot(genuine_app.app_id())
            raw = app_bundle(minted, c.mpk, measurement=registers).encode()
            before = {i: c.store_bytes(i) for i in c.services}
            for label, with_log in (("other app-id", log), ("no event log", b"")):
                answers = await ask(c, minted.app_id(), raw, with_log, registers)
                for i, answer in answers.items():
                    assert isinstance(answer, KeyRefusal), (label, i, answer)
                    assert answer.reason == "policy-refused", (label, answer)
                    assert answer.detail.startswith("app_id_not_measured"), (label, answer)
            for i in c.services:
                r = await c.clients[i].get(f"/v1/policies/{minted.app_id().hex()}")
                assert r.status_code == 404, r.text
                assert c.store_bytes(i) == before[i]
                metrics = (await c.clients[i].get("/metrics")).text
                assert "policy-refused" in metrics
            # A CVM booted with the minted app's own id is admitted by the same policy form.
            log, registers = boot(minted.app_id())
            raw = app_bundle(minted, c.mpk, measurement=registers).encode()
            answers = await ask(c, minted.app_id(), raw, log, registers)
            assert all(isinstance(a, KeyResponse) for a in answers.values()), answers
            for i in c.services:
                info = (await c.clients[i].get(f"/v1/policies/{minted.app_id().hex()}")).json()
                assert info["version"] == 1
            # Once admitted, the app's releases follow its policy as before: the policy
            # pins RTMR3 explicitly, and no new app is being admitted.
            answers = await ask(c, minted.app_id(), b"", log, registers)
            assert all(isinstance(a, KeyResponse) for a in answers.values()), answers

    trio.run(main)
