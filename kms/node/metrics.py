"""A node's metrics, exposed in the Prometheus text format through ``prometheus_client``.

Each node has its own :class:`NodeMetrics` and, in it, its own
``CollectorRegistry`` (never the process-wide default registry: tests run several
nodes in one process). The node's shell calls narrow methods on it
(``received``, ``sent``, ``key_request``, ``run_progress``, ...) and hands it, once,
a function that reads the node's current state (:class:`NodeSnapshot`) when the
registry is scraped. ``exposition()`` is what ``GET /metrics`` serves.

Label values are bounded: message kinds and refusal reasons come from fixed sets
(the protocol's message types, the refusal enum, the shell's reasons); per-peer
series exist only for the current members (``set_members``), and a removed member's
series are dropped.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import prometheus_client
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from kms.node.model import RunProgress
from kms.node.release import KeyRefusalReason
from net.codec import ENVELOPE_VERSION

# Counters and histograms get no ``*_created`` series: the node's metrics are exactly
# those in the operator guide's table.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The content type of :meth:`NodeMetrics.exposition` (text format 0.0.4)."""

RELEASE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: a request refused by the cheap checks takes about a millisecond; one that
fetches collateral from a PCCS or asks the committee about its app, up to seconds."""
PHASE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds: a sharing phase lasts a few Δ; ``waiting`` lasts until the run's start time."""

RELEASED = "released"
REFUSED = "refused"
CERTIFIED = "certified"
REFUSAL_REASONS = tuple(r.value for r in KeyRefusalReason)
"""The reason labels of refused key requests: ``KeyRefusalReason`` values."""
SHED_ROUTES = ("keys", "app-key-cert")
"""The route labels of ``qkms_shed_total`` (``kms.api.shed.ROUTES``)."""


