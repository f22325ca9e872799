"""Tests for ``mpc.hpke``: RFC 9180 Appendix A.1 / A.2 known answers and properties."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import hpke
from mpc.errors import DecryptionError, InvalidEncoding, LocalProtocolError

VECTORS_PATH = (
    Path(__file__).resolve().parent.parent
    / "vectors"
    / "rfc9180-hpke"
    / "rfc9180_base_x25519_hkdfsha256_aes128gcm_chacha20poly1305.json"
)

Vector = dict[str, Any]


def _load_vectors() -> list[Vector]:
    with VECTORS_PATH.open(encoding="utf-8") as f:
        data: list[Vector] = json.load(f)
    return data


VECTORS = _load_vectors()
VECTOR_IDS = [hpke.AEAD(v["aead_id"]).name for v in VECTORS]

# Small-order X25519 u-coordinates (and non-canonical / high-bit variants): DH with any
# of them gives the all-zero output that RFC 9180 §7.1.4 requires to be refused.
SMALL_ORDER_X25519 = [
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
    "00" * 31 + "80",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
]

AEADS = list(hpke.AEAD)
AEAD_IDS = [a.name for a in AEADS]


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return r.randbytes


def no_rng(n: int) -> bytes:
    raise AssertionError("rng must not be called when ikm_e is given")


def _sender(v: Vector) -> tuple[bytes, hpke.SenderContext]:
    _, pk_r = hpke.derive_key_pair(h(v["ikmR"]))
    return hpke.setup_base_sender(
        pk_r, h(v["info"]), rng=no_rng, aead=hpke.AEAD(v["aead_id"]), ikm_e=h(v["ikmE"])
    )


def _receiver(v: Vector) -> hpke.ReceiverContext:
    sk_r, _ = hpke.derive_key_pair(h(v["ikmR"]))
    return hpke.setup_base_receiver(h(v["enc"]), sk_r, h(v["info"]), aead=hpke.AEAD(v["aead_id"]))


def _filler(seq: int) -> tuple[bytes, bytes]:
    return b"aad-%d" % seq, b"filler message %d" % seq


# --- Vector file sanity ------------------------------------------------------------------------


def test_vector_file_covers_both_aeads() -> None:
    assert sorted(v["aead_id"] for v in VECTORS) == [1, 3]
    for v in VECTORS:
        assert (v["mode"], v["kem_id"], v["kdf_id"]) == (hpke.MODE_BASE, hpke.KEM_ID, hpke.KDF_ID)
        assert [e["sequence_number"] for e in v["encryptions"]] == [0, 1, 2, 4, 255, 256]
        assert v["exports"]


# --- Known answers, RFC 9180 Appendix A.1.1 (AES-128-GCM) and A.2.1 (ChaCha20-Poly1305) -------


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
@pytest.mark.parametrize("which", ["E", "R"])
def test_derive_key_pair(v: Vector, which: str) -> None:
    sk, pk = hpke.derive_key_pair(h(v[f"ikm{which}"]))
    assert sk.private_bytes() == h(v[f"sk{which}m"])
    assert pk == h(v[f"pk{which}m"])
    assert sk.public_bytes() == pk


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_generate_key_pair_uses_rng_as_ikm(v: Vector) -> None:
    sk, pk = hpke.generate_key_pair(lambda n: h(v["ikmR"])[:n])
    assert sk.private_bytes() == h(v["skRm"])
    assert pk == h(v["pkRm"])


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_private_key_round_trip(v: Vector) -> None:
    sk = hpke.PrivateKey.from_private_bytes(h(v["skRm"]))
    assert sk.public_bytes() == h(v["pkRm"])
    assert sk.private_bytes() == h(v["skRm"])


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_sender_key_schedule(v: Vector) -> None:
    enc, ctx = _sender(v)
    assert enc == h(v["enc"])
    s = ctx.secrets_for_testing()
    assert s.shared_secret == h(v["shared_secret"])
    assert s.key_schedule_context == h(v["key_schedule_context"])
    assert s.secret == h(v["secret"])
    assert s.key == h(v["key"])
    assert s.base_nonce == h(v["base_nonce"])
    assert s.exporter_secret == h(v["exporter_secret"])
    assert ctx.seq == 0
    assert ctx.aead is hpke.AEAD(v["aead_id"])


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_receiver_key_schedule(v: Vector) -> None:
    s = _receiver(v).secrets_for_testing()
    assert s.shared_secret == h(v["shared_secret"])
    assert s.key_schedule_context == h(v["key_schedule_context"])
    assert s.secret == h(v["secret"])
    assert s.key == h(v["key"])
    assert s.base_nonce == h(v["base_nonce"])
    assert s.exporter_secret == h(v["exporter_secret"])


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_encryptions_seal_and_open_in_sequence(v: Vector) -> None:
    """Seal every sequence number 0..256 (fillers where the RFC lists none), check the
    listed nonces and ciphertexts, then open everything in order on the receiver."""
    _, sender = _sender(v)
    listed = {e["sequence_number"]: e for e in v["encryptions"]}
    sent: list[tuple[bytes, bytes, bytes]] = []
    for seq in range(max(listed) + 1):
        assert sender.seq == seq
        if seq in listed:
            e = listed[seq]
            aad, pt = h(e["aad"]), h(e["pt"])
            assert sender._next_nonce() == h(e["nonce"])
            ct = sender.seal(aad, pt)
            assert ct == h(e["ct"]), f"sequence number {seq}"
        else:
            aad, pt = _filler(seq)
            ct = sender.seal(aad, pt)
        sent.append((aad, pt, ct))

    receiver = _receiver(v)
    for seq, (aad, pt, ct) in enumerate(sent):
        assert receiver.seq == seq
        assert receiver.open(aad, ct) == pt
    assert receiver.seq == len(sent)


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_encryptions_open_at_listed_sequence_numbers(v: Vector) -> None:
    """The receiver opens the RFC's ciphertexts on its own (jumping over the gaps)."""
    receiver = _receiver(v)
    for e in v["encryptions"]:
        receiver._set_seq_for_testing(e["sequence_number"])
        assert receiver.open(h(e["aad"]), h(e["ct"])) == h(e["pt"])
        assert receiver.seq == e["sequence_number"] + 1


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_exports(v: Vector) -> None:
    _, sender = _sender(v)
    receiver = _receiver(v)
    for e in v["exports"]:
        expected = h(e["exported_value"])
        assert sender.export(h(e["exporter_context"]), e["L"]) == expected
        assert receiver.export(h(e["exporter_context"]), e["L"]) == expected


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_single_shot_matches_first_encryption(v: Vector) -> None:
    e = v["encryptions"][0]
    aead = hpke.AEAD(v["aead_id"])
    enc, ct = hpke.seal(
        h(v["pkRm"]), h(v["info"]), h(e["aad"]), h(e["pt"]), rng=lambda n: h(v["ikmE"]), aead=aead
    )
    assert (enc, ct) == (h(v["enc"]), h(e["ct"]))
    sk_r = hpke.PrivateKey.from_private_bytes(h(v["skRm"]))
    assert hpke.open(enc, sk_r, h(v["info"]), h(e["aad"]), ct, aead=aead) == h(e["pt"])


