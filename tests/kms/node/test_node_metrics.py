"""A node's metrics and log lines while it runs: three ``NodeService`` instances run their
genesis DKG over ``net.memory`` on trio's MockClock; ``/metrics`` is parsed with
``prometheus_client``'s text parser."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from service_genesis import memory_node

from kms.app.testing import participant
from kms.node.core import NodeConfig
from kms.node.logs import JSONFormatter, TextFormatter, log_context
from kms.node.metrics import NodeMetrics
from kms.node.service import NodeService, TrioClock
from mpc.ids import ParticipantIndex as PI
from net.memory import MemoryNetwork

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_label(m: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: v for (n, labels), v in m.items() if n == name}


class Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def committee(tmp_path: Path, n: int = 3) -> tuple[dict[int, NodeConfig], dict[int, Any]]:
    rnd = random.Random("node-metrics")
    seeds = {i: (rnd.randbytes(32), rnd.randbytes(32)) for i in range(1, n + 1)}
    genesis = tuple(participant(i, *seed)[2] for i, seed in seeds.items())
    configs = {
        i: NodeConfig(PI(i), genesis, 2, genesis_start=5.0, delta=0.5, window_period=1e9)
        for i in seeds
    }
    return configs, seeds


def test_a_dkg_moves_phase_durations_and_per_peer_series_and_logs_carry_the_node(
    tmp_path: Path,
) -> None:
    configs, seeds = committee(tmp_path)
    handler = Lines(JSONFormatter())
    logger = logging.getLogger("quorum_kms")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    services: dict[int, NodeService] = {}

    async def main() -> None:
        network = MemoryNetwork(default_delay=0.01)
        clock = TrioClock(0.0)
        stores = []
        async with trio.open_nursery() as nursery:
            for i, cfg in configs.items():
                svc, store, _ = await memory_node(tmp_path, cfg, seeds[i], network, clock)
                stores.append(store)
                services[i] = svc
                await nursery.start(svc.run)
            with trio.fail_after(120):
                while not all(s.core.state is not None and s.core.share for s in services.values()):
                    await trio.sleep(0.5)
            await trio.sleep(2.0)  # the run ends and its last phase is observed
            nursery.cancel_scope.cancel()
        for store in stores:
            store.close()

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    m = samples(services[1].metrics_text())
    # Phase durations: each phase the DKG went through was timed, on the node's clock.
    counts = {
        dict(labels)["phase"]: v
        for (name, labels), v in m.items()
        if name == "qkms_sharing_phase_duration_seconds_count" and dict(labels)["kind"] == "dkg"
    }
    assert {"dealing", "responding"} <= set(counts), counts
    assert all(v >= 1 for v in counts.values())
    dealing = m[
        (
            "qkms_sharing_phase_duration_seconds_sum",
            (("kind", "dkg"), ("phase", "dealing")),
        )
    ]
    assert dealing > 0
    # Per-peer series: the other members, never the node itself.
    for name in (
        "qkms_peer_messages_received_total",
        "qkms_peer_bytes_received_total",
        "qkms_peer_messages_sent_total",
        "qkms_peer_bytes_sent_total",
    ):
        values = by_label(m, name, "peer")
        assert set(values) == {"2", "3"}, (name, values)
        assert all(v > 0 for v in values.values()), (name, values)
    received = by_label(m, "qkms_peer_messages_received_total", "peer")
    kinds = by_label(m, "qkms_messages_received_total", "kind")
    assert sum(received.values()) == sum(kinds.values())
    # Log lines: one JSON object each, naming the node; the DKG's own lines name the run.
    events = [json.loads(line) for line in handler.lines]
    certified = [e for e in events if e["msg"] == "epoch certified"]
    assert {e["node"] for e in certified} == {1, 2, 3}
    assert all(e["epoch"] == 0 and e["run"] == "dkg:0:0" for e in certified)
    assert all("node" in e and "epoch" in e for e in events)


def test_a_removed_members_series_are_dropped() -> None:
    m = NodeMetrics()
    m.set_members([2, 3, 4])
    for peer in (2, 3, 4, 9):  # 9 is not a member: counted in the totals only
        m.received(peer, "bcast/relay", 100)
        m.sent(peer, 50)
    text = m.exposition().decode()
    assert set(by_label(samples(text), "qkms_peer_bytes_received_total", "peer")) == {"2", "3", "4"}
    assert by_label(samples(text), "qkms_messages_received_total", "kind") == {"bcast/relay": 4}
    m.set_members([2, 4])  # 3 was removed
    after = samples(m.exposition().decode())
    for name in (
        "qkms_peer_messages_received_total",
        "qkms_peer_bytes_received_total",
        "qkms_peer_messages_sent_total",
        "qkms_peer_bytes_sent_total",
    ):
        assert set(by_label(after, name, "peer")) == {"2", "4"}, name
    assert by_label(after, "qkms_peer_bytes_sent_total", "peer") == {"2": 50, "4": 50}


def test_log_lines_carry_the_context_and_their_own_fields_win() -> None:
    record = logging.LogRecord(
        "quorum_kms.node", logging.INFO, __file__, 1, "epoch certified", (), None
    )
    record.fields = {"epoch": 5, "has_share": True}
    with log_context(lambda: {"node": 2, "epoch": 4, "run": "reshare:5:0"}):
        line = json.loads(JSONFormatter().format(record))
        text = TextFormatter().format(record)
    assert line["msg"] == "epoch certified" and line["level"] == "info"
    assert (line["node"], line["epoch"], line["run"], line["has_share"]) == (
        2,
        5,
        "reshare:5:0",
        True,
    )
    assert text.split(" ", 2)[1:] == [
        "info",
        "epoch certified node=2 epoch=5 run=reshare:5:0 has_share=true",
    ]
    # Outside the context, only the record's own fields.
    assert "node" not in json.loads(JSONFormatter().format(record))


def test_kms_node_run_takes_a_json_or_text_log_format(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kms.cli import app
    from kms.node.logs import formatter

    assert isinstance(formatter("json"), JSONFormatter)
    assert isinstance(formatter("text"), TextFormatter)
    config = str(tmp_path / "node.toml")
    r = CliRunner().invoke(app, ["node", "run", "--config", config, "--log-format", "xml"])
    assert r.exit_code == 2 and "--log-format" in r.output
