"""Group commit of key releases' bookkeeping: many releases, one transaction, one fsync.

Every key release (and app-key certificate) records its nonce and its audit
records before it is answered (``kms.node.keyrelease``). With ``synchronous=FULL``
each transaction ends in an fsync of the WAL, so one transaction per release
caps a node at one release per fsync. :class:`GroupCommit` gathers the releases
that reach their store write while a commit is under way and commits them
together (``NodeStore.record_releases``), in arrival order:

* :meth:`GroupCommit.record` returns only once the transaction holding the
  release's entries has committed, so fsynced: a crash after the answer loses
  neither the nonce (replay protection) nor the audit records. If the commit
  fails, it raises a ``StoreError`` for every release of the batch
  (``StorageFull`` when the disk is full; any other failure of the commit,
  an I/O error or an exception, is a plain ``StoreError``), and none of their
  entries is kept.
* The entries are *pending* from the call until the commit ends:
  :meth:`GroupCommit.get_meta` reads them before the store, so a second request
  with the same nonce, arriving meanwhile, finds the nonce used (and an
  identical request, answered again, waits with :meth:`GroupCommit.wait_durable`
  until the first one's entries are durable).
* One batch is committed at a time. The first release to arrive while none is
  under way leads: it commits the queue (at most ``max_batch`` releases), then
  hands the lead to the first release still queued. A release waits shielded
  from cancellation: its entries are committed whatever happens to the request
  (recording a release that is never answered is safe; the converse is not).

Where a commit runs: ``threaded=True`` runs each in a worker thread
(``trio.to_thread.run_sync``), so the event loop goes on during the fsync;
``False`` runs it on the trio thread and the loop waits for it. The default
(``None``) runs a batch of at most ``inline_max`` releases on the trio thread
and a larger one in a worker thread: the hop to a thread and back costs about
as much CPU as a small commit's own work (``bench.store_write`` measures the
three), while a large batch's commit takes long enough that the loop should
go on meanwhile. The store serialises its release writer, so commits never
share a connection. Under trio's virtual clock (``trio.testing.MockClock``,
the in-process committees' tests) the default commits on the trio thread:
there time jumps to the next timer while every task waits, a thread's fsync
included, and virtual time must stand still during a commit.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from kms.store import AuditRecord, NodeStore, ReleaseWrite, StoreError


@dataclass(eq=False)
class _Queued:
    write: ReleaseWrite
    woken: trio.Event = field(default_factory=trio.Event)
    """Set when the release is committed (or failed), or is handed the lead."""
    finished: trio.Event = field(default_factory=trio.Event)
    """Set when the release is committed (or failed)."""
    error: StoreError | None = None


class GroupCommit:
    """Commits key releases' bookkeeping in groups; answers each after its group is durable."""

    MAX_BATCH = 256
    INLINE_MAX = 4

    def __init__(
        self,
        store: NodeStore,
        *,
        threaded: bool | None = None,
        max_batch: int = MAX_BATCH,
        inline_max: int = INLINE_MAX,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._store = store
        self.threaded = threaded
        self._max_batch = max_batch
        self._inline_max = inline_max
        self._queue: deque[_Queued] = deque()
        self._pending: dict[str, tuple[bytes, _Queued]] = {}
        self._leading = False
        self.commits = 0
        """Transactions committed (or failed) so far."""
        self.committed = 0
        """Releases whose entries those transactions committed."""

    def get_meta(self, name: str) -> bytes | None:
        """A meta entry as it will be: pending in a group not yet committed, else stored."""
        pending = self._pending.get(name)
        if pending is not None:
            return pending[0]
        return self._store.get_meta(name)

    async def wait_durable(self, name: str) -> None:
        """Return once the pending entry ``name`` (if any) is committed; raise the commit's
        ``StoreError`` if it failed."""
        pending = self._pending.get(name)
        if pending is None:
            return
        queued = pending[1]
        with trio.CancelScope(shield=True):
            await queued.finished.wait()
        if queued.error is not None:
            raise queued.error

    async def record(
        self,
        name: str,
        value: bytes,
        records: Iterable[AuditRecord],
        also: Iterable[tuple[str, bytes]] = (),
    ) -> None:
        """Record one release's nonce entry, audit records and further meta entries
        (``NodeStore.record_release``'s arguments) and return once they are durable.

        The entries are pending from the call on, before its first checkpoint: the
        caller reads the nonce (:meth:`get_meta`) and calls this with nothing awaited
        in between. Raises ``ValueError`` for bad entries (nothing queued), or the
        commit's ``StoreError`` (``StorageFull``) for every release of a failed batch.
        """
        queued = _Queued(self._store.release_write(name, value, records, also))
        for n, v in ((queued.write.name, queued.write.value), *queued.write.also):
            self._pending[n] = (v, queued)
        self._queue.append(queued)
        with trio.CancelScope(shield=True):
            if self._leading:
                await queued.woken.wait()
                if not queued.finished.is_set():  # handed the lead
                    await self._lead(queued)
            else:
                await self._lead(queued)
        if queued.error is not None:
            raise queued.error

    async def _lead(self, own: _Queued) -> None:
        """Commit batches until ``own`` is committed, then hand the lead on."""
        self._leading = True
        try:
            # Let the releases already runnable reach their store write and join the batch.
            await trio.lowlevel.checkpoint()
            while not own.finished.is_set():
                await self._commit_batch()
        finally:
            self._leading = False
            if self._queue:
                self._leading = True  # the next one leads: nobody else may start
                self._queue[0].woken.set()

    async def _commit_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
        writes = [q.write for q in batch]
        error: StoreError | None = None
        threaded = self.threaded
        if threaded is None:
            threaded = len(batch) > self._inline_max and not _virtual_clock()
        try:
            if threaded:
                await trio.to_thread.run_sync(self._store.record_releases, writes)
            else:
                self._store.record_releases(writes)
        except StoreError as exc:
            error = exc
        except Exception as exc:  # the batch is refused, typed, like a failed commit
            error = StoreError(f"the release commit failed: {exc!r}")
        except BaseException as exc:
            error = StoreError(f"the release commit failed: {exc!r}")
            raise
        finally:
            self.commits += 1
            if error is None:
                self.committed += len(batch)
            for q in batch:
                q.error = error
                for n in q.write.names():
                    if n in self._pending and self._pending[n][1] is q:
                        del self._pending[n]
                q.finished.set()
                q.woken.set()


def _virtual_clock() -> bool:
    """Whether trio runs on its virtual clock (``trio.testing.MockClock``). A process
    that never imported ``trio.testing`` (which imports pytest) cannot be on it."""
    testing = sys.modules.get("trio.testing")
    return testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock)
