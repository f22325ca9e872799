"""``kms.dstack.chain``: a dstack key chain whose link 1 is a committee certificate,
checked the way a relying party would, against the master public key alone."""

from __future__ import annotations

import pytest
from dstack_committee import committee
from hypothesis import given, settings
from hypothesis import strategies as st

from kms.dstack import keys
from kms.dstack.chain import ChainError, verify_app_key_cert, verify_chain
from mpc import appcert
from mpc.math import G1, G2

ROOT = bytes.fromhex("1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b")
APP = bytes.fromhex("0a" * 20)
OTHER_APP = bytes.fromhex("0b" * 20)
C = committee()
ROOT_PUB = keys.root_public(ROOT)
LINK1, QKMS = C.certify(APP, ROOT_PUB, 3, 9)
MPK = C.mpk.to_bytes()


def _flip(b: bytes, i: int = 10) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]


def test_v0_and_v1_chains_verify_and_recover_the_root() -> None:
    _, pub, link0 = keys.v0_get_key(ROOT, "wallet", "eth", "secp256k1")
    claim = keys.v0_claim("eth", pub)
    assert verify_chain(MPK, APP, claim=claim, chain=[link0, LINK1]) == ROOT_PUB
    _, pub, link0 = keys.v1_get_key(ROOT, "wallet", "ed25519")
    claim = keys.v1_claim("wallet", "ed25519", pub)
    assert verify_chain(C.mpk, APP, claim=claim, chain=[link0, LINK1]) == ROOT_PUB


def test_any_t_signers_give_the_same_link() -> None:
    msg = appcert.link_message(APP, ROOT_PUB)
    assert C.sign(msg, [1, 2, 3]).to_bytes() == C.sign(msg, [2, 3, 4]).to_bytes() == LINK1


def test_a_certificate_for_one_app_never_verifies_for_another() -> None:
    _, pub, link0 = keys.v0_get_key(ROOT, "p", "q", "")
    with pytest.raises(ChainError, match="link 1"):
        verify_chain(MPK, OTHER_APP, claim=keys.v0_claim("q", pub), chain=[link0, LINK1])
    with pytest.raises(ChainError):
        verify_app_key_cert(MPK, OTHER_APP, ROOT_PUB, LINK1)
    with pytest.raises(ChainError):
        verify_app_key_cert(MPK, APP[:19], ROOT_PUB, LINK1)


def test_wrong_claim_recovers_another_key_and_fails() -> None:
    _, pub, link0 = keys.v0_get_key(ROOT, "p", "q", "")
    for claim in (keys.v0_claim("Q", pub), keys.v0_claim("q", pub).upper()):
        with pytest.raises(ChainError):
            verify_chain(MPK, APP, claim=claim, chain=[link0, LINK1])


def test_high_s_link0_is_refused() -> None:
    _, pub, link0 = keys.v0_get_key(ROOT, "p", "q", "")
    s = int.from_bytes(link0[32:64], "big")
    high = link0[:32] + (keys.SECP256K1_N - s).to_bytes(32, "big") + bytes([link0[64] ^ 1])
    with pytest.raises(ChainError, match="high-S"):
        verify_chain(MPK, APP, claim=keys.v0_claim("q", pub), chain=[high, LINK1])


@pytest.mark.parametrize(
    "chain",
    [
        lambda l0, l1: [l0],
        lambda l0, l1: [l0, l1, l1],
        lambda l0, l1: [l0[:64], l1],
        lambda l0, l1: [l0, l1[:47]],
        lambda l0, l1: [l0, _flip(l1)],
        lambda l0, l1: [l0, G1.identity().to_bytes()],
        lambda l0, l1: [l0[:64] + b"\x04", l1],
        lambda l0, l1: [_flip(l0, 40), l1],
    ],
)
def test_malformed_chains_are_refused(chain) -> None:  # type: ignore[no-untyped-def]
    _, pub, link0 = keys.v0_get_key(ROOT, "p", "q", "")
    with pytest.raises(ChainError):
        verify_chain(MPK, APP, claim=keys.v0_claim("q", pub), chain=chain(link0, LINK1))


def test_another_committee_or_a_bad_mpk_is_refused() -> None:
    other = committee(seed=8)
    for mpk in (other.mpk.to_bytes(), G2.identity().to_bytes(), MPK[:95], _flip(MPK)):
        with pytest.raises(ChainError):
            verify_app_key_cert(mpk, APP, ROOT_PUB, LINK1)


def test_the_qkms_certificate_binds_version_and_epoch() -> None:
    verify_app_key_cert(MPK, APP, ROOT_PUB, LINK1, version=3, epoch=9, qkms_signature=QKMS)
    for version, epoch in ((4, 9), (3, 8), (2, 9)):
        with pytest.raises(ChainError, match="quorum-kms"):
            verify_app_key_cert(
                MPK, APP, ROOT_PUB, LINK1, version=version, epoch=epoch, qkms_signature=QKMS
            )
    with pytest.raises(ChainError):  # the link signature is not a qkms signature
        verify_app_key_cert(MPK, APP, ROOT_PUB, LINK1, version=3, epoch=9, qkms_signature=LINK1)
    with pytest.raises(ChainError):  # version without the signature that binds it
        verify_app_key_cert(MPK, APP, ROOT_PUB, LINK1, version=3)
    with pytest.raises(ChainError):
        verify_app_key_cert(MPK, APP, ROOT_PUB, LINK1, qkms_signature=QKMS)


@settings(max_examples=10, deadline=None)
@given(root=st.integers(1, keys.SECP256K1_N - 1), app=st.binary(min_size=1, max_size=64))
def test_certificate_for_another_root_is_refused(root: int, app: bytes) -> None:
    other = root.to_bytes(32, "big")
    if other == ROOT:
        return
    with pytest.raises(ChainError):
        verify_app_key_cert(MPK, APP, keys.root_public(other), LINK1)
    if app != APP:
        with pytest.raises(ChainError):
            verify_app_key_cert(MPK, app, ROOT_PUB, LINK1)


def test_the_worked_example_in_crypto_md() -> None:
    """docs/crypto.md "dstack app root and link 1": master secret 7, app id 0a × 20."""
    from mpc.tkd.derive import derive_point_base
    from mpc.tkd.ids import KeyId

    app = bytes([0x0A]) * 20
    key_id = KeyId(app, keys.ROOT_PURPOSE, 1)
    sigma = (7 * derive_point_base(key_id)).to_bytes()
    root = keys.app_root_from_sigma(sigma, key_id.encode())
    assert root.hex() == "a594d156b0db966dc758ff7f5f477c7b7f59bebd9b1361b73382efa81ad6f70c"
    pub = keys.root_public(root)
    link1 = (7 * appcert.appcert_base(appcert.link_message(app, pub))).to_bytes()
    assert link1.hex() == (
        "8bb9b2ed2dbf768194d0e9cb21f6f4076832188c985c1aeccd9b6e6424c17777"
        "8b1cc52c06abeb8ed95f48c829e84fc4"
    )
    _, v1_pub, link0 = keys.v1_get_key(root, "storage-encryption", "secp256k1")
    claim = keys.v1_claim("storage-encryption", "secp256k1", v1_pub)
    assert verify_chain(7 * G2.generator(), app, claim=claim, chain=[link0, link1]) == pub
    assert link0.hex().startswith("6dd08e542300f9d2")
