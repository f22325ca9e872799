"""``PolicyStore.offer``: every refusal reason, relaying newer policies, expiry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from policy_helpers import DAY, MPK, NOW, OTHER_MPK, make_policy, owner, rotation_chain, signed

from kms.policy import (
    CTX_APP_POLICY,
    MAX_CLOCK_SKEW,
    MAX_LIFETIME,
    MAX_VERSION_STEP,
    Accepted,
    AppPolicy,
    OwnerChain,
    OwnerKey,
    PolicyBundle,
    PolicyError,
    PolicyFailure,
    PolicyRefused,
    PolicyStore,
    RotationRecord,
    SignedPolicy,
)
from mpc.errors import LocalProtocolError

K0, K1, K2, MALLORY = (owner(i) for i in range(10, 14))
_, ROTATIONS = rotation_chain([K0, K1, K2])
R1, R2 = ROTATIONS
APP = K0.app_id()


def store_holding(*offers: tuple[SignedPolicy, Sequence[RotationRecord]]) -> PolicyStore:
    store = PolicyStore(MPK)
    for policy, rotations in offers:
        assert isinstance(store.offer(policy, now=NOW, rotations=rotations), Accepted)
    return store


@dataclass(frozen=True)
class Offer:
    store: PolicyStore
    signed: SignedPolicy
    rotations: Sequence[RotationRecord] = ()
    now: int = NOW


def resign(policy: AppPolicy, key: OwnerKey = K0) -> SignedPolicy:
    """Sign without ``AppPolicy.sign``'s own checks, to build refused documents."""
    return SignedPolicy(policy, key.sign(CTX_APP_POLICY, policy.encode()))


def _unsorted_purposes() -> Offer:
    policy = dataclasses.replace(make_policy(K0, purposes=("a", "b")), purposes=("b", "a"))
    return Offer(PolicyStore(MPK), resign(policy))


def _tampered() -> Offer:
    good = signed(K0)
    return Offer(
        PolicyStore(MPK), SignedPolicy(dataclasses.replace(good.policy, version=2), good.signature)
    )


def _fork_against_held() -> Offer:
    store = store_holding((signed(K1, app_id=APP, version=1), [R1]))
    thief_rotation = K0.rotate(OwnerChain.genesis(K0.public_bytes()), MALLORY.public_bytes())
    return Offer(store, signed(MALLORY, app_id=APP, version=2), [thief_rotation])


