"""Creating a node's directory (``kms node init``) and running a node (``kms node run``)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import tomli_w
import trio

from kms.api.shed import ShedLimits
from kms.app.config import (
    ConfigError,
    NodeFileConfig,
    default_announce,
    default_public_url,
    host_port,
    load,
    multiaddr,
    url,
)
from kms.node.logs import formatter, set_log_context
from kms.node.service import Clock, NodeService
from kms.secretfile import write_secret
from kms.store import NodeStore, PassphraseSealer, StoreError
from kms.store import lock as store_lock
from mpc import hpke
from mpc.dkg.messages import Participant
from mpc.ids import ParticipantIndex
from mpc.sig import CTX_DKG_KEY, SigningKey
from net.peerid import peer_id_from_ed25519
from net.transport import Transport

NODE_TOML_HEADER = """\
# quorum-kms node configuration.
#
# The node section is this node's own: where it keeps its SQLite store, how it
# unlocks it (a passphrase file or an environment variable; never a prompt),
# where it listens for peers (libp2p, Noise + Yamux) and for HTTP (/health,
# /v1/status, /metrics), the addresses it announces, and the admin channel (a
# Unix socket guarded by admin.token).
#
# The committee section must be identical at every member: the genesis
# participants (index, Ed25519 identity, X25519 DKG key and the identity's
# signature on it), the threshold t, the genesis start (Unix seconds), delta
# (the bound on honest message delivery, in seconds), decision windows, the
# refresh interval (0 = off) and the genesis node admission policy. Write it
# with `kms committee apply`; `kms node check-config` prints its digest, which
# every member's must equal.
#
# The peers tables list where the other members listen (multiaddr with
# /p2p/<peer id>). Every key, its type and default: docs/operator-guide.md,
# "Settings reference". Unknown keys are refused.
"""


def participant_record(identity: SigningKey, dkg_public: bytes, index: int) -> Participant:
    sig = identity.sign(CTX_DKG_KEY, Participant.dkg_key_statement(index, dkg_public))
    return Participant(index, identity.verify_key().to_bytes(), dkg_public, sig)


def init_node(
    directory: Path,
    *,
    index: int,
    listen: str = "/ip4/127.0.0.1/tcp/0",
    http: str = "127.0.0.1:0",
    committee: dict[str, Any] | None = None,
    peers: list[dict[str, Any]] | None = None,
    passphrase_file: Path | None = None,
    passphrase_env: str | None = None,
    announce: list[str] | None = None,
    public_url: str | None = None,
    simulated_tee: Path | None = None,
    pccs_url: str | None = None,
) -> dict[str, Any]:
    """Create identity, DKG key, passphrase, admin token, store and node.toml.

    The store's passphrase is kept outside the data directory, so that a copy
    of the directory alone (a backup, a stolen disk image of it) does not
    unseal the store: with ``passphrase_env``, it is read from that environment
    variable (which must be set); otherwise a new one is written to
    ``passphrase_file``, by default ``<directory>.passphrase`` next to the
    directory. ``announce`` (multiaddrs other members dial) and ``public_url``
    (the HTTP URL clients use) default as ``[node]`` documents; ``simulated_tee``
    names a simulated TEE directory (``root.der``, ``collateral.json``) whose
    quotes the node accepts and which quotes its join request (development);
    ``pccs_url`` is where collateral is fetched. Every value is checked before
    anything is written (``ConfigError``). Returns the node's participant record
    (what other operators need) with its ``addresses`` (each with ``/p2p/<peer
    id>``) and ``url``.
    """
    settings = _node_settings(listen, http, announce, public_url, pccs_url)
    if simulated_tee is not None and not (simulated_tee / "root.der").is_file():
        raise ConfigError(
            f"no simulated TEE in {simulated_tee} (no root.der): create it with "
            f"`kms tee init --dir {simulated_tee}`"
        )
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "node.toml").exists():
        raise FileExistsError(f"{directory / 'node.toml'} exists: refusing to overwrite a node")
    source: dict[str, str]
    if passphrase_env is not None:
        sealer = PassphraseSealer.from_env(passphrase_env)
        source = {"passphrase_env": passphrase_env}
    else:
        passphrase = passphrase_file or directory.parent / f"{directory.resolve().name}.passphrase"
        write_secret(passphrase, secrets.token_hex(32) + "\n")
        sealer = PassphraseSealer.from_file(passphrase)
        source = {"passphrase_file": os.path.relpath(passphrase.resolve(), directory.resolve())}
    write_secret(directory / "admin.token", secrets.token_hex(32) + "\n")
    identity_seed = secrets.token_bytes(32)
    dkg_seed = secrets.token_bytes(32)
    with NodeStore(directory / "node.db", sealer) as store:
        store.save_identity(identity_seed, dkg_seed)
    identity = SigningKey.from_seed(identity_seed)
    _, dkg_public = hpke.derive_key_pair(dkg_seed)
    record = participant_record(identity, dkg_public, index)
    doc: dict[str, Any] = {
        "node": {
            "index": index,
            "store": "node.db",
            **source,
            "listen": listen,
            "http": http,
            "admin_socket": "admin.sock",
            "admin_token_file": "admin.token",
            "log_format": "json",
            "accept_simulated_quotes": False,
            "policies_dir": "policies",
            **settings,
            **_simulated_tee_settings(simulated_tee),
        },
        "committee": committee
        or {
            "threshold": 2,
            "genesis_start": 0.0,
            "delta": 1.0,
            "window_period": 60.0,
            "window_length": 5.0,
            "refresh_interval": 0.0,
            "admission_policy": "",
            "genesis": [],
        },
        "peers": peers or [],
    }
    write_config(directory / "node.toml", doc)
    (directory / "policies").mkdir(exist_ok=True)
    peer = str(peer_id_from_ed25519(record.identity))
    announced = settings.get("announce", default_announce(listen))
    return {
        "index": index,
        "identity": record.identity.hex(),
        "dkg_key": record.dkg_key.hex(),
        "dkg_key_signature": record.dkg_key_signature.hex(),
        "peer_id": peer,
        "addresses": [a if "/p2p/" in a else f"{a}/p2p/{peer}" for a in announced],
        "url": settings.get("public_url", default_public_url(http)),
    }


def _node_settings(
    listen: str,
    http: str,
    announce: list[str] | None,
    public_url: str | None,
    pccs_url: str | None,
) -> dict[str, Any]:
    """``kms node init``'s network settings, checked as ``load`` checks them."""
    multiaddr(listen, "listen", listen=True)
    host_port(http, "http")
    out: dict[str, Any] = {}
    if announce:
        out["announce"] = [multiaddr(a, "announce") for a in announce]
    if public_url is not None:
        out["public_url"] = url(public_url, "public_url")
    if pccs_url is not None:
        out["pccs_url"] = url(pccs_url, "pccs_url")
    return out


