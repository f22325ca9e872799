"""``make demo``: an in-process committee of 5 (threshold 3) derives an app key.

Five nodes each deal a random polynomial (joint Feldman, no dealer); every
node checks its shares against the dealers' commitments in one batch and sums
them. The master secret is never assembled. Then a CVM-side combiner shows
that every 3 of the 5 partials give the same app key, that 2 do not, and that
a tampered partial is named by index.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys

from rich.console import Console
from rich.table import Table

from mpc import ibe
from mpc.errors import InvalidShare
from mpc.ids import ParticipantIndex
from mpc.math import G2, R
from mpc.math.poly import Polynomial
from mpc.math.vss import ShareClaim, commit, public_share, verify_shares
from mpc.secret import SecretScalar, SecretShare, random_scalar
from mpc.tkd import (
    KeyId,
    Partial,
    combine,
    combine_and_verify,
    derive_partial,
    typed_keys,
    verify_combined,
)

N, T = 5, 3


def run(console: Console) -> bool:
    rng = os.urandom
    indices = [ParticipantIndex(i) for i in range(1, N + 1)]

    console.rule(f"[bold]quorum-kms: in-process committee, n={N}, t={T}")
    # Deal: every node picks f_i of degree t-1 and commits to it in G2.
    polys = {i: Polynomial.random(T - 1, lambda: random_scalar(rng)) for i in indices}
    commitments = {i: tuple(commit(polys[i])) for i in indices}
    # Each node receives f_d(j) from every dealer d and checks them in one batch.
    shares: dict[ParticipantIndex, SecretShare] = {}
    for j in indices:
        claims = [ShareClaim(d, j, commitments[d], polys[d](j)) for d in indices]
        verify_shares(claims, rng=rng)
        total = sum(c.share for c in claims)
        shares[j] = SecretShare(j, SecretScalar(total % R))
    # Public polynomial = sum of commitments; MPK is its constant term.
    public_poly = [sum((commitments[d][k] for d in indices), G2.identity()) for k in range(T)]
    mpk = public_poly[0]
    public_shares = {j: public_share(public_poly, j) for j in indices}
    console.print(f"master public key  {mpk.to_bytes().hex()[:32]}…  (no node ever held s)")

    key_id = KeyId(b"demo-app", "app", 1)
    partials = {j: derive_partial(shares[j], key_id) for j in indices}

    table = Table(title="app key from every 3-of-5 subset")
    table.add_column("nodes")
    table.add_column("app key fingerprint")
    fingerprints = set()
    for subset in itertools.combinations(indices, T):
        derived = combine_and_verify([partials[j] for j in subset], key_id, mpk, public_shares, T)
        fp = hashlib.sha256(derived.app_key().secret.data).hexdigest()[:24]
        fingerprints.add(fp)
        table.add_row(",".join(str(int(j)) for j in subset), fp)
    console.print(table)
    ok_same = len(fingerprints) == 1
    console.print(f"all 10 subsets agree: [{'green' if ok_same else 'red'}]{ok_same}")

    two = combine([partials[indices[0]], partials[indices[1]]], 2)
    ok_two = not verify_combined(two, key_id, mpk)
    console.print(
        f"2 partials give a different key (fails the MPK check): [{'green' if ok_two else 'red'}]{ok_two}"
    )

    tampered = [
        partials[indices[0]],
        Partial(indices[3], partials[indices[3]].point + partials[indices[0]].point),
        partials[indices[4]],
    ]
    named: list[int] = []
    try:
        combine_and_verify(tampered, key_id, mpk, public_shares, T)
    except InvalidShare as exc:
        named = sorted(int(c) for c in exc.culprits)
    ok_named = named == [int(indices[3])]
    console.print(
        f"tampered partial from node 4 is named: [{'green' if ok_named else 'red'}]{named}"
    )

    keys = typed_keys(
        combine_and_verify(
            [partials[j] for j in indices[2:]], key_id, mpk, public_shares, T
        ).app_key()
    )
    console.print(f"x25519 public {keys.x25519_public.hex()}")
    console.print(f"ed25519 public {keys.ed25519_public.hex()}")
    console.print(f"secp256k1 public {keys.secp256k1_public.hex()}")

    sealed = ibe.encrypt(mpk, key_id, b"sealed for demo-app before it ran", rng=rng)
    derived = combine_and_verify([partials[j] for j in indices[1:4]], key_id, mpk, public_shares, T)
    opened = ibe.decrypt(derived, mpk, sealed)
    ok_ibe = opened == b"sealed for demo-app before it ran"
    console.print(
        f"IBE message encrypted to the app decrypts with the derived key: [{'green' if ok_ibe else 'red'}]{ok_ibe}"
    )
    return ok_same and ok_two and ok_named and ok_ibe


def main() -> int:
    console = Console()
    ok = run(console)
    console.rule("[bold green]demo passed" if ok else "[bold red]demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
