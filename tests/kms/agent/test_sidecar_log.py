"""dstack's sidecar source reads ``Info`` (the event log, the compose) once and keeps it:
quotes are fresh on every call, the log it serves does not grow. docs/dstack.md ("Where
the agent's facts come from") states this."""

from __future__ import annotations

from pathlib import Path

from faketee import FakeDstackAgent, make_cvm

from kms.agent.tee import DstackSidecarSource, read_view


def test_the_sidecar_reads_info_once_and_quotes_every_time(tmp_path: Path) -> None:
    cvm = make_cvm(tmp_path)
    with FakeDstackAgent(cvm) as fake:
        source = DstackSidecarSource(fake.socket_path)
        view = read_view(source)
        first = source.event_log()
        fake.event_log = [*fake.event_log, dict(fake.event_log[-1], event="later")]
        quotes = {source.quote(bytes([i]) * 64) for i in range(3)}
        assert source.event_log() == first == view.event_log
        assert len(quotes) == 3
        assert fake.calls.count("Info") == 1
        assert fake.calls.count("GetQuote") == 4  # read_view's, then one per call
