"""IBE to an app: round trips, binds the id and MPK, and detects any tampering."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc import ibe
from mpc.errors import DecryptionError, InvalidEncoding
from mpc.math import G2, R, pairing
from mpc.tkd import DerivedPoint, KeyId, derive_point_base

SECRET = 0x5EC12E7 * 7919 % R
MPK = SECRET * G2.generator()


def derived_for(key_id: KeyId, secret: int = SECRET) -> DerivedPoint:
    return DerivedPoint(key_id, secret * derive_point_base(key_id))


def seeded(seed: int):  # type: ignore[no-untyped-def]
    rnd = random.Random(seed)
    return lambda n: rnd.randbytes(n)


@settings(max_examples=15, deadline=None)
@given(pt=st.binary(max_size=300), seed=st.integers(0, 2**32))
def test_round_trip(pt: bytes, seed: int) -> None:
    key_id = ibe.inbox_key_id(b"ibe-app", "secrets", 2)
    ct = ibe.encrypt(MPK, key_id, pt, rng=seeded(seed))
    assert ibe.read_header(ct).key_id == key_id
    assert ibe.decrypt(derived_for(key_id), MPK, ct) == pt


def test_fresh_randomness_per_message() -> None:
    key_id = ibe.inbox_key_id(b"ibe-app")
    a = ibe.encrypt(MPK, key_id, b"same", rng=seeded(1))
    b = ibe.encrypt(MPK, key_id, b"same", rng=seeded(2))
    assert a != b


def test_every_byte_flip_is_detected() -> None:
    key_id = ibe.inbox_key_id(b"tamper-app")
    ct = ibe.encrypt(MPK, key_id, b"attack at dawn", rng=seeded(3))
    d = derived_for(key_id)
    for pos in range(len(ct)):
        for bit in (0x01, 0x80):
            bad = bytearray(ct)
            bad[pos] ^= bit
            with pytest.raises(DecryptionError):
                ibe.decrypt(d, MPK, bytes(bad))


def test_truncation_and_extension_are_detected() -> None:
    key_id = ibe.inbox_key_id(b"len-app")
    ct = ibe.encrypt(MPK, key_id, b"payload", rng=seeded(4))
    d = derived_for(key_id)
    for bad in (ct[:-1], ct + b"\x00", ct[:50], b"", b"QKIBE"):
        with pytest.raises(DecryptionError):
            ibe.decrypt(d, MPK, bad)


def test_wrong_key_wrong_id_wrong_mpk() -> None:
    key_id = ibe.inbox_key_id(b"app-a", "app", 1)
    ct = ibe.encrypt(MPK, key_id, b"for a", rng=seeded(5))
    with pytest.raises(DecryptionError):  # another app's derived key
        ibe.decrypt(derived_for(ibe.inbox_key_id(b"app-b", "app", 1)), MPK, ct)
    with pytest.raises(DecryptionError):  # another version
        ibe.decrypt(derived_for(ibe.inbox_key_id(b"app-a", "app", 2)), MPK, ct)
    with pytest.raises(DecryptionError):  # a derived point under another master secret
        ibe.decrypt(derived_for(key_id, SECRET + 1), MPK, ct)
    with pytest.raises(DecryptionError):  # the right sigma but the wrong MPK in the KDF
        ibe.decrypt(derived_for(key_id), 2 * MPK, ct)
    with pytest.raises(DecryptionError):  # the app's own key for the ordinary purpose "app"
        ibe.decrypt(derived_for(KeyId(b"app-a", "app", 1)), MPK, ct)


def test_identity_mpk_and_identity_u_are_refused() -> None:
    key_id = ibe.inbox_key_id(b"id-app")
    with pytest.raises(InvalidEncoding):
        ibe.encrypt(G2.identity(), key_id, b"x", rng=seeded(6))
    ct = ibe.encrypt(MPK, key_id, b"x", rng=seeded(6))
    forged = ct[:6] + G2.identity().to_bytes() + ct[6 + 96 :]
    with pytest.raises(DecryptionError):
        ibe.decrypt(derived_for(key_id), MPK, forged)


def test_format_layout() -> None:
    key_id = ibe.inbox_key_id(b"fmt")
    ct = ibe.encrypt(MPK, key_id, b"abc", rng=seeded(7))
    kid = key_id.encode()
    assert ct[:5] == b"QKIBE" and ct[5] == 1
    assert G2.from_bytes(ct[6:102]) == ibe.read_header(ct).u
    assert int.from_bytes(ct[102:104], "big") == len(kid)
    assert ct[104 : 104 + len(kid)] == kid
    assert len(ct) == 104 + len(kid) + 3 + 16


# --- hedged randomness -----------------------------------------------------------------------


def constant(n: int) -> bytes:
    """A broken generator: always zeros."""
    return bytes(n)


def header_u(ct: bytes) -> bytes:
    return ibe.read_header(ct).u.to_bytes()


def test_a_broken_rng_does_not_repeat_the_kem_key_or_the_nonce() -> None:
    key_id = ibe.inbox_key_id(b"hedge-app", "app", 1)
    d = derived_for(key_id)
    a = ibe.encrypt(MPK, key_id, b"first message", rng=constant)
    b = ibe.encrypt(MPK, key_id, b"other message", rng=constant)
    assert header_u(a) != header_u(b)
    # The AEAD key and nonce each ciphertext was sealed under differ too.
    ka = ibe._aead_key(pairing(d.point, ibe.read_header(a).u), ibe.read_header(a), MPK)
    kb = ibe._aead_key(pairing(d.point, ibe.read_header(b).u), ibe.read_header(b), MPK)
    assert ka[0] != kb[0] and ka[1] != kb[1]
    assert ibe.decrypt(d, MPK, a) == b"first message"
    assert ibe.decrypt(d, MPK, b) == b"other message"


def test_the_same_seeded_rng_gives_different_r_for_different_plaintexts_and_ids() -> None:
    key_id = ibe.inbox_key_id(b"hedge-app", "app", 1)
    other_id = ibe.inbox_key_id(b"hedge-app", "app", 2)
    a = ibe.encrypt(MPK, key_id, b"m1", rng=seeded(11))
    b = ibe.encrypt(MPK, key_id, b"m2", rng=seeded(11))
    c = ibe.encrypt(MPK, other_id, b"m1", rng=seeded(11))
    assert len({header_u(a), header_u(b), header_u(c)}) == 3
    r = [ibe.hedged_scalar(MPK, k, m, seeded(11)) for k, m in ((key_id, b"m1"), (key_id, b"m2"))]
    assert r[0] != r[1]
    assert r[0] * G2.generator() == ibe.read_header(a).u


def test_with_a_broken_rng_only_equal_messages_give_equal_ciphertexts() -> None:
    """The worst case of a broken rng is deterministic encryption, no worse."""
    key_id = ibe.inbox_key_id(b"hedge-app", "app", 1)
    assert ibe.encrypt(MPK, key_id, b"same", rng=constant) == ibe.encrypt(
        MPK, key_id, b"same", rng=constant
    )
    assert ibe.encrypt(MPK, key_id, b"same", rng=constant) != ibe.encrypt(
        2 * MPK, key_id, b"same", rng=constant
    )


def test_the_hedge_reads_the_rng_so_a_good_rng_still_randomises() -> None:
    key_id = ibe.inbox_key_id(b"hedge-app", "app", 1)
    assert header_u(ibe.encrypt(MPK, key_id, b"same", rng=seeded(1))) != header_u(
        ibe.encrypt(MPK, key_id, b"same", rng=seeded(2))
    )


# Made by the code before r was hedged (docs/crypto.md's former worked example,
# s = 42, rng = random.Random(1)): hedging changes only how r is chosen, so the
# format and decryption are unchanged.
UNHEDGED_CIPHERTEXT = bytes.fromhex(
    "514b49424501"
    "a1b02c2e9792a8553eb44225b91f37f2acaf439581ae1ae417a24a937ce74a4184261a1100d9d1495e1457edead3d2ba"
    "006ef7d972cd8ca1ded917464cb2bb3a38cd5039c73545c96b33a5933c872d2fda6bcd407068172a7953aea7803ad727"
    "0019"
    "514b4d532d4944010864656d6f2d6170700361707000000001"
    "0401b82ef5"
    "bb3ddcd82a967e904a8f9b8c24a72c9c"
)


def test_a_ciphertext_made_before_hedging_still_decrypts() -> None:
    key_id = KeyId(b"demo-app", "app", 1)
    d = DerivedPoint(key_id, 42 * derive_point_base(key_id))
    assert ibe.decrypt(d, 42 * G2.generator(), UNHEDGED_CIPHERTEXT) == b"hello"


# --- inboxes: purposes reserved for decryption ------------------------------------------------


def test_encryption_goes_only_to_an_inbox() -> None:
    for purpose in ("app", "sign", "ibe", "ibe.", "ibex.app"):
        with pytest.raises(ValueError, match="inbox"):
            ibe.encrypt(MPK, KeyId(b"app-a", purpose, 1), b"x", rng=seeded(1))
    kid = ibe.inbox_key_id(b"app-a", "mail", 3)
    assert kid == KeyId(b"app-a", "ibe.mail", 3) and ibe.is_inbox(kid)
    assert ibe.read_header(ibe.encrypt(MPK, kid, b"x", rng=seeded(1))).key_id == kid
    for bad in ("", "UPPER", "x" * 61):
        with pytest.raises(ValueError):
            ibe.inbox_key_id(b"app-a", bad)


def test_no_ordinary_purpose_yields_the_inbox_point() -> None:
    """Key ids are injective, so no purpose outside ``ibe.*`` hashes to an inbox's H(id)."""
    inbox = derive_point_base(ibe.inbox_key_id(b"app-a"))
    for purpose in ("app", "sign", "disk", "ibe", "ibe-app", "ibeapp"):
        assert derive_point_base(KeyId(b"app-a", purpose, 1)) != inbox