def _simulated_tee_settings(tee: Path | None) -> dict[str, Any]:
    """The ``[node]`` keys of a node on a simulated TEE directory (development only)."""
    if tee is None:
        return {}
    tee = tee.resolve()
    return {
        "accept_simulated_quotes": True,
        "simulated_root_ca": str(tee / "root.der"),
        "collateral_file": str(tee / "collateral.json"),
        "simulated_tee": str(tee),
    }


def write_config(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(NODE_TOML_HEADER + "\n" + tomli_w.dumps(doc))


def open_store(cfg: NodeFileConfig) -> NodeStore:
    if cfg.passphrase_file is not None:
        sealer = PassphraseSealer.from_file(cfg.passphrase_file)
    elif cfg.passphrase_env is not None:
        sealer = PassphraseSealer.from_env(cfg.passphrase_env)
    else:
        raise ValueError("node.toml sets neither passphrase_file nor passphrase_env")
    return NodeStore(cfg.store, sealer)


LOG_LEVELS = ("debug", "info", "warning", "error")
"""``[node] log_level`` and ``kms node run --log-level``: the lowest level logged."""


def configure_logging(fmt: str, level: str = "info") -> None:
    """Log lines go to stderr, one event per line: JSON objects for ``json``, else text;
    lines below ``level`` (one of ``LOG_LEVELS``) are left out."""
    if level not in LOG_LEVELS:
        raise ConfigError(f"log level {level!r} is not one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger("quorum_kms")
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False


class StartupError(Exception):
    """``kms node run`` cannot start: one line saying what is wrong and what to do."""


def _open_for_run(cfg: NodeFileConfig) -> NodeStore:
    """The node's store, or ``StartupError`` (missing, passphrase refused, wrong passphrase)."""
    if not cfg.store.is_file():
        raise StartupError(
            f"no store at {cfg.store}: create the node with `kms node init`, or fix "
            f"`store` in {cfg.path}"
        )
    try:
        sealer = (
            PassphraseSealer.from_file(cfg.passphrase_file)
            if cfg.passphrase_file is not None
            else PassphraseSealer.from_env(str(cfg.passphrase_env))  # load() requires one
        )
        return NodeStore(cfg.store, sealer, create=False)
    except StoreError as exc:
        raise StartupError(f"cannot open the store {cfg.store}: {exc}") from exc


def _check_files(cfg: NodeFileConfig) -> None:
    """``StartupError`` for files and directories the node needs but lacks (an unusable
    admin token is not one: it is logged, and admin requests are refused until it is fixed)."""
    if not cfg.admin_socket.parent.is_dir():
        raise StartupError(
            f"the admin socket's directory {cfg.admin_socket.parent} does not exist: "
            f"create it or fix `admin_socket` in {cfg.path}"
        )
    for key, path in (
        ("simulated_root_ca", cfg.simulated_root_ca if cfg.accept_simulated_quotes else None),
        ("collateral_file", cfg.collateral_file),
    ):
        if path is not None and not path.is_file():
            raise StartupError(f"{key} {path} is not a file: fix `{key}` in {cfg.path}")


def _check_http_port(cfg: NodeFileConfig) -> None:
    """``StartupError`` if the HTTP port is taken (binding it would fail with a traceback)."""
    if cfg.http_port == 0:
        return
    host = cfg.http_host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, cfg.http_port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen for HTTP on {cfg.http_host}:{cfg.http_port}: "
                f"{exc.strerror or exc}; stop what uses it or change `http` in {cfg.path}"
            ) from exc


def _flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _flatten(inner)]
    return [exc]


