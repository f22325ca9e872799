"""``NodeStore``: one node's durable state in one SQLite file.

What a node keeps, and why it must survive a crash (DESIGN.md, "Storage and
failures", "Restarts"):

=================  ===========================================================
table              holds
=================  ===========================================================
``meta``           store parameters (schema version, sealer header, sealed
                   check value, sealed audit head) and free ``get_meta`` /
                   ``set_meta`` entries for later features (policies, replay
                   cache watermarks)
``identity``       the node's Ed25519 identity seed and X25519 DKG seed (sealed)
``records``        protocol records of a run (DKG, reshare, membership): every
                   message the node signed, stored before it is sent, and the
                   secrets a run must not lose (the dealt polynomial, the new
                   share), sealed; keyed by ``(run, key)``
``chain``          the certificate chain ``E₀ ← M₀ ← E₁ ← M₁ …`` in order
``epochs``         per epoch this node switched to: public polynomial, committee
``shares``         this node's share per epoch (sealed); the current epoch's is
                   *current*, older ones are *retained* until deleted
``current_epoch``  which epoch the node serves
``audit``          the hash-chained audit log of key releases
=================  ===========================================================

**Durability.** ``journal_mode=WAL`` and ``synchronous=FULL``: a method that
returns has committed and fsynced, so the node may send the messages of the
step right after :meth:`NodeStore.put_records`. Every method runs in one
explicit transaction (``BEGIN IMMEDIATE`` for writes), so a process killed at
any point leaves either all or none of a call's effects.

**Sealing.** Secrets are sealed by the :class:`~kms.store.sealer.Sealer` with
associated data ``(store id, table, column, row key)``: a blob copied into
another row, or into another store, does not open. A sealed check value in
``meta`` makes a wrong passphrase fail when the store opens, with a clear
message, instead of at the first secret read.

**Deletion.** A retained share and the records of a finished run are
overwritten, deleted with ``secure_delete`` on, and the write-ahead log is
truncated, so the sealed bytes leave the SQLite files (what the file system
or the disk keeps of freed blocks is beyond SQLite's reach). No release batch
starts between a deletion's commit and its truncation. If the truncation
cannot finish (a full disk, a reader in another process holding an old
snapshot), it is tried again after each later write transaction, release
batches included, until it does. Operators back
up identity and configuration, never this file: a restored share would undo
a refresh.

**Group commit.** :meth:`NodeStore.record_releases` commits the bookkeeping of
several key releases (nonces, audit records) in one transaction, so in one
fsync of the WAL: each release's entries in the order given, the audit chain
extended in that order. It runs on a connection of its own (the *release
writer*, opened on first use), so that ``kms.node.commit`` can run it in a
worker thread while the node's event loop goes on reading through the main
connection; SQLite serialises the two connections' write transactions
(``BEGIN IMMEDIATE``). A batch that fails (a full disk) writes nothing.

The API is synchronous and never starts threads; the trio node service calls
it directly (each call is a short SQLite transaction). A store object is used
from the thread that opened it, except :meth:`NodeStore.record_releases`,
which any one thread at a time may call (calls are serialised by a lock).
"""

from __future__ import annotations

import hmac
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from kms.store.audit import ZERO_HASH, AuditRecord, canonical_record, chain_hash
from kms.store.errors import (
    AuditChainBroken,
    SealError,
    StorageFull,
    StoreError,
    is_storage_full,
)
from kms.store.sealer import Sealer

__all__ = [
    "APPLICATION_ID",
    "LINK_KINDS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AuditEntry",
    "EpochRecord",
    "NodeStore",
    "RecordLike",
    "StoredApp",
]

SCHEMA_VERSION = 2
"""The schema this code writes; stored in ``meta`` as ``schema_version``.

Version 2 added the admitted apps (``apps``) and every owner rotation ever
seen for them (``app_rotations``)."""

APPLICATION_ID = 0x514B4D53
"""``PRAGMA application_id`` of a store ("QKMS"): another SQLite file is refused."""

Migration = Callable[[sqlite3.Connection], None]

_APPS_SCHEMA = (
    # One row per admitted app: the highest policy version ever accepted (the
    # floor), the newest accepted bundle (expired or not), and whether the app is
    # frozen by a rotation fork. Rows are never deleted: an app's owner chain and
    # floor outlive every policy's expiry.
    """CREATE TABLE apps (
        app_id BLOB PRIMARY KEY,
        version_floor INTEGER NOT NULL CHECK (version_floor >= 0),
        bundle BLOB NOT NULL,
        frozen INTEGER NOT NULL DEFAULT 0 CHECK (frozen IN (0, 1)),
        admitted_by TEXT NOT NULL
    ) WITHOUT ROWID""",
    # Every owner rotation record ever seen for an admitted app, forks included
    # (two records with one sequence number).
    """CREATE TABLE app_rotations (
        app_id BLOB NOT NULL REFERENCES apps (app_id),
        sequence INTEGER NOT NULL CHECK (sequence >= 1),
        record BLOB NOT NULL,
        PRIMARY KEY (app_id, sequence, record)
    ) WITHOUT ROWID""",
    """CREATE TRIGGER apps_never_deleted BEFORE DELETE ON apps
       BEGIN SELECT RAISE(ABORT, 'admitted apps are never deleted'); END""",
    """CREATE TRIGGER app_rotations_append_only BEFORE DELETE ON app_rotations
       BEGIN SELECT RAISE(ABORT, 'owner rotations are never deleted'); END""",
)


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Schema 2: the apps tables (empty; a node re-reads its policies directory)."""
    for statement in _APPS_SCHEMA:
        db.execute(statement)


MIGRATIONS: dict[int, Migration] = {1: _migrate_1_to_2}
"""The migration hook: ``MIGRATIONS[v]`` upgrades a store from schema ``v`` to ``v + 1``.

