"""Run by the dstack SDK's own interpreter (``.venv-dstack-sdk``), not by pytest: every
SDK call ``tests/kms/agent/test_sdk.py`` checks, against the agent named by
``DSTACK_SIMULATOR_ENDPOINT``; prints one JSON object of what the SDK returned.

Usage: ``sdk_probe.py all`` (every call) or ``sdk_probe.py keys`` (the keys only)."""

from __future__ import annotations

import json
import sys
import time

import httpx
from dstack_sdk import DstackClient

PATHS = [("wallet/main", "ethereum"), ("disk", "encryption"), ("", "")]
ALGORITHMS = ["secp256k1", "k256", "", "ed25519"]


def keys(c: DstackClient) -> dict[str, object]:
    out: dict[str, object] = {}
    for path, purpose in PATHS:
        for alg in ALGORITHMS:
            r = c.get_key(path, purpose, alg)
            out[f"{path}|{purpose}|{alg}"] = {"key": r.key, "chain": r.signature_chain}
    return out


def everything(c: DstackClient) -> dict[str, object]:
    out: dict[str, object] = {"reachable": c.is_reachable(), "keys": keys(c)}
    v = c.version()
    out["version"] = {"version": v.version, "rev": v.rev}
    info = c.info()
    tcb = info.tcb_info
    out["info"] = {
        "app_id": info.app_id,
        "instance_id": info.instance_id,
        "compose_hash": info.compose_hash,
        "key_provider_info": info.key_provider_info,
        "app_compose": tcb.app_compose,
        "rtmrs": [tcb.rtmr0, tcb.rtmr1, tcb.rtmr2, tcb.rtmr3],
        "mrtd": tcb.mrtd,
    }
    q = c.get_quote(b"quorum-kms sdk probe")
    out["quote"] = {
        "quote": q.quote,
        "report_data": q.report_data,
        "replayed": {str(k): v for k, v in q.replay_rtmrs().items()},
        "events": len(q.decode_event_log()),
    }
    out["attestation"] = c.attest(b"quorum-kms attest").attestation
    signed = {}
    for alg in ("secp256k1", "ed25519"):
        s = c.sign(alg, b"hello dstack")
        ok = c.verify(alg, b"hello dstack", s.decode_signature(), s.decode_public_key()).valid
        bad = c.verify(alg, b"hello dstack!", s.decode_signature(), s.decode_public_key()).valid
        signed[alg] = {
            "signature": s.signature,
            "chain": s.signature_chain,
            "public_key": s.public_key,
            "valid": ok,
            "valid_for_other_data": bad,
        }
    out["sign"] = signed
    plain = c.get_tls_key()
    now = int(time.time())
    ra = c.get_tls_key(
        subject="app.example",
        alt_names=["app.example", "127.0.0.1"],
        usage_ra_tls=True,
        usage_client_auth=True,
        not_before=now - 60,
        not_after=now + 86400,
        with_app_info=True,
    )
    out["tls"] = {
        "default": {"key": plain.key, "chain": plain.certificate_chain},
        "ra": {"key": ra.key, "chain": ra.certificate_chain, "not_before": now - 60},
    }
    try:
        c.emit_event("app-event", b"payload")
        out["emit_event"] = {"status": 200}
    except httpx.HTTPStatusError as exc:
        out["emit_event"] = {"status": exc.response.status_code, "body": exc.response.text}
    return out


if __name__ == "__main__":
    client = DstackClient(timeout=30)
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    print(json.dumps(everything(client) if what == "all" else {"keys": keys(client)}))
