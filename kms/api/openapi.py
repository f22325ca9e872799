"""The OpenAPI 3.1 document of the public HTTP port, served at ``GET /openapi.json``.

The JSON form of every message a route takes or answers is described
exactly from the message class itself (``mpc.codec``): ``@type`` is the
class's ``TYPE`` as a ``const``, ``@version`` its ``VERSION``, one member per
field with its type, sizes and bounds, nothing else allowed. A body that
fails the schema is refused by the node; a body that passes it still meets
each message's own semantic checks (sorted indices, purpose names, a quote
binding its body), which no schema expresses. ``docs/api.md`` carries a copy,
kept equal to this document by a test.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Annotated, Any, Union, get_args, get_origin

from kms.api.limits import CHAIN_PAGE_BYTES, CHAIN_PAGE_LINKS, MAX_BODY
from kms.protocol import (
    AppKeyCertRequest,
    AppKeyCertShare,
    KeyRefusal,
    KeyRequest,
    KeyResponse,
    WrongPartialEvidence,
)
from mpc.codec import MAX_INT, MAX_ITEMS, MaxSize, Message, Size
from mpc.membership.messages import ChainUpdate

BODIES: dict[tuple[str, str], type[Message]] = {
    ("post", "/v1/keys"): KeyRequest,
    ("post", "/v1/app-key-cert"): AppKeyCertRequest,
    ("post", "/v1/evidence"): WrongPartialEvidence,
}
"""The message each body-taking route decodes from JSON (and msgpack)."""


SEMANTIC: dict[tuple[str, str], dict[str, Any]] = {
    ("kms/purpose", "purpose"): {"pattern": "^[a-z0-9._-]{1,64}$"},
    ("kms/key-request-body", "app_id"): {"minLength": 2},
    ("kms/key-request-body", "purposes"): {"minItems": 1},
    ("kms/key-request-body", "ephemeral_keys"): {"minItems": 1},
    ("kms/app-key-cert-body", "app_id"): {"minLength": 2},
    ("chain/update", "kinds"): {"items": {"enum": ["epoch", "membership"]}},
}
"""Checks of a message's own ``validate()`` that a schema can state (the rest are in the text)."""


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(tp: Any, out: dict[str, Any]) -> dict[str, Any]:
    limit: Size | MaxSize | None = None
    if get_origin(tp) is Annotated:
        tp, *extras = get_args(tp)
        limit = next((e for e in extras if isinstance(e, Size | MaxSize)), None)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = next(a for a in get_args(tp) if a is not type(None))
        inner_tp = Annotated[inner, limit] if limit else inner
        return {"anyOf": [_field_schema(inner_tp, out), {"type": "null"}]}
    if origin is tuple:
        items = _field_schema(get_args(tp)[0], out)
        return {
            "type": "array",
            "items": items,
            "maxItems": limit.n if isinstance(limit, MaxSize) else MAX_ITEMS,
        }
    if isinstance(tp, type) and issubclass(tp, Message):
        _message_schema(tp, out)
        return _ref(tp.__name__)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):  # encoded as its value
        kind = "string" if all(isinstance(m.value, str) for m in tp) else "integer"
        return {"type": kind, "enum": [m.value for m in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "minimum": 0, "maximum": MAX_INT}
    if tp is bytes:
        s: dict[str, Any] = {"type": "string", "pattern": "^([0-9a-f]{2})*$"}
        if isinstance(limit, Size):
            s["minLength"] = s["maxLength"] = 2 * limit.n
        elif isinstance(limit, MaxSize):
            s["maxLength"] = 2 * limit.n
        return s
    if tp is str:
        s = {"type": "string"}
        if isinstance(limit, MaxSize):
            # A bound on UTF-8 bytes, which no JSON Schema keyword expresses; exact for ASCII.
            s["maxLength"] = limit.n
            s["description"] = f"at most {limit.n} bytes of UTF-8"
        return s
    raise TypeError(f"no schema for field type {tp!r}")


def _message_schema(cls: type[Message], out: dict[str, Any]) -> None:
    """Add the JSON form of ``cls`` (and of every message it nests) to ``out``."""
    if cls.__name__ in out:
        return
    out[cls.__name__] = {}  # reserve: nested types refer to it by name
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    props: dict[str, Any] = {
        "@type": {"const": cls.TYPE},
        "@version": {"const": cls.VERSION},
    }
    for n in names:
        props[n] = {**_field_schema(hints[n], out), **SEMANTIC.get((cls.TYPE, n), {})}
    out[cls.__name__] = {
        "type": "object",
        "description": f"The JSON form of {cls.TYPE} version {cls.VERSION}.",
        "required": ["@type", "@version", *names],
        "properties": props,
        "additionalProperties": False,
    }


def _msgpack(cls: type[Message]) -> dict[str, Any]:
    return {
        "type": "string",
        "format": "binary",
        "contentMediaType": "application/msgpack",
        "description": f"The canonical msgpack encoding of {cls.TYPE} version {cls.VERSION} "
        f"(the array [TYPE, VERSION, fields...], fields as in {cls.__name__}).",
        "x-mpc-type": cls.TYPE,
        "x-mpc-version": cls.VERSION,
    }


def _message_content(cls: type[Message], *, json_form: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {"application/msgpack": {"schema": _msgpack(cls)}}
    if json_form:
        content["application/json"] = {"schema": _ref(cls.__name__)}
    return content


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _resp(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if content is not None:
        out["content"] = content
    return out


BODY_REFUSALS = {
    "413": _resp(
        f"The body is larger than {MAX_BODY} bytes (by Content-Length, or as it arrives); "
        "the rest of it is not read.",
        _json("BodyRefusal"),
    ),
}


def openapi_document() -> dict[str, Any]:
    """The document; plain JSON data (``dict``/``list``/``str``/``int``/``bool``)."""
    from kms.policy.policy import PolicyBundle

    schemas: dict[str, Any] = {}
    for cls in (
        KeyRequest,
        KeyResponse,
        KeyRefusal,
        ChainUpdate,
        WrongPartialEvidence,
        AppKeyCertRequest,
        AppKeyCertShare,
    ):
        _message_schema(cls, schemas)
    schemas.update(_PLAIN_SCHEMAS)
    refusal_json = {"anyOf": [_ref("KeyRefusal"), _ref("BodyRefusal")]}
    paths: dict[str, Any] = {
        "/health": {
            "get": {
                "summary": "Liveness of the node",
                "responses": {
                    "200": _resp(
                        "The node is a member of the current epoch, or its genesis DKG is"
                        " scheduled or runs.",
                        _json("Health"),
                    ),
                    "503": _resp(
                        "Not healthy: not a member of the current epoch (removed, or joining"
                        " and not certified yet), or no epoch and no genesis DKG, or the"
                        " node's disk is full (health starts with storage-full).",
                        _json("Health"),
                    ),
                },
            }
        },
        "/v1/status": {
            "get": {
                "summary": "Epoch, committee, master public key, peers, key release settings",
                "responses": {"200": _resp("The node's status.", _json("Status"))},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": _resp(
                        "Prometheus text exposition format 0.0.4.",
                        {"text/plain": {"schema": {"type": "string"}}},
                    )
                },
            }
        },
        "/v1/keys": {
            "post": {
                "summary": "Ask this node for its partials of an app's keys",
                "requestBody": {
                    "required": True,
                    "description": f"A KeyRequest, at most {MAX_BODY} bytes. The quote's "
                    "report_data must be SHA-512 of the canonical encoding of the request body.",
                    "content": _message_content(KeyRequest),
                },
                "responses": {
                    "200": _resp(
                        "One encrypted, signed partial per requested purpose.",
                        _message_content(KeyResponse),
                    ),
                    "400": _resp(
                        "A body (msgpack or JSON) that does not decode as a KeyRequest, or an "
                        "answer it cannot be sealed to (KeyRefusal malformed-request), or an "
                        "unusable Content-Length (BodyRefusal, JSON).",
                        {
                            "application/msgpack": {"schema": _msgpack(KeyRefusal)},
                            "application/json": {"schema": refusal_json},
                        },
                    ),
                    "403": _resp(
                        "Refused; reason is a code of kms.node.release.KeyRefusalReason.",
                        _message_content(KeyRefusal),
                    ),
                    **BODY_REFUSALS,
                    "503": _resp(
                        "The node releases no keys (a KeyRefusal not-serving), or its disk"
                        " is full (a KeyRefusal storage-full: ask another node or retry), or"
                        " storing the request's records failed otherwise (storage-error: retry).",
                        _message_content(KeyRefusal),
                    ),
                },
            }
        },
        "/v1/app-key-cert": {
            "post": {
                "summary": "Ask this node for its partial certificate of an app root key",
                "requestBody": {
                    "required": True,
                    "description": f"An AppKeyCertRequest, at most {MAX_BODY} bytes. The "
                    "quote's report_data must be SHA-512 of the canonical encoding of the "
                    "request body (kms/app-key-cert-body: a key request's quote is refused). "
                    "The node runs the key-release checks for purpose dstack-app-root at key "
                    "version body.version, which must be the app policy's current root "
                    "version.",
                    "content": _message_content(AppKeyCertRequest),
                },
                "responses": {
                    "200": _resp(
                        "Two partial BLS signatures under DST_APPCERT (link and quorum-kms "
                        "messages), signed by the node's identity.",
                        _message_content(AppKeyCertShare),
                    ),
                    "400": _resp(
                        "A body (msgpack or JSON) that does not decode as an "
                        "AppKeyCertRequest (KeyRefusal malformed-request), or an unusable "
                        "Content-Length (BodyRefusal, JSON).",
                        {
                            "application/msgpack": {"schema": _msgpack(KeyRefusal)},
                            "application/json": {"schema": refusal_json},
                        },
                    ),
                    "403": _resp(
                        "Refused; reason is a code of kms.node.release.KeyRefusalReason "
                        "(not-current-root-version and app-key-conflict are certificate "
                        "requests' own).",
                        _message_content(KeyRefusal),
                    ),
                    **BODY_REFUSALS,
                    "503": _resp(
                        "The node releases no keys (a KeyRefusal not-serving), or its disk"
                        " is full (a KeyRefusal storage-full: ask another node or retry), or"
                        " storing the request's records failed otherwise (storage-error: retry).",
                        _message_content(KeyRefusal),
                    ),
                },
            }
        },
        "/v1/chain": {
            "get": {
                "summary": "Genesis and the recent tail of the node's epoch chain",
                "description": (
                    "Without parameters: genesis and the tail from the epoch certificate "
                    "before the head (the whole chain while it is short). With from, limit "
                    "or max_bytes: the links the node keeps from position `from` (E_e at "
                    "2e, M_e at 2e + 1), at most `limit` links and `max_bytes` bytes; the "
                    "headers x-chain-first, x-chain-next and x-chain-head give the first "
                    "position served, the position to ask for next and the head's position."
                ),
                "parameters": [
                    {
                        "name": "from",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "default": 0},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": CHAIN_PAGE_LINKS,
                            "default": CHAIN_PAGE_LINKS,
                        },
                    },
                    {
                        "name": "max_bytes",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "default": CHAIN_PAGE_BYTES,
                        },
                    },
                ],
                "responses": {
                    "200": _resp(
                        "A ChainUpdate; verify it from the pinned master public key "
                        "before using anything in it.",
                        _message_content(ChainUpdate),
                    ),
                    "400": _resp("A paging parameter out of range.", _json("Error")),
                },
            }
        },
        "/v1/policies": {
            "post": {
                "summary": "Offer an app's signed policy to the node",
                "requestBody": {
                    "required": True,
                    "description": f"A PolicyBundle, msgpack only, at most {MAX_BODY} bytes.",
                    "content": {"application/msgpack": {"schema": _msgpack(PolicyBundle)}},
                },
                "responses": {
                    "200": _resp("Accepted (or already held).", _json("PolicyOffer")),
                    "400": _resp(
                        "Malformed, or an unusable Content-Length.",
                        {
                            "application/json": {
                                "schema": {"anyOf": [_ref("PolicyOffer"), _ref("BodyRefusal")]}
                            }
                        },
                    ),
                    "409": _resp("Refused with a PolicyFailure reason.", _json("PolicyOffer")),
                    **BODY_REFUSALS,
                    "503": _resp(
                        "The node serves no keys, or its disk is full (reason storage-full).",
                        _json("PolicyOffer"),
                    ),
                },
            }
        },
        "/v1/policies/{app_id}": {
            "get": {
                "summary": "The unexpired policy the node holds for an app",
                "parameters": [
                    {
                        "name": "app_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^([0-9a-fA-F]{2})*$"},
                    }
                ],
                "responses": {
                    "200": _resp("The policy held.", _json("PolicyInfo")),
                    "400": _resp("The app id is not hex.", _json("Error")),
                    "404": _resp("No current policy.", _json("Error")),
                },
            }
        },
        "/v1/evidence": {
            "post": {
                "summary": "Disclose evidence of a node's wrong partial",
                "requestBody": {
                    "required": True,
                    "description": f"A WrongPartialEvidence, at most {MAX_BODY} bytes.",
                    "content": _message_content(WrongPartialEvidence),
                },
                "responses": {
                    "200": _resp("Verified and kept.", _json("EvidenceOffer")),
                    "400": _resp(
                        "Malformed, or an unusable Content-Length.",
                        {
                            "application/json": {
                                "schema": {"anyOf": [_ref("EvidenceOffer"), _ref("BodyRefusal")]}
                            }
                        },
                    ),
                    "409": _resp(
                        "Does not verify, or names an unknown epoch.", _json("EvidenceOffer")
                    ),
                    **BODY_REFUSALS,
                    "503": _resp(
                        "The node has no chain yet, or its disk is full (reason storage-full).",
                        _json("EvidenceOffer"),
                    ),
                },
            }
        },
        "/v1/audit/head": {
            "get": {
                "summary": "The audit log's count and head hash, signed by the node",
                "responses": {"200": _resp("The signed head.", _json("AuditHead"))},
            }
        },
        "/v1/audit": {
            "get": {
                "summary": "Not served here: the audit log is exported on the admin channel",
                "responses": {"403": _resp("Always.", _json("AdminOnly"))},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": _resp(
                        "OpenAPI 3.1.", {"application/json": {"schema": {"type": "object"}}}
                    )
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "quorum-kms node",
            "version": "2",
            "description": "The public HTTP port of a quorum-kms node. application/msgpack "
            "bodies are canonical mpc.codec msgpack arrays [TYPE, VERSION, fields...]; "
            "application/json bodies are the same messages as objects "
            '{"@type": TYPE, "@version": VERSION, field: value, ...} with bytes as '
            "lowercase hex. A schema-valid message still meets its own semantic "
            "checks (docs/api.md).",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


_NULLABLE_INT = {"type": ["integer", "null"]}
_HEX = {"type": "string", "pattern": "^([0-9a-f]{2})*$"}

_PLAIN_SCHEMAS: dict[str, Any] = {
    "BodyRefusal": {
        "type": "object",
        "required": ["reason", "detail", "limit"],
        "properties": {
            "reason": {"enum": ["body-too-large", "bad-content-length"]},
            "detail": {"type": "string"},
            "limit": {"type": "integer", "const": MAX_BODY},
        },
        "additionalProperties": False,
    },
    "AdminOnly": {
        "type": "object",
        "required": ["reason", "detail"],
        "properties": {"reason": {"const": "admin-only"}, "detail": {"type": "string"}},
        "additionalProperties": False,
    },
    "AuditHead": {
        "type": "object",
        "description": "signature: Ed25519 by identity under quorum-kms/v1/kms/audit-head "
        "over u64be count || head.",
        "required": ["count", "head", "identity", "signature"],
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "head": {**_HEX, "minLength": 64, "maxLength": 64},
            "identity": {**_HEX, "minLength": 64, "maxLength": 64},
            "signature": {**_HEX, "minLength": 128, "maxLength": 128},
        },
        "additionalProperties": False,
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "PolicyOffer": {
        "type": "object",
        "required": ["accepted"],
        "properties": {
            "accepted": {"type": "boolean"},
            "reason": {"type": "string"},
            "detail": {"type": "string"},
            "version": {"type": "integer"},
            "held_version": _NULLABLE_INT,
            "app_id": {"type": "string"},
            "duplicate": {"type": "boolean"},
        },
    },
    "PolicyInfo": {
        "type": "object",
        "required": ["app_id", "version"],
        "properties": {"app_id": {"type": "string"}, "version": {"type": "integer"}},
    },
    "EvidenceOffer": {
        "type": "object",
        "required": ["accepted"],
        "properties": {
            "accepted": {"type": "boolean"},
            "reason": {
                "enum": [
                    "malformed",
                    "does-not-verify",
                    "unknown-epoch",
                    "not-serving",
                    "storage-full",
                    "evidence-log-full",
                ]
            },
            "detail": {"type": "string"},
            "id": {"type": "string"},
            "node": {"type": "integer"},
            "epoch": {"type": "integer"},
            "proves": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["ok", "epoch", "member", "health"],
        "properties": {
            "ok": {"type": "boolean"},
            "epoch": _NULLABLE_INT,
            "member": {"type": "boolean"},
            "health": {"type": "string"},
        },
    },
    "Status": {
        "type": "object",
        "required": [
            "index",
            "peer_id",
            "epoch",
            "threshold",
            "master_public_key",
            "committee",
            "has_share",
            "running",
            "pending_proposals",
            "retained_shares",
            "last_refresh",
            "peers",
            "healthy",
            "member",
            "health",
            "decision_window",
            "now",
            "genesis",
            "next_window",
            "serves_keys",
            "simulated_quotes_accepted",
            "collateral",
        ],
        "properties": {
            "index": {"type": "integer"},
            "peer_id": {"type": "string"},
            "epoch": _NULLABLE_INT,
            "threshold": _NULLABLE_INT,
            "master_public_key": {
                "type": ["string", "null"],
                "description": "96-byte compressed G2 point, hex.",
            },
            "committee": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "peer_id"],
                    "properties": {
                        "index": {"type": "integer"},
                        "peer_id": {"type": "string"},
                        "url": {
                            "type": ["string", "null"],
                            "description": "The member's HTTP URL where this node knows it: "
                            "its own, or certified with the member's AddMember in the chain.",
                        },
                    },
                },
            },
            "has_share": {"type": "boolean"},
            "storage": {
                "type": "object",
                "description": "Whether the node's disk is full: it then refuses work until"
                " a write succeeds (operator guide, 'The disk is full').",
                "properties": {
                    "full": {"type": "boolean"},
                    "since": {"type": ["number", "null"]},
                    "held_step": {"type": "boolean"},
                    "error": {"type": ["string", "null"]},
                },
            },
            "running": {"enum": ["dkg", "reshare", None]},
            "pending_proposals": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "kind", "approvals"],
                    "properties": {
                        "id": {"type": "string"},
                        "kind": {"type": "string"},
                        "approvals": {"type": "integer"},
                    },
                },
            },
            "retained_shares": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["epoch", "missing_acknowledgements"],
                    "properties": {
                        "epoch": {"type": "integer"},
                        "missing_acknowledgements": {"type": "array", "items": {"type": "integer"}},
                    },
                },
            },
            "last_refresh": {"type": ["number", "null"]},
            "peers": {"type": "array", "items": {"type": "string"}},
            "healthy": {"type": "boolean"},
            "member": {"type": "boolean"},
            "health": {"type": "string"},
            "decision_window": {
                "type": ["object", "null"],
                "required": ["index", "phase"],
                "properties": {"index": {"type": "integer"}, "phase": {"type": "string"}},
            },
            "now": {"type": "number"},
            "genesis": {
                "type": ["object", "null"],
                "required": ["at", "in_seconds"],
                "properties": {"at": {"type": "number"}, "in_seconds": {"type": "number"}},
            },
            "next_window": {
                "type": ["object", "null"],
                "required": ["index", "at", "in_seconds"],
                "properties": {
                    "index": {"type": "integer"},
                    "at": {"type": "number"},
                    "in_seconds": {"type": "number"},
                },
            },
            "serves_keys": {"type": "boolean"},
            "serves_keys_reason": {
                "type": ["string", "null"],
                "description": "When serves_keys is false: why, and the settings that turn "
                "key release on.",
            },
            "collateral": {"type": ["string", "null"]},
            "simulated_quotes_accepted": {"type": "boolean"},
        },
    },
}


def as_yaml() -> str:
    """The document as YAML, the form ``docs/api.md`` carries."""
    import yaml

    return str(yaml.safe_dump(openapi_document(), sort_keys=False, width=88, allow_unicode=True))


if __name__ == "__main__":
    import sys

    sys.stdout.write(as_yaml())
