"""What the harness sees of the lab while it runs: the observation writer and the node pollers.

Observations are JSON lines under ``OUT/observations/`` (the contract is in ``docs/chaos.md``):
every line is flushed as it is written, so a run cut short still leaves what it saw. Times are
the harness's own clock (``time.time()`` in the harness, never a skewed node's).

The pollers run in the harness, which sits in the lab's parent namespace: their requests reach
every host directly, through no proxy and no fault, so what they record is what the node
serves, not what the network let through.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

STATUS_EVERY = 1.0
"""Seconds between two ``/v1/status`` polls of every node."""
CHAIN_EVERY = 5.0
"""Seconds between two ``GET /v1/chain`` polls of every node."""
POLL_TIMEOUT = 0.8
"""Seconds a poll waits for a node's answer (a paused node answers never)."""


class ObservationWriter:
    """One JSON-lines file of observations; thread-safe, every line flushed at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class PolledNode:
    """A node the pollers follow: its index, URL, whether it is byzantine, and whether its
    process runs (the nemesis and the operator keep ``up`` current)."""

    index: int
    url: str
    byzantine: bool = False
    up: bool = True
    retired: bool = False
    """Removed from the committee and stopped: no longer polled."""


def chain_links(raw: bytes) -> list[dict[str, Any]]:
    """The links of a ``GET /v1/chain`` answer as the observations record them: epoch, kind,
    the link's hash, and the hash of what it certifies (outcome). Not verified: the checker
    compares what each node serves."""
    from kms.client.http import _links
    from mpc.cert import EpochCertificate

    out: list[dict[str, Any]] = []
    for link in _links(raw):
        certified: Any
        if isinstance(link, EpochCertificate):
            epoch, kind, certified = link.transcript.epoch, "epoch", link.transcript
        else:
            epoch, kind, certified = link.outcome.epoch, "membership", link.outcome
        out.append(
            {
                "epoch": int(epoch),
                "kind": kind,
                "hash": link.fingerprint().hex(),
                "outcome": certified.fingerprint().hex(),
            }
        )
    return out


def status_record(node: PolledNode, st: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """A ``status`` observation from a node's ``/v1/status`` answer (None: no answer)."""
    return {
        "kind": "status",
        "t": now,
        "node": node.index,
        "byzantine": node.byzantine,
        "up": node.up,
        "reachable": st is not None,
        "epoch": None if st is None else st.get("epoch"),
        "mpk": None if st is None else st.get("master_public_key"),
        "member": None if st is None else st.get("member"),
        "serving": None if st is None else bool(st.get("has_share") and st.get("serves_keys")),
        "running": None if st is None else st.get("running"),
        "locked": None if st is None else st.get("locked_proposal"),
    }


class Pollers:
    """The status poller (every ``STATUS_EVERY``) and chain poller (every ``CHAIN_EVERY``) of
    the nodes ``nodes()`` returns, in one background thread with a small pool."""

    def __init__(
        self,
        writer: ObservationWriter,
        nodes: Callable[[], Iterable[PolledNode]],
        *,
        status_every: float = STATUS_EVERY,
        chain_every: float = CHAIN_EVERY,
    ) -> None:
        self.writer = writer
        self.nodes = nodes
        self.status_every = status_every
        self.chain_every = chain_every
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=POLL_TIMEOUT, limits=httpx.Limits(max_connections=64))
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="poll")
        self._thread = threading.Thread(target=self._loop, name="pollers", daemon=True)
        self.polls = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def status(self, node: PolledNode) -> dict[str, Any] | None:
        try:
            r = self._http.get(node.url + "/v1/status")
            return dict(r.json()) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def poll_status(self, node: PolledNode) -> dict[str, Any] | None:
        st = self.status(node)
        self.writer.write(status_record(node, st, time.time()))
        return st

    def poll_chain(self, node: PolledNode) -> None:
        try:
            r = self._http.get(node.url + "/v1/chain", timeout=2 * POLL_TIMEOUT)
            if r.status_code != 200:
                return
            links = chain_links(r.content)
        except (httpx.HTTPError, ValueError):
            return
        except Exception:
            return
        self.writer.write(
            {
                "kind": "chain",
                "t": time.time(),
                "node": node.index,
                "byzantine": node.byzantine,
                "links": links,
            }
        )

    def poll_all(self, *, chains: bool) -> None:
        live = [n for n in self.nodes() if not n.retired]
        futures = [self._pool.submit(self.poll_status, n) for n in live]
        if chains:
            futures += [self._pool.submit(self.poll_chain, n) for n in live if n.up]
        for f in futures:
            f.result()
        self.polls += 1

    def _loop(self) -> None:
        next_chain = time.monotonic()
        while not self._stop.is_set():
            began = time.monotonic()
            chains = began >= next_chain
            if chains:
                next_chain = began + self.chain_every
            try:
                self.poll_all(chains=chains)
            except RuntimeError:  # the pool shut down under us: stopping
                return
            self._stop.wait(max(0.0, self.status_every - (time.monotonic() - began)))


def prove_share(
    committee: Any, node: Any, app_hex: str, status: dict[str, Any] | None
) -> tuple[bool, bool, int | None]:
    """Whether ``node`` holds a share of the last epoch and whether it matches its public
    share, shown by what it serves: the harness, as the lab's CVM, asks this node alone for
    a key partial of ``app_hex`` against the chain verified from the pinned key, and checks
    the partial (decrypted under its own ephemeral key) against the node's public share of
    that epoch. Returns ``(holds_share, matches_public_share, epoch)``."""
    import os

    from kms.app import devnet, simtee
    from kms.client.core import KeyRequestSession
    from kms.client.http import KeyClient
    from kms.policy import Measurement
    from kms.protocol import KeyResponse
    from mpc.ids import ParticipantIndex
    from mpc.math import G2
    from mpc.tkd import verify_partial

    holds = bool(status and status.get("has_share"))
    epoch = None if status is None else status.get("epoch")
    urls = {ParticipantIndex(n.index): n.url for n in committee.members()}
    quote = simtee.quote_source(committee.tee_dir, Measurement.explicit(**devnet.DEMO_MEASUREMENT))
    try:
        with KeyClient(urls, G2.from_bytes(bytes.fromhex(committee.mpk)), timeout=3.0) as client:
            chain = client.chain()
            epoch = int(chain.epoch)
            index = ParticipantIndex(node.index)
            if index not in chain.committee.indices:
                return holds, False, epoch
            session = KeyRequestSession(
                chain, bytes.fromhex(app_hex), [("app", 1)], now=int(time.time()), rng=os.urandom
            )
            body = session.attach_quote(quote(session.report_data)).encode()
            answer = client._post(index, body)
            if not isinstance(answer, KeyResponse):
                return holds, False, epoch
            session.receive(index, answer)
            pv = session.purposes[0]
            partial = session._state[pv].partials.get(chain.epoch, {}).get(index)
            if partial is None:
                return holds, False, epoch
            ok = verify_partial(
                partial, pv.key_id(bytes.fromhex(app_hex)), chain.public_shares[index]
            )
            return holds or ok, bool(ok), epoch
    except Exception:
        return holds, False, epoch
