"""``NodeDriver`` and ``kms.node.persist``: frames through the envelope checks, steps in the
order records → messages → events, and one mapping of events to a store, for SQLite and
for the simulator's in-memory store alike."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kms.node import persist
from kms.node.core import NodeCore
from kms.node.driver import FrameAccepted, FrameRejected, NodeDriver
from kms.node.model import NodeConfig, StoreRecord
from kms.node.persist import PERSISTENT_EVENTS
from kms.node.service import NodeService
from kms.store import NodeStore
from kms.store.sealer import TEESealer
from mpc.broadcast import Outbound
from mpc.ids import ParticipantIndex
from mpc.membership.messages import ChainRequest
from net.codec import ENVELOPE_VERSION, Envelope, decode_envelope, encode_envelope, open_envelope
from net.memory import MemoryNetwork, MemoryTransport
from net.peerid import peer_id_from_ed25519
from sim import world as sim_world
from sim.nodes import SimStore, node_keys
from sim.scenario import SCENARIO_DIR, Scenario

SEED = 7
N, T = 4, 3


def _core(index: int, start: float = 10.0) -> NodeCore:
    keys = {i: node_keys(i, SEED) for i in range(1, N + 1)}
    genesis = tuple(keys[i].participant for i in range(1, N + 1))
    cfg = NodeConfig(ParticipantIndex(index), genesis, T, genesis_start=start, delta=0.5)
    k = keys[index]
    return NodeCore(cfg, k.identity, k.dkg_key, rng=random.Random(f"{SEED}/{index}").randbytes)


def _peer(index: int) -> bytes:
    return peer_id_from_ed25519(node_keys(index, SEED).participant.identity)


# --- frames in ---------------------------------------------------------------------------


def test_a_frame_reaches_the_core_only_through_the_envelope_checks() -> None:
    driver = NodeDriver(_core(1))
    ask = encode_envelope(Envelope.of(ChainRequest(0), epoch=0, sender=2))
    stranger = peer_id_from_ed25519(node_keys(9, SEED).participant.identity)
    refused = [
        driver.receive_frame(stranger, ask, 1.0),  # not a participant
        driver.receive_frame(_peer(3), ask, 1.0),  # member 3 claiming to be member 2
        driver.receive_frame(_peer(2), b"\xc1not msgpack", 1.0),
        driver.receive_frame(_peer(2), ask.replace(b"\x95\x02", b"\x95\x01", 1), 1.0),
    ]
    reasons = [r.reason for r in refused if isinstance(r, FrameRejected)]
    assert reasons == [
        "unknown or unauthorised peer",
        "envelope names another sender",
        "envelope: malformed",
        "envelope: unknown-version",
    ]
    assert driver.step().messages == []  # nothing reached the core
    got = driver.receive_frame(_peer(2), ask, 1.0)
    assert isinstance(got, FrameAccepted) and got.sender == 2 and not got.for_shell
    assert got.kind == "chain/request" and got.size == len(ask)


def test_messages_the_shell_handles_do_not_reach_the_core() -> None:
    ask = encode_envelope(Envelope.of(ChainRequest(0), epoch=0, sender=2))
    for shell, reached in (((ChainRequest,), 0), ((), 1)):
        core = _core(1)
        calls: list[object] = []
        core.receive = lambda *a, calls=calls, **k: calls.append(a)  # type: ignore[method-assign]
        got = NodeDriver(core, shell_messages=shell).receive_frame(_peer(2), ask, 1.0)
        assert isinstance(got, FrameAccepted) and got.for_shell == bool(shell)
        assert len(calls) == reached


# --- a step out --------------------------------------------------------------------------


def test_a_step_has_the_records_first_then_envelopes_then_the_other_events() -> None:
    driver = NodeDriver(_core(1, start=0.0))
    driver.advance_time(0.0)  # genesis starts: the run key is recorded, deals go out
    step = driver.step()
    assert step.records and all(isinstance(r, PERSISTENT_EVENTS) for r in step.records)
    assert not any(isinstance(e, PERSISTENT_EVENTS) for e in step.events)
    assert any(isinstance(r, StoreRecord) for r in step.records)
    assert {int(m.to) for m in step.messages} == {2, 3, 4}
    for m in step.messages:
        env, message = open_envelope(m.frame)
        assert (env.version, env.sender, env.epoch) == (ENVELOPE_VERSION, 1, 0)
        assert message == m.message and m.size == len(message.encode())
    assert driver.step().records == []  # drained


def test_the_service_stores_a_steps_records_before_it_queues_its_frames(tmp_path: Path) -> None:
    k = node_keys(1, SEED)
    store = NodeStore(tmp_path / "n1.db", TEESealer(lambda: bytes(32)))
    store.save_identity(k.identity_seed, k.dkg_seed)
    core = _core(1, start=0.0)
    transport = MemoryTransport(MemoryNetwork(), _peer(1))
    service = NodeService(core.config, store, transport, {}, core=core)
    assert service.core is core
    order: list[str] = []
    put = store.put_records
    store.put_records = lambda run, records: (order.append("store"), put(run, records))[1]  # type: ignore[method-assign]
    service._queue_frame = lambda to, frame, kind: order.append("send")  # type: ignore[method-assign]
    core.advance_time(0.0)
    service._step()
    assert "send" in order and "store" in order
    assert order.index("send") > max(i for i, x in enumerate(order) if x == "store")
    store.close()


# --- the persistence seam ----------------------------------------------------------------


def _restored_view(store: persist.NodeStateStore) -> tuple[object, ...]:
    r = persist.restore(store)
    return (
        [link.fingerprint() for link in r.chain],
        r.share,
        dict(r.retained),
        {run: r.records(run) for run in store.runs()},
        r.admission_policy,
    )


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A refresh, a crash and a recovery in the simulator; every node's store operations
    are applied to a real SQLite store too, through the same ``persist.apply_events``."""
    tmp = tmp_path_factory.mktemp("persist")
    raw = dict(Scenario.load_file(SCENARIO_DIR / "crash-mid-reshare.toml").raw)
    raw["duration"] = 60.0
    raw["load"] = {"rate": 0.0}
    sc = Scenario.from_dict(raw)
    sqlite: dict[int, NodeStore] = {}
    applied = {"records": 0}

    def apply_both(store: SimStore, records: list[object]) -> None:
        persist.apply_events(store, records)
        index = next(i for i, n in world.nodes.items() if n.store is store)
        if index not in sqlite:
            sqlite[index] = NodeStore(tmp / f"n{index}.db", TEESealer(lambda: bytes(32)))
        persist.apply_events(sqlite[index], records)
        applied["records"] += len(records)

    world = sim_world.World(sc, 1)
    mp = pytest.MonkeyPatch()
    mp.setattr(sim_world, "apply_events", apply_both)
    try:
        world.run()
    finally:
        mp.undo()
    yield world, sqlite, applied["records"]
    for s in sqlite.values():
        s.close()


