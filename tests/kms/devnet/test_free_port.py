"""``free_port`` keeps ports distinct across processes of one user, not only within one.

Two test runs side by side (or a devnet beside another) each pick loopback ports by
binding port 0; the kernel may hand a port one process picked, but whose node has not
bound it yet, to the other. A claim file per port, held for ``CLAIM_HOLD`` seconds,
stops that.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from kms.app import devnet


def _claim_in_another_process(port: int) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", f"from kms.app.devnet import _claim; print(_claim({port}))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    return out == "True"


@pytest.fixture
def claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "claims"
    monkeypatch.setattr(devnet, "_CLAIMS", d)
    return d


def test_a_port_handed_out_here_is_refused_to_another_process() -> None:
    port = devnet.free_port()
    assert (devnet._CLAIMS / str(port)).exists()
    assert not _claim_in_another_process(port)


def test_many_ports_in_two_processes_never_coincide() -> None:
    # Both draw at the same moment (the kernel's picks then overlap a few times in 200).
    code = (
        "import sys\n"
        "from kms.app.devnet import free_port\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "print(' '.join(str(free_port()) for _ in range(300)))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    got = [set(map(int, p.communicate(timeout=120)[0].split())) for p in procs]
    assert len(got[0]) == len(got[1]) == 300
    assert not got[0] & got[1]


def test_a_stale_claim_is_released(claims: Path) -> None:
    claims.mkdir(mode=0o700)
    fresh, stale = claims / "40001", claims / "40002"
    fresh.touch()
    stale.touch()
    old = time.time() - devnet.CLAIM_HOLD - 1
    os.utime(stale, (old, old))
    assert not devnet._claim(40001)
    assert not devnet._claim(40002)  # released, not taken: the next call may take it
    assert not stale.exists()
    assert devnet._claim(40002)
    assert not devnet._claim(40002)


def test_a_claim_directory_open_to_others_is_not_trusted(claims: Path) -> None:
    claims.mkdir(mode=0o700)
    claims.chmod(0o777)
    (claims / "40003").touch()
    # Anyone could fill it with claims: the process's own set is all that keeps ports apart.
    assert devnet._claim(40003)
    assert not (claims / "40004").exists() and devnet._claim(40004)
    assert not (claims / "40004").exists()


def test_a_full_claim_directory_does_not_hang_free_port(
    claims: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devnet, "_claim", lambda port: False)
    port = devnet.free_port()  # gives up on claims after a bounded number of tries
    assert 0 < port < 65536


def test_the_claim_directory_is_the_users_own_not_the_shared_temp_directory() -> None:
    # A predictable name in a shared, sticky /tmp could be created first by another user.
    own = Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home())
    assert devnet._CLAIMS.is_relative_to(own)
    assert not devnet._CLAIMS.is_relative_to(tempfile.gettempdir())
    devnet.free_port()
    st = devnet._CLAIMS.lstat()
    assert st.st_uid == os.getuid() and not st.st_mode & 0o077


def test_releasing_a_stale_claim_holds_the_lock_that_other_claims_take(
    claims: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between finding a claim stale and removing it, another process must not be able to
    # release it and claim the port afresh (the removal would then delete that fresh
    # claim, and a third process would be handed the port too).
    claims.mkdir(mode=0o700)
    stale = claims / "40005"
    stale.touch()
    old = time.time() - devnet.CLAIM_HOLD - 1
    os.utime(stale, (old, old))
    probe = (
        "import fcntl, os, sys\n"
        f"fd = os.open({str(claims / '.lock')!r}, os.O_RDWR)\n"
        "try:\n"
        "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    print('free')\n"
        "except BlockingIOError:\n"
        "    print('held')\n"
    )
    seen: list[str] = []
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stale:
            out = subprocess.run(
                [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
            )
            seen.append(out.stdout.strip() or out.stderr.strip())
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert not devnet._claim(40005)
    assert seen == ["held"]