ServiceHook = Callable[[NodeFileConfig, NodeService], None]
"""Called on the service ``build_service`` made, before it runs (the fault lab's node
program bends it there; ``kms node run`` passes none)."""


async def run_node(
    config_path: Path,
    log_format: str | None = None,
    log_level: str | None = None,
    *,
    testing: bool = False,
    adapt: ServiceHook | None = None,
) -> None:
    """``kms node run``: serve until SIGINT or SIGTERM, then shut down in order
    (``log_format`` and ``log_level`` override the config's).

    A node that cannot start raises ``ConfigError`` (``node.toml`` refused) or
    ``StartupError`` (missing store, refused or wrong passphrase,
    libp2p or HTTP port in use, missing admin socket directory): one line each,
    checked before anything listens where possible.

    On the signal: the HTTP server, the admin socket and the service's loops
    (inbound libp2p frames, timers) are cancelled, so no input is taken any more;
    every store write is a synchronous call in the service's task, so none is
    left half done, and the store is closed next (its last transaction is
    already durable; closing it checkpoints the WAL); then the libp2p transport
    is closed (streams reset, host stopped; bounded, see
    ``Libp2pTransport.aclose``). Returning normally means a clean stop
    (``kms node run`` exits 0). The store's lock (``kms.store.lock``) is held
    throughout: a second process on the same store stops with ``StoreInUse``.

    ``testing`` and ``adapt`` are for the fault lab's node program (``kms.chaos.nodeproc``)
    only: a ``[testing]`` section is read instead of refused, and ``adapt`` is applied to
    the service before it runs.
    """
    cfg = load(config_path, testing=testing)
    release_off = check_release_settings(cfg)
    configure_logging(log_format or cfg.log_format, log_level or cfg.log_level)
    if release_off is not None:
        logging.getLogger("quorum_kms.node").warning(release_off)
    if (
        cfg.passphrase_file is not None
        and cfg.passphrase_file.resolve().parent == Path(cfg.store).resolve().parent
    ):
        logging.getLogger("quorum_kms.node").warning(
            "the store's passphrase file is in the same directory as the store: a copy of "
            "that directory unseals the shares (see the operator guide, 'Sealing')",
            extra={"fields": {"passphrase_file": str(cfg.passphrase_file)}},
        )
    _check_files(cfg)
    _check_http_port(cfg)
    try:
        with store_lock.exclusive(Path(cfg.store)):
            await _serve(cfg, adapt)
    except store_lock.StoreInUse as exc:
        raise StartupError(str(exc)) from None


