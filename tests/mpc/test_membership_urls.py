"""``certified_urls``: a member's URL comes from its certified ``AddMember``, and links
from an untrusted node cost at most one signature check per member looked for."""

from __future__ import annotations

import time

from joined_chain import URL, forged, joined

from mpc.ids import ParticipantIndex as PI
from mpc.membership import certified_urls


def test_many_forged_links_cost_one_signature_check_per_member() -> None:
    _, state, cert = joined()
    assert certified_urls([cert], state) == {PI(6): URL}
    many = [forged(cert, k) for k in range(4096)]
    # The genuine link first: found, and the 4096 forged ones after it are not checked.
    c = time.thread_time()
    assert certified_urls([cert, *many], state) == {PI(6): URL}
    cpu = time.thread_time() - c
    assert cpu < 0.5, cpu  # 4096 checks cost about 5 s
    # Forged links first: the first is checked and fails, and node 6 is looked for no
    # more (an honest chain holds one AddMember per member), so nothing is learned.
    c = time.thread_time()
    assert certified_urls([*many, cert], state) == {}
    cpu = time.thread_time() - c
    assert cpu < 0.5, cpu

    # Pages: a member checked on an earlier page is not checked again.
    checked: set[PI] = set()
    assert certified_urls(many[:1], state, checked=checked) == {}
    assert checked == {PI(6)}
    assert certified_urls([cert], state, checked=checked) == {}
    # Only wanted members are looked for; genesis members have no AddMember.
    assert certified_urls([cert], state, wanted={PI(1)}) == {}
    assert certified_urls([cert], state, wanted={PI(6)}) == {PI(6): URL}
    # A node's own (verified) chain: no signature checks, the same answer.
    assert certified_urls([cert], state, check_signatures=False) == {PI(6): URL}
