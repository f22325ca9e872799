"""A policy whose pins hold values no CVM can meet or that mean nothing cannot be signed
with the ``kms`` tools, nor be accepted by a node from the wire.

The wire test signs the malformed policy by hand (as an attacker or a foreign tool
would: the owner's key over the policy's encoding) and posts it to a node's
``POST /v1/policies`` and inside a key request: both are a typed refusal.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from kms.app.testing import NOW, app_bundle, local_committee
from kms.policy import (
    CTX_APP_POLICY,
    GpuPin,
    OwnerKey,
    Pins,
    PlatformPin,
    PolicyBundle,
    PolicyError,
    PolicyFailure,
    SignedPolicy,
    SystemEventPin,
)
from kms.protocol import KeyRefusal

BAD_PINS = {
    "no GPU required": Pins(gpu=GpuPin(min_devices=0)),
    "GPUs beyond any host": Pins(gpu=GpuPin(min_devices=10_000)),
    "unknown CC mode": Pins(gpu=GpuPin(cc_mode="sometimes")),
    "short FMSPC": Pins(platforms=(PlatformPin(b"\x00" * 5),)),
    "long MRCONFIGID": Pins(mr_config_id=b"\x00" * 49),
    "unpinnable event": Pins(system_events=(SystemEventPin("app-id", b"\x00" * 20),)),
}


MPK = bytes(96)  # not checked by signing; the node tests use the committee's


def _owner() -> OwnerKey:
    return OwnerKey.from_seed(random.Random("pins").randbytes(32))


@pytest.mark.parametrize("pins", BAD_PINS.values(), ids=BAD_PINS.keys())
def test_the_tools_refuse_to_sign_a_policy_with_a_malformed_pin(pins: Pins) -> None:
    owner = _owner()
    policy = app_bundle(owner, MPK).signed.policy
    with pytest.raises(PolicyError) as refused:
        replace(policy, pins=pins).sign(owner)
    assert refused.value.reason is PolicyFailure.MALFORMED
    assert "policy/pins" in str(refused.value) or "pin" in str(refused.value)


def test_a_node_refuses_a_hand_signed_policy_with_a_malformed_pin(tmp_path: Path) -> None:
    owner = _owner()

    async def main() -> None:
        async with local_committee(tmp_path) as c:
            for label, pins in BAD_PINS.items():
                policy = replace(app_bundle(owner, c.mpk).signed.policy, pins=pins)
                signed = SignedPolicy(policy, owner.sign(CTX_APP_POLICY, policy.encode()))
                raw = PolicyBundle(signed, ()).encode()
                r = await c.post_policy(1, raw)
                assert r.status_code == 400 and r.json()["reason"] == "malformed", (label, r.text)
                _, answers = await c.fetch_keys(owner.app_id(), bundle=raw, nodes=[1])
                answer = answers[1]
                assert isinstance(answer, KeyRefusal), label
                assert answer.reason == "bundle-refused", (label, answer)
                assert answer.detail.startswith("malformed bundle"), (label, answer)
            info = await c.clients[1].get(f"/v1/policies/{owner.app_id().hex()}")
            assert info.status_code == 404

    trio.run(main)


def test_valid_pins_still_sign_and_travel(tmp_path: Path) -> None:
    owner = _owner()
    policy = app_bundle(owner, MPK, now=NOW).signed.policy
    pins = Pins(gpu=GpuPin(cc_mode="on", devtools=False, min_devices=8))
    signed = replace(policy, pins=pins).sign(owner)
    assert SignedPolicy.decode(signed.encode()) == signed
