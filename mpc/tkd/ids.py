"""The derivation id: an injective, versioned encoding of ``(app_id, purpose, version)``.

Version 1 layout (all lengths big-endian)::

    b"QKMS-ID" ‖ 0x01 ‖ u8 len(app_id) ‖ app_id ‖ u8 len(purpose) ‖ purpose ‖ u32 version

``app_id`` is 1–64 raw bytes, ``purpose`` 1–64 bytes of ``[a-z0-9._-]``,
``version`` in ``[0, 2³²)``. Every field is length-prefixed, so no two
different triples share an encoding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ID_MAGIC = b"QKMS-ID"
ID_VERSION = 1
MAX_APP_ID_LEN = 64
MAX_PURPOSE_LEN = 64
_PURPOSE_RE = re.compile(rb"[a-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class KeyId:
    """What a key is derived for: an app, a purpose within it, and a key version."""

    app_id: bytes
    purpose: str = "app"
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.app_id, bytes) or not 1 <= len(self.app_id) <= MAX_APP_ID_LEN:
            raise ValueError(f"app_id must be 1..{MAX_APP_ID_LEN} bytes")
        if not isinstance(self.purpose, str):
            raise ValueError("purpose must be a string")
        p = self.purpose.encode("utf-8")
        if _PURPOSE_RE.fullmatch(p) is None:
            raise ValueError("purpose must be 1..64 characters of [a-z0-9._-]")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise ValueError("version must be an int")
        if not 0 <= self.version < 2**32:
            raise ValueError("version must be in [0, 2**32)")

    def encode(self) -> bytes:
        p = self.purpose.encode("ascii")
        return b"".join(
            (
                ID_MAGIC,
                bytes([ID_VERSION, len(self.app_id)]),
                self.app_id,
                bytes([len(p)]),
                p,
                self.version.to_bytes(4, "big"),
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> KeyId:
        from mpc.errors import InvalidEncoding

        try:
            if not data.startswith(ID_MAGIC) or data[len(ID_MAGIC)] != ID_VERSION:
                raise InvalidEncoding("not a version-1 key id")
            pos = len(ID_MAGIC) + 1
            n = data[pos]
            app_id = data[pos + 1 : pos + 1 + n]
            pos += 1 + n
            m = data[pos]
            purpose = data[pos + 1 : pos + 1 + m]
            pos += 1 + m
            version = int.from_bytes(data[pos : pos + 4], "big")
            if len(app_id) != n or len(purpose) != m or len(data) != pos + 4:
                raise InvalidEncoding("key id has the wrong length")
            return cls(app_id, purpose.decode("ascii"), version)
        except (IndexError, UnicodeDecodeError, ValueError) as exc:
            if isinstance(exc, InvalidEncoding):
                raise
            raise InvalidEncoding(f"malformed key id: {exc}") from exc


def encode_id(app_id: bytes, purpose: str = "app", version: int = 1) -> bytes:
    """Shorthand for ``KeyId(app_id, purpose, version).encode()``."""
    return KeyId(app_id, purpose, version).encode()
