"""A member that stalls during a run does not sign it, and says so where an operator looks.

Member 5 of five is paused for 0.3 s (more than Δ/4 = 0.125 s) in the middle of the
deal phase, as an overloaded machine pauses a node process: what is sent to it waits in
its buffers. The other four certify attempt 0; member 5 emits ``SignatureWithheld``
naming the gap it saw, and the node's reporter turns that into a warning log line and
``qkms_signatures_withheld_total``.
"""

from __future__ import annotations

import logging
import random
import re

import pytest
from mesh import Mesh, make_nodes

from kms.node.core import NodeConfig, NodeCore, SignatureWithheld
from kms.node.metrics import NodeMetrics
from kms.node.reporting import EventReporter
from mpc.cert import RunKind
from mpc.ids import ParticipantIndex as PI

DELTA = 0.5
N, T = 5, 3
START = 1.0


def test_a_member_paused_in_the_deal_phase_withholds_and_names_the_gap() -> None:
    nodes = make_nodes(range(1, N + 1), 31)
    genesis = tuple(nodes[PI(i)].participant for i in range(1, N + 1))
    rng = random.Random(31)
    cores = {}
    for i in range(1, N + 1):
        cfg = NodeConfig(PI(i), genesis, T, genesis_start=START, delta=DELTA)
        cores[PI(i)] = NodeCore(cfg, nodes[PI(i)].identity, nodes[PI(i)].dkg_key, rng=rng.randbytes)
    sched = cores[PI(1)].config.genesis_schedule(0)
    mesh = Mesh(cores, seed=31, max_delay=DELTA / 4, ticks=[0.0])
    pause_at = (sched.key_cutoff + sched.deal_end) / 2

    def pause() -> None:
        mesh.asleep[PI(5)] = pause_at + 0.3

    mesh.at(pause_at, pause)
    mesh.run_until(sched.end + 1.0)
    for i in (1, 2, 3, 4):
        st = cores[PI(i)].state
        assert st is not None and st.certificate.transcript.attempt == 0
        assert not [e for e in mesh.events[PI(i)] if isinstance(e, SignatureWithheld)]
    (withheld,) = [e for e in mesh.events[PI(5)] if isinstance(e, SignatureWithheld)]
    assert (withheld.kind, withheld.epoch, withheld.attempt) == (RunKind.DKG, 0, 0)
    found = re.search(
        r"; ([0-9.]+) s between two of its steps at [0-9.]+, more than 0\.125 s", withheld.reason
    )
    assert found, withheld.reason
    gap = float(found.group(1))
    assert 0.25 <= gap <= 0.3 + DELTA / 4, withheld.reason


def test_the_reporter_logs_and_counts_a_withheld_signature(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = NodeMetrics()
    reporter = EventReporter(metrics, lambda *a: None, lambda *a: None)
    with caplog.at_level(logging.WARNING, logger="quorum_kms.node"):
        reporter.report(SignatureWithheld(RunKind.DKG, 0, 1, "not live through the run: x"))
    (record,) = [r for r in caplog.records if r.getMessage() == "certificate signature withheld"]
    assert record.levelno == logging.WARNING
    assert record.fields["attempt"] == 1 and record.fields["reason"].endswith(": x")  # type: ignore[attr-defined]
    assert metrics.signatures_withheld == {RunKind.DKG: 1}
    assert 'qkms_signatures_withheld_total{kind="dkg"} 1.0' in metrics.exposition().decode()