# --- Failure cases -----------------------------------------------------------------------------


@pytest.fixture(params=AEADS, ids=AEAD_IDS)
def aead(request: pytest.FixtureRequest) -> hpke.AEAD:
    value: hpke.AEAD = request.param
    return value


def _one_shot(aead: hpke.AEAD) -> tuple[hpke.PrivateKey, bytes, bytes]:
    sk_r, pk_r = hpke.generate_key_pair(seeded_rng(1))
    enc, ct = hpke.seal(pk_r, b"info", b"aad", b"secret message", rng=seeded_rng(2), aead=aead)
    return sk_r, enc, ct


def test_tampered_ciphertext_fails(aead: hpke.AEAD) -> None:
    sk_r, enc, ct = _one_shot(aead)
    assert hpke.open(enc, sk_r, b"info", b"aad", ct, aead=aead) == b"secret message"
    for i in range(len(ct)):
        for bit in (0x01, 0x80):
            bad = bytearray(ct)
            bad[i] ^= bit
            with pytest.raises(DecryptionError):
                hpke.open(enc, sk_r, b"info", b"aad", bytes(bad), aead=aead)
    for bad_ct in (ct[:-1], ct + b"\x00", b"", ct[: aead.n_t - 1]):
        with pytest.raises(DecryptionError):
            hpke.open(enc, sk_r, b"info", b"aad", bad_ct, aead=aead)