REFUSALS: list[tuple[str, Callable[[], Offer], PolicyFailure]] = [
    ("a policy with unsorted purposes is malformed", _unsorted_purposes, PolicyFailure.MALFORMED),
    (
        "a signature by another key is a bad signature",
        lambda: Offer(PolicyStore(MPK), SignedPolicy(make_policy(K0), signed(MALLORY).signature)),
        PolicyFailure.BAD_SIGNATURE,
    ),
    ("a policy changed after signing is a bad signature", _tampered, PolicyFailure.BAD_SIGNATURE),
    (
        "a key that does not derive the app id is not the owner",
        lambda: Offer(PolicyStore(MPK), signed(MALLORY, app_id=APP)),
        PolicyFailure.NOT_OWNER,
    ),
    (
        "the first owner after a rotation is not the owner",
        lambda: Offer(PolicyStore(MPK), signed(K0), [R1]),
        PolicyFailure.NOT_OWNER,
    ),
    (
        "the first owner is not the owner once the node knows of a rotation",
        lambda: Offer(store_holding((signed(K1, app_id=APP), [R1])), signed(K0, version=2)),
        PolicyFailure.NOT_OWNER,
    ),
    (
        "a rotation of another app is an app id mismatch",
        lambda: Offer(PolicyStore(MPK), signed(K1, app_id=MALLORY.app_id()), [R1]),
        PolicyFailure.APP_ID_MISMATCH,
    ),
    (
        "a skipped rotation is a gap",
        lambda: Offer(PolicyStore(MPK), signed(K2, app_id=APP), [R2]),
        PolicyFailure.ROTATION_GAP,
    ),
    (
        "a rotation given twice is a replay",
        lambda: Offer(PolicyStore(MPK), signed(K1, app_id=APP), [R1, R1]),
        PolicyFailure.ROTATION_REPLAY,
    ),
    (
        "a rotation diverging from the chain held is a fork",
        _fork_against_held,
        PolicyFailure.ROTATION_FORK,
    ),
    (
        "the policy held, offered again, is a duplicate",
        lambda: Offer(store_holding((signed(K0, version=5), ())), signed(K0, version=5)),
        PolicyFailure.DUPLICATE,
    ),
    (
        "an older version is stale",
        lambda: Offer(store_holding((signed(K0, version=5), ())), signed(K0, version=4)),
        PolicyFailure.STALE_VERSION,
    ),
    (
        "the version held, re-signed, is stale",
        lambda: Offer(
            store_holding((signed(K0, version=5), ())),
            signed(K0, version=5, expires=NOW + 2 * DAY),
        ),
        PolicyFailure.STALE_VERSION,
    ),
    (
        "a version more than the maximum step ahead is a jump",
        lambda: Offer(
            store_holding((signed(K0, version=1), ())), signed(K0, version=2 + MAX_VERSION_STEP)
        ),
        PolicyFailure.VERSION_JUMP,
    ),
    (
        "a policy whose expiry has passed is expired",
        lambda: Offer(PolicyStore(MPK), signed(K0, not_before=NOW - 2 * DAY, expires=NOW - DAY)),
        PolicyFailure.EXPIRED,
    ),
    (
        "a policy expiring exactly now is expired",
        lambda: Offer(PolicyStore(MPK), signed(K0, not_before=NOW - DAY, expires=NOW)),
        PolicyFailure.EXPIRED,
    ),
    (
        "a lifetime over the maximum is too long",
        lambda: Offer(PolicyStore(MPK), signed(K0, expires=NOW + MAX_LIFETIME + 1)),
        PolicyFailure.LIFETIME_TOO_LONG,
    ),
    (
        "a start beyond the clock skew is not yet valid",
        lambda: Offer(PolicyStore(MPK), signed(K0, not_before=NOW + MAX_CLOCK_SKEW + 1)),
        PolicyFailure.NOT_YET_VALID,
    ),
    (
        "another committee's master public key is the wrong MPK",
        lambda: Offer(PolicyStore(MPK), signed(K0, kms_mpk=OTHER_MPK)),
        PolicyFailure.WRONG_MPK,
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS]
)
def test_offer_is_refused_with_its_reason_and_changes_nothing(
    make: Callable[[], Offer], reason: PolicyFailure
) -> None:
    offer = make()
    before = (offer.store.bundles(), len(offer.store))
    result = offer.store.offer(offer.signed, now=offer.now, rotations=offer.rotations)
    assert isinstance(result, PolicyRefused)
    assert result.reason is reason, result.detail
    assert (offer.store.bundles(), len(offer.store)) == before
    with pytest.raises(PolicyError) as info:
        offer.store.check(offer.signed, now=offer.now, rotations=offer.rotations)
    assert info.value.reason is reason


def test_every_store_refusal_reason_has_a_case() -> None:
    covered = {c[2] for c in REFUSALS}
    store_reasons = set(PolicyFailure) - {
        PolicyFailure.MEASUREMENT_MISMATCH,
        PolicyFailure.TCB_STATUS_NOT_ALLOWED,
        PolicyFailure.PURPOSE_NOT_ALLOWED,
        PolicyFailure.VERSION_BELOW_REQUESTED,
        PolicyFailure.EVENT_LOG_INVALID,
        PolicyFailure.APP_ID_NOT_MEASURED,  # admission refusals: test_policy_admission.py
        PolicyFailure.TD_FIELD_MISMATCH,
        PolicyFailure.SYSTEM_EVENT_MISMATCH,
        PolicyFailure.PLATFORM_NOT_ALLOWED,
        PolicyFailure.KEY_VERSION_TOO_OLD,
        PolicyFailure.TCB_EVALUATION_TOO_OLD,
        PolicyFailure.ROTATION_WRONG_SIGNER,  # covered per chain in test_policy_owner_chain.py
        PolicyFailure.ROTATION_KEY_REUSED,
        PolicyFailure.APP_FROZEN,  # registry refusals: tests/kms/apps/
        PolicyFailure.UNKNOWN_APP,
        PolicyFailure.TOO_MANY_ROTATIONS,
        PolicyFailure.REJECTED_BRANCH,
    }
    assert store_reasons <= covered


