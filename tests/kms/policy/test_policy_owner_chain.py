"""Owner keys, app ids and rotation chains (``kms.policy.app``)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import pytest
from policy_helpers import owner, rotation_chain

from kms.policy import (
    CTX_APP_POLICY,
    CTX_OWNER_ROTATION,
    OwnerChain,
    OwnerKey,
    PolicyError,
    PolicyFailure,
    RotationRecord,
    app_id_from_owner,
)
from kms.policy.app import APP_ID_DOMAIN, MAX_ROTATIONS
from mpc.errors import InvalidEncoding, LocalProtocolError
from mpc.sig import check_context

K0, K1, K2, K3, MALLORY = (owner(i) for i in range(5))
APP = K0.app_id()


def forge(
    signer: OwnerKey,
    *,
    sequence: int,
    previous: OwnerKey,
    nxt: OwnerKey,
    app_id: bytes = APP,
) -> RotationRecord:
    """A rotation record with free choice of every field and of the signing key."""
    unsigned = RotationRecord(app_id, sequence, previous.public_bytes(), nxt.public_bytes(), b"")
    return dataclasses.replace(
        unsigned, signature=signer.sign(CTX_OWNER_ROTATION, unsigned.signed_bytes())
    )


_, (R1, R2, R3) = rotation_chain([K0, K1, K2, K3])


# --- app ids ----------------------------------------------------------------------------------


def test_app_id_is_the_documented_truncated_hash_of_the_first_owner_key() -> None:
    key = K0.public_bytes()
    assert app_id_from_owner(key) == hashlib.sha256(b"quorum-kms/v1/app-id" + key).digest()[:20]
    assert APP_ID_DOMAIN == b"quorum-kms/v1/app-id"
    assert K0.app_id() == app_id_from_owner(key)
    assert len(APP) == 20
    assert K1.app_id() != APP


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00" * 31, b"\x01" + b"\x00" * 31, b"\xff" * 32],
    ids=["empty", "too short", "a small-order point", "not a point"],
)
def test_app_id_refuses_what_is_not_a_public_key(bad: bytes) -> None:
    with pytest.raises(InvalidEncoding):
        app_id_from_owner(bad)


def test_owner_contexts_are_framed_project_contexts() -> None:
    check_context(CTX_APP_POLICY)
    check_context(CTX_OWNER_ROTATION)


def test_an_owner_key_signs_only_policies_and_rotations() -> None:
    with pytest.raises(LocalProtocolError):
        K0.sign(b"quorum-kms/v1/dkg/deal", b"x")
    K0.sign(CTX_APP_POLICY, b"x")


def test_an_owner_key_never_shows_its_secret() -> None:
    assert repr(K0) == "<redacted>"
    assert K0.seed_bytes().hex() not in repr(K0)
    assert OwnerKey.from_seed(K0.seed_bytes()).public_bytes() == K0.public_bytes()


# --- valid chains -----------------------------------------------------------------------------


def test_an_app_without_rotations_is_owned_by_its_first_key() -> None:
    assert OwnerChain.verify(APP, [], first_owner=K0.public_bytes()) == K0.verify_key()
    chain = OwnerChain.genesis(K0.public_bytes())
    assert (chain.app_id, chain.current, chain.sequence) == (APP, K0.public_bytes(), 0)


def test_a_chain_of_rotations_ends_at_the_last_named_key() -> None:
    assert OwnerChain.verify(APP, [R1, R2, R3]) == K3.verify_key()
    chain = OwnerChain.from_records(APP, [R1, R2, R3], first_owner=K0.public_bytes())
    assert chain.sequence == 3
    assert chain.owners() == tuple(k.public_bytes() for k in (K0, K1, K2, K3))
    assert [r.sequence for r in chain.records] == [1, 2, 3]


def test_every_prefix_of_a_chain_is_a_valid_chain() -> None:
    for n, key in enumerate((K1, K2, K3), start=1):
        assert OwnerChain.verify(APP, [R1, R2, R3][:n]) == key.verify_key()


def test_no_rotations_and_no_first_owner_is_a_caller_error() -> None:
    with pytest.raises(LocalProtocolError):
        OwnerChain.verify(APP, [])


def test_only_the_current_owner_can_rotate() -> None:
    chain = OwnerChain.genesis(K0.public_bytes())
    with pytest.raises(LocalProtocolError):
        K1.rotate(chain, K2.public_bytes())
    with pytest.raises(LocalProtocolError):
        K0.rotate(chain, K0.public_bytes())


# --- refused chains ---------------------------------------------------------------------------

Case = Callable[[], list[RotationRecord]]
REFUSED: list[tuple[str, Case, PolicyFailure]] = [
    ("a skipped sequence number is a gap", lambda: [R1, R3], PolicyFailure.ROTATION_GAP),
    (
        "a chain that starts after rotation one is a gap",
        lambda: [R2, R3],
        PolicyFailure.ROTATION_GAP,
    ),
    (
        "two different records for one sequence number are a fork",
        lambda: [R1, forge(K0, sequence=1, previous=K0, nxt=K2)],
        PolicyFailure.ROTATION_FORK,
    ),
    ("a record given twice is a replay", lambda: [R1, R1], PolicyFailure.ROTATION_REPLAY),
    (
        "an old record replayed later is a replay",
        lambda: [R1, R2, R1],
        PolicyFailure.ROTATION_REPLAY,
    ),
    (
        "a record from a key that does not own the app has the wrong signer",
        lambda: [R1, forge(MALLORY, sequence=2, previous=MALLORY, nxt=K2)],
        PolicyFailure.ROTATION_WRONG_SIGNER,
    ),
    (
        "a record naming the owner but signed by another key has a bad signature",
        lambda: [R1, forge(MALLORY, sequence=2, previous=K1, nxt=MALLORY)],
        PolicyFailure.BAD_SIGNATURE,
    ),
    (
        "a first record from a key that did not found the app is not the owner",
        lambda: [forge(K1, sequence=1, previous=K1, nxt=K2)],
        PolicyFailure.NOT_OWNER,
    ),
    (
        "handing the app back to a former owner reuses a key",
        lambda: [R1, forge(K1, sequence=2, previous=K1, nxt=K0)],
        PolicyFailure.ROTATION_KEY_REUSED,
    ),
    (
        "a record of another app is an app id mismatch",
        lambda: [R1, forge(K1, sequence=2, previous=K1, nxt=K2, app_id=K3.app_id())],
        PolicyFailure.APP_ID_MISMATCH,
    ),
    (
        "a record with a truncated signature is malformed",
        lambda: [dataclasses.replace(R1, signature=R1.signature[:63])],
        PolicyFailure.MALFORMED,
    ),
    (
        "a chain over the length limit is malformed",
        lambda: [R1] * (MAX_ROTATIONS + 1),
        PolicyFailure.MALFORMED,
    ),
]


@pytest.mark.parametrize(
    ("records", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_chain(records: Case, reason: PolicyFailure) -> None:
    with pytest.raises(PolicyError) as info:
        OwnerChain.verify(APP, records())
    assert info.value.reason is reason


def test_a_chain_from_another_first_owner_is_not_this_apps_owner() -> None:
    with pytest.raises(PolicyError) as info:
        OwnerChain.verify(APP, [R1], first_owner=K1.public_bytes())
    assert info.value.reason is PolicyFailure.NOT_OWNER
    with pytest.raises(PolicyError) as info:
        OwnerChain.verify(APP, [], first_owner=K1.public_bytes())
    assert info.value.reason is PolicyFailure.NOT_OWNER


# --- merging what a node holds with what it is offered ------------------------------------------


def test_merging_keeps_the_longer_of_two_agreeing_chains() -> None:
    short = OwnerChain.from_records(APP, [R1])
    long = OwnerChain.from_records(APP, [R1, R2, R3])
    assert short.merge(long) == long
    assert long.merge(short) == long
    assert long.merge(long) == long


def test_merging_diverging_chains_is_a_fork() -> None:
    held = OwnerChain.from_records(APP, [R1, R2])
    thief = OwnerChain.from_records(APP, [R1, forge(K1, sequence=2, previous=K1, nxt=MALLORY)])
    with pytest.raises(PolicyError) as info:
        held.merge(thief)
    assert info.value.reason is PolicyFailure.ROTATION_FORK


def test_merging_chains_of_two_apps_is_an_app_id_mismatch() -> None:
    with pytest.raises(PolicyError) as info:
        OwnerChain.genesis(K0.public_bytes()).merge(OwnerChain.genesis(K1.public_bytes()))
    assert info.value.reason is PolicyFailure.APP_ID_MISMATCH
