"""``python -m bench [--quick]``: time the BLS12-381 layer and what is built on it.

Prints three ``rich`` tables: the operations of ``mpc`` against the py-ecc
reference (with the performance targets), the candidate native backends
side by side, and the genesis DKG over libp2p between node processes
(``bench.dkg_network``; ``--quick``: n = 4 only), key release, and the app
policy index at 10, 1,000 and 100,000 apps (``bench.policy_index``, with its
JSON), the epoch chain at 1,000, 10,000 and 100,000 epochs (``bench.chain_growth``;
``--quick``: up to 10,000), and the live flood of a devnet with 1,000 then 10,000 new apps' policies
and large bodies (``bench.flood``, with its JSON; ``--quick``: 100 then 400), and
``kms agent``'s boot time to its first key and GetKey latency over its socket
(``bench.agent``, with its JSON; ``--quick``: a devnet of 3), the store's write
path, one release per transaction against group commit (``bench.store_write``, with its
JSON; ``--quick``: shorter rows), the libp2p transport's CPU per frame, one write per frame
against frames written together (``bench.transport``, with its JSON; ``--quick``: fewer
frames), and the genesis DKG of n = 16, 32 and 64 nodes on hosts
of their own in the fault lab (``bench.scale``, with its JSON; ``--quick``: n = 16; needs
root), and a boot storm of CVMs at increasing open-loop rates against a devnet of 5 and the
dstack-style baseline (``bench.storm``, with its JSON; ``--quick``: four rates of 3 s).
Missed targets are printed,
not raised: the exit status is 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time

from rich.console import Console
from rich.table import Table

from bench import (
    agent,
    backends,
    chain_growth,
    crypto,
    dkg_network,
    flood,
    key_release,
    policy_index,
    scale,
    store_write,
    storm,
    transport,
)
from bench.timing import Budget, format_seconds

PACKAGES = ("pyblst", "py-arkworks-bls12381", "chia-rs", "py-ecc", "cryptography")


def _versions() -> str:
    parts = []
    for name in PACKAGES:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} (missing)")
    return ", ".join(parts)


def main_table(rows: list[crypto.Row], profile: crypto.Profile) -> Table:
    table = Table(
        title=f"quorum-kms crypto: native backends vs py-ecc reference ({profile.name} run)",
        title_justify="left",
    )
    table.add_column("operation")
    table.add_column("fast", justify="right")
    table.add_column("iters", justify="right")
    table.add_column("py-ecc", justify="right")
    table.add_column("iters", justify="right")
    table.add_column("ratio", justify="right")
    table.add_column("note", overflow="fold")
    for row in rows:
        ref = row.reference
        if ref is None:
            ref_time, ref_iters, ratio = "n/a", "n/a", "n/a"
        else:
            ref_time = ("≈" if ref.approximate else "") + format_seconds(ref.seconds)
            ref_iters = ref.iterations
            ratio = f"{row.ratio:,.0f}×"
        note = row.note
        met = row.target_met
        if met is not None and row.target is not None:
            verdict = "[green]met[/green]" if met else "[bold red]MISSED[/bold red]"
            note = f"target ≤ {format_seconds(row.target)}: {verdict}; {note}"
        table.add_row(
            row.operation,
            format_seconds(row.fast.median),
            str(row.fast.iterations),
            ref_time,
            ref_iters,
            ratio,
            note,
        )
    return table


def backend_table(rows: list[backends.BackendRow]) -> Table:
    table = Table(
        title="backend choice: the native bindings called directly (median, iterations)",
        title_justify="left",
    )
    table.add_column("operation")
    for name in backends.BACKENDS:
        table.add_column(name, justify="right")
    table.add_column("note", overflow="fold")
    for row in rows:
        cells = []
        present = {b: t for b, t in row.timings.items() if t is not None}
        best = min(present, key=lambda b: present[b].median) if present else None
        for b in backends.BACKENDS:
            t = row.timings.get(b)
            if t is None:
                cells.append("[dim]n/a[/dim]")
                continue
            text = f"{format_seconds(t.median)} ({t.iterations})"
            cells.append(f"[bold]{text}[/bold]" if b == best and len(present) > 1 else text)
        table.add_row(row.operation, *cells, row.note)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="cut iterations and sizes (smoke run, < 60 s)"
    )
    args = parser.parse_args(argv)
    profile = crypto.QUICK if args.quick else crypto.FULL
    backend_budget = Budget(0.05, 300, 3) if args.quick else Budget(0.4, 3000, 5)

    console = Console(width=None if sys.stdout.isatty() else 180)
    console.print(
        f"Python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {_versions()}"
    )
    start = time.perf_counter()
    with console.status("benchmarking") as status:

        def progress(what: str) -> None:
            status.update(f"benchmarking: {what}")

        crypto_rows = crypto.rows(profile, progress)
        backend_rows = backends.rows(backend_budget, progress)
        dkg_rows = dkg_network.rows(args.quick, progress)
        progress("key release")
        release_rows = key_release.rows(args.quick)
        index_rows = policy_index.rows(args.quick, progress)
        chain_rows = chain_growth.rows(args.quick, progress)
        flood_runs = flood.runs(
            flood.QUICK_SIZES if args.quick else flood.FULL_SIZES, progress=progress
        )
        progress("kms agent")
        agent_rows = agent.rows(args.quick)
        store_rows = store_write.rows(args.quick, progress=progress)
        progress("the libp2p transport")
        transport_rows = transport.rows(args.quick)
        scale_off = scale.unavailable()
        scale_runs = (
            []
            if scale_off is not None
            else scale.runs(
                scale.QUICK_SIZES if args.quick else scale.FULL_SIZES, progress=progress
            )
        )
        storm_run = storm.run(args.quick, progress)
    console.print(main_table(crypto_rows, profile))
    console.print(backend_table(backend_rows))
    missed = [r.operation for r in crypto_rows if r.target_met is False]
    if missed:
        console.print(f"[bold red]targets missed:[/bold red] {', '.join(missed)}")
    else:
        console.print("[green]all targets met[/green]")
    dkg_network.report(console, dkg_rows)
    console.print(key_release.table(release_rows))
    console.print(policy_index.table(index_rows))
    console.print_json(json.dumps(policy_index.as_json(index_rows)))
    console.print(chain_growth.table(chain_rows))
    console.print_json(json.dumps(flood.report(console, flood_runs)))
    console.print(agent.table(agent_rows))
    console.print_json(json.dumps(agent.as_json(agent_rows)))
    store_fs = store_write.file_system(store_write.default_directory())
    console.print(store_write.table(store_rows, store_fs))
    console.print_json(json.dumps(store_write.as_json(store_rows, store_fs)))
    console.print(transport.table(transport_rows))
    console.print_json(json.dumps(transport.as_json(transport_rows)))
    if scale_off is not None:
        console.print(f"committee size (bench.scale): not run: {scale_off}")
    else:
        scale.report(console, scale_runs)
        console.print_json(json.dumps(scale.as_json(scale_runs)))
    console.print_json(json.dumps(storm.report(console, storm_run)))
    console.print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