def test_an_object_that_is_not_a_signed_policy_is_malformed() -> None:
    result = PolicyStore(MPK).offer(make_policy(K0), now=NOW)  # type: ignore[arg-type]
    assert isinstance(result, PolicyRefused) and result.reason is PolicyFailure.MALFORMED


# --- accepting and relaying -------------------------------------------------------------------


def relay(bundle: PolicyBundle) -> PolicyBundle:
    """What another node receives: the bundle through the wire codec."""
    return PolicyBundle.decode(bundle.encode())


def test_a_newer_policy_is_accepted_from_anyone_and_passed_on() -> None:
    a, b = PolicyStore(MPK), PolicyStore(MPK)
    first = a.offer(signed(K0, version=1), now=NOW)
    assert isinstance(first, Accepted) and first.previous_version is None
    assert isinstance(b.offer_bundle(relay(first.bundle), now=NOW + 1), Accepted)
    assert b.current(APP, NOW + 1) == a.current(APP, NOW + 1) == first.bundle.signed.policy

    second = b.offer(signed(K0, version=2), now=NOW + 2)
    assert isinstance(second, Accepted) and second.previous_version == 1
    relayed = a.offer_bundle(relay(second.bundle), now=NOW + 3)
    assert isinstance(relayed, Accepted) and relayed.version == 2
    assert a.version(APP) == b.version(APP) == 2


def test_an_older_policy_relayed_back_is_refused_as_stale() -> None:
    store = PolicyStore(MPK)
    old = store.offer(signed(K0, version=1), now=NOW)
    assert isinstance(old, Accepted)
    assert isinstance(store.offer(signed(K0, version=2), now=NOW), Accepted)
    result = store.offer_bundle(relay(old.bundle), now=NOW)
    assert isinstance(result, PolicyRefused) and result.reason is PolicyFailure.STALE_VERSION
    assert store.version(APP) == 2


def test_a_rotation_travels_with_the_policy_and_is_remembered() -> None:
    a, b = PolicyStore(MPK), PolicyStore(MPK)
    assert isinstance(a.offer(signed(K0, version=1), now=NOW), Accepted)
    rotated = a.offer(signed(K2, app_id=APP, version=2), now=NOW, rotations=ROTATIONS)
    assert isinstance(rotated, Accepted)
    assert rotated.bundle.rotations == (R1, R2)
    assert isinstance(b.offer_bundle(relay(rotated.bundle), now=NOW), Accepted)
    # Later policies need not repeat the rotations a node already holds.
    assert isinstance(a.offer(signed(K2, app_id=APP, version=3), now=NOW), Accepted)
    chain = a.owner_chain(APP)
    assert chain is not None and chain.current == K2.public_bytes()
    # A shorter chain offered again is a prefix of the one held: the owner is still K2.
    assert isinstance(a.offer(signed(K2, app_id=APP, version=4), now=NOW, rotations=[R1]), Accepted)
    refused = a.offer(signed(K1, app_id=APP, version=5), now=NOW, rotations=[R1])
    assert isinstance(refused, PolicyRefused) and refused.reason is PolicyFailure.NOT_OWNER


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(
            lambda: signed(K0, expires=NOW + MAX_LIFETIME), id="a lifetime of exactly the maximum"
        ),
        pytest.param(
            lambda: signed(K0, not_before=NOW + MAX_CLOCK_SKEW), id="a start exactly at the skew"
        ),
        pytest.param(
            lambda: signed(K0, version=4_000_000_000), id="any version for an app first seen"
        ),
        pytest.param(
            lambda: signed(K0, not_before=NOW - MAX_LIFETIME + 1, expires=NOW + 1),
            id="a policy one second from expiry",
        ),
    ],
)
def test_boundary_values_are_accepted(policy: Callable[[], SignedPolicy]) -> None:
    assert isinstance(PolicyStore(MPK).offer(policy(), now=NOW), Accepted)


