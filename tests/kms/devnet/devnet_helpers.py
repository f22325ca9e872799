"""Helpers for the multi-process devnet tests: spawn, poll, inspect and always stop nodes.

Node processes are started with the same command line as ``kms.app.devnet.spawn``,
but the ``Popen`` objects are kept here, so that every process is reaped (no
zombies, no ``ResourceWarning`` from a dropped ``Popen``) and killed for sure
when a test ends, whatever happened in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio
from service_devnet import ServiceDevnet, agreed_statuses, service_devnet

from kms.api import admin
from kms.app import devnet
from kms.app.config import load
from mpc.dkg.schedule import Schedule

T = TypeVar("T")

POLL = 0.2
LOG_TAIL_LINES = 40


class Devnet:
    """One devnet of node processes on loopback, made with ``kms.app.devnet.create``."""

    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.directory = directory
        self.state = state
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.n = len(state["nodes"])
        self.threshold = int(state["threshold"])
        cfg = load(state["nodes"][0]["config"])
        self.genesis_start = cfg.protocol.genesis_start
        self.delta = cfg.protocol.delta
        self.window_period = cfg.protocol.window_period
        devnet.write_state(directory, state)

    # --- creating -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        nodes: int,
        threshold: int,
        *,
        delta: float = 0.2,
        start_in: float = 4.0,
        window_period: float = 5.0,
        refresh_interval: float = 0.0,
    ) -> Devnet:
        state = devnet.create(
            directory,
            nodes,
            threshold,
            delta=delta,
            start_in=start_in,
            window_period=window_period,
            refresh_interval=refresh_interval,
        )
        return cls(directory, state)

    def add_node(self, index: int) -> dict[str, Any]:
        """A node that is not in the genesis committee (``kms.app.devnet.init_joining_node``).

        Returns its entry (as in ``devnet.json``), which is recorded at once.
        """
        entry = devnet.init_joining_node(self.directory, index)
        self.state["nodes"].append(entry)
        devnet.write_state(self.directory, self.state)
        return entry

    # --- processes --------------------------------------------------------------------------

    @property
    def nodes(self) -> list[dict[str, Any]]:
        return list(self.state["nodes"])

    @property
    def indices(self) -> list[int]:
        return [int(n["index"]) for n in self.state["nodes"]]

    def entry(self, index: int) -> dict[str, Any]:
        return devnet.node_entry(self.state, index)

    def config_path(self, index: int) -> Path:
        return Path(self.entry(index)["config"])

    def log_path(self, index: int) -> Path:
        return self.config_path(index).parent / "node.log"

    def _set_pid(self, index: int, pid: int | None) -> None:
        for n in self.state["nodes"]:
            if int(n["index"]) == index:
                n["pid"] = pid
        devnet.write_state(self.directory, self.state)

    def start(self, *indices: int) -> None:
        """Start ``kms node run`` for each index (all nodes when none is given)."""
        for index in indices or tuple(self.indices):
            old = self.procs.get(index)
            if old is not None and old.poll() is None:
                raise RuntimeError(f"node {index} is already running")
            with open(self.log_path(index), "ab") as log:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "kms.cli",
                        "node",
                        "run",
                        "--config",
                        str(self.config_path(index)),
                    ],
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            self.procs[index] = proc
            self._set_pid(index, proc.pid)

    def kill(self, index: int) -> None:
        """SIGKILL the node's process and reap it."""
        proc = self.procs.get(index)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self._set_pid(index, None)

    def stop(self, index: int, timeout: float = 8.0) -> None:
        """SIGTERM, then SIGKILL if the process does not exit in ``timeout`` seconds."""
        proc = self.procs.get(index)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        self._set_pid(index, None)

    def stop_all(self) -> None:
        running = [i for i, p in self.procs.items() if p.poll() is None]
        for i in running:
            self.procs[i].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for i in running:
            proc = self.procs[i]
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        for i in list(self.procs):
            self._set_pid(i, None)

    def alive(self, index: int) -> bool:
        proc = self.procs.get(index)
        return proc is not None and proc.poll() is None

    # --- observing --------------------------------------------------------------------------

    def url(self, index: int) -> str:
        return str(self.entry(index)["http_url"])

    def status(self, index: int) -> dict[str, Any] | None:
        return devnet.status_of(self.url(index), timeout=2.0)

    def statuses(self, indices: Iterable[int] | None = None) -> dict[int, dict[str, Any] | None]:
        return {i: self.status(i) for i in (indices if indices is not None else self.indices)}

    def metrics(self, index: int) -> str:
        r = devnet.poll_get(self.url(index) + "/metrics", timeout=3.0)
        r.raise_for_status()
        return r.text

    def health(self, index: int) -> int:
        return devnet.poll_get(self.url(index) + "/health", timeout=3.0).status_code

    def schedule(self, attempt: int = 0) -> Schedule:
        """The genesis DKG's phase deadlines, as every node computes them."""
        s = Schedule.default(self.genesis_start, self.n, self.threshold, delta=self.delta)
        for _ in range(attempt):
            s = s.next_attempt()
        return s

    def admin(self, index: int, request: dict[str, Any]) -> dict[str, Any]:
        """One request over the node's admin socket, with its token."""
        cfg = load(self.config_path(index))
        token = cfg.admin_token_file.read_text().strip()
        return trio.run(admin.call, cfg.admin_socket, {**request, "token": token})

    # --- diagnostics ----------------------------------------------------------------------------

    def log_tail(self, index: int, lines: int = LOG_TAIL_LINES) -> str:
        path = self.log_path(index)
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def log_records(self, index: int) -> list[dict[str, Any]]:
        """The node's JSON log lines (other lines, such as tracebacks, are skipped)."""
        out = []
        path = self.log_path(index)
        if not path.exists():
            return out
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def report(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for i in self.indices:
            proc = self.procs.get(i)
            state = "never started" if proc is None else f"exit code {proc.poll()}"
            st = self.status(i) if self.alive(i) else None
            brief = (
                {k: st.get(k) for k in ("epoch", "has_share", "running", "last_refresh")}
                if st
                else None
            )
            parts.append(
                f"----- node {i} ({state}); status {brief}; last {lines} log lines:\n"
                + self.log_tail(i, lines)
            )
        return "\n".join(parts)

    def wait_for(
        self,
        what: str,
        check: Callable[[], T | None],
        timeout: float,
        poll: float = POLL,
    ) -> T:
        """Poll ``check`` until it returns something truthy; fail with the logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = check()
            except (httpx.HTTPError, OSError, ValueError) as exc:
                last = exc
                value = None
            else:
                value = last
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}\n"
                    + self.report()
                )
            time.sleep(poll)

    def wait_until(self, t: float) -> None:
        """Sleep until Unix time ``t``."""
        delay = t - time.time()
        if delay > 0:
            time.sleep(delay)

    # --- common conditions -----------------------------------------------------------------------

    def converged(
        self,
        indices: Iterable[int],
        *,
        epoch: int | None = None,
        min_epoch: int = 0,
        committee: Iterable[int] | None = None,
        share: bool | None = True,
    ) -> dict[int, dict[str, Any]] | None:
        """Statuses of ``indices`` if they agree on the epoch and key and meet the conditions."""
        return agreed_statuses(
            ((i, self.status(i)) for i in indices),
            epoch=epoch,
            min_epoch=min_epoch,
            committee=committee,
            share=share,
        )


def metric_values(text: str, name: str, label: str) -> dict[str, float]:
    """``{label value: value}`` for every ``name{label="..."} value`` line of a metrics text."""
    out: dict[str, float] = {}
    prefix = f'{name}{{{label}="'
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix) :]
        value_label, _, tail = rest.rpartition('"}')
        out[value_label] = float(tail.strip())
    return out


def rejected(text: str) -> dict[str, float]:
    return metric_values(text, "qkms_rejected_inputs_total", "reason")


def misbehaviour(text: str) -> dict[str, float]:
    return metric_values(text, "qkms_misbehaviour_total", "reason")


def stop_all(nets: list[Devnet]) -> None:
    """Stop every process of every devnet; print their logs (pytest shows them on failure)."""
    for net in nets:
        try:
            print(net.report())
        except Exception as exc:
            print(f"(could not build the report: {exc!r})")
        net.stop_all()
    # Belt and braces: anything still alive is killed by process group.
    for net in nets:
        for proc in net.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)


@asynccontextmanager
async def in_process_devnet(
    directory: Path,
    nodes: int,
    threshold: int,
    *,
    delta: float = 0.2,
    start_in: float = 4.0,
    window_period: float = 5.0,
    refresh_interval: float = 0.0,
    pccs_url: str | None = None,
) -> AsyncIterator[ServiceDevnet]:
    """A devnet made by ``kms.app.devnet.create`` whose nodes run in this trio run
    (``service_devnet.ServiceDevnet``, none started yet); the genesis DKG starts
    ``start_in`` seconds of the nodes' clock from now."""
    state = devnet.create(
        directory,
        nodes,
        threshold,
        delta=delta,
        start_in=start_in,
        window_period=window_period,
        refresh_interval=refresh_interval,
        pccs_url=pccs_url,
    )
    devnet.write_state(directory, state)
    genesis = load(state["nodes"][0]["config"]).protocol.genesis_start
    async with service_devnet(directory, state, genesis - start_in) as net:
        yield net


def add_joining_node(net: ServiceDevnet, index: int) -> dict[str, Any]:
    """A node outside the genesis committee (``kms.app.devnet.init_joining_node``), counted in."""
    devnet.write_state(net.directory, net.state)
    entry = devnet.init_joining_node(net.directory, index)
    net.add_entry(entry)
    devnet.write_state(net.directory, net.state)
    return entry


class ClaimingNode(httpx.BaseTransport):
    """The node at ``origin`` as its corrupt operator serves it, over ``inner``: its
    ``/v1/status`` names index ``claim`` (when given) and its ``/v1/keys`` answers
    ``keys`` (when given); everything else is the node's own answer."""

    def __init__(
        self,
        inner: httpx.BaseTransport,
        origin: str,
        claim: int | None = None,
        keys: bytes | None = None,
    ) -> None:
        self.inner, self.origin, self.claim, self.keys = inner, origin, claim, keys

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if origin == self.origin and request.url.path == "/v1/keys" and self.keys is not None:
            request.read()
            return httpx.Response(
                200, content=self.keys, headers={"content-type": "application/msgpack"}
            )
        r = self.inner.handle_request(request)
        if origin == self.origin and request.url.path == "/v1/status" and self.claim:
            r.read()
            doc = json.loads(r.content)
            doc["index"] = self.claim
            return httpx.Response(200, json=doc)
        return r