def shed_limits(cfg: NodeFileConfig) -> ShedLimits:
    """The release routes' admission bounds ``node.toml`` sets (``kms.api.shed``)."""
    return ShedLimits(
        concurrency=cfg.release_concurrency,
        queue=cfg.release_queue,
        queue_wait=cfg.release_queue_wait,
        retry_after=cfg.release_retry_after,
        body_timeout=cfg.release_body_timeout,
    )


async def _serve(cfg: NodeFileConfig, adapt: ServiceHook | None = None) -> None:
    """The body of ``run_node`` once the store's lock is held."""
    from kms.api import admin, front
    from kms.api.http import make_app
    from net.errors import TransportError
    from net.libp2p import Libp2pTransport

    store = _open_for_run(cfg)
    token = admin.AdminToken(cfg.admin_token_file)  # re-read when the file changes
    token.current()  # an unusable token file is logged now, not at the first request
    running = False
    try:
        ident = store.load_identity()
        if ident is None:
            raise StartupError(f"no identity in the store {cfg.store}: run `kms node init`")
        peers: dict[ParticipantIndex, list[str]] = {}
        for p in cfg.peers:
            peers.setdefault(p.index, []).append(p.multiaddr)
        transport = Libp2pTransport(ident[0], cfg.listen)
        async with transport:
            service = build_service(cfg, store, transport, peers, adapt=adapt)
            set_log_context(service.log_fields)  # the HTTP and admin tasks' lines too
            bind = f"{cfg.http_host}:{cfg.http_port}"
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                await nursery.start(admin.serve, service, cfg.admin_socket, token)
                app = make_app(service, shed_limits(cfg), service.metrics.shed)
                await nursery.start(
                    partial(front.serve, app, service, bind, on_shed=service.metrics.shed)
                )
                running = True
                logging.getLogger("quorum_kms.node").info(
                    "node running",
                    extra={
                        "fields": {
                            "index": int(cfg.index),
                            "peer_id": str(transport.local_peer),
                            "http": bind,
                            "committee_digest": cfg.committee_digest.hex(),
                        }
                    },
                )
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        logging.getLogger("quorum_kms.node").info(
                            "node stopping",
                            extra={"fields": {"signal": signal.Signals(signum).name}},
                        )
                        nursery.cancel_scope.cancel()
                        break
            # No input is taken any more: close the store before the transport.
            store.close()
    except Exception as exc:
        if running:
            raise
        for leaf in _flatten(exc):
            if isinstance(leaf, StartupError):
                raise leaf from None
            if isinstance(leaf, TransportError):
                raise StartupError(
                    f"libp2p: {leaf}; stop what uses it or change `listen` in {cfg.path}"
                ) from exc
            if isinstance(leaf, OSError):
                raise StartupError(
                    f"cannot start: {leaf}; check `listen`, `http` and `admin_socket` in {cfg.path}"
                ) from exc
        raise
    finally:
        store.close()
    logging.getLogger("quorum_kms.node").info("node stopped")


