"""Process lifecycle of ``kms node run``: dying with a parent, and a prompt exit.

``die_with_parent`` is what a devnet asks of its node processes (through the
``KMS_DIE_WITH_PARENT`` environment variable, set to the devnet process's
pid): on Linux the kernel sends the node SIGTERM when that parent dies, even
by SIGKILL (``prctl(PR_SET_PDEATHSIG)``), and the node shuts down as on any
SIGTERM. The parent may already have died between the fork and this call, so
the parent pid is checked right after the request: if it is no longer the
expected one, the node exits at once.

``exit_now`` ends the process once a node has shut down cleanly (store
closed, transport closed): it flushes the logs and standard streams and skips
the interpreter's finalisation, which on a loaded machine took seconds
(tearing down modules and their objects) and has nothing left to save.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys

DIE_WITH_PARENT_ENV = "KMS_DIE_WITH_PARENT"
"""Set by ``kms devnet up`` to its own pid: the node should die with that process."""

PR_SET_PDEATHSIG = 1

EXIT_OK = 0
"""A clean stop: SIGTERM or SIGINT, store and transport closed."""
EXIT_CONFIG = 2
"""A start-up, configuration or usage error (one ``error:`` line): restarting cannot fix
it, so a supervisor must not restart on it (contrib/systemd/quorum-kms@.service)."""
EXIT_PARENT_GONE = 3
"""``KMS_DIE_WITH_PARENT`` named a parent that was already gone when the node started."""


class ParentGone(RuntimeError):
    """The process that asked this node to die with it is already gone."""


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies.

    Returns False where that cannot be asked (not Linux, no libc).
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return False
    if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    return True


def die_with_parent(expected_parent: int) -> bool:
    """Die with ``expected_parent`` (SIGTERM when it dies); raise ``ParentGone`` if it is gone.

    Returns whether the kernel will signal this process (False where it cannot).
    """
    armed = set_parent_death_signal(signal.SIGTERM)
    # Checked after arming: if the parent died before, this process was reparented and
    # will never get the signal.
    if os.getppid() != expected_parent:
        raise ParentGone(f"parent {expected_parent} is gone (parent is now {os.getppid()})")
    return armed


def die_with_parent_from_env() -> bool:
    """``die_with_parent`` for the pid in ``KMS_DIE_WITH_PARENT``, if set (else False)."""
    raw = os.environ.get(DIE_WITH_PARENT_ENV)
    if not raw:
        return False
    return die_with_parent(int(raw))


def exit_now(code: int = EXIT_OK) -> None:
    """Flush logs and standard streams, then end the process without finalisation."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
