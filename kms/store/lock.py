"""One process at a time on a node's store: an exclusive advisory lock beside it.

``kms node run`` holds the lock for its whole life, and maintenance that rewrites
sealed values (``kms node passphrase``) takes it too, so a passphrase change can
never reseal a store that a running (or starting) node still seals under the old
passphrase, and two nodes can never run on one store. The lock is ``flock`` on
``<store>.lock``: the kernel drops it when the holder exits, however it exits.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kms.store.errors import StoreError


class StoreInUse(StoreError):
    """Another process holds the store's lock."""


def lock_path(store: Path) -> Path:
    """``<store>.lock`` beside the store's real file: symbolic links in the path (to
    the file or a directory) are resolved first, so every spelling of one store
    shares one lock."""
    return Path(str(Path(store).resolve()) + ".lock")


@contextmanager
def exclusive(store: Path) -> Iterator[None]:
    """Hold the store's lock for the block; ``StoreInUse`` at once if another process does."""
    path = lock_path(store)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the store's lock file {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreInUse(
                f"the store at {store} is in use by another process (a running node?): "
                "stop it first"
            ) from None
        yield
    finally:
        os.close(fd)
