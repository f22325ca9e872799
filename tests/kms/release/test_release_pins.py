"""Attacks on key release through the HTTP key endpoint (``kms.api.http.make_app`` over
an ASGI client): a forged RTMR3 event log, another app's keys, and each pin a policy
may set, with quotes from the simulated TEE verified by the real DCAP code."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from dataclasses import replace
from typing import Any

import httpx
import pytest
from release_committee import InProcessReleaser, genesis_cores

from kms.api.http import MSGPACK, make_app
from kms.attest import Verifier
from kms.attest.simulated import SIMULATED_FMSPC, XFAM, SimulatedTEE
from kms.client.core import KeyRequestSession
from kms.node.release import KeyRefusalReason, Released, ReleaseRefused, refuse
from kms.policy import (
    AppPolicy,
    GpuPin,
    Measurement,
    MinKeyVersion,
    OwnerKey,
    Pins,
    PlatformPin,
    SystemEventPin,
    build_event_log,
    dstack_boot_events,
)
from kms.protocol import KeyRefusal, KeyRequest
from mpc.codec import MessageDecodeError, decode
from mpc.ids import ParticipantIndex as PI
from mpc.membership import verify_chain

NOW = 1_800_000_000
IMAGE = {name: bytes([i + 1]) * 48 for i, name in enumerate(("mr_td", "rtmr0", "rtmr1", "rtmr2"))}
ADMITTED = hashlib.sha256(b'{"manifest_version":2,"name":"admitted"}').digest()
OWNER = OwnerKey.from_seed(bytes(32))
OTHER_OWNER = OwnerKey.from_seed(bytes([1]) * 32)


class Node:
    """The public HTTP surface of one node in front of a key releaser."""

    def __init__(self, releaser: InProcessReleaser, share: Any) -> None:
        self.releaser, self.share, self.rejected = releaser, share, 0

    def status(self) -> dict[str, Any]:
        return {"healthy": True, "epoch": 0}

    def metrics_text(self) -> str:
        return ""

    def count_rejected(self, label: str) -> None:
        self.rejected += 1

    async def release(self, request: KeyRequest) -> Released | ReleaseRefused:
        res = self.releaser.handle(request.encode(), now=NOW, epoch=0, share=self.share)
        if not isinstance(res, Released):
            self.rejected += 1
        return res

    def refuse_key_request(self, exc: MessageDecodeError) -> ReleaseRefused:
        self.rejected += 1
        return refuse(KeyRefusalReason.MALFORMED, str(exc))


@pytest.fixture(scope="module")
def committee():  # type: ignore[no-untyped-def]
    nodes, cores, rng = genesis_cores(4, 2, key_seed=78, rng_seed=6, mesh_seed=2)
    mpk = cores[PI(1)].state.mpk
    chain = verify_chain(cores[PI(2)].chain, mpk=mpk)
    return chain, cores[PI(1)].share, nodes[PI(1)].identity, mpk.to_bytes()


def policy_for(committee, owner=OWNER, compose=ADMITTED, pins=None):  # type: ignore[no-untyped-def]
    return AppPolicy.build(
        app_id=owner.app_id(),
        version=1,
        owner_key=owner.public_bytes(),
        measurements=[Measurement.compose(**IMAGE, compose_hash=compose)],
        kms_mpk=committee[3],
        not_before=NOW - 60,
        purposes=("app", "disk"),
        pins=pins,
    )


def ask(  # type: ignore[no-untyped-def]
    committee,
    policies,
    events,
    *,
    app_id=None,
    tee=None,
    purposes=(("app", 1),),
    quote_args=None,
    log=None,
):
    """POST a key request for ``app_id`` from a CVM whose RTMR3 holds ``events`` (or whose
    log is ``log``, replaying to the RTMR3 of ``events``); the HTTP status and reason."""
    chain, share, identity, _ = committee
    tee = tee or SimulatedTEE(random.Random(9).randbytes, now=NOW)
    built, rtmr3 = build_event_log(events)
    releaser = InProcessReleaser(
        PI(1),
        identity,
        Verifier([tee.root_ca_der], simulated_allowed=True),
        tee.collateral(NOW),
        {p.app_id: p for p in policies},
        rng=random.Random(1).randbytes,
    )
    session = KeyRequestSession(
        chain, app_id or OWNER.app_id(), purposes, now=NOW, rng=random.Random(3).randbytes
    )
    quote = tee.quote(session.report_data, **IMAGE, rtmr3=rtmr3, **(quote_args or {}))
    session.attach_quote(quote, (log or built).encode())
    node = Node(releaser, share)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app(node))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.post(
                "/v1/keys",
                content=session.request.encode(),
                headers={"content-type": MSGPACK, "accept": MSGPACK},
            )

    response = asyncio.run(post())
    if response.status_code == 200:
        return 200, "released"
    refusal = decode(response.content)
    assert isinstance(refusal, KeyRefusal) and node.rejected == 1
    return response.status_code, refusal.detail.split(":")[0]


def boot(compose=ADMITTED, app_id=None, **system: bytes):  # type: ignore[no-untyped-def]
    events = dstack_boot_events(app_id=app_id or OWNER.app_id(), compose_hash=compose)
    return [*events, *((k.replace("_", "-"), v) for k, v in system.items())]


# --- the compose-hash forgery -------------------------------------------------------------------


def _colon_compose() -> bytes:
    for i in range(100_000):
        digest = hashlib.sha256(b'{"name":"evil","nonce":%d}' % i).digest()
        if digest[:1] == b":":
            return digest
    raise AssertionError("unreachable")


def test_the_forged_compose_hash_log_gets_no_key(committee) -> None:  # type: ignore[no-untyped-def]
    evil = _colon_compose()
    measured = [*boot(compose=evil), ("system-ready", b""), ("compose-hash", ADMITTED)]
    forged = [
        *measured[:2],
        ("compose-hash:", evil[1:]),  # the digest of ("compose-hash", evil)
        *measured[3:],
    ]
    forged_log, forged_rtmr3 = build_event_log(forged)
    assert forged_rtmr3 == build_event_log(measured)[1]
    policies = [policy_for(committee)]
    assert ask(committee, policies, measured, log=forged_log) == (403, "event_log_invalid")
    assert ask(committee, policies, boot()) == (200, "released")


def test_an_app_emitting_its_own_events_still_gets_keys(committee) -> None:  # type: ignore[no-untyped-def]
    events = [*boot(), ("system-ready", b""), ("compose-hash", b"\x00" * 32), ("x:y", b":")]
    assert ask(committee, [policy_for(committee)], events) == (200, "released")


def test_a_cvm_of_one_app_gets_no_key_of_another_app_admitting_its_compose(committee) -> None:  # type: ignore[no-untyped-def]
    a, b = policy_for(committee), policy_for(committee, owner=OTHER_OWNER)
    assert ask(committee, [a, b], boot()) == (200, "released")
    refused = ask(committee, [a, b], boot(), app_id=OTHER_OWNER.app_id())
    assert refused == (403, "app_id_not_measured")


# --- pins -----------------------------------------------------------------------------------------

PINS: list[tuple[str, Pins, dict[str, Any], dict[str, Any]]] = [
    # (name, pins, what the admitted CVM differs in, what the refused one differs in)
    ("mrconfigid", Pins(mr_config_id=b"\x0c" * 48), {"mr_config_id": b"\x0c" * 48}, {}),
    ("mrowner", Pins(mr_owner=b"\x0d" * 48), {"mr_owner": b"\x0d" * 48}, {}),
    (
        "mrownerconfig",
        Pins(mr_owner_config=b"\x0e" * 48),
        {"mr_owner_config": b"\x0e" * 48},
        {"mr_owner_config": b"\x0f" * 48},
    ),
    (
        "xfam",
        Pins(xfam_mask=bytes.fromhex("0002000000000000"), xfam_value=bytes(8)),
        {"xfam": bytes([XFAM[0], XFAM[1] & 0xFD]) + XFAM[2:]},
        {"xfam": XFAM},
    ),
]


@pytest.mark.parametrize(("name", "pins", "good", "bad"), PINS, ids=[p[0] for p in PINS])
def test_each_td_field_pin_admits_and_refuses(committee, name, pins, good, bad) -> None:  # type: ignore[no-untyped-def]
    policies = [policy_for(committee, pins=pins)]
    assert ask(committee, policies, boot(), quote_args=good) == (200, "released")
    assert ask(committee, policies, boot(), quote_args=bad) == (403, "td_field_mismatch")


def test_mrservicetd_must_be_zero_unless_pinned(committee) -> None:  # type: ignore[no-untyped-def]
    v5 = {"version": 5}
    assert ask(committee, [policy_for(committee)], boot(), quote_args=v5) == (200, "released")
    pinned = [policy_for(committee, pins=Pins(mr_service_td=b"\x01" * 48))]
    assert ask(committee, pinned, boot(), quote_args=v5) == (403, "td_field_mismatch")


def test_system_event_pins(committee) -> None:  # type: ignore[no-untyped-def]
    os_image = b"\x42" * 32
    pins = Pins(system_events=(SystemEventPin("os-image-hash", os_image),))
    policies = [policy_for(committee, pins=pins)]
    assert ask(committee, policies, boot(os_image_hash=os_image)) == (200, "released")
    assert ask(committee, policies, boot(os_image_hash=b"\x43" * 32)) == (
        403,
        "system_event_mismatch",
    )
    assert ask(committee, policies, boot()) == (403, "system_event_mismatch")
    # A pinned event the app emits after system-ready is not a system event.
    late = [*boot(), ("system-ready", b""), ("os-image-hash", os_image)]
    assert ask(committee, policies, late) == (403, "system_event_mismatch")


def test_gpu_attestation_pins(committee) -> None:  # type: ignore[no-untyped-def]
    def gpu(**fields: Any) -> bytes:
        claims = {"version": 2, "provider": "nvidia", "devices": 1, "cc_mode": "on"}
        claims |= {"devtools": False, "evidence_sha256": "00" * 32, **fields}
        return json.dumps(claims).encode()

    policies = [policy_for(committee, pins=Pins(gpu=GpuPin(cc_mode="on", devtools=False)))]
    assert ask(committee, policies, boot(gpu_attestation=gpu())) == (200, "released")
    nested = b'{"a":' * 40 + b"1" + b"}" * 40
    for bad in (gpu(cc_mode="off"), gpu(devtools=True), gpu(devices=0), b"not json", nested):
        assert ask(committee, policies, boot(gpu_attestation=bad)) == (403, "system_event_mismatch")
    assert ask(committee, policies, boot()) == (403, "system_event_mismatch")


def test_the_platform_allow_list(committee) -> None:  # type: ignore[no-untyped-def]
    tee = SimulatedTEE(random.Random(9).randbytes, now=NOW)
    known = PlatformPin(SIMULATED_FMSPC, tee.platform_instance_id)
    policies = [policy_for(committee, pins=Pins(platforms=(known,)))]
    assert ask(committee, policies, boot(), tee=tee) == (200, "released")
    other_host = SimulatedTEE(random.Random(10).randbytes, now=NOW)  # same FMSPC, other host
    assert ask(committee, policies, boot(), tee=other_host) == (403, "platform_not_allowed")
    any_host = [policy_for(committee, pins=Pins(platforms=(PlatformPin(SIMULATED_FMSPC),)))]
    assert ask(committee, any_host, boot(), tee=other_host) == (200, "released")
    elsewhere = SimulatedTEE(random.Random(10).randbytes, now=NOW, fmspc=b"OTHERS")
    assert ask(committee, any_host, boot(), tee=elsewhere) == (403, "platform_not_allowed")


def test_a_minimum_key_version_per_purpose(committee) -> None:  # type: ignore[no-untyped-def]
    pins = Pins(min_key_versions=(MinKeyVersion("app", 3),))
    policies = [policy_for(committee, pins=pins)]
    assert ask(committee, policies, boot(), purposes=(("app", 3),)) == (200, "released")
    assert ask(committee, policies, boot(), purposes=(("disk", 1),)) == (200, "released")
    refused = ask(committee, policies, boot(), purposes=(("disk", 1), ("app", 2)))
    assert refused == (403, "key_version_too_old")


def test_a_floor_on_the_tcb_evaluation_data_number(committee) -> None:  # type: ignore[no-untyped-def]
    policies = [policy_for(committee, pins=Pins(min_tcb_evaluation_data_number=18))]
    fresh = SimulatedTEE(random.Random(9).randbytes, now=NOW, tcb_evaluation_data_number=18)
    stale = SimulatedTEE(random.Random(9).randbytes, now=NOW, tcb_evaluation_data_number=17)
    assert ask(committee, policies, boot(), tee=fresh) == (200, "released")
    assert ask(committee, policies, boot(), tee=stale) == (403, "tcb_evaluation_too_old")


def test_a_pinned_policy_survives_its_wire_and_json_forms_and_v1_bytes_are_unchanged(
    committee,
) -> None:  # type: ignore[no-untyped-def]
    pins = Pins.build(
        platforms=[PlatformPin(b"BBBBBB"), PlatformPin(b"AAAAAA", b"\x01" * 16)],
        system_events=[SystemEventPin("os-image-hash", b"\x01" * 32)],
        gpu=GpuPin(cc_mode="on"),
        min_key_versions=[MinKeyVersion("app", 2)],
        min_tcb_evaluation_data_number=17,
    )
    pinned = policy_for(committee, pins=pins)
    assert pinned.wire_version() == 2
    assert AppPolicy.decode(pinned.encode()) == pinned
    assert AppPolicy.decode_json(json.dumps(pinned.to_json())) == pinned
    plain = policy_for(committee)
    assert plain.encode()[:12].endswith(b"\x01") or plain.wire_version() == 1
    assert plain.to_wire()[1] == 1 and len(plain.to_wire()) == 2 + 9
    assert AppPolicy.decode(plain.encode()) == plain
    # The version-2 tag on a value version 1 carries is not canonical.
    forged = plain.to_wire()
    forged[1] = 2
    import msgpack

    from mpc.codec import MessageDecodeError

    with pytest.raises(MessageDecodeError):
        AppPolicy.decode(msgpack.packb([*forged, None], use_bin_type=True))
    assert replace(plain, pins=pins).wire_version() == 2


def test_the_event_log_is_replayed_once_per_request(committee, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import kms.policy.admission as admission

    calls = []
    real = admission.replay_rtmr3

    def counting(log, rtmr3):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(log, rtmr3)

    monkeypatch.setattr(admission, "replay_rtmr3", counting)
    pins = Pins(system_events=(SystemEventPin("os-image-hash", b"\x42" * 32),))
    policies = [policy_for(committee, pins=pins)]
    both = (("app", 1), ("disk", 1))
    assert ask(committee, policies, boot(os_image_hash=b"\x42" * 32), purposes=both) == (
        200,
        "released",
    )
    assert len(calls) == 1
