"""The OpenAPI document is exact: what it admits, the node decodes; what the node serves, docs/api.md shows.

- ``GET /openapi.json`` serves the document, and the copy in docs/api.md is
  the same document.
- Every route of the app is in the document and nothing else is.
- Each body-taking route's JSON schema names exactly the message class the
  route decodes (``@type`` and ``@version`` are constants of that class), and
  its msgpack form names it too.
- Example messages of every JSON form validate, and the node takes them;
  a message of another type, with a field missing or one too many, fails
  both the schema and the node's decoder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from jsonschema import Draft202012Validator
from test_http_bodies import Source

from kms.api.http import make_app
from kms.api.openapi import BODIES, openapi_document
from kms.node.evidence_log import EvidenceKept
from kms.node.release import KeyRefusalReason, ReleaseRefused
from kms.protocol import (
    AppKeyCertBody,
    AppKeyCertRequest,
    AppKeyCertShare,
    EphemeralKey,
    KeyRefusal,
    KeyRequest,
    KeyRequestBody,
    KeyResponse,
    KeyShareResponse,
    PurposeVersion,
    WrongPartialEvidence,
)
from mpc.codec import Message, MessageDecodeError, decode_json
from mpc.membership.messages import ChainUpdate

ROOT = Path(__file__).resolve().parents[3]


def examples() -> dict[str, Message]:
    request = KeyRequest(
        KeyRequestBody(
            app_id=bytes(range(20)),
            purposes=(PurposeVersion("app", 1), PurposeVersion("disk", 7)),
            ephemeral_keys=(EphemeralKey(1, bytes(32)), EphemeralKey(3, b"\x01" * 32)),
            timestamp=1_800_000_000,
            nonce=b"\x02" * 16,
            min_policy_version=0,
            epoch=4,
        ),
        quote=b"\x04\x00" * 300,
        event_log=b"[]",
    )
    share = KeyShareResponse(
        request_hash=request.request_hash(),
        purpose=PurposeVersion("app", 1),
        epoch=4,
        index=3,
        enc=b"\x05" * 32,
        ciphertext=b"\x06" * 64,
        signature=b"\x07" * 64,
    )
    cert_request = AppKeyCertRequest(
        AppKeyCertBody(
            app_id=bytes(range(20)),
            version=1,
            root_public=bytes.fromhex(
                "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
            ),
            timestamp=1_800_000_000,
            nonce=b"\x02" * 16,
            epoch=4,
            min_policy_version=0,
        ),
        quote=b"\x04\x00" * 300,
        event_log=b"[]",
    )
    cert_share = AppKeyCertShare(
        request_hash=cert_request.request_hash(),
        app_id=bytes(range(20)),
        version=1,
        epoch=4,
        index=3,
        root_public=cert_request.body.root_public,
        link_partial=b"\x0a" * 48,
        qkms_partial=b"\x0b" * 48,
        signature=b"\x07" * 64,
    )
    return {
        "AppKeyCertRequest": cert_request,
        "AppKeyCertShare": cert_share,
        "KeyRequest": request,
        "KeyResponse": KeyResponse((share,)),
        "KeyRefusal": KeyRefusal("no-policy", "no current policy for this app"),
        "ChainUpdate": ChainUpdate(("epoch",), (b"\x08" * 40,)),
        "WrongPartialEvidence": WrongPartialEvidence(request, share, b"\x09" * 32),
    }


def validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", **doc})


async def fetch(path: str, source: Source | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=make_app(source or Source()))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        return await client.get(path)


def docs_copy() -> Any:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    section = text[text.index("## OpenAPI 3.1") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    return yaml.safe_load(block.group(1))


def test_the_node_serves_the_document_and_docs_api_md_carries_the_same() -> None:
    served = trio.run(fetch, "/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(openapi_document()))
    assert docs_copy() == served.json(), "regenerate with: python -m kms.api.openapi"


def test_every_route_is_documented_and_nothing_else() -> None:
    app = make_app(Source())
    routes = {
        (m.lower(), r.path) for r in app.routes for m in getattr(r, "methods", ()) if m != "HEAD"
    }
    documented = {(m, p) for p, ops in openapi_document()["paths"].items() for m in ops}
    assert routes == documented


def test_the_schemas_are_valid_json_schema() -> None:
    for schema in openapi_document()["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(("op", "cls"), sorted(BODIES.items(), key=lambda kv: kv[0]))
def test_each_body_schema_names_exactly_the_message_its_route_decodes(
    op: tuple[str, str], cls: type[Message]
) -> None:
    doc = openapi_document()
    content = doc["paths"][op[1]][op[0]]["requestBody"]["content"]
    assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{cls.__name__}"}
    props = doc["components"]["schemas"][cls.__name__]["properties"]
    assert props["@type"] == {"const": cls.TYPE}
    assert props["@version"] == {"const": cls.VERSION}
    mp = content["application/msgpack"]["schema"]
    assert (mp["x-mpc-type"], mp["x-mpc-version"]) == (cls.TYPE, cls.VERSION)


def test_the_policy_route_names_the_policy_bundle() -> None:
    from kms.policy.policy import PolicyBundle

    body = openapi_document()["paths"]["/v1/policies"]["post"]["requestBody"]["content"]
    mp = body["application/msgpack"]["schema"]
    assert (mp["x-mpc-type"], mp["x-mpc-version"]) == (PolicyBundle.TYPE, PolicyBundle.VERSION)


def test_every_message_schema_pins_its_type_and_version() -> None:
    from mpc.codec import message_types

    schemas = openapi_document()["components"]["schemas"]
    registry = message_types()
    described = [s for s in schemas.values() if "@type" in s.get("properties", {})]
    assert len(described) >= 8
    for schema in described:
        cls = registry[schema["properties"]["@type"]["const"]]
        assert schema["properties"]["@version"] == {"const": cls.VERSION}
        assert schema["additionalProperties"] is False


@pytest.mark.parametrize("name", sorted(examples()))
def test_example_messages_validate_and_off_by_one_changes_fail_schema_and_decoder(
    name: str,
) -> None:
    doc = openapi_document()
    check = validator(doc, name)
    msg = examples()[name]
    good = msg.to_json()
    check.validate(good)
    assert decode_json(json.dumps(good)) == msg
    other = next(n for n in examples() if n != name)
    first_field = next(k for k in good if not k.startswith("@"))
    bad_forms = [
        {**good, "@type": examples()[other].TYPE},  # schema-valid before: any string
        {**good, "@version": good["@version"] + 1},
        {k: v for k, v in good.items() if k != first_field},
        {**good, "extra": 1},
    ]
    for bad in bad_forms:
        assert not check.is_valid(bad), bad.get("@type")
        with pytest.raises(MessageDecodeError):
            type(msg).decode_json(json.dumps(bad))


def post_json(path: str, body: dict[str, Any], source: Source) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app(source))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.post(path, json=body)

    return trio.run(go)


@pytest.mark.parametrize(("op", "cls"), sorted(BODIES.items(), key=lambda kv: kv[0]))
def test_a_schema_valid_example_body_is_taken_by_its_route(
    op: tuple[str, str], cls: type[Message]
) -> None:
    doc = openapi_document()
    msg = next(m for m in examples().values() if type(m) is cls)
    body = msg.to_json()
    validator(doc, cls.__name__).validate(body)
    source = Source()
    received: list[bytes] = []
    source.release = lambda request: _capture(received, request)  # type: ignore[method-assign,assignment]
    source.certify = lambda request: _capture(received, request)  # type: ignore[method-assign,assignment]
    source.offer_evidence = lambda raw: (received.append(raw), EvidenceKept("x", 1, 0, "x"))[1]  # type: ignore[method-assign]
    r = post_json(op[1], body, source)
    assert r.status_code < 500
    assert received == [msg.encode()]  # decoded exactly as the schema says, no 400


async def _capture(into: list[bytes], request: KeyRequest | AppKeyCertRequest) -> ReleaseRefused:
    into.append(request.encode())
    return ReleaseRefused(KeyRefusalReason.NO_POLICY, "x")


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        ("KeyRequest", ("body", "purposes", 0, "purpose"), "App"),
        ("KeyRequest", ("body", "purposes", 0, "purpose"), "a b"),
        ("KeyRequest", ("body", "purposes", 0, "purpose"), ""),
        ("KeyRequest", ("body", "purposes", 0, "purpose"), "x" * 65),
        ("KeyRequest", ("body", "app_id"), ""),
        ("KeyRequest", ("body", "purposes"), []),
        ("KeyRequest", ("body", "ephemeral_keys"), []),
        ("KeyRequest", ("body", "nonce"), "00" * 15),
        ("KeyRequest", ("body", "timestamp"), 2**32),
        ("KeyRequest", ("quote",), "0"),
        ("KeyRequest", ("quote",), "AB"),
        ("ChainUpdate", ("kinds", 0), "genesis"),
    ],
)
def test_checks_the_schema_states_are_the_decoders(
    name: str, path: tuple[Any, ...], value: Any
) -> None:
    msg = examples()[name]
    body = msg.to_json()
    at = body
    for key in path[:-1]:
        at = at[key]
    at[path[-1]] = value
    assert not validator(openapi_document(), name).is_valid(body)
    with pytest.raises(MessageDecodeError):
        type(msg).decode_json(json.dumps(body))


def test_the_document_is_built_once_not_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    import kms.api.openapi as openapi

    built = 0
    real = openapi.openapi_document

    def counting() -> dict[str, Any]:
        nonlocal built
        built += 1
        return real()

    monkeypatch.setattr(openapi, "openapi_document", counting)
    app = make_app(Source())

    async def many() -> set[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return {(await client.get("/openapi.json")).status_code for _ in range(50)}

    assert trio.run(many) == {200}
    assert built == 1
