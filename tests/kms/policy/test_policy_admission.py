"""``admits`` and ``admits_node``: which CVMs a policy lets in (``kms.policy.admission``)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import (
    BY_COMPOSE,
    COMPOSE_HASH,
    DAY,
    EXPLICIT,
    MR_TD,
    NOW,
    RTMR0,
    RTMR1,
    RTMR2,
    TD,
    make_policy,
    owner,
)

from kms.policy import (
    MAX_CLOCK_SKEW,
    AppPolicy,
    Measurement,
    NodeAdmissionPolicy,
    PolicyError,
    PolicyFailure,
    admits,
    admits_node,
    build_event_log,
    dstack_boot_events,
    matching_measurement,
)
from mpc.errors import LocalProtocolError
from mpc.membership.messages import ChangeAdmissionPolicy

KEY = owner(20)
LOG, LOG_RTMR3 = build_event_log(dstack_boot_events(app_id=KEY.app_id(), compose_hash=COMPOSE_HASH))
COMPOSE_TD = TD(rtmr3=LOG_RTMR3)
OTHER_LOG, OTHER_RTMR3 = build_event_log(
    dstack_boot_events(app_id=KEY.app_id(), compose_hash=b"\x77" * 32)
)


def policy(**kwargs: Any) -> AppPolicy:
    kwargs.setdefault("measurements", (EXPLICIT, BY_COMPOSE))
    kwargs.setdefault("purposes", ("app", "disk"))
    return make_policy(KEY, **kwargs)


def check(p: AppPolicy, **kwargs: Any) -> None:
    args: dict[str, Any] = {"td": TD(), "tcb_status": "UpToDate", "purpose": "app", "now": NOW}
    args.update(kwargs)
    admits(p, **args)


# --- admitted -----------------------------------------------------------------------------------


def test_a_cvm_matching_an_explicit_entry_is_admitted() -> None:
    check(policy())
    check(policy(), purpose="disk")


def test_a_cvm_whose_replayed_log_names_an_allowed_compose_hash_is_admitted() -> None:
    check(policy(), td=COMPOSE_TD, event_log=LOG)
    check(policy(), td=COMPOSE_TD, event_log=LOG.encode())
    assert matching_measurement(policy().measurements, td=COMPOSE_TD, event_log=LOG) == BY_COMPOSE


def test_an_explicit_match_needs_no_event_log_and_ignores_a_broken_one() -> None:
    check(policy(), event_log="not json")


def test_an_allowed_older_tcb_status_is_admitted() -> None:
    check(policy(tcb=("OutOfDate", "UpToDate")), tcb_status="OutOfDate")


def test_a_policy_at_the_requested_version_is_admitted() -> None:
    check(policy(version=3), min_version=3)


def test_a_start_within_the_clock_skew_is_admitted() -> None:
    check(policy(not_before=NOW + MAX_CLOCK_SKEW))


def test_the_real_dstack_cvm_is_admitted_by_its_compose_hash() -> None:
    vector = json.loads((Path(__file__).parent / "dstack_tcb_info.json").read_text())
    regs = {k: bytes.fromhex(vector[k]) for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")}
    entry = Measurement.compose(
        mr_td=regs["mrtd"],
        rtmr0=regs["rtmr0"],
        rtmr1=regs["rtmr1"],
        rtmr2=regs["rtmr2"],
        compose_hash=hashlib.sha256(vector["app_compose"].encode()).digest(),
    )
    td = TD(regs["mrtd"], regs["rtmr0"], regs["rtmr1"], regs["rtmr2"], regs["rtmr3"])
    real_app = bytes.fromhex("5b979a9a745405d4de53aae0e2c3a09d24b174a3")
    check(
        policy(measurements=(entry,), app_id=real_app),
        td=td,
        event_log=json.dumps(vector["event_log"]),
    )
    with pytest.raises(PolicyError) as info:  # the same CVM asking for another app's keys
        check(policy(measurements=(entry,)), td=td, event_log=json.dumps(vector["event_log"]))
    assert info.value.reason is PolicyFailure.APP_ID_NOT_MEASURED


# --- refused ------------------------------------------------------------------------------------

Refusal = tuple[str, Callable[[], None], PolicyFailure]
REFUSALS: list[Refusal] = [
    (
        "an expired policy admits nobody",
        lambda: check(policy(not_before=NOW - DAY, expires=NOW)),
        PolicyFailure.EXPIRED,
    ),
    (
        "a policy starting beyond the clock skew admits nobody yet",
        lambda: check(policy(not_before=NOW + MAX_CLOCK_SKEW + 1)),
        PolicyFailure.NOT_YET_VALID,
    ),
    (
        "a policy older than the CVM asked for is refused",
        lambda: check(policy(version=2), min_version=3),
        PolicyFailure.VERSION_BELOW_REQUESTED,
    ),
    (
        "a purpose the policy does not list is refused",
        lambda: check(policy(), purpose="signing"),
        PolicyFailure.PURPOSE_NOT_ALLOWED,
    ),
    (
        "a TCB status the policy does not allow is refused",
        lambda: check(policy(), tcb_status="OutOfDate"),
        PolicyFailure.TCB_STATUS_NOT_ALLOWED,
    ),
    (
        "a revoked platform is never allowed",
        lambda: check(policy(tcb=tuple(sorted(["UpToDate", "OutOfDate"]))), tcb_status="Revoked"),
        PolicyFailure.TCB_STATUS_NOT_ALLOWED,
    ),
    (
        "another firmware is a measurement mismatch",
        lambda: check(policy(), td=TD(mr_td=b"\x00" * 48)),
        PolicyFailure.MEASUREMENT_MISMATCH,
    ),
    (
        "another kernel is a measurement mismatch even with a valid log",
        lambda: check(
            policy(), td=dataclasses.replace(COMPOSE_TD, rtmr1=b"\x00" * 48), event_log=LOG
        ),
        PolicyFailure.MEASUREMENT_MISMATCH,
    ),
    (
        "another RTMR3 without an event log is a measurement mismatch",
        lambda: check(policy(), td=COMPOSE_TD),
        PolicyFailure.MEASUREMENT_MISMATCH,
    ),
    (
        "another RTMR3 with only explicit entries is a measurement mismatch",
        lambda: check(policy(measurements=(EXPLICIT,)), td=COMPOSE_TD, event_log=LOG),
        PolicyFailure.MEASUREMENT_MISMATCH,
    ),
    (
        "a compose hash the policy does not list is a measurement mismatch",
        lambda: check(policy(), td=TD(rtmr3=OTHER_RTMR3), event_log=OTHER_LOG),
        PolicyFailure.MEASUREMENT_MISMATCH,
    ),
    (
        "a policy with no measurements admits nobody",
        lambda: check(policy(measurements=())),
        PolicyFailure.MEASUREMENT_MISMATCH,
    ),
    (
        "a log that does not replay to the quote's RTMR3 is invalid",
        lambda: check(policy(), td=TD(rtmr3=OTHER_RTMR3), event_log=LOG),
        PolicyFailure.EVENT_LOG_INVALID,
    ),
    (
        "a log that is not JSON is invalid when a compose hash is needed",
        lambda: check(policy(), td=COMPOSE_TD, event_log="{"),
        PolicyFailure.EVENT_LOG_INVALID,
    ),
]


@pytest.mark.parametrize(
    ("call", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_admission(call: Callable[[], None], reason: PolicyFailure) -> None:
    with pytest.raises(PolicyError) as info:
        call()
    assert info.value.reason is reason, str(info.value)


def test_an_invalid_log_error_keeps_the_event_log_reason() -> None:
    with pytest.raises(PolicyError) as info:
        check(policy(), td=TD(rtmr3=OTHER_RTMR3), event_log=LOG)
    assert "replay_mismatch" in str(info.value)
    assert info.value.__cause__ is not None


def test_td_registers_of_the_wrong_size_are_a_caller_error() -> None:
    with pytest.raises(LocalProtocolError):
        check(policy(), td=TD(rtmr2=b"\x00" * 47))


def test_a_policy_stays_valid_for_its_whole_window() -> None:
    p = policy(not_before=NOW, expires=NOW + DAY)
    check(p, now=NOW + DAY - 1)
    with pytest.raises(PolicyError):
        check(p, now=NOW + DAY)


# --- KMS node admission ------------------------------------------------------------------------

NODE_POLICY = NodeAdmissionPolicy.build([BY_COMPOSE, EXPLICIT], ["UpToDate"])


def test_a_node_matching_the_admission_policy_is_admitted() -> None:
    admits_node(NODE_POLICY, td=TD(), tcb_status="UpToDate")
    admits_node(NODE_POLICY, td=COMPOSE_TD, tcb_status="UpToDate", event_log=LOG)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        pytest.param(
            {"td": TD(), "tcb_status": "OutOfDate"},
            PolicyFailure.TCB_STATUS_NOT_ALLOWED,
            id="a node on an out-of-date platform is refused",
        ),
        pytest.param(
            {"td": TD(rtmr0=b"\x00" * 48), "tcb_status": "UpToDate"},
            PolicyFailure.MEASUREMENT_MISMATCH,
            id="a node on another virtual hardware is refused",
        ),
        pytest.param(
            {"td": TD(rtmr3=OTHER_RTMR3), "tcb_status": "UpToDate", "event_log": OTHER_LOG},
            PolicyFailure.MEASUREMENT_MISMATCH,
            id="a node running another compose file is refused",
        ),
    ],
)
def test_refused_node(kwargs: dict[str, Any], reason: PolicyFailure) -> None:
    with pytest.raises(PolicyError) as info:
        admits_node(NODE_POLICY, **kwargs)
    assert info.value.reason is reason


def test_the_node_policy_hash_is_the_hash_membership_changes_carry() -> None:
    encoded = NODE_POLICY.encode()
    assert NODE_POLICY.policy_hash() == hashlib.sha256(encoded).digest()
    assert ChangeAdmissionPolicy(policy=encoded).policy_hash() == NODE_POLICY.policy_hash()


def test_the_node_policy_hash_does_not_depend_on_the_order_given() -> None:
    again = NodeAdmissionPolicy.build([EXPLICIT, BY_COMPOSE, EXPLICIT], ["UpToDate", "UpToDate"])
    assert again == NODE_POLICY
    assert again.policy_hash() == NODE_POLICY.policy_hash()
    other = NodeAdmissionPolicy.build([EXPLICIT], ["UpToDate"])
    assert other.policy_hash() != NODE_POLICY.policy_hash()


def test_registers_of_an_entry_are_each_checked() -> None:
    regs = {"mr_td": MR_TD, "rtmr0": RTMR0, "rtmr1": RTMR1, "rtmr2": RTMR2}
    for name in regs:
        td = TD(**{**regs, name: b"\x00" * 48})
        with pytest.raises(PolicyError) as info:
            admits_node(NODE_POLICY, td=td, tcb_status="UpToDate")
        assert info.value.reason is PolicyFailure.MEASUREMENT_MISMATCH