def build_service(
    cfg: NodeFileConfig,
    store: NodeStore,
    transport: Transport,
    peers: dict[ParticipantIndex, list[str]],
    *,
    clock: Clock | None = None,
    adapt: ServiceHook | None = None,
) -> NodeService:
    """The node service of ``kms node run``: the one place a ``NodeService`` is constructed
    from a node's config (its collateral, change checker, releaser and policy settings).
    ``clock`` replaces the wall clock (the in-process devnet tests run on trio's);
    ``adapt`` (the fault lab's node program only) is applied to the finished service."""
    collateral = make_collateral(cfg)
    service = NodeService(
        cfg.protocol, store, transport, peers, clock=clock, check=make_checker(cfg, collateral)
    )
    service.collateral = collateral
    service.releaser = make_releaser(cfg, service)
    service.policy_sync_interval = cfg.policy_sync_interval
    service.public_url = public_url(cfg)
    if service.releaser is None:
        service.release_off = "key release is off: " + (
            "no app policies directory; set [node] policies_dir"
            if cfg.policies_dir is None
            else f"no collateral source; {KEY_RELEASE_OFF_HINT}"
        )
    if adapt is not None:
        adapt(cfg, service)
    return service


def public_url(cfg: NodeFileConfig) -> str | None:
    """The HTTP URL clients use: ``[node] public_url``, else ``http://HOST:PORT`` of
    ``[node] http`` unless that binds every interface or an ephemeral port."""
    if cfg.public_url is not None:
        return cfg.public_url
    if cfg.http_host in UNSPECIFIED_HOSTS or cfg.http_port == 0:
        return None
    return f"http://{cfg.http_host}:{cfg.http_port}"


def committee_head(committee_url: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """The epoch and last-link hash of the chain a member serves at ``GET /v1/chain``.

    Not verified: a join request naming a head the members do not hold is refused
    by them, so a wrong answer costs only a refused request.
    """
    import httpx

    from kms.client.http import _links
    from kms.node.admission import link_epoch

    raw = httpx.get(committee_url.rstrip("/") + "/v1/chain", timeout=timeout).content
    links = _links(raw)
    if not links:
        raise ValueError(f"{committee_url} serves no chain yet")
    return link_epoch(links[-1]), links[-1].hash()


QuoteSource = Callable[[bytes], bytes]
"""Makes a TDX quote whose ``report_data`` is the given bytes."""


def join_request(
    config_path: Path,
    *,
    committee_url: str,
    quote: QuoteSource | None = None,
) -> dict[str, Any]:
    """The join request of a node that is not in the committee yet.

    Carries the participant record (index, identity, DKG key and the
    identity's signature on it), the node's libp2p addresses (``join_addresses``:
    ``[node] announce``, else the listen address), its HTTP URL (``join_url``:
    ``[node] public_url``, else ``[node] http``), the committee's
    current chain head (epoch and last-link hash, read from the member at
    ``committee_url``) and a TDX quote whose ``report_data`` is
    ``join_report_data(record, addresses, epoch, head, url)``
    (``kms.node.admission``): members refuse it once the committee is more than
    ``JOIN_MAX_AGE`` epochs further. The quote comes from ``quote``, which the
    caller chooses: by default the TDX guest's configfs-tsm report interface
    (``tdx_quote``); ``kms.app.devnet.quote_source`` gives the devnet's simulated TEE
    for a node whose ``[node] simulated_tee`` names a devnet directory.
    """
    import tomllib

    from kms.node.admission import join_report_data

    doc = tomllib.loads(Path(config_path).read_text())
    node = doc["node"]
    base = Path(config_path).parent
    with NodeStore(
        base / node.get("store", "node.db"),
        PassphraseSealer.from_file(base / node["passphrase_file"])
        if "passphrase_file" in node
        else PassphraseSealer.from_env(node["passphrase_env"]),
    ) as store:
        ident = store.load_identity()
    if ident is None:
        raise ValueError("no identity in the store: run `kms node init`")
    identity = SigningKey.from_seed(ident[0])
    _, dkg_pub = hpke.derive_key_pair(ident[1])
    rec = participant_record(identity, dkg_pub, int(node["index"]))
    peer = peer_id_from_ed25519(rec.identity)
    addresses = join_addresses(node, str(peer))
    url = join_url(node)
    epoch, head = committee_head(committee_url)
    report_data = join_report_data(rec, addresses, epoch, head, url)
    attestation = (quote or tdx_quote)(report_data)
    return {
        "index": rec.index,
        "identity": rec.identity.hex(),
        "dkg_key": rec.dkg_key.hex(),
        "dkg_key_signature": rec.dkg_key_signature.hex(),
        "peer_id": str(peer),
        "addresses": addresses,
        "url": url,
        "epoch": epoch,
        "head": head.hex(),
        "attestation": attestation.hex(),
    }


UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})  # noqa: S104 - refused, not bound
"""Hosts a server binds to mean "every interface": no other machine can dial them."""


