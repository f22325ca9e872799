"""Shared test setup: make ``tests/`` (``mesh``) and the devnet harness importable from every
test directory."""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

from lane_order import LONGEST_FILES

import kms.store.sealer as _sealer

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The in-process devnet harness (``service_devnet``, ``devnet_helpers``), for every test directory.
sys.path.insert(0, str(Path(__file__).resolve().parent / "kms" / "devnet"))


def pytest_addoption(parser):  # type: ignore[no-untyped-def]
    parser.addoption(
        "--sim-seed",
        type=int,
        default=None,
        help="run the simulator scenario tests with this seed (replays a reported failure)",
    )


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """The long in-process tests (marked ``parallel``) go first, so that two workers end
    together instead of one running them alone at the end; then the longest files
    (``LONGEST_FILES``), longest first. The sort is stable: the rest keep their order."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("parallel") is None,
            -LONGEST_FILES.get(item.nodeid.split("::")[0], 0),
        )
    )


class _RememberedScrypt:
    """scrypt as ``cryptography`` computes it, remembered per (salt, cost, passphrase) within
    one test process: a test that restarts a node or reopens a store derives the same key
    again, 0.1 s of CPU each time. Every distinct input is still derived by the real KDF;
    node processes started by the tests do not use this."""

    _seen: ClassVar[OrderedDict[tuple[Any, ...], bytes]] = OrderedDict()
    _real = _sealer.Scrypt

    def __init__(self, *, salt: bytes, length: int, n: int, r: int, p: int) -> None:
        self._params = (bytes(salt), length, n, r, p)

    def derive(self, key_material: bytes) -> bytes:
        k = (*self._params, bytes(key_material))
        got = self._seen.get(k)
        if got is None:
            salt, length, n, r, p = self._params
            got = self._real(salt=salt, length=length, n=n, r=r, p=p).derive(key_material)
            self._seen[k] = got
            if len(self._seen) > 512:
                self._seen.popitem(last=False)
        return got


_sealer.Scrypt = _RememberedScrypt  # type: ignore[misc,assignment]


def pytest_unconfigure(config):  # type: ignore[no-untyped-def]
    """Print the CPU this pytest run used, its own and that of every process it waited for
    (xdist workers, node processes and CLIs the tests started): ``make test`` runs several
    pytest runs side by side, and their CPU, not their wall time, is what they share."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller counts it once it has exited
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    print(f"CPU of this pytest run and the processes it waited for: {cpu:.1f} s")