def test_tampered_aad_info_aead_or_key_fails(aead: hpke.AEAD) -> None:
    sk_r, enc, ct = _one_shot(aead)
    with pytest.raises(DecryptionError):
        hpke.open(enc, sk_r, b"info", b"aaD", ct, aead=aead)
    with pytest.raises(DecryptionError):
        hpke.open(enc, sk_r, b"info", b"", ct, aead=aead)
    with pytest.raises(DecryptionError):
        hpke.open(enc, sk_r, b"inf0", b"aad", ct, aead=aead)
    other = next(a for a in hpke.AEAD if a is not aead)
    with pytest.raises(DecryptionError):
        hpke.open(enc, sk_r, b"info", b"aad", ct, aead=other)
    wrong_sk, _ = hpke.generate_key_pair(seeded_rng(3))
    with pytest.raises(DecryptionError):
        hpke.open(enc, wrong_sk, b"info", b"aad", ct, aead=aead)


def test_tampered_enc_fails(aead: hpke.AEAD) -> None:
    """Every single-bit change to ``enc`` is refused, including the top bit that X25519
    itself ignores (``enc`` is bound into ``kem_context``, RFC 9180 §4.1)."""
    sk_r, enc, ct = _one_shot(aead)
    for i in range(len(enc)):
        for bit in range(8):
            bad = bytearray(enc)
            bad[i] ^= 1 << bit
            with pytest.raises(DecryptionError):
                hpke.open(bytes(bad), sk_r, b"info", b"aad", ct, aead=aead)


def test_failed_open_does_not_advance_sequence(aead: hpke.AEAD) -> None:
    sk_r, pk_r = hpke.generate_key_pair(seeded_rng(4))
    enc, sender = hpke.setup_base_sender(pk_r, b"info", rng=seeded_rng(5), aead=aead)
    receiver = hpke.setup_base_receiver(enc, sk_r, b"info", aead=aead)
    ct0 = sender.seal(b"a0", b"m0")
    ct1 = sender.seal(b"a1", b"m1")
    with pytest.raises(DecryptionError):
        receiver.open(b"a1", ct1)  # out of order: wrong nonce
    with pytest.raises(DecryptionError):
        receiver.open(b"wrong", ct0)
    assert receiver.seq == 0
    assert receiver.open(b"a0", ct0) == b"m0"
    assert receiver.open(b"a1", ct1) == b"m1"
    assert receiver.seq == 2
    with pytest.raises(DecryptionError):
        receiver.open(b"a1", ct1)  # replay
    assert receiver.seq == 2


def test_sequence_number_overflow(aead: hpke.AEAD) -> None:
    sk_r, pk_r = hpke.generate_key_pair(seeded_rng(6))
    enc, sender = hpke.setup_base_sender(pk_r, b"", rng=seeded_rng(7), aead=aead)
    receiver = hpke.setup_base_receiver(enc, sk_r, b"", aead=aead)
    limit = (1 << (8 * aead.n_n)) - 1
    sender._set_seq_for_testing(limit - 1)
    receiver._set_seq_for_testing(limit - 1)
    ct = sender.seal(b"", b"last")
    assert receiver.open(b"", ct) == b"last"
    assert sender.seq == receiver.seq == limit
    with pytest.raises(LocalProtocolError):
        sender.seal(b"", b"one too many")
    with pytest.raises(LocalProtocolError):
        receiver.open(b"", ct)
    assert sender.seq == receiver.seq == limit
    with pytest.raises(LocalProtocolError):
        sender._set_seq_for_testing(limit + 1)


@pytest.mark.parametrize("point", SMALL_ORDER_X25519)
def test_small_order_recipient_key_rejected_by_sender(point: str, aead: hpke.AEAD) -> None:
    with pytest.raises(InvalidEncoding):
        hpke.setup_base_sender(h(point), b"info", rng=seeded_rng(8), aead=aead)
    with pytest.raises(InvalidEncoding):
        hpke.seal(h(point), b"info", b"", b"pt", rng=seeded_rng(8), aead=aead)


@pytest.mark.parametrize("point", SMALL_ORDER_X25519)
def test_small_order_enc_rejected_by_receiver(point: str, aead: hpke.AEAD) -> None:
    sk_r, _ = hpke.generate_key_pair(seeded_rng(9))
    with pytest.raises(DecryptionError):
        hpke.setup_base_receiver(h(point), sk_r, b"info", aead=aead)
    with pytest.raises(DecryptionError):
        hpke.open(h(point), sk_r, b"info", b"", bytes(32), aead=aead)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_keys_and_enc_rejected(length: int) -> None:
    sk_r, _ = hpke.generate_key_pair(seeded_rng(10))
    with pytest.raises(InvalidEncoding):
        hpke.setup_base_sender(b"\x09" * length, b"", rng=seeded_rng(11))
    with pytest.raises(InvalidEncoding):
        hpke.setup_base_receiver(b"\x09" * length, sk_r, b"")
    with pytest.raises(InvalidEncoding):
        hpke.PrivateKey.from_private_bytes(b"\x01" * length)


