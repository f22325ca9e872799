"""A CVM on the command line (``kms key get``, ``kms decrypt``): which node answers at each
URL, and where the CVM's quotes come from.

**Node URLs.** The client asks nodes by committee index. Given a list of URLs, each node's
index is read from its ``GET /v1/status``. That answer is not authenticated, and needs not
be: the chain is verified from the pinned master public key, and every partial is checked
against the share of the index the chain gives it, so a node that claims another index
gets no key accepted and costs at most its own answer. A URL that claims an index another
URL of the list already claimed is left out and named.

**Quotes.** On the simulated TEE of a TEE directory with a measurement file
(``kms.app.simtee.cvm_quote_source``), or from the TDX guest's configfs-tsm report interface
(``kms.app.setup.tdx_quote``) with, optionally, the CVM's RTMR3 event log from a file.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

from kms.app import owner, setup, simtee
from kms.client.core import KeyReleaseError
from kms.policy import Measurement
from mpc.cert import check_mpk
from mpc.ids import ParticipantIndex
from mpc.math import G2


class CVMError(ValueError):
    """The CVM side cannot start (the message says why and what to do)."""


@dataclass(frozen=True)
class Nodes:
    """Node URLs by committee index, and the URLs left out (with why)."""

    urls: dict[ParticipantIndex, str]
    left_out: list[str]
    contested: dict[ParticipantIndex, list[str]] = field(default_factory=dict)
    """Later URLs that claim an index already claimed, in the order given."""


class AnswerTooLarge(ValueError):
    """A node's answer longer than the reader's cap (or compressed)."""


STATUS_CAP = 64 * 1024
"""The largest status answer read from a node (bytes); a longer one is dropped unread."""


def read_capped(http: httpx.Client, url: str, cap: int, deadline: float) -> tuple[int, bytes]:
    """``GET url`` read as a stream: the status code and the body, ``AnswerTooLarge`` past
    ``cap`` bytes, ``httpx.ReadTimeout`` once ``time.monotonic()`` passes ``deadline``
    (checked after every chunk, so a body trickled slowly ends there too)."""
    with http.stream("GET", url, headers={"accept-encoding": "identity"}) as r:
        if r.headers.get("content-encoding", "identity") != "identity":
            raise AnswerTooLarge("a compressed answer (only identity is read)")
        body = bytearray()
        for chunk in r.iter_bytes():
            body += chunk
            if len(body) > cap:
                raise AnswerTooLarge(f"an answer longer than {cap} bytes")
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("no whole answer in time")
        return r.status_code, bytes(body)


def nodes_by_index(
    urls: Sequence[str], timeout: float = 5.0, *, deadline: float | None = None
) -> Nodes:
    """Each URL's committee index, from its ``GET /v1/status`` (see the module docstring).

    Every URL is asked at once; each answer is read as a stream, dropped past
    ``STATUS_CAP`` bytes, and the whole takes at most ``deadline`` seconds (``2 *
    timeout`` by default): a node still answering then is left out."""
    found: dict[ParticipantIndex, str] = {}
    contested: dict[ParticipantIndex, list[str]] = {}
    left_out: list[str] = []
    stop = time.monotonic() + (2 * timeout if deadline is None else deadline)

    def ask(http: httpx.Client, url: str) -> object:
        try:
            status, body = read_capped(http, url + "/v1/status", STATUS_CAP, stop)
        except httpx.TimeoutException:
            return f"{url}: no answer in time"
        except httpx.HTTPError as exc:
            return f"{url}: unreachable ({exc or 'no connection'})"
        except AnswerTooLarge as exc:
            return f"{url}: {exc}"
        except Exception as exc:  # a URL no request can be built for (httpx, idna)
            return f"{url}: not a usable URL ({type(exc).__name__}: {exc})"
        try:
            info = json.loads(body) if status == 200 else None
            return info.get("index") if info is not None else None
        except (ValueError, AttributeError):
            return f"{url}: its status is not a JSON object"

    http = httpx.Client(timeout=timeout, transport=owner.HTTP_TRANSPORT)
    pool = ThreadPoolExecutor(max_workers=max(1, min(16, len(urls))))
    try:
        futures = [pool.submit(ask, http, url) for url in urls]
        wait(futures, timeout=max(0.0, stop - time.monotonic()))
        for url, fut in zip(urls, futures, strict=True):
            if not fut.done():
                left_out.append(f"{url}: no answer in time")
                continue
            index = fut.result()
            if isinstance(index, str):
                left_out.append(index)
                continue
            if not isinstance(index, int) or isinstance(index, bool) or index < 1:
                left_out.append(f"{url}: its status names no committee index")
                continue
            if ParticipantIndex(index) in found:
                # Unauthenticated: keep every claimant; ``with_claimants`` tries the next
                # one when the first gives no good partial.
                contested.setdefault(ParticipantIndex(index), []).append(url)
                continue
            found[ParticipantIndex(index)] = url
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        http.close()
    if not found:
        raise CVMError(
            "no node answered at the URLs given ("
            + "; ".join(left_out)
            + "): check --urls and that the nodes run"
        )
    return Nodes(found, left_out, contested)


@dataclass(frozen=True)
class Quoting:
    """Where the CVM's quotes come from and the RTMR3 event log it sends."""

    quote: Callable[[bytes], bytes]
    event_log: bytes
    source: str


