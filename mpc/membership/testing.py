"""Long valid epoch chains, built fast by signing with the master secret directly.

For tests and benchmarks only: a real committee signs each link with ``t``
partials that combine into ``s·H_CERT(message)``; this helper computes that
value from ``s`` at once, so a chain of 100,000 epochs takes seconds. Every
link verifies exactly like a committee-made one (``mpc.membership.chain``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mpc import hpke
from mpc.cert import (
    ZERO_HASH,
    EpochCertificate,
    EpochTranscript,
    RunKind,
    hash_indices,
    hash_points,
    sign_partial,
)
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.math.fields import R
from mpc.membership.chain import ChainState, genesis_state, link_position, verify_recent
from mpc.membership.messages import (
    MembershipCertificate,
    MembershipOutcome,
    Proposal,
    Refresh,
)
from mpc.participant import Participant
from mpc.secret import SecretScalar, SecretShare
from mpc.sig import CTX_DKG_KEY, SigningKey

Link = EpochCertificate | MembershipCertificate


def _sign(secret: int, message: bytes) -> bytes:
    return sign_partial(SecretShare(ParticipantIndex(1), SecretScalar(secret)), message).to_bytes()


def _bytes(label: str, size: int = 32) -> bytes:
    """Deterministic test bytes (``mpc`` draws no global randomness)."""
    return hashlib.shake_256(b"forged test chain: " + label.encode()).digest(size)


def _scalar(label: str) -> int:
    return int.from_bytes(_bytes(label, 64), "big") % (R - 1) + 1


def member_seeds(n: int, seed: int = 0) -> dict[int, tuple[bytes, bytes]]:
    """The (identity seed, DKG key seed) of members 1..n (what ``NodeStore`` keeps)."""
    return {i: (_bytes(f"identity-{seed}-{i}"), _bytes(f"dkg-{seed}-{i}")) for i in range(1, n + 1)}


def participants(n: int, seed: int = 0) -> tuple[Participant, ...]:
    """``n`` committee members with vouched-for DKG keys (indices 1..n)."""
    out = []
    for i, (id_seed, dkg_seed) in member_seeds(n, seed).items():
        ident = SigningKey.from_seed(id_seed)
        _, pub = hpke.derive_key_pair(dkg_seed)
        sig = ident.sign(CTX_DKG_KEY, Participant.dkg_key_statement(i, pub))
        out.append(Participant(i, ident.verify_key().to_bytes(), pub, sig))
    return tuple(out)


@dataclass
class ForgedChain:
    """A chain signed with ``secret`` over the polynomial ``coefficients`` (``[s, a1, …]``)."""

    secret: int
    coefficients: tuple[int, ...]
    committee: tuple[Participant, ...]
    links: list[Link] = field(default_factory=list)

    @property
    def threshold(self) -> int:
        return len(self.coefficients)

    @property
    def mpk(self) -> G2:
        return self.secret * G2.generator()

    def share(self, index: int) -> SecretShare:
        """Member ``index``'s share of every epoch of this chain (the polynomial is fixed)."""
        x, acc = int(index), 0
        for c in reversed(self.coefficients):
            acc = (acc * x + c) % R
        return SecretShare(ParticipantIndex(x), SecretScalar(acc))

    def public_polynomial(self) -> tuple[bytes, ...]:
        return tuple((c * G2.generator()).to_bytes() for c in self.coefficients)

    def epoch_certificate(
        self, epoch: int, attempt: int, previous: bytes, *, public: tuple[bytes, ...] | None = None
    ) -> EpochCertificate:
        poly = public or self.public_polynomial()
        tr = EpochTranscript(
            kind=RunKind.DKG if epoch == 0 else RunKind.RESHARE,
            epoch=epoch,
            attempt=attempt,
            mpk=poly[0],
            threshold=self.threshold,
            committee=self.committee,
            qual_hash=hash_indices([p.index for p in self.committee]),
            public_polynomial_hash=hash_points(poly),
            admission_policy_hash=ZERO_HASH,
            previous_certificate_hash=previous,
        )
        return EpochCertificate(tr, poly, _sign(self.secret, tr.encode()))

    def refresh_certificate(self, epoch: int, head: bytes) -> MembershipCertificate:
        proposal = Proposal.of(epoch, head, 1, epoch.to_bytes(16, "big"), Refresh())
        out = MembershipOutcome(epoch, epoch, head, proposal, 1_000_000 + epoch)
        return MembershipCertificate(out, _sign(self.secret, out.encode()))

    def head_hash(self) -> bytes:
        last = self.links[-1]
        return last.hash()

    def grow(self, epochs: int, *, attempt: int = 0) -> None:
        """Append ``epochs`` refreshes (a membership certificate and the next epoch)."""
        poly = self.public_polynomial()
        for _ in range(epochs):
            last = self.links[-1]
            if isinstance(last, EpochCertificate):
                e = last.transcript.epoch
                self.links.append(self.refresh_certificate(e, last.hash()))
            m = self.links[-1]
            if not isinstance(m, MembershipCertificate):  # pragma: no cover - built above
                raise TypeError("a refresh certificate follows every epoch certificate")
            e = m.outcome.epoch + 1
            self.links.append(self.epoch_certificate(e, attempt, m.hash(), public=poly))

    def head_state(self) -> ChainState:
        first = self.links[0]
        if len(self.links) == 1 and isinstance(first, EpochCertificate):
            return genesis_state(self.mpk, first)
        return _head(self)


def _head(chain: ForgedChain) -> ChainState:
    tail = [x for x in chain.links if link_position(x) >= link_position(chain.links[-1]) - 2]
    while not isinstance(tail[0], EpochCertificate):
        tail = tail[1:]
    return verify_recent(tail, mpk=chain.mpk)[-1]


def forged_chain(
    epochs: int,
    *,
    n: int = 4,
    t: int = 3,
    seed: int = 0,
    committee: Sequence[Participant] | None = None,
    genesis_attempt: int = 0,
) -> ForgedChain:
    """Genesis and ``epochs`` refreshes after it: ``2·epochs + 1`` links."""
    # A short secret keeps each signature a cheap scalar multiplication (tests only).
    secret = 2**31 + int.from_bytes(_bytes(f"secret-{seed}", 4), "big") % 2**31
    coeffs = (secret, *(_scalar(f"coefficient-{seed}-{k}") for k in range(1, t)))
    members = tuple(committee) if committee is not None else participants(n, seed)
    chain = ForgedChain(coeffs[0], coeffs, members)
    chain.links.append(chain.epoch_certificate(0, genesis_attempt, ZERO_HASH))
    chain.grow(epochs)
    return chain


def with_attempt(cert: EpochCertificate, chain: ForgedChain, attempt: int) -> EpochCertificate:
    """Another certificate for ``cert``'s epoch: the same transcript at another attempt."""
    tr = replace(cert.transcript, attempt=attempt)
    return EpochCertificate(tr, cert.public_polynomial, _sign(chain.secret, tr.encode()))


def fork(chain: ForgedChain, links: int, *, seed: int = 1) -> ForgedChain:
    """Another chain under the same master secret: ``chain``'s first ``links`` links, then
    whatever is appended to the fork, with another public polynomial (so the shares of
    ``chain``'s members do not match it)."""
    coeffs = (
        chain.secret,
        *(_scalar(f"fork-{seed}-{k}") for k in range(1, chain.threshold)),
    )
    return ForgedChain(chain.secret, coeffs, chain.committee, list(chain.links[:links]))
