"""Run keys: every share is encrypted to a key its recipient drew for that run only.

The keys are agreed in a broadcast round before anyone deals, so whether a
recipient has one is the same fact everywhere: a dealer must encrypt to every
recipient with a run key and omit exactly the others. These runs are driven
on the mesh, every message through the codec.
"""

from __future__ import annotations

import random
from dataclasses import replace

from byzantine import Misbehaviour
from dkg_harness import DELTA, Adversary, check_agreement, run_sharing, ticks
from mesh import Mesh, make_nodes

from mpc import hpke
from mpc.broadcast import BroadcastPayload
from mpc.dkg.messages import OMITTED_ENC, DealBundle, RunKey
from mpc.dkg.session import RUN_KEY_RECORD, SHARE_INFO, Persist, Phase, SharingSession
from mpc.errors import DecryptionError
from mpc.ids import ParticipantIndex as PI


def persisted(run, i: int) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    return {e.key: e.data for e in run.mesh.events[PI(i)] if isinstance(e, Persist)}


def dealt(run, i: int) -> DealBundle:  # type: ignore[no-untyped-def]
    return DealBundle.decode(BroadcastPayload.decode(persisted(run, i)["deal"]).payload)


def test_a_recipient_without_a_run_key_gets_nothing_and_forces_no_reveal() -> None:
    """A corrupt recipient announces no run key and then complains about every dealer:
    the honest dealers omit its share, reveal nothing, and stay in QUAL."""
    bad = Misbehaviour(withhold_run_key=True, false_complaints=frozenset({1, 2, 3, 4}))
    run = run_sharing(5, 3, Adversary({5: bad}), seed=41)
    res = check_agreement(run)
    assert set(res.qual) >= {PI(1), PI(2), PI(3), PI(4)}
    for i in run.honest:
        rec = persisted(run, int(i))
        assert "justification" not in rec  # no share of anyone was revealed
        share = next(s for s in dealt(run, int(i)).shares if s.recipient == 5)
        assert share.enc == OMITTED_ENC and share.ciphertext == bytes(48)


def test_a_run_key_signed_for_another_run_gives_no_key() -> None:
    """The broadcast payload is properly signed, but the key inside names another run:
    it is no run key here, so every dealer omits that member and nobody is blamed."""
    run = run_sharing(5, 3, Adversary({5: Misbehaviour(run_key_for_other_run=True)}), seed=46)
    res = check_agreement(run)
    assert set(res.qual) == {PI(1), PI(2), PI(3), PI(4), PI(5)}
    for i in run.honest:
        share = next(s for s in dealt(run, int(i)).shares if s.recipient == 5)
        assert share.enc == OMITTED_ENC


def test_a_dealer_that_omits_a_keyed_recipient_is_excluded_everywhere() -> None:
    """A corrupt dealer cannot keep an honest recipient from its share by claiming its
    run key never arrived: the keys are agreed, so its deal is malformed for all."""
    run = run_sharing(5, 3, Adversary({5: Misbehaviour(omit_shares_to=frozenset({1}))}), seed=42)
    res = check_agreement(run)  # every honest recipient, 1 included, holds its share
    assert PI(5) not in res.qual
    for i in run.honest:
        ex = run.sessions[i].excluded[PI(5)]
        assert "run keys" in ex.reason and ex.evidence is None
        # Excluded, but not attributed: an honest dealer that missed the key round
        # deals exactly this (sharing.md, a member whose process starts late).
        assert not ex.attributable


def test_run_keys_are_fresh_per_run_and_the_long_lived_key_opens_nothing() -> None:
    nodes = make_nodes(range(1, 5), 43)
    first = run_sharing(4, 3, Adversary(), seed=43, nodes=nodes)
    second = run_sharing(4, 3, Adversary(), seed=143, nodes=nodes, start=200.0)
    check_agreement(first)
    check_agreement(second)
    keys = set()
    for run in (first, second):
        run_id = run.sessions[PI(1)].run_id
        for i in range(1, 5):
            announced = RunKey.decode(BroadcastPayload.decode(persisted(run, i)["run-key"]).payload)
            announced.verify(nodes[PI(i)].participant.verify_key())
            assert announced.run == run_id and announced.index == i
            assert announced.key != nodes[PI(i)].participant.dkg_key
            keys.add(announced.key)
        for d in range(1, 5):
            bundle = dealt(run, d)
            for s in bundle.shares:
                info = SHARE_INFO + run_id + d.to_bytes(4, "big") + s.recipient.to_bytes(4, "big")
                try:
                    hpke.open(
                        s.enc,
                        nodes[PI(s.recipient)].dkg_key,
                        info,
                        bundle.commitments_hash(),
                        s.ciphertext,
                    )
                except DecryptionError:
                    continue
                raise AssertionError("a share opened with the long-lived DKG key")
    assert len(keys) == 8  # four members, two runs: eight different keys


