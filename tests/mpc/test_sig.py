"""Tests for ``mpc.sig``: Ed25519 node signatures with per-kind context framing."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import sig
from mpc.errors import InvalidEncoding, InvalidSignature, LocalProtocolError

# RFC 8032 §7.1 TEST 1.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PK = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

# Order of the Ed25519 prime-order subgroup (RFC 8032 §5.1).
L = 2**252 + 27742317777372353535851937790883648493

# Encodings of small-order (torsion) points: orders 1, 2, 4, 4, 8, 8, 8, 8.
SMALL_ORDER_ED25519 = [
    "01" + "00" * 31,
    "ec" + "ff" * 30 + "7f",
    "00" * 32,
    "00" * 31 + "80",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
]

# Not points: y = 2 is off the curve; y >= p is non-canonical; x = 0 with sign bit 1.
INVALID_ED25519 = [
    "02" + "00" * 31,
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
    "ff" * 32,
    "01" + "00" * 30 + "80",
]

CONTEXT_NAMES = sorted(sig.CONTEXTS)


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    return random.Random(seed).randbytes


@pytest.fixture
def key() -> sig.SigningKey:
    return sig.SigningKey.generate(seeded_rng(1))


# --- Round trip and known answers --------------------------------------------------------------


@pytest.mark.parametrize("name", CONTEXT_NAMES)
def test_sign_verify_round_trip(key: sig.SigningKey, name: str) -> None:
    context = sig.CONTEXTS[name]
    signature = key.sign(context, b"payload")
    assert len(signature) == sig.SIGNATURE_LENGTH
    key.verify_key().verify(context, b"payload", signature)


def test_rfc8032_seed_to_public_key() -> None:
    sk = sig.SigningKey.from_seed(RFC8032_SEED)
    assert sk.verify_key().to_bytes() == RFC8032_PK
    assert sk.seed_bytes() == RFC8032_SEED
    assert sig.VerifyKey.from_bytes(RFC8032_PK) == sk.verify_key()


def test_signed_bytes_are_length_prefixed_context_then_message() -> None:
    """Pin the framing: plain Ed25519 over ``len(ctx) || ctx || msg``."""
    sk = sig.SigningKey.from_seed(RFC8032_SEED)
    signature = sk.sign(sig.CTX_DKG_DEAL, b"message")
    framed = bytes([len(sig.CTX_DKG_DEAL)]) + sig.CTX_DKG_DEAL + b"message"
    Ed25519PublicKey.from_public_bytes(RFC8032_PK).verify(signature, framed)
    assert signature == sk.sign(sig.CTX_DKG_DEAL, b"message")  # Ed25519 is deterministic


def test_generate_uses_rng_seed() -> None:
    sk = sig.SigningKey.generate(lambda n: RFC8032_SEED[:n])
    assert sk.seed_bytes() == RFC8032_SEED
    assert sk.verify_key().to_bytes() == RFC8032_PK


def test_seed_round_trip(key: sig.SigningKey) -> None:
    again = sig.SigningKey.from_seed(key.seed_bytes())
    assert again.verify_key() == key.verify_key()
    assert again.sign(sig.CTX_DKG_KEY, b"k") == key.sign(sig.CTX_DKG_KEY, b"k")


# --- Verification failures ---------------------------------------------------------------------


def test_wrong_context_fails(key: sig.SigningKey) -> None:
    signature = key.sign(sig.CTX_DKG_DEAL, b"m")
    for other in sig.CONTEXTS.values():
        if other != sig.CTX_DKG_DEAL:
            with pytest.raises(InvalidSignature):
                key.verify_key().verify(other, b"m", signature)


def test_framing_is_injective(key: sig.SigningKey) -> None:
    """Moving bytes between context and message changes the signed bytes."""
    signature = key.sign(sig.CTX_DKG_DEAL, b"/x")
    with pytest.raises(InvalidSignature):
        key.verify_key().verify(sig.CTX_DKG_DEAL + b"/x", b"", signature)
    with pytest.raises(InvalidSignature):
        key.verify_key().verify(sig.CTX_DKG_DEAL + b"/", b"x", signature)


def test_wrong_message_fails(key: sig.SigningKey) -> None:
    signature = key.sign(sig.CTX_KEY_RESPONSE, b"message")
    for other in (b"messagE", b"message\x00", b"messag", b""):
        with pytest.raises(InvalidSignature):
            key.verify_key().verify(sig.CTX_KEY_RESPONSE, other, signature)


def test_wrong_key_fails(key: sig.SigningKey) -> None:
    signature = key.sign(sig.CTX_RESHARE_ACK, b"m")
    other = sig.SigningKey.generate(seeded_rng(2))
    with pytest.raises(InvalidSignature):
        other.verify_key().verify(sig.CTX_RESHARE_ACK, b"m", signature)


def test_truncated_or_extended_signature_fails(key: sig.SigningKey) -> None:
    signature = key.sign(sig.CTX_MEMBERSHIP_VOTE, b"m")
    vk = key.verify_key()
    for bad in (signature[:-1], signature[:32], b"", signature + b"\x00", bytes(64)):
        with pytest.raises(InvalidSignature):
            vk.verify(sig.CTX_MEMBERSHIP_VOTE, b"m", bad)


def test_every_bit_flip_fails(key: sig.SigningKey) -> None:
    signature = key.sign(sig.CTX_BROADCAST_DIGEST, b"digest")
    vk = key.verify_key()
    for i in range(len(signature)):
        for bit in range(8):
            bad = bytearray(signature)
            bad[i] ^= 1 << bit
            with pytest.raises(InvalidSignature):
                vk.verify(sig.CTX_BROADCAST_DIGEST, b"digest", bytes(bad))


def test_malleated_s_fails(key: sig.SigningKey) -> None:
    """``S + L`` is the same scalar mod L but must be refused (RFC 8032 §5.1.7: S < L)."""
    signature = key.sign(sig.CTX_BROADCAST_RELAY, b"m")
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + L).to_bytes(32, "little")
    with pytest.raises(InvalidSignature):
        key.verify_key().verify(sig.CTX_BROADCAST_RELAY, b"m", malleated)


# --- Keys --------------------------------------------------------------------------------------


def test_repr_redacted(key: sig.SigningKey) -> None:
    assert repr(key) == "<redacted>"
    assert str(key) == "<redacted>"
    assert key.seed_bytes().hex() not in repr(key)
    assert key.verify_key().to_bytes().hex() in repr(key.verify_key())


def test_verify_key_equality_and_hash(key: sig.SigningKey) -> None:
    vk = key.verify_key()
    same = sig.VerifyKey.from_bytes(vk.to_bytes())
    other = sig.SigningKey.generate(seeded_rng(3)).verify_key()
    assert vk == same
    assert hash(vk) == hash(same)
    assert vk != other
    assert vk != vk.to_bytes()
    assert len({vk, same, other}) == 2


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_length_keys_rejected(length: int) -> None:
    with pytest.raises(InvalidEncoding):
        sig.VerifyKey.from_bytes(b"\x01" * length)
    with pytest.raises(InvalidEncoding):
        sig.SigningKey.from_seed(b"\x01" * length)


@pytest.mark.parametrize("encoding", SMALL_ORDER_ED25519)
def test_small_order_verify_key_rejected(encoding: str) -> None:
    with pytest.raises(InvalidEncoding, match="small-order"):
        sig.VerifyKey.from_bytes(bytes.fromhex(encoding))


@pytest.mark.parametrize("encoding", INVALID_ED25519)
def test_invalid_point_verify_key_rejected(encoding: str) -> None:
    with pytest.raises(InvalidEncoding, match="not a valid curve point"):
        sig.VerifyKey.from_bytes(bytes.fromhex(encoding))


def test_remembered_point_checks_give_the_same_verdicts_and_stay_bounded() -> None:
    sig._point_refusal.cache_clear()
    bad = [bytes.fromhex(e) for e in SMALL_ORDER_ED25519 + INVALID_ED25519]
    for _ in range(2):  # the second round answers from memory, with the same refusals
        for data in bad:
            with pytest.raises(InvalidEncoding):
                sig.VerifyKey.from_bytes(data)
        assert sig.VerifyKey.from_bytes(RFC8032_PK).to_bytes() == RFC8032_PK
    assert sig._point_refusal.cache_info().hits >= len(bad) + 1
    # A flood of distinct valid keys only evicts older entries.
    for i in range(sig.POINT_CHECK_CACHE + 50):
        public = sig.SigningKey.from_seed(i.to_bytes(32, "big")).verify_key().to_bytes()
        sig.VerifyKey.from_bytes(public)
    assert sig._point_refusal.cache_info().currsize == sig.POINT_CHECK_CACHE
    with pytest.raises(InvalidEncoding, match="small-order"):
        sig.VerifyKey.from_bytes(bad[0])


def test_a_bytes_subclass_cannot_steer_the_point_check() -> None:
    # The check and the key must both use the object's own contents: a subclass whose
    # __bytes__ hands over an object with a lying __hash__/__eq__ would otherwise hit
    # the remembered verdict of an honest key.
    good = sig.SigningKey.from_seed(bytes(range(32))).verify_key().to_bytes()
    small = bytes.fromhex(SMALL_ORDER_ED25519[0])
    sig.VerifyKey.from_bytes(good)

    class Liar(bytes):
        def __hash__(self) -> int:
            return hash(good)

        def __eq__(self, other: object) -> bool:
            return True

    class Carrier(bytes):
        def __bytes__(self) -> bytes:
            return Liar(small)

    class Innocent(bytes):
        def __bytes__(self) -> bytes:
            return good

    with pytest.raises(InvalidEncoding, match="small-order"):
        sig.VerifyKey.from_bytes(Carrier(small))
    with pytest.raises(InvalidEncoding, match="small-order"):
        sig.VerifyKey.from_bytes(Innocent(small))
    assert sig.VerifyKey.from_bytes(Carrier(good)).to_bytes() == good


def test_generate_rejects_bad_rng() -> None:
    with pytest.raises(LocalProtocolError):
        sig.SigningKey.generate(lambda n: b"\x00" * (n + 1))


# --- Contexts ----------------------------------------------------------------------------------


def test_context_registry_distinct_and_well_formed() -> None:
    values = list(sig.CONTEXTS.values())
    assert len(values) == len(set(values)) == 13
    for name, context in sig.CONTEXTS.items():
        assert name.startswith("CTX_")
        assert getattr(sig, name) == context
        assert context.startswith(sig.CONTEXT_PREFIX)
        assert 0 < len(context) <= 255
        sig.check_context(context)
    module_constants = {n for n in dir(sig) if n.startswith("CTX_")}
    assert module_constants == set(sig.CONTEXTS)


def test_context_values() -> None:
    assert sig.CTX_DKG_DEAL == b"quorum-kms/v1/dkg/deal"
    assert sig.CTX_BROADCAST_DIGEST == b"quorum-kms/v1/broadcast/digest"
    assert sig.CTX_DKG_KEY == b"quorum-kms/v1/node/dkg-key"
    assert sig.CTX_KEY_RESPONSE == b"quorum-kms/v1/kms/key-response"
    assert sig.CTX_APP_CERT_RESPONSE == b"quorum-kms/v1/kms/app-key-cert"


@pytest.mark.parametrize(
    "context",
    [
        b"",
        b"quorum-kms/v1/",
        b"quorum-kms/v2/dkg/deal",
        b"dkg/deal",
        b"Quorum-kms/v1/dkg/deal",
        b"quorum-kms/v1/" + b"x" * (256 - len(b"quorum-kms/v1/")),
    ],
    ids=["empty", "bare-prefix", "wrong-version", "no-prefix", "wrong-case", "256-bytes"],
)
def test_invalid_contexts_refused(key: sig.SigningKey, context: bytes) -> None:
    with pytest.raises(ValueError):
        sig.check_context(context)
    with pytest.raises(ValueError):
        key.sign(context, b"m")
    signature = key.sign(sig.CTX_DKG_DEAL, b"m")
    with pytest.raises(ValueError):
        key.verify_key().verify(context, b"m", signature)


def test_context_must_be_bytes(key: sig.SigningKey) -> None:
    with pytest.raises(ValueError):
        key.sign("quorum-kms/v1/dkg/deal", b"m")  # type: ignore[arg-type]


def test_maximum_length_context_accepted(key: sig.SigningKey) -> None:
    context = b"quorum-kms/v1/" + b"x" * (255 - len(b"quorum-kms/v1/"))
    assert len(context) == 255
    key.verify_key().verify(context, b"m", key.sign(context, b"m"))


# --- Properties --------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    name=st.sampled_from(CONTEXT_NAMES),
    message=st.binary(max_size=256),
    other=st.binary(max_size=256),
)
def test_round_trip_property(seed: bytes, name: str, message: bytes, other: bytes) -> None:
    sk = sig.SigningKey.from_seed(seed)
    vk = sig.VerifyKey.from_bytes(sk.verify_key().to_bytes())
    context = sig.CONTEXTS[name]
    signature = sk.sign(context, message)
    vk.verify(context, message, signature)
    if other != message:
        with pytest.raises(InvalidSignature):
            vk.verify(context, other, signature)
