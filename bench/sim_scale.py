"""How the simulator's genesis DKG scales: wall time for n members with n - t malicious dealers.

``python -m bench.sim_scale 16 32 64`` runs the ``malicious-dealers-at-scale``
scenario with ``t = ceil(2n/3)`` (n = 64 gives t = 43) and the top ``n - t``
members dealing bad shares and lying in their justifications, in protocol
mode with real cryptography, and prints one row per size.
"""

from __future__ import annotations

import argparse
import math
import time

from rich.console import Console
from rich.table import Table

from mpc.dkg.schedule import Schedule
from sim.run import simulate
from sim.scenario import SCENARIO_DIR, Scenario


def scenario(n: int, malicious: int | None = None) -> Scenario:
    base = Scenario.load_file(SCENARIO_DIR / "malicious-dealers-at-scale.toml")
    t = math.ceil(2 * n / 3)
    bad = list(range(t + 1, n + 1))[: malicious if malicious is not None else n - t]
    raw = dict(base.raw)
    raw.update(
        n=n,
        threshold=t,
        adversaries=[{"nodes": bad, "behaviour": "bad-shares", "to": 3, "justify": "wrong"}]
        if bad
        else [],
        expect={"disqualified_with_evidence": bad, "genesis_certified": True},
    )
    # The genesis schedule the simulated nodes follow (run keys, three broadcast phases,
    # certificate window), plus a margin.
    end = Schedule.default(float(raw.get("genesis_start", 1.0)), n, t, delta=base.delta).end
    raw["duration"] = float(math.ceil(end + 5.0))
    return Scenario.from_dict(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sim_scale")
    parser.add_argument("sizes", nargs="*", type=int, default=[16, 32, 64])
    parser.add_argument("--honest", action="store_true", help="no malicious dealers")
    args = parser.parse_args(argv)
    tbl = Table(title="simulated genesis DKG, protocol mode, real cryptography")
    for col in (
        "n",
        "t",
        "malicious",
        "wall s",
        "virtual s",
        "messages",
        "MB",
        "excluded w/ evidence",
    ):
        tbl.add_column(col, justify="right")
    for n in args.sizes:
        sc = scenario(n, 0 if args.honest else None)
        start = time.perf_counter()
        rep = simulate(sc, 1)
        wall = time.perf_counter() - start
        ev = sum(1 for d in rep["disqualified"] if d["evidence"])
        genesis = rep["epochs"][0]["certified_at"]
        tbl.add_row(
            str(n),
            str(sc.threshold),
            str(len(sc.corrupt_nodes())),
            f"{wall:.1f}",
            "never" if genesis is None else f"{genesis:.1f}",
            f"{rep['messages']:,}",
            f"{rep['bytes'] / 1e6:.1f}",
            str(ev),
        )
    Console().print(tbl)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
