"""Sealers: authenticated encryption of the secrets a node keeps at rest.

A :class:`Sealer` turns a secret (a share, a dealt polynomial, the identity
seeds) into an opaque blob and back. Every blob is bound to *where* it is
stored by its associated data (the store passes the table, column and row
key), so a blob copied into another row does not open.

Blob format (version 1)::

    b"QKS1" ‖ nonce (12 random bytes) ‖ ChaCha20-Poly1305(key, nonce, plaintext, aad=b"QKS1" ‖ aad)

A random 96-bit nonce per blob is safe for far more blobs than a node ever
writes under one key (the collision bound stays below 2⁻³² up to 2³² blobs).

**Headers.** A sealer's public parameters (the scrypt salt and cost, the salt
that binds a TEE key to one store) live in the store, not in the sealer: a
new store asks :meth:`Sealer.create_header` for fresh ones and keeps them in
its ``meta`` table; every later open hands them back to :meth:`Sealer.open`,
which derives the key once. A header is versioned::

    b"QKSH1" ‖ canonical JSON {"sealer": <name>, ...parameters}

Two sealers ship:

- :class:`PassphraseSealer`: scrypt (n=2¹⁵, r=8, p=1) over a passphrase read
  from a file or an environment variable, never from a prompt;
- :class:`TEESealer`: a 32-byte key handed over by the TEE (dstack's key
  derivation inside a CVM), bound to the store by HKDF with the store's salt.

A sealer object serves one store: opening it a second time with other
parameters raises :class:`~kms.store.errors.SealError`.
"""

from __future__ import annotations

import abc
import json
import os
import stat
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kms.store.errors import SealError

__all__ = [
    "BLOB_MAGIC",
    "HEADER_MAGIC",
    "KEY_SIZE",
    "NONCE_SIZE",
    "PassphraseSealer",
    "Sealer",
    "TEESealer",
]

BLOB_MAGIC = b"QKS1"
"""First bytes of every sealed blob (format version 1)."""
HEADER_MAGIC = b"QKSH1"
"""First bytes of every sealer header (format version 1)."""
NONCE_SIZE = 12
KEY_SIZE = 32
SALT_SIZE = 16
_TAG_SIZE = 16

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
# Bounds on the cost parameters a header may ask for: an edited header must not
# make opening the store take minutes or gigabytes (nor make the KDF trivial).
_SCRYPT_MIN_N = 2**14
_SCRYPT_MAX_MEMORY = 2**30  # 128·n·r bytes

_TEE_INFO = b"quorum-kms/store/seal/v1"


