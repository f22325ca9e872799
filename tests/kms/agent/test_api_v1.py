"""The v1 guest API (``/v1/<Method>``) over a real Unix socket, against dstack's v1 spec."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator

import httpx
import msgpack
import pytest
from coincurve import PublicKey
from Crypto.Hash import keccak
from cryptography import x509
from guestapi_server import (
    APP_COMPOSE,
    APP_ID,
    LINK1,
    ROOT_PUBLIC,
    VM_CONFIG,
    FakeSource,
    build_app,
    client,
    post,
    raw_request,
    serving,
)

from kms.dstack import tls


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[httpx.Client, str, FakeSource]]:
    app, source = build_app()
    with serving(app) as path, client(path) as c:
        yield c, path, source


# dstack guest API v1, "Test vectors": (domain, algorithm, private key, public key).
V1_VECTORS = [
    (
        b"",
        "secp256k1",
        "59f60584ce6fd2a3a31997256db9d77322463fc8a6b1520110401bcb1ee92387",
        "0377c7fb050db181d392266a3cee9adb2901c6d665f11bac68be5457f577ba4908",
    ),
    (
        b"",
        "ed25519",
        "b023493030669cf22e9cafa6a464d4cf3ae4edfe5474ec796710f21ea011946d",
        "a3dc149fd5b765eab2eb7d3174fa939e39386898f10b15b7b146f6f1358ecf2a",
    ),
    (
        b"storage-encryption",
        "secp256k1",
        "5510330f86902ddae38c6d89c93a8408019332c17a429e1abd01c4a28d1544a6",
        "03d962450a41748021c8b02787ac36ce642ff0ae25f4c55019eb527e1112cfd764",
    ),
    (
        b"storage-encryption",
        "ed25519",
        "3c4c3ece12fa99ccb93fc0090877f80e70545fdd971e2ac93d3398c4684538d3",
        "2380c4a33a60b60613fa43866421e5b96eb8dcde211317200fd0d41e7e491288",
    ),
    (
        b"a/b/c",
        "secp256k1",
        "7f0973449298085d2d36a3b4c4d3243c100ba1981ffa885fe9e9dee883e69538",
        "02e9b1a61b6d70aa9b241753828c316bf90e33e77b2e113f9ba75a8b6dc3cde5c1",
    ),
    (
        bytes.fromhex("6b003a6579"),
        "ed25519",
        "42da8bf0b479ed125c370e3b91f982735bf08ff592abbd586985affa43ee96a1",
        "c833107822b003ff5675b33b90b151d4315c3ab9162b17d876e8dffde41abf9b",
    ),
]
# dstack guest API v1, "Link 0: the key claim": storage-encryption / secp256k1.
V1_LINK0 = (
    "5b6193729ce7976ec67863f21692d4b98c69832698aae8e001a7d33a6f818b6e"
    "46ca950725b6e90e8ca9bcf394abd03ce264bf9b7eec1e91693247f9dd53c269"
    "01"
)


SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def lp(x: bytes) -> bytes:
    return struct.pack(">I", len(x)) + x


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def recover(claim: bytes, link: bytes) -> bytes:
    assert len(link) == 65 and link[64] <= 3
    assert int.from_bytes(link[32:64], "big") <= SECP256K1_N // 2  # low-S
    return PublicKey.from_signature_and_message(link, keccak256(claim), hasher=None).format()


@pytest.mark.parametrize(("domain", "algorithm", "private", "public"), V1_VECTORS)
def test_v1_get_key_matches_every_published_vector(
    served: tuple[httpx.Client, str, FakeSource],
    domain: bytes,
    algorithm: str,
    private: str,
    public: str,
) -> None:
    c, _, _ = served
    # json.dumps writes the NUL of the last domain as \u0000, as any JSON client does.
    body = json.dumps({"domain": domain.decode(), "algorithm": algorithm})
    r = c.post("/v1/GetKey", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"key", "public_key", "signature_chain"}
    assert got["key"] == private
    assert got["public_key"] == public
    link0, link1 = (bytes.fromhex(x) for x in got["signature_chain"])
    assert link1 == LINK1
    claim = lp(b"dstack-guest-v1-key-claim") + lp(algorithm.encode()) + lp(domain)
    claim += lp(bytes.fromhex(public))
    assert recover(claim, link0) == ROOT_PUBLIC
    if (domain, algorithm) == (b"storage-encryption", "secp256k1"):
        assert link0.hex() == V1_LINK0


@pytest.mark.parametrize("algorithm", ["", "k256", "secp256k1_prehashed", "rsa", "ED25519"])
def test_v1_get_key_refuses_any_other_algorithm(
    served: tuple[httpx.Client, str, FakeSource], algorithm: str
) -> None:
    c, _, _ = served
    r = c.post("/v1/GetKey", json={"domain": "x", "algorithm": algorithm})
    assert r.status_code == 400
    assert "secp256k1" in r.json()["error"]  # names the accepted values


def test_v1_get_key_without_algorithm_is_an_error(
    served: tuple[httpx.Client, str, FakeSource],
) -> None:
    c, _, _ = served
    r = c.post("/v1/GetKey", json={"domain": "x"})
    assert r.status_code == 400


@pytest.mark.parametrize("method", ["Sign", "Verify", "GetQuote", "EmitEvent", "GetTlsKey", "x"])
def test_v0_only_methods_are_not_on_v1(
    served: tuple[httpx.Client, str, FakeSource], method: str
) -> None:
    c, _, _ = served
    r = c.post(f"/v1/{method}", json={})
    assert r.status_code == 404
    assert r.json() == {"error": f"Service not found: {method}"}


def test_detecting_v1_by_its_404_body(served: tuple[httpx.Client, str, FakeSource]) -> None:
    # v1 spec, "Detecting an agent without v1": the body separates the two 404s.
    _, path, _ = served
    status, headers, body = raw_request(path, post(path, "/v1/Health", b"{}"))
    assert status == 404
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"error": "Service not found: Health"}
    status, headers, body = raw_request(path, post(path, "/v2/GetKey", b"{}"))
    assert status == 404
    assert not headers["content-type"].startswith("application/json")
    assert b"Service not found" not in body
    status, _, body = raw_request(path, post(path, "/v1/Version", b"{}"))
    assert status == 200
    assert set(json.loads(body)) == {"version", "rev"}


def test_v1_info_is_the_v1_info_response(served: tuple[httpx.Client, str, FakeSource]) -> None:
    c, _, _ = served
    r = c.post("/v1/Info", json={})
    assert r.status_code == 200
    info = r.json()
    assert set(info) == {
        "app_id",
        "app_name",
        "compose_hash",
        "app_compose",
        "instance_id",
        "device_id",
        "os_image_hash",
        "mr_aggregated",
        "vm_config",
        "key_provider_info",
        "cloud_vendor",
        "cloud_product",
    }
    assert info["app_id"] == APP_ID.hex()
    assert info["app_compose"] == APP_COMPOSE
    assert info["compose_hash"] == hashlib.sha256(APP_COMPOSE.encode()).hexdigest()
    assert info["vm_config"] == VM_CONFIG
    assert info["app_name"] == "demo-app"
    provider = json.loads(info["key_provider_info"])
    assert provider["name"] == "quorum-kms"
    assert provider["root_version"] == 1


def test_v1_attest_returns_a_versioned_attestation(
    served: tuple[httpx.Client, str, FakeSource],
) -> None:
    c, _, source = served
    r = c.post(
        "/v1/Attest",
        json={"report_data": "0x" + "c0ffee" * 3, "include_boottime_gpu_evidence": True},
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["boottime_gpu_evidence"] == []  # no GPU: the empty list, no sentinel
    raw = bytes.fromhex(got["attestation"])
    assert raw[0] & 0xF0 == 0x80  # a MessagePack map: V1, not the legacy SCALE form
    doc = msgpack.unpackb(raw)
    assert doc["version"] == 1
    assert doc["platform"]["kind"] == "tdx"
    assert doc["stack"]["kind"] == "dstack"
    padded = bytes.fromhex("c0ffee" * 3).ljust(64, b"\0")
    assert bytes(doc["stack"]["data"]["report_data"]) == padded
    quote = bytes(doc["platform"]["data"]["quote"])
    assert quote[568:632] == padded  # TD report's REPORTDATA in the quote body
    assert source.quotes[-1] == padded
    events = doc["platform"]["data"]["event_log"]
    assert [e["digest"].hex() for e in events] == [e["digest"] for e in source.event_log()]
    assert tls.parse_versioned_attestation(raw)["quote"] == quote


def test_v1_attest_refuses_65_bytes(served: tuple[httpx.Client, str, FakeSource]) -> None:
    c, _, _ = served
    r = c.post("/v1/Attest", json={"report_data": "00" * 65})
    assert r.status_code == 400
    assert "64" in r.json()["error"]


def test_v1_attest_gpu_without_a_gpu_is_an_error(
    served: tuple[httpx.Client, str, FakeSource],
) -> None:
    c, _, _ = served
    r = c.post("/v1/AttestGpu", json={"nonce": "11" * 32})
    assert r.status_code == 400
    assert "GPU" in r.json()["error"]
    r = c.post("/v1/AttestGpu", json={"nonce": "11" * 31})
    assert r.status_code == 400
    assert "32 bytes" in r.json()["error"]


def test_v1_issue_cert_issues_a_chain_to_the_app_ca(
    served: tuple[httpx.Client, str, FakeSource],
) -> None:
    c, _, _ = served
    r = c.post(
        "/v1/IssueCert",
        json={"subject": "svc.example", "alt_names": ["svc.example"], "usage_server_auth": True},
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert set(got) == {"key", "certificate_chain"}
    assert got["key"].startswith("-----BEGIN PRIVATE KEY-----")
    ca = x509.load_pem_x509_certificate(got["certificate_chain"][1].encode())
    leaf = tls.verify_tls_chain(got["certificate_chain"], ca.public_key())  # type: ignore[arg-type]
    assert leaf.subject.rfc4514_string() == "CN=svc.example"


def test_v1_issue_cert_refuses_an_empty_window(
    served: tuple[httpx.Client, str, FakeSource],
) -> None:
    c, _, _ = served
    r = c.post("/v1/IssueCert", json={"subject": "a", "not_before": 100, "not_after": 100})
    assert r.status_code == 400
    assert r.json() == {"error": "not_before must be earlier than not_after"}


def test_v1_and_v0_get_key_give_different_keys(
    served: tuple[httpx.Client, str, FakeSource],
) -> None:
    c, _, _ = served
    v1 = c.post("/v1/GetKey", json={"domain": "test", "algorithm": "secp256k1"}).json()
    v0 = c.post("/GetKey", json={"path": "test", "purpose": "", "algorithm": "secp256k1"}).json()
    assert v1["key"] != v0["key"]
    assert v1["signature_chain"][1] == v0["signature_chain"][1] == LINK1.hex()
