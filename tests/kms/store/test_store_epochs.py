"""The certificate chain, epoch switches, retained shares and their deletion."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from store_helpers import StoreFactory, file_bytes, raw_db, tee_sealer

from kms.store import EpochRecord, NodeStore, SealError, StoreError, TEESealer


def cert(epoch: int) -> bytes:
    return b"epoch-certificate-%d" % epoch


def member(epoch: int) -> bytes:
    return b"membership-certificate-%d" % epoch


def share(epoch: int) -> bytes:
    return b"share-of-epoch-%d" % epoch


def switch(store: NodeStore, epoch: int, *, with_share: bool = True) -> None:
    if epoch > 0:
        store.append_link("membership", epoch - 1, member(epoch - 1))
    store.switch_epoch(
        epoch,
        cert(epoch),
        share(epoch) if with_share else None,
        b"poly-%d" % epoch,
        b"committee-%d" % epoch,
    )


# --- the chain -----------------------------------------------------------------------------


def test_chain_alternates_epoch_and_membership_links(store: NodeStore) -> None:
    assert store.chain() == []
    assert store.append_link("epoch", 0, cert(0)) == 0
    assert store.append_link("membership", 0, member(0)) == 1
    assert store.append_link("epoch", 1, cert(1)) == 2
    assert store.chain() == [
        ("epoch", 0, cert(0)),
        ("membership", 0, member(0)),
        ("epoch", 1, cert(1)),
    ]


def test_chain_may_start_at_a_checkpoint(store: NodeStore) -> None:
    store.append_link("epoch", 7, cert(7))
    store.append_link("membership", 7, member(7))
    assert [e for _, e, _ in store.chain()] == [7, 7]


@pytest.mark.parametrize(
    ("links", "bad"),
    [
        ([], ("membership", 0)),
        ([("epoch", 0)], ("epoch", 1)),
        ([("epoch", 0)], ("membership", 1)),
        ([("epoch", 0), ("membership", 0)], ("epoch", 2)),
        ([("epoch", 0), ("membership", 0)], ("membership", 1)),
        ([("epoch", 3)], ("epoch", 2)),
    ],
    ids=[
        "the chain cannot start with a membership link",
        "two epoch links in a row",
        "a membership link for a later epoch",
        "an epoch is skipped",
        "two membership links in a row",
        "an epoch goes backwards",
    ],
)
def test_link_out_of_order_is_refused(
    store: NodeStore, links: list[tuple[str, int]], bad: tuple[str, int]
) -> None:
    for kind, epoch in links:
        store.append_link(kind, epoch, cert(epoch) if kind == "epoch" else member(epoch))
    with pytest.raises(StoreError, match=r"out of order|starts with"):
        store.append_link(bad[0], bad[1], b"link")
    assert len(store.chain()) == len(links)


def test_link_append_is_idempotent_and_refuses_a_fork(store: NodeStore) -> None:
    store.append_link("epoch", 0, cert(0))
    store.append_link("membership", 0, member(0))
    assert store.append_link("epoch", 0, cert(0)) == 0
    assert store.append_link("membership", 0, member(0)) == 1
    with pytest.raises(StoreError, match="fork"):
        store.append_link("membership", 0, b"a different membership certificate")
    assert len(store.chain()) == 2


@pytest.mark.parametrize(
    ("kind", "epoch", "data", "error"),
    [
        ("policy", 0, b"x", ValueError),
        ("epoch", -1, b"x", ValueError),
        ("epoch", True, b"x", TypeError),
        ("epoch", 0, b"", ValueError),
        ("epoch", 0, "x", TypeError),
    ],
)
def test_append_link_checks_its_arguments(
    store: NodeStore, kind: str, epoch: object, data: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        store.append_link(kind, epoch, data)  # type: ignore[arg-type]


def test_chain_is_append_only_even_for_raw_sql(store: NodeStore, store_path: Path) -> None:
    store.append_link("epoch", 0, cert(0))
    with raw_db(store_path) as db, pytest.raises(Exception, match="append-only"):
        db.execute("DELETE FROM chain")


# --- epoch switches --------------------------------------------------------------------------


def test_first_switch_and_reopen(store: NodeStore, open_store: StoreFactory) -> None:
    assert store.current_epoch() is None
    assert store.retained_shares() == []
    switch(store, 0)
    expected = EpochRecord(0, cert(0), share(0), b"poly-0", b"committee-0")
    assert store.current_epoch() == expected
    store.close()
    assert open_store().current_epoch() == expected


def test_switch_retains_the_previous_share(store: NodeStore) -> None:
    switch(store, 0)
    switch(store, 1)
    switch(store, 2)
    current = store.current_epoch()
    assert current is not None and current.epoch == 2 and current.share == share(2)
    assert store.retained_shares() == [0, 1]
    assert store.retained_share(1) == share(1)
    assert [k for k, _, _ in store.chain()] == ["epoch", "membership"] * 2 + ["epoch"]


def test_switch_without_a_share(store: NodeStore) -> None:
    switch(store, 0)
    switch(store, 1, with_share=False)  # the node left the committee
    current = store.current_epoch()
    assert current is not None and current.share is None
    assert store.retained_shares() == [0]


def test_epoch_record_repr_is_redacted(store: NodeStore) -> None:
    switch(store, 0)
    text = repr(store.current_epoch())
    assert text == "EpochRecord(epoch=0, share=<redacted>)"
    assert "share-of-epoch" not in text


def test_repeating_the_same_switch_is_a_no_op(store: NodeStore) -> None:
    switch(store, 0)
    store.switch_epoch(0, cert(0), share(0), b"poly-0", b"committee-0")
    assert len(store.chain()) == 1


@pytest.mark.parametrize(
    "args",
    [
        (0, cert(0), b"another share", b"poly-0", b"committee-0"),
        (0, cert(0), None, b"poly-0", b"committee-0"),
        (0, cert(0), share(0), b"another poly", b"committee-0"),
        (0, b"another cert", share(0), b"poly-0", b"committee-0"),
    ],
)
def test_switch_to_the_current_epoch_with_other_data_is_refused(
    store: NodeStore, args: tuple[int, bytes, bytes | None, bytes, bytes]
) -> None:
    switch(store, 0)
    with pytest.raises(StoreError, match="not after the current epoch"):
        store.switch_epoch(*args)
    assert store.current_epoch() == EpochRecord(0, cert(0), share(0), b"poly-0", b"committee-0")


def test_switch_backwards_is_refused(store: NodeStore) -> None:
    switch(store, 0)
    switch(store, 1)
    with pytest.raises(StoreError, match="not after the current epoch 1"):
        store.switch_epoch(0, cert(0), share(0), b"poly-0", b"committee-0")


def test_switch_to_a_link_already_in_the_chain(store: NodeStore) -> None:
    switch(store, 0)
    store.append_link("membership", 0, member(0))
    store.append_link("epoch", 1, cert(1))  # learned from the chain before the switch
    store.switch_epoch(1, cert(1), share(1), b"poly-1", b"committee-1")
    assert len(store.chain()) == 3
    store.append_link("membership", 1, member(1))
    store.append_link("epoch", 2, cert(2))
    with pytest.raises(StoreError, match="another certificate"):
        store.switch_epoch(2, b"a forked certificate", share(2), b"p", b"c")
    assert store.current_epoch().epoch == 1  # type: ignore[union-attr]


def test_switch_to_an_epoch_behind_the_chain_head_is_refused(store: NodeStore) -> None:
    switch(store, 0)
    for link in [("membership", 0, member(0)), ("epoch", 1, cert(1)), ("membership", 1, member(1))]:
        store.append_link(*link)
    store.append_link("epoch", 2, cert(2))
    with pytest.raises(StoreError, match="not the latest epoch"):
        store.switch_epoch(1, cert(1), share(1), b"poly-1", b"committee-1")


def test_switch_out_of_chain_order_is_refused(store: NodeStore) -> None:
    switch(store, 0)
    with pytest.raises(StoreError, match="out of order"):  # M₀ missing
        store.switch_epoch(1, cert(1), share(1), b"poly-1", b"committee-1")
    assert store.current_epoch() is not None
    assert store.current_epoch().epoch == 0  # type: ignore[union-attr]


class FailingSealer(TEESealer):
    """Seals until ``fail`` is set: a crash in the middle of a switch, as seen by SQLite."""

    __slots__ = ("fail",)

    def __init__(self) -> None:
        super().__init__(lambda: bytes(32))
        self.fail = False

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        if self.fail:
            raise RuntimeError("killed while sealing the new share")
        return super().seal(plaintext, aad)


def test_switch_is_one_transaction(open_store: StoreFactory) -> None:
    sealer = FailingSealer()
    store = open_store(sealer)
    switch(store, 0)
    store.append_link("membership", 0, member(0))
    chain_before = store.chain()
    sealer.fail = True
    with pytest.raises(RuntimeError):
        store.switch_epoch(1, cert(1), share(1), b"poly-1", b"committee-1")
    # The epoch link was appended and the epoch row written before the failure: both rolled back.
    assert store.chain() == chain_before
    assert store.current_epoch() == EpochRecord(0, cert(0), share(0), b"poly-0", b"committee-0")
    assert store.retained_shares() == []
    assert store._conn().execute("SELECT count(*) FROM epochs").fetchone()[0] == 1
    sealer.fail = False
    store.switch_epoch(1, cert(1), share(1), b"poly-1", b"committee-1")
    assert store.retained_shares() == [0]


def test_share_moved_between_epochs_does_not_open(store: NodeStore, store_path: Path) -> None:
    switch(store, 0)
    switch(store, 1)
    with raw_db(store_path) as db:
        old = db.execute("SELECT sealed FROM shares WHERE epoch = 0").fetchone()[0]
        db.execute("UPDATE shares SET sealed = ? WHERE epoch = 1", (old,))
    with pytest.raises(SealError):
        store.current_epoch()


# --- set_share ---------------------------------------------------------------------------------


def test_set_share_fills_in_the_current_epoch_once(store: NodeStore) -> None:
    switch(store, 0, with_share=False)
    store.set_share(0, share(0))
    store.set_share(0, share(0))
    assert store.current_epoch() == EpochRecord(0, cert(0), share(0), b"poly-0", b"committee-0")
    with pytest.raises(StoreError, match="refusing to replace"):
        store.set_share(0, b"another share")
    with pytest.raises(StoreError, match="not the current epoch"):
        store.set_share(1, share(1))


# --- retained shares ---------------------------------------------------------------------------


def test_delete_retained_share(store: NodeStore, store_path: Path) -> None:
    switch(store, 0)
    switch(store, 1)
    sealed = store._conn().execute("SELECT sealed FROM shares WHERE epoch = 0").fetchone()[0]
    assert bytes(sealed) in file_bytes(store_path)
    store.delete_retained_share(0)
    assert store.retained_shares() == []
    assert bytes(sealed) not in file_bytes(store_path)
    with pytest.raises(StoreError, match="no retained share"):
        store.delete_retained_share(0)
    with pytest.raises(StoreError, match="no retained share"):
        store.retained_share(0)
    current = store.current_epoch()
    assert current is not None and current.share == share(1)


def test_current_share_cannot_be_deleted(store: NodeStore) -> None:
    with pytest.raises(StoreError, match="older than the current"):
        store.delete_retained_share(0)
    switch(store, 0)
    with pytest.raises(StoreError, match="older than the current"):
        store.delete_retained_share(0)
    with pytest.raises(StoreError, match="older than the current"):
        store.delete_retained_share(5)
    with pytest.raises(StoreError, match="no retained share"):
        store.retained_share(0)
    assert store.current_epoch() is not None


def test_retained_share_survives_reopen(store: NodeStore, open_store: StoreFactory) -> None:
    switch(store, 0)
    switch(store, 1)
    store.close()
    reopened = open_store(tee_sealer())
    assert reopened.retained_shares() == [0]
    assert reopened.retained_share(0) == share(0)


def test_deletion_does_not_wait_for_a_reader_in_another_process(
    store: NodeStore, store_path: Path
) -> None:
    switch(store, 0)
    switch(store, 1)
    switch(store, 2)
    with raw_db(store_path) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM chain").fetchone()  # holds a snapshot
        started = time.monotonic()
        store.delete_retained_share(0)
        assert time.monotonic() - started < 1.0
        reader.execute("COMMIT")
    assert store.retained_shares() == [1]
    sealed = store._conn().execute("SELECT sealed FROM shares WHERE epoch = 1").fetchone()[0]
    store.delete_retained_share(1)  # no reader now: the WAL is truncated
    assert bytes(sealed) not in file_bytes(store_path)