Each step runs inside the write transaction that also records the new
version, so a crash mid-migration leaves the store at the old version. An
opened store older than :data:`SCHEMA_VERSION` is migrated step by step; one
newer than this code is refused.
"""

LINK_KINDS = ("epoch", "membership")
"""Kinds of chain links: epoch certificates and membership certificates."""

SEED_SIZE = 32
_BUSY_TIMEOUT_MS = 5000
MAX_RUN_SIZE = 1024
MAX_RECORD_KEY_LENGTH = 256

_AAD_DOMAIN = b"quorum-kms/store/v1"
_CHECK_PLAINTEXT = b"quorum-kms store sealing check v1"

# meta entries the store owns; set_meta refuses them.
_META_SCHEMA_VERSION = "schema_version"
_META_STORE_ID = "store.id"
_META_SEALER = "store.sealer"
_META_CHECK = "store.check"
_META_AUDIT_HEAD = "store.audit_head"
_RESERVED_PREFIX = "store."

_CHAIN_DELETE_TRIGGER = """CREATE TRIGGER chain_append_only_delete BEFORE DELETE ON chain
       BEGIN SELECT RAISE(ABORT, 'the chain is append-only'); END"""

_SCHEMA = (
    """CREATE TABLE meta (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE identity (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        identity_seed BLOB NOT NULL,
        dkg_seed BLOB NOT NULL
    )""",
    """CREATE TABLE records (
        run BLOB NOT NULL,
        key TEXT NOT NULL,
        secret INTEGER NOT NULL CHECK (secret IN (0, 1)),
        data BLOB NOT NULL,
        PRIMARY KEY (run, key)
    ) WITHOUT ROWID""",
    """CREATE TABLE chain (
        position INTEGER PRIMARY KEY CHECK (position >= 0),
        kind TEXT NOT NULL CHECK (kind IN ('epoch', 'membership')),
        epoch INTEGER NOT NULL CHECK (epoch >= 0),
        data BLOB NOT NULL,
        UNIQUE (kind, epoch)
    )""",
    """CREATE TABLE epochs (
        epoch INTEGER PRIMARY KEY,
        link_kind TEXT NOT NULL DEFAULT 'epoch' CHECK (link_kind = 'epoch'),
        public_polynomial BLOB NOT NULL,
        committee BLOB NOT NULL,
        FOREIGN KEY (link_kind, epoch) REFERENCES chain (kind, epoch)
    )""",
    """CREATE TABLE shares (
        epoch INTEGER PRIMARY KEY REFERENCES epochs (epoch),
        sealed BLOB NOT NULL
    )""",
    """CREATE TABLE current_epoch (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        epoch INTEGER NOT NULL REFERENCES epochs (epoch)
    )""",
    """CREATE TABLE audit (
        position INTEGER PRIMARY KEY CHECK (position >= 0),
        entry BLOB NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL
    )""",
    # Append-only tables refuse edits from this code's own bugs. They are no
    # defence against someone editing the file: the hash chain and the sealed
    # audit head are.
    """CREATE TRIGGER chain_append_only_update BEFORE UPDATE ON chain
       BEGIN SELECT RAISE(ABORT, 'the chain is append-only'); END""",
    _CHAIN_DELETE_TRIGGER,
    """CREATE TRIGGER audit_append_only_update BEFORE UPDATE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    """CREATE TRIGGER audit_append_only_delete BEFORE DELETE ON audit
       BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END""",
    *_APPS_SCHEMA,
)