# docs/crypto.md's worked example, with a seeded generator so that it can be
# reproduced (never in production). It was regenerated when r became hedged
# (r now depends on the plaintext and id as well as the rng) and when the
# example moved to the app's inbox.
KAT_CIPHERTEXT = bytes.fromhex(
    "514b49424501"
    "8b205c5b16f5a1e2d9a454b35a382385044668a292344d6fcd735c8497d0dd742993a62d169846db67f33b1e1e2170a9"
    "027216816d337dde407b36884ccae6fb97f433fc06a1459f1e1ae6144e9fb83ce33009d36fa42e13d276b835b3197140"
    "001d"
    "514b4d532d4944010864656d6f2d617070076962652e61707000000001"
    "9477c80f36"
    "266e98b9d659b7f87c5cde06e8484aa6"
)


def test_the_documented_worked_example() -> None:
    mpk = 42 * G2.generator()
    kid = ibe.inbox_key_id(b"demo-app")
    rnd = random.Random(1)
    assert ibe.encrypt(mpk, kid, b"hello", rng=lambda n: rnd.randbytes(n)) == KAT_CIPHERTEXT
    d = DerivedPoint(kid, 42 * derive_point_base(kid))
    assert ibe.decrypt(d, mpk, KAT_CIPHERTEXT) == b"hello"
    doc = (Path(__file__).resolve().parents[2] / "docs" / "crypto.md").read_text(encoding="utf-8")
    section = doc.split("## Identity-based encryption", 1)[1].split("\n## ", 1)[0]
    block = section.split("```text", 2)[2].split("```")[0]
    # Each line: hex fields, then a description.
    shown = "".join(
        "".join(itertools.takewhile(lambda w: re.fullmatch("[0-9a-f]+", w), line.split()))
        for line in block.splitlines()
    )
    assert bytes.fromhex(shown) == KAT_CIPHERTEXT
