"""A toy t-of-n committee that certifies dstack app root keys with ``mpc.appcert``:
a random degree t-1 polynomial, its shares, ``MPK`` and the public shares."""

from __future__ import annotations

import random
from dataclasses import dataclass

from mpc import appcert
from mpc.ids import ParticipantIndex
from mpc.math import G1, G2
from mpc.math.fields import R
from mpc.secret import SecretScalar, SecretShare


@dataclass
class Committee:
    threshold: int
    shares: dict[ParticipantIndex, SecretShare]
    mpk: G2
    public_shares: dict[ParticipantIndex, G2]

    def sign(self, message: bytes, signers: list[int] | None = None) -> G1:
        """Combine the partials of ``signers`` (default: the last ``t``) over ``message``."""
        chosen = signers or sorted(self.shares)[-self.threshold :]
        partials = [appcert.sign_partial(self.shares[ParticipantIndex(i)], message) for i in chosen]
        return appcert.combine_and_verify(
            partials, message, self.mpk, self.public_shares, self.threshold
        )

    def certify(
        self, app_id: bytes, root_public: bytes, version: int, epoch: int
    ) -> tuple[bytes, bytes]:
        """``(link 1, quorum-kms signature)``, each 48 bytes."""
        link = self.sign(appcert.link_message(app_id, root_public))
        qkms = self.sign(appcert.qkms_message(app_id, root_public, version, epoch))
        return link.to_bytes(), qkms.to_bytes()


def committee(n: int = 4, t: int = 3, seed: int = 7) -> Committee:
    rng = random.Random(seed)
    coeffs = [rng.randrange(1, R) for _ in range(t)]

    def f(x: int) -> int:
        return sum(c * pow(x, k, R) for k, c in enumerate(coeffs)) % R

    shares = {
        ParticipantIndex(i): SecretShare(ParticipantIndex(i), SecretScalar(f(i)))
        for i in range(1, n + 1)
    }
    g2 = G2.generator()
    return Committee(
        t,
        shares,
        coeffs[0] * g2,
        {i: s.value.value * g2 for i, s in shares.items()},
    )
