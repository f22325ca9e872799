"""The runner of the pages' shell blocks (``guide_runner``): what runs, how a failure is
named, and that nothing it started outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from guide_runner import ROOT, build_script, extract_blocks, run_page, runnable_blocks

PAGE = """\
# A page

Some text.

```sh
GREETING=hello
cd sub 2>/dev/null || mkdir sub
```

```console
$ false   # an illustration: never run
```

1. A step in a list:

   ```sh
   echo "$GREETING from a list" > said.txt
   ```

```toml
[x]
y = 1
```
"""


def write_page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_only_sh_blocks_run_and_indented_ones_too() -> None:
    blocks = extract_blocks(PAGE)
    assert [(b.lang, b.line) for b in blocks] == [
        ("sh", 5),
        ("console", 10),
        ("sh", 16),
        ("toml", 20),
    ]
    run = runnable_blocks(PAGE)
    assert [b.line for b in run] == [5, 16]
    assert run[1].code == 'echo "$GREETING from a list" > said.txt'


def test_blocks_share_one_shell(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = run_page(write_page(tmp_path, PAGE), timeout=30, workdir=work)
    assert result.ok, result.output
    assert (work / "said.txt").read_text() == "hello from a list\n"
    assert result.failed_block is None


def test_a_failing_block_is_named_with_its_line(tmp_path: Path) -> None:
    page = write_page(
        tmp_path,
        "```sh\ntrue\n```\n\ntext\n\n```sh\necho before\nfalse\necho never\n```\n\n"
        "```sh\ntouch not-reached\n```\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    result = run_page(page, timeout=30, workdir=work)
    assert not result.ok
    assert result.returncode == 1
    assert result.failed_block == "2 at page.md:7"
    assert "FAILED in block 2 at page.md:7" in result.output
    assert "never" not in result.output
    assert not (work / "not-reached").exists()


def test_a_failure_inside_a_pipeline_fails(tmp_path: Path) -> None:
    page = write_page(tmp_path, "```sh\nfalse | cat\n```\n```sh\ntouch reached\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    result = run_page(page, timeout=30, workdir=work)
    assert result.failed_block == "1 at page.md:1"
    assert not (work / "reached").exists()


def test_background_jobs_are_ended_at_the_end(tmp_path: Path) -> None:
    # One job in the script's group, one that left it with setsid: both must end.
    page = write_page(
        tmp_path,
        "```sh\nsleep 300 &\necho $! > job.pid\nsetsid sleep 301 &\necho $! > escaped.pid\n```\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    result = run_page(page, timeout=30, workdir=work)
    assert result.ok, result.output
    job = int((work / "job.pid").read_text())
    assert wait_gone(job), "a background job outlived the run"
    escaped = int((work / "escaped.pid").read_text())
    assert wait_gone(escaped), "a process that left the group outlived the run"


def test_a_hang_fails_at_the_deadline_and_ends_everything(tmp_path: Path) -> None:
    page = write_page(
        tmp_path, "```sh\nsleep 300 &\necho $! > job.pid\n```\n\n```sh\nsleep 300\n```\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    started = time.monotonic()
    result = run_page(page, timeout=2, workdir=work)
    assert time.monotonic() - started < 20
    assert result.timed_out and not result.ok
    assert result.failed_block == "2 at page.md:6"
    assert "deadline of 2 s passed" in result.output
    assert wait_gone(int((work / "job.pid").read_text()))


def test_the_script_announces_every_block() -> None:
    blocks = runnable_blocks(PAGE)
    script = build_script(blocks, "docs/x.md")
    assert script.startswith("#!/usr/bin/env bash\nset -Eeuo pipefail\n")
    assert '"==> guide block 1 at docs/x.md:5 (at $SECONDS s)"' in script
    assert '"==> guide block 2 at docs/x.md:16 (at $SECONDS s)"' in script


def test_a_terminated_runner_ends_the_run_first(tmp_path: Path) -> None:
    # The process running the page gets SIGTERM (a CI job's timeout): the page's
    # background jobs must not outlive it.
    page = write_page(tmp_path, "```sh\nsleep 300 &\necho $! > job.pid\nsleep 300\n```\n")
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "from guide_runner import run_page; "
        "run_page(Path(sys.argv[2]), timeout=120, workdir=Path(sys.argv[3]))"
    )
    runner = subprocess.Popen(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(page), str(work)],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while not (work / "job.pid").exists() or not (work / "job.pid").read_text():
            assert time.monotonic() < deadline, "the page never started"
            time.sleep(0.05)
        job = int((work / "job.pid").read_text())
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
    finally:
        runner.kill()
        runner.wait()
    assert runner.returncode != 0
    assert wait_gone(job), "a background job outlived the terminated runner"
