"""``kms agent run``: boot a dstack guest agent whose keys come from the committee.

The boot, in order; any step that fails ends the agent with one ``error: …`` line and no
socket:

1. **The TEE view.** ``read_view(source)`` quotes once, replays RTMR3 and reads the app id,
   compose hash and instance id from the boot prefix of the event log. The app id is
   never a configuration value: it is what the CVM measured. The source is the one the
   command line names (``--tee``, fixed by the measured compose's ``command:``), never
   the config file's; with ``--config`` the file is then checked against this view.
2. **The app's current policy.** Every committee node is asked for the app's policy
   (``GET /v1/policies/{app}``), at once, with a byte cap, a hedge and a deadline; each
   answer's signed bundle is checked here (owner chain from the app id, owner signature,
   the pinned master public key, validity now), the owner chains of all answers are
   combined (a fork stops the boot) and the highest version signed by the chain's head
   is kept. A lying node can only hide versions (serve an older one, or none): it cannot
   sign one, and honest nodes refuse a root version that is not their current one
   anyway. ``v = root_version(policy)``. A configured env file must be signed by that
   owner key (``kms.agent.envfile``) before any key is asked for.
3. **σ.** ONE attested key request (``KeyClient.fetch``) for ``("dstack-app-root", v)``,
   plus the env inbox ``("ibe.env", 1)`` when an encrypted env file is configured. The app
   root key is ``app_root_from_sigma(σ)``; the agent never writes, logs or serves it
   (whoever can open the guest socket can have the committee release it too:
   docs/dstack.md, "Who holds the guest socket").
4. **The app-key certificate.** The second attested request (``KeyClient.certify``): the
   committee's BLS signatures over dstack's link-1 message and over the quorum-kms message
   naming ``v`` and the epoch.
5. **Serve.** The guest API (``kms.agent.api.make_app``) over the Unix socket (and, with
   ``http``, over TCP on a loopback address only). The socket is bound under a temporary
   name and renamed into place once the server answers, so it never exists before the
   agent can answer; a socket left at the path is replaced only when nothing answers on
   it. Then exactly one line ``serving on PATH`` is printed. The server's connection
   limits are the node's public port's (``kms.api.http.server_config``).

Before step 1, ``run`` takes an exclusive ``flock`` on ``<socket>.lock`` for the
agent's life: a second agent on the same path stops there. The key and certificate
requests try every URL claiming an index (``with_claimants``). The decrypted env file
(``env_out``, mode 0600) is written just before serving (removed if serving fails); it
is the only thing written to disk, and its content is never logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from kms.agent.api import AgentKeys, make_app
from kms.agent.config import TeeSettings
from kms.agent.envfile import EnvSignatureError, SignedEnv, read_signed_env
from kms.agent.tee import TeeSource, TeeView, read_view
from kms.app.cvm import Target, nodes_by_index, read_capped, with_claimants
from kms.client.appcert import AppKeyCert, AppKeyCertError
from kms.client.core import KeyReleaseError
from kms.client.http import FetchResult, KeyClient
from kms.dstack.chain import ChainError, verify_app_key_cert
from kms.dstack.keys import app_root_from_sigma, root_public
from kms.policy import ROOT_PURPOSE, OwnerChain, PolicyBundle, PolicyError, root_version
from kms.secretfile import write_secret
from mpc import ibe
from mpc.cert import check_mpk
from mpc.errors import DecryptionError, InvalidEncoding
from mpc.ids import ParticipantIndex
from mpc.math import G2

ENV_INBOX = "env"
"""The inbox an app's encrypted env file is sealed to (purpose ``ibe.env``, version 1;
``kms env encrypt``)."""
ENV_PURPOSE = ibe.INBOX_PREFIX + ENV_INBOX
SOCKET_MODE = 0o660
"""The socket's mode: the agent's user and group (the app container's) may connect."""
POLICY_SKEW = 300
"""Seconds a policy's ``not_before`` may lie ahead of this clock (as nodes allow)."""
_EVENT_KEYS = ("imr", "event_type", "digest", "event", "event_payload", "version")


class AgentError(RuntimeError):
    """The agent cannot start (the message says why)."""


@dataclass(frozen=True)
class AgentSetup:
    """What the agent boots from: its TEE, the pinned master public key, the committee's
    URLs, where it serves, and the optional encrypted env file."""

    source: TeeSource
    mpk: bytes
    urls: tuple[str, ...]
    socket: Path
    http: tuple[str, int] | None = None
    env_file: Path | None = None
    env_out: Path | None = None


@dataclass(frozen=True)
class Booted:
    """The agent's keys and view, and how long each attested step took (seconds)."""

    keys: AgentKeys
    view: TeeView
    timings: Mapping[str, float] = field(default_factory=dict)
    env: bytes | None = field(default=None, repr=False)
    """The decrypted env file (never logged)."""


def loopback(address: str) -> tuple[str, int]:
    """``HOST:PORT`` with a loopback IP address as host; ``AgentError`` otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not ipaddress.ip_address(host).is_loopback:
            raise ValueError
        number = int(port)
        if not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise AgentError(
            f"--http {address!r}: give a loopback address and port, e.g. 127.0.0.1:8090 "
            "(the guest API serves key material: never on another interface)"
        ) from None
    return host, number


# --- the app's current policy -------------------------------------------------------------


def check_bundle(raw_hex: object, app_id: bytes, mpk: bytes, now: int) -> PolicyBundle:
    """A node's ``bundle`` field, checked: the app's own, its owner chain starting from the
    app id, signed by the current owner, naming ``mpk``, valid at ``now``. Raises
    ``ValueError`` (``PolicyError`` is one) saying what is wrong."""
    if not isinstance(raw_hex, str):
        raise ValueError("no signed bundle in the answer")
    bundle = PolicyBundle.decode(bytes.fromhex(raw_hex))
    policy = bundle.signed.policy
    if policy.app_id != app_id:
        raise ValueError("a policy of another app")
    chain = OwnerChain.from_records(
        app_id, bundle.rotations, first_owner=None if bundle.rotations else policy.owner_key
    )
    if chain.current != policy.owner_key:
        raise ValueError("not signed by the app's current owner key")
    bundle.signed.verify_signature()
    if policy.kms_mpk != mpk:
        raise ValueError("the policy names another master public key")
    if policy.not_before > now + POLICY_SKEW or policy.is_expired(now):
        raise ValueError("the policy is not valid now")
    return bundle


POLICY_CAP = 256 * 1024
"""The largest policy answer read from a node (bytes); a longer one is dropped unread."""
POLICY_HEDGE = 1.0
"""Seconds the agent waits for more policy answers once one valid answer is in."""
POLICY_DEADLINE = 10.0
"""Seconds the agent waits for policy answers at all."""


def current_policy(
    urls: Sequence[str],
    app_id: bytes,
    mpk: bytes,
    *,
    now: int | None = None,
    timeout: float = 5.0,
    transport: httpx.BaseTransport | None = None,
    hedge: float = POLICY_HEDGE,
    deadline: float = POLICY_DEADLINE,
) -> tuple[PolicyBundle, list[str]]:
    """The highest valid policy version the nodes at ``urls`` hold for the app under its
    current owner key, and why each other answer was not used. ``AgentError`` when none
    is valid, or when the answers' owner chains fork.

    Every node is asked at once; answers are read as a stream and dropped past
    ``POLICY_CAP`` bytes; the agent stops waiting ``hedge`` seconds after the first valid
    answer, and ``deadline`` seconds after it asked, whatever is still pending. The owner
    chains of all valid answers are combined (``OwnerChain.merge``, as nodes do): an answer
    signed by a key that a longer verified chain rotated away from is not used, and two
    different rotations from one key (a fork) stop the boot."""
    when = int(time.time()) if now is None else now
    unused: list[str] = []
    stop = time.monotonic() + deadline

    def ask(http: httpx.Client, url: str) -> PolicyBundle | str:
        try:
            status, body = read_capped(
                http, f"{url.rstrip('/')}/v1/policies/{app_id.hex()}", POLICY_CAP, stop
            )
            if status != 200:
                return f"{url}: HTTP {status}"
            info = json.loads(body)
            if not isinstance(info, dict):
                return f"{url}: not a JSON object"
            return check_bundle(info.get("bundle"), app_id, mpk, when)
        except (httpx.HTTPError, ValueError, InvalidEncoding) as exc:
            return f"{url}: {type(exc).__name__}: {exc}"
        except Exception as exc:  # any failure (an unbuildable URL too)
            return f"{url}: {type(exc).__name__}: {exc}"

    valid: list[PolicyBundle] = []
    asked = list(dict.fromkeys(urls))
    http = httpx.Client(timeout=timeout, transport=transport)
    pool = ThreadPoolExecutor(max_workers=max(1, min(16, len(asked))))
    try:
        pending = {pool.submit(ask, http, url): url for url in asked}
        first: float | None = None
        while pending:
            now_m = time.monotonic()
            limit = stop - now_m
            if first is not None:
                limit = min(limit, first + hedge - now_m)
            if limit <= 0:
                break
            done, _ = wait(pending, timeout=limit, return_when=FIRST_COMPLETED)
            for fut in done:
                pending.pop(fut)
                answer = fut.result()
                if isinstance(answer, str):
                    unused.append(answer)
                else:
                    valid.append(answer)
                    first = time.monotonic() if first is None else first
        unused.extend(f"{url}: no answer in time" for url in pending.values())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        http.close()
    if not valid:
        raise AgentError(
            f"no node holds a valid policy for app {app_id.hex()} ({'; '.join(unused)})"
        )
    head = owner_head(app_id, valid)
    owned = [b for b in valid if b.signed.policy.owner_key == head.current]
    unused.extend(
        f"a policy signed by owner key {b.signed.policy.owner_key.hex()}, which the app's "
        "owner chain rotated away from"
        for b in valid
        if b.signed.policy.owner_key != head.current
    )
    best = max(owned, key=lambda b: b.signed.policy.version)
    return best, unused


def owner_head(app_id: bytes, bundles: Sequence[PolicyBundle]) -> OwnerChain:
    """The longest owner chain of ``bundles`` (each already verified by ``check_bundle``),
    every other one a prefix of it; ``AgentError`` when two of them fork."""
    head: OwnerChain | None = None
    for b in bundles:
        chain = OwnerChain.from_records(
            app_id, b.rotations, first_owner=None if b.rotations else b.signed.policy.owner_key
        )
        try:
            head = chain if head is None else head.merge(chain)
        except PolicyError as exc:
            raise AgentError(
                f"the nodes hold forked owner chains for app {app_id.hex()} ({exc}): two "
                "different rotations from one owner key; the app is frozen until the "
                "committee's operators resolve the fork"
            ) from None
    if head is None:
        raise AgentError("no policy to take the owner chain from")
    return head


# --- the keys -----------------------------------------------------------------------------


def event_log_bytes(view: TeeView) -> bytes:
    """The RTMR3 events of the view, as the nodes read them (``kms.policy.eventlog``)."""
    events = [{k: e[k] for k in _EVENT_KEYS if k in e} for e in view.event_log if e.get("imr") == 3]
    return json.dumps(events, separators=(",", ":")).encode()


def obtain_keys(
    setup: AgentSetup,
    view: TeeView,
    *,
    now: int | None = None,
    transport: httpx.BaseTransport | None = None,
) -> tuple[AgentKeys, bytes | None, dict[str, float]]:
    """Steps 2–4: the policy, σ (and the env inbox point), the root, the certificate.

    Returns the agent's keys, the decrypted env file (None without one) and the time each
    step took. ``AgentError`` when the committee releases no key to this CVM."""
    try:
        mpk = G2.from_bytes(setup.mpk)
        check_mpk(mpk)
    except ValueError as exc:
        raise AgentError(f"the pinned master public key is not one ({exc})") from None
    app_id = view.app_id
    timings: dict[str, float] = {}
    start = time.monotonic()
    try:
        nodes = nodes_by_index(list(setup.urls))
    except ValueError as exc:
        raise AgentError(str(exc)) from None
    signed: SignedEnv | None = None
    if setup.env_file is not None:
        try:
            signed = read_signed_env(setup.env_file.read_bytes())
            key_id = ibe.read_header(signed.sealed).key_id
        except (OSError, InvalidEncoding, EnvSignatureError) as exc:
            raise AgentError(
                f"cannot read the encrypted env file {setup.env_file}: {exc}"
            ) from None
        if (key_id.app_id, key_id.purpose, key_id.version) != (app_id, ENV_PURPOSE, 1):
            raise AgentError(
                f"{setup.env_file} is not sealed to this app's env inbox "
                f"(it names app {key_id.app_id.hex()}, {key_id.purpose} v{key_id.version})"
            )
    log = event_log_bytes(view)
    target = Target(
        nodes.urls, mpk, app_id, setup.source.quote, log, nodes.left_out, nodes.contested
    )
    # Set by the first attempt: the policy, and the env file checked against its owner.
    chosen: list[PolicyBundle] = []
    sealed: list[bytes] = []

    def policy_of(client: KeyClient) -> PolicyBundle:
        if not chosen:
            members = list(dict.fromkeys([*client.urls.values(), *setup.urls]))
            bundle, _ = current_policy(members, app_id, setup.mpk, now=now, transport=transport)
            if signed is not None:
                try:  # the owner of the policy just verified signs the app's env
                    sealed.append(signed.opened_by(app_id, bundle.signed.policy.owner_key))
                except EnvSignatureError as exc:
                    raise AgentError(f"refusing the env file {setup.env_file}: {exc}") from None
            chosen.append(bundle)
            timings["policy"] = time.monotonic() - start
        return chosen[0]

    def fetch(urls: dict[ParticipantIndex, str]) -> tuple[FetchResult, PolicyBundle]:
        with KeyClient(urls, mpk, hedge_after=0.5, transport=transport) as client:
            try:
                client.chain()
            except KeyReleaseError as exc:
                raise AgentError(f"no verified chain from the committee: {exc}") from None
            bundle = policy_of(client)
            purposes = [(ROOT_PURPOSE, root_version(bundle.signed.policy))]
            if signed is not None:
                purposes.append((ENV_PURPOSE, 1))
            t0 = time.monotonic()
            res = client.fetch(
                app_id, purposes, setup.source.quote, event_log=log, now=now, bundle=bundle.encode()
            )
            timings["key_request"] = time.monotonic() - t0
            return res, bundle

    try:
        res, bundle = with_claimants(target, fetch)
    except KeyReleaseError as exc:
        raise AgentError(f"the committee released no key to this CVM: {exc}") from None
    version = root_version(bundle.signed.policy)
    derived = res.derived[(ROOT_PURPOSE, version)]
    root = app_root_from_sigma(derived.point.to_bytes(), derived.key_id.encode())
    public = root_public(root)

    def certify(urls: dict[ParticipantIndex, str]) -> tuple[AppKeyCert, tuple[str, ...]]:
        with KeyClient(urls, mpk, hedge_after=0.5, transport=transport) as client:
            t0 = time.monotonic()
            try:
                cert = client.certify(
                    app_id,
                    version,
                    public,
                    setup.source.quote,
                    event_log=log,
                    bundle=bundle.encode(),
                )
            except AppKeyCertError as exc:  # a refusal like a key request's (next claimant)
                raise KeyReleaseError(
                    str(exc),
                    refusals=exc.refusals,
                    bad_nodes=exc.bad_nodes,
                    unreachable=exc.unreachable,
                ) from None
            timings["certificate"] = time.monotonic() - t0
            return cert, tuple(client.urls.values())

    try:
        cert, urls = with_claimants(target, certify)
    except KeyReleaseError as exc:
        raise AgentError(f"the committee certified no app key for this CVM: {exc}") from None
    try:  # what the app will serve as link 1 must verify as a verifier checks it
        if cert.version != version:
            raise ChainError(f"the certificate names version {cert.version}, not {version}")
        verify_app_key_cert(
            mpk,
            app_id,
            public,
            cert.link_signature,
            version=cert.version,
            epoch=cert.epoch,
            qkms_signature=cert.qkms_signature,
        )
    except ChainError as exc:
        raise AgentError(f"the committee's certificate does not verify: {exc}") from None
    env: bytes | None = None
    if sealed:
        try:
            env = ibe.decrypt(res.derived[(ENV_PURPOSE, 1)], mpk, sealed[0])
        except DecryptionError as exc:
            raise AgentError(f"cannot decrypt {setup.env_file}: {exc}") from None
    keys = AgentKeys(
        root=root,
        root_public=public,
        app_id=app_id,
        root_version=version,
        link1=cert.link_signature,
        qkms_cert=(cert.version, cert.epoch, cert.qkms_signature),
        mpk=setup.mpk,
        committee_urls=urls,
    )
    timings["total"] = time.monotonic() - start
    return keys, env, timings


def boot(setup: AgentSetup, *, transport: httpx.BaseTransport | None = None) -> Booted:
    """Steps 1–4. The decrypted env file, if any, is in ``Booted.env``; ``run`` writes it."""
    if (setup.env_file is None) != (setup.env_out is None):
        raise AgentError("an encrypted env file needs both env_file and env_out")
    try:
        view = read_view(setup.source)
    except ValueError as exc:
        raise AgentError(f"the TEE view does not check: {exc}") from None
    keys, env, timings = obtain_keys(setup, view, transport=transport)
    return Booted(keys, view, timings, env)


# --- serving ------------------------------------------------------------------------------


_LOCKS: dict[Path, int] = {}
"""The socket locks this process holds (``lock_socket``), by lock path."""


def lock_socket(path: Path) -> None:
    """Hold ``<socket>.lock`` (``kms.store.lock``'s ``flock`` beside a file) for the rest of
    this process's life; ``AgentError`` at once when another process holds it (another
    agent serves, or boots to serve, on ``path``). A no-op when this process holds it."""
    lock = Path(str(Path(path).resolve()) + ".lock")  # as kms.store.lock.lock_path
    if lock in _LOCKS:
        return
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AgentError(f"cannot create the socket's lock file {lock}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AgentError(
            f"another agent holds {lock}: it serves (or is starting to serve) on {path}"
        ) from None
    _LOCKS[lock] = fd


def _answers(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def clear_stale_socket(path: Path) -> None:
    """Remove a socket left at ``path`` by an agent that is gone; ``AgentError`` when
    something answers there or ``path`` is not a socket."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AgentError(f"{path} exists and is not a socket: not replacing it")
    if _answers(path):
        raise AgentError(f"something already answers on {path} (another agent?)")
    path.unlink(missing_ok=True)


def _bound_socket(path: Path) -> tuple[socket.socket, Path]:
    """A Unix socket bound under a temporary name beside ``path``, mode ``SOCKET_MODE``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, SOCKET_MODE)
        sock.listen(128)
    except OSError:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise
    return sock, tmp


def serve(
    app: Any,
    path: Path,
    http: tuple[str, int] | None,
    *,
    on_ready: Callable[[], None],
    read_timeout: float | None = None,
) -> None:
    """Serve ``app`` on the Unix socket ``path`` (and ``http``) until SIGTERM or SIGINT.

    The connection limits are the node's public port's (``kms.api.http.server_config``):
    a read that waits longer than ``read_timeout`` (30 s unless given) closes the
    connection, request headers are bounded, so are unread body chunks, and an idle
    keep-alive connection is closed. The socket appears at ``path`` only once the server
    answers; ``on_ready`` runs then. The socket is removed on the way out if it is still
    this agent's. ``<path>.lock`` is held first (``lock_socket``): a second agent on one
    path stops with ``AgentError``."""
    import trio
    from hypercorn.trio import serve as hypercorn_serve

    from kms.api.http import server_config

    lock_socket(path)
    clear_stale_socket(path)
    try:
        sock, tmp = _bound_socket(path)
    except OSError as exc:
        raise AgentError(f"cannot create the socket {path}: {exc.strerror or exc}") from None
    config = server_config(f"fd://{sock.fileno()}")
    if read_timeout is not None:
        config.read_timeout = read_timeout
    if http is not None:
        config.bind.append(
            f"{http[0]}:{http[1]}" if ":" not in http[0] else f"[{http[0]}]:{http[1]}"
        )
    config.graceful_timeout = 1.0
    inode: list[int] = []

    async def main() -> None:
        stop = trio.Event()

        async def signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
                async for _ in received:
                    stop.set()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(signals)
            await nursery.start(
                lambda task_status=trio.TASK_STATUS_IGNORED: hypercorn_serve(
                    app, config, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            os.replace(tmp, path)
            inode.append(path.lstat().st_ino)
            on_ready()
            await stop.wait()
            nursery.cancel_scope.deadline = trio.current_time() + 3.0

    try:
        trio.run(main)
    finally:
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if inode and path.lstat().st_ino == inode[0]:
                path.unlink()


def run(setup: AgentSetup, *, out: TextIO = sys.stdout) -> None:
    """Boot and serve (``kms agent run``); ``AgentError`` before anything is served.

    The socket's lock is taken before anything else. The decrypted env file is written
    (0600) just before serving, and removed again when serving fails."""
    lock_socket(setup.socket)
    if setup.http is not None:
        loopback(f"{setup.http[0]}:{setup.http[1]}")
    booted = boot(setup)
    app = make_app(booted.keys, booted.view, setup.source)

    def ready() -> None:
        out.write(f"serving on {setup.socket}\n")
        out.flush()

    written = False
    if booted.env is not None and setup.env_out is not None:
        try:
            write_secret(setup.env_out, booted.env)
        except OSError as exc:
            raise AgentError(f"cannot write {setup.env_out}: {exc.strerror or exc}") from None
        written = True
    try:
        serve(app, setup.socket, setup.http, on_ready=ready)
    except BaseException:
        if written and setup.env_out is not None:
            setup.env_out.unlink(missing_ok=True)
        raise


# --- where the setup comes from -------------------------------------------------------------


def devnet_setup(
    directory: Path,
    name: str,
    socket_path: Path,
    *,
    rogue: bool = False,
    env_file: Path | None = None,
    env_out: Path | None = None,
) -> AgentSetup:
    """A devnet's dstack app on the simulated TEE: a development convenience, whose master
    public key and node URLs come from the devnet's directory, not from a measured config."""
    from kms.agent.tee import SimulatedSource
    from kms.app import devnet

    try:
        state = devnet.sync_members(directory)
        app_id = devnet.app_id_of(state, name)
        app_compose = devnet.dstack_app_compose_path(directory, name).read_text()
    except (OSError, ValueError) as exc:
        raise AgentError(
            f"{directory}: no dstack app {name!r} in this devnet ({exc}); "
            f"the devnet's own is {devnet.DSTACK_APP!r}"
        ) from None
    mpk_hex = state.get("master_public_key")
    if not mpk_hex:
        raise AgentError("the devnet has no master public key yet")
    measurement = devnet.dstack_measurement(app_compose, rogue=rogue)
    source = SimulatedSource(
        directory / "simulated-tee",
        measurement,
        app_id,
        app_compose,
        boot_events=devnet.dstack_image_events(),
    )
    urls = tuple(str(n["http_url"]) for n in state["nodes"])
    mpk = bytes.fromhex(str(mpk_hex))
    return AgentSetup(source, mpk, urls, socket_path, None, env_file, env_out)


def config_setup(path: Path, tee: TeeSettings, socket_path: Path | None = None) -> AgentSetup:
    """The setup a measured ``agent.toml`` gives. The TEE source is ``tee``, from the
    agent's command line (which the compose fixes and RTMR3 measures), never from the file:
    its view is read first, then the whole file is checked against the compose that view
    measured (``load_measured_config``), before anything else."""
    from kms.agent.config import load_measured_config

    try:
        source = tee.make_source()
        cfg = load_measured_config(path, read_view(source))
    except (OSError, ValueError) as exc:
        raise AgentError(str(exc)) from None
    return AgentSetup(
        source,
        cfg.mpk,
        cfg.urls,
        socket_path or cfg.socket,
        None,
        cfg.env_file,
        cfg.env_out,
    )


@dataclass(frozen=True)
class CommandLine:
    """The options of ``kms agent run``, as given (``None`` when absent)."""

    config: Path | None = None
    devnet: Path | None = None
    app: str | None = None
    socket: Path | None = None
    http: str | None = None
    rogue: bool = False
    env_file: Path | None = None
    env_out: Path | None = None
    tee: str | None = None
    tee_paths: dict[str, Path | None] = field(default_factory=dict)
    """``dstack_socket``, ``tsm_dir``, ``ccel``, ``runtime_log``, ``app_compose``."""


def setup_from(cl: CommandLine) -> AgentSetup:
    """The setup ``kms agent run`` boots from: ``--devnet`` (simulated) or ``--config``
    with the TEE source named on the command line; ``AgentError`` for options that do not
    go together."""
    from kms.agent.config import AgentConfigError, tee_settings

    address = loopback(cl.http) if cl.http is not None else None
    if (cl.config is None) == (cl.devnet is None):
        raise AgentError("give either --config agent.toml or --devnet DIR --app NAME")
    if cl.config is None:
        devnet_dir = cl.devnet
        if devnet_dir is None or cl.app is None or cl.socket is None:
            raise AgentError("--devnet needs --app NAME and --socket PATH")
        if cl.tee is not None or any(v is not None for v in cl.tee_paths.values()):
            raise AgentError("--tee and its paths go with --config (--devnet is simulated)")
        setup = devnet_setup(
            devnet_dir, cl.app, cl.socket, rogue=cl.rogue, env_file=cl.env_file, env_out=cl.env_out
        )
    else:
        if cl.app is not None or cl.rogue or cl.env_file or cl.env_out:
            raise AgentError("--app, --env-file and --rogue-measurement go with --devnet")
        if cl.tee is None:
            raise AgentError(
                "--config needs the TEE source on the command line: --tee dstack "
                "--dstack-socket PATH, or --tee tdx"
            )
        try:
            settings = tee_settings(cl.tee, **cl.tee_paths)
        except AgentConfigError as exc:
            raise AgentError(str(exc)) from None
        setup = config_setup(cl.config, settings, cl.socket)
    return dataclasses.replace(setup, http=address) if address is not None else setup
