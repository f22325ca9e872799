"""``make demo`` end to end: a devnet of 5 processes, then the derivation walk-through."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_make_demo_runs_and_passes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kms.app.demo"],
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo passed" in proc.stdout
    assert "the rest still agree" in proc.stdout
    assert "node 6 joined" in proc.stdout and "node 3 left" in proc.stdout
    # The dstack app (unmodified SDK, kms agent): one address, before and after the changes.
    addresses = re.findall(r"wallet/main address (0x[0-9a-fA-F]{40})", proc.stdout)
    assert len(addresses) == 2 and addresses[0] == addresses[1], proc.stdout[-3000:]
    assert "after the join and leave, the same: True" in proc.stdout
