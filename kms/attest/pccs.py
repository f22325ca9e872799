"""Collateral from a PCCS, kept in a local cache so that verification works offline.

A PCCS (Intel's Provisioning Certificate Caching Service, or any service with
the same API, such as Intel's PCS itself) serves the collateral of a platform
family. :class:`PCCSClient` sends the same four GETs as dcap-qvl 0.7.0's
``get_collateral`` (API v4; ``{tee}`` is ``tdx`` for TDX quotes)::

    GET {url}/sgx/certification/v4/pckcrl?ca={platform|processor}&encoding=der
        body: the PCK CRL, DER            header SGX-PCK-CRL-Issuer-Chain (URL-encoded PEM)
    GET {url}/{tee}/certification/v4/tcb?fmspc={FMSPC}&update=standard
        body: {"tcbInfo": {...}, "signature": "<hex r||s>"}
                                          header TCB-Info-Issuer-Chain or SGX-TCB-Info-Issuer-Chain
    GET {url}/{tee}/certification/v4/qe/identity?update=standard
        body: {"enclaveIdentity": {...}, "signature": "<hex r||s>"}
                                          header SGX-Enclave-Identity-Issuer-Chain
    GET {url}/sgx/certification/v4/rootcacrl
        body: the root CA CRL, hex-encoded DER (Intel's PCS has no such endpoint: the CRL is
        then fetched from the root certificate's CRL distribution point)

and keeps ``tcbInfo`` and ``enclaveIdentity`` as the exact bytes the PCCS sent,
since their signatures cover those bytes (dcap-qvl re-serialises them with
serde_json instead). Nothing fetched is trusted: :func:`kms.attest.verify_quote`
checks every signature against the pinned root.

:class:`CollateralCache` is a directory of JSON files, one per FMSPC and CA
(``B0C06F000000-platform.json``), each in dcap-qvl's ``QuoteCollateralV3`` JSON
form, so a cached file can be passed to ``kms attest verify --collateral``.
:meth:`PCCSClient.collateral_for` serves from the cache while the cached
collateral stays valid for a margin, refetches otherwise, and falls back to the
cache when the PCCS cannot be reached (verification then decides whether it
is still good enough).

The PCCS URL has no default: a node must be configured with one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import unquote

import dcap_qvl
import httpx
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kms.attest.collateral import MAX_JSON_DEPTH, Collateral, CollateralFloor
from kms.attest.errors import QuoteFailure, QuoteVerificationError, one_line
from kms.attest.verify import ParsedQuote
from mpc.codec import json_nesting_depth

log = logging.getLogger(__name__)

CAS = ("platform", "processor")
"""The PCK CAs a PCK certificate can be issued by."""

DEFAULT_TIMEOUT = 30.0
DEFAULT_MIN_VALIDITY = 3600
"""Refetch cached collateral that stops verifying within this many seconds."""

MAX_BODY = 1024 * 1024
"""Bytes a PCCS answer may have: collateral documents are tens of KiB. A longer answer is
refused (:class:`PCCSError` of kind ``oversized``) having read at most this plus one chunk."""

_FMSPC = re.compile(r"[0-9A-Fa-f]{12}")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_WS = re.compile(r"[ \t\n\r]*")


DEFAULT_MAX_CONCURRENT_FETCHES = 4
"""Collateral fetches a node runs at once (each is four GETs to the PCCS)."""
DEFAULT_FAILURE_TTL = 60
"""Seconds a platform whose fetch failed is not asked for again."""
DEFAULT_MAX_PLATFORMS = 1024
"""Platforms a node keeps collateral (and failed fetches) for in memory, least recently
used dropped first."""


class PCCSError(Exception):
    """The PCCS could not be reached, or answered with something that is not collateral.

    ``kind`` says which: ``"unavailable"`` (unreachable, an HTTP error, malformed or
    mismatched collateral), ``"oversized"`` (an answer longer than ``MAX_BODY``),
    ``"stale"`` (below the node's collateral floor) or ``"rollback"`` (older than the
    collateral already cached).
    """

    def __init__(self, message: str, kind: str = "unavailable") -> None:
        super().__init__(message)
        self.kind = kind


def platform_of(quote: bytes) -> tuple[str, str]:
    """The ``(FMSPC, CA)`` of a quote, read from its PCK certificate: what to fetch.

    Raises :class:`PCCSError` if the quote carries no readable PCK certificate.
    """
    fmspc, ca, _ = _platform(quote)
    return fmspc, ca


def _platform(quote: bytes) -> tuple[str, str, str]:
    try:
        parsed = dcap_qvl.parse_quote(bytes(quote))
        fmspc, ca = parsed.fmspc().upper(), parsed.ca()
        tee = "tdx" if parsed.is_tdx() else "sgx"
    except Exception as exc:  # dcap-qvl raises ValueError for anything undecodable
        raise PCCSError(f"cannot tell the quote's platform: {one_line(str(exc))}") from None
    return fmspc, ca, tee


def _check_key(fmspc: str, ca: str) -> tuple[str, str]:
    if not isinstance(fmspc, str) or not _FMSPC.fullmatch(fmspc):
        raise ValueError(f"FMSPC must be 12 hex digits, not {fmspc!r}")
    if ca not in CAS:
        raise ValueError(f"CA must be one of {CAS}, not {ca!r}")
    return fmspc.upper(), ca


class CollateralCache:
    """A directory of collateral JSON files keyed by FMSPC and CA (see the module docstring).

    Writes are atomic (a temporary file renamed over the old one), so a reader never sees
    a partial file; an unreadable or corrupt file reads as absent.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, fmspc: str, ca: str = "platform") -> Path:
        fmspc, ca = _check_key(fmspc, ca)
        return self.directory / f"{fmspc}-{ca}.json"

    def load(self, fmspc: str, ca: str = "platform") -> Collateral | None:
        try:
            text = self.path(fmspc, ca).read_text()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            return Collateral.from_json(text)
        except QuoteVerificationError:
            return None

    def store(self, fmspc: str, ca: str, collateral: Collateral) -> Path:
        target = self.path(fmspc, ca)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(collateral.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def entries(self) -> list[tuple[str, str]]:
        """The cached ``(FMSPC, CA)`` pairs, sorted."""
        out = []
        for p in sorted(self.directory.glob("*.json")):
            fmspc, _, ca = p.stem.partition("-")
            if _FMSPC.fullmatch(fmspc) and ca in CAS:
                out.append((fmspc.upper(), ca))
        return out


def raw_members(text: str) -> dict[str, str]:
    """The members of a JSON object as their exact source text (``{"a": [1, 2]}`` gives
    ``{"a": "[1, 2]"}``), so that signed members can be kept byte for byte."""
    if json_nesting_depth(text) > MAX_JSON_DEPTH:  # the decoder recurses: measure first
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH}")
    decoder = json.JSONDecoder()
    match = _WS.match(text, 0)
    i = match.end() if match else 0
    if text[i : i + 1] != "{":
        raise ValueError("not a JSON object")
    i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
    out: dict[str, str] = {}
    if text[i : i + 1] == "}":
        i += 1
    else:
        while True:
            if text[i : i + 1] != '"':
                raise ValueError("expected a member name")
            key, i = decoder.raw_decode(text, i)
            i = _WS.match(text, i).end()  # type: ignore[union-attr]
            if text[i : i + 1] != ":":
                raise ValueError("expected ':'")
            i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
            _, end = decoder.raw_decode(text, i)
            out[key] = text[i:end]
            i = _WS.match(text, end).end()  # type: ignore[union-attr]
            if text[i : i + 1] == ",":
                i = _WS.match(text, i + 1).end()  # type: ignore[union-attr]
                continue
            if text[i : i + 1] == "}":
                i += 1
                break
            raise ValueError("expected ',' or '}'")
    if text[i:].strip(" \t\n\r"):
        raise ValueError("trailing data after the JSON object")
    return out


