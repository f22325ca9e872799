"""The operator guide and the README run as written.

Their ``sh`` blocks are run literally, in order, as one bash script
(``guide_runner``): the guide forms a four-node committee on loopback by hand
(``kms node init``, ``kms committee assemble``/``apply``, genesis), admits an
app, fetches its key as a simulated CVM, adds a fifth node that then serves
keys and removes a node. A drift between the pages and the code fails here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guide_runner import ROOT, Result, run_page, runnable_blocks

# Well above a normal run (the guide about three minutes, the quick start about half a
# minute, on a 2-core machine): a hang fails.
GUIDE_DEADLINE = 900.0
README_DEADLINE = 300.0


def report(result: Result) -> str:
    return (
        f"failed in block {result.failed_block} after {result.seconds:.1f} s "
        f"(exit {result.returncode}, timed out: {result.timed_out})\n{result.output}"
    )


@pytest.mark.slow
@pytest.mark.guide
def test_operator_guide_runs(tmp_path: Path) -> None:
    page = ROOT / "docs" / "operator-guide.md"
    assert runnable_blocks(page.read_text()), "the guide has no runnable blocks"
    started = time.monotonic()
    result = run_page(page, timeout=GUIDE_DEADLINE, workdir=tmp_path)
    assert result.ok, report(result)
    print(f"operator guide ran in {time.monotonic() - started:.1f} s")


@pytest.mark.slow
@pytest.mark.guide
def test_readme_runs(tmp_path: Path) -> None:
    page = ROOT / "README.md"
    assert runnable_blocks(page.read_text()), "the README has no runnable blocks"
    result = run_page(page, timeout=README_DEADLINE, workdir=tmp_path)
    assert result.ok, report(result)
