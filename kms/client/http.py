"""The CVM client's shell: fetch the chain, verify it from the pinned key, ask nodes for partials.

It asks ``t`` nodes at once and more when one refuses, fails to answer in time
or sends a bad partial; bad partials are named by index and kept as evidence.
The master public key is never taken from a node: it is pinned by the caller.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from kms.client.appcert import AppKeyCert, AppKeyCertError, AppKeyCertSession
from kms.client.core import KeyReleaseError, KeyRequestSession, Rejected
from kms.protocol import AppKeyCertShare, KeyRefusal, KeyResponse, WrongPartialEvidence
from mpc import ibe
from mpc.cert import EpochCertificate, check_mpk
from mpc.codec import MessageDecodeError, decode
from mpc.errors import InvalidEncoding
from mpc.ids import ParticipantIndex
from mpc.math import G2
from mpc.membership import (
    ChainError,
    ChainState,
    MembershipCertificate,
    certified_urls,
    rank,
    verify_recent,
)
from mpc.membership.messages import ChainUpdate, Link
from mpc.tkd import DerivedPoint, typed_keys

MSGPACK = "application/msgpack"


@dataclass(frozen=True)
class FetchResult:
    derived: Mapping[tuple[str, int], DerivedPoint]
    epoch: int
    asked: tuple[ParticipantIndex, ...]
    rejected: tuple[Rejected, ...]
    refusals: Mapping[ParticipantIndex, KeyRefusal]
    ignored_nodes: tuple[str, ...]
    urls: Mapping[ParticipantIndex, str] = field(default_factory=dict)
    """The URLs of the verified chain's members the client used (``KeyClient.urls``)."""


def _links(raw: bytes) -> list[EpochCertificate | MembershipCertificate]:
    return ChainUpdate.decode(raw).decoded_links()


def chain_from_bytes(raw: bytes, mpk: G2) -> ChainState:
    """Verify a ``ChainUpdate`` (the body of ``GET /v1/chain``) from the pinned ``mpk``."""
    return chain_epochs_from_bytes(raw, mpk)[-1]


def chain_epochs_from_bytes(raw: bytes, mpk: G2) -> list[ChainState]:
    """Like ``chain_from_bytes``, with the verified state of every epoch given (oldest first).

    The body is genesis and a recent tail, or only a tail: its first epoch
    certificate is checked directly under the pinned ``mpk`` and each later link
    against the one before (``verify_recent``), one pairing check per link
    whatever the chain's length. A head checked this way is as strong as a walk
    from genesis (docs/threat-model.md, "The chain is checked at its head").
    """
    return verify_recent(_links(raw), mpk=mpk)


class _DaemonPool:
    """Run each call on a daemon thread: a node that accepts connections and never
    answers holds up neither the caller nor the process's exit (``ThreadPoolExecutor``
    joins its threads at exit, so one such node would).

    A thread whose call returned waits ``IDLE`` seconds for the next one before it
    ends, so a client asking again soon (a warm fetch: ``t`` requests at once) reuses
    threads rather than starting new ones; a call finding no idle thread starts one,
    so a thread held by a silent node never delays another call."""

    IDLE = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._calls = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a call that no submitted call has claimed
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            start = self._closed or self._idle == 0
            if not start:
                self._idle -= 1  # claimed: that thread takes this call (or one like it)
        if start and self._closed:
            threading.Thread(target=self._run, args=(fut, fn, args), daemon=True).start()
            return fut
        self._calls.put((fut, fn, args))
        if start:
            threading.Thread(target=self._work, daemon=True).start()
        return fut

    @staticmethod
    def _run(fut: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)

    def _work(self) -> None:
        while True:
            try:
                call = self._calls.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # unclaimed: end
                        self._idle -= 1
                        return
                continue  # claimed by a call about to be queued
            if call is None:
                return
            self._run(*call)
            del call
            with self._lock:
                if self._closed:
                    return
                self._idle += 1

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        """End the idle threads; a thread still in a call ends with it."""
        del wait, cancel_futures  # daemon threads end with their requests
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._calls.put(None)


