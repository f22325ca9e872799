"""Writing secret material to a file: always a new file of mode 0600, never through a link.

Every place that writes a secret (a node's passphrase and admin token, the
keys ``kms key get --out`` saves, the plaintext ``kms decrypt`` writes, a
devnet owner key) goes through :func:`write_secret`:

1. the bytes go to a fresh temporary file in the destination's directory,
   created with ``O_CREAT|O_EXCL`` (``tempfile.mkstemp``) and mode 0600,
   then flushed and fsynced;
2. the temporary file is renamed over the destination (``os.replace``) or,
   with ``replace=False``, hard-linked to it, which fails if anything (a
   file or a symbolic link) is already there.

A rename replaces the directory entry itself: a symbolic link planted at the
destination is replaced, its target is never opened, and an existing file's
mode and owner do not carry over. A reader never sees a partly written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

SECRET_MODE = 0o600


def write_secret(path: str | os.PathLike[str], data: bytes | str, *, replace: bool = True) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` as a new file of mode 0600.

    With ``replace=False`` the call raises ``FileExistsError`` if ``path``
    exists in any form, a dangling symbolic link included. Any failure
    leaves no temporary file behind and the destination untouched.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, SECRET_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target, follow_symlinks=False)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Make the new directory entry durable (best effort where directories cannot be opened)."""
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
