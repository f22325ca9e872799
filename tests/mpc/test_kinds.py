"""The typed kinds of ``mpc``: ``RunKind``, ``ChangeKind``, ``LinkKind``.

Each is a ``StrEnum`` whose values are the strings the code used before, so
comparing, printing and encoding give what they gave; each names every thing
of its sort exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
from dkg_harness import schedule
from mesh import make_nodes

from mpc.cert import EpochCertificate, RunKind
from mpc.dkg.session import SharingConfig
from mpc.errors import LocalProtocolError
from mpc.ids import ParticipantIndex as PI
from mpc.membership import (
    AddMember,
    ChangeAdmissionPolicy,
    ChangeKind,
    ChangeThreshold,
    LinkKind,
    MembershipCertificate,
    Proposal,
    Refresh,
    RemoveMember,
)
from mpc.membership.messages import KIND_ORDER, Change, change_kind
from mpc.membership.testing import participants


def test_the_values_are_the_old_strings() -> None:
    assert [k.value for k in RunKind] == ["dkg", "reshare"]
    assert [k.value for k in LinkKind] == ["epoch", "membership"]
    assert [k.value for k in ChangeKind] == [
        "add",
        "remove",
        "threshold",
        "admission-policy",
        "refresh",
    ]
    for k in (*RunKind, *LinkKind, *ChangeKind):
        assert k == k.value and str(k) == k.value and f"{k}" == k.value
        assert json.dumps({"kind": k}) == json.dumps({"kind": k.value})


CHANGES: list[Change] = [
    AddMember(participants(1)[0], b"attestation"),
    RemoveMember(1, b"evidence"),
    ChangeThreshold(3),
    ChangeAdmissionPolicy(b"policy"),
    Refresh(),
]


def test_every_change_has_one_kind_and_one_order() -> None:
    assert set(typing.get_args(Change)) == {type(c) for c in CHANGES}
    kinds = [change_kind(c) for c in CHANGES]
    assert sorted(kinds) == sorted(ChangeKind) and len(set(kinds)) == len(ChangeKind)
    assert set(KIND_ORDER) == set(ChangeKind)
    assert [k for k in ChangeKind if KIND_ORDER[k]] == [ChangeKind.REFRESH]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: type(c).__name__)
def test_a_proposal_carries_its_change_in_the_field_its_kind_names(change: Change) -> None:
    p = Proposal.of(0, b"\x00" * 32, 1, b"\x00" * 16, change)
    assert p.change == change and p.kind is change_kind(change)
    assert Proposal.decode(p.encode()).kind is p.kind
    set_fields = [f.name for f in dataclasses.fields(p) if f.name in _CHANGE_FIELD_NAMES]
    assert [n for n in set_fields if getattr(p, n) is not None] == [p.kind.value.replace("-", "_")]


_CHANGE_FIELD_NAMES = {"add", "remove", "threshold", "admission_policy", "refresh"}


def test_a_link_kind_names_each_certificate_type() -> None:
    from mpc.membership.messages import _LINK_TYPES

    assert _LINK_TYPES == {
        LinkKind.EPOCH: EpochCertificate,
        LinkKind.MEMBERSHIP: MembershipCertificate,
    }


def _config(kind: object) -> SharingConfig:
    nodes = make_nodes(range(1, 4), 7)
    ps = tuple(nodes[PI(i)].participant for i in range(1, 4))
    return SharingConfig(
        kind=kind,  # type: ignore[arg-type]
        epoch=0,
        attempt=0,
        dealers=ps,
        recipients=ps,
        threshold=2,
        schedule=schedule(2),
    )


@pytest.mark.parametrize("kind", [RunKind.DKG, "dkg"])
def test_a_sharing_config_holds_a_run_kind(kind: object) -> None:
    cfg = _config(kind)
    assert cfg.kind is RunKind.DKG
    assert cfg.run_id() == _config(RunKind.DKG).run_id()


@pytest.mark.parametrize("kind", ["refresh", "DKG", "", b"dkg", 0, None])
def test_a_sharing_config_of_no_run_kind_is_refused(kind: object) -> None:
    with pytest.raises(LocalProtocolError):
        _config(kind)