def fetch_chain(
    urls: Sequence[str],
    mpk: G2,
    *,
    timeout: float = 5.0,
    enough: int | None = None,
    client: httpx.Client | None = None,
    hedge_after: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[ChainState, list[str]]:
    """The highest chain head the asked nodes serve that verifies from the pinned ``mpk``.

    Nodes are asked concurrently; ``enough`` stops after that many verified
    chains (all by default); ``hedge_after`` stops once that many seconds have
    passed and at least one chain verified. A node whose chain does not verify
    (another key, a forged link) is ignored and reported in the second element.
    """
    states, ignored, _ = fetch_chain_heads(
        urls,
        mpk,
        timeout=timeout,
        enough=enough,
        client=client,
        hedge_after=hedge_after,
        transport=transport,
    )
    return states[-1], ignored


def fetch_chain_epochs(
    urls: Sequence[str],
    mpk: G2,
    *,
    timeout: float = 5.0,
    enough: int | None = None,
    client: httpx.Client | None = None,
    hedge_after: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[list[ChainState], list[str]]:
    """``fetch_chain``, with the verified state of every epoch the best answer names."""
    states, ignored, _ = fetch_chain_heads(
        urls,
        mpk,
        timeout=timeout,
        enough=enough,
        client=client,
        hedge_after=hedge_after,
        transport=transport,
    )
    return states, ignored


def fetch_chain_heads(
    urls: Sequence[str],
    mpk: G2,
    *,
    timeout: float = 5.0,
    enough: int | None = None,
    client: httpx.Client | None = None,
    hedge_after: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[list[ChainState], list[str], list[str]]:
    """Ask every node for its chain at once; the best verified one (fork choice: the
    highest ``(epoch, attempt)`` head, ``mpc.membership.rank``), the nodes ignored, and
    the URLs whose chain verified, in the order they answered.

    Returns when every node answered, ``enough`` chains verified, ``hedge_after``
    seconds passed with at least one verified chain, or ``timeout`` passed.
    ``transport`` (without ``client``) carries the requests instead of the network
    (``httpx.Client(transport=...)``; tests reach in-process nodes this way).
    """
    states, ignored, answered, _ = _fetch_chain(
        urls,
        mpk,
        timeout=timeout,
        enough=enough,
        client=client,
        hedge_after=hedge_after,
        transport=transport,
    )
    return states, ignored, answered


def _fetch_chain(
    urls: Sequence[str],
    mpk: G2,
    *,
    timeout: float = 5.0,
    enough: int | None = None,
    client: httpx.Client | None = None,
    hedge_after: float | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[list[ChainState], list[str], list[str], list[Link]]:
    """``fetch_chain_heads``, with the links of the best answer (all verified)."""
    own = client is None
    http = client or httpx.Client(timeout=timeout, transport=transport)
    best: list[ChainState] | None = None
    best_links: list[Link] = []
    ignored: list[str] = []
    answered: list[str] = []

    def get(url: str) -> bytes | Exception:
        try:
            return http.get(url.rstrip("/") + "/v1/chain").content
        except Exception as exc:  # any failure (an unbuildable URL too): unreachable
            return exc

    pool = _DaemonPool()
    start = time.monotonic()
    try:
        pending = {pool.submit(get, url): url for url in urls}
        want = enough or len(urls)
        while pending:
            elapsed = time.monotonic() - start
            if best is not None and hedge_after is not None and elapsed >= hedge_after:
                break
            if elapsed >= timeout:
                break
            limit = timeout - elapsed
            if best is not None and hedge_after is not None:
                limit = min(limit, hedge_after - elapsed)
            done, _ = wait(pending, timeout=max(limit, 0.0), return_when=FIRST_COMPLETED)
            for fut in done:
                url = pending.pop(fut)
                raw = fut.result()
                if isinstance(raw, Exception):
                    ignored.append(f"{url}: {type(raw).__name__}: {raw}")
                    continue
                try:
                    links = _links(raw)
                    states = verify_recent(links, mpk=mpk)
                except (MessageDecodeError, ChainError, InvalidEncoding, ValueError) as exc:
                    ignored.append(f"{url}: {type(exc).__name__}: {exc}")
                    continue
                answered.append(url)
                if best is None or rank(states[-1]) > rank(best[-1]):
                    best, best_links = states, links
            if len(answered) >= want:
                break
        ignored.extend(f"{url}: no answer in time" for url in pending.values())
    finally:
        pool.shutdown()
        if own:
            http.close()
    if best is None:
        raise KeyReleaseError(
            "no node served a chain that verifies from the pinned master public key"
        )
    return best, ignored, answered, best_links


MAX_URL_PAGES = 16
"""Pages of retained chain links a client reads to find members' certified URLs."""
URL_PAGE_LINKS = 64
"""Links a client asks for and accepts in one such page (a node's page size,
``kms.api.limits.CHAIN_PAGE_LINKS``); a page with more ends the search."""
URL_PAGE_BYTES = (1 << 20) + (64 << 10)
"""Bytes of one such page a client reads, at most: the node's 1 MiB of link bytes
(``kms.api.limits.CHAIN_PAGE_BYTES``) and room for the framing. A longer body ends the
search unread."""


def _url_page(http: httpx.Client, url: str, start: int) -> tuple[list[Link], int] | None:
    """One page of retained links from ``start`` and the position to ask for next, or
    ``None`` when the node does not answer one within ``URL_PAGE_BYTES`` and
    ``URL_PAGE_LINKS``. Only the links of a page within both limits are decoded."""
    body = bytearray()
    try:
        with http.stream(
            "GET",
            url.rstrip("/") + f"/v1/chain?from={start}&limit={URL_PAGE_LINKS}&max_bytes={1 << 20}",
        ) as r:
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > URL_PAGE_BYTES:
                    return None
            following = int(r.headers.get("x-chain-next", "0"))
        update = ChainUpdate.decode(bytes(body))
        if len(update.links) > URL_PAGE_LINKS:
            return None
        return update.decoded_links(), following
    except (httpx.HTTPError, MessageDecodeError, InvalidEncoding, ValueError):
        return None


def older_certified_urls(
    http: httpx.Client, url: str, state: ChainState, wanted: set[ParticipantIndex]
) -> dict[ParticipantIndex, str]:
    """``certified_urls`` of the links a node keeps (``GET /v1/chain?from=…``, paged),
    for members admitted before the recent tail ``GET /v1/chain`` serves. Each
    certificate is checked on its own; the node is trusted for nothing.

    The node's pages cost bounded work whatever it serves: at most ``MAX_URL_PAGES``
    pages of at most ``URL_PAGE_LINKS`` links and ``URL_PAGE_BYTES`` bytes each, and
    one signature check per wanted member in all (the first ``AddMember`` for its index
    and identity; ``certified_urls``). An honest node's chain holds one per member, so a
    member whose first one does not verify is not looked for again: that node forged
    it, and could as well have left the link out."""
    out: dict[ParticipantIndex, str] = {}
    checked: set[ParticipantIndex] = set()
    start = 1
    for _ in range(MAX_URL_PAGES):
        page = _url_page(http, url, start)
        if page is None:
            break
        links, following = page
        out.update(certified_urls(links, state, wanted=wanted - out.keys(), checked=checked))
        if wanted <= checked or not links or following <= start:
            break
        start = following
    return out


_HEADS: dict[
    tuple[bytes, tuple[str, ...]],
    tuple[float, list[ChainState], dict[ParticipantIndex, str]],
] = {}
"""Verified chain heads per process, by (pinned key, node URLs): a CVM process that makes
several cold requests verifies the chain once per ``chain_ttl``."""
_HEADS_LOCK = threading.Lock()


class _AskingSession(Protocol):
    """What :meth:`KeyClient._ask_hedged` needs of a key or certificate session."""

    @property
    def rejected(self) -> Sized: ...
    @property
    def refusals(self) -> Sized: ...
    @property
    def done(self) -> bool: ...
    def next_nodes(self, count: int) -> list[ParticipantIndex]: ...
    def mark_asked(self, indices: Sequence[ParticipantIndex]) -> None: ...
    def missing(self) -> int: ...
    def receive(self, index: ParticipantIndex, answer: Any) -> None: ...


class KeyClient:
    """A CVM's link to the committee: the pinned key, a verified chain, kept-alive connections.

    The chain is fetched from every node at once and verified from the pinned
    master public key on first use, then reused: a CVM asks for keys many
    times and the committee changes rarely. It is fetched again when it is
    older than ``chain_ttl`` seconds, and at once when a node answers for a
    later epoch than the cached chain names (the committee has moved on); the
    request is then retried once against the new chain.

    Each request goes to ``t`` nodes at once. A refusal, an unreachable node
    or a bad partial makes it ask the next node; so does a node that has not
    answered within ``hedge_after`` seconds (a slow node does not hold the
    CVM up for the whole ``timeout``). When every asked node has answered and
    no epoch has ``t`` good partials (a node answered for the other epoch of a
    switch), it asks as many more as that epoch still needs, until none is left.
    A connection-level failure (``CONNECTION_FAILURES``) is repeated once on a new
    connection (a kept-alive connection to a restarted node fails so), and a node
    still failing so is asked again after a short backoff once no other member is
    left, within ``timeout``; a node that refused or sent a bad answer is not.

    The chain is fetched the same way: from every node at once, verified at
    its head, and the best head verified by ``chain_hedge`` seconds is used
    (the highest ``(epoch, attempt)``); nodes that answered it are asked for
    partials first. Connecting and reading have their own timeouts
    (``connect_timeout``, ``read_timeout``), so a node that accepts
    connections and never answers costs at most a hedge. With ``cache``, the
    verified head is shared by every client of the process for ``chain_ttl``.
    ``transport`` carries the requests instead of the network (``httpx.Client``'s;
    tests reach in-process nodes this way).
    """

    def __init__(
        self,
        urls: Mapping[ParticipantIndex, str],
        mpk: G2,
        *,
        timeout: float = 5.0,
        hedge_after: float = 1.0,
        chain_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        connect_timeout: float = 1.0,
        read_timeout: float | None = None,
        chain_hedge: float = 0.3,
        cache: bool = False,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        check_mpk(mpk)  # the identity point would make every chain check vacuous
        self.given = dict(urls)
        """The URLs the caller gave (index -> URL): the genesis members' come only from here."""
        self.urls = dict(urls)
        """The URLs in use: once a chain verified, those of its current members only (the
        caller's, else the one the chain certifies; ``certified_urls``)."""
        self.mpk = mpk
        self.timeout = timeout
        self.hedge_after = hedge_after
        self.chain_ttl = chain_ttl
        self.chain_hedge = chain_hedge
        self.cache = cache
        self._clock = clock
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout if read_timeout is not None else timeout
        self._http = httpx.Client(
            timeout=httpx.Timeout(
                timeout, connect=min(connect_timeout, timeout), read=self.read_timeout
            ),
            limits=httpx.Limits(max_keepalive_connections=2 * len(self.urls) + 2),
            transport=transport,
        )
        # For the one repeat of a request whose kept-alive connection failed: no
        # connection is kept, so the repeat goes over a new one.
        self._fresh = httpx.Client(
            timeout=self._http.timeout,
            limits=httpx.Limits(max_keepalive_connections=0),
            transport=transport,
        )
        self._pool = _DaemonPool()
        self._responsive: list[ParticipantIndex] = []
        self._chain: ChainState | None = None
        self._previous: ChainState | None = None
        self._chain_at = 0.0
        self.ignored_nodes: list[str] = []

    def __enter__(self) -> KeyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        self._fresh.close()

    # --- the chain --------------------------------------------------------------------

    def chain(self, *, refresh: bool = False) -> ChainState:
        """The verified chain, fetched again when stale or when ``refresh`` asks."""
        fresh = self._chain is not None and self._clock() - self._chain_at < self.chain_ttl
        key = (self.mpk.to_bytes(), tuple(sorted(self.given.values())))
        if self._chain is None and not refresh and self.cache:
            with _HEADS_LOCK:
                cached = _HEADS.get(key)
            if cached is not None and time.monotonic() - cached[0] < self.chain_ttl:
                self._take(cached[1])
                self.urls = dict(cached[2])
                return self._chain  # type: ignore[return-value]
        if self._chain is None or refresh or not fresh:
            states, ignored, answered, links = _fetch_chain(
                list(dict.fromkeys(self.urls.values())),
                self.mpk,
                client=self._http,
                timeout=self.timeout,
                hedge_after=self.chain_hedge,
            )
            self.ignored_nodes = ignored
            if self._chain is None or rank(states[-1]) >= rank(self._chain):
                self._take(states)
                genesis = states[0] if states[0].epoch == 0 else None
                self._learn_urls(states[-1], links, answered, genesis)
            by_url = {u: i for i, u in self.urls.items()}
            self._responsive = sorted(by_url[u] for u in answered if u in by_url)
            self._chain_at = self._clock()
            if self.cache:
                with _HEADS_LOCK:
                    _HEADS[key] = (time.monotonic(), states, dict(self.urls))
        return self._chain  # type: ignore[return-value]

    def _learn_urls(
        self,
        state: ChainState,
        links: Sequence[Link],
        answered: list[str],
        genesis: ChainState | None = None,
    ) -> None:
        """Use the URLs of ``state``'s members only: a removed member is asked nothing
        more. A member the verified chain certifies a URL for (its ``AddMember``) is
        reached there, whatever URL the caller gave for its index (an index read from a
        node's unauthenticated status); a member without one (a genesis member) at the
        caller's URL, else not at all. With ``genesis`` (the served chain starts at
        epoch 0), every member that is not a genesis member is looked up in the kept
        links too; without, only members the caller gave no URL for are."""
        members = {ParticipantIndex(i) for i in state.committee.indices}
        known = {i: u for i, u in self.given.items() if i in members}
        certified = certified_urls(links, state)
        if genesis is not None:
            joined = members - {ParticipantIndex(i) for i in genesis.committee.indices}
            wanted = joined - certified.keys()
        else:
            wanted = members - known.keys() - certified.keys()
        if wanted and answered:
            certified.update(older_certified_urls(self._http, answered[0], state, wanted))
        self.urls = {
            i: certified.get(i) or known[i] for i in sorted(members) if i in certified or i in known
        }

    def _take(self, states: list[ChainState]) -> None:
        self._chain = states[-1]
        self._previous = states[-2] if len(states) > 1 else None

    # --- keys ---------------------------------------------------------------------------

    def fetch(
        self,
        app_id: bytes,
        purposes: Sequence[tuple[str, int]],
        quote_for: Callable[[bytes], bytes],
        *,
        event_log: bytes = b"",
        min_policy_version: int = 0,
        now: int | None = None,
        bundle: bytes = b"",
    ) -> FetchResult:
        """The derived points for ``purposes`` of ``app_id``, checked against the pinned key.

        ``bundle`` is the app's encoded signed policy bundle: nodes that have not
        admitted the app yet admit it on this request if its policy admits the CVM.
        """
        chain = self.chain()
        session, asked, ignored = self._ask(
            chain, app_id, purposes, quote_for, event_log, min_policy_version, now, bundle
        )
        if not session.done and session.newer_epoch_seen:
            chain = self.chain(refresh=True)
            session, asked, ignored = self._ask(
                chain, app_id, purposes, quote_for, event_log, min_policy_version, now, bundle
            )
        deadline = self._clock() + self.timeout
        while (
            not session.done
            and any(r.reason == RETRY_LATER for r in session.refusals.values())
            and self._clock() < deadline
        ):
            # A node that has not admitted the app is asking the committee about it
            # first: ask again shortly (a fresh request, so a fresh nonce and quote).
            time.sleep(self.RETRY_AFTER)
            session, asked, ignored = self._ask(
                chain, app_id, purposes, quote_for, event_log, min_policy_version, now, bundle
            )
        if not session.done:
            reasons = {int(i): r.reason for i, r in session.refusals.items()}
            raise KeyReleaseError(
                f"fewer than t = {chain.threshold} good partials: refusals {reasons}, "
                f"bad partials from {[int(i) for i in session.bad_nodes()]}, "
                f"unreachable {ignored}",
                refusals={int(i): (r.reason, r.detail) for i, r in session.refusals.items()},
                bad_nodes=[int(i) for i in session.bad_nodes()],
                unreachable=list(ignored),
            )
        derived = {(p.purpose, p.version): d for p, d in session.derived().items()}
        return FetchResult(
            derived,
            session.epoch_used(),
            tuple(asked),
            tuple(session.rejected),
            dict(session.refusals),
            tuple(self.ignored_nodes + ignored),
            dict(self.urls),
        )

    RETRY_AFTER = 0.2
    """Seconds before asking again nodes that answered ``retry-later``."""
    RESET_BACKOFF = 0.1
    """Seconds before asking again, once no other member is left, the nodes whose
    connection failed (doubled each round, up to ``RESET_BACKOFF_MAX``)."""
    RESET_BACKOFF_MAX = 0.8
    OVERLOADED_WAIT_MAX = 5.0
    """The longest ``Retry-After`` of an overloaded node that the client honours before
    asking it again (a longer one counts as this long)."""

    def _post(
        self,
        index: ParticipantIndex,
        body: bytes,
        route: str = "/v1/keys",
        deadline: float | None = None,
    ) -> object:
        """Node ``index``'s decoded answer, or the exception that stands for it.

        A connection-level failure (``CONNECTION_FAILURES``: a reset, a server that
        closed without answering, a refused or reset connect) is repeated once over a
        new connection while ``deadline`` (``time.monotonic``) allows: a kept-alive
        connection to a node that restarted fails so on its first use. Key and
        certificate requests are safe to repeat (a node answers an identical request
        again)."""
        url = self.urls.get(index)
        if url is None:
            return LookupError(
                f"no URL for node {int(index)}: none given and none certified in the chain"
            )
        target = url.rstrip("/") + route
        try:
            return self._send(self._http, target, body, deadline)
        except CONNECTION_FAILURES:
            pass  # repeated below, on a new connection
        except Exception as exc:  # any failure (an unbuildable URL too): unreachable
            return exc
        try:
            return self._send(self._fresh, target, body, deadline)
        except Exception as exc:
            return exc

    def _send(self, http: httpx.Client, target: str, body: bytes, deadline: float | None) -> object:
        timeout = http.timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no time left before the request's deadline")
            timeout = httpx.Timeout(
                min(self.timeout, left),
                connect=min(self.connect_timeout, self.timeout, left),
                read=min(self.read_timeout, left),
            )
        r = http.post(target, content=body, headers={"content-type": MSGPACK}, timeout=timeout)
        if r.status_code == 503 and r.headers.get("content-type", "").startswith(
            "application/json"
        ):
            raise NodeOverloaded.of(r)
        return decode(r.content)

    # --- app-key certificates -----------------------------------------------------------

    def certify(
        self,
        app_id: bytes,
        version: int,
        root_public: bytes,
        quote_for: Callable[[bytes], bytes],
        *,
        event_log: bytes = b"",
        bundle: bytes = b"",
        min_policy_version: int = 0,
        now: int | None = None,
    ) -> AppKeyCert:
        """Have the committee certify ``root_public`` as ``app_id``'s root key at root
        version ``version`` (``POST /v1/app-key-cert``): ``t`` nodes of the verified chain
        asked at once, more on a refusal, a slow node or a bad answer; the partials of one
        epoch combined and checked under the pinned key. A node that signed a wrong
        partial is named in ``rejected`` with its evidence. Raises ``AppKeyCertError``."""
        chain = self.chain()
        args = (app_id, version, root_public, quote_for, event_log, bundle, min_policy_version)
        session, ignored = self._ask_cert(chain, *args, now)
        if not session.done and session.newer_epoch_seen:
            chain = self.chain(refresh=True)
            session, ignored = self._ask_cert(chain, *args, now)
        deadline = self._clock() + self.timeout
        while (
            not session.done
            and any(r.reason == RETRY_LATER for r in session.refusals.values())
            and self._clock() < deadline
        ):
            time.sleep(self.RETRY_AFTER)
            session, ignored = self._ask_cert(chain, *args, now)
        refusals = {int(i): (r.reason, r.detail) for i, r in session.refusals.items()}
        cert = session.cert
        if cert is None:
            raise AppKeyCertError(
                f"fewer than t = {chain.threshold} good partials: refusals "
                f"{ {i: r for i, (r, _) in refusals.items()} }, "
                f"bad partials from {[int(i) for i in session.bad_nodes()]}, "
                f"unreachable {ignored}",
                refusals=refusals,
                bad_nodes=[int(i) for i in session.bad_nodes()],
                unreachable=list(ignored),
            )
        return AppKeyCert(
            cert.app_id,
            cert.version,
            cert.epoch,
            cert.root_public,
            cert.link_signature,
            cert.qkms_signature,
            tuple(session.rejected),
            refusals,
        )

    def _ask_hedged(
        self,
        session: _AskingSession,
        threshold: int,
        body: bytes,
        path: str,
        answers: tuple[type, ...],
    ) -> tuple[list[ParticipantIndex], list[str]]:
        """Post ``body`` to ``threshold`` nodes at once, then one more per failed answer
        and per ``hedge_after`` of silence, until ``session`` is done or no node is left.
        Returns the nodes asked, in order, and the answers that were not ``answers``.

        A node whose connection failed (``CONNECTION_FAILURES``, after ``_post``'s one
        repeat) is asked again when no other member is left, after ``RESET_BACKOFF``
        (doubling), while ``timeout`` seconds from the start allow: a restarting node
        may be back. So is a node that shed the request (``NodeOverloaded``), but not
        before its own ``Retry-After`` (at most ``OVERLOADED_WAIT_MAX``) has passed, if
        the deadline allows that wait, else after the backoff; one node's wait never
        holds back the others. A node that refused or sent a bad answer is never asked
        again."""
        asked: list[ParticipantIndex] = []
        ignored: dict[ParticipantIndex, str] = {}  # each node's last failure
        pending: dict[Future[object], ParticipantIndex] = {}
        deadline = time.monotonic() + self.timeout
        down: list[ParticipantIndex] = []  # connection failures, to be asked again
        backoff = self.RESET_BACKOFF
        not_before: dict[ParticipantIndex, float] = {}  # nodes that shed: their Retry-After

        def submit(index: ParticipantIndex) -> None:
            if index not in asked:
                asked.append(index)
            pending[self._pool.submit(self._post, index, body, path, deadline)] = index

        def ask(count: int) -> None:
            batch = session.next_nodes(count)
            session.mark_asked(batch)
            for index in batch:
                submit(index)

        ask(threshold)
        while not session.done:
            if not pending:
                # Every member was asked and none is in flight: ask again, after a
                # backoff, those whose connection failed, while the deadline allows.
                now = time.monotonic()
                if not down or now + backoff >= deadline:
                    break
                # A node that shed waits until its own Retry-After (if the deadline
                # allows it); the others only for the backoff.
                due = {i: max(now + backoff, min(not_before.get(i, 0.0), deadline)) for i in down}
                first = min(due.values())
                if first >= deadline:
                    first = now + backoff  # no time to wait as asked: try once more, sooner
                    due = dict.fromkeys(down, first)
                time.sleep(first - now)
                backoff = min(2 * backoff, self.RESET_BACKOFF_MAX)
                for index in [i for i in down if due[i] <= first]:
                    down.remove(index)
                    not_before.pop(index, None)
                    submit(index)
                continue
            done, _ = wait(pending, timeout=self.hedge_after, return_when=FIRST_COMPLETED)
            if not done:
                ask(1)  # a slow node: ask one more rather than wait out the timeout
                continue
            for fut in sorted(done, key=lambda f: int(pending[f])):
                index = pending.pop(fut)
                answer = fut.result()
                before = len(session.rejected) + len(session.refusals)
                if isinstance(answer, answers):
                    ignored.pop(index, None)
                    session.receive(index, answer)
                    failed = len(session.rejected) + len(session.refusals) - before
                else:
                    ignored[index] = f"node {int(index)}: {type(answer).__name__}: {answer}"
                    if isinstance(answer, (*CONNECTION_FAILURES, NodeOverloaded)):
                        down.append(index)  # asked again after a backoff if need be
                    if isinstance(answer, NodeOverloaded) and answer.retry_after is not None:
                        asked_wait = answer.retry_after
                        if math.isfinite(asked_wait) and asked_wait > 0:
                            wait_for = min(asked_wait, self.OVERLOADED_WAIT_MAX)
                            not_before[index] = time.monotonic() + wait_for
                    failed = 1
                if failed and not session.done:
                    ask(failed)
            if not pending and not session.done:
                # Nothing in flight and no epoch has t partials (a member answered for the
                # other epoch: neither a failure nor progress): ask enough members to
                # complete the best epoch, until none is left.
                ask(max(session.missing(), 1))
        return asked, list(ignored.values())

    def _ask_cert(
        self,
        chain: ChainState,
        app_id: bytes,
        version: int,
        root_public: bytes,
        quote_for: Callable[[bytes], bytes],
        event_log: bytes,
        bundle: bytes,
        min_policy_version: int,
        now: int | None,
    ) -> tuple[AppKeyCertSession, list[str]]:
        previous = self._previous
        session = AppKeyCertSession(
            chain,
            app_id,
            version,
            root_public,
            now=int(time.time()) if now is None else now,
            rng=os.urandom,
            min_policy_version=min_policy_version,
            bundle=bundle,
            previous=previous
            if previous is not None and previous.epoch == chain.epoch - 1
            else None,
            preferred=self._responsive,
        )
        body = session.attach_quote(quote_for(session.report_data), event_log).encode()
        _, ignored = self._ask_hedged(
            session, chain.threshold, body, "/v1/app-key-cert", (AppKeyCertShare, KeyRefusal)
        )
        return session, ignored

    def _ask(
        self,
        chain: ChainState,
        app_id: bytes,
        purposes: Sequence[tuple[str, int]],
        quote_for: Callable[[bytes], bytes],
        event_log: bytes,
        min_policy_version: int,
        now: int | None,
        bundle: bytes = b"",
    ) -> tuple[KeyRequestSession, list[ParticipantIndex], list[str]]:
        previous = self._previous
        session = KeyRequestSession(
            chain,
            app_id,
            purposes,
            now=int(time.time()) if now is None else now,
            rng=os.urandom,
            min_policy_version=min_policy_version,
            bundle=bundle,
            # Members still on the epoch before may answer too (a switch in progress).
            previous=previous
            if previous is not None and previous.epoch == chain.epoch - 1
            else None,
            preferred=self._responsive,
        )
        body = session.attach_quote(quote_for(session.report_data), event_log).encode()
        asked, ignored = self._ask_hedged(
            session, chain.threshold, body, "/v1/keys", (KeyResponse, KeyRefusal)
        )
        return session, asked, ignored


CONNECTION_FAILURES: tuple[type[Exception], ...] = (httpx.NetworkError, httpx.RemoteProtocolError)
"""Connection-level failures (a reset, a server that closed the connection without an
answer, a refused or reset connect), after which the node is asked again (``KeyClient``);
timeouts are not among them: a node that does not answer in time is hedged around."""


class NodeOverloaded(Exception):
    """A node refused a request unread, ``503 overloaded`` (or another ``503`` with a JSON
    body): not an answer. ``KeyClient`` asks another member, and this one again only when
    no other is left, as after a connection failure, after its ``Retry-After``
    (``KeyClient.OVERLOADED_WAIT_MAX`` at most) when the deadline allows."""

    def __init__(self, reason: str, retry_after: float | None) -> None:
        super().__init__(
            f"503 {reason}"
            + (f", retry after {retry_after:g} s" if retry_after is not None else "")
        )
        self.reason = reason
        self.retry_after = retry_after

    @classmethod
    def of(cls, r: httpx.Response) -> NodeOverloaded:
        try:
            reason = str(r.json().get("reason", "unavailable"))[:64]
        except (ValueError, AttributeError):
            reason = "unavailable"
        try:
            retry_after: float | None = float(r.headers.get("retry-after", ""))
        except ValueError:
            retry_after = None
        return cls(reason, retry_after)


RETRY_LATER = "retry-later"
"""The refusal of a node still asking the committee about an app it has not admitted."""


def report_evidence(
    urls: Mapping[ParticipantIndex, str],
    evidence: WrongPartialEvidence,
    *,
    timeout: float = 5.0,
    transport: httpx.BaseTransport | None = None,
) -> dict[int, dict[str, object]]:
    """Disclose ``evidence`` to every node but the accused one (``POST /v1/evidence``).

    Each node checks it against its own chain and keeps it for its operator,
    who can attach it to a removal. Disclosing it reveals the private half of
    one ephemeral key, which opens nothing but the accused node's answer.
    Returns each node's reply (or ``{"error": …}`` when it could not be reached).
    """
    culprit = int(evidence.response.index)
    body = evidence.encode()
    replies: dict[int, dict[str, object]] = {}
    with httpx.Client(timeout=timeout, transport=transport) as http:
        for index, url in sorted(urls.items()):
            if int(index) == culprit:
                continue
            try:
                r = http.post(
                    url.rstrip("/") + "/v1/evidence",
                    content=body,
                    headers={"content-type": MSGPACK},
                )
                replies[int(index)] = dict(r.json())
            except Exception as exc:  # any failure (an unbuildable URL too)
                replies[int(index)] = {"error": f"{type(exc).__name__}: {exc}"}
    return replies


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
    bundle: bytes = b"",
    transport: httpx.BaseTransport | None = None,
) -> FetchResult:
    """One request from a cold start: fetch and verify the chain, then ask for the keys.

    A long-lived CVM keeps a ``KeyClient`` instead, which reuses the verified
    chain and its connections.
    """
    with KeyClient(
        urls, mpk, timeout=timeout, hedge_after=0.3, cache=True, transport=transport
    ) as client:
        return client.fetch(
            app_id,
            purposes,
            quote_for,
            event_log=event_log,
            min_policy_version=min_policy_version,
            now=now,
            bundle=bundle,
        )


def certify_app_key(
    urls: Mapping[ParticipantIndex, str],
    mpk: G2,
    app_id: bytes,
    version: int,
    root_public: bytes,
    quote_for: Callable[[bytes], bytes],
    *,
    event_log: bytes = b"",
    bundle: bytes = b"",
    min_policy_version: int = 0,
    timeout: float = 5.0,
    now: int | None = None,
    transport: httpx.BaseTransport | None = None,
) -> AppKeyCert:
    """One certificate request from a cold start: fetch and verify the chain, then ask
    for the app-key certificate (``KeyClient.certify``)."""
    with KeyClient(
        urls, mpk, timeout=timeout, hedge_after=0.3, cache=True, transport=transport
    ) as client:
        return client.certify(
            app_id,
            version,
            root_public,
            quote_for,
            event_log=event_log,
            bundle=bundle,
            min_policy_version=min_policy_version,
            now=now,
        )


# --- one app key, as a command-line CVM asks for it (``kms key get``, ``kms decrypt``) -----


@dataclass(frozen=True)
class AppKeyResult:
    """One fetched app key: what may be shown, the secret material, and what went wrong."""

    public: dict[str, Any]
    """App id, purpose, version, epoch, the key's fingerprint and public halves, and
    ``evidence_reported`` (node -> the nodes that checked and kept evidence against it)."""
    secret: dict[str, Any]
    """``public`` with the app key and every private typed key (hex): for a 0600 file."""
    rejected: tuple[Rejected, ...]
    """Nodes whose partial was wrong (with evidence when they signed it)."""


def get_app_key(
    urls: Mapping[ParticipantIndex, str],
    mpk: G2,
    app_id: bytes,
    purpose: str,
    version: int,
    quote_for: Callable[[bytes], bytes],
    *,
    bundle: bytes = b"",
    report: bool = True,
    transport: httpx.BaseTransport | None = None,
    event_log: bytes = b"",
) -> AppKeyResult:
    """Fetch one app key from a cold start (``fetch_keys``) and derive its typed keys;
    with ``report``, disclose each wrong partial's evidence to the other nodes
    (``report_evidence``). Raises ``KeyReleaseError`` when no key could be derived."""
    res = fetch_keys(
        urls,
        mpk,
        app_id,
        [(purpose, version)],
        quote_for,
        bundle=bundle,
        transport=transport,
        event_log=event_log,
    )
    reported: dict[int, list[int]] = {}
    if report:
        for r in res.rejected:
            if r.evidence is not None:
                # To the verified chain's members only: never to a removed node.
                replies = report_evidence(res.urls, r.evidence, transport=transport)
                reported[int(r.index)] = sorted(i for i, x in replies.items() if x.get("accepted"))
    app_key = res.derived[(purpose, version)].app_key()
    keys = typed_keys(app_key)
    public: dict[str, Any] = {
        "app_id": app_id.hex(),
        "purpose": purpose,
        "version": version,
        "epoch": res.epoch,
        "fingerprint": hashlib.sha256(app_key.secret.data).hexdigest(),
        "x25519_public": keys.x25519_public.hex(),
        "ed25519_public": keys.ed25519_public.hex(),
        "secp256k1_public": keys.secp256k1_public.hex(),
    }
    if reported:
        public["evidence_reported"] = {str(k): v for k, v in sorted(reported.items())}
    secret = {
        **public,
        "app_key": app_key.secret.data.hex(),
        "aes256": keys.aes256.data.hex(),
        "x25519_private": keys.x25519_private.data.hex(),
        "ed25519_seed": keys.ed25519_seed.data.hex(),
        "secp256k1_private": keys.secp256k1_private.data.hex(),
    }
    return AppKeyResult(public, secret, tuple(res.rejected))


def open_sealed(
    urls: Mapping[ParticipantIndex, str],
    mpk: G2,
    sealed: bytes,
    quote_for: Callable[[bytes], bytes],
    *,
    transport: httpx.BaseTransport | None = None,
    event_log: bytes = b"",
) -> bytes:
    """Decrypt an IBE ciphertext: fetch the point for the key id its header names (app,
    purpose, version), then open it. Raises ``InvalidEncoding`` for an unreadable header,
    ``KeyReleaseError`` or ``DecryptionError``."""
    key_id = ibe.read_header(sealed).key_id
    wanted = (key_id.purpose, key_id.version)
    res = fetch_keys(
        urls, mpk, key_id.app_id, [wanted], quote_for, transport=transport, event_log=event_log
    )
    return ibe.decrypt(res.derived[wanted], mpk, sealed)
