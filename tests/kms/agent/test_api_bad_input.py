"""Bad input to the guest API, sent as raw HTTP over the Unix socket, the way an attacker
inside the CVM (any process that can open the socket) would: each gets the spec's
error and the server keeps answering."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from guestapi_server import ROOT, agent_keys, build_app, post, raw_request, serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MAX_BODY = 4096


@pytest.fixture(scope="module")
def path() -> Iterator[str]:
    app, source = build_app(max_body=MAX_BODY)
    with serving(app) as p:
        yield p


def alive(path: str) -> None:
    status, _, body = raw_request(path, post(path, "/Version", b"{}"))
    assert status == 200
    assert json.loads(body)["version"] == "0.1.0"


def error_of(path: str, request: bytes, status: int) -> str:
    got, headers, body = raw_request(path, request)
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    document = json.loads(body)
    assert set(document) == {"error"}
    message = document["error"]
    assert isinstance(message, str) and message
    alive(path)
    return message


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json", b"\xff\xfe", b'{"path": "a",}', b"[1, 2]", b'"GetKey"', b"null", b"3"],
)
def test_garbage_json_is_a_400(path: str, body: bytes) -> None:
    message = error_of(path, post(path, "/GetKey", body), 400)
    assert "JSON" in message


def test_deeply_nested_json_is_a_400(path: str) -> None:
    body = b"[" * 2000 + b"]" * 2000
    assert "JSON" in error_of(path, post(path, "/GetKey", body), 400)


@pytest.mark.parametrize(
    ("target", "fields", "name"),
    [
        ("/GetKey", {"path": 5}, "path"),
        ("/GetKey", {"algorithm": None, "purpose": ["x"]}, "purpose"),
        ("/v1/GetKey", {"domain": {"a": 1}, "algorithm": "ed25519"}, "domain"),
        ("/GetTlsKey", {"usage_ra_tls": "yes"}, "usage_ra_tls"),
        ("/GetTlsKey", {"alt_names": "a.example"}, "alt_names"),
        ("/GetTlsKey", {"alt_names": ["a", 1]}, "alt_names"),
        ("/GetTlsKey", {"not_before": -1}, "not_before"),
        ("/GetTlsKey", {"not_after": 2**64}, "not_after"),
        ("/v1/IssueCert", {"not_after": 1.5}, "not_after"),
        ("/v1/IssueCert", {"with_app_info": 1}, "with_app_info"),
        ("/GetQuote", {"report_data": 12}, "report_data"),
    ],
)
def test_wrong_types_are_a_400(
    path: str, target: str, fields: dict[str, object], name: str
) -> None:
    message = error_of(path, post(path, target, json.dumps(fields).encode()), 400)
    assert name in message


@pytest.mark.parametrize(
    ("target", "field", "value"),
    [
        ("/GetQuote", "report_data", "abc"),
        ("/GetQuote", "report_data", "zz"),
        ("/GetQuote", "report_data", "ab cd"),
        ("/GetQuote", "report_data", "0x0x00"),
        ("/Attest", "report_data", "+1"),
        ("/v1/Attest", "report_data", "٣٣"),
        ("/Sign", "data", "0"),
        ("/Verify", "signature", "xyz"),
        ("/v1/AttestGpu", "nonce", "g" * 64),
    ],
)
def test_wrong_hex_is_a_400(path: str, target: str, field: str, value: str) -> None:
    body = {field: value, "algorithm": "secp256k1"}
    message = error_of(path, post(path, target, json.dumps(body).encode()), 400)
    assert field in message
    assert "hex" in message


@pytest.mark.parametrize("target", ["/GetQuote", "/v0/GetQuote", "/Attest", "/v1/Attest"])
def test_65_bytes_of_report_data_are_refused(path: str, target: str) -> None:
    body = json.dumps({"report_data": "00" * 65}).encode()
    message = error_of(path, post(path, target, body), 400)
    assert "65 bytes" in message


def test_a_body_over_the_limit_is_a_413(path: str) -> None:
    body = json.dumps({"path": "a" * MAX_BODY}).encode()
    assert "larger than" in error_of(path, post(path, "/GetKey", body), 413)


def test_a_chunked_body_over_the_limit_is_a_413(path: str) -> None:
    chunk = b"x" * 1024
    parts = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8))
    request = (
        b"POST /GetKey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + parts + b"0\r\n\r\n"
    )
    assert "larger than" in error_of(path, request, 413)


@pytest.mark.parametrize(
    "target", ["/DeriveKey", "/v0/GetAttestationForAppKey", "/v1/Sign", "/v1/Tappd.Info"]
)
def test_unknown_methods_are_a_json_404(path: str, target: str) -> None:
    method = target.rsplit("/", 1)[1]
    message = error_of(path, post(path, target, b"{}"), 404)
    assert message == f"Service not found: {method}"


@pytest.mark.parametrize(
    "target",
    [
        "/prpc/Tappd.Info",
        "/prpc/Worker.Info",
        "/prpc/v1/Health",
        "/v2/GetKey",
        "/v1/a/b",
        "/",
        "/GetKey/",
        "/v1/GetKey/",
        "//GetKey",
    ],
)
def test_unmounted_paths_are_a_plain_404(path: str, target: str) -> None:
    status, headers, body = raw_request(path, post(path, target, b"{}"))
    assert status == 404
    assert not headers["content-type"].startswith("application/json")
    assert b"Service not found" not in body
    alive(path)


@pytest.mark.parametrize("content_type", ["application/protobuf", "application/x-protobuf", None])
def test_protobuf_bodies_are_refused_with_a_json_error(path: str, content_type: str | None) -> None:
    header = b"" if content_type is None else b"Content-Type: %s\r\n" % content_type.encode()
    request = (
        b"POST /GetKey HTTP/1.1\r\nHost: localhost\r\n" + header + b"Content-Length: 4\r\n"
        b"Connection: close\r\n\r\n\x0a\x02ab"
    )
    assert "protobuf" in error_of(path, request, 415)


def test_json_with_a_charset_is_json(path: str) -> None:
    request = post(path, "/Version", b"{}", content_type="application/json; charset=utf-8")
    status, _, _ = raw_request(path, request)
    assert status == 200


def test_a_failing_tee_is_a_400_and_the_server_keeps_answering() -> None:
    app, source = build_app()

    def broken(report_data: bytes) -> bytes:
        raise OSError(f"configfs-tsm: quote generation failed near {ROOT.hex()}")

    source.quote = broken  # type: ignore[method-assign]
    with serving(app) as p:
        message = error_of(p, post(p, "/GetQuote", b'{"report_data": "00"}'), 400)
        assert message == "GetQuote failed: OSError"  # names no detail, so no secret
        alive(p)


def test_the_app_root_is_not_in_repr() -> None:
    keys = agent_keys()
    assert ROOT.hex() not in repr(keys)
    assert str(ROOT) not in repr(keys)


METHODS = [
    "/GetKey",
    "/GetQuote",
    "/Attest",
    "/Info",
    "/GetTlsKey",
    "/Sign",
    "/Verify",
    "/v1/GetKey",
    "/v1/Attest",
    "/v1/IssueCert",
    "/v1/AttestGpu",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
FIELD_NAMES = st.sampled_from(
    [
        "path",
        "purpose",
        "algorithm",
        "domain",
        "report_data",
        "data",
        "signature",
        "public_key",
        "subject",
        "alt_names",
        "not_before",
        "not_after",
        "usage_ra_tls",
        "nonce",
    ]
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    target=st.sampled_from(METHODS),
    body=st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=4).map(json.dumps).map(str.encode)
    | st.binary(max_size=64),
)
def test_any_body_gets_an_answer_and_never_a_500(path: str, target: str, body: bytes) -> None:
    status, headers, response = raw_request(path, post(path, target, body))
    assert status in (200, 400)
    assert headers["content-type"].startswith("application/json")
    if status == 400:
        assert set(json.loads(response)) == {"error"}


def test_keys_whose_public_key_is_not_the_roots_are_refused() -> None:
    from dataclasses import replace

    from guestapi_server import FakeSource, view_of

    from kms.agent.api import make_app

    source = FakeSource()
    keys = replace(agent_keys(), root_public=bytes.fromhex("02" + "11" * 32))
    with pytest.raises(ValueError, match="root_public"):
        make_app(keys, view_of(source), source)


def test_concurrent_requests_all_get_their_answer(path: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    requests = [
        ("/GetKey", {"path": f"p{i}", "purpose": "x", "algorithm": "secp256k1"}) for i in range(8)
    ]
    requests += [("/GetQuote", {"report_data": f"{i:02x}"}) for i in range(8)]
    requests += [("/GetTlsKey", {"subject": f"s{i}", "usage_ra_tls": True}) for i in range(8)]
    requests += [("/GetKey", {"path": 7}) for _ in range(8)]

    def send(item: tuple[str, dict[str, object]]) -> int:
        target, fields = item
        status, _, _ = raw_request(path, post(path, target, json.dumps(fields).encode()))
        return status

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, requests))
    assert statuses == [200] * 24 + [400] * 8
    alive(path)


def test_keys_for_another_app_are_refused() -> None:
    from dataclasses import replace

    from guestapi_server import FakeSource, view_of

    from kms.agent.api import make_app

    source = FakeSource()
    keys = replace(agent_keys(), app_id=b"\x01" * 20)
    with pytest.raises(ValueError, match="app id"):
        make_app(keys, view_of(source), source)