def test_a_step_of_exactly_the_maximum_is_accepted() -> None:
    store = store_holding((signed(K0, version=7), ()))
    assert isinstance(store.offer(signed(K0, version=7 + MAX_VERSION_STEP), now=NOW), Accepted)


# --- expiry -----------------------------------------------------------------------------------


def test_a_policy_is_current_until_it_expires_and_never_after() -> None:
    store = store_holding((signed(K0, expires=NOW + DAY), ()))
    assert store.current(APP, NOW) is not None
    assert store.current(APP, NOW + DAY - 1) is not None
    assert store.current(APP, NOW + DAY) is None
    assert store.current(APP, NOW + 365 * DAY) is None
    # The node still remembers the version, so an older policy cannot come back.
    held = store.held(APP)
    assert held is not None and held.policy.version == 1
    assert store.version(APP) == 1


def test_a_node_that_misses_every_renewal_drops_the_policy_within_the_maximum_lifetime() -> None:
    store = store_holding((signed(K0, expires=NOW + MAX_LIFETIME), ()))
    assert store.current(APP, NOW + MAX_LIFETIME) is None


def test_a_renewal_after_expiry_is_accepted_and_an_old_one_is_not() -> None:
    store = store_holding((signed(K0, version=3, expires=NOW + DAY), ()))
    later = NOW + 2 * DAY
    stale = store.offer(signed(K0, version=2, not_before=later), now=later)
    assert isinstance(stale, PolicyRefused) and stale.reason is PolicyFailure.STALE_VERSION
    assert isinstance(store.offer(signed(K0, version=4, not_before=later), now=later), Accepted)
    assert store.current(APP, later) is not None


def test_current_is_none_for_an_unknown_app() -> None:
    assert PolicyStore(MPK).current(APP, NOW) is None
    assert PolicyStore(MPK).bundle(APP) is None


# --- persistence ------------------------------------------------------------------------------


def test_restore_reloads_every_bundle_even_expired_ones() -> None:
    store = store_holding(
        (signed(K0, version=1, expires=NOW + DAY), ()),
        (signed(K2, app_id=APP, version=2, expires=NOW + DAY), ROTATIONS),
        (signed(MALLORY, version=9), ()),
    )
    restored = PolicyStore(MPK)
    for bundle in store.bundles():
        restored.restore(PolicyBundle.decode(bundle.encode()))
    assert restored.bundles() == store.bundles()
    assert restored.app_ids() == tuple(sorted((APP, MALLORY.app_id())))
    assert restored.current(APP, NOW + 2 * DAY) is None
    refused = restored.offer(signed(K2, app_id=APP, version=2), now=NOW)
    assert isinstance(refused, PolicyRefused) and refused.reason is PolicyFailure.STALE_VERSION


def test_restore_refuses_another_mpk_and_an_older_version() -> None:
    other = PolicyStore(OTHER_MPK)
    with pytest.raises(PolicyError) as info:
        other.restore(PolicyBundle(signed(K0)))
    assert info.value.reason is PolicyFailure.WRONG_MPK
    store = store_holding((signed(K0, version=2), ()))
    with pytest.raises(PolicyError) as info:
        store.restore(PolicyBundle(signed(K0, version=1)))
    assert info.value.reason is PolicyFailure.STALE_VERSION


def test_the_store_refuses_caller_mistakes() -> None:
    with pytest.raises(LocalProtocolError):
        PolicyStore(b"short")
    with pytest.raises(LocalProtocolError):
        PolicyStore(MPK).offer(signed(K0), now=-1)
    with pytest.raises(LocalProtocolError):
        PolicyStore(MPK).current(APP, True)
