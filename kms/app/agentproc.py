"""``kms agent run`` as a child process, and scripts run with the unmodified dstack SDK
against it (its own venv, ``.venv-dstack-sdk``, made by ``make setup``): for ``make demo``,
the bench and the slow tests."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The source tree (``make setup`` installs it in place)."""
SDK_PYTHON = ROOT / ".venv-dstack-sdk" / "bin" / "python"
"""The dstack SDK's interpreter (``dstack-sdk==0.5.4``, pinned, unmodified)."""
WALLET_SCRIPT = ROOT / "contrib" / "dstack" / "wallet.py"
"""The demo's dstack app: its ``wallet/main`` key's Ethereum address, through the SDK."""


class AgentProcessError(RuntimeError):
    """The agent or the SDK script did not do what was asked (the message says why)."""


def sdk_python() -> Path:
    """The SDK's interpreter; ``AgentProcessError`` naming the fix when it is missing."""
    if not SDK_PYTHON.exists():
        raise AgentProcessError(
            f"{SDK_PYTHON} is missing: run `make setup` (it creates the dstack SDK's venv, "
            "dstack-sdk==0.5.4, next to .venv)"
        )
    return SDK_PYTHON


def answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


class AgentProcess:
    """One ``kms agent run ARGS`` process serving on ``sock``."""

    def __init__(self, args: list[str], sock: Path) -> None:
        self.sock = sock
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "kms.cli", "agent", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        self.early_socket = False
        """Whether the socket was seen at its path while nothing answered on it."""
        self.output = ""
        """What the agent wrote after its first line, once stopped (stdout, then stderr)."""

    @classmethod
    def devnet(
        cls, directory: Path, sock: Path, *extra: str, app: str = "dstack-demo"
    ) -> AgentProcess:
        """The agent of a devnet's dstack app (``kms agent run --devnet``)."""
        args = ["--devnet", str(directory), "--app", app, "--socket", str(sock), *extra]
        return cls(args, sock)

    def wait_serving(self, timeout: float = 60.0) -> str:
        """The agent's first output line (``serving on PATH``), watching meanwhile that
        the socket never exists without answering. ``AgentProcessError`` with the agent's
        stderr when it exits first or takes longer than ``timeout``."""
        out = self.proc.stdout
        if out is None:
            raise AgentProcessError("no output pipe")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sock.exists() and not answers(self.sock):
                self.early_socket = True
            ready, _, _ = select.select([out], [], [], 0.05)
            if ready:
                line = out.readline().decode()
                if line:
                    return line.rstrip("\n")
            if self.proc.poll() is not None:
                code = self.stop()
                raise AgentProcessError(f"the agent exited {code}: {self.output.strip()}")
        self.stop()
        raise AgentProcessError(f"the agent did not serve within {timeout:.0f} s")

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the agent to exit by itself; its status (``output`` holds what it
        wrote). ``subprocess.TimeoutExpired`` if it does not."""
        self.proc.wait(timeout)
        return self.stop()

    def stop(self) -> int:
        """SIGTERM, wait (SIGKILL after 15 s); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None and not pipe.closed:
                self.output += pipe.read().decode(errors="replace")
                pipe.close()
        return int(self.proc.returncode)


def run_sdk(script: Path, endpoint: Path | str, *args: str, timeout: float = 60.0) -> str:
    """Run ``script`` with the SDK's interpreter against the agent at ``endpoint`` (its
    socket, or ``http://127.0.0.1:PORT``; ``DSTACK_SIMULATOR_ENDPOINT``); its stdout.
    ``AgentProcessError`` when it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["DSTACK_SIMULATOR_ENDPOINT"] = str(endpoint)
    r = subprocess.run(  # noqa: S603 - the SDK venv's interpreter, our script
        [str(sdk_python()), str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    if r.returncode != 0:
        raise AgentProcessError(f"{script.name} failed: {(r.stdout + r.stderr)[-2000:]}")
    return r.stdout


def wallet_address(directory: Path, sock: Path) -> str:
    """Start the devnet's dstack agent, run the wallet script with the SDK, stop the agent:
    the ``wallet/main`` key's Ethereum address (``0x…``)."""
    agent = AgentProcess.devnet(directory, sock)
    try:
        agent.wait_serving()
        out = run_sdk(WALLET_SCRIPT, sock)
    finally:
        agent.stop()
    words = out.split()
    if len(words) != 2 or words[0] != "address" or not words[1].startswith("0x"):
        raise AgentProcessError(f"the wallet script printed {out!r}")
    return words[1]
