"""The memos in front of pure checks and codings give exactly the unmemoized answers.

Each property runs the memoized path and the plain computation on the same random
inputs, valid and adversarial (mutated encodings, forged or reused signatures,
objects whose ``id`` is reused), and asks for the same verdict and value, also on
the second and later asks, when the answer comes from the memo.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc.cert import EpochCertificate, EpochTranscript, encoding_digest
from mpc.codec import Message, MessageDecodeError, decode
from mpc.dkg.messages import DealBundle, JustificationBundle, ResponseBundle, RunKey
from mpc.errors import InvalidSignature
from mpc.membership.messages import MembershipCertificate, genesis_statement
from mpc.memo import BytesMemo, IdentityMemo, decoder
from mpc.sig import (
    CTX_BROADCAST_DIGEST,
    CTX_BROADCAST_RELAY,
    SigningKey,
    VerifyKey,
    set_key_cache,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _golden() -> ModuleType:
    path = Path(__file__).parent / "golden" / "generate.py"
    spec = importlib.util.spec_from_file_location("memo_golden_generate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOLDEN: dict[str, Message] = _golden().golden_messages()
CERT = GOLDEN["cert/epoch-certificate"]
MEMBERSHIP_CERT = GOLDEN["cert/membership-certificate"]
assert isinstance(CERT, EpochCertificate) and isinstance(MEMBERSHIP_CERT, MembershipCertificate)
ENCODINGS = [m.encode() for m in GOLDEN.values()]


# --- Ed25519: the verified-signature memo of cached keys -------------------------------------

SIGNERS = [SigningKey.from_seed(bytes([i]) * 32) for i in range(3)]


def _verdict(key: VerifyKey, context: bytes, message: bytes, signature: bytes) -> bool:
    try:
        key.verify(context, message, signature)
    except InvalidSignature:
        return False
    return True


@st.composite
def signature_checks(draw: st.DrawFn) -> list[tuple[int, bytes, bytes, bytes]]:
    """Checks against key 0: genuine, forged, reused under another message or context."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        context = draw(st.sampled_from([CTX_BROADCAST_DIGEST, CTX_BROADCAST_RELAY]))
        message = draw(st.binary(max_size=80))
        signer = draw(st.integers(0, len(SIGNERS) - 1))
        signature = SIGNERS[signer].sign(context, message)
        kind = draw(st.sampled_from(["as-is", "flip", "other-message", "other-context"]))
        if kind == "flip":
            pos = draw(st.integers(0, len(signature) - 1))
            signature = (
                signature[:pos]
                + bytes([signature[pos] ^ (1 << draw(st.integers(0, 7)))])
                + signature[pos + 1 :]
            )
        elif kind == "other-message":
            message = message + draw(st.binary(min_size=1, max_size=4))
        elif kind == "other-context":
            context = (
                CTX_BROADCAST_RELAY if context == CTX_BROADCAST_DIGEST else CTX_BROADCAST_DIGEST
            )
        out.append((signer, context, message, signature))
    return out


@PROPERTY
@given(signature_checks(), st.randoms(use_true_random=False))
def test_a_cached_key_gives_the_verdicts_of_a_plain_key(
    checks: list[tuple[int, bytes, bytes, bytes]], order: object
) -> None:
    raw = SIGNERS[0].verify_key().to_bytes()
    plain = VerifyKey.from_bytes(raw)
    previous = set_key_cache({})
    try:
        cached = VerifyKey.from_bytes(raw)
        assert cached is VerifyKey.from_bytes(raw)
        asks = [(c, m, s) for _, c, m, s in checks] * 3
        order.shuffle(asks)  # type: ignore[attr-defined]
        for context, message, signature in asks:
            assert _verdict(cached, context, message, signature) == _verdict(
                plain, context, message, signature
            )
    finally:
        set_key_cache(previous)


def test_a_remembered_signature_does_not_vouch_for_another_message_or_signature() -> None:
    raw = SIGNERS[0].verify_key().to_bytes()
    previous = set_key_cache({})
    try:
        key = VerifyKey.from_bytes(raw)
        sig = SIGNERS[0].sign(CTX_BROADCAST_DIGEST, b"abc")
        key.verify(CTX_BROADCAST_DIGEST, b"abc", sig)
        key.verify(CTX_BROADCAST_DIGEST, b"abc", sig)  # from the memo
        for context, message, signature in [
            (CTX_BROADCAST_DIGEST, b"abcd", sig),
            (CTX_BROADCAST_DIGEST, b"ab", sig),
            (CTX_BROADCAST_RELAY, b"abc", sig),
            (CTX_BROADCAST_DIGEST, b"abc", sig[:-1] + bytes([sig[-1] ^ 1])),
            (CTX_BROADCAST_DIGEST, b"abc", SIGNERS[1].sign(CTX_BROADCAST_DIGEST, b"abc")),
        ]:
            for _ in range(2):
                with pytest.raises(InvalidSignature):
                    key.verify(context, message, signature)
    finally:
        set_key_cache(previous)


