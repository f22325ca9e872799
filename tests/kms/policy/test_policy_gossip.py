"""Policy gossip messages: strict decoding and the digest rule."""

from __future__ import annotations

import pytest

from kms.policy.gossip import (
    MAX_ANSWERS_PER_DIGEST,
    PolicyAnnounce,
    PolicyDigest,
    PolicyVersion,
    newer_than_digest,
)
from mpc.codec import MessageDecodeError, decode

A, B, C = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20


def test_a_digest_is_answered_with_exactly_the_newer_or_missing_apps() -> None:
    theirs = PolicyDigest.of({A: 3, B: 5})
    assert newer_than_digest(theirs, {A: 4, B: 5, C: 1}) == [A, C]
    assert newer_than_digest(theirs, {A: 3, B: 2}) == []
    assert newer_than_digest(PolicyDigest.of({}), {}) == []


def test_a_digest_answer_is_bounded() -> None:
    held = {i.to_bytes(20, "big"): 1 for i in range(MAX_ANSWERS_PER_DIGEST + 10)}
    assert len(newer_than_digest(PolicyDigest.of({}), held)) == MAX_ANSWERS_PER_DIGEST


def test_messages_round_trip_and_unsorted_digests_are_refused() -> None:
    d = PolicyDigest.of({B: 2, A: 1})
    assert [h.app_id for h in d.held] == [A, B]
    assert decode(d.encode()) == d
    a = PolicyAnnounce(b"bundle bytes")
    assert decode(a.encode()) == a
    bad = PolicyDigest(b"", b"", (PolicyVersion(B, 1), PolicyVersion(A, 1)))
    with pytest.raises(MessageDecodeError):
        decode(bad.encode())
    twice = PolicyDigest(b"", b"", (PolicyVersion(A, 1), PolicyVersion(A, 2)))
    with pytest.raises(MessageDecodeError):
        decode(twice.encode())
    outside = PolicyDigest(B, C, (PolicyVersion(A, 1),))
    with pytest.raises(MessageDecodeError):
        decode(outside.encode())
    empty_range = PolicyDigest(B, B, ())
    with pytest.raises(MessageDecodeError):
        decode(empty_range.encode())


def test_a_digest_answer_names_only_apps_in_the_digests_range() -> None:
    page = PolicyDigest.page([(B, 1)], B, C)  # [B, C): A and C lie outside
    assert newer_than_digest(page, {A: 9, B: 2, C: 9}) == [B]
    assert newer_than_digest(page, {A: 9, B: 1, C: 9}) == []  # in sync: nothing
    last = PolicyDigest.page([(C, 1)], C, b"")  # the last page has no upper bound
    assert newer_than_digest(last, {A: 9, C: 1, b"\x04" * 20: 1}) == [b"\x04" * 20]


def test_one_page_is_refused_for_more_apps_than_a_digest_holds() -> None:
    from kms.policy.gossip import MAX_DIGEST_ENTRIES

    with pytest.raises(ValueError, match="too many"):
        PolicyDigest.of({i.to_bytes(20, "big"): 1 for i in range(MAX_DIGEST_ENTRIES + 1)})


def test_a_new_policy_goes_to_every_other_member_but_its_source() -> None:
    from kms.policy.gossip import announce_to

    assert announce_to([1, 2, 3, 4], me=2) == [1, 3, 4]
    assert announce_to([1, 2, 3, 4], me=2, origin=4) == [1, 3]


def test_what_a_node_does_with_a_peers_bundle() -> None:
    from kms.policy import PolicyFailure as F
    from kms.policy.gossip import offer_outcome

    assert offer_outcome(True, False, None) == (True, None)  # new: pass it on
    assert offer_outcome(True, True, None) == (False, None)  # the flood's echo
    assert offer_outcome(False, False, F.STALE_VERSION) == (False, None)  # a peer behind
    assert offer_outcome(False, False, None) == (False, None)  # this node keeps no policies
    assert offer_outcome(False, False, F.BAD_SIGNATURE) == (False, "policy gossip: bad_signature")
    assert offer_outcome(False, False, F.NOT_OWNER) == (False, None)  # not seen the rotation
    assert offer_outcome(False, False, F.UNKNOWN_APP) == (False, None)  # cached only
