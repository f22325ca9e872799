"""Run a Markdown page's shell blocks, literally, as one bash script.

The convention (stated at the top of every page run this way): a fenced block
whose info string is ``sh`` is run; every other block (``console``, ``toml``,
``json``, ``text``, ...) is an illustration and is never run.

All runnable blocks of a page are concatenated, in page order, into ONE bash
script, so shell variables, the working directory and background ``&`` jobs
carry over from one block to the next. The script runs with
``set -Eeuo pipefail``; before each block it records which block runs (the
page and the line of the block's opening fence) and echoes a marker, so a
failure names the block. It runs in a fresh directory, with the repository's
``.venv/bin`` first on ``PATH``, in a session (and process group) of its own,
under a deadline. When it ends, passed, failed or out of time, every process
it started is ended: its process group is sent SIGTERM, then SIGKILL, and so
is any process that left the group (``setsid``) but carries the run's marker
in its environment.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNNABLE = "sh"
MARKER_ENV = "QKMS_GUIDE_RUN"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
# How long the group gets between SIGTERM and SIGKILL at the end.
TERM_GRACE = 5.0


@dataclass(frozen=True)
class Block:
    """One fenced block: its info string's first word, the line of its opening fence
    (1-based) and its text, with the fence's indentation removed."""

    lang: str
    line: int
    code: str


@dataclass(frozen=True)
class Result:
    returncode: int | None
    timed_out: bool
    output: str
    failed_block: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def extract_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, in order (indented ones in lists too)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        info = m["info"].strip()
        start = i + 1
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = lines[i].strip()
            if close.startswith(fence[0] * len(fence)) and set(close) == {fence[0]}:
                break
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            i += 1
        else:
            raise ValueError(f"line {start}: fenced block never closed")
        blocks.append(Block(lang=info.split()[0] if info else "", line=start, code="\n".join(body)))
        i += 1
    return blocks


def runnable_blocks(text: str) -> list[Block]:
    return [b for b in extract_blocks(text) if b.lang == RUNNABLE]


def build_script(blocks: list[Block], source: str) -> str:
    """One bash script of the blocks, each announced by a marker naming source:line."""
    parts = [
        "#!/usr/bin/env bash",
        "set -Eeuo pipefail",
        "__guide_block='(before the first block)'",
        # On any failure, name the block (the shell's own line number is the script's).
        "trap '__rc=$?; if [ $__rc -ne 0 ]; then "
        'echo "guide-runner: FAILED in block $__guide_block (exit $__rc)" >&2; fi\' EXIT',
    ]
    for n, block in enumerate(blocks, 1):
        where = f"{source}:{block.line}"
        parts.append("")
        parts.append(f"__guide_block='{n} at {where}'")
        parts.append(f'echo "==> guide block {n} at {where} (at $SECONDS s)" >&2')
        parts.append(block.code)
    parts.append("")
    parts.append("echo '==> guide: all blocks ran' >&2")
    return "\n".join(parts) + "\n"


def run_script(
    script: str,
    *,
    workdir: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> Result:
    """Run ``script`` with bash in ``workdir`` under a deadline; end all it started."""
    marker = uuid.uuid4().hex
    full_env = dict(os.environ if env is None else env)
    full_env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{full_env.get('PATH', '')}"
    full_env[MARKER_ENV] = marker
    full_env.pop("KMS_DIE_WITH_PARENT", None)
    script_file = workdir / "guide-script.sh"
    script_file.write_text(script)
    log_file = workdir / "guide-output.log"
    started = time.monotonic()
    timed_out = False
    # Output goes to a file, not a pipe: background jobs that outlive the script keep
    # the pipe's write end open, and reading it to the end would wait for them.
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", str(script_file)],
            cwd=workdir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        previous = _terminate_as_interrupt()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            end_all(proc, marker)
            _restore(previous)
    seconds = time.monotonic() - started
    output = log_file.read_text(errors="replace")
    if timed_out:
        output += f"\nguide-runner: deadline of {timeout:.0f} s passed; every process ended\n"
    return Result(
        returncode=None if timed_out else proc.returncode,
        timed_out=timed_out,
        output=output,
        failed_block=None if proc.returncode == 0 and not timed_out else last_block(output),
        seconds=seconds,
    )


class Terminated(Exception):
    """The process running the page got SIGTERM (a CI timeout): end the run first."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


def _terminate_as_interrupt() -> object:
    """SIGTERM raises, so that the ``finally`` ending the run's processes runs (the
    default action would exit at once and leave the nodes running)."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave the default
        return None


def _restore(previous: object) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)  # type: ignore[arg-type]


def last_block(output: str) -> str | None:
    """The block that was running last: the one a failure or a timeout happened in."""
    found = re.findall(r"^==> guide block (.+?)(?: \(at \d+ s\))?$", output, flags=re.MULTILINE)
    return found[-1] if found else None


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries this run's marker (those that left the group)."""
    pids = []
    needle = f"{MARKER_ENV}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def end_all(proc: subprocess.Popen[bytes], marker: str) -> None:
    """SIGTERM the run's process group and marked processes, then SIGKILL what is left."""
    signal_all(proc.pid, marker, signal.SIGTERM)
    deadline = time.monotonic() + TERM_GRACE
    while time.monotonic() < deadline:
        proc.poll()  # reap the script itself, or its zombie keeps the group alive
        if not group_alive(proc.pid) and not marked_pids(marker):
            break
        time.sleep(0.05)
    else:
        signal_all(proc.pid, marker, signal.SIGKILL)
    proc.wait()


def signal_all(pgid: int, marker: str, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    for pid in marked_pids(marker):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_page(page: Path, *, timeout: float, workdir: Path | None = None) -> Result:
    """Run a page's ``sh`` blocks in a fresh directory (a new temporary one by default)."""
    text = page.read_text()
    try:
        source = str(page.relative_to(ROOT))
    except ValueError:
        source = page.name
    script = build_script(runnable_blocks(text), source)
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="qkms-guide-"))
    return run_script(script, workdir=workdir, timeout=timeout)


__all__ = [
    "MARKER_ENV",
    "RUNNABLE",
    "Block",
    "Result",
    "build_script",
    "extract_blocks",
    "run_page",
    "run_script",
    "runnable_blocks",
]