def test_keys_outside_the_cache_remember_nothing() -> None:
    key = SIGNERS[0].verify_key()
    sig = SIGNERS[0].sign(CTX_BROADCAST_DIGEST, b"m")
    key.verify(CTX_BROADCAST_DIGEST, b"m", sig)
    assert key._verified is None
    assert VerifyKey.from_bytes(key.to_bytes())._verified is None


# --- the generic memos -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Box:
    value: bytes


@PROPERTY
@given(st.lists(st.binary(max_size=16), min_size=1, max_size=40), st.integers(1, 8))
def test_identity_memo_answers_as_the_function_also_when_ids_are_reused(
    values: list[bytes], limit: int
) -> None:
    calls: list[_Box] = []

    def digest(box: _Box) -> bytes:
        calls.append(box)
        return hashlib.sha256(box.value).digest()

    memo: IdentityMemo[_Box, bytes] = IdentityMemo(digest, limit=limit)
    for v in values:
        box = _Box(v)  # a fresh object, often at the address of a dead one
        assert memo(box) == hashlib.sha256(v).digest()
        assert memo(box) == hashlib.sha256(v).digest()
        assert calls[-1] is box
        del box
        gc.collect(0)


@PROPERTY
@given(st.lists(st.binary(max_size=12), min_size=1, max_size=40), st.integers(1, 8))
def test_bytes_memo_answers_as_the_function_and_never_remembers_a_failure(
    inputs: list[bytes], limit: int
) -> None:
    def parse(data: bytes) -> int:
        if data[:1] == b"\x00":
            raise ValueError("refused")
        return int.from_bytes(hashlib.sha256(data).digest()[:4], "big")

    memo: BytesMemo[int] = BytesMemo(parse, limit=limit)
    for data in inputs * 2:
        buf = bytearray(data)
        try:
            expected: int | None = parse(data)
        except ValueError:
            expected = None
        if expected is None:
            with pytest.raises(ValueError):
                memo(buf)
        else:
            assert memo(buf) == expected
        if buf:
            buf[0] ^= 0xFF  # the caller's buffer changes: the remembered key does not
    assert len(memo._entries) <= limit


def test_bytes_memo_hands_non_bytes_to_the_function() -> None:
    memo: BytesMemo[Message] = BytesMemo(decode)
    for value in (3, "x", None):
        with pytest.raises(MessageDecodeError, match="must be bytes"):
            memo(value)  # type: ignore[arg-type]


# --- certificates: hashes, fingerprints, decoding, genesis statements ---------------------------


def _plain_decode(cls: type[Message], data: bytes) -> Message | None:
    try:
        msg = decode(data)
    except MessageDecodeError:
        return None
    return msg if isinstance(msg, cls) else None


@st.composite
def certificate_bytes(draw: st.DrawFn) -> bytes:
    """A certificate encoding (or another message's), as sent or mutated like an attacker."""
    data = bytearray(draw(st.sampled_from(ENCODINGS)))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "set", "truncate"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.integers(0, 255))
        else:
            del data[pos:]
            if not data:
                break
    return bytes(data)


@PROPERTY
@given(certificate_bytes())
def test_certificate_decoding_gives_the_verdicts_of_plain_decoding(data: bytes) -> None:
    for cls in (EpochCertificate, MembershipCertificate):
        expected = _plain_decode(cls, data)
        for _ in range(2):
            if expected is None:
                with pytest.raises(MessageDecodeError):
                    cls.decode(data)
            else:
                got = cls.decode(data)
                assert type(got) is cls and got == expected and got.encode() == data
                assert got.fingerprint() == hashlib.sha256(data).digest()
                assert got.hash() == hashlib.sha256(data).digest()


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32))
def test_transcript_hashes_and_genesis_statements_match_the_plain_computation(
    epoch: int, attempt: int, policy: bytes
) -> None:
    tr: EpochTranscript = dataclasses.replace(
        CERT.transcript, epoch=epoch, attempt=attempt, admission_policy_hash=policy
    )
    for _ in range(2):
        assert tr.hash() == hashlib.sha256(tr.encode()).digest()
        assert encoding_digest(tr) == tr.hash()
        committee = hashlib.sha256(b"".join(p.encode() for p in tr.committee)).digest()
        assert genesis_statement(tr) == (
            hashlib.sha256(tr.encode()).digest()
            + committee
            + tr.threshold.to_bytes(4, "big")
            + tr.admission_policy_hash
            + tr.mpk
        )
    cert = dataclasses.replace(CERT, transcript=tr)
    assert cert.hash() == cert.fingerprint() == hashlib.sha256(cert.encode()).digest()


DECODED = (RunKey, DealBundle, ResponseBundle, JustificationBundle)
DECODERS = {cls: decoder(cls, limit=4) for cls in DECODED}


@PROPERTY
@given(st.lists(certificate_bytes(), min_size=1, max_size=6))
def test_remembered_decoders_give_the_verdicts_of_plain_decoding(inputs: list[bytes]) -> None:
    for data in inputs * 2:
        for cls, remembered in DECODERS.items():
            expected = _plain_decode(cls, data)
            if expected is None:
                with pytest.raises(MessageDecodeError):
                    remembered(data)
            else:
                assert remembered(data) == expected
