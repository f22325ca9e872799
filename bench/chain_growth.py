"""A long epoch chain: what a node and a CVM pay at 1,000, 10,000 and 100,000 epochs.

``python -m bench.chain_growth [EPOCHS ...]`` builds each chain (n = 4, t = 3)
in process by signing every link with the master secret directly
(``mpc.membership.testing``), restores a node from it (the node keeps genesis
and the last 64 epochs and verifies only those), and measures the node's
answers to ``chain/request`` from genesis, the middle and the head, and a
CVM verifying what ``GET /v1/chain`` serves. ``--quick``: 1,000 and 10,000.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bench.timing import format_seconds

FULL_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)


@dataclass(frozen=True)
class Row:
    epochs: int
    links: int
    build: float
    restore: float
    kept: int
    answer_bytes: dict[str, int]
    answer_time: dict[str, float]
    cvm_bytes: int
    cvm_verify: float


def measure(epochs: int) -> Row:
    import random

    from kms.client.http import chain_epochs_from_bytes
    from kms.node.core import NodeConfig, NodeCore, Restored
    from mpc import hpke
    from mpc.ids import ParticipantIndex
    from mpc.membership import link_position
    from mpc.membership.messages import ChainRequest
    from mpc.membership.testing import forged_chain, member_seeds
    from mpc.sig import SigningKey

    start = time.perf_counter()
    chain = forged_chain(epochs, n=4, t=3)
    build = time.perf_counter() - start
    id_seed, dkg_seed = member_seeds(4)[1]
    config = NodeConfig(
        ParticipantIndex(1),
        chain.committee,
        3,
        genesis_start=0.0,
        delta=0.5,
        window_period=1e12,
    )
    start = time.perf_counter()
    core = NodeCore(
        config,
        SigningKey.from_seed(id_seed),
        hpke.derive_key_pair(dkg_seed)[0],
        rng=random.Random(1).randbytes,
        restored=Restored(chain=tuple(chain.links)),
    )
    restore = time.perf_counter() - start
    core.events()
    head = link_position(chain.links[-1])
    sizes: dict[str, int] = {}
    times: dict[str, float] = {}
    for name, have in (("genesis", 0), ("middle", head // 2), ("head", head)):
        start = time.perf_counter()
        core.receive(ParticipantIndex(2), ChainRequest(have), 1.0)
        out = [ob.message for ob in core.messages_to_send() if ob.to == ParticipantIndex(2)]
        times[name] = time.perf_counter() - start
        sizes[name] = sum(len(m.encode()) for m in out)
    raw = core.chain_update(0).encode()
    start = time.perf_counter()
    chain_epochs_from_bytes(raw, chain.mpk)
    cvm = time.perf_counter() - start
    return Row(
        epochs, len(chain.links), build, restore, len(core.chain), sizes, times, len(raw), cvm
    )


def rows(quick: bool, progress: Callable[[str], None] | None = None) -> list[Row]:
    out = []
    for epochs in QUICK_SIZES if quick else FULL_SIZES:
        if progress is not None:
            progress(f"chain of {epochs:,} epochs")
        out.append(measure(epochs))
    return out


def table(rows: list[Row]) -> Table:
    tbl = Table(
        title="epoch chain growth (n = 4): a node keeps genesis + 64 epochs, a CVM checks the head",
        title_justify="left",
    )
    for col in (
        "epochs",
        "links",
        "build",
        "node restore",
        "kept links",
        "answer from 0",
        "answer mid",
        "answer head",
        "GET /v1/chain",
        "CVM verify",
    ):
        tbl.add_column(col, justify="right")
    for r in rows:
        tbl.add_row(
            f"{r.epochs:,}",
            f"{r.links:,}",
            format_seconds(r.build),
            format_seconds(r.restore),
            str(r.kept),
            *(
                f"{r.answer_bytes[k] / 1024:.1f} KiB, {format_seconds(r.answer_time[k])}"
                for k in ("genesis", "middle", "head")
            ),
            f"{r.cvm_bytes / 1024:.1f} KiB",
            format_seconds(r.cvm_verify),
        )
    return tbl


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chain_growth")
    parser.add_argument("sizes", nargs="*", type=int)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    Console().print(table([measure(n) for n in sizes]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
