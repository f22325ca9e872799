"""``/metrics`` over HTTP as Prometheus parses it: key requests released and refused move
the outcome counters and the latency histogram."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families
from served_node import NOW, CountingPCCS, ServedNode, run, tee

from kms.node.release import KeyRefusalReason
from kms.protocol import KeyRefusal, KeyResponse


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a metrics text: (sample name, sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str, reason: str
) -> float:
    return m[("qkms_key_requests_total", (("outcome", outcome), ("reason", reason)))]


def latency_count(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str) -> float:
    return m[("qkms_key_request_duration_seconds_count", (("outcome", outcome),))]


def test_key_requests_move_the_outcome_counters_and_the_latency_histogram(
    tmp_path: Path,
) -> None:
    genuine = tee(1)
    pccs = CountingPCCS({genuine.fmspc.hex().upper(): genuine.collateral(NOW)})
    node = ServedNode(tmp_path, pccs, [genuine.root_ca_der])

    async def main() -> None:
        r = await node.http.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
        before = samples(r.text)
        # Every refusal reason is exported from the start, at 0.
        for reason in KeyRefusalReason:
            assert requests(before, "refused", reason.value) == 0
        assert requests(before, "released", "none") == 0
        assert latency_count(before, "released") == latency_count(before, "refused") == 0

        refused = await node.post(os.urandom(300))
        assert isinstance(refused, KeyRefusal) and refused.reason == "malformed-request"
        stale = await node.post(node.request(genuine, seed=2, timestamp=NOW - 3600))
        assert isinstance(stale, KeyRefusal) and stale.reason == "stale-request"
        raw = node.request(genuine, seed=3)
        assert isinstance(await node.post(raw), KeyResponse)
        # The identical request is answered again; another one with its nonce is a replay.
        assert isinstance(await node.post(raw), KeyResponse)
        other = node.request(genuine, seed=3, timestamp=node.clock.t + 1)
        replayed = await node.post(other)
        assert isinstance(replayed, KeyRefusal) and replayed.reason == "replayed-nonce"

        after = samples(await node.metrics())
        assert requests(after, "released", "none") == 2
        assert requests(after, "refused", "malformed-request") == 1
        assert requests(after, "refused", "stale-request") == 1
        assert requests(after, "refused", "replayed-nonce") == 1
        assert requests(after, "refused", "quote-rejected") == 0
        assert latency_count(after, "released") == 2
        assert latency_count(after, "refused") == 3
        sum_released = after[("qkms_key_request_duration_seconds_sum", (("outcome", "released"),))]
        assert sum_released > 0
        inf = ("qkms_key_request_duration_seconds_bucket", (("le", "+Inf"), ("outcome", "refused")))
        assert after[inf] == 3
        # The existing counters still say the same, in the same series.
        assert (
            after[("qkms_rejected_inputs_total", (("reason", "key request: stale-request"),))] == 1
        )
        assert after[("qkms_messages_sent_total", (("kind", "kms/key-response"),))] == 2

    run(main)