def quoting(
    app_id: bytes,
    *,
    simulated_tee: Path | None,
    measurement: Path | Measurement | None,
    event_log: Path | None = None,
) -> Quoting:
    """The simulated TEE of ``simulated_tee`` running ``measurement``, or configfs-tsm."""
    if simulated_tee is not None:
        if measurement is None:
            raise CVMError(
                "--simulated-tee needs --measurement FILE (e.g. TEE/app.measurement.toml)"
            )
        if event_log is not None:
            raise CVMError("--event-log is for a real CVM; the simulated TEE makes its own")
        try:
            m = (
                measurement
                if isinstance(measurement, Measurement)
                else simtee.load_measurement(measurement)
            )
            cvm = simtee.cvm_quote_source(simulated_tee, m, app_id)
        except simtee.TEEError as exc:
            raise CVMError(str(exc)) from None
        return Quoting(cvm.quote, cvm.event_log, f"simulated TEE {simulated_tee}")
    if measurement is not None:
        raise CVMError("--measurement goes with --simulated-tee (a real TD has its own)")
    if not setup.TSM_REPORT.is_dir():
        raise CVMError(
            f"no TDX quote: {setup.TSM_REPORT} is missing (not a TDX guest); "
            "outside a TD use --simulated-tee TEE --measurement FILE"
        )
    log = b""
    if event_log is not None:
        try:
            log = event_log.read_bytes()
        except OSError as exc:
            raise CVMError(f"cannot read {event_log}: {exc.strerror or exc}") from None
    return Quoting(setup.tdx_quote, log, "configfs-tsm")


@dataclass(frozen=True)
class Target:
    """Whom a CVM asks and as what: node URLs by index, the pinned master public key, the
    app, its quotes and event log, and the URLs left out (with why)."""

    urls: dict[ParticipantIndex, str]
    mpk: G2
    app_id: bytes
    quote: Callable[[bytes], bytes]
    event_log: bytes
    left_out: list[str]
    contested: dict[ParticipantIndex, list[str]] = field(default_factory=dict)


R = TypeVar("R")
_UNREACHABLE = re.compile(r"node (\d+): ")


def with_claimants(t: Target, attempt: Callable[[dict[ParticipantIndex, str]], R]) -> R:
    """``attempt(urls)`` with the first URL claiming each index; when it fails
    (``KeyReleaseError``) and an index whose node gave no good partial was claimed by
    several URLs, again with the next claimant of each such index, until one succeeds or
    no claimant is left.

    A URL's index comes from its unauthenticated status, and each partial is checked
    against the identity and public share the verified chain gives that index, so a node
    claiming another member's index gives no partial the client takes; keeping every
    claimant means it cannot hide that member either: it costs one more round at most per
    claimant.
    """
    urls = dict(t.urls)
    others = {i: list(v) for i, v in t.contested.items()}
    while True:
        try:
            return attempt(urls)
        except KeyReleaseError as exc:
            failed = set(exc.bad_nodes) | set(exc.refusals)
            failed |= {int(m[1]) for u in exc.unreachable if (m := _UNREACHABLE.match(u))}
            swapped = False
            for i, rest in others.items():
                if rest and int(i) in failed:
                    urls[i] = rest.pop(0)
                    swapped = True
            if not swapped:
                raise


def pinned_mpk(mpk_hex: str) -> G2:
    """The master public key the CVM pins (hex); never the identity point."""
    try:
        mpk = G2.from_bytes(bytes.fromhex(mpk_hex))
        check_mpk(mpk)
    except ValueError as exc:
        raise CVMError(f"--mpk: not a master public key ({exc})") from None
    return mpk


@dataclass
class Options:
    """``kms key get`` / ``kms decrypt`` options naming the target (None: not given)."""

    urls: list[str] | None = None
    mpk: str | None = None
    app: str | None = None
    app_id: bytes | None = None
    simulated_tee: Path | None = None
    measurement: Path | Measurement | None = None
    event_log: Path | None = None
    devnet: Path | None = None
    rogue: bool = False


def devnet_defaults(o: Options, directory: Path) -> None:
    """Fill what ``o`` leaves open from its devnet: URLs, key, app alias, the devnet's TEE
    and its demo CVM's measurement (``rogue``: one no policy admits)."""
    from kms.app import devnet

    try:
        state = devnet.read_state(directory)
        if o.app_id is None:
            o.app_id = devnet.app_id_of(state, str(o.app))
    except (OSError, ValueError) as exc:
        raise CVMError(f"{directory}: not a usable devnet directory ({exc})") from None
    o.mpk = o.mpk or state.get("master_public_key")
    if not o.mpk:
        raise CVMError("the devnet has no master public key yet")
    o.urls = o.urls or [str(n["http_url"]) for n in state["nodes"]]
    o.simulated_tee = o.simulated_tee or directory / "simulated-tee"
    if o.rogue:
        o.measurement = Measurement.explicit(**devnet.ROGUE_MEASUREMENT)
    elif o.measurement is None:
        o.measurement = Measurement.explicit(**devnet.DEMO_MEASUREMENT)


def target(o: Options) -> Target:
    """The CVM's target from the options (see :class:`Options`); ``CVMError`` says what
    is missing or wrong."""
    if o.app_id is None and o.app is None:
        raise CVMError("give --app APP_ID")
    if o.devnet is not None:
        devnet_defaults(o, o.devnet)
    elif o.rogue:
        raise CVMError("--rogue-measurement goes with --devnet")
    app_id = o.app_id if o.app_id is not None else owner.parse_app_id(str(o.app))
    if not o.mpk:
        raise CVMError("give --mpk HEX: the committee's master public key (kms member mpk)")
    mpk = pinned_mpk(o.mpk)
    if not o.urls:
        raise CVMError("give --urls URL[,URL…]: the committee's node URLs")
    nodes = nodes_by_index(owner.split_urls(o.urls))
    q = quoting(
        app_id, simulated_tee=o.simulated_tee, measurement=o.measurement, event_log=o.event_log
    )
    return Target(nodes.urls, mpk, app_id, q.quote, q.event_log, nodes.left_out, nodes.contested)