def build_info() -> dict[str, str]:
    """What this build is: the package ``version``, the wire ``protocol`` (the envelope
    version) and the ``python`` version (``kms --version``, ``qkms_build_info``)."""
    try:
        version = importlib.metadata.version("quorum-kms")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        version = "unknown"
    return {
        "version": version,
        "protocol": str(ENVELOPE_VERSION),
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class CollateralCounts:
    fetch_failures: int = 0
    fetches: int = 0
    failures_cached: int = 0
    rollbacks_refused: int = 0
    stale_refused: int = 0
    oversized_refused: int = 0
    platforms: Mapping[str, int] = field(default_factory=dict)
    """Platforms by state: ``held``, ``failed``, ``fetching``."""


@dataclass(frozen=True)
class PolicyCounts:
    admitted: int = 0
    frozen: int = 0
    cache_entries: int = 0
    cache_bytes: int = 0
    cache_evictions: int = 0


@dataclass(frozen=True)
class NodeSnapshot:
    """The node's state the metrics read at each scrape (no counters of events)."""

    epoch: int = -1
    peers: int = 0
    pending_proposals: int = 0
    last_refresh: float = 0.0
    retained_shares: int = 0
    known_share_holders: int = 0
    share_holders_below_threshold: bool = False
    share_refused: bool = False
    has_share: bool = False
    simulated_quotes_accepted: bool = False
    collateral: CollateralCounts = field(default_factory=CollateralCounts)
    policies: PolicyCounts | None = None
    """``None`` when the node serves no keys (no app policies)."""
    transport_refused_peers: int = 0
    transport_bytes_sent: int = 0
    transport_frames_sent: int = 0
    transport_writes: int = 0
    transport_bytes_received: int = 0
    transport_dropped_oversize: int = 0
    log_suppressed: int = 0


STORAGE_REFUSALS = (
    "step",
    "frame",
    "key request",
    "cert request",
    "policy",
    "evidence",
    "admin",
    "policy message",
    "policy digest",
)
"""The ``what`` labels of ``qkms_storage_full_refusals_total`` (``NodeService``)."""

STORAGE_ERRORS = ("key request", "cert request")
"""The ``what`` labels of ``qkms_storage_errors_total`` (``NodeService``)."""


class NodeMetrics:
    """Counters of one node's events and the registry that exposes them with its state."""

    def __init__(self, snapshot: Callable[[], NodeSnapshot] | None = None) -> None:
        self.snapshot: Callable[[], NodeSnapshot] = snapshot or NodeSnapshot
        self.messages_in: Counter[str] = Counter()
        self.messages_out: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.misbehaviour: Counter[str] = Counter()
        self.run_failures: Counter[str] = Counter()
        self.signatures_withheld: Counter[str] = Counter()
        self.send_failures = 0
        self.send_queue_full = 0
        self.encode_failures: Counter[str] = Counter()
        self.storage_full = False
        """True while the disk is full and the node refuses work (``qkms_storage_full``)."""
        self.storage_refusals: Counter[str] = Counter(dict.fromkeys(STORAGE_REFUSALS, 0))
        self.storage_errors: Counter[str] = Counter(dict.fromkeys(STORAGE_ERRORS, 0))
        """Work refused or dropped because the disk is full, by what it was (every label
        exported from the start, at 0)."""
        """Outbound messages dropped because they cannot be encoded (by message type)."""
        self.epoch_switches = 0
        self.policies_learned = 0
        self._members: frozenset[int] = frozenset()
        self.peer_messages_in: Counter[int] = Counter()
        self.peer_bytes_in: Counter[int] = Counter()
        self.peer_messages_out: Counter[int] = Counter()
        self.peer_bytes_out: Counter[int] = Counter()
        self._run: tuple[tuple[str, int, int], str, float] | None = None
        self._build = build_info()

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collect(self._collect))
        self._key_requests = PromCounter(
            "qkms_key_requests_total",
            "Key requests answered, by outcome (released, refused) and reason (the refusal"
            " reason code; none when released).",
            ("outcome", "reason"),
            registry=self.registry,
        )
        self._key_seconds = Histogram(
            "qkms_key_request_duration_seconds",
            "Time from a key request's arrival at the node to its answer, by outcome.",
            ("outcome",),
            buckets=RELEASE_BUCKETS,
            registry=self.registry,
        )
        self._phase_seconds = Histogram(
            "qkms_sharing_phase_duration_seconds",
            "Time a DKG or reshare run of this node spent in a phase (seen at the node's"
            " steps), by run kind and phase.",
            ("kind", "phase"),
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self._cert_requests = PromCounter(
            "qkms_app_key_cert_requests_total",
            "App-key certificate requests answered, by outcome (certified, refused) and reason"
            " (the refusal reason code; none when certified).",
            ("outcome", "reason"),
            registry=self.registry,
        )
        self._key_conflicts = PromCounter(
            "qkms_app_key_conflicts_total",
            "App-key certificate requests for a root key other than the one this node"
            " certified for the same app and root version (alert: two roots for one version).",
            registry=self.registry,
        )
        self._shed = PromCounter(
            "qkms_shed_total",
            "Key and certificate requests refused 503 overloaded, unread, because the node"
            " was handling and queueing as many as its release limits allow, by route.",
            ("route",),
            registry=self.registry,
        )
        # Every outcome and reason is exported from the start, at 0: alerts need the series.
        for route in SHED_ROUTES:
            self._shed.labels(route)
        self._key_requests.labels(RELEASED, "none")
        for reason in REFUSAL_REASONS:
            self._key_requests.labels(REFUSED, reason)
        self._cert_requests.labels(CERTIFIED, "none")
        for reason in REFUSAL_REASONS:
            self._cert_requests.labels(REFUSED, reason)
        for outcome in (RELEASED, REFUSED):
            self._key_seconds.labels(outcome)

    # --- events the shell reports ---------------------------------------------------------

    def received(self, peer: int, kind: str, size: int) -> None:
        """A protocol message from a member passed the envelope checks."""
        self.messages_in[kind] += 1
        if peer in self._members:
            self.peer_messages_in[peer] += 1
            self.peer_bytes_in[peer] += size

    def queued(self, kind: str) -> None:
        """A protocol message was queued for sending (``qkms_messages_sent_total``)."""
        self.messages_out[kind] += 1

    def sent(self, peer: int, size: int) -> None:
        """A frame was handed to the transport for a member."""
        if peer in self._members:
            self.peer_messages_out[peer] += 1
            self.peer_bytes_out[peer] += size

    def rejected_input(self, reason: str) -> None:
        """Input refused (``qkms_rejected_inputs_total``); ``reason`` is a bounded label."""
        self.rejected[reason] += 1

    def misbehaved(self, reason: str) -> None:
        self.misbehaviour[reason] += 1

    def run_failed(self, kind: str) -> None:
        self.run_failures[kind] += 1

    def signature_withheld(self, kind: str) -> None:
        self.signatures_withheld[kind] += 1

    def epoch_switched(self) -> None:
        self.epoch_switches += 1

    def policy_learned(self) -> None:
        self.policies_learned += 1

    def storage_refused(self, what: str) -> None:
        """Work refused or dropped because the disk is full; ``what`` is a bounded label
        (``frame``, ``key request``, ``step`` …)."""
        self.storage_refusals[what] += 1

    def storage_failed(self, what: str) -> None:
        """A request refused because storing its records failed (not a full disk)."""
        self.storage_errors[what] += 1

    def encode_failed(self, kind: str) -> None:
        self.encode_failures[kind] += 1

    def send_failed(self, *, queue_full: bool = False) -> None:
        """A frame was not sent; ``queue_full``: dropped because the peer's queue was full."""
        self.send_failures += 1
        if queue_full:
            self.send_queue_full += 1

    def set_members(self, members: Iterable[int]) -> None:
        """The peers per-peer series are kept for; series of anyone else are dropped."""
        self._members = frozenset(int(m) for m in members)
        for table in (
            self.peer_messages_in,
            self.peer_bytes_in,
            self.peer_messages_out,
            self.peer_bytes_out,
        ):
            for peer in [p for p in table if p not in self._members]:
                del table[peer]

    def key_request(self, refusal: KeyRefusalReason | None, seconds: float) -> None:
        """A key request was answered: released (``refusal`` is ``None``) or refused."""
        if refusal is None:
            self._key_requests.labels(RELEASED, "none").inc()
            self._key_seconds.labels(RELEASED).observe(seconds)
            return
        self._key_requests.labels(REFUSED, refusal.value).inc()
        self._key_seconds.labels(REFUSED).observe(seconds)

    def shed(self, route: str) -> None:
        """A request was refused ``overloaded`` (``kms.api.shed``); ``route`` is one of
        ``SHED_ROUTES``."""
        if route in SHED_ROUTES:
            self._shed.labels(route).inc()

    def app_key_cert(self, refusal: KeyRefusalReason | None) -> None:
        """An app-key certificate request was answered: certified (``refusal`` is ``None``)
        or refused; a key conflict also counts in ``qkms_app_key_conflicts_total``."""
        if refusal is None:
            self._cert_requests.labels(CERTIFIED, "none").inc()
            return
        self._cert_requests.labels(REFUSED, refusal.value).inc()
        if refusal is KeyRefusalReason.KEY_CONFLICT:
            self._key_conflicts.inc()

    def run_progress(self, progress: RunProgress | None, now: float) -> None:
        """The node's sharing run and phase after a step; a phase's duration is observed
        when the run is seen in another phase, another run, or none."""
        current = self._run
        if current is not None:
            run, phase, since = current
            if (
                progress is not None
                and (progress.kind, progress.epoch, progress.attempt) == run
                and progress.phase == phase
            ):
                return
            self._phase_seconds.labels(run[0], phase).observe(max(0.0, now - since))
            self._run = None
        if progress is not None and progress.phase not in ("done", "failed"):
            key = (progress.kind, progress.epoch, progress.attempt)
            self._run = (key, progress.phase, now)

    # --- exposition -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)

    def _collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        build = GaugeMetricFamily(
            "qkms_build_info",
            "Always 1; the labels say which build runs: package version, wire protocol"
            " (envelope) version and Python version.",
            labels=("version", "protocol", "python"),
        )
        build.add_metric(
            (self._build["version"], self._build["protocol"], self._build["python"]), 1
        )
        yield build
        yield _gauge("qkms_epoch", "Current epoch (-1 before genesis).", s.epoch)
        yield _gauge("qkms_peers", "Connected peers.", s.peers)
        yield _gauge(
            "qkms_pending_proposals",
            "Membership proposals pending in this epoch.",
            s.pending_proposals,
        )
        yield _gauge(
            "qkms_last_refresh_timestamp_seconds",
            "When the last refresh was certified (Unix seconds; 0: never since the node started).",
            round(s.last_refresh, 3),
        )
        yield _gauge(
            "qkms_retained_shares", "Old shares kept until acknowledged.", s.retained_shares
        )
        yield _gauge(
            "qkms_known_share_holders",
            "Members known to hold a share of the current epoch (own share, acknowledgements).",
            s.known_share_holders,
        )
        yield _gauge(
            "qkms_share_holders_below_threshold",
            "1 if, after a grace period, fewer than t members are known to hold a share of the"
            " current epoch (the master key may be unrecoverable).",
            int(s.share_holders_below_threshold),
        )
        yield _gauge(
            "qkms_storage_full",
            "1 while this node's disk is full: it holds the step it could not store and"
            " refuses work until a write succeeds.",
            int(self.storage_full),
        )
        yield _labelled(
            "qkms_storage_full_refusals_total",
            "Work refused or dropped because the disk was full, by what (a failed write, a"
            " frame, a key or certificate request, an admin or policy request).",
            "what",
            self.storage_refusals,
        )
        yield _labelled(
            "qkms_storage_errors_total",
            "Key and certificate requests refused because storing their records failed for"
            " another reason than a full disk (an I/O error, a busy database).",
            "what",
            self.storage_errors,
        )
        yield _gauge(
            "qkms_share_refused",
            "1 if the stored share does not match the chain's public share (no keys served).",
            int(s.share_refused),
        )
        yield _gauge(
            "qkms_simulated_quotes_accepted",
            "1 if this node accepts simulated TEE quotes (development only).",
            int(s.simulated_quotes_accepted),
        )
        c = s.collateral
        yield _counter(
            "qkms_pccs_fetch_failures_total",
            "Collateral fetches from the PCCS that failed (the cache, if any, was used).",
            c.fetch_failures,
        )
        yield _counter(
            "qkms_pccs_fetches_total",
            "Collateral fetches started for a platform (only for quotes whose PCK chain"
            " verifies to a pinned root).",
            c.fetches,
        )
        yield _counter(
            "qkms_pccs_failures_cached_total",
            "Requests that did not fetch because their platform's last fetch failed recently.",
            c.failures_cached,
        )
        yield _counter(
            "qkms_collateral_rollbacks_refused_total",
            "Fetched collateral refused because it was older than the collateral held.",
            c.rollbacks_refused,
        )
        yield _counter(
            "qkms_collateral_stale_refused_total",
            "Fetched collateral refused because it was below this node's collateral floor.",
            c.stale_refused,
        )
        yield _counter(
            "qkms_pccs_oversized_refused_total",
            "PCCS answers refused because they were longer than the size cap (1 MiB).",
            c.oversized_refused,
        )
        platforms = GaugeMetricFamily(
            "qkms_collateral_platforms",
            "Platforms the collateral provider holds collateral for, remembers a failed fetch"
            " of, or is fetching for (each bounded).",
            labels=("state",),
        )
        for state in ("held", "failed", "fetching"):
            platforms.add_metric((state,), c.platforms.get(state, 0))
        yield platforms
        yield _counter(
            "qkms_policies_learned_total",
            "App policies this node learned from a peer (gossip).",
            self.policies_learned,
        )
        p = s.policies
        if p is not None:
            yield _gauge(
                "qkms_apps_admitted", "Apps this node has admitted (kept forever).", p.admitted
            )
            yield _gauge(
                "qkms_apps_frozen",
                "Admitted apps frozen by an owner rotation fork (alert: the owner must act).",
                p.frozen,
            )
            yield _gauge(
                "qkms_policy_cache_entries",
                "Bundles of unadmitted apps held in memory.",
                p.cache_entries,
            )
            yield _gauge("qkms_policy_cache_bytes", "Bytes of those bundles.", p.cache_bytes)
            yield _counter(
                "qkms_policy_cache_evictions_total",
                "Bundles of unadmitted apps evicted from memory to keep the cache bounded.",
                p.cache_evictions,
            )
        yield _gauge(
            "qkms_has_share",
            "Whether this node holds a share of the current epoch.",
            int(s.has_share),
        )
        yield _counter(
            "qkms_epoch_switches_total",
            "Epochs certified since the node started.",
            self.epoch_switches,
        )
        yield _labelled(
            "qkms_messages_received_total",
            "Protocol messages received, by kind.",
            "kind",
            self.messages_in,
        )
        yield _labelled(
            "qkms_messages_sent_total",
            "Protocol messages sent, by kind.",
            "kind",
            self.messages_out,
        )
        yield _labelled(
            "qkms_rejected_inputs_total", "Inputs refused, by reason.", "reason", self.rejected
        )
        yield _labelled(
            "qkms_misbehaviour_total",
            "Misbehaviour observed, by reason.",
            "reason",
            self.misbehaviour,
        )
        yield _labelled(
            "qkms_run_failures_total", "Failed DKG/reshare attempts.", "kind", self.run_failures
        )
        yield _labelled(
            "qkms_signatures_withheld_total",
            "DKG/reshare transcripts this member finalized but did not sign: it was not live"
            " through the run (a gap between two steps over Δ/4; see the log line).",
            "kind",
            self.signatures_withheld,
        )
        yield _counter(
            "qkms_send_failures_total", "Frames that could not be sent.", self.send_failures
        )
        yield _labelled(
            "qkms_encode_failures_total",
            "Outbound messages dropped because they could not be encoded, by kind.",
            "kind",
            self.encode_failures,
        )
        yield _counter(
            "qkms_send_queue_full_total",
            "Frames dropped because the peer's send queue held its byte cap.",
            self.send_queue_full,
        )
        yield _counter(
            "qkms_transport_refused_peers_total",
            "Connections or frames refused because the peer is not allowed"
            " (not a current, incoming or recently removed member).",
            s.transport_refused_peers,
        )
        yield _counter(
            "qkms_log_suppressed_total",
            "Rejection log records suppressed by the per-(peer, reason) rate limit.",
            s.log_suppressed,
        )
        yield _counter(
            "qkms_transport_bytes_sent_total",
            "Bytes sent over the transport.",
            s.transport_bytes_sent,
        )
        yield _counter(
            "qkms_transport_frames_sent_total",
            "Frames sent over the transport.",
            s.transport_frames_sent,
        )
        yield _counter(
            "qkms_transport_writes_total",
            "Stream writes that carried the frames sent to peers (several frames each when"
            " a peer's queued frames are written together).",
            s.transport_writes,
        )
        yield _counter(
            "qkms_transport_bytes_received_total",
            "Bytes received over the transport.",
            s.transport_bytes_received,
        )
        yield _counter(
            "qkms_transport_dropped_oversize_total",
            "Incoming frames dropped for exceeding the size limit.",
            s.transport_dropped_oversize,
        )
        yield _per_peer(
            "qkms_peer_messages_received_total",
            "Protocol messages received from each current member (after the envelope checks).",
            self.peer_messages_in,
        )
        yield _per_peer(
            "qkms_peer_bytes_received_total",
            "Bytes of those messages' frames, by member.",
            self.peer_bytes_in,
        )
        yield _per_peer(
            "qkms_peer_messages_sent_total",
            "Frames handed to the transport for each current member.",
            self.peer_messages_out,
        )
        yield _per_peer(
            "qkms_peer_bytes_sent_total", "Bytes of those frames, by member.", self.peer_bytes_out
        )


class _Collect(Collector):
    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


def _labelled(name: str, help_text: str, label: str, values: Counter[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=(label,))
    for key, value in sorted(values.items()):
        family.add_metric((key,), value)
    return family


def _per_peer(name: str, help_text: str, values: Counter[int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=("peer",))
    for peer, value in sorted(values.items()):
        family.add_metric((str(peer),), value)
    return family
