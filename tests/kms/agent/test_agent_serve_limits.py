"""The agent's server has the node's connection limits: a client that sends a request body
slower than one read per ``read_timeout`` is disconnected, not kept forever.

The server is ``kms.agent.runtime.serve`` in its own process (it installs signal
handlers), on a Unix socket, with ``read_timeout`` set low."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

READ_TIMEOUT = 1.0
SERVER = """
import sys
from pathlib import Path

from kms.agent.runtime import serve


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % len(body)})


def ready():
    print("serving", flush=True)


serve(app, Path(sys.argv[1]), None, on_ready=ready, read_timeout=float(sys.argv[2]))
"""


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    path = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(path), str(READ_TIMEOUT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "serving"
    return proc, path


def _connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    return client


HEAD = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n"


def test_a_slow_body_is_disconnected_within_read_timeout(tmp_path: Path) -> None:
    proc, path = _start(tmp_path)
    try:
        # The control: a whole request is answered.
        with _connect(path) as client:
            client.sendall(HEAD + b"x" * 100)
            client.settimeout(5)
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        # One body byte every 2 s (longer than read_timeout, far below any size limit).
        with _connect(path) as client:
            client.sendall(HEAD + b"x")
            client.settimeout(0.1)
            start = time.monotonic()
            closed_after = None
            while time.monotonic() - start < 8 * READ_TIMEOUT:
                try:
                    data = client.recv(4096)
                except TimeoutError:
                    data = None
                except ConnectionResetError:
                    data = b""
                if data == b"" or (data and not data.startswith(b"HTTP/1.1 200")):
                    closed_after = time.monotonic() - start
                    break
                if int((time.monotonic() - start) * 10) % 20 == 19:
                    try:
                        client.sendall(b"x")
                    except (BrokenPipeError, ConnectionResetError):
                        closed_after = time.monotonic() - start
                        break
            assert closed_after is not None, "the slow client is still connected"
            assert closed_after < READ_TIMEOUT + 1.5
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
