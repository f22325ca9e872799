"""The hash-chained audit log: encoding, grouping, and detection of edits made to the file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from store_helpers import StoreFactory, raw_db

from kms.store import ZERO_HASH, AuditChainBroken, NodeStore, canonical_record


def release(n: int) -> dict[str, str | int]:
    return {
        "event": "key-release",
        "app_id": f"app-{n % 3}",
        "mrtd": f"{n:096x}",
        "time": 1_700_000_000 + n,
        "epoch": 4,
    }


@pytest.fixture
def logged(store: NodeStore) -> NodeStore:
    """A store whose log holds five entries, then closed so the file can be edited."""
    store.audit_append_many([release(n) for n in range(5)])
    store.audit_verify()
    return store


def test_canonical_json_sorts_keys_without_whitespace() -> None:
    assert canonical_record({"b": 1, "a": "x", "é": "ü"}) == '{"a":"x","b":1,"é":"ü"}'.encode()


def test_hash_chain_is_sha256_of_prev_and_record(store: NodeStore) -> None:
    assert store.audit_head() == (0, ZERO_HASH)
    h1 = store.audit_append(release(0))
    h2 = store.audit_append(release(1))
    first = hashlib.sha256(ZERO_HASH + canonical_record(release(0))).digest()
    assert h1 == first
    assert h2 == hashlib.sha256(first + canonical_record(release(1))).digest()
    assert store.audit_head() == (2, h2)
    entries = store.audit_entries()
    assert [e.position for e in entries] == [0, 1]
    assert entries[1].prev_hash == h1 and entries[1].hash == h2
    assert json.loads(entries[0].entry) == release(0)
    assert store.audit_entries(start=1, limit=5) == entries[1:]
    assert store.audit_entries(limit=0) == []


def test_group_append_equals_one_by_one(open_store: StoreFactory, tmp_path: Path) -> None:
    grouped, single = open_store(path=tmp_path / "a.db"), open_store(path=tmp_path / "b.db")
    head = grouped.audit_append_many([release(n) for n in range(4)])
    for n in range(4):
        last = single.audit_append(release(n))
    assert head == last
    assert grouped.audit_head() == single.audit_head() == (4, head)
    assert grouped.audit_append_many([]) == head


def test_log_survives_reopen(logged: NodeStore, open_store: StoreFactory) -> None:
    head = logged.audit_head()
    logged.close()
    reopened = open_store()
    reopened.audit_verify()
    assert reopened.audit_head() == head


@pytest.mark.parametrize(
    "key",
    [
        "share",
        "secret",
        "key_material",
        "private",
        "secret_share",
        "private_key",
        "SHARE_INDEX",
        "Key-Material",
        "client_secret",
        "app_shares",
    ],
)
def test_keys_that_look_like_key_material_are_refused(store: NodeStore, key: str) -> None:
    with pytest.raises(ValueError, match="key material"):
        store.audit_append({"event": "key-release", key: "x"})
    with pytest.raises(ValueError, match="key material"):  # nothing of a group is written
        store.audit_append_many([release(0), {key: 1}])
    assert store.audit_head() == (0, ZERO_HASH)


@pytest.mark.parametrize(
    "record",
    [{"flag": True}, {"x": 1.5}, {"x": None}, {"x": b"bytes"}, {"": "x"}, {"x": "\ud800"}],
)
def test_values_must_be_str_or_int(store: NodeStore, record: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        store.audit_append(record)  # type: ignore[arg-type]
    assert store.audit_head()[0] == 0


def test_audit_log_is_append_only_even_for_raw_sql(logged: NodeStore, store_path: Path) -> None:
    logged.close()
    with raw_db(store_path) as db, pytest.raises(Exception, match="append-only"):
        db.execute("UPDATE audit SET entry = x'00' WHERE position = 1")


# --- edits made to the file (triggers dropped, as an attacker would) -----------------------------


def broken_at(store_path: Path, open_store: StoreFactory) -> AuditChainBroken:
    store = open_store()
    with pytest.raises(AuditChainBroken) as info:
        store.audit_verify()
    return info.value


def test_edited_record_is_detected(
    logged: NodeStore, store_path: Path, open_store: StoreFactory
) -> None:
    logged.close()
    forged = canonical_record({**release(2), "app_id": "app-attacker"})
    with raw_db(store_path, drop_triggers=True) as db:
        db.execute("UPDATE audit SET entry = ? WHERE position = 2", (forged,))
    error = broken_at(store_path, open_store)
    assert error.position == 2 and "edited" in str(error)


def test_deleted_record_is_detected(
    logged: NodeStore, store_path: Path, open_store: StoreFactory
) -> None:
    logged.close()
    with raw_db(store_path, drop_triggers=True) as db:
        db.execute("DELETE FROM audit WHERE position = 1")
    assert broken_at(store_path, open_store).position == 1


def test_deleted_and_renumbered_record_is_detected(
    logged: NodeStore, store_path: Path, open_store: StoreFactory
) -> None:
    logged.close()
    with raw_db(store_path, drop_triggers=True) as db:
        db.execute("DELETE FROM audit WHERE position = 1")
        db.execute("UPDATE audit SET position = position - 1 WHERE position > 1")
    error = broken_at(store_path, open_store)
    assert error.position == 1 and "link" in str(error)


def test_reordered_records_are_detected(
    logged: NodeStore, store_path: Path, open_store: StoreFactory
) -> None:
    logged.close()
    with raw_db(store_path, drop_triggers=True) as db:
        db.execute("UPDATE audit SET position = 1000 WHERE position = 3")
        db.execute("UPDATE audit SET position = 3 WHERE position = 2")
        db.execute("UPDATE audit SET position = 2 WHERE position = 1000")
    assert broken_at(store_path, open_store).position == 2


def test_removed_tail_is_detected(
    logged: NodeStore, store_path: Path, open_store: StoreFactory
) -> None:
    logged.close()
    with raw_db(store_path, drop_triggers=True) as db:
        db.execute("DELETE FROM audit WHERE position >= 3")
    error = broken_at(store_path, open_store)
    assert error.position == 3 and "removed from the end" in str(error)


def test_entry_appended_outside_the_store_is_detected(
    logged: NodeStore, store_path: Path, open_store: StoreFactory
) -> None:
    head = logged.audit_head()[1]
    logged.close()
    entry = canonical_record(release(99))
    with raw_db(store_path) as db:
        db.execute(
            "INSERT INTO audit VALUES (5, ?, ?, ?)",
            (entry, head, hashlib.sha256(head + entry).digest()),
        )
    error = broken_at(store_path, open_store)
    assert error.position == 5 and "outside the store" in str(error)


def test_rewrite_with_recomputed_hashes_is_detected(
    logged: NodeStore, store_path: Path, open_store: StoreFactory
) -> None:
    logged.close()
    with raw_db(store_path, drop_triggers=True) as db:
        rows = db.execute("SELECT position, entry FROM audit ORDER BY position").fetchall()
        prev = ZERO_HASH
        for position, entry in rows:
            if position == 1:
                entry = canonical_record({**release(1), "app_id": "app-attacker"})
            digest = hashlib.sha256(prev + entry).digest()
            db.execute(
                "UPDATE audit SET entry = ?, prev_hash = ?, hash = ? WHERE position = ?",
                (entry, prev, digest, position),
            )
            prev = digest
    assert "sealed head" in str(broken_at(store_path, open_store))


def test_tampered_sealed_head_is_detected(
    logged: NodeStore, store_path: Path, open_store: StoreFactory
) -> None:
    logged.close()
    with raw_db(store_path) as db:
        db.execute("UPDATE meta SET value = x'00' WHERE name = 'store.audit_head'")
    assert broken_at(store_path, open_store).position == 0


def test_a_release_records_its_nonce_and_audit_records_together_or_not_at_all(
    store: NodeStore,
) -> None:
    head = store.record_release("nonce/01", b"\x00" * 8, [release(0), release(1)])
    assert store.get_meta("nonce/01") == b"\x00" * 8
    assert store.audit_head() == (2, head)
    # A record that looks like key material refuses the whole group: no nonce either.
    with pytest.raises(ValueError):
        store.record_release("nonce/02", b"\x01" * 8, [release(2), {"share": "00"}])
    assert store.get_meta("nonce/02") is None
    assert store.audit_head() == (2, head)
    store.audit_verify()