@runtime_checkable
class Sealer(Protocol):
    """Seals secrets at rest; one instance serves one store.

    The store calls :meth:`create_header` once, when it creates the database,
    and :meth:`open` with the stored header every time it opens it (including
    right after creating it). :meth:`seal` and :meth:`unseal` work only after
    :meth:`open`.
    """

    @property
    def name(self) -> str:
        """A stable identifier of the sealing method, recorded in the header."""
        ...

    def create_header(self) -> bytes:
        """Fresh public parameters for a new store (a random salt, the KDF cost)."""
        ...

    def open(self, header: bytes) -> None:
        """Load a store's parameters and derive the key, once.

        Raises :class:`~kms.store.errors.SealError` if the header is not this
        sealer's, is malformed, or differs from the one it was opened with.
        """
        ...

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext``, bound to ``aad``."""
        ...

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """The plaintext of ``blob``; raises ``SealError`` on tamper, wrong key or wrong ``aad``."""
        ...


# --- shared machinery ------------------------------------------------------------------


def _encode_header(fields: Mapping[str, Any]) -> bytes:
    return HEADER_MAGIC + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _decode_header(header: bytes, name: str) -> dict[str, Any]:
    if not isinstance(header, bytes) or not header.startswith(HEADER_MAGIC):
        raise SealError("unknown sealer header format")
    try:
        fields = json.loads(header[len(HEADER_MAGIC) :])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SealError("malformed sealer header") from exc
    if not isinstance(fields, dict):
        raise SealError("malformed sealer header")
    if fields.get("sealer") != name:
        raise SealError(
            f"the store is sealed with {fields.get('sealer')!r}, but a {name!r} sealer was given"
        )
    return fields


def _salt(fields: Mapping[str, Any]) -> bytes:
    raw = fields.get("salt")
    try:
        salt = bytes.fromhex(raw) if isinstance(raw, str) else b""
    except ValueError:
        salt = b""
    if len(salt) != SALT_SIZE:
        raise SealError(f"sealer header: the salt must be {SALT_SIZE} bytes")
    return salt


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    if not isinstance(plaintext, bytes) or not isinstance(aad, bytes):
        raise TypeError("seal() takes bytes")
    nonce = os.urandom(NONCE_SIZE)
    return BLOB_MAGIC + nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, BLOB_MAGIC + aad)


def _unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if not isinstance(blob, bytes) or not isinstance(aad, bytes):
        raise TypeError("unseal() takes bytes")
    if len(blob) < len(BLOB_MAGIC) + NONCE_SIZE + _TAG_SIZE or not blob.startswith(BLOB_MAGIC):
        raise SealError("not a sealed blob of a known format")
    nonce = blob[len(BLOB_MAGIC) : len(BLOB_MAGIC) + NONCE_SIZE]
    body = blob[len(BLOB_MAGIC) + NONCE_SIZE :]
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, body, BLOB_MAGIC + aad)
    except InvalidTag:
        raise SealError(
            "sealed blob does not open: tampered with, moved from another row, or another key"
        ) from None


class _KeyedSealer(abc.ABC):
    """Holds the derived key; subclasses say how a header turns into a key."""

    __slots__ = ("_header", "_key")
    name = "abstract"

    def __init__(self) -> None:
        self._key: bytes | None = None
        self._header: bytes | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    @abc.abstractmethod
    def _derive(self, fields: Mapping[str, Any]) -> bytes:
        """The sealing key for a store whose header holds ``fields``."""

    def open(self, header: bytes) -> None:
        fields = _decode_header(header, self.name)
        if self._header is not None:
            if header != self._header:
                raise SealError("this sealer is already open for another store")
            return
        key = self._derive(fields)
        self._key, self._header = key, header

    def _opened_key(self) -> bytes:
        if self._key is None:
            raise SealError("the sealer is not open: pass it to a NodeStore (or call open())")
        return self._key

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return _seal(self._opened_key(), plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        return _unseal(self._opened_key(), blob, aad)


# --- passphrase --------------------------------------------------------------------------


class PassphraseSealer(_KeyedSealer):
    """Key = scrypt(passphrase, salt, n=2¹⁵, r=8, p=1) (RFC 7914), 32 bytes.

    The salt (16 random bytes) and the cost parameters are the store's header,
    so the same passphrase opens the store later, and a store created with a
    higher cost keeps opening after the default changes. The passphrase is
    dropped once the key is derived.

    Build it from a file (:meth:`from_file`) or an environment variable
    (:meth:`from_env`); nothing here ever prompts.
    """

    __slots__ = ("_passphrase",)
    name = "passphrase-scrypt"

    def __init__(self, passphrase: bytes) -> None:
        super().__init__()
        if not isinstance(passphrase, bytes):
            raise TypeError("the passphrase must be bytes")
        if not passphrase:
            raise SealError("the passphrase is empty")
        self._passphrase: bytes | None = passphrase

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PassphraseSealer:
        """Read the passphrase from ``path``, dropping one trailing newline (``\\n`` or ``\\r\\n``).

        Refuses a file that is not a regular file, that group or other may
        access in any way (mode & 0o077; ``chmod 600`` it, like ssh does for
        private keys), and an empty passphrase.
        """
        name = os.fspath(path)
        try:
            fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SealError(f"cannot read the passphrase file {name}: {exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SealError(f"the passphrase file {name} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise SealError(
                    f"the passphrase file {name} is accessible by group or other "
                    f"(mode {mode:04o}): run `chmod 600 {name}`"
                )
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        if not data:
            raise SealError(f"the passphrase file {name} is empty")
        return cls(data)

    @classmethod
    def from_env(cls, var: str, environ: Mapping[str, str] | None = None) -> PassphraseSealer:
        """Take the passphrase from the environment variable ``var`` (bytes as the OS gave them).

        ``environ`` defaults to ``os.environ``. Refuses an unset or empty variable.
        """
        env = os.environ if environ is None else environ
        value = env.get(var)
        if value is None:
            raise SealError(f"the environment variable {var} (the store passphrase) is not set")
        if not value:
            raise SealError(f"the environment variable {var} (the store passphrase) is empty")
        return cls(os.fsencode(value))

    def create_header(self) -> bytes:
        return _encode_header(
            {
                "sealer": self.name,
                "kdf": "scrypt",
                "n": SCRYPT_N,
                "r": SCRYPT_R,
                "p": SCRYPT_P,
                "salt": os.urandom(SALT_SIZE).hex(),
            }
        )

    def _derive(self, fields: Mapping[str, Any]) -> bytes:
        costs = [fields.get(k) for k in ("n", "r", "p")]
        ints = [v for v in costs if isinstance(v, int) and not isinstance(v, bool)]
        if fields.get("kdf") != "scrypt" or len(ints) != 3:
            raise SealError("sealer header: unknown key derivation")
        n, r, p = ints
        if (
            n < _SCRYPT_MIN_N
            or n & (n - 1)
            or not 1 <= r <= 32
            or not 1 <= p <= 16
            or 128 * n * r > _SCRYPT_MAX_MEMORY
        ):
            raise SealError(f"sealer header: scrypt parameters out of range (n={n}, r={r}, p={p})")
        salt = _salt(fields)
        if self._passphrase is None:  # pragma: no cover - only reachable after a successful open
            raise SealError("the passphrase was already used")
        key = Scrypt(salt=salt, length=KEY_SIZE, n=n, r=r, p=p).derive(self._passphrase)
        self._passphrase = None
        return key


# --- TEE-provided key ----------------------------------------------------------------------


class TEESealer(_KeyedSealer):
    """Seals under a 32-byte key that a TEE hands to the node.

    ``get_key()`` is called once, when the store opens, and must return the
    same 32 bytes every time the same node (the same CVM app identity) runs.
    The sealing key is ``HKDF-SHA256(get_key(), salt=<store salt>,
    info="quorum-kms/store/seal/v1")``, so one TEE key seals different stores
    under different keys. Inside a dstack CVM, pass the guest agent's key
    derivation, which depends on the app's identity and measurement, for
    example (dstack's Python SDK)::

        from dstack_sdk import DstackClient
        sealer = TEESealer(lambda: DstackClient().get_key("quorum-kms/store").decode_key())

    The key never leaves the CVM, and a CVM running other code gets another
    key, so a copied database file opens nowhere else. Tests pass a constant.
    """

    __slots__ = ("_get_key",)
    name = "tee-key"

    def __init__(self, get_key: Callable[[], bytes]) -> None:
        super().__init__()
        if not callable(get_key):
            raise TypeError("get_key must be a callable returning 32 bytes")
        self._get_key = get_key

    def create_header(self) -> bytes:
        return _encode_header(
            {"sealer": self.name, "kdf": "hkdf-sha256", "salt": os.urandom(SALT_SIZE).hex()}
        )

    def _derive(self, fields: Mapping[str, Any]) -> bytes:
        if fields.get("kdf") != "hkdf-sha256":
            raise SealError("sealer header: unknown key derivation")
        salt = _salt(fields)
        root = self._get_key()
        if not isinstance(root, bytes) or len(root) != KEY_SIZE:
            raise SealError(f"the TEE key must be {KEY_SIZE} bytes")
        return HKDF(hashes.SHA256(), KEY_SIZE, salt, _TEE_INFO).derive(root)