def test_apply_and_restore_give_the_same_node_state_on_sqlite_and_in_the_simulator(
    recorded_run,  # type: ignore[no-untyped-def]
) -> None:
    world, sqlite, records = recorded_run
    assert records > 100 and set(sqlite) == set(world.nodes)
    epochs = set()
    shares = 0
    for i, node in sorted(world.nodes.items()):
        sim_view = _restored_view(node.store)
        assert sim_view == _restored_view(sqlite[i]), f"node {i}"
        shares += sim_view[1] is not None
        epochs.add(persist.restore(node.store).chain[-1].fingerprint())
        # The core rebuilt from the store is where the live core was (node 2 crashed
        # and recovered from it during the run).
        restored = NodeCore(
            node.config,
            node.keys.identity,
            node.keys.dkg_key,
            rng=random.Random(0).randbytes,
            restored=persist.restore(node.store),
        )
        live = node.core
        assert live is not None and restored.state is not None and live.state is not None
        assert restored.state.epoch == live.state.epoch >= 1
        assert restored.share == live.share
    assert len(epochs) == 1 and shares >= T


def test_restore_of_an_empty_store_is_the_empty_state(tmp_path: Path) -> None:
    with NodeStore(tmp_path / "empty.db", TEESealer(lambda: bytes(32))) as store:
        assert _restored_view(store) == ([], None, {}, {}, None)
    assert _restored_view(SimStore()) == ([], None, {}, {}, None)
    assert SimStore().restored() is None


def test_a_sealed_envelope_round_trips_through_decode() -> None:
    # The frames the driver makes are canonical: decoding and re-encoding gives them back.
    driver = NodeDriver(_core(2, start=0.0))
    driver.advance_time(0.0)
    for m in driver.step().messages:
        assert encode_envelope(decode_envelope(m.frame)) == m.frame


class _CollectingCore:
    """A core whose message collection makes a record, as ``NodeCore._collect`` does when
    a run finalizes while its messages are gathered (the epoch switch, the share)."""

    def __init__(self, real: NodeCore) -> None:
        self._real = real
        self.config = real.config
        self.state = real.state
        self.participants = real.participants
        self._events: list[object] = []
        self.collected = 0

    def allowed_peers(self) -> frozenset[ParticipantIndex]:
        return self._real.allowed_peers()

    def recently_removed(self) -> tuple[ParticipantIndex, ...]:
        return ()

    def removed_participants(self) -> dict[ParticipantIndex, object]:
        return {}

    def messages_to_send(self) -> list[object]:
        self.collected += 1
        if self.collected == 1:
            self._events.append(StoreRecord(b"run", "share", b"s", secret=True))
            return [Outbound(ParticipantIndex(2), ChainRequest(0))]
        return []

    def events(self) -> list[object]:
        out, self._events = self._events, []
        return out


def test_a_record_made_while_the_messages_are_collected_is_in_the_same_step() -> None:
    core = _CollectingCore(_core(1))
    step = NodeDriver(core).step()  # type: ignore[arg-type]
    assert [type(m.message) for m in step.messages] == [ChainRequest]
    assert step.records == [StoreRecord(b"run", "share", b"s", secret=True)]
