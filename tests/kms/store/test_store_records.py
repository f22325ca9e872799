"""The store itself: identity, protocol records, meta, schema, sealing at rest."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from store_helpers import StoreFactory, file_bytes, raw_db, tee_sealer

import kms.store.store as store_module
from kms.store import SCHEMA_VERSION, KeyStore, NodeStore, SealError, StoreError

RUN = bytes(32)
OTHER_RUN = b"\x01" * 32


@dataclass(frozen=True)
class Record:
    """Shaped like ``mpc.dkg.session.Persist`` (checked against the real one below)."""

    key: str
    data: bytes
    secret: bool = False


# --- opening, schema, lifecycle ------------------------------------------------------------


def test_new_store_is_private_wal_and_fully_synchronous(store: NodeStore, store_path: Path) -> None:
    assert stat.S_IMODE(os.stat(store_path).st_mode) == 0o600
    db = store._conn()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert store.schema_version == SCHEMA_VERSION


def test_node_store_is_a_key_store(store: NodeStore) -> None:
    as_role: KeyStore = store  # checked by mypy
    assert isinstance(as_role, KeyStore)


@pytest.mark.parametrize("path", ["", ":memory:", "file:node.db?mode=rwc"])
def test_store_needs_a_file_path(path: str) -> None:
    with pytest.raises(ValueError, match="file path"):
        NodeStore(path, tee_sealer())
    assert not Path(path or ".").is_file()


def test_missing_store_is_not_created_when_asked_not_to(store_path: Path) -> None:
    with pytest.raises(StoreError, match="no store"):
        NodeStore(store_path, tee_sealer(), create=False)
    assert not store_path.exists()


def test_other_sqlite_file_is_refused(store_path: Path) -> None:
    with raw_db(store_path) as db:
        db.execute("CREATE TABLE something (x)")
    with pytest.raises(StoreError, match="not a quorum-kms node store"):
        NodeStore(store_path, tee_sealer())


def test_non_database_file_is_refused(store_path: Path) -> None:
    store_path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError):
        NodeStore(store_path, tee_sealer())


def test_newer_schema_is_refused(store_path: Path) -> None:
    NodeStore(store_path, tee_sealer()).close()
    with raw_db(store_path) as db:
        db.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (b"99",))
    with pytest.raises(StoreError, match="newer than this code"):
        NodeStore(store_path, tee_sealer())


CURRENT = store_module.SCHEMA_VERSION


def test_migration_hook_upgrades_an_older_store(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NodeStore(store_path, tee_sealer()) as store:
        store.put_record(RUN, "deal", b"kept", secret=True)
    applied: list[int] = []

    def to_next(db: sqlite3.Connection) -> None:
        applied.append(CURRENT)
        db.execute("CREATE TABLE later (app_id BLOB PRIMARY KEY, policy BLOB NOT NULL)")

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", CURRENT + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, CURRENT, to_next)
    with NodeStore(store_path, tee_sealer()) as store:
        assert store.schema_version == CURRENT + 1
        assert store.records(RUN) == {"deal": b"kept"}
    with NodeStore(store_path, tee_sealer()) as store:  # already migrated: not applied again
        assert store.schema_version == CURRENT + 1
    assert applied == [CURRENT]


def test_missing_migration_is_refused(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    NodeStore(store_path, tee_sealer()).close()
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", CURRENT + 2)
    with pytest.raises(StoreError, match=f"no migration from schema {CURRENT}"):
        NodeStore(store_path, tee_sealer())


def test_failed_migration_leaves_the_old_schema(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    NodeStore(store_path, tee_sealer()).close()

    def broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("crash in the middle of a migration")

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", CURRENT + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, CURRENT, broken)
    with pytest.raises(RuntimeError):
        NodeStore(store_path, tee_sealer())
    with raw_db(store_path) as db:
        version = db.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert version[0] == str(CURRENT).encode()
    assert "half_done" not in tables


def test_a_store_written_with_schema_1_opens_and_migrates(tmp_path: Path) -> None:
    """``data/store-schema-1.db`` was written by the code before the apps tables existed."""
    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "data" / "store-schema-1.db", path)
    with raw_db(path) as db:
        assert (
            db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()[0] == b"1"
        )
    with NodeStore(path, tee_sealer()) as store:
        assert store.schema_version == CURRENT
        assert store.load_identity() == (bytes([1]) * 32, bytes([2]) * 32)
        assert store.get_meta("nonce/00") == (5).to_bytes(8, "big")
        store.audit_verify()
        assert store.apps() == []
        store.put_app(
            b"\x01" * 20, version_floor=3, bundle=b"b", frozen=False, admitted_by="operator"
        )
    with NodeStore(path, tee_sealer()) as store:
        (app,) = store.apps()
        assert (app.app_id, app.version_floor) == (b"\x01" * 20, 3)


def test_admitted_apps_are_never_forgotten(store_path: Path) -> None:
    with NodeStore(store_path, tee_sealer()) as store:
        store.put_app(
            b"\x01" * 20,
            version_floor=7,
            bundle=b"v7",
            frozen=False,
            admitted_by="key-request",
            rotations=[(1, b"r1")],
        )
        # A lower floor never lowers it; rotations are only ever added.
        store.put_app(
            b"\x01" * 20,
            version_floor=2,
            bundle=b"v8",
            frozen=True,
            admitted_by="operator",
            rotations=[(1, b"r1-fork")],
        )
        (app,) = store.apps()
        assert app.version_floor == 7 and app.frozen and app.admitted_by == "key-request"
        assert app.rotations == ((1, b"r1"), (1, b"r1-fork"))
        assert store.app_count() == 1
    with raw_db(store_path) as db, pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        db.execute("DELETE FROM apps")


def test_closed_store_refuses_calls_and_close_is_idempotent(store_path: Path) -> None:
    with NodeStore(store_path, tee_sealer()) as store:
        pass
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.records(RUN)
    assert "closed" in repr(store)


def test_store_repr_is_redacted(store: NodeStore) -> None:
    store.save_identity(b"\xaa" * 32, b"\xbb" * 32)
    text = repr(store)
    assert "<redacted>" in text and "tee-key" in text
    assert "aa" * 8 not in text


# --- meta --------------------------------------------------------------------------------------


def test_meta_get_set(store: NodeStore, open_store: StoreFactory) -> None:
    assert store.get_meta("policy.watermark") is None
    store.set_meta("policy.watermark", b"7")
    store.set_meta("policy.watermark", b"8")
    store.set_meta("empty", b"")
    store.close()
    reopened = open_store()
    assert reopened.get_meta("policy.watermark") == b"8"
    assert reopened.get_meta("empty") == b""


@pytest.mark.parametrize("name", ["schema_version", "store.check", "store.sealer", "store.x", ""])
def test_reserved_meta_names_are_refused(store: NodeStore, name: str) -> None:
    with pytest.raises(ValueError):
        store.set_meta(name, b"x")
    with pytest.raises(ValueError):
        store.get_meta(name)


# --- identity --------------------------------------------------------------------------------


def test_identity_round_trip_and_no_overwrite(store: NodeStore, open_store: StoreFactory) -> None:
    assert store.load_identity() is None
    store.save_identity(b"i" * 32, b"d" * 32)
    with pytest.raises(StoreError, match="already holds a node identity"):
        store.save_identity(b"j" * 32, b"e" * 32)
    with pytest.raises(StoreError, match="already holds a node identity"):
        store.save_identity(b"i" * 32, b"d" * 32)
    store.close()
    assert open_store().load_identity() == (b"i" * 32, b"d" * 32)


@pytest.mark.parametrize(
    ("identity", "dkg"), [(b"i" * 31, b"d" * 32), (b"i" * 32, b""), (b"", b"")]
)
def test_identity_seeds_are_32_bytes(store: NodeStore, identity: bytes, dkg: bytes) -> None:
    with pytest.raises(ValueError):
        store.save_identity(identity, dkg)
    assert store.load_identity() is None


def test_swapped_identity_seeds_do_not_open(store: NodeStore, store_path: Path) -> None:
    store.save_identity(b"i" * 32, b"d" * 32)
    with raw_db(store_path) as db:
        db.execute("UPDATE identity SET identity_seed = dkg_seed, dkg_seed = identity_seed")
    with pytest.raises(SealError):
        store.load_identity()


# --- protocol records -------------------------------------------------------------------------


def test_records_round_trip_sealed_and_plain(store: NodeStore, open_store: StoreFactory) -> None:
    store.put_record(RUN, "deal", b"signed deal bundle", secret=False)
    store.put_record(RUN, "polynomial", b"dealt coefficients", secret=True)
    store.put_record(OTHER_RUN, "deal", b"another run", secret=False)
    assert store.records(RUN) == {
        "deal": b"signed deal bundle",
        "polynomial": b"dealt coefficients",
    }
    assert store.records(b"unknown") == {}
    assert store.runs() == [RUN, OTHER_RUN]
    store.close()
    assert open_store().records(OTHER_RUN) == {"deal": b"another run"}


@pytest.mark.parametrize("secret", [False, True])
def test_put_record_is_idempotent_and_refuses_a_different_value(
    store: NodeStore, secret: bool
) -> None:
    store.put_record(RUN, "response", b"ok for dealer 3", secret=secret)
    store.put_record(RUN, "response", b"ok for dealer 3", secret=secret)
    with pytest.raises(StoreError, match="sign twice"):
        store.put_record(RUN, "response", b"complaint against 3", secret=secret)
    assert store.records(RUN) == {"response": b"ok for dealer 3"}


def test_put_record_refuses_to_change_secrecy(store: NodeStore) -> None:
    store.put_record(RUN, "share", b"s", secret=True)
    with pytest.raises(StoreError, match="secret=True"):
        store.put_record(RUN, "share", b"s", secret=False)


def test_refusal_does_not_leak_the_value(store: NodeStore) -> None:
    store.put_record(RUN, "share", b"TOP-SECRET-SHARE", secret=True)
    with pytest.raises(StoreError) as info:
        store.put_record(RUN, "share", b"OTHER-SECRET", secret=True)
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize(
    ("run", "key", "data", "error"),
    [
        (b"", "k", b"", ValueError),
        (b"r" * 1025, "k", b"", ValueError),
        ("run", "k", b"", TypeError),
        (RUN, "", b"", ValueError),
        (RUN, "a\x00b", b"", ValueError),
        (RUN, "x" * 257, b"", ValueError),
        (RUN, "\ud800", b"", ValueError),
        (RUN, 7, b"", TypeError),
        (RUN, "k", "text", TypeError),
    ],
)
def test_put_record_checks_its_arguments(
    store: NodeStore, run: object, key: object, data: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        store.put_record(run, key, data, secret=False)  # type: ignore[arg-type]


def test_put_records_takes_persist_events_in_one_transaction(store: NodeStore) -> None:
    # Imported here: the rest of this module does not depend on the protocol code.
    from mpc.dkg.session import Persist

    step = [
        Persist("polynomial", b"coefficients", secret=True),
        Persist("deal", b"deal payload"),
    ]
    store.put_records(RUN, step)
    store.put_records(RUN, step)  # a restarted node replays its step: a no-op
    assert store.records(RUN) == {"polynomial": b"coefficients", "deal": b"deal payload"}
    store.put_records(RUN, [])


def test_put_records_is_all_or_nothing(store: NodeStore) -> None:
    store.put_record(RUN, "deal", b"deal payload", secret=False)
    with pytest.raises(StoreError):
        store.put_records(
            RUN, [Record("response", b"new response"), Record("deal", b"another deal")]
        )
    assert store.records(RUN) == {"deal": b"deal payload"}


def test_delete_records(store: NodeStore, store_path: Path) -> None:
    store.put_record(RUN, "polynomial", b"DEALT-POLYNOMIAL", secret=True)
    store.put_record(RUN, "deal", b"PUBLIC-DEAL", secret=False)
    store.put_record(OTHER_RUN, "deal", b"x", secret=False)
    sealed = store._conn().execute("SELECT data FROM records WHERE key = 'polynomial'").fetchone()
    assert store.delete_records(RUN) == 2
    assert store.delete_records(RUN) == 0
    assert store.records(RUN) == {}
    assert store.runs() == [OTHER_RUN]
    on_disk = file_bytes(store_path)
    assert bytes(sealed[0]) not in on_disk
    assert b"PUBLIC-DEAL" not in on_disk


def test_sealed_record_moved_to_another_row_does_not_open(
    store: NodeStore, store_path: Path
) -> None:
    store.put_record(RUN, "a", b"secret a", secret=True)
    store.put_record(RUN, "b", b"secret b", secret=True)
    store.put_record(OTHER_RUN, "a", b"secret c", secret=True)
    with raw_db(store_path) as db:
        blob = db.execute("SELECT data FROM records WHERE run = ? AND key = 'a'", (RUN,)).fetchone()
        db.execute("UPDATE records SET data = ? WHERE run = ? AND key = 'b'", (blob[0], RUN))
        db.execute("UPDATE records SET data = ? WHERE run = ? AND key = 'a'", (blob[0], OTHER_RUN))
    with pytest.raises(SealError):
        store.records(RUN)
    with pytest.raises(SealError):
        store.records(OTHER_RUN)


def test_sealed_blob_does_not_open_in_another_store(tmp_path: Path) -> None:
    # Same TEE key, two stores: the per-store salt and store id separate them.
    with (
        NodeStore(tmp_path / "a.db", tee_sealer()) as a,
        NodeStore(tmp_path / "b.db", tee_sealer()) as b,
    ):
        a.put_record(RUN, "k", b"secret", secret=True)
        b.put_record(RUN, "k", b"other", secret=True)
        blob = a._conn().execute("SELECT data FROM records").fetchone()[0]
        b._conn().execute("UPDATE records SET data = ?", (blob,))
        with pytest.raises(SealError):
            b.records(RUN)


# --- nothing secret in plaintext on disk -----------------------------------------------------


def test_no_plaintext_secret_on_disk(store: NodeStore, store_path: Path) -> None:
    identity, dkg = b"IDENTITY-SEED-32-BYTES-EXACTLY!!", b"DKG-SEED-32-BYTES-EXACTLY-HERE!!"
    share0, share1 = b"SHARE-OF-EPOCH-ZERO-0123456789", b"SHARE-OF-EPOCH-ONE-0123456789"
    store.save_identity(identity, dkg)
    store.put_record(RUN, "polynomial", b"DEALT-POLYNOMIAL-COEFFICIENTS", secret=True)
    store.put_record(RUN, "share", b"NEW-SHARE-FROM-THE-RUN", secret=True)
    store.put_record(RUN, "deal", b"PUBLIC-DEAL-BUNDLE", secret=False)
    store.switch_epoch(0, b"EPOCH-CERT-0", share0, b"POLY-0", b"COMMITTEE-0")
    store.append_link("membership", 0, b"MEMBERSHIP-CERT-0")
    store.switch_epoch(1, b"EPOCH-CERT-1", share1, b"POLY-1", b"COMMITTEE-1")
    for state in ("open", "closed"):
        on_disk = file_bytes(store_path)
        assert b"PUBLIC-DEAL-BUNDLE" in on_disk and b"EPOCH-CERT-1" in on_disk  # the grep works
        for secret in (identity, dkg, share0, share1, b"DEALT-POLYNOMIAL", b"NEW-SHARE-FROM"):
            assert secret not in on_disk, (state, secret)
        store.close()


# --- property: arbitrary bytes round-trip -------------------------------------------------------

record_keys = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.binary(min_size=1, max_size=64),
        st.dictionaries(record_keys, st.tuples(st.binary(max_size=300), st.booleans()), max_size=4),
        min_size=1,
        max_size=3,
    )
)
def test_records_round_trip_arbitrary_bytes(
    runs: dict[bytes, dict[str, tuple[bytes, bool]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "node.db"
        with NodeStore(path, tee_sealer()) as store:
            for run, records in runs.items():
                for key, (data, secret) in records.items():
                    store.put_record(run, key, data, secret=secret)
                    store.put_record(run, key, data, secret=secret)
        with NodeStore(path, tee_sealer(), create=False) as store:
            for run, records in runs.items():
                assert store.records(run) == {k: d for k, (d, _) in records.items()}
            assert store.runs() == sorted(r for r, recs in runs.items() if recs)
