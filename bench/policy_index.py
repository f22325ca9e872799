"""The node's app index: policy lookup and offer cost at 10, 1,000 and 100,000 admitted apps.

``python -m bench.policy_index [--quick] [--json FILE]`` fills a
``kms.policy.registry.AppRegistry`` with that many admitted apps (each its
own owner key and signed policy), then times, per size:

* **lookup**: ``current(app_id, now)``, what every key request does;
* **renewal**: ``offer`` of the next version of an admitted app (a push or a
  peer's announcement: decode is excluded, signature check included);
* **unknown app**: ``offer`` of a brand-new app's bundle (the cached path of
  an anonymous push).

It prints one table with each cost's ratio to the smallest size (flat means
close to 1×) and the same numbers as JSON. A lookup is two dictionary reads;
what growth remains at large sizes is the CPU cache missing on a larger
working set of random app ids, not more work. Persisting an accepted offer is
one store row whatever the size; it is not timed here.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.timing import format_seconds
from kms.policy import AppPolicy, Measurement, OwnerKey, PolicyBundle
from kms.policy.registry import AdmittedBy, AppRegistry
from mpc.sig import set_key_cache

NOW = 1_800_000_000
MPK = bytes([0xA0]) + bytes(95)
MEASUREMENT = Measurement.explicit(
    mr_td=bytes(48), rtmr0=bytes(48), rtmr1=bytes(48), rtmr2=bytes(48), rtmr3=bytes(48)
)
FULL_SIZES = (10, 1_000, 100_000)
QUICK_SIZES = (10, 1_000, 10_000)
SAMPLES = 200


@dataclass(frozen=True)
class Row:
    apps: int
    fill_seconds: float
    lookup: float
    renewal: float
    unknown_app: float


def _bundle(owner: OwnerKey, version: int) -> PolicyBundle:
    policy = AppPolicy.build(
        app_id=owner.app_id(),
        version=version,
        owner_key=owner.public_bytes(),
        measurements=[MEASUREMENT],
        kms_mpk=MPK,
        not_before=NOW - 60,
    )
    return PolicyBundle(policy.sign(owner), ())


def _median(fn: Callable[[int], object], n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(size: int, rng: random.Random) -> Row:
    owners = [OwnerKey.generate(rng.randbytes) for _ in range(size)]
    reg = AppRegistry(MPK)
    previous = set_key_cache({})  # filling: decode each key once (not what is measured)
    try:
        t0 = time.perf_counter()
        for o in owners:
            reg.admit(_bundle(o, 1), now=NOW, by=AdmittedBy.OPERATOR)
        fill = time.perf_counter() - t0
        sample = [owners[rng.randrange(size)] for _ in range(SAMPLES)]
        # One renewal per sampled app: each offer is a new version (v2, v3, ...).
        versions: dict[bytes, int] = {}
        renewals = []
        for o in sample:
            v = versions.get(o.app_id(), 1) + 1
            versions[o.app_id()] = v
            renewals.append(_bundle(o, v))
        strangers = [_bundle(OwnerKey.generate(rng.randbytes), 1) for _ in range(SAMPLES)]
    finally:
        set_key_cache(previous)
    ids = [owners[rng.randrange(size)].app_id() for _ in range(10_000)]
    for a in ids:  # warm up
        reg.current(a, NOW)
    batches = []
    for _ in range(5):  # lookups are too quick to time one by one: batches of 10,000
        t0 = time.perf_counter()
        for a in ids:
            reg.current(a, NOW)
        batches.append((time.perf_counter() - t0) / len(ids))
    lookup = statistics.median(batches)
    renewal = _median(lambda i: reg.offer(renewals[i], now=NOW), SAMPLES)
    unknown = _median(lambda i: reg.offer(strangers[i], now=NOW), SAMPLES)
    return Row(size, fill, lookup, renewal, unknown)


def rows(quick: bool = False, progress: Callable[[str], None] | None = None) -> list[Row]:
    rng = random.Random(2026)
    out = []
    for size in QUICK_SIZES if quick else FULL_SIZES:
        if progress is not None:
            progress(f"policy index, {size:,} apps")
        out.append(measure(size, rng))
    return out


def table(result: list[Row]) -> Table:
    t = Table(
        title="app policy index: cost per operation vs admitted apps (median; ratio to the "
        "smallest size, flat = 1×)",
        title_justify="left",
    )
    for col in ("apps", "lookup", "×", "renewal offer", "×", "unknown-app offer", "×", "fill"):
        t.add_column(col, justify="right")
    base = result[0]
    for r in result:
        t.add_row(
            f"{r.apps:,}",
            format_seconds(r.lookup),
            f"{r.lookup / base.lookup:.2f}",
            format_seconds(r.renewal),
            f"{r.renewal / base.renewal:.2f}",
            format_seconds(r.unknown_app),
            f"{r.unknown_app / base.unknown_app:.2f}",
            f"{r.fill_seconds:.1f} s",
        )
    return t


def as_json(result: list[Row]) -> dict[str, object]:
    base = result[0]
    return {
        "bench": "policy_index",
        "rows": [
            {
                **asdict(r),
                "lookup_ratio": r.lookup / base.lookup,
                "renewal_ratio": r.renewal / base.renewal,
                "unknown_app_ratio": r.unknown_app / base.unknown_app,
            }
            for r in result
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy_index", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10, 1,000 and 10,000 apps")
    parser.add_argument("--json", type=Path, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    result = rows(args.quick)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table(result))
    doc = as_json(result)
    console.print_json(json.dumps(doc))
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
