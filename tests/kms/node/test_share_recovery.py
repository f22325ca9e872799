"""A member that was down through the deal phase recovers its share from the deals.

Every node is a real ``NodeService`` with its SQLite store; messages go over the mesh
through the codec; a crash drops everything sent to the member, and its restart is a
new service on the same store. Genesis: ``n = 5, t = 3``, members 4 and 5 corrupt
(``t - 1``). Member 3 crashes at the start of the deal phase and comes back after it:
its run fails here (it holds none of the deals), the others certify. Without its
share only two honest members hold one, fewer than ``t``.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mesh import Mesh
from stored_committee import Committee, mesh_for

from kms.node.core import PROMPT_NONCE, EpochSwitched, InputRejected
from mpc import hpke
from mpc.broadcast import BroadcastPayload, SignedDigest, session_id
from mpc.codec import MessageDecodeError, decode
from mpc.dkg.messages import DealBundle, DealsAnswer, DealsRequest, EncryptedShare
from mpc.dkg.session import RUN_KEY_RECORD, SHARE_INFO
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2, R
from mpc.math.fields import scalar_to_bytes
from mpc.math.poly import interpolate_at
from mpc.membership import Refresh
from mpc.membership.messages import Ballot
from mpc.sig import CTX_BROADCAST_DIGEST, SigningKey

ME = PI(3)
CORRUPT = (PI(4), PI(5))


class Crash:
    """Member 3 is down from ``down`` to ``up``: nothing reaches it. ``answers`` decides
    what becomes of the deal answers sent to it (None: delivered as usual)."""

    def __init__(self, down: float, up: float) -> None:
        self.down, self.up = down, up
        self.answers: Any = None
        self.sent: list[tuple[PI, PI, Any]] = []

    def __call__(self, sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        self.sent.append((sender, to, message))
        if to == ME and self.down <= now < self.up:
            return []
        if isinstance(message, DealsAnswer) and self.answers is not None:
            return self.answers(sender, to, message, now)
        return None


def crash_through_deals(c: Committee, seed: int) -> tuple[Mesh, Crash, Any]:
    sched = c.configs[PI(1)].genesis_schedule(0)
    crash = Crash(sched.key_end, sched.deal_end + 0.2)
    mesh = mesh_for(c, crash)
    mesh.at(crash.down, lambda: mesh.asleep.__setitem__(ME, crash.up))
    mesh.at(crash.up, lambda: c.restart(mesh, [ME], seed))
    return mesh, crash, sched


def prompt_refreshes(crash: Any) -> list[Any]:
    """The prompt-refresh proposals in the ballots member 3 sent."""
    prompt = []
    for s, _to, m in crash.sent:
        if s == ME and isinstance(m, BroadcastPayload):
            try:
                ballot = Ballot.decode(m.payload)
            except (MessageDecodeError, ValueError):
                continue
            prompt += [p for p in ballot.proposals if p.nonce == PROMPT_NONCE]
    return prompt


def honest_holders_reconstruct(c: Committee, members: list[int]) -> None:
    mpk = c.core(1).state.mpk
    for i in members:
        core = c.core(i)
        assert core.state is not None and core.state.mpk == mpk
        assert core.share is not None, f"member {i} holds no share"
    for group in itertools.combinations(members, c.t):
        s = interpolate_at([(i, c.core(i).share.value.value) for i in group])
        assert s * G2.generator() == mpk, group


def test_a_member_down_through_the_deal_phase_recovers_its_share_from_the_deals(
    tmp_path: Path,
) -> None:
    c = Committee(tmp_path, 5, 3, seed=21)
    mesh, crash, sched = crash_through_deals(c, 21)

    def corrupt_stay_silent(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        return [] if sender in CORRUPT else None

    crash.answers = corrupt_stay_silent
    mesh.run_until(sched.certify_end + 10.0)
    assert c.core(1).state is not None and c.core(1).state.epoch == 0
    # The honest members 1, 2 and 3 hold shares of the certified epoch: t of them.
    honest_holders_reconstruct(c, [1, 2, 3])
    assert ME in c.core(1).status().share_holders  # it acknowledged its share
    # The key seed is gone once the share is recovered.
    assert not any(
        key == RUN_KEY_RECORD for run in c.stores[ME].runs() for key in c.stores[ME].records(run)
    )
    # An answer from a member it did not ask is refused and counted.
    run = next(m.run for s, _to, m in crash.sent if isinstance(m, DealsRequest))
    served = next(m for s, to, m in crash.sent if isinstance(m, DealsAnswer) and s == PI(1))
    now = mesh.now
    c.core(3).receive(PI(2), decode(served.encode()), now)
    assert any(
        isinstance(e, InputRejected) and "did not ask" in e.reason and e.peer == PI(2)
        for e in c.core(3).events()
    )
    # Requests are metered per peer: a burst of two, then one every 10 Δ.
    answerer = c.core(1)
    answerer.messages_to_send()
    for _ in range(4):
        answerer.receive(PI(4), decode(DealsRequest(run).encode()), now)
    answers = [m for m in answerer.messages_to_send() if isinstance(m.message, DealsAnswer)]
    assert len(answers) == 2
    assert (
        sum(isinstance(e, InputRejected) and "rate limited" in e.reason for e in answerer.events())
        == 2
    )
    answerer.receive(PI(4), decode(DealsRequest(run).encode()), now + 10 * 0.5)
    assert [m for m in answerer.messages_to_send() if isinstance(m.message, DealsAnswer)]
    # A request for a run it holds no deals of gets nothing.
    answerer.receive(PI(5), decode(DealsRequest(bytes(32)).encode()), now + 10 * 0.5)
    assert not [m for m in answerer.messages_to_send() if isinstance(m.message, DealsAnswer)]
    c.close()


# --- corrupt answers ----------------------------------------------------------------


def key_of(c: Committee, i: PI) -> SigningKey:
    return SigningKey.from_seed(c.seeds[i][0])


def signed(key: SigningKey, session: bytes, sender: int, payload: bytes) -> BroadcastPayload:
    digest = hashlib.sha256(payload).digest()
    header = SignedDigest(session, sender, digest, b"")
    return BroadcastPayload(
        replace(header, signature=key.sign(CTX_BROADCAST_DIGEST, header.statement())), payload
    )


def with_my_share(bundle: DealBundle, enc: bytes, ct: bytes) -> DealBundle:
    shares = tuple(
        EncryptedShare(s.recipient, enc, ct) if s.recipient == int(ME) else s for s in bundle.shares
    )
    return replace(bundle, shares=shares)


def my_run_key(c: Committee) -> bytes:
    seeds = [
        data
        for run in c.stores[ME].runs()
        for key, data in c.stores[ME].records(run).items()
        if key == RUN_KEY_RECORD
    ]
    return hpke.derive_key_pair(seeds[0])[1]


def tamper(c: Committee, kind: str, corrupt: PI, honest: DealsAnswer) -> DealsAnswer:
    """What a corrupt member sends instead of the deals it holds."""
    key = key_of(c, corrupt)
    deals = {p.header.sender: p for p in honest.deals}
    if kind == "forged":
        # Dealer 1's deal with another share for member 3, signed by the corrupt member.
        d1 = deals[1]
        bundle = with_my_share(DealBundle.decode(d1.payload), b"\x07" * 32, bytes(48))
        deals[1] = signed(key, d1.header.session, 1, bundle.encode())
    elif kind == "other-run":
        # The corrupt dealer's own deal, validly signed, but in another run.
        own = deals[int(corrupt)]
        deals[int(corrupt)] = signed(
            key, session_id(b"\x01" * 32, b"deal"), int(corrupt), own.payload
        )
    elif kind == "non-qual":
        # Leave out dealer 1: the dealers named are not the certified QUAL.
        deals.pop(1)
        return DealsAnswer(
            honest.run,
            tuple(d for d in honest.qual if d != 1),
            tuple(deals[d] for d in sorted(deals)),
            (),
        )
    elif kind == "tampered":
        # The corrupt dealer re-signs its own deal (right run, right round) with a wrong
        # share for member 3, sealed to member 3's run key: it opens, and fails the
        # dealer's commitments.
        own = deals[int(corrupt)]
        bundle = DealBundle.decode(own.payload)
        info = (
            SHARE_INFO + honest.run + int(corrupt).to_bytes(4, "big") + int(ME).to_bytes(4, "big")
        )
        enc, ct = hpke.seal(
            my_run_key(c),
            info,
            bundle.commitments_hash(),
            scalar_to_bytes(12345 % R),
            rng=random.Random(1).randbytes,
        )
        deals[int(corrupt)] = signed(
            key, own.header.session, int(corrupt), with_my_share(bundle, enc, ct).encode()
        )
    return replace(honest, deals=tuple(deals[d] for d in sorted(deals)))


@pytest.mark.parametrize("kinds", [("forged", "other-run"), ("non-qual", "tampered")])
def test_corrupt_answers_cannot_make_it_adopt_a_wrong_share_and_are_counted(
    tmp_path: Path, kinds: tuple[str, str]
) -> None:
    c = Committee(tmp_path, 5, 3, seed=22)
    mesh, crash, sched = crash_through_deals(c, 22)
    by = dict(zip(CORRUPT, kinds, strict=True))

    def answers(sender: PI, to: PI, message: Any, now: float) -> list[float] | None:
        if sender in by:
            # The corrupt members answer at once, with what they forged.
            bad = tamper(c, by[sender], sender, message)
            mesh.inject(sender, to, bad.encode(), now + 0.01)
            return []
        return [now + 1.0]  # the honest answers come later

    crash.answers = answers
    mesh.run_until(sched.certify_end + 10.0)
    honest_holders_reconstruct(c, [1, 2, 3])
    rejected = {
        e.peer: e.reason
        for e in mesh.events[ME]
        if isinstance(e, InputRejected) and "deals answer refused" in e.reason
    }
    # A tampered deal is signed by its (corrupt) dealer: the answer cannot be told from an
    # honest one showing a corrupt dealer's wrong share, so its sender is not blamed; the
    # others are.
    assert set(rejected) == {s for s, k in by.items() if k != "tampered"}, rejected
    # Every share it switched to is the certified one.
    pk = c.core(1).state.public_shares[ME]
    shares = [e.share for e in mesh.events[ME] if isinstance(e, EpochSwitched) and e.share]
    assert shares and all(s.value.value * G2.generator() == pk for s in shares)
    c.close()


def test_a_member_whose_seed_is_gone_falls_back_to_a_prompt_refresh(tmp_path: Path) -> None:
    c = Committee(tmp_path, 5, 3, seed=23, period=20.0)
    sched = c.configs[PI(1)].genesis_schedule(0)
    crash = Crash(sched.key_end, sched.deal_end + 0.2)
    mesh = mesh_for(c, crash)
    mesh.at(crash.down, lambda: mesh.asleep.__setitem__(ME, crash.up))

    def restart_without_seed() -> None:
        # The run key's seed is lost with the crash (an erased or damaged record).
        store = c.stores[ME]
        for run in store.runs():
            if RUN_KEY_RECORD in store.records(run):
                store.delete_records(run)
        c.restart(mesh, [ME], 23)

    mesh.at(crash.up, restart_without_seed)
    mesh.run_until(sched.end + 2 * 20.0 + 5.0)
    assert c.core(1).state is not None
    assert c.core(3).state is not None and c.core(3).share is None
    assert not any(isinstance(m, DealsRequest) for s, _to, m in crash.sent if s == ME), (
        "asked for deals it cannot open"
    )
    prompt = prompt_refreshes(crash)
    assert prompt, "no prompt refresh proposed"
    c.close()


def test_a_member_down_through_a_refresh_deal_phase_recovers_its_share(tmp_path: Path) -> None:
    """The same in a reshare (a refresh): the deals are combined with Lagrange weights
    over QUAL and must keep the master public key."""
    c = Committee(tmp_path, 5, 3, seed=24, period=20.0)
    crash = Crash(float("inf"), float("inf"))
    crash.answers = lambda sender, to, message, now: [] if sender in CORRUPT else None
    mesh = mesh_for(c, crash)
    mesh.run_until(20.0)
    assert all(c.core(i).share is not None for i in range(1, 6))
    mpk = c.core(1).state.mpk
    pid = c.core(1).propose(Refresh())
    for i in (2, 3):
        c.core(i).approve(pid)
    while c.core(1).state.pending is None:
        mesh.run_until(mesh.now + 1.0)
        assert mesh.now < 200.0
    out = c.core(1).state.pending.outcome
    sched = c.configs[PI(1)].reshare_schedule(out.reshare_start, 5, 3, 0)
    crash.down, crash.up = sched.key_end, sched.deal_end + 0.2
    mesh.at(crash.down, lambda: mesh.asleep.__setitem__(ME, crash.up))
    mesh.at(crash.up, lambda: c.restart(mesh, [ME], 24))
    mesh.run_until(sched.certify_end + 10.0)
    assert c.core(1).state.epoch == 1 and c.core(1).state.mpk == mpk
    assert any(isinstance(m, DealsRequest) for s, _to, m in crash.sent if s == ME)
    honest_holders_reconstruct(c, [1, 2, 3])
    c.close()


def test_the_seed_is_erased_at_its_deadline_when_the_certificate_comes_later(
    tmp_path: Path,
) -> None:
    """Member 3 restarts after the deal phase but hears nothing from the others until
    well after the run: it keeps the seed no longer than 40 Δ after the run's end, and
    then has nothing to recover a share with (a prompt refresh follows)."""
    c = Committee(tmp_path, 5, 3, seed=25)
    sched = c.configs[PI(1)].genesis_schedule(0)
    deadline = sched.end + 40 * 0.5
    crash = Crash(sched.key_end, deadline + 1.0)  # nothing reaches it until then
    mesh = mesh_for(c, crash)
    restart = sched.deal_end + 0.2
    mesh.at(crash.down, lambda: mesh.asleep.__setitem__(ME, restart))
    mesh.at(restart, lambda: c.restart(mesh, [ME], 25))
    mesh.run_until(deadline - 1.0)
    seeds = lambda: [  # noqa: E731
        run for run in c.stores[ME].runs() if RUN_KEY_RECORD in c.stores[ME].records(run)
    ]
    attempt0 = next(e.run for e in mesh.events[ME] if getattr(e, "key", None) == RUN_KEY_RECORD)
    assert attempt0 in seeds()  # kept: the run ended without a share
    mesh.run_until(deadline + 30.0)
    assert c.core(3).state is not None and c.core(3).state.epoch == 0
    assert c.core(3).share is None
    assert attempt0 not in seeds()
    assert not any(isinstance(m, DealsRequest) for s, _to, m in crash.sent if s == ME)
    c.close()


def test_a_member_restarted_while_recovering_uses_its_stored_seed(tmp_path: Path) -> None:
    """Member 3 adopts the certificate without a share and asks for the deals, but no
    answer reaches it before it restarts: the new process finds the seed record (kept
    for the recovery) and recovers its share."""
    c = Committee(tmp_path, 5, 3, seed=26)
    mesh, crash, sched = crash_through_deals(c, 26)
    held = {"on": True}
    crash.answers = lambda sender, to, message, now: [] if held["on"] else None
    mesh.run_until(sched.justify_end)
    while c.core(3).state is None:
        mesh.run_until(mesh.now + 0.25)
        assert mesh.now < sched.end + 10.0
    assert c.core(3).share is None
    mesh.run_until(mesh.now + 0.25)
    assert any(isinstance(m, DealsRequest) for s, _to, m in crash.sent if s == ME)
    c.restart(mesh, [ME], 26)
    held["on"] = False
    mesh.run_until(mesh.now + 10.0)
    honest_holders_reconstruct(c, [1, 2, 3])
    c.close()


def test_a_corrupt_dealers_wrong_share_gets_no_honest_answerer_blamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Corrupt dealer 4 seals member 3 a wrong share to its real run key while member 3 is
    down through the deals (nobody complains, 4 stays in QUAL). Every honest answer then
    holds that share: none may be refused as a bad answer, and member 3, finding no valid
    share in any answer, gives up and asks for a prompt refresh (a documented limit)."""
    from mpc.dkg.session import SharingSession

    seal = SharingSession._seal_share

    def corrupt_seal(self: SharingSession, recipient: PI, aad: bytes, value: int) -> Any:
        if int(self.me) == 4 and recipient == ME:
            value = (value + 1) % R
        return seal(self, recipient, aad, value)

    monkeypatch.setattr(SharingSession, "_seal_share", corrupt_seal)
    c = Committee(tmp_path, 5, 3, seed=21, period=20.0)
    mesh, crash, sched = crash_through_deals(c, 21)
    crash.answers = lambda sender, to, message, now: [] if sender in CORRUPT else None
    mesh.run_until(sched.end + 2 * 20.0 + 5.0)
    assert c.core(1).state is not None and c.core(1).state.epoch == 0
    assert any(isinstance(m, DealsRequest) for s, _to, m in crash.sent if s == ME)
    assert c.core(3).share is None
    blamed = {
        e.peer
        for e in mesh.events[ME]
        if isinstance(e, InputRejected) and "deals answer" in e.reason
    }
    assert blamed == set(), blamed
    assert not any(
        k == RUN_KEY_RECORD for run in c.stores[ME].runs() for k in c.stores[ME].records(run)
    )
    prompt = prompt_refreshes(crash)
    assert prompt, "no prompt refresh proposed after the recovery gave up"
    c.close()
