"""What corrupt members can certify from what honest members released.

The adversary sees everything on the wire (it is a recipient of every broadcast)
and holds the corrupt members' DKG keys, so it can decrypt their shares of every
delivered deal and sign any transcript built from any set of those deals with
them. A transcript is *certifiable* once the partials honest members released for
it, plus one per corrupt recipient, reach ``t``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mesh import Node

from mpc import hpke
from mpc.broadcast import BroadcastPayload, session_id
from mpc.cert import (
    EpochCertificate,
    EpochTranscript,
    combine_partials,
    hash_indices,
    hash_points,
    sign_partial,
)
from mpc.codec import Message
from mpc.dkg.messages import CertificatePartial, DealBundle
from mpc.dkg.session import SHARE_INFO, SharingConfig
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2, R
from mpc.math.fields import lagrange_coefficients, scalar_from_bytes
from mpc.math.vss import public_share
from mpc.secret import SecretScalar, SecretShare


@dataclass
class Wire:
    """Everything observed on the wire for one run: deals, and partials honest members sent."""

    honest: frozenset[ParticipantIndex]
    deals: dict[ParticipantIndex, DealBundle] = field(default_factory=dict)
    partials: dict[bytes, dict[ParticipantIndex, CertificatePartial]] = field(default_factory=dict)

    def observe(self, sender: ParticipantIndex, message: Message, deal_session: bytes) -> None:
        if isinstance(message, CertificatePartial) and sender in self.honest:
            by = self.partials.setdefault(message.transcript_hash, {})
            by.setdefault(sender, message)
        elif isinstance(message, BroadcastPayload) and message.header.session == deal_session:
            try:
                bundle = DealBundle.decode(message.payload)
            except ValueError:
                return
            self.deals.setdefault(ParticipantIndex(message.header.sender), bundle)

    def certifiable(self, corrupt_recipients: int, t: int) -> list[bytes]:
        """Transcript hashes for which honest partials plus every corrupt recipient reach t."""
        return sorted(h for h, by in self.partials.items() if len(by) + corrupt_recipients >= t)


def deal_session(cfg: SharingConfig) -> bytes:
    return session_id(cfg.run_id(), b"deal")


def transcript_for(
    cfg: SharingConfig, deals: Mapping[ParticipantIndex, DealBundle], qual: Iterable[int]
) -> tuple[EpochTranscript, list[G2]]:
    q = sorted(int(i) for i in qual)
    weights = [1] * len(q) if cfg.kind == "dkg" else lagrange_coefficients(q, 0)
    points = {d: [G2.from_bytes(c) for c in deals[ParticipantIndex(d)].commitments] for d in q}
    poly = [G2.msm([points[d][k] for d in q], weights) for k in range(cfg.threshold)]
    tr = EpochTranscript(
        kind=cfg.kind,
        epoch=cfg.epoch,
        attempt=cfg.attempt,
        mpk=poly[0].to_bytes(),
        threshold=cfg.threshold,
        committee=cfg.recipients,
        qual_hash=hash_indices(q),
        public_polynomial_hash=hash_points([p.to_bytes() for p in poly]),
        admission_policy_hash=cfg.admission_policy_hash,
        previous_certificate_hash=cfg.previous_certificate_hash,
    )
    return tr, poly


def forge(
    cfg: SharingConfig,
    wire: Wire,
    corrupt: Mapping[ParticipantIndex, Node],
    transcript_hash: bytes,
) -> EpochCertificate | None:
    """Complete a certificate over ``transcript_hash`` from the honest partials released
    for it and the corrupt members' own partials, as the adversary would: find which set
    of delivered deals gives that transcript, decrypt the corrupt members' shares of
    them, sign, combine. None if the honest partials are too few."""
    honest = wire.partials.get(transcript_hash, {})
    if len(honest) + len(corrupt) < cfg.threshold:
        return None
    dealers = sorted(int(d) for d in wire.deals)
    for size in range(len(dealers), 0, -1):
        for qual in itertools.combinations(dealers, size):
            tr, poly = transcript_for(cfg, wire.deals, qual)
            if tr.hash() != transcript_hash:
                continue
            weights = [1] * len(qual) if cfg.kind == "dkg" else lagrange_coefficients(qual, 0)
            sigs = {i: G1.from_bytes(p.signature) for i, p in honest.items()}
            for j, node in sorted(corrupt.items()):
                value = 0
                for w, d in zip(weights, qual, strict=True):
                    bundle = wire.deals[ParticipantIndex(d)]
                    enc = next(s for s in bundle.shares if s.recipient == int(j))
                    info = (
                        SHARE_INFO + cfg.run_id() + d.to_bytes(4, "big") + int(j).to_bytes(4, "big")
                    )
                    pt = hpke.open(
                        enc.enc, node.dkg_key, info, bundle.commitments_hash(), enc.ciphertext
                    )
                    value = (value + w * scalar_from_bytes(pt)) % R
                sigs[j] = sign_partial(SecretShare(j, SecretScalar(value)), tr.encode())
            shares = {i: public_share(poly, int(i)) for i in cfg.recipient_indices}
            sig = combine_partials(tr.encode(), sigs, shares, cfg.threshold, poly[0])
            return EpochCertificate(tr, tuple(p.to_bytes() for p in poly), sig.to_bytes())
    return None
