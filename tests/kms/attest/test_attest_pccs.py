"""Collateral from a PCCS: a loopback stub serves the vector collateral over HTTP."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import dcap_qvl
import httpx
import pytest
import trio
from attest_helpers import NOW, TDX_COLLATERAL, TDX_NOW, TDX_QUOTE, simulated

from kms.attest import Collateral, verify_quote
from kms.attest.pccs import CollateralCache, PCCSClient, PCCSError, platform_of, raw_members

INTEL = json.loads(TDX_COLLATERAL)


class PCCSStub:
    """A PCCS speaking API v4 over HTTP/1.1 on loopback, one request per connection."""

    def __init__(self, collateral: dict[str, dict[str, str]]) -> None:
        self.collateral = collateral  # FMSPC -> collateral in its JSON form
        self.requests: list[str] = []
        self.down = False
        self.url = ""

    def respond(self, target: str) -> tuple[int, dict[str, str], bytes]:
        if self.down:
            return 503, {}, b"down"
        split = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        fmspc = query.get("fmspc", next(iter(self.collateral)))
        c = self.collateral.get(fmspc.upper())
        if c is None:
            return 404, {}, b"no such FMSPC"
        routes = {
            "/sgx/certification/v4/pckcrl": (
                {"SGX-PCK-CRL-Issuer-Chain": quote(c["pck_crl_issuer_chain"])},
                bytes.fromhex(c["pck_crl"]),
            ),
            "/sgx/certification/v4/rootcacrl": ({}, c["root_ca_crl"].encode()),
            "/tdx/certification/v4/tcb": (
                {"TCB-Info-Issuer-Chain": quote(c["tcb_info_issuer_chain"])},
                f'{{"tcbInfo":{c["tcb_info"]},"signature":"{c["tcb_info_signature"]}"}}'.encode(),
            ),
            "/tdx/certification/v4/qe/identity": (
                {"SGX-Enclave-Identity-Issuer-Chain": quote(c["qe_identity_issuer_chain"])},
                f'{{"enclaveIdentity":{c["qe_identity"]},"signature":"{c["qe_identity_signature"]}"}}'.encode(),
            ),
        }
        if split.path not in routes:
            return 404, {}, b"not found"
        headers, body = routes[split.path]
        return 200, headers, body

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            target = data.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            self.requests.append(target)
            status, headers, body = self.respond(target)
            head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            await stream.send_all(head.encode() + body)


def serve(stub: PCCSStub, test: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, stub.handle, 0, host="127.0.0.1")
            )
            stub.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
            await test()
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_fetch_returns_the_collateral_byte_for_byte_and_caches_it(tmp_path: Path) -> None:
    stub = PCCSStub({"B0C06F000000": INTEL})
    cache = CollateralCache(tmp_path / "cache")

    async def test() -> None:
        client = PCCSClient(stub.url + "/sgx/certification/v4/", cache=cache)
        collateral = await client.collateral_for(TDX_QUOTE, now=TDX_NOW - 7200)
        assert collateral.to_dict() == INTEL
        assert stub.requests == [
            "/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
            "/tdx/certification/v4/tcb?fmspc=B0C06F000000&update=standard",
            "/tdx/certification/v4/qe/identity?update=standard",
            "/sgx/certification/v4/rootcacrl",
        ]

    serve(stub, test)
    path = tmp_path / "cache" / "B0C06F000000-platform.json"
    assert json.loads(path.read_text()) == INTEL
    assert cache.entries() == [("B0C06F000000", "platform")]
    cached = cache.load("B0C06F000000")
    assert cached is not None
    assert verify_quote(TDX_QUOTE, cached, now=TDX_NOW).tcb_status == "UpToDate"


def pck_chain(quote: bytes) -> str:
    chain: bytes | None = dcap_qvl.parse_quote(quote).cert_chain_pem_bytes()
    assert chain is not None
    return chain.decode().rstrip("\0")


def test_dcap_qvls_own_fetcher_reads_the_stub_the_same_way() -> None:
    # Cross-check of the stub and of the URL layout: dcap-qvl's get_collateral (asyncio,
    # run in a thread under trio) gets the same collateral from it.
    stub = PCCSStub({"B0C06F000000": INTEL})

    async def test() -> None:
        async def fetch() -> Any:
            return await dcap_qvl.get_collateral(stub.url, TDX_QUOTE)

        fetched = Collateral.coerce(await trio.to_thread.run_sync(asyncio.run, fetch()))
        fetched_form = fetched.to_dict()
        # dcap-qvl also attaches the PCK chain it read from the quote.
        assert fetched_form.pop("pck_certificate_chain").rstrip("\0") == pck_chain(TDX_QUOTE)
        assert fetched_form == INTEL
        assert verify_quote(TDX_QUOTE, fetched, now=TDX_NOW).tcb_status == "UpToDate"

    serve(stub, test)
    assert any(r.startswith("/tdx/certification/v4/tcb?fmspc=B0C06F000000") for r in stub.requests)


def test_cached_collateral_serves_offline_and_while_fresh(tmp_path: Path) -> None:
    tee = simulated(41)
    quote = tee.quote(b"pccs")
    stub = PCCSStub({"53494D544545": tee.collateral(NOW)})
    cache = CollateralCache(tmp_path)

    async def test() -> None:
        client = PCCSClient(stub.url, cache=cache)
        first = await client.collateral_for(quote, now=NOW)
        assert len(stub.requests) == 4
        stub.down = True
        again = await client.collateral_for(quote, now=NOW + 86_400)  # fresh: no request
        assert again == first and len(stub.requests) == 4
        # Near expiry the PCCS is asked; it is down, so the cached collateral is returned
        # and verification judges it.
        late = first.valid_until() - 60
        assert await client.collateral_for(quote, now=late) == first
        assert len(stub.requests) == 5
        # Back up, with newer collateral: it replaces the cached one.
        stub.down = False
        stub.collateral["53494D544545"] = tee.collateral(late)
        newer = await client.collateral_for(quote, now=late)
        assert newer.valid_until() > first.valid_until()
        assert cache.load("53494D544545") == newer
        verify_quote(quote, newer, now=late, root_ca=tee.root_ca_der)
        # Without a cache, a PCCS that is down is an error.
        stub.down = True
        with pytest.raises(PCCSError, match="503"):
            await PCCSClient(stub.url).collateral_for(quote, now=NOW)

    serve(stub, test)


def test_the_pccs_must_send_collateral_for_the_fmspc_asked(tmp_path: Path) -> None:
    tee = simulated(42)
    stub = PCCSStub({"53494D544545": INTEL})  # Intel's collateral under the wrong FMSPC

    async def test() -> None:
        with pytest.raises(PCCSError, match="B0C06F000000"):
            await PCCSClient(stub.url, cache=CollateralCache(tmp_path)).collateral_for(
                tee.quote(b""), now=NOW
            )
        with pytest.raises(PCCSError, match="404"):
            await PCCSClient(stub.url).fetch("00606A000000")

    serve(stub, test)
    assert CollateralCache(tmp_path).entries() == []


def mock_pccs(routes: dict[str, httpx.Response]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return routes.get(request.url.path, httpx.Response(404))

    return httpx.MockTransport(handler)


def intel_routes() -> dict[str, httpx.Response]:
    c = INTEL
    return {
        "/sgx/certification/v4/pckcrl": httpx.Response(
            200,
            headers={"SGX-PCK-CRL-Issuer-Chain": quote(c["pck_crl_issuer_chain"])},
            content=bytes.fromhex(c["pck_crl"]),
        ),
        "/tdx/certification/v4/tcb": httpx.Response(
            200,
            headers={"SGX-TCB-Info-Issuer-Chain": quote(c["tcb_info_issuer_chain"])},
            content=f'{{ "tcbInfo" : {c["tcb_info"]} , "signature":"{c["tcb_info_signature"]}"}}\n'.encode(),
        ),
        "/tdx/certification/v4/qe/identity": httpx.Response(
            200,
            headers={"SGX-Enclave-Identity-Issuer-Chain": quote(c["qe_identity_issuer_chain"])},
            content=f'{{"enclaveIdentity":{c["qe_identity"]},"signature":"{c["qe_identity_signature"]}"}}'.encode(),
        ),
        # Intel's PCS: no rootcacrl endpoint; the root's CRL distribution point serves DER.
        "/IntelSGXRootCA.der": httpx.Response(200, content=bytes.fromhex(c["root_ca_crl"])),
    }


def test_without_a_rootcacrl_endpoint_the_roots_crl_distribution_point_is_used() -> None:
    client = PCCSClient(
        "https://api.trustedservices.intel.com", transport=mock_pccs(intel_routes())
    )
    collateral = trio.run(functools.partial(client.fetch, "B0C06F000000", "platform"))
    assert collateral.to_dict() == INTEL


@pytest.mark.parametrize(
    ("path", "status", "content", "keep_headers", "match"),
    [
        ("/tdx/certification/v4/tcb", 200, b"{}", True, "tcbInfo"),
        ("/tdx/certification/v4/tcb", 200, b"not json", True, "TCB Info"),
        ("/tdx/certification/v4/tcb", 200, b'{"tcbInfo":{},"signature":"zz"}', True, "TCB Info"),
        ("/tdx/certification/v4/tcb", 200, b'{"tcbInfo":{},"signature":""}', True, "malformed"),
        ("/tdx/certification/v4/qe/identity", 200, b"{}", False, "Identity-Issuer-Chain"),
        ("/sgx/certification/v4/pckcrl", 500, b"", True, "HTTP 500"),
    ],
)
def test_malformed_pccs_answers_are_pccs_errors(
    path: str, status: int, content: bytes, keep_headers: bool, match: str
) -> None:
    routes = intel_routes()
    headers = routes[path].headers if keep_headers else {}
    routes[path] = httpx.Response(status, headers=headers, content=content)
    client = PCCSClient("http://pccs.invalid", transport=mock_pccs(routes))
    with pytest.raises(PCCSError, match=match):
        trio.run(client.fetch, "B0C06F000000")


def test_a_pccs_url_is_required_and_must_be_http() -> None:
    with pytest.raises(ValueError, match="required"):
        PCCSClient("")
    with pytest.raises(ValueError, match="http"):
        PCCSClient("ftp://pccs.example")
    assert (
        PCCSClient("https://p.example:8081/tdx/certification/v4/").url == "https://p.example:8081"
    )


def test_the_cache_is_keyed_by_fmspc_and_ca_only(tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    for bad in ("../../etc/passwd", "B0C06F00000", "B0C06F00000G"):
        with pytest.raises(ValueError, match="FMSPC"):
            cache.path(bad)
    with pytest.raises(ValueError, match="CA"):
        cache.path("B0C06F000000", "root")
    assert cache.load("B0C06F000000") is None
    cache.path("B0C06F000000").write_text("{not json")
    assert cache.load("B0C06F000000") is None  # corrupt reads as absent
    stored = cache.store("b0c06f000000", "processor", Collateral.from_json(TDX_COLLATERAL))
    assert stored.name == "B0C06F000000-processor.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "B0C06F000000-platform.json",
        "B0C06F000000-processor.json",
    ]


def test_the_platform_of_a_quote_is_read_from_its_pck_certificate() -> None:
    assert platform_of(TDX_QUOTE) == ("B0C06F000000", "platform")
    assert platform_of(simulated(43).quote(b"")) == ("53494D544545", "platform")
    with pytest.raises(PCCSError):
        platform_of(b"\x04\x00")


def test_raw_members_keeps_each_member_verbatim() -> None:
    text = ' { "a" : {"z":1, "y" : [ 2,3 ]} ,"b":"x\\"y", "c": null }\n'
    assert raw_members(text) == {"a": '{"z":1, "y" : [ 2,3 ]}', "b": '"x\\"y"', "c": "null"}
    assert raw_members("{}") == {}
    for bad in ("[]", '{"a":1', '{"a" 1}', '{"a":1} x', "{1:2}"):
        with pytest.raises(ValueError):
            raw_members(bad)


def test_the_node_collateral_provider_prepares_then_serves_from_memory(tmp_path: Path) -> None:
    from kms.attest import QuoteFailure, QuoteVerificationError, parse_tdx_quote
    from kms.attest.pccs import CollateralProvider

    tee = simulated(43)
    quote = parse_tdx_quote(tee.quote(b"node"))
    stub = PCCSStub({"53494D544545": tee.collateral(NOW)})

    async def test() -> None:
        provider = CollateralProvider(PCCSClient(stub.url, cache=CollateralCache(tmp_path)))
        with pytest.raises(QuoteVerificationError) as missing:
            provider.get(quote)  # nothing fetched yet: the releaser would refuse
        assert missing.value.reason is QuoteFailure.COLLATERAL_UNAVAILABLE
        await provider.prepare(quote, now=NOW)
        assert len(stub.requests) == 4
        verify_quote(quote, provider.get(quote), now=NOW, root_ca=tee.root_ca_der)
        await provider.prepare(quote, now=NOW + 60)  # fresh in memory: no request
        assert len(stub.requests) == 4
        # A restarted node with the PCCS down serves from its disk cache.
        stub.down = True
        restarted = CollateralProvider(PCCSClient(stub.url, cache=CollateralCache(tmp_path)))
        await restarted.prepare(quote, now=NOW + 60)
        assert restarted.get(quote) == provider.get(quote)
        # Without a cache and with the PCCS down, nothing: counted, and refused on use.
        bare = CollateralProvider(PCCSClient(stub.url))
        await bare.prepare(quote, now=NOW)
        assert bare.fetch_failures == 1
        with pytest.raises(QuoteVerificationError, match="COLLATERAL_UNAVAILABLE"):
            bare.get(quote)
        # A failed fetch is remembered: no new fetch until the failure TTL passes.
        await bare.prepare(quote, now=NOW + 1)
        assert bare.fetch_failures == 1 and bare.failures_cached == 1
        # Garbage never reaches prepare (the releaser's cheap checks refuse it first);
        # get refuses it as a malformed quote.
        with pytest.raises(QuoteVerificationError) as bad:
            bare.get(b"not a quote")
        assert bad.value.reason is QuoteFailure.MALFORMED_QUOTE

    serve(stub, test)


def test_a_provider_needs_a_pccs_or_a_file_and_falls_back_to_a_file_of_the_platform(
    tmp_path: Path,
) -> None:
    from kms.attest.pccs import CollateralProvider

    with pytest.raises(ValueError):
        CollateralProvider()
    tee = simulated(44)
    quote = tee.quote(b"join")
    down = PCCSClient("http://127.0.0.1:9", cache=CollateralCache(tmp_path))
    # Nothing fetched or cached: the file serves, as it is for the quote's platform.
    both = CollateralProvider(down, fixed=Collateral.from_dict(tee.collateral(NOW)))
    verify_quote(quote, both.get(quote), now=NOW, root_ca=tee.root_ca_der)
    # A file for another platform does not.
    other = CollateralProvider(down, fixed=Collateral.from_json(TDX_COLLATERAL))
    with pytest.raises(Exception, match="COLLATERAL_UNAVAILABLE"):
        other.get(quote)
