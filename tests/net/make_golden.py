"""Golden envelope bytes: one envelope per registered message type.

``golden_envelopes()`` builds one minimal valid instance of every message type
from fixed bytes only (no keys, no randomness, no protocol runs: a field of
``n`` bytes is ``n`` copies of one byte), wraps each in an envelope with
``epoch = 7`` and ``sender = 3``, and ``golden_envelopes.json`` pins the hex
of each frame. Types are looked up by their wire name in
``mpc.codec.mpc_message_types()``, so moving a class between modules changes
nothing here; changing a schema changes the bytes.

``tests/net/test_codec.py`` recomputes the frames and compares them with the
file, and fails if a registered type has no entry here. Regenerate with::

    .venv/bin/python tests/net/make_golden.py

A diff in the JSON is a wire-format change: bump the envelope's or the
message's ``VERSION`` before committing it. ``--check`` compares without
writing (exit status 1 on a difference).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Any

import mpc
from mpc.codec import Message, message_types
from net.codec import Envelope, encode_envelope


def mpc_message_types() -> dict[str, type]:
    """The wire types of the ``mpc`` protocols (``kms`` registers its own, tested apart)."""
    return {k: v for k, v in message_types().items() if v.__module__.startswith("mpc.")}


GOLDEN_FILE = Path(__file__).with_name("golden_envelopes.json")
EPOCH = 7
SENDER = 3


def import_every_mpc_module() -> None:
    """Register every ``mpc`` message type, whatever this process imported before."""
    for info in pkgutil.walk_packages(mpc.__path__, "mpc."):
        importlib.import_module(info.name)


def fill(tag: int, n: int) -> bytes:
    """``n`` bytes, each ``tag``: the only source of field contents."""
    return bytes([tag]) * n


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def golden_messages() -> dict[str, Message]:
    """One minimal valid instance per wire type name this script knows."""
    types = mpc_message_types()

    def make(type_name: str, /, **fields: Any) -> Message:
        return types[type_name](**fields)

    built: dict[str, Message] = {}

    def add(message: Message) -> Any:
        built[message.TYPE] = message
        return message

    session = fill(0x51, 32)
    payload = b"golden broadcast payload"
    header = add(
        make(
            "bcast/digest",
            session=session,
            sender=1,
            digest=sha256(payload),
            signature=fill(0x5A, 64),
        )
    )
    deal_payload = add(make("bcast/payload", header=header, payload=payload))
    relay = add(make("bcast/relay-signature", relayer=2, signature=fill(0x52, 64)))
    add(make("bcast/relay", header=header, relays=(relay,)))
    add(make("bcast/pull", session=session, sender=1, digest=sha256(payload)))
    other = make(
        "bcast/digest", session=session, sender=1, digest=fill(0xD2, 32), signature=fill(0x5B, 64)
    )
    add(make("evidence/equivocation", first=header, second=other))
    run = fill(0x7A, 32)
    add(
        make(
            "evidence/invalid-justification",
            run=run,
            deal=deal_payload,
            justification=deal_payload,
            recipient=2,
        )
    )
    add(make("evidence/reshare-constant", run=run, deal=deal_payload))

    participants = tuple(
        add(
            make(
                "participant",
                index=i,
                identity=fill(0x10 + i, 32),
                dkg_key=fill(0x20 + i, 32),
                dkg_key_signature=fill(0x30 + i, 64),
            )
        )
        for i in (1, 2)
    )
    share = add(
        make("dkg/encrypted-share", recipient=1, enc=fill(0xE1, 32), ciphertext=fill(0xC1, 48))
    )
    add(make("dkg/deal", dealer=1, commitments=(fill(0xA1, 96), fill(0xA2, 96)), shares=(share,)))
    add(make("dkg/run-key", run=run, index=2, key=fill(0xB1, 32), signature=fill(0xB2, 64)))
    add(make("dkg/deals-request", run=run))
    add(make("dkg/deals", run=run, qual=(1,), deals=(deal_payload,), justifications=()))
    response = add(make("dkg/response", dealer=1, complaint=True))
    add(make("dkg/responses", responder=2, responses=(response,)))
    revealed = add(make("dkg/revealed-share", recipient=2, share=fill(0x5E, 32)))
    add(make("dkg/justification", dealer=1, shares=(revealed,)))

    polynomial = (fill(0x90, 96), fill(0x91, 96))
    transcript = add(
        make(
            "cert/epoch",
            kind="dkg",
            epoch=0,
            attempt=0,
            mpk=polynomial[0],
            threshold=2,
            committee=participants,
            qual_hash=fill(0x71, 32),
            public_polynomial_hash=sha256(b"".join(polynomial)),
            admission_policy_hash=fill(0x72, 32),
            previous_certificate_hash=fill(0x00, 32),
        )
    )
    add(
        make(
            "cert/epoch-certificate",
            transcript=transcript,
            public_polynomial=polynomial,
            signature=fill(0x5C, 48),
        )
    )
    add(make("cert/partial", signer=1, transcript_hash=fill(0x73, 32), signature=fill(0x5D, 48)))
    add(
        make(
            "reshare/ack",
            epoch=1,
            certificate_hash=fill(0x74, 32),
            index=2,
            signature=fill(0x5F, 64),
        )
    )

    add_member = add(make("member/add", participant=participants[1], attestation=b"attestation"))
    add(make("member/remove", index=2, evidence=b"evidence"))
    add(make("member/threshold", threshold=2))
    add(make("member/admission-policy", policy=b"policy"))
    add(make("member/refresh"))
    proposal = add(
        make(
            "member/proposal",
            epoch=1,
            certificate_hash=fill(0x75, 32),
            proposer=1,
            nonce=fill(0x4E, 16),
            add=add_member,
        )
    )
    add(
        make(
            "member/ballot",
            epoch=1,
            window=0,
            member=1,
            proposals=(proposal,),
            approvals=(fill(0x76, 32), fill(0x77, 32)),
        )
    )
    outcome = add(
        make(
            "cert/membership",
            epoch=1,
            window=0,
            previous_certificate_hash=fill(0x78, 32),
            proposal=proposal,
            reshare_start=1_000,
        )
    )
    add(make("cert/membership-certificate", outcome=outcome, signature=fill(0x5E, 48)))
    add(
        make(
            "member/lock",
            outcome=outcome,
            signer=1,
            signature=fill(0x5F, 48),
            proof=(deal_payload,),
        )
    )
    add(make("member/proposal-notice", proposal=proposal))
    add(
        make(
            "member/intent",
            proposals=(proposal,),
            approvals=(fill(0x76, 32),),
            deferred=(fill(0x77, 32),),
        )
    )
    add(
        make(
            "cert/membership-partial",
            signer=1,
            outcome_hash=fill(0x79, 32),
            signature=fill(0x5F, 48),
        )
    )
    add(make("chain/update", kinds=("epoch", "membership"), links=(b"link 1", b"link 2")))
    add(make("chain/request", have=1))
    endorsement = add(
        make(
            "chain/genesis-endorsement",
            signer=1,
            transcript_hash=fill(0xE0, 32),
            signature=fill(0xE1, 64),
        )
    )
    add(make("chain/genesis-endorsements", endorsements=(endorsement,)))
    return dict(sorted(built.items()))


def golden_envelopes() -> dict[str, bytes]:
    """Kind → envelope frame, for every registered type (raises ``SystemExit`` on a gap)."""
    import_every_mpc_module()
    messages = golden_messages()
    missing = sorted(set(mpc_message_types()) - set(messages))
    if missing:
        raise SystemExit(f"no golden instance for {missing}: add one to golden_messages()")
    return {
        kind: encode_envelope(Envelope.of(message, epoch=EPOCH, sender=SENDER))
        for kind, message in messages.items()
    }


def render(frames: dict[str, bytes]) -> str:
    return json.dumps({k: v.hex() for k, v in frames.items()}, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render(golden_envelopes())
    if "--check" in argv:
        current = GOLDEN_FILE.read_text() if GOLDEN_FILE.exists() else ""
        if current != text:
            print(f"{GOLDEN_FILE} is out of date: the wire format changed", file=sys.stderr)
            return 1
        return 0
    GOLDEN_FILE.write_text(text)
    print(f"wrote {len(json.loads(text))} envelopes to {GOLDEN_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
