"""A long epoch chain: bounded answers, head-only verification, retention, fork choice.

Chains of thousands of epochs are built in process by signing each link with
the master secret directly (``mpc.membership.testing``); every link verifies
exactly like a committee-made one. Attacks go through public surfaces: encoded
``ChainRequest`` / ``ChainUpdate`` messages into ``NodeCore.receive``, frames
into ``NodeService.handle_frame``, and the CVM's chain verification.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trio

from kms.client.http import chain_epochs_from_bytes
from kms.node import core as core_mod
from kms.node.core import (
    ChainReplaced,
    EpochSwitched,
    InputRejected,
    NodeConfig,
    NodeCore,
    Restored,
)
from kms.node.service import NodeService
from kms.store import NodeStore, TEESealer
from mpc import hpke
from mpc.cert import EpochCertificate
from mpc.ids import ParticipantIndex as PI
from mpc.membership import MembershipCertificate, link_position, rank
from mpc.membership.messages import ChainRequest, ChainUpdate
from mpc.membership.testing import ForgedChain, forged_chain, fork, member_seeds, with_attempt
from mpc.sig import SigningKey
from net.codec import (
    ENVELOPE_VERSION,
    MAX_FRAME_SIZE,
    Envelope,
    decode_envelope,
    encode_envelope,
    open_envelope,
)
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519

N, T = 4, 3
NOW = 2_000_000.0


@pytest.fixture(scope="module")
def chain300() -> ForgedChain:
    return forged_chain(300, n=N, t=T)


def node(
    chain: ForgedChain,
    index: int = 1,
    links: list | None = None,  # type: ignore[type-arg]
    *,
    share: bool = False,
    **cfg: float,
) -> NodeCore:
    id_seed, dkg_seed = member_seeds(len(chain.committee))[index]
    config = NodeConfig(
        PI(index),
        chain.committee,
        chain.threshold,
        genesis_start=NOW - 1e6,
        delta=0.5,
        window_period=1e9,
        **cfg,  # type: ignore[arg-type]
    )
    dkg, _ = hpke.derive_key_pair(dkg_seed)
    core = NodeCore(
        config,
        SigningKey.from_seed(id_seed),
        dkg,
        rng=random.Random(index).randbytes,
        restored=Restored(
            chain=tuple(chain.links if links is None else links),
            share=chain.share(index) if share else None,
        ),
    )
    core.events()
    core.messages_to_send()
    return core


def wire(message: ChainRequest | ChainUpdate, sender: int = 2) -> tuple[PI, object]:
    """What a peer's frame becomes at the receiver: decoded from its encoding."""
    frame = encode_envelope(Envelope(ENVELOPE_VERSION, message.TYPE, 0, sender, message.encode()))
    _, decoded = open_envelope(frame)
    return PI(sender), decoded


def answers(core: NodeCore, to: int = 2) -> list[ChainUpdate]:
    return [
        ob.message
        for ob in core.messages_to_send()
        if ob.to == PI(to) and isinstance(ob.message, ChainUpdate)
    ]


