"""A genesis DKG whose every node holds each received frame 10 ms (``net.delay``), as the
fault lab's scale runs do: four ``NodeService`` instances over ``net.memory`` on trio's
MockClock certify epoch 0 in the first attempt, every member with a share."""

from __future__ import annotations

from pathlib import Path

from service_genesis import run_genesis

from mpc.dkg.schedule import Schedule
from net.delay import DelayedTransport

N, T, DELTA, START = 4, 3, 0.25, 5.0


def test_a_dkg_with_delayed_receipt_certifies_in_its_first_attempt(tmp_path: Path) -> None:
    first = Schedule.default(START, N, T, delta=DELTA)
    _, done_at = run_genesis(
        tmp_path,
        "delayed-links",
        N,
        T,
        delta=DELTA,
        start=START,
        wrap=lambda i, inner: DelayedTransport(inner, 0.010),
    )
    assert max(done_at.values()) < first.end, (done_at, first.end)
