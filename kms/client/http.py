"""The CVM client's shell: fetch the chain, verify it from the pinned key, ask nodes for partials.

It asks ``t`` nodes at once and more when one refuses, fails to answer in time
or sends a bad partial; bad partials are named by index and kept as evidence.
The master public key is never taken from a node: it is pinned by the caller.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
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
    urls: Sequence[str],
    mpk: G2,
    *,
    timeout: float = 5.0,
    enough: int | None = None,
    client: httpx.Client | None = None,
) -> tuple[ChainState, list[str]]:
    """The longest chain the asked nodes serve that verifies from the pinned ``mpk``.

    Nodes are asked concurrently; ``enough`` stops after that many verified
    chains (all by default). A node whose chain does not verify (another key,
    a forged link) is ignored and reported in the second element.
    """
    own = client is None
    http = client or httpx.Client(timeout=timeout)
    best: ChainState | None = None
    ignored: list[str] = []

    def get(url: str) -> tuple[str, bytes | Exception]:
        try:
            return url, http.get(url.rstrip("/") + "/v1/chain").content
        except httpx.HTTPError as exc:
            return url, exc

    try:
        verified = 0
        want = enough or len(urls)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(urls)))) as pool:
            for url, raw in pool.map(get, urls):
                if isinstance(raw, Exception):
                    ignored.append(f"{url}: {type(raw).__name__}: {raw}")
                    continue
                try:
                    state = chain_from_bytes(raw, mpk)
                except (MessageDecodeError, ChainError, ValueError) as exc:
                    ignored.append(f"{url}: {type(exc).__name__}: {exc}")
                    continue
                verified += 1
                if best is None or state.epoch > best.epoch:
                    best = state
                if verified >= want:
                    break
    finally:
        if own:
            http.close()
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
    with httpx.Client(timeout=timeout) as client:
        # The longest chain that verifies from the pinned key, asked of every node at
        # once (a node serving another key or a forged link is skipped and reported).
        chain, ignored = fetch_chain(list(urls.values()), mpk, client=client)
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

        def post(index: ParticipantIndex) -> tuple[ParticipantIndex, object]:
            url = urls.get(index)
            if url is None:
                return index, KeyError("no URL")
            try:
                r = client.post(
                    url.rstrip("/") + "/v1/keys", content=body, headers={"content-type": MSGPACK}
                )
                return index, decode(r.content)
            except (httpx.HTTPError, MessageDecodeError) as exc:
                return index, exc

        batch = session.next_nodes(chain.threshold)
        with ThreadPoolExecutor(max_workers=max(1, chain.threshold)) as pool:
            while batch and not session.done:
                session.mark_asked(batch)
                asked.extend(batch)
                for index, answer in pool.map(post, batch):
                    if isinstance(answer, KeyResponse | KeyRefusal):
                        session.receive(index, answer)
                    else:
                        ignored.append(f"node {int(index)}: {type(answer).__name__}")
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