def answer_any_request(core: NodeCore, chain: ForgedChain) -> None:
    head = link_position(chain.links[-1])
    for i, have in enumerate((0, 1, 2, head // 2, head - 3, head - 1, head, head + 1, 2**32 - 1)):
        peer, msg = wire(ChainRequest(have))
        # Spaced out: a member's chain requests are metered (a burst, then one per 5 Δ).
        core.receive(peer, msg, NOW + 5 * core.config.delta * i)  # type: ignore[arg-type]
        (update,) = answers(core)
        frame = encode_envelope(Envelope(ENVELOPE_VERSION, update.TYPE, 0, 1, update.encode()))
        assert len(frame) <= MAX_FRAME_SIZE
        assert len(update.links) <= core_mod.MAX_CHAIN_ANSWER_LINKS + 1
        if have > head:
            assert update.links == ()
            continue
        # Whatever the asker held, genesis + this answer (or its own links + this
        # answer) verifies to our head.
        raw = update.encode()
        if update.kinds[0] == "epoch" and decode_link(update, 0).transcript.epoch == 0:
            states = chain_epochs_from_bytes(raw, chain.mpk)
        else:
            prefix = [x for x in chain.links if link_position(x) < have]
            full = ChainUpdate(
                tuple(_kind(x) for x in prefix[-4:]) + update.kinds,
                tuple(x.encode() for x in prefix[-4:]) + update.links,
            )
            while full.kinds[0] != "epoch":
                full = ChainUpdate(full.kinds[1:], full.links[1:])
            states = chain_epochs_from_bytes(full.encode(), chain.mpk)
        assert states[-1].certificate == chain.head_state().certificate
    # A negative position does not even decode off the wire; handed to the core as an
    # object, it is refused as input, not raised.
    core.receive(PI(2), ChainRequest(-1), NOW)
    assert any(isinstance(e, InputRejected) for e in core.events())
    assert answers(core) == []


def _kind(x: object) -> str:
    return "epoch" if isinstance(x, EpochCertificate) else "membership"


def decode_link(update: ChainUpdate, i: int) -> EpochCertificate:
    return EpochCertificate.decode(update.links[i])


def cvm_reaches_head(core: NodeCore, chain: ForgedChain) -> None:
    """What ``GET /v1/chain`` serves, verified as the CVM does: ≤ 1 MiB, ≤ 100 ms."""
    raw = core.chain_update(0).encode()
    assert len(raw) <= 1 << 20
    start = time.perf_counter()
    states = chain_epochs_from_bytes(raw, chain.mpk)
    elapsed = time.perf_counter() - start
    assert states[-1].certificate == chain.links[-1]
    assert states[-1].epoch == chain.links[-1].transcript.epoch  # type: ignore[union-attr]
    assert len(states) >= 2  # the epoch before the head too (for a switch in progress)
    assert elapsed <= 0.1, f"verifying the head took {elapsed:.3f} s"


# --- at 300 epochs (fast) ------------------------------------------------------------


def test_a_node_answers_any_chain_request_within_the_frame_limit(chain300) -> None:  # type: ignore[no-untyped-def]
    answer_any_request(node(chain300), chain300)


def test_a_cvm_reaches_the_head_in_constant_time_and_bytes(chain300) -> None:  # type: ignore[no-untyped-def]
    cvm_reaches_head(node(chain300), chain300)


def test_a_node_keeps_genesis_and_the_last_k_epochs(chain300) -> None:  # type: ignore[no-untyped-def]
    core = node(chain300, chain_retention=16)
    assert core.chain[0] == chain300.links[0]
    epochs = sorted({link_position(x) // 2 for x in core.chain[1:]})
    assert epochs == list(range(300 - 15, 301))
    assert core.epoch_state(300) is not None and core.epoch_state(285) is not None
    assert core.epoch_state(100) is None and core.is_stale(100)
    # Growing keeps the bound: each new epoch drops the oldest.
    longer = ForgedChain(
        chain300.secret, chain300.coefficients, chain300.committee, list(chain300.links)
    )
    longer.grow(3)
    peer, msg = wire(ChainUpdate(*_encode(longer.links[-6:])))
    core.receive(peer, msg, NOW)  # type: ignore[arg-type]
    assert core.state is not None and core.state.epoch == 303
    assert sorted({link_position(x) // 2 for x in core.chain[1:]})[0] == 303 - 15


def test_a_node_far_behind_catches_up_from_genesis_and_the_tail(chain300) -> None:  # type: ignore[no-untyped-def]
    ahead = node(chain300, 1)
    behind = node(chain300, 2, links=chain300.links[:11])  # at epoch 5
    behind.advance_time(NOW)
    asks = [
        ob
        for ob in behind.messages_to_send()
        if isinstance(ob.message, ChainRequest) and ob.to == PI(1)
    ]
    assert asks and asks[0].message.have == 11
    peer, msg = wire(asks[0].message, sender=2)
    ahead.receive(peer, msg, NOW)  # type: ignore[arg-type]
    (update,) = answers(ahead)
    assert len(update.links) <= 6  # genesis + E299, M299, E300
    peer, msg = wire(update, sender=1)
    behind.receive(peer, msg, NOW)  # type: ignore[arg-type]
    assert behind.state is not None and behind.state.epoch == 300
    events = behind.events()
    assert any(isinstance(e, ChainReplaced) for e in events)
    assert any(isinstance(e, EpochSwitched) and e.epoch == 300 for e in events)


def _encode(links: list) -> tuple[tuple[str, ...], tuple[bytes, ...]]:  # type: ignore[type-arg]
    return tuple(_kind(x) for x in links), tuple(x.encode() for x in links)


# --- fork choice ------------------------------------------------------------------------


def test_a_late_certificate_of_a_higher_attempt_wins_and_a_lower_one_is_ignored() -> None:
    chain = forged_chain(3, n=N, t=T)
    core = node(chain, 1, share=True)
    assert core.share is not None
    # Epoch 3's attempt 0 is what the node holds. A failed attempt 1 of epoch 3 (other
    # polynomial) was completed later from partials its signers had sent, and is
    # delivered late.
    late = fork(chain, 6)  # genesis .. M_2
    late.grow(1, attempt=1)
    assert rank(late.head_state()) == (3, 1)
    peer, msg = wire(ChainUpdate(*_encode(late.links)))
    core.receive(peer, msg, NOW)  # type: ignore[arg-type]
    assert core.state is not None and rank(core.state) == (3, 1)
    assert core.state.certificate == late.links[-1]
    # Its share of attempt 0 is no share of attempt 1: none, so it asks for a prompt refresh.
    assert core.share is None and core.status().has_share is False
    # Attempt 0 again, from another peer: lower, ignored (not a protocol error).
    peer, msg = wire(ChainUpdate(*_encode(chain.links)), sender=3)
    core.receive(peer, msg, NOW)  # type: ignore[arg-type]
    assert rank(core.state) == (3, 1)
    assert not any(isinstance(e, InputRejected) for e in core.events())


def test_a_conflicting_chain_that_reaches_a_higher_epoch_makes_a_node_switch() -> None:
    chain = forged_chain(3, n=N, t=T)
    core = node(chain, 1, share=True)
    other = fork(chain, 6)
    other.grow(1, attempt=1)  # E_3 attempt 1
    other.grow(2)  # ... E_5
    # A node holding the lower conflicting link E_3 (attempt 0) switches to E_5.
    peer, msg = wire(ChainUpdate(*_encode([other.links[0], *other.links[-3:]])))
    core.receive(peer, msg, NOW)  # type: ignore[arg-type]
    assert core.state is not None and rank(core.state) == (5, 0)
    assert core.chain[-1] == other.links[-1]
    # And the same rule from the other side: holding E_5, a chain whose head is E_3
    # attempt 9 is lower.
    lower = fork(chain, 6, seed=5)
    lower.grow(1, attempt=9)
    peer, msg = wire(ChainUpdate(*_encode(lower.links)))
    core.receive(peer, msg, NOW)  # type: ignore[arg-type]
    assert rank(core.state) == (5, 0)


def test_a_forged_head_under_another_key_is_refused() -> None:
    chain = forged_chain(3, n=N, t=T)
    core = node(chain, 1)
    stranger = forged_chain(4, n=N, t=T, seed=9)
    bad = with_attempt(stranger.links[-1], stranger, 7)  # type: ignore[arg-type]
    peer, msg = wire(ChainUpdate(*_encode([chain.links[0], bad])))
    core.receive(peer, msg, NOW)  # type: ignore[arg-type]
    assert rank(core.state) == (3, 0)  # type: ignore[arg-type]
    assert any(isinstance(e, InputRejected) for e in core.events())


# --- the shell -------------------------------------------------------------------------


def _service(tmp: Path, chain: ForgedChain, index: int = 1) -> NodeService:
    id_seed, dkg_seed = member_seeds(len(chain.committee))[index]
    store = NodeStore(tmp / f"node-{index}.db", TEESealer(lambda: b"k" * 32))
    store.save_identity(id_seed, dkg_seed)
    pid = peer_id_from_ed25519(SigningKey.from_seed(id_seed).verify_key().to_bytes())
    config = NodeConfig(
        PI(index),
        chain.committee,
        chain.threshold,
        genesis_start=NOW - 1e6,
        delta=0.5,
        window_period=1e9,
    )
    svc = NodeService(config, store, MemoryTransport(MemoryNetwork(), pid), {})
    svc.core = node(chain, index)
    svc._learn_participants()
    return svc


def _frames(svc: NodeService, to: int) -> list[bytes]:
    send, recv = trio.open_memory_channel[bytes](1000)
    svc._queues[PI(to)] = send
    return recv  # type: ignore[return-value]


def _drain(recv) -> list[bytes]:  # type: ignore[no-untyped-def]
    """The chain updates queued for the peer (other frames, e.g. its own requests, aside)."""
    out = []
    while True:
        try:
            frame = recv.receive_nowait()
        except trio.WouldBlock:
            return out
        if decode_envelope(frame).kind == "chain/update":
            out.append(frame)


def _frame_from(sender: int, message: ChainRequest) -> bytes:
    return encode_envelope(Envelope(ENVELOPE_VERSION, message.TYPE, 0, sender, message.encode()))


@pytest.fixture(scope="module")
def chain_big() -> ForgedChain:
    # n = 16: 1,100 refreshes make more than 4 MiB of links (the envelope's limit).
    return forged_chain(1100, n=16, t=11)


def test_a_chain_request_from_genesis_to_a_long_chain_is_answered_within_the_limits(
    tmp_path, chain_big
) -> None:  # type: ignore[no-untyped-def]
    svc = _service(tmp_path, chain_big)
    recv = _frames(svc, 2)
    peer2 = svc.peer_of(PI(2))
    svc.handle_frame(peer2, _frame_from(2, ChainRequest(0)))
    (frame,) = _drain(recv)
    assert len(frame) <= MAX_FRAME_SIZE
    _, update = open_envelope(frame)
    assert isinstance(update, ChainUpdate)
    assert chain_epochs_from_bytes(update.encode(), chain_big.mpk)[-1].epoch == 1100
    assert sum(svc.metrics.encode_failures.values()) == 0


def test_an_unencodable_message_is_dropped_and_counted_not_raised(
    tmp_path, chain_big, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # Lift the core's answer bounds: its answer to ChainRequest(0) is now the whole
    # retained chain at once, too many links for one ChainUpdate. The shell must drop
    # it and count it, and go on.
    monkeypatch.setattr(core_mod, "MAX_CHAIN_ANSWER_LINKS", 10**9)
    monkeypatch.setattr(core_mod, "MAX_CHAIN_ANSWER_BYTES", 10**12)
    svc = _service(tmp_path, chain_big)
    svc.core.config = NodeConfig(**{**svc.core.config.__dict__, "chain_retention": 10**6})
    svc.core.chain = list(chain_big.links)
    recv = _frames(svc, 2)
    peer2 = svc.peer_of(PI(2))
    svc.handle_frame(peer2, _frame_from(2, ChainRequest(0)))
    assert _drain(recv) == []
    assert svc.metrics.encode_failures["chain/update"] == 1
    assert "qkms_encode_failures_total" in svc.metrics_text()
    # The node still answers a small request.
    svc.handle_frame(peer2, _frame_from(2, ChainRequest(2199)))
    assert len(_drain(recv)) == 1


def test_the_store_follows_a_catch_up_and_a_fork_switch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    chain = forged_chain(80, n=N, t=T)
    svc = _service(tmp_path, forged_chain(3, n=N, t=T))
    for x in svc.core.chain:
        if isinstance(x, MembershipCertificate):
            svc.store.append_link("membership", x.outcome.epoch, x.encode())
        else:
            svc.store.append_link("epoch", x.transcript.epoch, x.encode())
    peer2 = svc.peer_of(PI(2))
    update = ChainUpdate(*_encode([chain.links[0], *chain.links[-3:]]))
    svc.handle_frame(
        peer2, encode_envelope(Envelope(ENVELOPE_VERSION, update.TYPE, 80, 2, update.encode()))
    )
    assert svc.core.state is not None and svc.core.state.epoch == 80
    stored = svc.store.chain()
    assert [(k, e) for k, e, _ in stored] == [
        ("epoch", 0),
        ("epoch", 79),
        ("membership", 79),
        ("epoch", 80),
    ]
    current = svc.store.current_epoch()
    assert current is not None and current.epoch == 80
    # A higher attempt of epoch 80 (another polynomial) replaces it in the store too.
    late = fork(chain, 160)
    late.grow(1, attempt=2)
    update = ChainUpdate(*_encode([late.links[0], *late.links[-3:]]))
    svc.handle_frame(
        peer2, encode_envelope(Envelope(ENVELOPE_VERSION, update.TYPE, 80, 2, update.encode()))
    )
    assert svc.core.state is not None and rank(svc.core.state) == (80, 2)
    stored = svc.store.chain()
    assert stored[-1][2] == late.links[-1].encode()
    current = svc.store.current_epoch()
    assert current is not None and current.epoch == 80 and current.share is None
    # Growing past the kept epochs deletes the oldest links from the store too.
    import dataclasses

    svc.core.config = dataclasses.replace(svc.core.config, chain_retention=2)
    late.grow(3)
    update = ChainUpdate(*_encode(late.links[-6:]))
    svc.handle_frame(
        peer2, encode_envelope(Envelope(ENVELOPE_VERSION, update.TYPE, 83, 2, update.encode()))
    )
    assert svc.core.state is not None and svc.core.state.epoch == 83
    assert [(k, e) for k, e, _ in svc.store.chain()] == [
        ("epoch", 0),
        ("epoch", 82),
        ("membership", 82),
        ("epoch", 83),
    ]
    assert [x.encode() for x in svc.core.chain] == [d for _, _, d in svc.store.chain()]
    # A restart restores from the kept links alone.
    again = NodeService(svc.config, svc.store, svc.transport, {})
    assert again.core.state is not None and rank(again.core.state) == (83, 0)
    assert again.core.chain == svc.core.chain


# --- at 10,000 epochs ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parallel  # in process; its one deadline (100 ms) times a few pairing checks
def test_ten_thousand_epochs_cost_a_cvm_and_a_node_constant_time_and_bytes() -> None:
    chain = forged_chain(10_000, n=N, t=T)
    start = time.perf_counter()
    core = node(chain)
    restore = time.perf_counter() - start
    assert restore < 5.0, f"restoring took {restore:.1f} s"  # the retained tail only
    assert len(core.chain) <= 2 * core.config.chain_retention + 1
    cvm_reaches_head(core, chain)
    answer_any_request(core, chain)


# --- GET /v1/chain --------------------------------------------------------------------------


def _get(svc: NodeService, path: str):  # type: ignore[no-untyped-def]
    import httpx

    from kms.api.http import make_app

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app(svc))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.get(path)

    return trio.run(go)


def test_get_chain_serves_the_head_and_pages_the_kept_links(tmp_path, chain300) -> None:  # type: ignore[no-untyped-def]
    svc = _service(tmp_path, chain300)
    whole = _get(svc, "/v1/chain")
    assert whole.status_code == 200 and len(whole.content) <= 1 << 20
    assert chain_epochs_from_bytes(whole.content, chain300.mpk)[-1].epoch == 300
    # Paging through the kept links: genesis, then the last 64 epochs, 10 links a page.
    got: list[bytes] = []
    start = 0
    while True:
        r = _get(svc, f"/v1/chain?from={start}&limit=10&max_bytes=100000")
        assert r.status_code == 200
        page = ChainUpdate.decode(r.content)
        assert int(r.headers["x-chain-head"]) == 600
        if not page.links:
            break
        assert len(page.links) <= 10
        first = int(r.headers["x-chain-first"])
        assert first >= start
        got.extend(page.links)
        start = int(r.headers["x-chain-next"])
    assert len(got) == len(svc.core.chain) == 1 + 2 * 64 - 1  # genesis, E237 .. E300
    assert got[0] == chain300.links[0].encode() and got[-1] == chain300.links[-1].encode()
    tiny = _get(svc, "/v1/chain?from=599&max_bytes=1")
    assert len(ChainUpdate.decode(tiny.content).links) == 1  # always one link when any is left
    for bad in ("from=-1", "limit=0", "limit=65", "max_bytes=0", "from=x"):
        r = _get(svc, f"/v1/chain?{bad}")
        assert r.status_code == 400 and "bad paging" in r.json()["error"]


# --- the client's fork choice and hedge ---------------------------------------------------------


def test_a_client_takes_the_highest_head_and_does_not_wait_for_a_silent_node() -> None:
    import threading

    import httpx

    from kms.client.http import fetch_chain_heads

    chain = forged_chain(5, n=N, t=T)
    low = node(chain)  # head E_5 attempt 0
    late = fork(chain, 10)  # genesis .. M_4
    late.grow(1, attempt=1)  # E_5 attempt 1: a failed attempt completed late
    high = node(late)
    release = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == "silent":
            release.wait(10)  # accepts, never answers (until the test ends)
            return httpx.Response(503)
        core = high if host == "high" else low
        return httpx.Response(200, content=core.chain_update(0).encode())

    http = httpx.Client(transport=httpx.MockTransport(handler))
    try:
        start = time.monotonic()
        states, ignored, answered = fetch_chain_heads(
            ["http://low", "http://silent", "http://high"],
            chain.mpk,
            client=http,
            timeout=10.0,
            hedge_after=0.3,
        )
        elapsed = time.monotonic() - start
    finally:
        release.set()
        http.close()
    assert rank(states[-1]) == (5, 1)  # the highest (epoch, attempt) wins
    assert sorted(answered) == ["http://high", "http://low"]
    assert any("silent" in x for x in ignored)
    assert elapsed < 2.0, f"waited {elapsed:.2f} s for a silent node"


# --- evidence about epochs the node no longer keeps -----------------------------------------


def _evidence(epoch: int) -> bytes:
    from kms.protocol import (
        EphemeralKey,
        KeyRequest,
        KeyRequestBody,
        KeyShareResponse,
        PurposeVersion,
        WrongPartialEvidence,
    )

    pv = PurposeVersion("app", 1)
    request = KeyRequest(
        KeyRequestBody(
            b"\x01" * 20, (pv,), (EphemeralKey(1, b"\x09" * 32),), 1_800_000_000, b"\x00" * 16, 0, 0
        ),
        b"\x00" * 64,
        b"",
    )
    share = KeyShareResponse(b"\x02" * 32, pv, epoch, 1, b"\x03" * 32, b"\x04" * 64, b"\x05" * 64)
    return WrongPartialEvidence(request, share, b"\x06" * 32).encode()


def test_evidence_about_an_epoch_older_than_the_kept_links_is_refused_as_stale(
    tmp_path, chain300
) -> None:  # type: ignore[no-untyped-def]
    from kms.api.answers import evidence_answer
    from kms.node.admission import AdmissionRefusal, ChangeChecker
    from kms.node.core import ChangeContext, ChangeRefused

    svc = _service(tmp_path, chain300)
    code, reply = evidence_answer(svc.offer_evidence(_evidence(100)))
    assert (code, reply["reason"]) == (409, "stale-epoch")
    code, reply = evidence_answer(svc.offer_evidence(_evidence(299)))  # kept: judged (junk)
    assert reply["reason"] != "stale-epoch"
    core = svc.core
    assert core.state is not None
    ctx = ChangeContext(core.state, tuple(core.chain), NOW, None)
    holder = next(p for p in core.state.committee.members if p.index == 1)
    checker = ChangeChecker(None, None, wrong_partial=lambda ev, st: "judged")
    with pytest.raises(ChangeRefused) as refused:
        checker.check_evidence(ctx, 1, _evidence(100), holder)
    assert refused.value.reason == AdmissionRefusal.EVIDENCE_STALE.value
    checker.check_evidence(ctx, 1, _evidence(299), holder)  # the kept epoch is judged
