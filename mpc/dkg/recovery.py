"""Recovering a member's share of a certified run from the qualified dealers' deals.

A recipient that was not live through a run (down during the deal phase) may end
it without a share while the others certify it. If it still holds the seed of its
run key, the deals the dealers broadcast open for it: it fetches the qualified
dealers' signed deal payloads (and their justifications) from another member and
checks everything against the epoch certificate before it uses a share. Nothing in
the answer is trusted; the only inputs taken as true are the run's configuration
(rebuilt from the chain), the certificate (verified on the chain) and the seed.
"""

from __future__ import annotations

from mpc import hpke
from mpc.broadcast import BroadcastPayload, session_id
from mpc.cert import EpochCertificate, RunKind, hash_indices, hash_points
from mpc.dkg.messages import OMITTED_ENC, DealBundle, DealsAnswer, JustificationBundle
from mpc.dkg.session import SHARE_INFO, SharingConfig
from mpc.errors import (
    DecryptionError,
    InvalidEncoding,
    InvalidSignature,
    LocalProtocolError,
    RemoteProtocolError,
)
from mpc.ids import ParticipantIndex
from mpc.math import G2, R
from mpc.math.fields import lagrange_coefficients, scalar_from_bytes
from mpc.math.vss import share_matches
from mpc.secret import SecretScalar, SecretShare
from mpc.sig import CTX_BROADCAST_DIGEST


class ShareNotDealt(LocalProtocolError):
    """The certified deals carry no share for this member (its run key was not agreed):
    nothing can be recovered from them, whoever answers."""


class DealerShareInvalid(LocalProtocolError):
    """The answer is the certified deals, checked, but a qualified dealer's share for this
    member is wrong and no justification in the answer reveals a right one. Under the
    model an honest answer shows the same (a corrupt dealer sealed a wrong share to a
    member that was down and could not complain), or a corrupt answer left out the
    justification that revealed it: the answering member is not blamed."""

    def __init__(self, dealer: int) -> None:
        super().__init__(f"no valid share of dealer {dealer} for this member")
        self.dealer = dealer


def _signed(payload: BroadcastPayload, cfg: SharingConfig, dealer: int, phase: bytes) -> None:
    h = payload.header
    if h.session != session_id(cfg.run_id(), phase) or h.sender != dealer:
        raise RemoteProtocolError(
            f"payload of dealer {dealer} is not from its {phase.decode()} round of this run", []
        )
    key = next(p for p in cfg.dealers if p.index == dealer).verify_key()
    try:
        key.verify(CTX_BROADCAST_DIGEST, h.statement(), h.signature)
    except InvalidSignature as exc:
        raise RemoteProtocolError(f"payload not signed by dealer {dealer}", []) from exc


def recover_share(
    cfg: SharingConfig,
    me: ParticipantIndex,
    seed: bytes,
    cert: EpochCertificate,
    answer: DealsAnswer,
) -> SecretShare:
    """This member's share of the run ``cfg`` that ``cert`` certifies, from ``answer``.

    Raises ``RemoteProtocolError`` if the answer does not prove it (a payload not signed
    by its dealer or from another run or round, a dealer outside the certified ``QUAL``,
    commitments that do not add up to the certified public polynomial, a share that
    fails its dealer's commitments or the certified public share), and
    ``ShareNotDealt`` if the deals validly carry no share for this member.
    """
    run = cfg.run_id()
    tr = cert.transcript
    if answer.run != run or (tr.kind, tr.epoch, tr.attempt) != (cfg.kind, cfg.epoch, cfg.attempt):
        raise RemoteProtocolError("deals of another run", [])
    qual = [int(d) for d in answer.qual]
    dealers = {p.index for p in cfg.dealers}
    if hash_indices(qual) != tr.qual_hash or not set(qual) <= dealers:
        raise RemoteProtocolError("the dealers named are not the certified QUAL", [])
    t = cfg.threshold
    deals: dict[int, tuple[DealBundle, list[G2]]] = {}
    for payload in answer.deals:
        d = payload.header.sender
        if d not in qual or d in deals:
            raise RemoteProtocolError(f"a deal of dealer {d}, not in QUAL or twice", [])
        _signed(payload, cfg, d, b"deal")
        try:
            bundle = DealBundle.decode(payload.payload)
            points = [G2.from_bytes(c) for c in bundle.commitments]
        except InvalidEncoding as exc:
            raise RemoteProtocolError(f"malformed deal of dealer {d}: {exc}", []) from exc
        if bundle.dealer != d or len(points) != t:
            raise RemoteProtocolError(f"deal of dealer {d} does not fit the run", [])
        deals[d] = (bundle, points)
    if sorted(deals) != qual:
        raise RemoteProtocolError("the deals of some qualified dealers are missing", [])
    weights = [1] * len(qual) if cfg.kind is RunKind.DKG else lagrange_coefficients(qual, 0)
    poly = [G2.msm([deals[d][1][k] for d in qual], weights) for k in range(t)]
    if (
        hash_points([p.to_bytes() for p in poly]) != tr.public_polynomial_hash
        or tuple(p.to_bytes() for p in poly) != cert.public_polynomial
    ):
        raise RemoteProtocolError("the deals do not add up to the certified polynomial", [])
    revealed: dict[int, int] = {}
    for payload in answer.justifications:
        d = payload.header.sender
        if d not in deals:
            raise RemoteProtocolError(f"a justification of dealer {d}, not in QUAL", [])
        _signed(payload, cfg, d, b"justify")
        try:
            just = JustificationBundle.decode(payload.payload)
            mine = [s for s in just.shares if s.recipient == int(me)]
            if just.dealer != d:
                raise InvalidEncoding("justification names another dealer")
            if mine:
                revealed[d] = scalar_from_bytes(mine[0].share)
        except InvalidEncoding as exc:
            raise RemoteProtocolError(f"malformed justification of dealer {d}: {exc}", []) from exc
    key = hpke.derive_key_pair(seed)[0]
    mine_enc = {
        d: next((s for s in deals[d][0].shares if s.recipient == int(me)), None) for d in qual
    }
    if all(e is not None and e.enc == OMITTED_ENC for e in mine_enc.values()):
        raise ShareNotDealt("no qualified dealer dealt this member a share")
    values: list[int] = []
    for d in qual:
        bundle, points = deals[d]
        enc = mine_enc[d]
        value: int | None = None
        if enc is not None and enc.enc != OMITTED_ENC:
            info = SHARE_INFO + run + d.to_bytes(4, "big") + int(me).to_bytes(4, "big")
            try:
                pt = hpke.open(enc.enc, key, info, bundle.commitments_hash(), enc.ciphertext)
                value = scalar_from_bytes(pt)
            except (DecryptionError, InvalidEncoding):
                value = None
        if value is None or not share_matches(points, int(me), value):
            # A share that does not open (or fails the commitments) was complained about:
            # the dealer revealed it in its justification, or it was not qualified.
            value = revealed.get(d)
            if value is None or not share_matches(points, int(me), value):
                raise DealerShareInvalid(d)
        values.append(value)
    total = sum(w * v for w, v in zip(weights, values, strict=True)) % R
    pk = cert.public_shares().get(me)
    if pk is None or total * G2.generator() != pk:
        raise RemoteProtocolError("the share does not match the certified public share", [])
    return SecretShare(me, SecretScalar(total))
