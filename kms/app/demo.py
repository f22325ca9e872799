"""``make demo``: a local committee on the network, then threshold key derivation.

Part 1 starts ``kms devnet up`` (5 node processes, threshold 3, real libp2p on
loopback), shows the DKG result from every node, stops one node and shows
that the rest still agree; a simulated CVM gets its key; then, with every
node up again, a sixth operator joins (``kms devnet add-node``), node 3
leaves (``kms devnet remove-node``), and the CVM gets the same key from the
new committee; then everything shuts down. Along the way ``kms agent`` serves the
devnet's dstack CVM (dstack's guest API, keys from the committee) and a script using
the unmodified dstack SDK prints the Ethereum address of its ``wallet/main`` key, once
after the devnet is up and once after the join and leave: the same address.

Part 2 walks through the derivation a CVM relies on, with an in-process
committee of 5 (threshold 3): every 3 of the 5 partials give the same app
key, 2 do not, and a tampered partial is named by index; a message encrypted
to the app under the master public key alone decrypts with the derived key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def derivation(console: Console) -> bool:
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

    inbox = ibe.inbox_key_id(b"demo-app")
    sealed = ibe.encrypt(mpk, inbox, b"sealed for demo-app before it ran", rng=os.urandom)
    inbox_partials = [derive_partial(shares[j], inbox) for j in indices[1:4]]
    derived = combine_and_verify(inbox_partials, inbox, mpk, public_shares, T)
    opened = ibe.decrypt(derived, mpk, sealed)
    ok_ibe = opened == b"sealed for demo-app before it ran"
    console.print(
        f"IBE message encrypted to the app's inbox decrypts with the inbox's derived point: [{'green' if ok_ibe else 'red'}]{ok_ibe}"
    )
    return ok_same and ok_two and ok_named and ok_ibe


def _statuses(state: dict[str, object]) -> list[dict[str, object]]:
    from kms.app.devnet import status_of

    out = []
    for n in state["nodes"]:  # type: ignore[attr-defined]
        st = status_of(n["http_url"], timeout=2.0)
        out.append(
            st or {"index": n["index"], "epoch": None, "master_public_key": None, "has_share": None}
        )
    return out


def _wait_serving(state: dict[str, object], indices: set[int], timeout: float = 90.0) -> None:
    """Wait until the nodes ``indices`` answer their status with a share (a restarted node
    reopens its store and reconnects first), or ``timeout`` passes: the fetch after it then
    reports what is missing."""
    from kms.app.devnet import status_of

    deadline = time.time() + timeout
    nodes = [n for n in state["nodes"] if int(n["index"]) in indices]  # type: ignore[attr-defined]
    while time.time() < deadline:
        statuses = [status_of(n["http_url"], timeout=2.0) for n in nodes]
        if all(st and st.get("has_share") for st in statuses):
            return
        time.sleep(0.2)


def _table(title: str, statuses: list[dict[str, object]]) -> Table:
    t = Table(title=title)
    for col in ("node", "epoch", "threshold", "master public key", "share", "peers"):
        t.add_column(col)
    for st in statuses:
        mpk = st.get("master_public_key")
        t.add_row(
            str(st.get("index")),
            str(st.get("epoch")),
            str(st.get("threshold")),
            (str(mpk)[:24] + "…") if mpk else "-",
            str(st.get("has_share")),
            str(len(st.get("peers", []) or [])),  # type: ignore[arg-type]
        )
    return t


def networked(console: Console, directory: Path) -> bool:
    """Part 1: a devnet of 5 processes, threshold 3."""
    from kms.app.devnet import STATE_FILE, launch, read_state, stop_node

    console.rule("[bold]part 1: a committee of 5 node processes (threshold 3) over libp2p")
    proc = launch(directory, start_in=8, window_period=4.0)
    try:
        deadline = time.time() + 180
        state: dict[str, object] = {}
        with console.status("genesis DKG running between the processes…"):
            while time.time() < deadline:
                if (directory / STATE_FILE).exists():
                    state = read_state(directory)
                    if state.get("master_public_key"):
                        break
                if proc.poll() is not None:
                    console.print("[red]devnet exited early")
                    return False
                time.sleep(0.3)
        if not state.get("master_public_key"):
            console.print("[red]the DKG did not finish in time")
            return False
        statuses = _statuses(state)
        console.print(_table("every node's view after the DKG", statuses))
        keys = {st.get("master_public_key") for st in statuses}
        agreed = len(keys) == 1 and all(st.get("has_share") for st in statuses)
        console.print(
            f"all 5 nodes hold a share of one master key: [{'green' if agreed else 'red'}]{agreed}"
        )
        console.print(
            f"devnet.json: {json.dumps({k: state[k] for k in ('master_public_key', 'threshold')})[:120]}…"
        )

        stop_node(directory, 5)
        console.print("stopped node 5")
        time.sleep(1.0)
        rest = _statuses(read_state(directory))[:4]
        console.print(_table("the other four, with node 5 down", rest))
        still = {st.get("master_public_key") for st in rest} == keys and all(
            st.get("epoch") == 0 for st in rest
        )
        console.print(
            f"the rest still agree (3 of them are enough to serve): [{'green' if still else 'red'}]{still}"
        )
        return agreed and still and key_release(console, directory)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        console.print("devnet shut down")


def key_release(console: Console, directory: Path) -> bool:
    """Part 1b: a simulated CVM gets its keys from the running committee."""
    from kms.app import devnet
    from kms.client.core import KeyReleaseError
    from kms.client.http import fetch_keys
    from mpc.ids import ParticipantIndex as PI

    console.rule("[bold]key release to the demo app's simulated CVM")
    devnet.start_node(directory, 5)
    state = devnet.read_state(directory)
    mpk = G2.from_bytes(bytes.fromhex(str(state["master_public_key"])))
    app_id = bytes.fromhex(state["apps"]["demo"])
    urls = {PI(int(n["index"])): n["http_url"] for n in state["nodes"]}
    tee = devnet.simulated_tee(directory)
    secret_note = b"sealed for the demo app before its CVM ever ran"
    sealed = ibe.encrypt(mpk, ibe.inbox_key_id(app_id), secret_note, rng=os.urandom)
    console.print(
        f"a sender encrypted {len(secret_note)} bytes to the app with the master public key alone"
    )
    _wait_serving(state, {5})  # node 5 comes back up

    def fetch(meas: dict[str, bytes]) -> tuple[str, object]:
        # The app key, and the point of the app's inbox (purpose ibe.app), which the
        # demo policy lists on its own.
        inbox = (ibe.INBOX_PREFIX + ibe.DEFAULT_INBOX, 1)
        res = fetch_keys(urls, mpk, app_id, [("app", 1), inbox], lambda rd: tee.quote(rd, **meas))
        derived = res.derived[("app", 1)]
        return hashlib.sha256(derived.app_key().secret.data).hexdigest(), res.derived[inbox]

    fp1, derived = fetch(devnet.DEMO_MEASUREMENT)
    console.print(
        f"the CVM's app key (fingerprint)         {fp1[:32]}…  verified against the pinned master key"
    )
    address = dstack_wallet(console, directory)
    devnet.stop_node(directory, 1)
    devnet.stop_node(directory, 2)
    fp2, _ = fetch(devnet.DEMO_MEASUREMENT)
    same = fp1 == fp2
    console.print(f"with nodes 1 and 2 stopped, the same key: [{'green' if same else 'red'}]{same}")
    devnet.start_node(directory, 1)
    devnet.start_node(directory, 2)
    _wait_serving(state, {1, 2})
    fp3, _ = fetch(devnet.DEMO_MEASUREMENT)
    same_again = fp3 == fp1
    console.print(
        f"nodes 1 and 2 restarted, the same key:   [{'green' if same_again else 'red'}]{same_again}"
    )

    refused_everywhere = False
    try:
        fetch(devnet.ROGUE_MEASUREMENT)
    except KeyReleaseError as exc:
        refused_everywhere = "policy-refused" in str(exc)
        console.print(f"a CVM with a measurement outside the policy is refused: {exc}"[:300])
    console.print(
        f"refused by every node it asked, with the reason: [{'green' if refused_everywhere else 'red'}]{refused_everywhere}"
    )

    opened = ibe.decrypt(derived, mpk, sealed)  # type: ignore[arg-type]
    ok_ibe = opened == secret_note
    console.print(
        f"the message sealed before the CVM existed decrypts inside it: [{'green' if ok_ibe else 'red'}]{ok_ibe}"
    )
    ok_members = membership(console, directory, fp1, address)
    return same and same_again and refused_everywhere and ok_ibe and ok_members and bool(address)


def dstack_wallet(console: Console, directory: Path) -> str | None:
    """The devnet's dstack CVM: ``kms agent`` serves dstack's guest API with the app root
    key it obtained from the committee, and an app using the unmodified dstack SDK derives
    its ``wallet/main`` secp256k1 key and prints the Ethereum address. None on failure."""
    from kms.app.agentproc import AgentProcessError, wallet_address

    try:
        address = wallet_address(directory, directory / "dstack.sock")
    except AgentProcessError as exc:
        console.print(f"[red]the dstack app got no key: {exc}"[:600])
        return None
    console.print("a dstack app (unmodified dstack SDK; kms agent serves its guest API):")
    console.print(f"wallet/main address {address}")
    return address


def membership(console: Console, directory: Path, fingerprint: str, address: str | None) -> bool:
    """Part 1c: a sixth operator joins, a node leaves, and the CVM gets the same key; so
    does the dstack app (the same wallet address)."""
    from kms.app import devnet
    from kms.client.core import KeyReleaseError
    from kms.client.http import fetch_keys
    from mpc.ids import ParticipantIndex as PI

    console.rule("[bold]membership: a sixth operator joins, then node 3 leaves")
    try:
        with console.status("node 6: join request with a quote, proposal, approvals, reshare…"):
            added = devnet.add_node(directory, timeout=150)
        console.print(
            f"node {added['index']} joined: epoch {added['epoch']}, committee "
            f"{added['committee']}, threshold {added['threshold']}"
        )
        with console.status("node 3 leaves: proposal, approvals, reshare…"):
            removed = devnet.remove_node(directory, 3, timeout=150)
        console.print(
            f"node 3 left: epoch {removed['epoch']}, committee {removed['committee']}, "
            f"threshold {removed['threshold']}"
        )
    except devnet.MembershipError as exc:
        console.print(f"[red]membership change failed: {exc}")
        return False
    state = devnet.read_state(directory)
    mpk = G2.from_bytes(bytes.fromhex(str(state["master_public_key"])))
    same_mpk = (
        added["master_public_key"] == removed["master_public_key"] == state["master_public_key"]
    )
    app_id = bytes.fromhex(state["apps"]["demo"])
    urls = {PI(int(n["index"])): n["http_url"] for n in state["nodes"]}
    tee = devnet.simulated_tee(directory)
    try:
        res = fetch_keys(
            urls, mpk, app_id, [("app", 1)], lambda rd: tee.quote(rd, **devnet.DEMO_MEASUREMENT)
        )
    except KeyReleaseError as exc:
        console.print(f"[red]the CVM got no key from the new committee: {exc}")
        return False
    fp = hashlib.sha256(res.derived[("app", 1)].app_key().secret.data).hexdigest()
    same = fp == fingerprint and same_mpk
    console.print(
        f"the CVM's key from the committee of epoch {res.epoch} (nodes "
        f"{sorted(int(i) for i in urls)}), the same as before: [{'green' if same else 'red'}]{same}"
    )
    again = dstack_wallet(console, directory)
    same_address = again is not None and again == address
    console.print(
        "the dstack app's wallet address after the join and leave, the same: "
        f"[{'green' if same_address else 'red'}]{same_address}"
    )
    return same and same_address


def main() -> int:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="qkms-demo-") as tmp:
        ok_net = networked(console, Path(tmp) / "devnet")
    console.rule("[bold]part 2: threshold key derivation, as a CVM sees it")
    ok = derivation(console) and ok_net
    console.rule("[bold green]demo passed" if ok else "[bold red]demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
