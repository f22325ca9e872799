"""Sealers: the blob format, tamper detection, passphrase sources, wrong passphrase at open."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from store_helpers import StoreFactory, raw_db, tee_sealer

from kms.store import NodeStore, PassphraseSealer, Sealer, SealError, StoreError, TEESealer
from kms.store.sealer import BLOB_MAGIC, HEADER_MAGIC, NONCE_SIZE

PASSPHRASE = b"correct horse battery staple"


def opened(sealer: PassphraseSealer | TEESealer) -> PassphraseSealer | TEESealer:
    sealer.open(sealer.create_header())
    return sealer


@pytest.fixture(scope="module")
def passphrase_sealer() -> PassphraseSealer:
    sealer = PassphraseSealer(PASSPHRASE)
    sealer.open(sealer.create_header())
    return sealer


@pytest.fixture(params=["passphrase", "tee"])
def sealer(request: pytest.FixtureRequest, passphrase_sealer: PassphraseSealer) -> Sealer:
    if request.param == "passphrase":
        return passphrase_sealer
    return opened(tee_sealer())


def write_secret(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


# --- blob format and tamper detection ----------------------------------------------------


def test_sealers_implement_the_protocol(sealer: Sealer) -> None:
    assert isinstance(sealer, Sealer)
    assert sealer.name in ("passphrase-scrypt", "tee-key")


@pytest.mark.parametrize("plaintext", [b"", b"x", bytes(range(256)) * 4])
def test_seal_unseal_round_trip(sealer: Sealer, plaintext: bytes) -> None:
    blob = sealer.seal(plaintext, b"row")
    assert sealer.unseal(blob, b"row") == plaintext


def test_blob_format_is_versioned_with_a_fresh_nonce(sealer: Sealer) -> None:
    a, b = sealer.seal(b"secret", b"row"), sealer.seal(b"secret", b"row")
    assert a.startswith(BLOB_MAGIC) and b.startswith(BLOB_MAGIC)
    assert len(a) == len(BLOB_MAGIC) + NONCE_SIZE + len(b"secret") + 16
    assert a[4:16] != b[4:16]
    assert a != b


def test_tampering_with_any_byte_is_detected(sealer: Sealer) -> None:
    blob = sealer.seal(b"a share of the master secret", b"row")
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(SealError):
            sealer.unseal(bytes(bad), b"row")


@pytest.mark.parametrize("cut", [0, 4, 16, 31])
def test_truncated_blob_is_refused(sealer: Sealer, cut: int) -> None:
    with pytest.raises(SealError):
        sealer.unseal(sealer.seal(b"x" * 8, b"row")[:cut], b"row")


def test_other_aad_is_refused(sealer: Sealer) -> None:
    blob = sealer.seal(b"secret", b"table=shares;epoch=1")
    with pytest.raises(SealError):
        sealer.unseal(blob, b"table=shares;epoch=2")


def test_other_key_is_refused() -> None:
    header = PassphraseSealer(b"one").create_header()
    one, two = PassphraseSealer(b"one"), PassphraseSealer(b"two")
    one.open(header)
    two.open(header)
    with pytest.raises(SealError):
        two.unseal(one.seal(b"secret", b"row"), b"row")


def test_same_passphrase_and_header_give_the_same_key() -> None:
    header = PassphraseSealer(b"pw").create_header()
    first, later = PassphraseSealer(b"pw"), PassphraseSealer(b"pw")
    first.open(header)
    later.open(header)
    assert later.unseal(first.seal(b"secret", b"row"), b"row") == b"secret"


def test_passphrase_header_records_scrypt_parameters_and_salt() -> None:
    header = PassphraseSealer(b"pw").create_header()
    assert header.startswith(HEADER_MAGIC)
    fields = json.loads(header[len(HEADER_MAGIC) :])
    assert fields == {
        "sealer": "passphrase-scrypt",
        "kdf": "scrypt",
        "n": 2**15,
        "r": 8,
        "p": 1,
        "salt": fields["salt"],
    }
    assert len(bytes.fromhex(fields["salt"])) == 16
    assert PassphraseSealer(b"pw").create_header() != header  # a fresh salt each time


@pytest.mark.parametrize(
    "change",
    [
        {"n": 2**10},
        {"n": 2**15 + 1},
        {"n": 2**24},
        {"r": 0},
        {"p": 100},
        {"n": True},
        {"kdf": "pbkdf2"},
        {"salt": "00"},
        {"salt": "zz" * 16},
        {"sealer": "tee-key"},
    ],
)
def test_bad_passphrase_header_is_refused(change: dict[str, object]) -> None:
    fields = json.loads(PassphraseSealer(b"pw").create_header()[len(HEADER_MAGIC) :])
    fields.update(change)
    with pytest.raises(SealError):
        PassphraseSealer(b"pw").open(HEADER_MAGIC + json.dumps(fields).encode())


@pytest.mark.parametrize(
    "header", [b"", b"QKSH2{}", HEADER_MAGIC + b"not json", HEADER_MAGIC + b"[]"]
)
def test_malformed_header_is_refused(header: bytes) -> None:
    with pytest.raises(SealError):
        tee_sealer().open(header)


def test_unopened_sealer_refuses_to_seal() -> None:
    with pytest.raises(SealError, match="not open"):
        PassphraseSealer(b"pw").seal(b"x", b"row")
    with pytest.raises(SealError, match="not open"):
        tee_sealer().unseal(b"x", b"row")


def test_a_sealer_serves_one_store() -> None:
    sealer = tee_sealer()
    header = sealer.create_header()
    sealer.open(header)
    sealer.open(header)  # the same parameters again: fine
    with pytest.raises(SealError, match="another store"):
        sealer.open(sealer.create_header())


def test_sealer_repr_is_redacted() -> None:
    sealers = [PassphraseSealer(PASSPHRASE), opened(PassphraseSealer(PASSPHRASE)), tee_sealer()]
    for s in sealers:
        text = repr(s)
        assert "<redacted>" in text
        assert "horse" not in text and PASSPHRASE.hex() not in text


# --- the TEE sealer ------------------------------------------------------------------------


def test_tee_sealer_calls_get_key_once_and_binds_the_key_to_the_store() -> None:
    calls: list[int] = []

    def get_key() -> bytes:
        calls.append(1)
        return b"k" * 32

    a, b = TEESealer(get_key), TEESealer(get_key)
    a.open(a.create_header())
    b.open(b.create_header())
    blob = a.seal(b"secret", b"row")
    a.unseal(blob, b"row")
    assert len(calls) == 2  # once per open, never per blob
    with pytest.raises(SealError):  # same TEE key, other store salt: another sealing key
        b.unseal(blob, b"row")


@pytest.mark.parametrize("key", [b"", b"k" * 31, b"k" * 33])
def test_tee_key_must_be_32_bytes(key: bytes) -> None:
    sealer = TEESealer(lambda: key)
    with pytest.raises(SealError, match="32 bytes"):
        sealer.open(sealer.create_header())


def test_tee_sealer_needs_a_callable() -> None:
    with pytest.raises(TypeError):
        TEESealer(b"k" * 32)  # type: ignore[arg-type]


# --- passphrase sources ---------------------------------------------------------------------


def test_empty_passphrase_is_refused() -> None:
    with pytest.raises(SealError, match="empty"):
        PassphraseSealer(b"")


def test_passphrase_must_be_bytes() -> None:
    with pytest.raises(TypeError):
        PassphraseSealer("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "passphrase"),
    [
        (b"pw", b"pw"),
        (b"pw\n", b"pw"),
        (b"pw\r\n", b"pw"),
        (b"pw\n\n", b"pw\n"),  # one trailing newline only
        (b" pw ", b" pw "),
    ],
)
def test_passphrase_file_strips_one_trailing_newline(
    tmp_path: Path, content: bytes, passphrase: bytes
) -> None:
    from_file = PassphraseSealer.from_file(write_secret(tmp_path / "pass", content))
    direct = PassphraseSealer(passphrase)
    header = direct.create_header()
    from_file.open(header)
    direct.open(header)
    assert direct.unseal(from_file.seal(b"x", b"row"), b"row") == b"x"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o602, 0o620, 0o610])
def test_passphrase_file_open_to_group_or_other_is_refused(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "pass", b"pw\n", mode)
    with pytest.raises(SealError, match="chmod 600"):
        PassphraseSealer.from_file(path)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_passphrase_file_private_to_its_owner_is_accepted(tmp_path: Path, mode: int) -> None:
    PassphraseSealer.from_file(write_secret(tmp_path / "pass", b"pw\n", mode))


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_empty_passphrase_file_is_refused(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(SealError, match="empty"):
        PassphraseSealer.from_file(write_secret(tmp_path / "pass", content))


def test_missing_passphrase_file_or_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SealError, match="cannot read"):
        PassphraseSealer.from_file(tmp_path / "missing")
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(SealError, match="not a regular file"):
        PassphraseSealer.from_file(directory)


def test_passphrase_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMS_TEST_PASSPHRASE", "pw from env")
    from_env = PassphraseSealer.from_env("KMS_TEST_PASSPHRASE")
    direct = PassphraseSealer(b"pw from env")
    header = direct.create_header()
    from_env.open(header)
    direct.open(header)
    assert direct.unseal(from_env.seal(b"x", b"row"), b"row") == b"x"
    assert "pw from env" not in repr(from_env)


def test_passphrase_environment_variable_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KMS_TEST_PASSPHRASE", raising=False)
    with pytest.raises(SealError, match="not set"):
        PassphraseSealer.from_env("KMS_TEST_PASSPHRASE")
    with pytest.raises(SealError, match="empty"):
        PassphraseSealer.from_env("KMS_TEST_PASSPHRASE", {"KMS_TEST_PASSPHRASE": ""})
    PassphraseSealer.from_env("X", {"X": "pw"})


# --- sealers in a store ---------------------------------------------------------------------


def test_store_with_passphrase_reopens_with_the_same_passphrase(
    open_store: StoreFactory, store_path: Path
) -> None:
    with NodeStore(store_path, PassphraseSealer(PASSPHRASE)) as store:
        store.save_identity(b"i" * 32, b"d" * 32)
    reopened = open_store(PassphraseSealer(PASSPHRASE))
    assert reopened.load_identity() == (b"i" * 32, b"d" * 32)
    with raw_db(store_path) as db:
        header = db.execute("SELECT value FROM meta WHERE name = 'store.sealer'").fetchone()[0]
    assert json.loads(header[len(HEADER_MAGIC) :])["n"] == 2**15


def test_wrong_passphrase_fails_at_open(store_path: Path) -> None:
    NodeStore(store_path, PassphraseSealer(PASSPHRASE)).close()
    with pytest.raises(SealError, match="wrong passphrase"):
        NodeStore(store_path, PassphraseSealer(b"not the passphrase"))


def test_wrong_tee_key_fails_at_open(store_path: Path) -> None:
    NodeStore(store_path, tee_sealer(b"a" * 32)).close()
    with pytest.raises(SealError, match="wrong passphrase \\(or sealing key\\)"):
        NodeStore(store_path, tee_sealer(b"b" * 32))


def test_other_kind_of_sealer_is_refused_at_open(store_path: Path) -> None:
    NodeStore(store_path, tee_sealer()).close()
    with pytest.raises(SealError, match="sealed with 'tee-key'"):
        NodeStore(store_path, PassphraseSealer(PASSPHRASE))


def test_edited_check_value_fails_at_open(store_path: Path) -> None:
    NodeStore(store_path, tee_sealer()).close()
    with raw_db(store_path) as db:
        db.execute("UPDATE meta SET value = x'00' WHERE name = 'store.check'")
    with pytest.raises(SealError, match="wrong passphrase"):
        NodeStore(store_path, tee_sealer())


def test_store_refuses_a_non_sealer(store_path: Path) -> None:
    with pytest.raises(TypeError):
        NodeStore(store_path, object())  # type: ignore[arg-type]
    assert not os.path.exists(store_path)


def test_failed_open_leaves_no_connection(store_path: Path) -> None:
    NodeStore(store_path, tee_sealer(b"a" * 32)).close()
    with pytest.raises(StoreError):
        NodeStore(store_path, tee_sealer(b"b" * 32))
    # filterwarnings=error: an unclosed connection would fail the run with a ResourceWarning