def _signed_document(body: bytes, member: str, what: str) -> tuple[str, bytes]:
    """``(document, signature)`` from a PCCS ``{"<member>": {...}, "signature": "..."}``."""
    try:
        members = raw_members(body.decode())
        document = members[member]
        signature = json.loads(members["signature"])
        if not isinstance(signature, str):
            raise ValueError("signature is not a string")
        if not document.startswith("{"):
            raise ValueError(f"{member} is not an object")
        return document, bytes.fromhex(signature)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise PCCSError(f"{what} response is not {{{member!r}, 'signature'}}: {exc}") from None


def _crl_der(body: bytes, what: str) -> bytes:
    """A CRL body as DER: PCCSs send DER, hex-encoded DER or PEM."""
    if body.lstrip().startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_crl(body.strip()).public_bytes(Encoding.DER)
        except ValueError as exc:
            raise PCCSError(f"{what} is not a PEM CRL: {exc}") from None
    # A linear scan, not a regular expression: matching a repeated group over a large
    # body costs the regex engine memory in proportion to the body.
    digits = body.strip()
    if digits and len(digits) % 2 == 0 and set(digits) <= _HEX_DIGITS:
        return bytes.fromhex(digits.decode("ascii"))
    return body


def _crl_distribution_point(chain_pem: str) -> str | None:
    """The first URI CRL distribution point of the last (root) certificate of a chain."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
        points = certs[-1].extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except (ValueError, IndexError, x509.ExtensionNotFound):
        return None
    for point in points.value:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier):
                return name.value
    return None


@dataclass(frozen=True)
class _Answer:
    """A PCCS answer with status 200, its body read in full (within the size cap)."""

    url: str
    headers: httpx.Headers
    content: bytes


class PCCSClient:
    """Fetches collateral from one PCCS and keeps it in an optional :class:`CollateralCache`.

    ``url`` is the PCCS base URL (``https://pccs.example:8081``; a trailing
    ``/sgx/certification/v4`` or ``/tdx/certification/v4`` is accepted and dropped).
    ``verify_tls=False`` accepts a PCCS with a self-signed certificate, as dcap-qvl
    does: the collateral is signed, so TLS only protects its freshness and
    availability. ``transport`` replaces httpx's network transport (tests).
    Use under trio (or any event loop httpx supports).
    """

    def __init__(
        self,
        url: str,
        *,
        cache: CollateralCache | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        verify_tls: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        floor: CollateralFloor | None = None,
        max_body: int = MAX_BODY,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ValueError("a PCCS URL is required")
        base = url.strip().rstrip("/")
        for suffix in ("/sgx/certification/v4", "/tdx/certification/v4"):
            base = base.removesuffix(suffix)
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"PCCS URL must be http(s): {url!r}")
        self.url = base
        self.cache = cache
        self._timeout = timeout
        self._verify_tls = verify_tls
        self._transport = transport
        self.floor = floor or CollateralFloor()
        if max_body < 1:
            raise ValueError("max_body must be positive")
        self.max_body = max_body
        self.refused: Counter[str] = Counter()
        """Fetched collateral refused, by ``PCCSError.kind`` (``oversized``, ``stale``,
        ``rollback``)."""

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self._timeout,
            verify=self._verify_tls,
            transport=self._transport,
            follow_redirects=True,
            # Bodies are read raw and counted against ``max_body``: a compressed body could
            # expand past any bound within one chunk.
            headers={"Accept-Encoding": "identity"},
        )

    async def _get(self, client: httpx.AsyncClient, url: str) -> _Answer:
        """GET ``url``: its headers and body, the body streamed and cut at ``max_body``."""
        limit = self.max_body
        try:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise PCCSError(f"GET {url}: HTTP {response.status_code}")
                encoding = response.headers.get("content-encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):  # asked for identity: no decompression
                    raise PCCSError(f"GET {url}: answer in content encoding {encoding[:40]!r}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise self._oversized(url)
                body = bytearray()
                chunks_of = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())
                async with aclosing(chunks_of) as chunks:  # identity: not decoded
                    async for chunk in chunks:
                        body += chunk
                        if len(body) > limit:
                            raise self._oversized(url)
                return _Answer(url, response.headers, bytes(body))
        except httpx.HTTPError as exc:
            raise PCCSError(f"GET {url}: {exc!r}") from None

    def _oversized(self, url: str) -> PCCSError:
        self.refused["oversized"] += 1
        return PCCSError(f"GET {url}: answer longer than {self.max_body} bytes", "oversized")

    @staticmethod
    def _header(response: _Answer, *names: str) -> str:
        for name in names:
            value = response.headers.get(name)
            if value is not None:
                return unquote(value)
        raise PCCSError(f"{response.url}: no {' or '.join(names)} header")

    async def fetch(
        self, fmspc: str, ca: str = "platform", *, tee: str = "tdx", now: int | None = None
    ) -> Collateral:
        """Fetch the collateral of one platform family from the PCCS (and cache it).

        Collateral below the floor (:class:`CollateralFloor`; its age is judged at ``now``
        when given) or older in any part than the cached one (:meth:`Collateral.older_than`)
        is refused (:class:`PCCSError` of kind ``stale`` or ``rollback``) and not cached:
        a PCCS, or whoever sits between it and the node, cannot roll collateral back.
        """
        collateral = await self._download(fmspc, ca, tee)
        fmspc, ca = _check_key(fmspc, ca)
        try:
            self.floor.check(collateral, collateral.issue_date() if now is None else now)
        except QuoteVerificationError as exc:
            self.refused["stale"] += 1
            raise PCCSError(f"the PCCS sent stale collateral: {exc}", "stale") from None
        if self.cache is not None:
            cached = await trio.to_thread.run_sync(self.cache.load, fmspc, ca)
            try:
                rolled_back = cached is not None and collateral.older_than(cached)
            except QuoteVerificationError:
                rolled_back = False  # a cached file that says nothing is simply replaced
            if rolled_back:
                self.refused["rollback"] += 1
                raise PCCSError(
                    f"the PCCS sent collateral for {fmspc} older than the cached one "
                    "(TCB evaluation data number, issue date or CRL); kept the cached one",
                    "rollback",
                )
            await trio.to_thread.run_sync(self.cache.store, fmspc, ca, collateral)
        return collateral

    async def _download(self, fmspc: str, ca: str, tee: str) -> Collateral:
        fmspc, ca = _check_key(fmspc, ca)
        if tee not in ("tdx", "sgx"):
            raise ValueError("tee must be 'tdx' or 'sgx'")
        sgx = f"{self.url}/sgx/certification/v4"
        tee_base = f"{self.url}/{tee}/certification/v4"
        async with self._client() as client:
            pck = await self._get(client, f"{sgx}/pckcrl?ca={ca}&encoding=der")
            pck_crl_issuer_chain = self._header(pck, "SGX-PCK-CRL-Issuer-Chain")
            pck_crl = _crl_der(pck.content, "PCK CRL")
            tcb = await self._get(client, f"{tee_base}/tcb?fmspc={fmspc}&update=standard")
            tcb_info_issuer_chain = self._header(
                tcb, "TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"
            )
            tcb_info, tcb_info_signature = _signed_document(tcb.content, "tcbInfo", "TCB Info")
            qe = await self._get(client, f"{tee_base}/qe/identity?update=standard")
            qe_identity_issuer_chain = self._header(qe, "SGX-Enclave-Identity-Issuer-Chain")
            qe_identity, qe_identity_signature = _signed_document(
                qe.content, "enclaveIdentity", "QE Identity"
            )
            try:
                root = await self._get(client, f"{sgx}/rootcacrl")
                root_ca_crl = _crl_der(root.content, "root CA CRL")
            except PCCSError:
                point = _crl_distribution_point(qe_identity_issuer_chain)
                if point is None:
                    raise
                root_ca_crl = _crl_der((await self._get(client, point)).content, "root CA CRL")
        try:
            collateral = Collateral(
                pck_crl_issuer_chain=pck_crl_issuer_chain,
                root_ca_crl=root_ca_crl,
                pck_crl=pck_crl,
                tcb_info_issuer_chain=tcb_info_issuer_chain,
                tcb_info=tcb_info,
                tcb_info_signature=tcb_info_signature,
                qe_identity_issuer_chain=qe_identity_issuer_chain,
                qe_identity=qe_identity,
                qe_identity_signature=qe_identity_signature,
            )
            served = collateral.fmspc
            collateral.valid_until()
        except QuoteVerificationError as exc:
            raise PCCSError(f"the PCCS sent malformed collateral: {exc.message}") from None
        if served != fmspc:
            raise PCCSError(f"asked for FMSPC {fmspc}, the PCCS sent TCB Info for {served}")
        return collateral

    async def collateral_for(
        self,
        quote: bytes | ParsedQuote,
        *,
        now: int,
        min_validity: int = DEFAULT_MIN_VALIDITY,
        fallback: bool = True,
    ) -> Collateral:
        """Collateral to verify ``quote`` at ``now``: the cached one while it verifies until
        ``now + min_validity``, else a fresh one from the PCCS, else (PCCS unreachable, or
        its collateral refused) the cached one if any and ``fallback``. Raises
        :class:`PCCSError` when there is none."""
        if isinstance(quote, ParsedQuote):
            (fmspc, ca), tee = quote.platform, "tdx"
        else:
            fmspc, ca, tee = _platform(quote)
        cached = None
        if self.cache is not None:
            cached = await trio.to_thread.run_sync(self.cache.load, fmspc, ca)
        if cached is not None and _fresh(cached, now, min_validity, self.floor):
            return cached
        try:
            return await self.fetch(fmspc, ca, tee=tee, now=now)
        except PCCSError:
            if cached is not None and fallback:
                return cached
            raise


def _fresh(
    collateral: Collateral, now: int, min_validity: int, floor: CollateralFloor | None = None
) -> bool:
    """Whether ``collateral`` still verifies, and is young enough for ``floor``, at
    ``now + min_validity``."""
    try:
        until = collateral.valid_until()
        aged = floor.fresh_until(collateral) if floor is not None else None
        if aged is not None:
            until = min(until, aged)
        return collateral.valid_from() <= now and now + min_validity <= until
    except QuoteVerificationError:
        return False


class CollateralProvider:
    """The collateral a node verifies quotes with: from its PCCS and cache, and/or a file.

    The key releaser is synchronous and never waits on the network, so the
    node's shell first runs the releaser's cheap checks (which end with the
    quote's PCK chain verified to a pinned root), then awaits :meth:`prepare`
    for the checked quote's platform (served from memory while fresh, else the
    PCCS client's ``collateral_for``: cache or fetch), then the releaser calls
    :meth:`get`, which reads memory, then the disk cache, then the fixed
    collateral (``collateral_file``) if it is for the quote's platform. A
    quote whose platform has none of these is refused with
    ``COLLATERAL_UNAVAILABLE``. Checks that cannot await (a join request's
    quote, checked inside the node core) use :meth:`get` alone.

    What an anonymous client can make it do is bounded: one fetch per platform
    runs at a time (concurrent requests wait for it), at most
    ``max_concurrent_fetches`` run at once, a platform whose fetch failed is
    not asked for again for ``failure_ttl`` seconds (nor one just fetched, in
    case its PCCS keeps serving collateral close to its end), and at most
    ``max_platforms`` platforms are remembered (fresh collateral and failures
    each; least recently used dropped first). Nothing is kept per platform
    once its fetch ends but its result. Collateral in memory is never replaced
    by older collateral (:meth:`Collateral.older_than`).
    """

    def __init__(
        self,
        client: PCCSClient | None = None,
        *,
        fixed: Collateral | None = None,
        min_validity: int = DEFAULT_MIN_VALIDITY,
        max_concurrent_fetches: int = DEFAULT_MAX_CONCURRENT_FETCHES,
        failure_ttl: int = DEFAULT_FAILURE_TTL,
        max_platforms: int = DEFAULT_MAX_PLATFORMS,
    ) -> None:
        if client is None and fixed is None:
            raise ValueError("give a PCCS client, a fixed collateral, or both")
        if max_concurrent_fetches < 1 or max_platforms < 1 or failure_ttl < 0:
            raise ValueError("fetch and platform bounds must be positive")
        self.client = client
        self.fixed = fixed
        self.min_validity = min_validity
        self.failure_ttl = failure_ttl
        self.max_platforms = max_platforms
        self._held: OrderedDict[tuple[str, str], Collateral] = OrderedDict()
        self._fetched: OrderedDict[tuple[str, str], tuple[int, str]] = OrderedDict()
        """Platform -> (no fetch before, ``"ok"`` or the failure's ``PCCSError.kind``)."""
        self._inflight: dict[tuple[str, str], trio.Event] = {}
        self._limiter = trio.CapacityLimiter(max_concurrent_fetches)
        self.fetches = 0
        """Fetches started (each asks the PCCS, unless the disk cache is fresh)."""
        self.fetch_failures = 0
        self.failures_cached = 0
        """Requests that found their platform's last fetch failed and did not fetch."""
        self.rollbacks_refused = 0

    @property
    def max_concurrent_fetches(self) -> int:
        return int(self._limiter.total_tokens)

    def sizes(self) -> dict[str, int]:
        """How many platforms it holds collateral for, remembers a failed fetch of, and is
        fetching (or waiting for a fetch slot) for: each bounded (see the class docstring)."""
        return {
            "held": len(self._held),
            "failed": sum(1 for _, kind in self._fetched.values() if kind != "ok"),
            "fetching": len(self._inflight),
        }

    def _floor(self) -> CollateralFloor | None:
        return self.client.floor if self.client is not None else None

    async def prepare(self, quote: ParsedQuote, *, now: int) -> None:
        """Make sure :meth:`get` can answer for ``quote`` (never raises for bad input: any
        failure of a fetch is remembered for ``failure_ttl`` like a refused one).

        ``quote`` is one the caller's cheap checks accepted (its PCK chain verifies to a
        pinned root), so only genuine platforms are ever fetched for."""
        if self.client is None:
            return
        key = quote.platform
        held = self._held.get(key)
        if held is not None and _fresh(held, now, self.min_validity, self._floor()):
            self._held.move_to_end(key)
            return
        last = self._fetched.get(key)
        if last is not None and now < last[0]:
            if last[1] != "ok":
                self.failures_cached += 1
            return
        running = self._inflight.get(key)
        if running is not None:
            await running.wait()
            return
        done = self._inflight[key] = trio.Event()
        try:
            async with self._limiter:
                self.fetches += 1
                got = await self.client.collateral_for(
                    quote, now=now, min_validity=self.min_validity, fallback=False
                )
        except PCCSError as exc:
            # Once per platform per failure_ttl: the counters say how many, this says why.
            log.warning(
                "collateral fetch failed (%s) for %s/%s: %s",
                exc.kind,
                *key,
                one_line(str(exc))[:200],
            )
            self.fetch_failures += 1
            if exc.kind == "rollback":
                self.rollbacks_refused += 1
            self._remember(key, now, exc.kind)
        except Exception as exc:  # nothing a PCCS sends may escape, nor go unremembered
            log.warning("collateral fetch failed: %s", one_line(repr(exc))[:200])
            self.fetch_failures += 1
            self._remember(key, now, "unavailable")
        else:
            self._remember(key, now, "ok")
            self._keep(key, got)
        finally:
            del self._inflight[key]
            done.set()

    def _remember(self, key: tuple[str, str], now: int, kind: str) -> None:
        self._fetched[key] = (now + self.failure_ttl, kind)
        self._fetched.move_to_end(key)
        while len(self._fetched) > self.max_platforms:
            self._fetched.popitem(last=False)

    def _keep(self, key: tuple[str, str], collateral: Collateral) -> None:
        held = self._held.get(key)
        try:
            older = held is not None and collateral.older_than(held)
        except QuoteVerificationError:
            older = False
        if older:
            self.rollbacks_refused += 1
            return
        self._held[key] = collateral
        self._held.move_to_end(key)
        while len(self._held) > self.max_platforms:
            self._held.popitem(last=False)

    def get(self, quote: bytes | ParsedQuote) -> Collateral:
        """The collateral for ``quote``'s platform, without touching the network."""
        if self.client is None and self.fixed is not None:
            return self.fixed
        if isinstance(quote, ParsedQuote):
            key = quote.platform
        else:
            try:
                key = platform_of(quote)
            except PCCSError as exc:
                raise QuoteVerificationError(QuoteFailure.MALFORMED_QUOTE, str(exc)) from None
        held = self._held.get(key)
        if held is None and self.client is not None and self.client.cache is not None:
            held = self.client.cache.load(*key)
            if held is not None:
                self._keep(key, held)
        if held is None and self.fixed is not None and self.fixed.fmspc == key[0]:
            held = self.fixed
        last = self._fetched.get(key)
        if held is None and last is not None and last[1] in ("stale", "rollback"):
            raise QuoteVerificationError(
                QuoteFailure.COLLATERAL_STALE,
                f"the PCCS served collateral for FMSPC {key[0]} that is "
                + (
                    "below this node's floor"
                    if last[1] == "stale"
                    else "older than the collateral this node cached"
                ),
            )
        if held is None:
            raise QuoteVerificationError(
                QuoteFailure.COLLATERAL_UNAVAILABLE,
                f"no collateral for FMSPC {key[0]} ({key[1]} CA): the PCCS is unreachable "
                "or does not know it, and nothing is cached",
            )
        return held