def test_invalid_encoding_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        hpke.setup_base_sender(b"", b"", rng=seeded_rng(12))


def test_caller_misuse_raises_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        hpke.derive_key_pair(b"\x00" * 31)
    with pytest.raises(LocalProtocolError):
        hpke.generate_key_pair(lambda n: b"\x00" * (n - 1))
    _, pk_r = hpke.generate_key_pair(seeded_rng(13))
    with pytest.raises(LocalProtocolError):
        hpke.setup_base_sender(pk_r, b"", rng=lambda n: b"")
    _, ctx = hpke.setup_base_sender(pk_r, b"", rng=seeded_rng(14))
    assert len(ctx.export(b"", 255 * 32)) == 255 * 32
    assert ctx.export(b"", 0) == b""
    with pytest.raises(LocalProtocolError):
        ctx.export(b"", 255 * 32 + 1)
    with pytest.raises(LocalProtocolError):
        ctx.export(b"", -1)


def test_aead_identifiers() -> None:
    assert int(hpke.AEAD.AES_128_GCM) == 1
    assert int(hpke.AEAD.CHACHA20_POLY1305) == 3
    assert (hpke.AEAD.AES_128_GCM.n_k, hpke.AEAD.CHACHA20_POLY1305.n_k) == (16, 32)


def test_default_aead_is_chacha20_poly1305() -> None:
    sk_r, pk_r = hpke.generate_key_pair(seeded_rng(15))
    enc, ctx = hpke.setup_base_sender(pk_r, b"", rng=seeded_rng(16))
    assert ctx.aead is hpke.AEAD.CHACHA20_POLY1305
    ct = ctx.seal(b"", b"x")
    assert hpke.open(enc, sk_r, b"", b"", ct, aead=hpke.AEAD.CHACHA20_POLY1305) == b"x"


# --- Redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_repr_redacts_secrets(v: Vector) -> None:
    sk, _ = hpke.derive_key_pair(h(v["ikmR"]))
    assert repr(sk) == "<redacted>"
    assert str(sk) == "<redacted>"
    _, sender = _sender(v)
    receiver = _receiver(v)
    secrets = sender.secrets_for_testing()
    hex_secrets = [
        v["skRm"],
        v["skEm"],
        v["shared_secret"],
        v["secret"],
        v["key"],
        v["base_nonce"],
        v["exporter_secret"],
    ]
    for obj in (sender, receiver, secrets):
        text = repr(obj) + str(obj)
        assert "redacted" in text
        for secret in hex_secrets:
            assert secret not in text.lower()
            assert repr(h(secret)) not in text
    assert "seq=0" in repr(sender)


# --- Properties --------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    aead=st.sampled_from(AEADS),
    info=st.binary(max_size=128),
    messages=st.lists(st.tuples(st.binary(max_size=64), st.binary(max_size=512)), max_size=4),
)
def test_round_trip(
    seed: int, aead: hpke.AEAD, info: bytes, messages: list[tuple[bytes, bytes]]
) -> None:
    rng = seeded_rng(seed)
    sk_r, pk_r = hpke.generate_key_pair(rng)
    enc, sender = hpke.setup_base_sender(pk_r, info, rng=rng, aead=aead)
    receiver = hpke.setup_base_receiver(enc, sk_r, info, aead=aead)
    assert sender.export(b"ctx", 32) == receiver.export(b"ctx", 32)
    for aad, pt in messages:
        ct = sender.seal(aad, pt)
        assert len(ct) == len(pt) + aead.n_t
        assert receiver.open(aad, ct) == pt
    assert sender.seq == receiver.seq == len(messages)


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    aead=st.sampled_from(AEADS),
    info=st.binary(max_size=64),
    aad=st.binary(max_size=64),
    pt=st.binary(max_size=256),
)
def test_single_shot_round_trip(
    seed: int, aead: hpke.AEAD, info: bytes, aad: bytes, pt: bytes
) -> None:
    rng = seeded_rng(seed)
    sk_r, pk_r = hpke.generate_key_pair(rng)
    enc, ct = hpke.seal(pk_r, info, aad, pt, rng=rng, aead=aead)
    assert len(enc) == hpke.N_ENC
    assert hpke.open(enc, sk_r, info, aad, ct, aead=aead) == pt