def _multiaddr_host(addr: str) -> str | None:
    parts = addr.split("/")
    if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
        return parts[2]
    return None


def join_addresses(node: dict[str, Any], peer: str) -> list[str]:
    """The libp2p addresses a join request carries: ``[node] announce`` (else the listen
    address), each with ``/p2p/<peer id>``. Raises ``ConfigError`` for an address other
    machines cannot dial (an unspecified host, 0.0.0.0 or ::)."""
    announce = node.get("announce") or []
    if isinstance(announce, str):
        announce = [announce]
    if not isinstance(announce, list) or not all(
        isinstance(a, str) and a.startswith("/") for a in announce
    ):
        raise ConfigError("[node] announce must be a list of libp2p multiaddrs")
    chosen = list(announce) or [str(node.get("listen", "/ip4/127.0.0.1/tcp/0"))]
    out = []
    for addr in chosen:
        where = "[node] announce" if announce else "[node] listen"
        if _multiaddr_host(addr) in UNSPECIFIED_HOSTS:
            raise ConfigError(
                f"{where} {addr} has an unspecified host that other members cannot dial: "
                "set [node] announce to the address they reach this node at "
                '(e.g. announce = ["/dns4/kms5.example.org/tcp/9000"])'
            )
        if addr.endswith("/tcp/0"):
            raise ConfigError(
                f"{where} {addr} has port 0 (chosen at start): set a fixed port in "
                "[node] listen or [node] announce"
            )
        out.append(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
    return out


def join_url(node: dict[str, Any]) -> str:
    """The HTTP URL a join request carries: ``[node] public_url``, else ``http://HOST:PORT``
    of ``[node] http``. Raises ``ConfigError`` when clients could not reach that."""
    from mpc.membership.messages import MAX_MEMBER_URL, valid_member_url

    url = node.get("public_url")
    if url is not None:
        if not isinstance(url, str) or len(url) > MAX_MEMBER_URL or not valid_member_url(url):
            raise ConfigError(
                "[node] public_url must be an http(s) URL (e.g. https://kms5.example.org:8443)"
            )
        return url
    http = str(node.get("http", "127.0.0.1:0"))
    host, _, port = http.rpartition(":")
    if host in UNSPECIFIED_HOSTS or port in ("", "0"):
        raise ConfigError(
            f"[node] http {http} is not an address clients can reach: set [node] public_url "
            'to the URL clients use (e.g. public_url = "https://kms5.example.org:8443")'
        )
    derived = f"http://{host}:{port}"
    if not valid_member_url(derived):
        raise ConfigError(
            f"[node] http {http} gives {derived}, not a URL a join request can carry: set "
            '[node] public_url (e.g. public_url = "https://kms5.example.org:8443")'
        )
    return derived


TSM_REPORT = Path("/sys/kernel/config/tsm/report")


def tdx_quote(report_data: bytes) -> bytes:
    """A TDX quote over ``report_data`` from the Linux configfs-tsm report interface."""
    if not TSM_REPORT.is_dir():
        raise ValueError(
            f"no TDX quote: {TSM_REPORT} is missing (not a TDX guest); "
            "a devnet node sets [node] simulated_tee"
        )
    entry = TSM_REPORT / f"kms-join-{secrets.token_hex(8)}"
    entry.mkdir()
    try:
        (entry / "inblob").write_bytes(report_data)
        return (entry / "outblob").read_bytes()
    finally:
        entry.rmdir()


def collateral_floor(cfg: NodeFileConfig) -> Any:
    """The oldest collateral this node accepts, fetched or verified (``[node]`` settings)."""
    from kms.attest import CollateralFloor

    return CollateralFloor(
        min_tcb_evaluation_data_number=cfg.min_tcb_evaluation_data_number,
        min_issue_date=cfg.min_collateral_issue_date,
        max_age=cfg.max_collateral_age,
    )


def _verifier(cfg: NodeFileConfig) -> Any:
    from kms.attest import INTEL_ROOT_CA, Verifier

    roots = [INTEL_ROOT_CA]
    if cfg.accept_simulated_quotes and cfg.simulated_root_ca is not None:
        roots.append(cfg.simulated_root_ca.read_bytes())
    # The node's floor on TCB statuses: a quote outside it is refused whatever the
    # policy lists, so a policy can only narrow it (effective set = node ∩ policy).
    return Verifier(
        roots,
        simulated_allowed=cfg.accept_simulated_quotes,
        allowed_statuses=cfg.allowed_tcb_statuses,
        floor=collateral_floor(cfg),
    )


KEY_RELEASE_OFF_HINT = (
    "set [node] pccs_url (a TDX host's PCCS), or collateral_file (and, for a simulated "
    "TEE, accept_simulated_quotes and simulated_root_ca: `kms node init --simulated-tee`)"
)


def check_release_settings(cfg: NodeFileConfig, now: float | None = None) -> str | None:
    """Check the settings key release (and join approval) needs, at start.

    Broken ones raise ``ConfigError`` (``kms node run`` prints one ``error:`` line and
    exits 2): ``accept_simulated_quotes`` without ``simulated_root_ca`` or without any
    collateral; a ``simulated_root_ca`` that cannot be read or is not a DER
    certificate; a ``collateral_file`` that cannot be read, does not parse, or is
    expired (past its ``nextUpdate``, or older than ``max_collateral_age``). Absent
    ones (neither ``pccs_url`` nor ``collateral_file``, or no ``policies_dir``) are no
    error: the node runs and holds its share but releases no key; the reason is
    returned (logged as a warning at start and shown in ``/v1/status``).
    """
    import time

    from cryptography import x509

    from kms.attest import Collateral, QuoteVerificationError

    when = int(time.time() if now is None else now)
    if cfg.accept_simulated_quotes and cfg.simulated_root_ca is None:
        raise ConfigError(
            "[node] accept_simulated_quotes is set without simulated_root_ca: set "
            "simulated_root_ca to the simulated TEE's root.der, or remove accept_simulated_quotes"
        )
    if cfg.accept_simulated_quotes and cfg.collateral_file is None and cfg.pccs_url is None:
        raise ConfigError(
            "[node] accept_simulated_quotes is set without collateral: set collateral_file "
            "to the simulated TEE's collateral.json"
        )
    if cfg.simulated_root_ca is not None:
        try:
            x509.load_der_x509_certificate(cfg.simulated_root_ca.read_bytes())
        except OSError as exc:
            raise ConfigError(
                f"[node] simulated_root_ca {cfg.simulated_root_ca} cannot be read: "
                f"{exc.strerror or exc}"
            ) from None
        except ValueError:
            raise ConfigError(
                f"[node] simulated_root_ca {cfg.simulated_root_ca} is not a DER certificate "
                "(give the simulated TEE's root.der)"
            ) from None
    if cfg.collateral_file is not None:
        where = f"[node] collateral_file {cfg.collateral_file}"
        try:
            collateral = Collateral.from_json(cfg.collateral_file.read_text())
            until = collateral.valid_until()
            collateral_floor(cfg).check(collateral, when)
        except OSError as exc:
            raise ConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
        except (QuoteVerificationError, ValueError) as exc:
            if "issued" in str(exc) or "floor" in str(exc):
                raise ConfigError(
                    f"{where} is too old for this node ({exc}): get fresh collateral"
                ) from None
            raise ConfigError(f"{where} is not collateral JSON ({exc})") from None
        if until < when:
            raise ConfigError(
                f"{where} expired at {until} (unix seconds): get fresh collateral "
                "(`kms tee init` writes 30-day collateral for a simulated TEE)"
            )
    if cfg.pccs_url is None and cfg.collateral_file is None:
        return f"key release is off: no collateral source; {KEY_RELEASE_OFF_HINT}"
    if cfg.policies_dir is None:
        return "key release is off: no app policies directory; set [node] policies_dir"
    return None


def make_collateral(cfg: NodeFileConfig) -> Any:
    """Where this node's quote collateral comes from: its PCCS (cached), a file, or both.

    ``None`` when neither is configured: the node then verifies no quote.
    """
    from kms.attest import Collateral
    from kms.attest.pccs import CollateralCache, CollateralProvider, PCCSClient

    fixed = (
        Collateral.from_json(cfg.collateral_file.read_text())
        if cfg.collateral_file is not None
        else None
    )
    client = None
    if cfg.pccs_url is not None:
        # Collateral per platform from the PCCS, cached on disk for when it is down.
        cache = CollateralCache(cfg.collateral_cache_dir or cfg.directory / "collateral")
        client = PCCSClient(
            cfg.pccs_url,
            cache=cache,
            verify_tls=cfg.pccs_verify_tls,
            floor=collateral_floor(cfg),
        )
    if client is None and fixed is None:
        return None
    return CollateralProvider(
        client,
        fixed=fixed,
        max_concurrent_fetches=cfg.max_concurrent_collateral_fetches,
        failure_ttl=cfg.collateral_failure_ttl,
    )


def make_checker(cfg: NodeFileConfig, collateral: Any) -> Any:
    """What this node checks before it proposes or approves a change (``kms.node.admission``).

    Join requests' quotes are verified with the node's trust roots and its
    collateral (``make_collateral``); a node without any approves no join.
    """
    from kms.evidence import verify_wrong_partial
    from kms.node.admission import ChangeChecker

    return ChangeChecker(
        _verifier(cfg),
        collateral.get if collateral is not None else None,
        verify_wrong_partial,
    )


def make_releaser(cfg: NodeFileConfig, service: NodeService) -> Any:
    """The key releaser of ``kms node run``: trust roots, collateral and policies from config."""
    from kms.node.release import KeyReleaser

    if cfg.policies_dir is None or service.collateral is None:
        return None
    if cfg.accept_simulated_quotes and cfg.simulated_root_ca is not None:
        logging.getLogger("quorum_kms.node").warning(
            "SIMULATED TEE QUOTES ACCEPTED: this node is for development only",
            extra={"fields": {"simulated_root_ca": str(cfg.simulated_root_ca)}},
        )
    verifier = _verifier(cfg)

    def mpk() -> bytes | None:
        st = service.core.state
        return st.mpk.to_bytes() if st is not None else None

    from kms.node.policies import NodePolicies

    def threshold() -> int:
        st = service.core.state
        return st.threshold if st is not None else 1

    service.policies = NodePolicies(
        service.store,
        mpk,
        directory=cfg.policies_dir,
        max_version_step=cfg.policy_max_version_step,
        cache_entries=cfg.policy_cache_entries,
        cache_bytes=cfg.policy_cache_bytes,
        vouch_threshold=threshold,
        max_apps=cfg.policy_max_apps,
        new_app_rotations=cfg.policy_new_app_rotations,
    )
    return KeyReleaser(
        cfg.index,
        service.identity,
        verifier,
        max_skew=cfg.max_request_skew,
    )
