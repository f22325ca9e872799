"""The CVM client's shell: fetch the chain, verify it from the pinned key, ask nodes for partials.

It asks ``t`` nodes at once and more when one refuses, fails to answer in time
or sends a bad partial; bad partials are named by index and kept as evidence.
The master public key is never taken from a node: it is pinned by the caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import httpx

from kms.client.core import KeyReleaseError, KeyRequestSession, Rejected
from kms.protocol import KeyRefusal, KeyResponse
from mpc.cert import EpochCertificate
from mpc.codec import MessageDecodeError, decode
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import ChainError, ChainState, MembershipCertificate, verify_chain
from mpc.membership.messages import ChainUpdate
from mpc.tkd import DerivedPoint

MSGPACK = "application/msgpack"


@dataclass(frozen=True)
class FetchResult:
    derived: Mapping[tuple[str, int], DerivedPoint]
    epoch: int
    asked: tuple[ParticipantIndex, ...]
    rejected: tuple[Rejected, ...]
    refusals: Mapping[ParticipantIndex, KeyRefusal]
    ignored_nodes: tuple[str, ...]


def chain_from_bytes(raw: bytes, mpk: G2) -> ChainState:
    """Verify a ``ChainUpdate`` (the body of ``GET /v1/chain``) from the pinned ``mpk``."""
    update = ChainUpdate.decode(raw)
    links: list[EpochCertificate | MembershipCertificate] = [
        EpochCertificate.decode(r) if kind == "epoch" else MembershipCertificate.decode(r)
        for kind, r in zip(update.kinds, update.links, strict=True)
    ]
    return verify_chain(links, mpk=mpk)


def fetch_chain(
    urls: Sequence[str], mpk: G2, *, timeout: float = 5.0
) -> tuple[ChainState, list[str]]:
    """The longest chain any node serves that verifies from the pinned ``mpk``.

    A node whose chain does not verify (another key, a forged link) is ignored
    and reported in the second element.
    """
    best: ChainState | None = None
    ignored: list[str] = []
    for url in urls:
        try:
            r = httpx.get(url.rstrip("/") + "/v1/chain", timeout=timeout)
            state = chain_from_bytes(r.content, mpk)
        except (httpx.HTTPError, MessageDecodeError, ChainError, ValueError) as exc:
            ignored.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        if best is None or state.epoch > best.epoch:
            best = state
    if best is None:
        raise KeyReleaseError(
            "no node served a chain that verifies from the pinned master public key"
        )
    return best, ignored


def fetch_keys(
    urls: Mapping[ParticipantIndex, str],
    mpk: G2,
    app_id: bytes,
    purposes: Sequence[tuple[str, int]],
    quote_for: Callable[[bytes], bytes],
    *,
    event_log: bytes = b"",
    min_policy_version: int = 0,
    timeout: float = 5.0,
    now: int | None = None,
) -> FetchResult:
    """Get the derived points for ``purposes`` of ``app_id`` from the committee."""
    chain, ignored = fetch_chain(list(urls.values()), mpk, timeout=timeout)
    session = KeyRequestSession(
        chain,
        app_id,
        purposes,
        now=int(time.time()) if now is None else now,
        rng=os.urandom,
        min_policy_version=min_policy_version,
    )
    request = session.attach_quote(quote_for(session.report_data), event_log)
    body = request.encode()
    asked: list[ParticipantIndex] = []
    batch = session.next_nodes(chain.threshold)
    with httpx.Client(timeout=timeout) as client:
        while batch and not session.done:
            session.mark_asked(batch)
            for index in batch:
                asked.append(index)
                url = urls.get(index)
                if url is None:
                    continue
                try:
                    r = client.post(
                        url.rstrip("/") + "/v1/keys",
                        content=body,
                        headers={"content-type": MSGPACK},
                    )
                    answer = decode(r.content)
                except (httpx.HTTPError, MessageDecodeError) as exc:
                    ignored.append(f"node {int(index)}: {type(exc).__name__}")
                    continue
                if isinstance(answer, KeyResponse | KeyRefusal):
                    session.receive(index, answer)
            if session.done:
                break
            # Ask as many more nodes as partials are still missing, at least one.
            batch = session.next_nodes(max(1, len(session.bad_nodes()) + len(session.refusals)))
    if not session.done:
        reasons = {int(i): r.reason for i, r in session.refusals.items()}
        raise KeyReleaseError(
            f"fewer than t = {chain.threshold} good partials: refusals {reasons}, "
            f"bad partials from {[int(i) for i in session.bad_nodes()]}, unreachable {ignored}"
        )
    derived = {(p.purpose, p.version): d for p, d in session.derived().items()}
    return FetchResult(
        derived,
        chain.epoch,
        tuple(asked),
        tuple(session.rejected),
        dict(session.refusals),
        tuple(ignored),
    )
