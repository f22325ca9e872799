"""Protocol mode delivers every message as an encoded envelope through the node's
``NodeDriver.receive_frame``, the path a deployed node's frames take."""

from __future__ import annotations

import functools

import pytest

from kms.node.driver import FrameAccepted, NodeDriver
from net.codec import ENVELOPE_VERSION, decode_envelope
from sim import world as sim_world
from sim.scenario import SCENARIO_DIR, Scenario


def test_every_delivered_message_is_an_envelope_through_the_shared_driver(
    monkeypatch: pytest.MonkeyPatch, sim_seed: int
) -> None:
    raw = dict(Scenario.load_file(SCENARIO_DIR / "corrupt-t-minus-one.toml").raw)
    raw["duration"] = 15.0  # the genesis DKG with its dealers caught and excluded
    raw["load"] = {"rate": 0.0}
    sc = Scenario.from_dict(raw)
    seen: list[tuple[int, int, bytes, bool]] = []
    receive = NodeDriver.receive_frame

    def spy(self: NodeDriver, peer: bytes, frame: bytes, now: float) -> object:
        got = receive(self, peer, frame, now)  # type: ignore[arg-type]
        seen.append(
            (
                int(self.core.config.index),
                int(self.index_of(peer) or 0),
                frame,
                isinstance(got, FrameAccepted),
            )
        )
        return got

    monkeypatch.setattr(NodeDriver, "receive_frame", spy)
    world = sim_world.World(sc, sim_seed)
    world.run()
    obs, net = world.obs, world.network.stats
    in_flight = sum(
        1
        for _, _, action in world._queue
        if isinstance(action, functools.partial) and action.func == world._deliver
    )
    assert obs.messages > 1000
    # Every message sent was delivered through a driver, or is accounted for.
    delivered = obs.messages - net.lost + net.duplicated - in_flight
    assert delivered == len(seen) + obs.dropped_down + net.partitioned
    assert sum(n.received_messages for n in world.nodes.values()) == len(seen)
    for receiver, sender, frame, accepted in seen:
        env = decode_envelope(frame)
        assert env.version == ENVELOPE_VERSION and env.sender == sender != receiver
        assert accepted
    # The corrupt dealers' deals went through the drivers too, and were caught.
    assert {d["index"] for d in world.disqualified()} == {1, 2}
