"""The lab's workload processes: CVM clients, the rogue CVM, and the PCCS host.

``python -m kms.chaos.workload client --name c1 …`` runs one simulated CVM with the real
``KeyClient`` (kept alive, hedging after ``--hedge-after`` seconds): it fetches the key of each
app in turn every ``--interval`` seconds and writes one ``fetch`` observation per attempt (the
sha256 of each derived key by ``PURPOSE/VERSION``, the epoch whose partials gave it, the error).
``rogue`` does the same with a measurement that no policy admits. Both count, per fetch, the
node answers that carried a key partial the CVM could decrypt (``partials_decrypted``): for the
rogue, every one is an unauthorized release.

``--broken skip-sigma-check`` (test-only, the checker's validation): the client combines the
partials without checking them or the combined key (``σ``) against the public shares, as a
broken client build would.

``python -m kms.chaos.workload pccs --collateral FILE --host IP --port P`` serves the lab's
simulated collateral as the PCCS, on its own host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PURPOSES: tuple[tuple[str, int], ...] = (("app", 1),)
"""What each fetch asks for (one purpose keeps the nodes' load low on a small machine)."""


class _Counter:
    """Partials a CVM could decrypt in the current fetch (fetches are sequential)."""

    def __init__(self) -> None:
        self.value = 0
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            v, self.value = self.value, 0
            return v

    def add(self, n: int) -> None:
        with self.lock:
            self.value += n


DECRYPTED = _Counter()


def _counting_session() -> type:
    from kms.client import core
    from kms.protocol import release_info
    from mpc import hpke
    from mpc.errors import DecryptionError, InvalidEncoding

    base = core.KeyRequestSession

    class CountingSession(base):  # type: ignore[misc, valid-type]
        def receive(self, index: Any, answer: Any) -> None:
            shares = getattr(answer, "shares", None)
            if shares and self.request is not None:
                opened = 0
                for share in shares:
                    sk = self._keys.get(share.index)
                    if sk is None:
                        continue
                    info = release_info(share.request_hash, share.purpose, share.epoch, share.index)
                    try:
                        hpke.open(share.enc, sk, info, info, share.ciphertext)
                    except (DecryptionError, InvalidEncoding, ValueError):
                        continue
                    opened += 1
                if opened:
                    DECRYPTED.add(1)
            super().receive(index, answer)

    return CountingSession


def patch_client(broken: str | None) -> None:
    """Count decryptable partials; with ``broken == "skip-sigma-check"``, combine partials
    without checking them or the combined key."""
    from kms.client import core, http

    session = _counting_session()
    setattr(http, "KeyRequestSession", session)  # noqa: B010 - a test-only patch
    if broken == "skip-sigma-check":
        from mpc.tkd import DerivedPoint, combine

        def combine_unchecked(partials: Any, key_id: Any, *_: Any, **__: Any) -> Any:
            threshold = _[-1] if _ else __["threshold"]
            return DerivedPoint(key_id, combine(list(partials)[:threshold], threshold))

        setattr(core, "combine_and_verify", combine_unchecked)  # noqa: B010 - test-only
    elif broken is not None:
        raise SystemExit(f"unknown client switch {broken!r}")


def key_digest(derived: Any) -> str:
    """The sha256 of a derived key point (the root of the app key)."""
    return hashlib.sha256(derived.point.to_bytes()).hexdigest()


def run_client(args: argparse.Namespace) -> int:
    from kms.app import simtee
    from kms.app.devnet import DEMO_MEASUREMENT, ROGUE_MEASUREMENT
    from kms.client.http import KeyClient
    from kms.policy import Measurement
    from mpc.cert import check_mpk  # noqa: F401 - the pinned key is checked by KeyClient
    from mpc.ids import ParticipantIndex
    from mpc.math import G2

    patch_client(args.broken)
    meas = ROGUE_MEASUREMENT if args.rogue else DEMO_MEASUREMENT
    quote = simtee.quote_source(Path(args.tee), Measurement.explicit(**meas))

    urls = {ParticipantIndex(int(i)): u for i, u in json.loads(args.urls).items()}
    apps = [a for a in args.apps.split(",") if a]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    until = time.time() + args.duration
    out = open(args.out, "a", encoding="utf-8")
    client = KeyClient(
        urls,
        G2.from_bytes(bytes.fromhex(args.mpk)),
        timeout=args.timeout,
        hedge_after=args.hedge_after,
        chain_ttl=10.0,
        connect_timeout=1.0,
    )
    k = 0
    try:
        while not stop.is_set() and time.time() < until:
            app = apps[k % len(apps)]
            k += 1
            began = time.time()
            DECRYPTED.take()
            record: dict[str, Any] = {
                "kind": "fetch",
                "client": args.name,
                "rogue": bool(args.rogue),
                "app": app,
                "t0": began,
            }
            try:
                result = client.fetch(bytes.fromhex(app), PURPOSES, quote)
                record.update(
                    ok=True,
                    keys={f"{p}/{v}": key_digest(d) for (p, v), d in result.derived.items()},
                    epoch=int(result.epoch),
                    error=None,
                )
            except Exception as exc:
                record.update(ok=False, keys={}, epoch=None, error=f"{type(exc).__name__}: {exc}")
            record["t1"] = time.time()
            record["partials_decrypted"] = DECRYPTED.take()
            out.write(json.dumps(record, sort_keys=True, separators=(",", ":"))[:4000] + "\n")
            out.flush()
            stop.wait(max(0.0, args.interval - (time.time() - began)))
    finally:
        client.close()
        out.close()
    return 0


def run_pccs(args: argparse.Namespace) -> int:
    from kms.api.pccs import PCCSServer
    from kms.attest import Collateral

    collateral = Collateral.from_json(Path(args.collateral).read_text())
    server = PCCSServer({collateral.fmspc: collateral}, args.host, args.port).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"pccs serving on {args.host}:{args.port}", flush=True)
    stop.wait()
    server.stop()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kms.chaos.workload")
    sub = p.add_subparsers(dest="role", required=True)
    for role in ("client", "rogue"):
        c = sub.add_parser(role)
        c.add_argument("--name", required=True)
        c.add_argument("--mpk", required=True, help="the pinned master public key (hex)")
        c.add_argument("--urls", required=True, help='JSON {"index": "http://ip:port"}')
        c.add_argument("--apps", required=True, help="app ids (hex), comma separated")
        c.add_argument("--tee", required=True, help="the lab's simulated TEE directory")
        c.add_argument("--out", required=True, help="JSON-lines file of fetch observations")
        c.add_argument("--interval", type=float, default=1.0)
        c.add_argument("--hedge-after", type=float, default=0.5)
        c.add_argument("--timeout", type=float, default=3.0)
        c.add_argument("--duration", type=float, default=3600.0)
        c.add_argument("--broken", default=None)
        c.set_defaults(rogue=role == "rogue")
    s = sub.add_parser("pccs")
    s.add_argument("--collateral", required=True)
    s.add_argument("--host", required=True)
    s.add_argument("--port", type=int, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.role == "pccs":
        return run_pccs(args)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
