"""A hostile PCCS cannot make a node hold more than a bounded answer.

A loopback HTTP server plays a malicious PCCS (or whoever sits between a node
and its PCCS when it is reached over ``http://`` or with ``pccs_verify_tls =
false``): it streams long bodies, produced lazily so that the test itself holds
none of it. The node's collateral provider, through its PCCS client, must
refuse with a typed error (``PCCSError`` of kind ``oversized``), count the fetch
as failed and not repeat it, and keep its peak memory (measured with
``tracemalloc``) within a few MiB whatever the answer's length.
"""

from __future__ import annotations

import functools
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest
import trio
from attest_helpers import TDX_NOW, TDX_QUOTE

from kms.attest import QuoteFailure, QuoteVerificationError, parse_tdx_quote
from kms.attest.pccs import MAX_BODY, CollateralProvider, PCCSClient, PCCSError

MiB = 1024 * 1024
CHUNK = 64 * 1024


class HostilePCCS:
    """Answers every GET with ``size`` bytes of ``fill``, streamed in 64 KiB chunks."""

    def __init__(self, size: int, fill: bytes, *, declare_length: bool) -> None:
        self.size = size
        self.block = fill * CHUNK
        self.declare_length = declare_length
        self.sent = 0
        self.requests: list[str] = []
        self.url = ""

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data.split(b"\r\n", 1)[0].split(b" ")[1].decode())
            head = "HTTP/1.1 200 OK\r\nConnection: close\r\nSGX-PCK-CRL-Issuer-Chain: x\r\n"
            if self.declare_length:
                head += f"Content-Length: {self.size}\r\n"
            try:
                await stream.send_all(head.encode() + b"\r\n")
                left = self.size
                while left > 0:
                    n = min(CHUNK, left)
                    await stream.send_all(self.block[:n])
                    self.sent += n
                    left -= n
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client hung up: what a bounded reader does


def serve(pccs: HostilePCCS, test: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, pccs.handle, 0, host="127.0.0.1")
            )
            pccs.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            await test()
            nursery.cancel_scope.cancel()

    trio.run(main)


def _peak_during(run: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


# Stopping mid-body leaves httpx's nested stream generators to the garbage collector (the
# connection itself is closed by the response's context manager); trio warns about them.
@pytest.mark.filterwarnings("ignore:Async generator 'http:ResourceWarning")
@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_an_oversized_pccs_answer_is_refused_having_read_at_most_the_cap(
    declare_length: bool, caplog: pytest.LogCaptureFixture
) -> None:
    pccs = HostilePCCS(16 * MiB, b"z", declare_length=declare_length)
    quote = parse_tdx_quote(TDX_QUOTE)
    outcome: dict[str, object] = {}

    async def test() -> None:
        client = PCCSClient(pccs.url)
        provider = CollateralProvider(client, failure_ttl=60)
        await provider.prepare(quote, now=TDX_NOW)
        await provider.prepare(quote, now=TDX_NOW + 1)  # the failure is remembered
        outcome.update(client=client, provider=provider)
        with pytest.raises(PCCSError) as refused:
            await client.fetch("B0C06F000000")
        outcome["kind"] = refused.value.kind

    peak = _peak_during(lambda: serve(pccs, test))
    client, provider = outcome["client"], outcome["provider"]
    assert isinstance(client, PCCSClient) and isinstance(provider, CollateralProvider)
    assert outcome["kind"] == "oversized"
    assert client.refused["oversized"] == 2
    assert (provider.fetches, provider.fetch_failures, provider.failures_cached) == (1, 1, 1)
    # The failed fetch is logged once, with its kind and platform.
    failed = [r.getMessage() for r in caplog.records if "collateral fetch failed" in r.msg]
    assert len(failed) == 1 and "(oversized)" in failed[0] and quote.fmspc in failed[0], failed
    with pytest.raises(QuoteVerificationError) as unavailable:
        provider.get(quote)
    assert unavailable.value.reason is QuoteFailure.COLLATERAL_UNAVAILABLE
    # Two GETs of 16 MiB each were offered; far less was held at any time.
    assert len(pccs.requests) == 2
    assert peak < MAX_BODY + 3 * MiB, f"peak {peak / MiB:.1f} MiB"


def test_a_hex_body_under_the_cap_costs_no_more_than_its_size() -> None:
    """A CRL may come hex-encoded: telling it apart takes a linear scan, not memory in
    proportion to the body (a backtracking regular expression took ~60 bytes per byte)."""
    pccs = HostilePCCS(MAX_BODY - 2, b"0", declare_length=True)

    async def test() -> None:
        with pytest.raises(PCCSError):  # hex, but no CRL: refused further on
            await PCCSClient(pccs.url).fetch("B0C06F000000")

    peak = _peak_during(lambda: serve(pccs, test))
    assert pccs.sent >= MAX_BODY - 2  # read in full, then refused as no CRL
    assert peak < 4 * MAX_BODY, f"peak {peak / MiB:.1f} MiB"