class RecordLike(Protocol):
    """One protocol record: ``mpc.dkg.session.Persist`` has this shape."""

    @property
    def key(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def secret(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """The epoch a node serves: its certificate, this node's share (if any), public data."""

    epoch: int
    certificate: bytes
    """The encoded ``mpc.cert.EpochCertificate`` (the chain's epoch link)."""
    share: bytes | None = field(repr=False)
    """This node's share, unsealed; ``None`` if the node is not a member of the epoch."""
    public_polynomial: bytes
    committee: bytes

    def __repr__(self) -> str:
        share = "None" if self.share is None else "<redacted>"
        return f"EpochRecord(epoch={self.epoch}, share={share})"


@dataclass(frozen=True, slots=True)
class StoredApp:
    """An admitted app as the store keeps it (see :meth:`NodeStore.put_app`)."""

    app_id: bytes
    version_floor: int
    bundle: bytes
    frozen: bool
    admitted_by: str
    rotations: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One stored audit-log entry: ``hash = SHA-256(prev_hash ‖ entry)``."""

    position: int
    entry: bytes
    """The record's canonical JSON."""
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True)
class ReleaseWrite:
    """One key release's bookkeeping, checked and encoded, ready for
    :meth:`NodeStore.record_releases` (made by :meth:`NodeStore.release_write`): the
    nonce's meta entry, the canonical audit entries, further meta entries."""

    name: str
    value: bytes = field(repr=False)
    entries: tuple[bytes, ...] = field(repr=False)
    also: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    def names(self) -> tuple[str, ...]:
        """The meta entries this write sets."""
        return (self.name, *(n for n, _ in self.also))


def _blob(value: object) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return str(value).encode()


# --- argument checks ----------------------------------------------------------------------


def _check_bytes(name: str, value: object, *, allow_empty: bool = False) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return value


def _check_epoch(epoch: object) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise TypeError("epoch must be an int")
    if epoch < 0:
        raise ValueError("epoch must not be negative")
    return epoch


def _check_run(run: object) -> bytes:
    checked = _check_bytes("run", run)
    if len(checked) > MAX_RUN_SIZE:
        raise ValueError(f"run id longer than {MAX_RUN_SIZE} bytes")
    return checked


def _check_record_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError("record key must be a str")
    if not 1 <= len(key) <= MAX_RECORD_KEY_LENGTH or "\x00" in key:
        raise ValueError(f"record key must be 1..{MAX_RECORD_KEY_LENGTH} characters, without NUL")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("record key is not valid Unicode") from exc
    return key


def _run_label(run: bytes) -> str:
    text = run.hex()
    return text if len(text) <= 16 else text[:16] + "…"


def _epoch_bytes(epoch: int) -> bytes:
    return epoch.to_bytes(8, "big")


# --- the store ------------------------------------------------------------------------------


@contextmanager
def _deleting_links(db: sqlite3.Connection) -> Iterator[None]:
    """Lift the chain's append-only trigger for one deliberate deletion, inside the caller's
    transaction: trimming links older than the kept epochs, or replacing links by a
    higher fork. The trigger (same SQL) is back before the transaction commits."""
    db.execute("DROP TRIGGER chain_append_only_delete")
    try:
        yield
    finally:
        db.execute(_CHAIN_DELETE_TRIGGER)


def _store_error(exc: sqlite3.Error) -> StoreError:
    """The store's error for a failed SQLite call: :class:`StorageFull` when the disk is
    full (the transaction was rolled back), :class:`StoreError` otherwise."""
    if is_storage_full(exc):
        return StorageFull(f"the disk holding the store is full: {exc}")
    return StoreError(f"database error: {exc}")


class NodeStore:
    """A node's durable state: identity, protocol records, chain, shares, audit log.

    ``NodeStore(path, sealer)`` opens the SQLite file at ``path``, creating it
    (mode 0600) when it does not exist and ``create`` is true. Opening checks
    that the sealer opens the store (:class:`SealError` "wrong passphrase …"
    otherwise) and migrates an older schema. Use it as a context manager or
    call :meth:`close`.
    """

    def __init__(
        self, path: str | os.PathLike[str], sealer: Sealer, *, create: bool = True
    ) -> None:
        self._db: sqlite3.Connection | None = None
        self._path = os.fspath(path)
        if self._path in ("", ":memory:") or self._path.startswith("file:"):
            raise ValueError("a NodeStore needs a file path (no in-memory database, no URI)")
        if not isinstance(sealer, Sealer):
            raise TypeError("sealer must implement the Sealer protocol")
        self._sealer = sealer
        self._store_id = b""
        self._checkpoint_due = False
        self._writer: sqlite3.Connection | None = None
        self._writer_lock = threading.Lock()
        if not os.path.exists(self._path):
            if not create:
                raise StoreError(f"no store at {self._path}")
            try:
                os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                if is_storage_full(exc):
                    raise StorageFull(f"cannot create the store at {self._path}: {exc}") from exc
                raise StoreError(f"cannot create the store at {self._path}: {exc}") from exc
        try:
            db = sqlite3.connect(self._path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the store at {self._path}: {exc}") from exc
        self._db = db
        try:
            self._configure(db)
            self._open_or_create()
        except BaseException:
            self.close()
            raise

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; idempotent. Every later call raises ``StoreError``."""
        with self._writer_lock:  # waits for a batch being committed
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> NodeStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._db is None else "open"
        return f"NodeStore({self._path!r}, sealer={self._sealer.name!r}, {state}, <redacted>)"

    @property
    def path(self) -> str:
        return self._path

    @property
    def schema_version(self) -> int:
        with self._read() as db:
            return int(self._meta(db, _META_SCHEMA_VERSION) or b"0")

    # --- opening ------------------------------------------------------------------------

    _SYNCHRONOUS = "FULL"
    """``PRAGMA synchronous``: FULL fsyncs the WAL at every commit (``bench.store_write``
    compares NORMAL in a subclass; the store never runs with it)."""

    @classmethod
    def _configure(cls, db: sqlite3.Connection) -> None:
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError("the store needs SQLite's WAL journal mode")
            db.execute(f"PRAGMA synchronous = {cls._SYNCHRONOUS}")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA secure_delete = ON")
            db.execute("PRAGMA trusted_schema = OFF")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"not a usable SQLite database: {exc}") from exc

    def _open_or_create(self) -> None:
        """Create a new store, or unlock an existing one and then migrate it (one transaction)."""
        with self._write() as tx:
            app_id = tx.execute("PRAGMA application_id").fetchone()[0]
            tables = tx.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and tables == 0:
                self._create(tx)
                return
            if app_id != APPLICATION_ID:
                raise StoreError(f"{self._path} is not a quorum-kms node store")
            version = int(self._meta(tx, _META_SCHEMA_VERSION) or b"0")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store has schema {version}, newer than this code ({SCHEMA_VERSION})"
                )
            store_id = self._meta(tx, _META_STORE_ID)
            header = self._meta(tx, _META_SEALER)
            check = self._meta(tx, _META_CHECK)
            if store_id is None or header is None or check is None:
                raise StoreError(f"{self._path}: store parameters missing from meta")
            self._store_id = store_id
            self._unlock(header, check)  # a wrong passphrase migrates nothing
            while version < SCHEMA_VERSION:
                step = MIGRATIONS.get(version)
                if step is None:
                    raise StoreError(f"no migration from schema {version}")
                step(tx)
                version += 1
                self._set_meta(tx, _META_SCHEMA_VERSION, str(version).encode())

    def _unlock(self, header: bytes, check: bytes) -> None:
        """Derive the sealing key from the stored header and prove it opens the check value."""
        self._sealer.open(header)
        try:
            plain = self._sealer.unseal(check, self._aad("meta", "value", _META_CHECK.encode()))
        except SealError:
            plain = b""
        if not hmac.compare_digest(plain, _CHECK_PLAINTEXT):
            raise SealError(
                f"wrong passphrase (or sealing key): it does not open the store at {self._path}"
            )

    def _create(self, tx: sqlite3.Connection) -> None:
        for statement in _SCHEMA:
            tx.execute(statement)
        tx.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        self._store_id = os.urandom(16)
        header = self._sealer.create_header()
        self._sealer.open(header)
        check = self._sealer.seal(
            _CHECK_PLAINTEXT, self._aad("meta", "value", _META_CHECK.encode())
        )
        self._set_meta(tx, _META_SCHEMA_VERSION, str(SCHEMA_VERSION).encode())
        self._set_meta(tx, _META_STORE_ID, self._store_id)
        self._set_meta(tx, _META_SEALER, header)
        self._set_meta(tx, _META_CHECK, check)

    # --- resealing (a passphrase change) ------------------------------------------------------

    def reseal(self, sealer: Sealer, *, between: Callable[[str], None] | None = None) -> int:
        """Seal every sealed value of the store again under ``sealer`` (a new passphrase),
        in ONE write transaction; returns how many values were resealed.

        ``sealer`` gets a fresh header (a new scrypt salt), so the new key shares
        nothing with the old one. What is sealed: the identity and DKG seeds, the
        secret protocol records, every share (current and retained), the sealed
        audit head, and the check value. The header and check value are replaced
        last, in the same transaction: a process killed at any point before the
        commit leaves the store as it was, opened by the old passphrase only;
        after it, by the new one only. ``between`` is called with the name of
        each step done (fault injection in tests). The write-ahead log is
        truncated afterwards, so the old blobs leave it.
        """
        if not isinstance(sealer, Sealer):
            raise TypeError("sealer must implement the Sealer protocol")
        step = between or (lambda name: None)
        header = sealer.create_header()
        sealer.open(header)
        old = self._sealer
        count = 0

        def again(blob: bytes, aad: bytes) -> bytes:
            nonlocal count
            count += 1
            return sealer.seal(old.unseal(bytes(blob), aad), aad)

        with self._writer_lock:  # no release batch seals under the old sealer meanwhile
            with self._write() as db:
                row = db.execute("SELECT identity_seed, dkg_seed FROM identity").fetchone()
                if row is not None:
                    db.execute(
                        "UPDATE identity SET identity_seed = ?, dkg_seed = ? WHERE singleton = 1",
                        (
                            again(row[0], self._aad("identity", "identity_seed")),
                            again(row[1], self._aad("identity", "dkg_seed")),
                        ),
                    )
                step("identity")
                for run, key, data in db.execute(
                    "SELECT run, key, data FROM records WHERE secret = 1"
                ).fetchall():
                    db.execute(
                        "UPDATE records SET data = ? WHERE run = ? AND key = ?",
                        (again(data, self._record_aad(bytes(run), str(key))), run, key),
                    )
                step("records")
                for epoch, sealed in db.execute("SELECT epoch, sealed FROM shares").fetchall():
                    db.execute(
                        "UPDATE shares SET sealed = ? WHERE epoch = ?",
                        (again(sealed, self._share_aad(int(epoch))), epoch),
                    )
                step("shares")
                head = self._meta(db, _META_AUDIT_HEAD)
                if head is not None:
                    self._set_meta(db, _META_AUDIT_HEAD, again(head, self._head_aad()))
                step("audit head")
                check_aad = self._aad("meta", "value", _META_CHECK.encode())
                self._set_meta(db, _META_SEALER, header)
                self._set_meta(db, _META_CHECK, sealer.seal(_CHECK_PLAINTEXT, check_aad))
                step("header")
            self._sealer = sealer
            self._checkpoint()
        return count

    # --- transactions and helpers ----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    @contextmanager
    def _transaction(
        self, begin: str, conn: sqlite3.Connection | None = None
    ) -> Iterator[sqlite3.Connection]:
        db = self._conn() if conn is None else conn
        try:
            db.execute(begin)
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _store_error(exc) from exc
        if self._checkpoint_due and begin == "BEGIN IMMEDIATE" and conn is None:
            self._checkpoint()

    @contextmanager
    def _deleting(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that deletes secrets, then the WAL's truncation.

        The release writer's lock is held from ``BEGIN`` to the truncation, so no
        release batch commits in between (its write would make the truncation busy).
        """
        with self._writer_lock:
            with self._write() as db:
                yield db
            self._checkpoint()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on any error."""
        return self._transaction("BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A read transaction: one consistent snapshot over several statements."""
        return self._transaction("BEGIN DEFERRED")

    def _checkpoint(self, conn: sqlite3.Connection | None = None) -> None:
        """Copy the WAL into the database and truncate it (after deleting secrets).

        It does not wait for another writer or for readers (an operator's status
        query in another process): SQLite then answers "busy", and so does a full
        disk, which cannot take the WAL's pages back. Either way the truncation is
        due: it is tried again after each later write transaction, on the main
        connection or on the release writer (``conn``), until it succeeds (the
        deletion stands; the sealed bytes leave the WAL then).
        """
        db = self._conn() if conn is None else conn
        try:
            db.execute("PRAGMA busy_timeout = 0")
            try:
                row = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            if is_storage_full(exc):
                self._checkpoint_due = True
                return
            raise _store_error(exc) from exc
        # (busy, WAL frames, frames copied back): done when not busy and all copied.
        self._checkpoint_due = row is None or int(row[0]) != 0 or row[1] != row[2]

    def _aad(self, table: str, column: str, *key: bytes) -> bytes:
        parts = (_AAD_DOMAIN, self._store_id, table.encode(), column.encode(), *key)
        return b"".join(len(p).to_bytes(4, "big") + p for p in parts)

    @staticmethod
    def _meta(db: sqlite3.Connection, name: str) -> bytes | None:
        row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    @staticmethod
    def _set_meta(db: sqlite3.Connection, name: str, value: bytes) -> None:
        db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    # --- meta ---------------------------------------------------------------------------------

    @staticmethod
    def _check_meta_name(name: object) -> str:
        if not isinstance(name, str) or not name:
            raise ValueError("meta name must be a non-empty str")
        if name == _META_SCHEMA_VERSION or name.startswith(_RESERVED_PREFIX):
            raise ValueError(f"meta name {name!r} is reserved for the store")
        return name

    def get_meta(self, name: str) -> bytes | None:
        """A free meta entry, or ``None``. Names starting with ``store.`` are the store's own."""
        with self._read() as db:
            return self._meta(db, self._check_meta_name(name))

    def set_meta(self, name: str, value: bytes) -> None:
        """Set a free meta entry (not sealed: never put a secret here)."""
        self._check_meta_name(name)
        _check_bytes("value", value, allow_empty=True)
        with self._write() as db:
            self._set_meta(db, name, value)

    def set_metas(self, entries: Iterable[tuple[str, bytes]]) -> None:
        """Set several free meta entries in one transaction: all of them or, if the write
        fails, none (not sealed: never put a secret here)."""
        rows = [
            (self._check_meta_name(n), _check_bytes("value", v, allow_empty=True))
            for n, v in entries
        ]
        with self._write() as db:
            for name, value in rows:
                self._set_meta(db, name, value)

    # --- identity ---------------------------------------------------------------------------

    def save_identity(self, identity_seed: bytes, dkg_seed: bytes) -> None:
        """Store the node's 32-byte Ed25519 identity seed and X25519 DKG seed, both sealed.

        Raises ``StoreError`` if the store already holds an identity: a node's
        identity is bound to its participant index and is never replaced.
        """
        for name, seed in (("identity_seed", identity_seed), ("dkg_seed", dkg_seed)):
            if len(_check_bytes(name, seed)) != SEED_SIZE:
                raise ValueError(f"{name} must be {SEED_SIZE} bytes")
        with self._write() as db:
            if db.execute("SELECT 1 FROM identity").fetchone() is not None:
                raise StoreError("the store already holds a node identity: refusing to replace it")
            db.execute(
                "INSERT INTO identity (singleton, identity_seed, dkg_seed) VALUES (1, ?, ?)",
                (
                    self._sealer.seal(identity_seed, self._aad("identity", "identity_seed")),
                    self._sealer.seal(dkg_seed, self._aad("identity", "dkg_seed")),
                ),
            )

    def load_identity(self) -> tuple[bytes, bytes] | None:
        """``(identity_seed, dkg_seed)``, unsealed, or ``None`` before :meth:`save_identity`."""
        with self._read() as db:
            row = db.execute("SELECT identity_seed, dkg_seed FROM identity").fetchone()
        if row is None:
            return None
        return (
            self._sealer.unseal(bytes(row[0]), self._aad("identity", "identity_seed")),
            self._sealer.unseal(bytes(row[1]), self._aad("identity", "dkg_seed")),
        )

    # --- protocol records ---------------------------------------------------------------------

    def _record_aad(self, run: bytes, key: str) -> bytes:
        return self._aad("records", "data", run, key.encode())

    def _put_record(
        self, db: sqlite3.Connection, run: bytes, key: str, data: bytes, secret: bool
    ) -> None:
        row = db.execute(
            "SELECT secret, data FROM records WHERE run = ? AND key = ?", (run, key)
        ).fetchone()
        if row is None:
            stored = self._sealer.seal(data, self._record_aad(run, key)) if secret else data
            db.execute(
                "INSERT INTO records (run, key, secret, data) VALUES (?, ?, ?, ?)",
                (run, key, int(secret), stored),
            )
            return
        was_secret, old = bool(row[0]), bytes(row[1])
        if was_secret != secret:
            raise StoreError(
                f"record {key!r} of run {_run_label(run)} exists with secret={was_secret}: "
                "refusing to change it"
            )
        if secret:
            old = self._sealer.unseal(old, self._record_aad(run, key))
        if not hmac.compare_digest(old, data):
            raise StoreError(
                f"record {key!r} of run {_run_label(run)} already holds a different value: "
                "refusing to overwrite it (that would sign twice for one slot)"
            )

    def put_record(self, run: bytes, key: str, data: bytes, *, secret: bool) -> None:
        """Persist one record of ``run`` under ``key``; sealed when ``secret``.

        Storing the very same bytes again is a no-op, so a restarted node can
        replay its persistence step. A *different* value for an existing
        ``(run, key)`` raises ``StoreError``: it would mean signing twice for
        one slot, which other nodes see as equivocation. The dealt polynomial
        of a DKG or reshare is such a record (``secret=True``), like the new
        share a run produces before the epoch switch.
        """
        run, key = _check_run(run), _check_record_key(key)
        _check_bytes("data", data, allow_empty=True)
        if not isinstance(secret, bool):
            raise TypeError("secret must be a bool")
        with self._write() as db:
            self._put_record(db, run, key, data, secret)

    def put_records(self, run: bytes, records: Iterable[RecordLike]) -> None:
        """Persist several records of ``run`` in one transaction: all of them or none.

        Takes the ``Persist`` events of one session step as they are
        (``mpc.dkg.session.Persist`` has ``key``, ``data`` and ``secret``); the
        node must call this before sending the messages of that step.
        """
        run = _check_run(run)
        items = [(r.key, r.data, r.secret) for r in records]
        for key, data, secret in items:
            _check_record_key(key)
            _check_bytes("data", data, allow_empty=True)
            if not isinstance(secret, bool):
                raise TypeError("secret must be a bool")
        if not items:
            return
        with self._write() as db:
            for key, data, secret in items:
                self._put_record(db, run, key, data, secret)

    def records(self, run: bytes) -> dict[str, bytes]:
        """Every record of ``run``, unsealed, by key: the session's ``persisted`` on restart."""
        run = _check_run(run)
        with self._read() as db:
            rows = db.execute(
                "SELECT key, secret, data FROM records WHERE run = ? ORDER BY key", (run,)
            ).fetchall()
        out: dict[str, bytes] = {}
        for key, secret, data in rows:
            raw = bytes(data)
            out[key] = self._sealer.unseal(raw, self._record_aad(run, key)) if secret else raw
        return out

    def runs(self) -> list[bytes]:
        """The runs that have records, in byte order (what a restarted node may resume)."""
        with self._read() as db:
            rows = db.execute("SELECT DISTINCT run FROM records ORDER BY run").fetchall()
        return [bytes(r[0]) for r in rows]

    def delete_records(self, run: bytes) -> int:
        """Delete (and overwrite) every record of a finished run; returns how many there were."""
        run = _check_run(run)
        with self._deleting() as db:
            db.execute(
                "UPDATE records SET data = zeroblob(length(data)) WHERE run = ? AND secret = 1",
                (run,),
            )
            count = db.execute("DELETE FROM records WHERE run = ?", (run,)).rowcount
        return int(count)

    # --- the chain ------------------------------------------------------------------------------

    @staticmethod
    def _check_link(kind: object, epoch: object, data: object) -> tuple[str, int, bytes]:
        if kind not in LINK_KINDS:
            raise ValueError(f"link kind must be one of {LINK_KINDS}")
        return str(kind), _check_epoch(epoch), _check_bytes("data", data)

    def _append_link(self, db: sqlite3.Connection, kind: str, epoch: int, data: bytes) -> int:
        same = db.execute(
            "SELECT position, data FROM chain WHERE kind = ? AND epoch = ?", (kind, epoch)
        ).fetchone()
        if same is not None:
            if bytes(same[1]) != data:
                raise StoreError(
                    f"the chain already holds another {kind} certificate for epoch {epoch}: "
                    "refusing a fork"
                )
            return int(same[0])
        last = db.execute(
            "SELECT position, kind, epoch FROM chain ORDER BY position DESC LIMIT 1"
        ).fetchone()
        if last is None:
            if kind != "epoch":
                raise StoreError("the chain starts with an epoch certificate")
            position = 0
        else:
            position, last_kind, last_epoch = int(last[0]) + 1, str(last[1]), int(last[2])
            expected = (
                ("membership", last_epoch) if last_kind == "epoch" else ("epoch", last_epoch + 1)
            )
            if (kind, epoch) != expected:
                raise StoreError(
                    f"chain link out of order: after the {last_kind} certificate of epoch "
                    f"{last_epoch} comes the {expected[0]} certificate of epoch {expected[1]}, "
                    f"not the {kind} certificate of epoch {epoch}"
                )
        db.execute(
            "INSERT INTO chain (position, kind, epoch, data) VALUES (?, ?, ?, ?)",
            (position, kind, epoch, data),
        )
        return position

    def append_link(self, kind: str, epoch: int, data: bytes) -> int:
        """Append a certificate to the chain; returns its 0-based position.

        ``kind`` is ``"epoch"`` (an encoded ``mpc.cert.EpochCertificate``) or
        ``"membership"`` (an encoded ``MembershipCertificate``). The store
        checks the shape, not the signatures (verify links with
        ``mpc.membership.chain`` first): the chain starts with an epoch link
        (genesis, or a verified checkpoint), then alternates ``M_e`` after
        ``E_e`` and ``E_{e+1}`` after ``M_e``. Appending a link already there
        with the same bytes is a no-op; other bytes for it raise ``StoreError``.
        """
        kind, epoch, data = self._check_link(kind, epoch, data)
        with self._write() as db:
            return self._append_link(db, kind, epoch, data)

    def chain(self) -> list[tuple[str, int, bytes]]:
        """Every link, in order, as ``(kind, epoch, data)``."""
        with self._read() as db:
            rows = db.execute("SELECT kind, epoch, data FROM chain ORDER BY position").fetchall()
        return [(str(k), int(e), bytes(d)) for k, e, d in rows]

    def trim_chain(self, position: int) -> None:
        """Forget the links before ``position`` but genesis (position 0).

        The epoch records of those epochs go too, except for an epoch whose
        share is still retained (its link stays until that share is deleted).
        """
        with self._write() as db:
            first = int(position) // 2
            db.execute(
                "DELETE FROM epochs WHERE epoch > 0 AND epoch < ? "
                "AND epoch NOT IN (SELECT epoch FROM shares) "
                "AND epoch NOT IN (SELECT epoch FROM current_epoch)",
                (first,),
            )
            with _deleting_links(db):
                db.execute(
                    "DELETE FROM chain WHERE position > 0 AND position < ? "
                    "AND NOT (kind = 'epoch' AND epoch IN (SELECT epoch FROM epochs))",
                    (int(position),),
                )

    def replace_chain(self, links: Iterable[tuple[str, int, bytes]]) -> None:
        """Make the chain ``links`` (genesis, then a contiguous recent tail), in one transaction.

        For a node that caught up past links it never held, or switched to a
        fork whose head ranks higher. Links are stored at their positions in
        the full chain (``E_e`` at ``2e``, ``M_e`` at ``2e + 1``). Every epoch
        whose certificate is dropped or replaced loses its epoch record and
        its share (overwritten, then deleted); if it was the current epoch,
        no epoch is current until the next ``switch_epoch``.
        """
        new: dict[int, tuple[str, int, bytes]] = {}
        for kind, epoch, data in links:
            kind, epoch, data = self._check_link(kind, epoch, data)
            new[2 * epoch + (kind == "membership")] = (kind, epoch, data)
        with self._deleting() as db:
            rows = db.execute("SELECT position, kind, epoch, data FROM chain").fetchall()
            keep = {
                int(p)
                for p, k, e, d in rows
                if int(p) in new and new[int(p)] == (str(k), int(e), bytes(d))
            }
            gone = [(int(p), str(k), int(e)) for p, k, e, _ in rows if int(p) not in keep]
            for _, kind, epoch in gone:
                if kind != "epoch":
                    continue
                db.execute("DELETE FROM current_epoch WHERE epoch = ?", (epoch,))
                db.execute(
                    "UPDATE shares SET sealed = zeroblob(length(sealed)) WHERE epoch = ?", (epoch,)
                )
                db.execute("DELETE FROM shares WHERE epoch = ?", (epoch,))
                db.execute("DELETE FROM epochs WHERE epoch = ?", (epoch,))
            with _deleting_links(db):
                for position, _, _ in gone:
                    db.execute("DELETE FROM chain WHERE position = ?", (position,))
            for position, (kind, epoch, data) in sorted(new.items()):
                if position not in keep:
                    db.execute(
                        "INSERT INTO chain (position, kind, epoch, data) VALUES (?, ?, ?, ?)",
                        (position, kind, epoch, data),
                    )

    # --- epochs and shares ----------------------------------------------------------------------

    def _share_aad(self, epoch: int) -> bytes:
        return self._aad("shares", "sealed", _epoch_bytes(epoch))

    def switch_epoch(
        self,
        epoch: int,
        certificate: bytes,
        share: bytes | None,
        public_polynomial: bytes,
        committee: bytes,
    ) -> None:
        """Make ``epoch`` current, in one transaction.

        Appends the epoch certificate to the chain (unless that very link is
        already its last epoch link), records the epoch's public polynomial and
        committee, stores this node's new ``share`` sealed (``None`` when the
        node is not a member of the new epoch) and marks the epoch current. The
        previous epoch's share stays, as *retained*, until
        :meth:`delete_retained_share`. ``epoch`` must be after the current one;
        repeating the switch already made with identical arguments is a no-op.
        """
        epoch = _check_epoch(epoch)
        _check_bytes("certificate", certificate)
        if share is not None:
            _check_bytes("share", share)
        _check_bytes("public_polynomial", public_polynomial)
        _check_bytes("committee", committee)
        with self._write() as db:
            row = db.execute("SELECT epoch FROM current_epoch").fetchone()
            current = None if row is None else int(row[0])
            if current == epoch and self._is_current(
                db, epoch, certificate, share, public_polynomial, committee
            ):
                return
            if current is not None and epoch <= current:
                raise StoreError(f"epoch {epoch} is not after the current epoch {current}")
            link = db.execute(
                "SELECT data FROM chain WHERE kind = 'epoch' AND epoch = ?", (epoch,)
            ).fetchone()
            if link is not None:
                if bytes(link[0]) != certificate:
                    raise StoreError(f"the chain holds another certificate for epoch {epoch}")
                later = db.execute(
                    "SELECT 1 FROM chain WHERE kind = 'epoch' AND epoch > ?", (epoch,)
                ).fetchone()
                if later is not None:
                    raise StoreError(f"epoch {epoch} is not the latest epoch of the chain")
            else:
                self._append_link(db, "epoch", epoch, certificate)
            db.execute(
                "INSERT INTO epochs (epoch, public_polynomial, committee) VALUES (?, ?, ?)",
                (epoch, public_polynomial, committee),
            )
            if share is not None:
                db.execute(
                    "INSERT INTO shares (epoch, sealed) VALUES (?, ?)",
                    (epoch, self._sealer.seal(share, self._share_aad(epoch))),
                )
            db.execute(
                "INSERT INTO current_epoch (singleton, epoch) VALUES (1, ?) "
                "ON CONFLICT (singleton) DO UPDATE SET epoch = excluded.epoch",
                (epoch,),
            )

    def set_share(self, epoch: int, share: bytes) -> None:
        """Store this node's share of the *current* epoch, switched to without one.

        For a node that made ``epoch`` current before its own run finalized
        (it learned the certificate from the chain). A share is never
        replaced: storing the same bytes again is a no-op, other bytes raise
        ``StoreError``, as does an epoch that is not the current one.
        """
        epoch = _check_epoch(epoch)
        _check_bytes("share", share)
        with self._write() as db:
            row = db.execute("SELECT epoch FROM current_epoch").fetchone()
            if row is None or int(row[0]) != epoch:
                raise StoreError(f"epoch {epoch} is not the current epoch")
            old = db.execute("SELECT sealed FROM shares WHERE epoch = ?", (epoch,)).fetchone()
            if old is not None:
                stored = self._sealer.unseal(bytes(old[0]), self._share_aad(epoch))
                if not hmac.compare_digest(stored, share):
                    raise StoreError(
                        f"epoch {epoch} already has another share: refusing to replace it"
                    )
                return
            db.execute(
                "INSERT INTO shares (epoch, sealed) VALUES (?, ?)",
                (epoch, self._sealer.seal(share, self._share_aad(epoch))),
            )

    def _is_current(
        self,
        db: sqlite3.Connection,
        epoch: int,
        certificate: bytes,
        share: bytes | None,
        public_polynomial: bytes,
        committee: bytes,
    ) -> bool:
        record = self._epoch_record(db, epoch)
        if record is None:  # pragma: no cover - current_epoch references epochs
            return False
        same_share = (record.share is None and share is None) or (
            record.share is not None
            and share is not None
            and hmac.compare_digest(record.share, share)
        )
        return (
            same_share
            and record.certificate == certificate
            and record.public_polynomial == public_polynomial
            and record.committee == committee
        )

    def _epoch_record(self, db: sqlite3.Connection, epoch: int) -> EpochRecord | None:
        row = db.execute(
            "SELECT c.data, e.public_polynomial, e.committee, s.sealed FROM epochs e "
            "JOIN chain c ON c.kind = 'epoch' AND c.epoch = e.epoch "
            "LEFT JOIN shares s ON s.epoch = e.epoch WHERE e.epoch = ?",
            (epoch,),
        ).fetchone()
        if row is None:
            return None
        share = (
            None if row[3] is None else self._sealer.unseal(bytes(row[3]), self._share_aad(epoch))
        )
        return EpochRecord(epoch, bytes(row[0]), share, bytes(row[1]), bytes(row[2]))

    def current_epoch(self) -> EpochRecord | None:
        """The epoch this node serves (share unsealed), or ``None`` before the first switch."""
        with self._read() as db:
            row = db.execute("SELECT epoch FROM current_epoch").fetchone()
            if row is None:
                return None
            record = self._epoch_record(db, int(row[0]))
        if record is None:  # pragma: no cover - current_epoch references epochs
            raise StoreError("the current epoch has no epoch record")
        return record

    def retained_shares(self) -> list[int]:
        """Epochs older than the current one whose share is still kept, ascending."""
        with self._read() as db:
            rows = db.execute(
                "SELECT epoch FROM shares WHERE epoch < (SELECT epoch FROM current_epoch) "
                "ORDER BY epoch"
            ).fetchall()
        return [int(r[0]) for r in rows]

    def retained_share(self, epoch: int) -> bytes:
        """The retained share of an older ``epoch``, unsealed; ``StoreError`` if there is none."""
        epoch = _check_epoch(epoch)
        with self._read() as db:
            row = db.execute(
                "SELECT sealed FROM shares WHERE epoch = ? "
                "AND epoch < (SELECT epoch FROM current_epoch)",
                (epoch,),
            ).fetchone()
        if row is None:
            raise StoreError(f"no retained share for epoch {epoch}")
        return self._sealer.unseal(bytes(row[0]), self._share_aad(epoch))

    def delete_retained_share(self, epoch: int) -> None:
        """Irreversibly delete the retained share of an epoch older than the current one.

        The sealed bytes are overwritten, then the row deleted (``secure_delete``
        zeroes the freed space) and the write-ahead log truncated. Call it only
        once the new epoch is certified and acknowledged (``mpc.reshare.retention``).
        """
        epoch = _check_epoch(epoch)
        with self._deleting() as db:
            row = db.execute("SELECT epoch FROM current_epoch").fetchone()
            if row is None or epoch >= int(row[0]):
                raise StoreError(
                    f"only shares of epochs older than the current one can be deleted (got {epoch})"
                )
            if db.execute("SELECT 1 FROM shares WHERE epoch = ?", (epoch,)).fetchone() is None:
                raise StoreError(f"no retained share for epoch {epoch}")
            db.execute(
                "UPDATE shares SET sealed = zeroblob(length(sealed)) WHERE epoch = ?", (epoch,)
            )
            db.execute("DELETE FROM shares WHERE epoch = ?", (epoch,))

    # --- admitted apps --------------------------------------------------------------------------

    def put_app(
        self,
        app_id: bytes,
        *,
        version_floor: int,
        bundle: bytes,
        frozen: bool,
        admitted_by: str,
        rotations: Iterable[tuple[int, bytes]] = (),
    ) -> None:
        """Create or update an admitted app's row, and add rotation records (one transaction).

        The version floor never decreases (the larger of the stored and the given
        one is kept); ``admitted_by`` is kept from the app's first row; rotation
        records are only ever added.
        """
        self.put_apps(
            [StoredApp(app_id, version_floor, bundle, frozen, admitted_by, tuple(rotations))]
        )

    def put_apps(self, apps: Iterable[StoredApp]) -> None:
        """:meth:`put_app` for many apps in one transaction."""
        rows = []
        for a in apps:
            _check_bytes("app_id", a.app_id)
            _check_bytes("bundle", a.bundle)
            if isinstance(a.version_floor, bool) or not isinstance(a.version_floor, int):
                raise TypeError("version_floor must be an int")
            if a.version_floor < 0:
                raise ValueError("version_floor must not be negative")
            rots = [(int(seq), _check_bytes("rotation", rec)) for seq, rec in a.rotations]
            rows.append((a, rots))
        with self._write() as db:
            for a, rots in rows:
                db.execute(
                    "INSERT INTO apps (app_id, version_floor, bundle, frozen, admitted_by) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (app_id) DO UPDATE SET "
                    "version_floor = max(version_floor, excluded.version_floor), "
                    "bundle = excluded.bundle, frozen = excluded.frozen",
                    (a.app_id, a.version_floor, a.bundle, int(bool(a.frozen)), a.admitted_by),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO app_rotations (app_id, sequence, record) "
                    "VALUES (?, ?, ?)",
                    [(a.app_id, seq, rec) for seq, rec in rots],
                )

    def apps(self) -> list[StoredApp]:
        """Every admitted app with its rotation records (sorted by app id, then sequence)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT app_id, version_floor, bundle, frozen, admitted_by FROM apps "
                "ORDER BY app_id"
            ).fetchall()
            rots: dict[bytes, list[tuple[int, bytes]]] = {}
            for app_id, seq, rec in db.execute(
                "SELECT app_id, sequence, record FROM app_rotations ORDER BY app_id, sequence"
            ):
                rots.setdefault(_blob(app_id), []).append((int(seq), _blob(rec)))
        return [
            StoredApp(_blob(a), int(v), _blob(b), bool(f), str(by), tuple(rots.get(_blob(a), ())))
            for a, v, b, f, by in rows
        ]

    def app_count(self) -> int:
        """How many apps this node has admitted."""
        with self._read() as db:
            return int(db.execute("SELECT count(*) FROM apps").fetchone()[0])

    # --- audit log ------------------------------------------------------------------------------

    def _head_aad(self) -> bytes:
        return self._aad("meta", "value", _META_AUDIT_HEAD.encode())

    def audit_append(self, record: AuditRecord) -> bytes:
        """Append one record (see :meth:`audit_append_many`); returns the new head hash."""
        return self.audit_append_many([record])

    def audit_append_many(self, records: Iterable[AuditRecord]) -> bytes:
        """Append a group of records in one transaction; returns the new head hash.

        Each record is a flat mapping of ``str`` to ``str | int`` stored as its
        canonical JSON; a key that looks like key material (containing
        ``share``, ``secret``, ``key_material`` or ``private``) raises
        ``ValueError`` and nothing of the group is written. The sealed head
        (count and hash) is updated in the same transaction.
        """
        entries = [canonical_record(r) for r in records]
        with self._write() as db:
            return self._audit_append(db, entries)

    def record_release(
        self,
        name: str,
        value: bytes,
        records: Iterable[AuditRecord],
        also: Iterable[tuple[str, bytes]] = (),
    ) -> bytes:
        """A key release's bookkeeping in one transaction: a meta entry (the nonce with its
        expiry), the release's audit records (see :meth:`audit_append_many`), and the
        further meta entries ``also`` (an app-key certificate's record of the key certified)."""
        write = self.release_write(name, value, records, also)
        with self._write() as db:
            return self._write_release(db, write)

    def release_write(
        self,
        name: str,
        value: bytes,
        records: Iterable[AuditRecord],
        also: Iterable[tuple[str, bytes]] = (),
    ) -> ReleaseWrite:
        """Check and encode one release's bookkeeping (the arguments of
        :meth:`record_release`) for :meth:`record_releases`; raises ``ValueError`` or
        ``TypeError`` for a bad name, value or record, before anything is written."""
        self._check_meta_name(name)
        _check_bytes("value", value, allow_empty=True)
        extra = tuple((self._check_meta_name(n), v) for n, v in also)
        for _, v in extra:
            _check_bytes("value", v, allow_empty=True)
        entries = tuple(canonical_record(r) for r in records)
        return ReleaseWrite(name, value, entries, extra)

    def record_releases(self, writes: Sequence[ReleaseWrite]) -> bytes:
        """The bookkeeping of several releases in one transaction and one fsync (group
        commit), in order: each write's meta entries, then its audit entries appended to
        the chain. All of them or, if the commit fails, none (:class:`StorageFull` when
        the disk is full). Returns the audit head after the batch.

        It runs on the release writer, a connection of its own: any one thread at a time
        may call it (calls are serialised), while the opening thread uses the store.
        """
        if not all(isinstance(w, ReleaseWrite) for w in writes):
            raise TypeError("writes must be ReleaseWrite values (NodeStore.release_write)")
        with self._writer_lock:
            writer = self._release_writer()
            with self._transaction("BEGIN IMMEDIATE", writer) as db:
                head = b""
                for write in writes:
                    head = self._write_release(db, write)
                if not writes:
                    head = self._audit_append(db, [])
            if self._checkpoint_due:  # a deletion's truncation that has not finished yet
                self._checkpoint(writer)
            return head

    def _release_writer(self) -> sqlite3.Connection:
        """The release writer's connection, opened on first use (under ``_writer_lock``)."""
        self._conn()  # a closed store stays closed
        if self._writer is None:
            try:
                db = sqlite3.connect(
                    self._path,
                    isolation_level=None,
                    timeout=_BUSY_TIMEOUT_MS / 1000,
                    check_same_thread=False,  # serialised by _writer_lock
                )
            except sqlite3.Error as exc:
                raise _store_error(exc) from exc
            try:
                self._configure(db)
            except BaseException:
                db.close()
                raise
            self._writer = db
        return self._writer

    def _write_release(self, db: sqlite3.Connection, write: ReleaseWrite) -> bytes:
        self._set_meta(db, write.name, write.value)
        for n, v in write.also:
            self._set_meta(db, n, v)
        return self._audit_append(db, list(write.entries))

    def _audit_append(self, db: sqlite3.Connection, entries: list[bytes]) -> bytes:
        last = db.execute(
            "SELECT position, hash FROM audit ORDER BY position DESC LIMIT 1"
        ).fetchone()
        position, head = (0, ZERO_HASH) if last is None else (int(last[0]) + 1, bytes(last[1]))
        if not entries:
            return head
        for entry in entries:
            digest = chain_hash(head, entry)
            db.execute(
                "INSERT INTO audit (position, entry, prev_hash, hash) VALUES (?, ?, ?, ?)",
                (position, entry, head, digest),
            )
            position, head = position + 1, digest
        sealed = self._sealer.seal(position.to_bytes(8, "big") + head, self._head_aad())
        self._set_meta(db, _META_AUDIT_HEAD, sealed)
        return head

    def audit_head(self) -> tuple[int, bytes]:
        """``(number of entries, head hash)``; ``(0, ZERO_HASH)`` for an empty log."""
        with self._read() as db:
            last = db.execute(
                "SELECT position, hash FROM audit ORDER BY position DESC LIMIT 1"
            ).fetchone()
        return (0, ZERO_HASH) if last is None else (int(last[0]) + 1, bytes(last[1]))

    def audit_entries(self, start: int = 0, limit: int | None = None) -> list[AuditEntry]:
        """Stored entries from position ``start`` on (at most ``limit``), for operators."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        with self._read() as db:
            rows = db.execute(
                "SELECT position, entry, prev_hash, hash FROM audit WHERE position >= ? "
                "ORDER BY position LIMIT ?",
                (start, -1 if limit is None else limit),
            ).fetchall()
        # An edited file may hold TEXT where BLOBs belong: report it as stored, let the
        # chain check (here or at the reader) find the edit.
        return [AuditEntry(int(p), _blob(e), _blob(ph), _blob(h)) for p, e, ph, h in rows]

    def audit_verify(self) -> None:
        """Recompute the whole chain; raise ``AuditChainBroken(position)`` at the first bad entry.

        Detects an edited entry (its hash no longer matches), a removed or
        reordered entry (positions or ``prev_hash`` links break), entries
        removed from or added at the end, and a rewrite that recomputed every
        hash (both against the sealed head, which needs the sealing key to
        forge). Rolling the whole file back to an older copy is not detectable
        locally: that is what the head signed across nodes is for.
        """
        head, count = ZERO_HASH, 0
        with self._read() as db:
            sealed = self._meta(db, _META_AUDIT_HEAD)
            rows = db.execute(
                "SELECT position, entry, prev_hash, hash FROM audit ORDER BY position"
            )
            for position, entry, prev_hash, digest in rows:
                if position != count:
                    raise AuditChainBroken(count, "entry missing")
                if bytes(prev_hash) != head:
                    raise AuditChainBroken(count, "entry does not link to the one before it")
                head = chain_hash(head, bytes(entry))
                if bytes(digest) != head:
                    raise AuditChainBroken(count, "entry was edited")
                count += 1
        if sealed is None:
            if count:
                raise AuditChainBroken(0, "the sealed head is missing")
            return
        try:
            plain = self._sealer.unseal(sealed, self._head_aad())
        except SealError:
            raise AuditChainBroken(0, "the sealed head does not open") from None
        sealed_count, sealed_head = int.from_bytes(plain[:8], "big"), plain[8:]
        if sealed_count > count:
            raise AuditChainBroken(count, f"{sealed_count - count} entries removed from the end")
        if sealed_count < count:
            raise AuditChainBroken(sealed_count, "entries appended outside the store")
        if sealed_head != head:
            raise AuditChainBroken(0, "the log was rewritten: it does not match the sealed head")
