"""A client's search for members' certified URLs costs bounded CPU, whatever the node it
pages through (``GET /v1/chain?from=…``) serves.

A corrupt member answers the head of the chain honestly and fills its ``?from=`` pages
with forged ``AddMember`` certificates for a current member's public (index, identity)
and a valid G1 point as signature: each would cost a pairing check. The client is
given the URLs of nodes 1 and 3 only, verifies the chain, and looks for node 2's
certified URL in node 1's older links (``older_certified_urls``, as a client does for
members the recent tail certifies no URL for when the chain it was served does not start
at genesis). The search must cost little
CPU against a generous bound (well above the fixed cost of one chain fetch), and learn
nothing: node 2, a genesis member, has no certified URL.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import trio
import trio.testing
from devnet_helpers import in_process_devnet
from joined_chain import URL, forged, joined
from service_devnet import ServiceDevnet

from kms.api.limits import CHAIN_PAGE_BYTES, CHAIN_PAGE_LINKS
from kms.client.http import (
    MAX_URL_PAGES,
    URL_PAGE_BYTES,
    URL_PAGE_LINKS,
    KeyClient,
    _links,
    older_certified_urls,
)
from mpc.cert import EpochCertificate
from mpc.ids import ParticipantIndex as PI
from mpc.math import G2
from mpc.membership.messages import (
    AddMember,
    ChainUpdate,
    MembershipCertificate,
    MembershipOutcome,
    Proposal,
)

CPU_BOUND = 0.5
"""Seconds of CPU the whole URL search may cost (a page of 4096 pairing checks costs
about 5 s; one chain head verification a few milliseconds)."""


def url_of(net: ServiceDevnet, index: int) -> str:
    return str(net.entry(index)["http_url"])


class Corrupt(httpx.BaseTransport):
    """Node 1 answers ``/v1/chain`` at once (the real chain); its ``?from=`` pages are
    ``pages(n)`` for the n-th page asked. The other nodes answer ``/v1/chain`` 0.5 s
    later (farther away), so node 1 is the one paged through."""

    def __init__(
        self, inner: httpx.BaseTransport, origin: str, pages: Callable[[int], bytes]
    ) -> None:
        self.inner, self.origin, self.pages = inner, origin, pages
        self.served = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        origin = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        if origin == self.origin and request.url.path == "/v1/chain" and request.url.query:
            start = int(request.url.params["from"])
            self.served += 1
            return httpx.Response(
                200, content=self.pages(self.served), headers={"x-chain-next": str(start + 1)}
            )
        if origin != self.origin and request.url.path == "/v1/chain":
            time.sleep(0.5)
        return self.inner.handle_request(request)


def forged_page(genesis: EpochCertificate, count: int) -> bytes:
    """``count`` forged ``AddMember`` certificates for node 2's public record, each with
    its own URL, signed with a valid G1 point (the genesis signature)."""
    member2 = next(p for p in genesis.transcript.committee if p.index == 2)
    forged = []
    for k in range(count):
        add = AddMember(member2, b"", (), 0, b"", f"http://x{k}.example")
        prop = Proposal(0, b"\0" * 32, 1, os.urandom(16), add=add)
        out = MembershipOutcome(0, k, b"\0" * 32, prop, 0)
        forged.append(MembershipCertificate(out, genesis.signature))
    return ChainUpdate.of(forged).encode()


def search_cpu(tmp_path: Path, pages: Callable[[EpochCertificate, int], bytes]) -> None:
    """Run a cold ``KeyClient.chain()`` against node 1 serving ``pages``; assert the CPU
    bound, that node 1 was paged through, and that nothing was learned for node 2."""

    async def main() -> None:
        async with in_process_devnet(
            tmp_path / "devnet", 3, 2, delta=0.3, start_in=5.0, window_period=5.0
        ) as net:
            await net.start()
            sts = await net.wait_for(
                "epoch 0", lambda: net.converged(net.indices, epoch=0), timeout=60
            )
            mpk = G2.from_bytes(bytes.fromhex(sts[1]["master_public_key"]))
            genesis = _links((await net.get(1, "/v1/chain?from=0")).content)[0]
            assert isinstance(genesis, EpochCertificate)
            cache: dict[int, bytes] = {}

            def page(n: int) -> bytes:
                if n not in cache:
                    cache[n] = pages(genesis, n)
                return cache[n]

            for n in range(1, MAX_URL_PAGES + 2):
                page(n)  # built before the clock starts
            net.real_time()
            transport = Corrupt(net.transport(), url_of(net, 1).rstrip("/"), page)

            def cold_start() -> tuple[float, dict[PI, str]]:
                client = KeyClient(
                    {PI(1): url_of(net, 1), PI(3): url_of(net, 3)}, mpk, transport=transport
                )
                try:
                    c = time.thread_time()
                    state = client.chain()
                    # A client pages through a node's kept links for members whose URL
                    # the recent tail does not certify: here (a chain served from
                    # genesis) a cold start does not, so ask for node 2's as it would.
                    found = older_certified_urls(client._http, url_of(net, 1), state, {PI(2)})
                    return time.thread_time() - c, {**client.urls, **found}
                finally:
                    client.close()

            cpu, urls = await net.in_thread(cold_start)
            print(f"chain(): {cpu:.2f} s CPU, {transport.served} pages asked; urls {urls}")
            assert transport.served >= 1
            assert PI(2) not in urls
            assert sorted(urls) == [PI(1), PI(3)]
            assert cpu < CPU_BOUND, cpu

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_the_client_asks_for_pages_no_larger_than_the_node_serves() -> None:
    assert URL_PAGE_LINKS == CHAIN_PAGE_LINKS
    assert URL_PAGE_BYTES >= CHAIN_PAGE_BYTES


def test_one_page_of_4096_forged_links_costs_little_cpu(tmp_path: Path) -> None:
    """The largest page ``ChainUpdate`` decodes (4096 links, each a pairing check if
    verified), then empty pages."""
    empty = ChainUpdate((), ()).encode()
    search_cpu(tmp_path, lambda g, n: forged_page(g, 4096) if n == 1 else empty)


def test_sixteen_full_pages_of_forged_links_cost_little_cpu(tmp_path: Path) -> None:
    """Pages an honest node could serve (64 links, under 1 MiB), every one forged, for
    as many pages as the client reads."""
    search_cpu(tmp_path, lambda g, n: forged_page(g, CHAIN_PAGE_LINKS))


def serve(pages: dict[int, bytes], asked: list[httpx.URL]) -> httpx.Client:
    """A node serving ``pages`` by ``from`` position (each page's next is ``from + 1``)."""

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url)
        start = int(request.url.params["from"])
        body = pages.get(start, ChainUpdate((), ()).encode())
        return httpx.Response(200, content=body, headers={"x-chain-next": str(start + 1)})

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_a_member_url_certified_on_a_later_page_is_found() -> None:
    g, state, cert = joined()
    asked: list[httpx.URL] = []
    pages = {1: ChainUpdate.of([g]).encode(), 2: ChainUpdate.of([cert]).encode()}
    with serve(pages, asked) as http:
        assert older_certified_urls(http, "http://n1", state, {PI(6)}) == {PI(6): URL}
    assert [u.params["from"] for u in asked] == ["1", "2"]
    assert {u.params["limit"] for u in asked} == {str(CHAIN_PAGE_LINKS)}
    assert {u.params["max_bytes"] for u in asked} == {str(CHAIN_PAGE_BYTES)}


def test_pages_beyond_the_limits_end_the_search() -> None:
    g, state, cert = joined()
    # The genuine link in a page of 65 links, or in a body longer than the bound: unread.
    too_many = ChainUpdate.of([g] * CHAIN_PAGE_LINKS + [cert]).encode()
    assert len(too_many) <= URL_PAGE_BYTES
    padded = ChainUpdate.of([cert, *[g] * 63])
    big = ChainUpdate(padded.kinds, (*padded.links[:-1], b"\0" * URL_PAGE_BYTES)).encode()
    for page in (too_many, big):
        asked: list[httpx.URL] = []
        with serve({1: page, 2: ChainUpdate.of([cert]).encode()}, asked) as http:
            assert older_certified_urls(http, "http://n1", state, {PI(6)}) == {}
        assert len(asked) == 1
    # A forged AddMember for node 6 first: node 6 is looked for no more, on any page.
    asked = []
    with serve(
        {1: ChainUpdate.of([forged(cert, 0)]).encode(), 2: ChainUpdate.of([cert]).encode()}, asked
    ) as http:
        assert older_certified_urls(http, "http://n1", state, {PI(6)}) == {}
    assert len(asked) == 1
