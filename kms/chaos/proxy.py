"""The fault lab's link proxy: one asyncio process that relays every TCP link between hosts.

Run as ``python -m kms.chaos.proxy --control SOCKET`` in the lab's parent network namespace
(``kms.chaos.netlab`` starts it). Listeners are added at run time through the control socket,
a Unix socket speaking JSON lines, one request and one reply per line:

* ``{"op": "listen", "listen_ip", "listen_port", "upstream_ip", "upstream_port", "bind_ip",
  "link": "src>dst"}`` → ``{"ok": true, "port": P}`` (``listen_port`` 0 picks a free port);
* ``{"op": "set_link", "link", "delay_ms", "jitter_ms", "stall"}`` → ``{"ok": true}``;
* ``{"op": "reset", "link"}`` → ``{"ok": true, "reset": COUNT}``: the link's live connections are
  closed with a TCP RST (``SO_LINGER`` 0) on both sides;
* ``{"op": "stats"}`` → ``{"ok": true, "links": {LINK: {...counters}}}``;
* ``{"op": "ping"}`` → ``{"ok": true}``.

A link ``src>dst`` is the set of TCP connections that host ``src`` opens to host ``dst``; its
settings apply to both byte directions of those connections. Each direction is a FIFO of chunks
with release times: a chunk read at ``t`` is released at ``t + delay ± jitter``, never before the
chunk ahead of it, so jitter never reorders bytes. A stalled link holds every chunk (both
directions) until the stall is lifted. Each direction buffers at most ``BUFFER_CAP`` bytes; when
it is full the proxy stops reading that side (TCP backpressure). Nothing is logged per byte: the
proxy counts bytes and connections per link.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

BUFFER_CAP = 2 * 1024 * 1024  # per direction; a connection holds at most 4 MiB
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0


@dataclass
class LinkState:
    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    stall: bool = False
    bytes_up: int = 0  # from the connecting host to the listening host
    bytes_down: int = 0
    connections_total: int = 0
    connections_failed: int = 0
    resets: int = 0
    live: set[Relay] = field(default_factory=set)
    unstalled: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.unstalled.set()

    def release_time(self, rng: random.Random) -> float:
        delay = self.delay_ms
        if self.jitter_ms > 0:
            delay += rng.uniform(-self.jitter_ms, self.jitter_ms)
        return time.monotonic() + max(0.0, delay) / 1000.0

    def stats(self) -> dict[str, Any]:
        return {
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "stall": self.stall,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "connections_total": self.connections_total,
            "connections_live": len(self.live),
            "connections_failed": self.connections_failed,
            "resets": self.resets,
        }


class Pipe:
    """One direction of a relayed connection: read side → FIFO with release times → write side."""

    def __init__(
        self,
        link: LinkState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rng: random.Random,
        *,
        up: bool,
    ) -> None:
        self.link = link
        self.reader = reader
        self.writer = writer
        self.rng = rng
        self.up = up
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.buffered = 0
        self.has_data = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()
        self.last_release = 0.0

    async def read_loop(self) -> None:
        while True:
            await self.has_room.wait()
            data = await self.reader.read(CHUNK)
            release = max(self.link.release_time(self.rng), self.last_release)
            self.last_release = release
            if not data:
                self.queue.append((release, None))
                self.has_data.set()
                return
            if self.up:
                self.link.bytes_up += len(data)
            else:
                self.link.bytes_down += len(data)
            self.queue.append((release, data))
            self.buffered += len(data)
            if self.buffered >= BUFFER_CAP:
                self.has_room.clear()
            self.has_data.set()

    async def write_loop(self) -> None:
        while True:
            while not self.queue:
                self.has_data.clear()
                await self.has_data.wait()
            release, data = self.queue[0]
            wait = release - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.link.unstalled.wait()
            self.queue.popleft()
            if data is None:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                return
            self.buffered -= len(data)
            if self.buffered < BUFFER_CAP:
                self.has_room.set()
            self.writer.write(data)
            await self.writer.drain()


def _abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Relay:
    """One proxied connection: the accepted (downstream) side and the upstream side."""

    def __init__(
        self,
        link: LinkState,
        down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        rng: random.Random,
    ) -> None:
        self.link = link
        self.task: asyncio.Task[Any] | None = None
        self.down_writer = down[1]
        self.up_writer = up[1]
        self.pipes = (
            Pipe(link, down[0], up[1], rng, up=True),
            Pipe(link, up[0], down[1], rng, up=False),
        )

    async def run(self) -> None:
        self.task = asyncio.current_task()
        try:
            async with asyncio.TaskGroup() as tg:
                for pipe in self.pipes:
                    tg.create_task(pipe.read_loop())
                    tg.create_task(pipe.write_loop())
        except BaseException:  # a failed side, or a reset: the whole connection ends
            self.abort()
        else:
            for writer in (self.down_writer, self.up_writer):
                writer.close()

    def abort(self) -> None:
        for writer in (self.down_writer, self.up_writer):
            _abort_with_rst(writer)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class Proxy:
    def __init__(self, seed: int | None = None) -> None:
        self.links: dict[str, LinkState] = {}
        self.servers: list[asyncio.Server] = []
        self.rng = random.Random(seed)  # noqa: S311 - jitter, not security
        self.tasks: set[asyncio.Task[None]] = set()

    def link(self, name: str) -> LinkState:
        state = self.links.get(name)
        if state is None:
            state = self.links[name] = LinkState(name)
        return state

    async def listen(self, req: dict[str, Any]) -> dict[str, Any]:
        link = self.link(str(req["link"]))
        upstream = (str(req["upstream_ip"]), int(req["upstream_port"]))
        bind_ip = str(req["bind_ip"])

        async def on_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            link.connections_total += 1
            try:
                up = await asyncio.wait_for(
                    asyncio.open_connection(*upstream, local_addr=(bind_ip, 0)), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                link.connections_failed += 1
                _abort_with_rst(writer)
                return
            relay = Relay(link, (reader, writer), up, self.rng)
            link.live.add(relay)
            try:
                await relay.run()
            finally:
                link.live.discard(relay)

        server = await asyncio.start_server(
            on_accept, str(req["listen_ip"]), int(req.get("listen_port", 0)), reuse_address=True
        )
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return {"ok": True, "port": port}

    def set_link(self, req: dict[str, Any]) -> dict[str, Any]:
        link = self.link(str(req["link"]))
        link.delay_ms = max(0.0, float(req.get("delay_ms", 0)))
        link.jitter_ms = max(0.0, float(req.get("jitter_ms", 0)))
        link.stall = bool(req.get("stall", False))
        if link.stall:
            link.unstalled.clear()
        else:
            link.unstalled.set()
        return {"ok": True}

    def reset(self, req: dict[str, Any]) -> dict[str, Any]:
        link = self.link(str(req["link"]))
        relays = list(link.live)
        for relay in relays:
            relay.abort()
        link.resets += len(relays)
        return {"ok": True, "reset": len(relays)}

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "listen":
            return await self.listen(req)
        if op == "set_link":
            return self.set_link(req)
        if op == "reset":
            return self.reset(req)
        if op == "stats":
            return {"ok": True, "links": {n: s.stats() for n, s in sorted(self.links.items())}}
        if op == "ping":
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}

    async def on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("a request is a JSON object")
                    reply = await self.handle(req)
                except (ValueError, KeyError, TypeError, OSError) as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def serve(control: str) -> None:
    proxy = Proxy()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control)
    tmp = control + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    server = await asyncio.start_unix_server(proxy.on_control, tmp)
    os.chmod(tmp, 0o600)
    os.rename(tmp, control)  # the control path appears only once it accepts
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kms.chaos.proxy")
    parser.add_argument("--control", required=True, help="the control Unix socket's path")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.control))
    return 0


if __name__ == "__main__":
    sys.exit(main())