def _restarted(seed_only: bool) -> tuple[Mesh, dict[PI, SharingSession]]:
    """Member 2 comes back after the deal phase from records that hold its key seed but
    no announcement (``seed_only``), or its announcement but no seed (erased)."""
    nodes = make_nodes(range(1, 5), 44)
    run = run_sharing(4, 3, Adversary(), seed=44, nodes=nodes)
    records = persisted(run, 2)
    if seed_only:
        kept = {RUN_KEY_RECORD: records[RUN_KEY_RECORD]}
    else:
        kept = {"run-key": records["run-key"]}
    cfg = run.config
    rng = random.Random("restart")
    sessions = {
        i: SharingSession(cfg, i, nodes[i].identity, nodes[i].dkg_key, rng=rng.randbytes)
        for i in (PI(1), PI(3), PI(4))
    }
    sessions[PI(2)] = SharingSession(
        cfg, PI(2), nodes[PI(2)].identity, nodes[PI(2)].dkg_key, rng=rng.randbytes, persisted=kept
    )
    mesh = Mesh(sessions, seed=44, max_delay=DELTA / 3, ticks=ticks(cfg.schedule))
    mesh.run_until(cfg.schedule.end + 1)
    return mesh, sessions


def test_a_seed_stored_before_its_announcement_is_reused() -> None:
    mesh, sessions = _restarted(seed_only=True)
    new = [e for e in mesh.events[PI(2)] if isinstance(e, Persist)]
    assert [e.key for e in new if e.key == RUN_KEY_RECORD] == []  # no second seed
    announced = RunKey.decode(
        BroadcastPayload.decode(next(e.data for e in new if e.key == "run-key")).payload
    )
    nodes = make_nodes(range(1, 5), 44)
    seed = next(
        e.data
        for e in run_sharing(4, 3, Adversary(), seed=44, nodes=nodes).mesh.events[PI(2)]
        if isinstance(e, Persist) and e.key == RUN_KEY_RECORD
    )
    assert announced.key == hpke.derive_key_pair(seed)[1]
    assert all(s.phase is Phase.DONE for s in sessions.values())


def test_a_member_whose_seed_is_gone_complains_about_nothing() -> None:
    """Its announcement was agreed but its seed was erased: it opens no share, sends no
    complaint, ends without a share, and the others certify without revealing anything."""
    mesh, sessions = _restarted(seed_only=False)
    assert sessions[PI(2)].phase is Phase.FAILED and sessions[PI(2)].result is None
    for i in (PI(1), PI(3), PI(4)):
        assert sessions[i].phase is Phase.DONE
        assert not any(isinstance(e, Persist) and e.key == "justification" for e in mesh.events[i])
    certs = {sessions[i].certificate for i in (PI(1), PI(3), PI(4))}
    assert len(certs) == 1


def test_a_member_that_missed_the_run_keys_is_left_out_and_the_others_certify() -> None:
    """Member 4 hears no run key but its own (its links in were down while they were
    announced): its deal omits everyone else and fails the check everywhere; its own
    view of the keys matches no one's, so it ends the run without a share."""
    nodes = make_nodes(range(1, 6), 45)
    probe = run_sharing(5, 3, Adversary(), seed=45, nodes=nodes)
    sched = probe.config.schedule

    def route(sender, to, message, now):  # type: ignore[no-untyped-def]
        if to == PI(4) and sched.start <= now < sched.key_end:
            return []
        return None

    cfg = replace(probe.config, attempt=1)
    rng = random.Random("missed")
    sessions = {
        i: SharingSession(cfg, i, nodes[i].identity, nodes[i].dkg_key, rng=rng.randbytes)
        for i in sorted(nodes)
    }
    mesh = Mesh(sessions, seed=45, max_delay=DELTA / 3, route=route, ticks=ticks(sched))
    mesh.run_until(sched.end + 1)
    for i in (PI(1), PI(2), PI(3), PI(5)):
        assert sessions[i].phase is Phase.DONE, sessions[i].failure
        assert "run keys" in sessions[i].excluded[PI(4)].reason
    assert sessions[PI(4)].phase is Phase.FAILED and sessions[PI(4)].result is None
