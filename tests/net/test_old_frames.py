"""Frames recorded from nodes of the previous wire version (``data/e1d36d0-frames.json``).

Each is refused by its version alone, whatever follows it: a node of this version
never parses a payload of the previous one.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from net.codec import (
    ENVELOPE_VERSION,
    EnvelopeError,
    EnvelopeFailure,
    decode_envelope,
    open_envelope,
)

FRAMES = json.loads((Path(__file__).parent / "data" / "e1d36d0-frames.json").read_text())


def test_the_recording_covers_the_protocols() -> None:
    labels = {f["label"] for f in FRAMES}
    assert {
        "bcast/payload:dkg/deal",
        "bcast/payload:member/ballot",
        "chain/request",
        "chain/update",
        "kms/policy-digest",
        "kms/policy-announce",
        "reshare/ack",
    } <= labels


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f["label"])
def test_a_version_1_frame_is_refused_as_unknown_version(frame: dict[str, object]) -> None:
    wire = bytes.fromhex(str(frame["frame"]))
    version, kind, _epoch, sender, _payload = msgpack.unpackb(wire)
    assert (version, kind, sender) == (1, frame["kind"], frame["sender"])
    assert ENVELOPE_VERSION != 1
    for decode in (decode_envelope, open_envelope):
        with pytest.raises(EnvelopeError) as caught:
            decode(wire)
        assert caught.value.reason is EnvelopeFailure.UNKNOWN_VERSION
