"""A node's persistence loop, run as a subprocess that the crash test kills with SIGKILL.

Each iteration does what a node does around one reshare: persist the step's
records (one transaction), append the membership link, switch the epoch,
delete the share of two epochs ago and the records of an old run, and log to
the audit log in a group. It resumes from whatever the store holds, so a run
killed at any point and restarted carries on, as a restarted node would.
It prints each epoch it completed.

Usage: ``python store_crash_worker.py STORE_PATH [EPOCHS]``
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from kms.store import NodeStore, TEESealer

KEY = bytes(range(32))


@dataclass(frozen=True)
class Record:
    key: str
    data: bytes
    secret: bool


def run_id(epoch: int) -> bytes:
    return b"reshare-run-%08d" % epoch


def cert(epoch: int) -> bytes:
    return b"epoch-certificate-%d" % epoch


def member(epoch: int) -> bytes:
    return b"membership-certificate-%d" % epoch


def share(epoch: int) -> bytes:
    return b"share-%d-" % epoch + bytes([epoch % 256]) * 32


def poly(epoch: int) -> bytes:
    return b"public-polynomial-%d" % epoch


def committee(epoch: int) -> bytes:
    return b"committee-%d" % epoch


def records(epoch: int) -> dict[str, tuple[bytes, bool]]:
    return {
        "polynomial": (b"dealt-polynomial-%d" % epoch, True),
        "deal": (b"deal-bundle-%d" % epoch, False),
        "response": (b"response-bundle-%d" % epoch, False),
    }


def open_store(path: str) -> NodeStore:
    return NodeStore(path, TEESealer(lambda: KEY))


def main(path: str, epochs: int) -> None:
    with open_store(path) as store:
        current = store.current_epoch()
        epoch = 0 if current is None else current.epoch + 1
        while epoch < epochs:
            run = run_id(epoch)
            step = records(epoch)
            store.put_records(
                run, [Record(k, *step[k]) for k in ("polynomial", "deal")]
            )  # before "sending" the deal
            store.put_record(run, "response", step["response"][0], secret=False)
            if epoch > 0:
                store.append_link("membership", epoch - 1, member(epoch - 1))
            store.switch_epoch(epoch, cert(epoch), share(epoch), poly(epoch), committee(epoch))
            for old in store.retained_shares():
                if old < epoch - 1:
                    store.delete_retained_share(old)
            for finished in store.runs():
                if epoch >= 1 and finished < run_id(epoch - 1):
                    store.delete_records(finished)
            store.audit_append_many(
                [
                    {"event": "epoch-switch", "epoch": epoch},
                    {"event": "old-share-deleted", "epoch": epoch - 2},
                ]
            )
            print(epoch, flush=True)
            epoch += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10**9)
