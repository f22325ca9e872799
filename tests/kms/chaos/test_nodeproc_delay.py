"""The lab node program's ``--delay-ms``: passed by the lab committee, range-checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kms.chaos import nodeproc
from kms.chaos.committee import LabCommittee, LabNode


def committee(tmp_path: Path, delay_ms: float) -> LabCommittee:
    lab: Any = object()
    return LabCommittee(
        lab,
        tmp_path / "work",
        tmp_path / "logs",
        nodes=4,
        threshold=3,
        delta=0.5,
        window_period=30,
        window_length=None,
        refresh_interval=0,
        delay_ms=delay_ms,
    )


def node(tmp_path: Path) -> LabNode:
    d = tmp_path / "n1"
    return LabNode(1, object(), d, d / "node.toml", tmp_path / "n1.log", tmp_path / "n1.skew")


def test_the_committee_passes_the_delay_to_its_nodes(tmp_path: Path) -> None:
    argv = committee(tmp_path, 10.0).node_argv(node(tmp_path))
    assert argv[argv.index("--delay-ms") + 1] == "10.0"
    assert "--delay-ms" not in committee(tmp_path, 0).node_argv(node(tmp_path))


@pytest.mark.parametrize("bad", ["-1", "10001", "nan"])
def test_a_delay_out_of_range_is_refused(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nodeproc.main(["--config", str(tmp_path / "node.toml"), "--delay-ms", bad]) == 2
    assert "--delay-ms" in capsys.readouterr().err
