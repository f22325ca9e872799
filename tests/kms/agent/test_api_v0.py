"""The frozen v0 guest API (``/<Method>`` and ``/v0/<Method>``) over a real Unix socket.

What dstack-sdk 0.5.4 sends (``POST /<Method>``, ``Content-Type: application/json``) and
the response shapes its pydantic models require.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator

import httpx
import pytest
from coincurve import PublicKey
from Crypto.Hash import keccak
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from guestapi_server import (
    APP_COMPOSE,
    APP_ID,
    LINK1,
    MPK,
    ROOT_PUBLIC,
    VM_CONFIG,
    FakeSource,
    build_app,
    client,
    replay,
    serving,
)

from kms.dstack import keys, tls


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[httpx.Client, FakeSource]]:
    app, source = build_app()
    with serving(app) as path, client(path) as c:
        yield c, source


# dstack guest API v0, "Test vector": path "test", purpose "signing", secp256k1.
V0_LINK0 = (
    "c8a3dcf06c4e95bd78a5d7a1c8fcff171fc5848cfae804c6fc11bda4dc5d4062"
    "379995390843827444992c4c0e4bac70f0f878e01b9fc8b98cd7126fe5a3876b"
    "01"
)
V0_TEST_KEY = "52786aa123b0971e283af97f32e25767483d099d66e6c40afeb3a49046b5379e"
V0_TEST_PUB = "02ead9e0064aad1bb151c270c78ef82a4caf6d3fc92c311804e79751deb3476919"
# dstack guest API v0, Worker.GetAttestationForAppKey: the "vms"/"signing" public keys.
DIP1_ED25519 = "5Pbre1Amf1hrp2V2bbfKlIfxpQb2pJAmrgmhxgVoG9s"
DIP1_SECP256K1 = "A6t_JdVkVdMAocH3f1f20WGT6JzdntxcXimUtEax8zc9"
EMIT_EVENT_TEXT = (
    "EmitEvent was removed in dstack 0.6.0; runtime RTMR3 events are system-owned and "
    "cannot be extended by apps"
)


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def recover(claim: bytes, link: bytes) -> bytes:
    return PublicKey.from_signature_and_message(link, keccak256(claim), hasher=None).format()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("mount", ["/GetKey", "/v0/GetKey"])
def test_get_key_matches_the_v0_link0_vector(
    served: tuple[httpx.Client, FakeSource], mount: str
) -> None:
    c, _ = served
    r = c.post(mount, json={"path": "test", "purpose": "signing", "algorithm": "secp256k1"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"key", "signature_chain"}
    assert got["key"] == V0_TEST_KEY
    assert got["signature_chain"] == [V0_LINK0, LINK1.hex()]
    assert recover(f"signing:{V0_TEST_PUB}".encode(), bytes.fromhex(V0_LINK0)) == ROOT_PUBLIC


@pytest.mark.parametrize("alias", ["k256", ""])
def test_get_key_algorithm_aliases(served: tuple[httpx.Client, FakeSource], alias: str) -> None:
    c, _ = served
    r = c.post("/GetKey", json={"path": "test", "purpose": "signing", "algorithm": alias})
    assert r.json()["signature_chain"][0] == V0_LINK0
    # Missing fields are proto3 defaults: the SDK's default request is the same key.
    r = c.post("/GetKey", json={"path": "test", "purpose": "signing"})
    assert r.json()["signature_chain"][0] == V0_LINK0


def test_get_key_ed25519_shares_the_v0_secret(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    r = c.post("/GetKey", json={"path": "test", "purpose": "p", "algorithm": "ed25519"})
    assert r.status_code == 200
    assert r.json()["key"] == V0_TEST_KEY  # v0: the algorithm does not enter the KDF


@pytest.mark.parametrize("algorithm", ["secp256k1_prehashed", "rsa", "Ed25519"])
def test_get_key_refuses_other_algorithms(
    served: tuple[httpx.Client, FakeSource], algorithm: str
) -> None:
    c, _ = served
    r = c.post("/GetKey", json={"path": "x", "purpose": "y", "algorithm": algorithm})
    assert r.status_code == 400
    assert r.json() == {"error": "Unsupported algorithm"}


def test_sign_secp256k1_and_its_chain(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    data = b"hello dstack"
    r = c.post("/Sign", json={"algorithm": "secp256k1", "data": data.hex()})
    assert r.status_code == 200, r.text
    got = r.json()
    public = bytes.fromhex(got["public_key"])
    assert b64url(public) == DIP1_SECP256K1
    signature = bytes.fromhex(got["signature"])
    assert len(signature) == 64
    assert got["signature_chain"][0] == got["signature"]
    assert got["signature_chain"][2] == LINK1.hex()
    claim = f"signing:{public.hex()}".encode()
    assert recover(claim, bytes.fromhex(got["signature_chain"][1])) == ROOT_PUBLIC
    r_, s_ = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), public)
    key.verify(encode_dss_signature(r_, s_), data, ec.ECDSA(hashes.SHA256()))
    v = c.post(
        "/Verify",
        json={
            "algorithm": "secp256k1",
            "data": data.hex(),
            "signature": got["signature"],
            "public_key": got["public_key"],
        },
    )
    assert v.json() == {"valid": True}
    v = c.post(
        "/Verify",
        json={
            "algorithm": "secp256k1",
            "data": (data + b"!").hex(),
            "signature": got["signature"],
            "public_key": got["public_key"],
        },
    )
    assert v.json() == {"valid": False}


def test_sign_ed25519_uses_the_vms_key(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    r = c.post("/Sign", json={"algorithm": "ed25519", "data": "00ff"})
    got = r.json()
    assert b64url(bytes.fromhex(got["public_key"])) == DIP1_ED25519
    v = c.post(
        "/Verify",
        json={
            "algorithm": "ed25519",
            "data": "00ff",
            "signature": got["signature"],
            "public_key": got["public_key"],
        },
    )
    assert v.json() == {"valid": True}


def test_sign_has_no_default_algorithm(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    r = c.post("/Sign", json={"algorithm": "", "data": "00"})
    assert r.status_code == 400
    assert r.json() == {"error": "Unsupported algorithm"}


def test_get_quote_pads_and_reports(served: tuple[httpx.Client, FakeSource]) -> None:
    c, source = served
    r = c.post("/GetQuote", json={"report_data": "0xABCD"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"quote", "event_log", "report_data", "vm_config"}
    padded = bytes.fromhex("abcd").ljust(64, b"\0")
    assert got["report_data"] == padded.hex()
    assert bytes.fromhex(got["quote"])[568:632] == padded
    assert got["vm_config"] == VM_CONFIG
    events = json.loads(got["event_log"])  # a JSON string, as the SDK expects
    assert events == source.event_log()
    quote = bytes.fromhex(got["quote"])
    for imr in range(4):  # the SDK's replay_rtmrs() over it equals the quoted RTMRs
        assert replay(events, imr) == quote[48 + 328 + 48 * imr : 48 + 376 + 48 * imr]


def test_get_quote_accepts_exactly_64_bytes(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    r = c.post("/GetQuote", json={"report_data": "7f" * 64})
    assert r.status_code == 200
    assert r.json()["report_data"] == "7f" * 64


def test_attest_v0_has_only_the_attestation(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    r = c.post("/Attest", json={"report_data": "01"})
    assert r.status_code == 200
    got = r.json()
    assert set(got) == {"attestation"}
    parsed = tls.parse_versioned_attestation(bytes.fromhex(got["attestation"]))
    assert parsed["report_data"] == b"\x01".ljust(64, b"\0")
    assert parsed["config"] == VM_CONFIG


def test_info_has_every_field_the_sdk_requires(served: tuple[httpx.Client, FakeSource]) -> None:
    c, source = served
    r = c.post("/Info", json={})
    assert r.status_code == 200
    info = r.json()
    required = {
        "app_id",
        "instance_id",
        "app_cert",
        "tcb_info",
        "app_name",
        "device_id",
        "key_provider_info",
        "compose_hash",
    }
    optional = {"mr_aggregated", "os_image_hash", "vm_config", "cloud_vendor", "cloud_product"}
    assert set(info) == required | optional
    assert all(isinstance(info[k], str) for k in info)
    assert info["app_id"] == APP_ID.hex()
    assert info["app_cert"] == ""
    assert info["compose_hash"] == hashlib.sha256(APP_COMPOSE.encode()).hexdigest()
    tcb = json.loads(info["tcb_info"])
    assert set(tcb) == {
        "mrtd",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "app_compose",
        "event_log",
        "mr_aggregated",
        "os_image_hash",
        "compose_hash",
        "device_id",
    }
    assert tcb["app_compose"] == APP_COMPOSE
    for event in tcb["event_log"]:
        assert {"imr", "event_type", "digest", "event", "event_payload"} <= set(event)
        assert len(event["digest"]) == 96  # full digests, runtime events included
    for imr in range(4):
        assert tcb[f"rtmr{imr}"] == replay(tcb["event_log"], imr).hex()
        assert tcb[f"rtmr{imr}"] == source.rtmr()[imr].hex()
    provider = json.loads(info["key_provider_info"])
    assert provider["name"] == "quorum-kms"
    assert provider["id"] == provider["mpk"] == MPK.hex()
    assert provider["urls"] == ["http://127.0.0.1:8101", "http://127.0.0.1:8102"]
    assert provider["app_key_cert"] == {
        "version": 1,
        "epoch": 3,
        "signature": bytes(range(100, 148)).hex(),
    }
    link = bytes.fromhex(provider["app_ca"]["link"])
    claim = keys.lp(b"quorum-kms/v1/dstack/app-ca-claim") + keys.lp(
        bytes.fromhex(provider["app_ca"]["spki_sha256"])
    )
    assert recover(claim, link) == ROOT_PUBLIC


def test_emit_event_is_removed(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    r = c.post("/EmitEvent", json={"event": "mine", "payload": "00"})
    assert r.status_code == 400
    assert r.json() == {"error": EMIT_EVENT_TEXT}


def test_version(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    for target in ("/Version", "/v0/Version", "/v1/Version"):
        got = c.post(target, json={}).json()
        assert got == {"version": "0.1.0", "rev": "r" * 40}
    assert c.get("/Version").json()["version"] == "0.1.0"  # prpc: GET answers JSON too


def test_get_tls_key_as_the_sdk_asks(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    # dstack-sdk 0.5.4 get_tls_key() defaults: no alt_names key, usage_server_auth true.
    r = c.post(
        "/GetTlsKey",
        json={
            "subject": "",
            "usage_ra_tls": False,
            "usage_server_auth": True,
            "usage_client_auth": False,
        },
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["key"].startswith("-----BEGIN PRIVATE KEY-----\n")
    assert len(got["certificate_chain"]) == 2
    # The SDK's as_uint8array(): strip the exact markers, base64-decode PKCS#8 DER.
    body = got["key"].replace("-----BEGIN PRIVATE KEY-----", "")
    body = body.replace("-----END PRIVATE KEY-----", "").replace("\n", "")
    assert len(base64.b64decode(body)) > 32


def test_sign_prehashed_needs_32_bytes(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    r = c.post("/Sign", json={"algorithm": "secp256k1_prehashed", "data": "11" * 31})
    assert r.status_code == 400
    assert "31" in r.json()["error"]  # names the length received
    r = c.post("/Sign", json={"algorithm": "secp256k1_prehashed", "data": "11" * 32})
    assert r.status_code == 200
    plain = c.post("/Sign", json={"algorithm": "k256", "data": "11" * 32}).json()
    assert r.json()["public_key"] == plain["public_key"]  # one key, two signing modes
    assert r.json()["signature_chain"][1:] == plain["signature_chain"][1:]


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_verify_errors_and_verdicts(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    signed = c.post("/Sign", json={"algorithm": "secp256k1", "data": "abcd"}).json()
    sig = bytes.fromhex(signed["signature"])
    base = {"algorithm": "secp256k1", "data": "abcd", "public_key": signed["public_key"]}
    high_s = sig[:32] + (SECP256K1_N - int.from_bytes(sig[32:], "big")).to_bytes(32, "big")
    r = c.post("/Verify", json={**base, "signature": high_s.hex()})
    assert r.status_code == 200
    assert r.json() == {"valid": False}  # the malleated copy does not verify
    for bad in (sig[:63], sig + b"\0", bytes(64), sig[:32] + SECP256K1_N.to_bytes(32, "big")):
        r = c.post("/Verify", json={**base, "signature": bad.hex()})
        assert r.status_code == 400, bad.hex()
    r = c.post("/Verify", json={**base, "signature": sig.hex(), "public_key": "02" + "00" * 32})
    assert r.status_code == 400
    for algorithm in ("", "rsa"):
        r = c.post("/Verify", json={**base, "signature": sig.hex(), "algorithm": algorithm})
        assert r.status_code == 400


def test_get_takes_the_fields_as_query_parameters(served: tuple[httpx.Client, FakeSource]) -> None:
    c, _ = served
    r = c.get("/GetKey", params={"path": "test", "purpose": "signing", "algorithm": "k256"})
    assert r.status_code == 200
    assert r.json()["signature_chain"][0] == V0_LINK0
    r = c.get("/GetQuote", params={"report_data": "0xab"})
    assert r.json()["report_data"] == "ab" + "00" * 63
    r = c.get(
        "/v1/IssueCert",
        params=[
            ("subject", "q"),
            ("alt_names", "a.example"),
            ("alt_names", "10.1.1.1"),
            ("usage_server_auth", "true"),
            ("not_after", "1900000000"),
        ],
    )
    assert r.status_code == 200, r.text
    r = c.get("/GetTlsKey", params={"usage_ra_tls": "yes"})
    assert r.status_code == 400
