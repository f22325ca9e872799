"""Wire encoding of policies and rotations: round trips, strict decoding, fuzzing."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from policy_helpers import BY_COMPOSE, EXPLICIT, MPK, NOW, make_policy, owner, rotation_chain

from kms.policy import (
    CTX_APP_POLICY,
    DEFAULT_LIFETIME,
    AppPolicy,
    Measurement,
    NodeAdmissionPolicy,
    PolicyBundle,
    PolicyError,
    PolicyFailure,
    RotationRecord,
    SignedPolicy,
)
from kms.policy.policy import MAX_MEASUREMENTS
from mpc.codec import MessageDecodeError, decode
from mpc.errors import LocalProtocolError

K0, K1 = owner(30), owner(31)
POLICY = make_policy(K0, measurements=(EXPLICIT, BY_COMPOSE), purposes=("app", "disk"))
SIGNED = POLICY.sign(K0)
_, (ROTATION,) = rotation_chain([K0, K1])
BUNDLE = PolicyBundle(make_policy(K1, app_id=K0.app_id()).sign(K1), (ROTATION,))
NODE_POLICY = NodeAdmissionPolicy.build([EXPLICIT, BY_COMPOSE], ["UpToDate", "SWHardeningNeeded"])

MESSAGES = [
    pytest.param(EXPLICIT, id="an explicit measurement"),
    pytest.param(BY_COMPOSE, id="a compose-hash measurement"),
    pytest.param(POLICY, id="an app policy"),
    pytest.param(SIGNED, id="a signed policy"),
    pytest.param(ROTATION, id="a rotation record"),
    pytest.param(BUNDLE, id="a policy bundle"),
    pytest.param(NODE_POLICY, id="a node admission policy"),
]


@pytest.mark.parametrize("message", MESSAGES)
def test_round_trip(message: Any) -> None:
    data = message.encode()
    assert decode(data) == message
    assert type(message).decode(data) == message
    assert decode(data).encode() == data


def test_build_sorts_and_deduplicates_so_the_encoding_is_unique() -> None:
    shuffled = AppPolicy.build(
        app_id=K0.app_id(),
        version=1,
        owner_key=K0.public_bytes(),
        measurements=[BY_COMPOSE, EXPLICIT, BY_COMPOSE],
        kms_mpk=MPK,
        not_before=NOW,
        allowed_tcb_statuses=["UpToDate", "UpToDate"],
        purposes=["disk", "app", "disk"],
    )
    assert shuffled.encode() == POLICY.encode()
    assert shuffled.expires == NOW + DEFAULT_LIFETIME


def test_build_refuses_what_would_not_decode() -> None:
    with pytest.raises(PolicyError) as info:
        make_policy(K0, purposes=("Not Valid",))
    assert info.value.reason is PolicyFailure.MALFORMED
    with pytest.raises(PolicyError):
        NodeAdmissionPolicy.build([EXPLICIT], ["Revoked"])


def test_a_policy_can_only_be_signed_by_the_key_it_names() -> None:
    with pytest.raises(LocalProtocolError):
        POLICY.sign(K1)


def test_the_policy_signature_covers_the_canonical_encoding_under_its_context() -> None:
    K0.verify_key().verify(CTX_APP_POLICY, POLICY.encode(), SIGNED.signature)
    SIGNED.verify_signature()


# --- decoding refuses malformed documents -------------------------------------------------------


def policy_with(**changes: Any) -> bytes:
    """A signed policy whose inner policy has ``changes``, encoded without validation."""
    return SignedPolicy(dataclasses.replace(POLICY, **changes), SIGNED.signature).encode()


M2 = dataclasses.replace(EXPLICIT, rtmr3=b"\x01" * 48)
MALFORMED: list[tuple[str, Callable[[], bytes]]] = [
    ("purposes out of order", lambda: policy_with(purposes=("disk", "app"))),
    ("a repeated purpose", lambda: policy_with(purposes=("app", "app"))),
    ("a purpose with capitals", lambda: policy_with(purposes=("App",))),
    ("a purpose of 65 characters", lambda: policy_with(purposes=("a" * 65,))),
    ("an empty purpose", lambda: policy_with(purposes=("",))),
    ("an unknown TCB status", lambda: policy_with(allowed_tcb_statuses=("Fine",))),
    ("a revoked TCB status", lambda: policy_with(allowed_tcb_statuses=("Revoked",))),
    (
        "TCB statuses out of order",
        lambda: policy_with(allowed_tcb_statuses=("UpToDate", "OutOfDate")),
    ),
    (
        "measurements out of order",
        lambda: policy_with(
            measurements=tuple(sorted((EXPLICIT, M2), key=lambda m: m.encode(), reverse=True))
        ),
    ),
    ("a repeated measurement", lambda: policy_with(measurements=(EXPLICIT, EXPLICIT))),
    (
        "a measurement pinning both RTMR3 and a compose hash",
        lambda: policy_with(
            measurements=(dataclasses.replace(EXPLICIT, compose_hash=b"\x00" * 32),)
        ),
    ),
    (
        "a measurement pinning neither RTMR3 nor a compose hash",
        lambda: policy_with(measurements=(dataclasses.replace(EXPLICIT, rtmr3=None),)),
    ),
    (
        "a 47-byte MRTD",
        lambda: policy_with(measurements=(dataclasses.replace(EXPLICIT, mr_td=b"\x00" * 47),)),
    ),
    (
        "a 31-byte compose hash",
        lambda: policy_with(
            measurements=(dataclasses.replace(BY_COMPOSE, compose_hash=b"\x00" * 31),)
        ),
    ),
    (
        "too many measurements",
        lambda: policy_with(
            measurements=tuple(
                dataclasses.replace(EXPLICIT, rtmr3=i.to_bytes(48, "big"))
                for i in range(MAX_MEASUREMENTS + 1)
            )
        ),
    ),
    ("version zero", lambda: policy_with(version=0)),
    ("expiry equal to the start", lambda: policy_with(expires=POLICY.not_before)),
    ("a 19-byte app id", lambda: policy_with(app_id=b"\x00" * 19)),
    ("a small-order owner key", lambda: policy_with(owner_key=b"\x01" + b"\x00" * 31)),
    ("a 95-byte master public key", lambda: policy_with(kms_mpk=b"\x00" * 95)),
    ("a 63-byte signature", lambda: SignedPolicy(POLICY, SIGNED.signature[:63]).encode()),
    ("a time beyond 32 bits", lambda: policy_with(expires=2**32)),
    (
        "bytes sent as a string",
        lambda: msgpack.packb(SIGNED.to_wire(), use_bin_type=False),
    ),
    ("a trailing byte", lambda: SIGNED.encode() + b"\x00"),
    ("a truncated encoding", lambda: SIGNED.encode()[:-1]),
    ("another message type", lambda: ROTATION.encode()),
]


@pytest.mark.parametrize("make", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_decoding_a_malformed_signed_policy_fails(make: Callable[[], bytes]) -> None:
    with pytest.raises(MessageDecodeError):
        SignedPolicy.decode(make())


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(dataclasses.replace(ROTATION, sequence=0), id="rotation number zero"),
        pytest.param(
            dataclasses.replace(ROTATION, next_key=ROTATION.previous_key),
            id="a rotation to the same key",
        ),
        pytest.param(
            dataclasses.replace(ROTATION, next_key=b"\xff" * 32),
            id="a next key that is not a point",
        ),
    ],
)
def test_decoding_a_malformed_rotation_fails(record: RotationRecord) -> None:
    with pytest.raises(MessageDecodeError):
        RotationRecord.decode(record.encode())


def test_decoding_a_node_policy_with_a_revoked_status_fails() -> None:
    bad = dataclasses.replace(NODE_POLICY, allowed_tcb_statuses=("Revoked",))
    with pytest.raises(MessageDecodeError):
        NodeAdmissionPolicy.decode(bad.encode())


def test_decoding_a_measurement_alone_checks_it() -> None:
    with pytest.raises(MessageDecodeError):
        Measurement.decode(dataclasses.replace(EXPLICIT, compose_hash=b"\x00" * 32).encode())


# --- fuzzing ----------------------------------------------------------------------------------

DECODERS = [SignedPolicy, PolicyBundle, RotationRecord, NodeAdmissionPolicy]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_arbitrary_bytes_into_signed_policy_decode_raise_only_decode_errors(data: bytes) -> None:
    try:
        SignedPolicy.decode(data)
    except MessageDecodeError:
        pass


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(DECODERS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.sampled_from(["replace", "insert", "delete"]),
)
def test_mutated_encodings_raise_only_decode_errors(
    cls: Any, edits: list[tuple[int, int]], how: str
) -> None:
    sample = {
        SignedPolicy: SIGNED,
        PolicyBundle: BUNDLE,
        RotationRecord: ROTATION,
        NodeAdmissionPolicy: NODE_POLICY,
    }[cls]
    data = bytearray(sample.encode())
    for pos, value in edits:
        i = pos % len(data)
        if how == "replace":
            data[i] = value
        elif how == "insert":
            data.insert(i, value)
        elif len(data) > 1:
            del data[i]
    try:
        decoded = cls.decode(bytes(data))
    except MessageDecodeError:
        return
    assert decoded.encode() == bytes(data)
