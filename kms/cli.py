"""The ``kms`` command line."""

from __future__ import annotations

import enum
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import trio
import typer
from rich.console import Console
from rich.table import Table

from kms.secretfile import write_secret

app = typer.Typer(help="quorum-kms: a decentralised key management service.", no_args_is_help=True)
node_app = typer.Typer(help="Run and set up a KMS node.", no_args_is_help=True)
devnet_app = typer.Typer(
    help="A local committee of node processes on loopback.", no_args_is_help=True
)
member_app = typer.Typer(
    help="Committee membership (over the admin channel).", no_args_is_help=True
)
app.add_typer(node_app, name="node")
app.add_typer(devnet_app, name="devnet")
app.add_typer(member_app, name="member")


def _mount_attest() -> None:
    from kms.attest.cli import attest_app

    app.add_typer(
        attest_app, name="attest", help="TDX quote verification (Intel DCAP via dcap-qvl)."
    )


_mount_attest()

console = Console(stderr=True)
out = Console()


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n")


def _fail(msg: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {msg}")
    raise typer.Exit(code)


def _pinned_mpk(mpk_hex: str) -> Any:
    """The pinned master public key from hex; exits on a malformed key or the identity point."""
    from mpc.cert import check_mpk
    from mpc.math import G2

    try:
        mpk = G2.from_bytes(bytes.fromhex(mpk_hex))
        check_mpk(mpk)
    except ValueError as exc:
        _fail(f"master public key refused: {exc}", 2)
    return mpk


# --- node ----------------------------------------------------------------------------------


@node_app.command("init")
def node_init(
    dir: Annotated[Path, typer.Option("--dir", help="Directory for the node's files.")],
    index: Annotated[int, typer.Option(help="Participant index (1-based, never reused).")] = 1,
    listen: Annotated[str, typer.Option(help="libp2p listen multiaddr.")] = "/ip4/127.0.0.1/tcp/0",
    http: Annotated[str, typer.Option(help="HTTP listen address host:port.")] = "127.0.0.1:0",
    json_out: Annotated[bool, typer.Option("--json")] = False,
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the store's new passphrase (default: <dir>.passphrase, "
            "outside the data directory)."
        ),
    ] = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            help="Read the store's passphrase from this environment variable instead "
            "(no passphrase file is written; set it whenever the node runs)."
        ),
    ] = None,
) -> None:
    """Create identity and DKG keys, a passphrase, an admin token, the store and node.toml."""
    from kms.app.setup import init_node
    from kms.store import StoreError

    if passphrase_file is not None and passphrase_env is not None:
        _fail("give --passphrase-file or --passphrase-env, not both", 2)
    try:
        record = init_node(
            dir,
            index=index,
            listen=listen,
            http=http,
            passphrase_file=passphrase_file,
            passphrase_env=passphrase_env,
        )
    except FileExistsError as exc:
        _fail(str(exc), 2)
    except StoreError as exc:
        _fail(str(exc), 2)
    if json_out:
        _print_json(record)
    else:
        out.print(f"node {index} initialised in {dir}")
        out.print(f"peer id   {record['peer_id']}")
        out.print("participant record (give it to the other operators for \\[committee.genesis]):")
        out.print_json(
            json.dumps(
                {k: record[k] for k in ("index", "identity", "dkg_key", "dkg_key_signature")}
            )
        )


class LogFormat(enum.StrEnum):
    """``kms node run --log-format``: one JSON object per line, or text."""

    json = "json"
    text = "text"


@node_app.command("run")
def node_run(
    config: Annotated[Path, typer.Option("--config", help="Path of node.toml.")],
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            "--log-format", help="Log lines as JSON objects or text (default: node.toml's)."
        ),
    ] = None,
) -> None:
    """Run a node until SIGINT or SIGTERM (then exit 0 once the store and transport are closed)."""
    from kms.node import lifecycle

    try:
        lifecycle.die_with_parent_from_env()
    except lifecycle.ParentGone as exc:
        _fail(str(exc), lifecycle.EXIT_PARENT_GONE)
    from kms.app.config import ConfigError
    from kms.app.setup import run_node

    try:
        trio.run(run_node, config, log_format.value if log_format is not None else None)
    except ConfigError as exc:
        _fail(str(exc), 2)
    # A clean stop: everything is saved; skip the interpreter's slow finalisation.
    lifecycle.exit_now(lifecycle.EXIT_OK)


@node_app.command("join-request")
def node_join_request(
    config: Annotated[Path, typer.Option("--config")],
    out_file: Annotated[Path, typer.Option("--out")],
    committee_url: Annotated[
        str,
        typer.Option(
            "--committee-url",
            help="HTTP URL of a member: the request is bound to its current chain head.",
        ),
    ],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write this node's join request: participant record, addresses, the committee's current
    chain head and a TDX quote binding them."""
    import httpx

    from kms.app.devnet import quote_source
    from kms.app.setup import join_request

    try:
        doc = join_request(config, committee_url=committee_url, quote=quote_source(config))
    except (OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        if json_out:
            _print_json({"ok": False, "error": str(exc)})
            raise typer.Exit(2) from None
        _fail(str(exc), 2)
        return
    out_file.write_text(json.dumps(doc, indent=2) + "\n")
    if json_out:
        _print_json(
            {"ok": True, "file": str(out_file), "index": doc["index"], "peer_id": doc["peer_id"]}
        )


# --- status ----------------------------------------------------------------------------------


@app.command("status")
def status(
    url: Annotated[str, typer.Option("--url", help="The node's HTTP URL.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Epoch, committee, master public key, peers and health of a node."""
    try:
        r = httpx.get(url.rstrip("/") + "/v1/status", timeout=5)
        st = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        _fail(f"cannot reach {url}: {exc}", 2)
        return
    if json_out:
        _print_json(st)
        return
    t = Table(title=f"node {st.get('index')} at {url}")
    t.add_column("field")
    t.add_column("value")
    for k in ("epoch", "threshold", "master_public_key", "has_share", "running", "healthy"):
        t.add_row(k, str(st.get(k)))
    t.add_row("committee", ", ".join(str(m["index"]) for m in st.get("committee", [])))
    t.add_row("peers", str(len(st.get("peers", []))))
    if "share_holders" in st:
        holders = ", ".join(str(i) for i in st["share_holders"])
        if st.get("share_holders_below_threshold"):
            holders += "  [fewer than t: the master key may be unrecoverable]"
        t.add_row("share holders", holders)
    if st.get("share_error"):
        t.add_row("share error", str(st["share_error"]))
    out.print(t)


# --- membership over the admin channel ---------------------------------------------------------


def _admin(config: Path, request: dict[str, Any], json_out: bool = False) -> dict[str, Any]:
    """One admin-channel request to the node of ``config``; exits 1 with the reason if refused."""
    from kms.api import admin
    from kms.app.config import ConfigError, load

    try:
        cfg = load(config)
        token = cfg.admin_token_file.read_text().strip()
        reply = trio.run(admin.call, cfg.admin_socket, {**request, "token": token})
    except (ConfigError, OSError, ValueError) as exc:
        if json_out:
            _print_json({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
            raise typer.Exit(2) from None
        _fail(f"cannot reach the node's admin channel: {exc}", 2)
        raise
    if not reply.get("ok"):
        if json_out:
            _print_json(
                {"ok": False, "error": str(reply.get("error")), "reason": reply.get("reason")}
            )
            raise typer.Exit(1)
        _fail(str(reply.get("error")), 1)
    return reply


MEMBER_VIEW = (
    "index",
    "epoch",
    "threshold",
    "master_public_key",
    "committee",
    "has_share",
    "running",
    "pending_proposals",
    "approvals_waiting",
    "locked_proposal",
    "refused_approvals",
    "retained_shares",
    "last_refresh",
)


@member_app.command("list")
def member_list(
    config: Annotated[Path, typer.Option("--config")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Committee, threshold, epoch, pending proposals (ids, approvals), last refresh, retained shares."""
    st = _admin(config, {"op": "status"}, json_out)["status"]
    view = {k: st.get(k) for k in MEMBER_VIEW}
    if json_out:
        _print_json(view)
        return
    out.print(
        f"epoch {view['epoch']}, threshold {view['threshold']}, "
        f"committee {[m['index'] for m in view['committee'] or []]}"
    )
    out.print(f"last refresh {view['last_refresh']}")
    for p in view["pending_proposals"] or []:
        out.print(f"pending {p['kind']:16} {p['id']}  approvals {p['approvals']}")
    for r in view["refused_approvals"] or []:
        out.print(f"refused {r['id']}: {r['reason']}")
    for r in view["retained_shares"] or []:
        out.print(
            f"old share of epoch {r['epoch']} retained, waiting for acknowledgements from "
            f"{r['missing_acknowledgements']}"
        )


CHANGES = "add | remove | threshold | admission-policy | refresh"


@member_app.command("propose")
def member_propose(
    config: Annotated[Path, typer.Option("--config")],
    change: Annotated[str, typer.Argument(help=CHANGES)],
    value: Annotated[
        str | None,
        typer.Argument(help="INDEX for remove, T for threshold, FILE for admission-policy"),
    ] = None,
    join_request: Annotated[Path | None, typer.Option("--join-request")] = None,
    evidence: Annotated[
        Path | None, typer.Option("--evidence", help="Evidence file for remove.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Propose a membership change; prints the proposal id.

    The node checks the change first: a join request's quote against the
    committee's node admission policy, a removal's evidence against the chain.
    """
    req: dict[str, Any] = {"op": "propose", "change": change}

    def usage(msg: str) -> None:
        if json_out:
            _print_json({"ok": False, "error": msg})
            raise typer.Exit(2)
        _fail(msg, 2)

    try:
        if change == "add":
            if join_request is None:
                usage("add needs --join-request FILE")
                return
            req["join_request"] = json.loads(join_request.read_text())
        elif change == "remove":
            if value is None:
                usage("remove needs INDEX")
            req["index"] = int(value or 0)
            if evidence is not None:
                req["evidence"] = evidence.read_bytes().hex()
        elif change == "threshold":
            if value is None:
                usage("threshold needs T")
            req["threshold"] = int(value or 0)
        elif change == "admission-policy":
            if value is None:
                usage("admission-policy needs FILE (an encoded node admission policy)")
                return
            req["policy"] = Path(value).read_bytes().hex()
        elif change != "refresh":
            usage(f"unknown change {change!r} (one of {CHANGES})")
    except (OSError, ValueError) as exc:
        usage(f"{type(exc).__name__}: {exc}")
    reply = _admin(config, req, json_out)
    if json_out:
        _print_json({"ok": True, "proposal_id": reply["proposal_id"], "change": change})
    else:
        out.print(reply["proposal_id"])


@member_app.command("approve")
def member_approve(
    config: Annotated[Path, typer.Option("--config")],
    proposal_id: Annotated[str, typer.Argument()],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Approve a proposal by id (its approval travels in this node's next ballot).

    A proposal the node has seen is checked now (a refusal exits 1 with the
    reason); one not seen yet is checked when it arrives (see ``member list``).
    """
    reply = _admin(config, {"op": "approve", "proposal_id": proposal_id}, json_out)
    checked = bool(reply.get("checked", True))
    if json_out:
        _print_json({"ok": True, "approved": proposal_id, "checked": checked})
    else:
        out.print(f"approved {proposal_id}" + ("" if checked else " (checked once it arrives)"))


@member_app.command("reload-policies")
def member_reload_policies(
    config: Annotated[Path, typer.Option("--config")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Re-read the node's policies directory: admit the apps placed there and take newer
    versions (never below an app's floor; a frozen app stays frozen: see resolve-fork)."""
    reply = _admin(config, {"op": "reload-policies"}, json_out)
    counts = {k: reply.get(k, 0) for k in ("admitted", "updated", "refused", "frozen")}
    if json_out:
        _print_json({"ok": True, **counts, "serving": reply.get("serving")})
        return
    out.print(", ".join(f"{k} {v}" for k, v in counts.items()))


@member_app.command("resolve-fork")
def member_resolve_fork(
    app_id: Annotated[str, typer.Argument(help="The frozen app's id (hex).")],
    bundle_file: Annotated[Path, typer.Argument(help="The owner's bundle on the branch kept.")],
    config: Annotated[Path, typer.Option("--config")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Lift a frozen app's freeze, on its owner's word, with the owner's bundle: its chain
    extends the branch kept and its version is above the app's floor."""
    raw = bundle_file.read_bytes()
    reply = _admin(config, {"op": "resolve-fork", "app_id": app_id, "bundle": raw.hex()}, json_out)
    if json_out:
        _print_json({"ok": True, **{k: v for k, v in reply.items() if k != "ok"}})
        return
    out.print(f"resolved {reply.get('app_id')} at version {reply.get('version')}")


@member_app.command("evidence")
def member_evidence(
    config: Annotated[Path, typer.Option("--config")],
    export: Annotated[
        Path | None, typer.Option("--export", help="Write each piece of evidence to DIR.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Evidence of misbehaviour this node collected (for ``member propose remove --evidence``)."""
    items = _admin(config, {"op": "evidence"}, json_out)["evidence"]
    files = []
    if export is not None:
        export.mkdir(parents=True, exist_ok=True)
        for e in items:
            f = export / f"{e['kind']}-node{e['culprit']}-{e['id'][:16]}.msgpack"
            f.write_bytes(bytes.fromhex(e["evidence"]))
            files.append(str(f))
    listed = [{k: v for k, v in e.items() if k != "evidence"} for e in items]
    if json_out:
        _print_json({"ok": True, "evidence": listed, "files": files})
        return
    for e in listed:
        out.print(f"{e['id'][:16]} node {e['culprit']} {e['kind']}: {e['reason']}")
    for name in files:
        out.print(f"wrote {name}")


# --- devnet ----------------------------------------------------------------------------------------


@devnet_app.command("up")
def devnet_up(
    nodes: Annotated[int, typer.Option("--nodes")] = 5,
    threshold: Annotated[int, typer.Option("--threshold")] = 3,
    dir: Annotated[Path, typer.Option("--dir")] = Path("devnet"),
    delta: Annotated[float, typer.Option("--delta", help="Δ in seconds.")] = 0.5,
    start_in: Annotated[
        float, typer.Option("--start-in", help="Seconds until the genesis DKG starts.")
    ] = 6.0,
    window_period: Annotated[float, typer.Option("--window-period")] = 15.0,
    refresh_interval: Annotated[float, typer.Option("--refresh-interval")] = 0.0,
    pccs: Annotated[
        bool,
        typer.Option(
            "--pccs/--collateral-file",
            help="Nodes fetch collateral from a PCCS this command serves (default), "
            "or read the simulated collateral file.",
        ),
    ] = True,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Return once the devnet serves; a supervisor process keeps it running "
            "(stop it with `kms devnet down --dir DIR`).",
        ),
    ] = False,
    detach_timeout: Annotated[
        float,
        typer.Option("--detach-timeout", help="With --detach: seconds to wait for the devnet."),
    ] = 120.0,
) -> None:
    """Start N node processes, run the DKG, write devnet.json, run until Ctrl-C/SIGTERM.

    The node processes die with this process (Linux), however it ends. With
    --detach, this command starts itself again as a supervisor in its own session
    (log in DIR/devnet.log) and returns once the committee is certified and the
    demo app registered; the nodes then die with the supervisor.
    """
    from rich.progress import Progress

    from kms.app import devnet

    if (dir / devnet.STATE_FILE).exists():
        _fail(f"{dir} already holds a devnet", 2)
    if detach:
        args = [
            "--nodes",
            str(nodes),
            "--threshold",
            str(threshold),
            "--dir",
            str(dir),
            "--delta",
            str(delta),
            "--start-in",
            str(start_in),
            "--window-period",
            str(window_period),
            "--refresh-interval",
            str(refresh_interval),
            "--pccs" if pccs else "--collateral-file",
        ]
        _devnet_detach(dir, args, detach_timeout)
        return
    pccs_port = devnet.free_port() if pccs else None
    try:
        state = devnet.create(
            dir,
            nodes,
            threshold,
            delta=delta,
            start_in=start_in,
            window_period=window_period,
            refresh_interval=refresh_interval,
            pccs_url=f"http://127.0.0.1:{pccs_port}" if pccs_port else None,
        )
    except ValueError as exc:
        _fail(str(exc), 2)
        return
    server = None
    if pccs_port is not None:
        from kms.api.pccs import PCCSServer
        from kms.attest import Collateral

        collateral = Collateral.from_json((dir / "simulated-tee" / "collateral.json").read_text())
        server = PCCSServer({collateral.fmspc: collateral}, "127.0.0.1", pccs_port).start()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for n in state["nodes"]:
        n["pid"] = devnet.spawn(
            n["config"], Path(n["config"]).parent / "node.log", die_with_parent=True
        )
    state["supervisor_pid"] = os.getpid()
    devnet.write_state(dir, state)
    mpk = None
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("genesis DKG", total=len(state["nodes"]))
            while not stopping:
                done = 0
                keys = set()
                for n in devnet.read_state(dir)["nodes"]:
                    if stopping:  # a busy node answers slowly: do not finish the round
                        break
                    st = devnet.status_of(n["http_url"], timeout=0.5)
                    if st and st.get("epoch") is not None:
                        done += 1
                        keys.add(st.get("master_public_key"))
                progress.update(task, completed=done)
                if done == len(state["nodes"]):
                    # Every node must report the same key before it is written down.
                    mpk = keys.pop() if len(keys) == 1 else None
                    if mpk is None:
                        console.print("[red]error:[/red] the nodes report different keys")
                    break
                time.sleep(0.2)
        if mpk is not None:
            state = devnet.read_state(dir)
            state["master_public_key"] = mpk
            state["apps"] = {"demo": devnet.register_demo_app(dir, mpk)}
            devnet.write_state(dir, state)
            t = Table(title=f"devnet: {nodes} nodes, threshold {threshold}")
            for col in ("index", "peer id", "multiaddr", "http", "pid"):
                t.add_column(col)
            for n in state["nodes"]:
                t.add_row(
                    str(n["index"]),
                    n["peer_id"][:16] + "…",
                    n["multiaddr"],
                    n["http_url"],
                    str(n["pid"]),
                )
            out.print(t)
            out.print(f"master public key {mpk}")
            console.print(f"devnet running; state in {dir / devnet.STATE_FILE}. Ctrl-C stops it.")
        while not stopping:
            time.sleep(0.2)
    finally:
        began = time.monotonic()
        devnet.stop_pids([n.get("pid") for n in devnet.read_state(dir)["nodes"]])
        if server is not None:
            server.stop()
        state = devnet.read_state(dir)
        for n in state["nodes"]:
            n["pid"] = None
        state["supervisor_pid"] = None
        devnet.write_state(dir, state)
        console.print(f"devnet stopped in {time.monotonic() - began:.1f} s")
    # Every process is stopped and devnet.json written: skip the interpreter's slow finalisation.
    from kms.node.lifecycle import exit_now

    exit_now(0)


def _devnet_detach(dir: Path, args: list[str], timeout: float) -> None:
    """``devnet up --detach``: run ``devnet up`` as a supervisor, return once it serves."""
    import subprocess

    from kms.app import devnet

    dir.mkdir(parents=True, exist_ok=True)
    log_path = dir / "devnet.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "kms.cli", "devnet", "up", *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = devnet.wait_for_apps(dir, proc, timeout)
    if state is None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _fail(f"the devnet did not come up within {timeout:.0f} s; see {log_path}", 1)
        return
    t = Table(title=f"devnet: {len(state['nodes'])} nodes, threshold {state['threshold']}")
    for col in ("index", "http", "pid"):
        t.add_column(col)
    for n in state["nodes"]:
        t.add_row(str(n["index"]), n["http_url"], str(n["pid"]))
    out.print(t)
    out.print(f"master public key {state['master_public_key']}", soft_wrap=True)
    out.print(f"state in {dir / devnet.STATE_FILE}", soft_wrap=True)
    out.print(f"supervisor pid {proc.pid}, log {log_path}", soft_wrap=True)
    console.print(f"stop it with: kms devnet down --dir {dir}", soft_wrap=True)


@devnet_app.command("down")
def devnet_down(
    dir: Annotated[Path, typer.Option("--dir")] = Path("devnet"),
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds before SIGKILL of what is left.")
    ] = 10.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Stop a devnet (its supervisor and every node in devnet.json), all at once."""
    from kms.app import devnet

    if not (dir / devnet.STATE_FILE).exists():
        _fail(f"no devnet in {dir}", 2)
    began = time.monotonic()
    report = devnet.down(dir, timeout)
    report["seconds"] = round(time.monotonic() - began, 2)
    if json_out:
        _print_json(report)
        return
    for n in report["nodes"]:
        out.print(f"node {n['index']} (pid {n['pid']}): {n['outcome']}")
    sup = report["supervisor"]
    out.print(f"supervisor (pid {sup['pid']}): {sup['outcome']}")
    out.print(f"devnet down in {report['seconds']:.1f} s")


@devnet_app.command("stop-node")
def devnet_stop_node(
    dir: Annotated[Path, typer.Option("--dir")],
    index: Annotated[int, typer.Argument()],
    kill: Annotated[bool, typer.Option("--kill", help="SIGKILL instead of a clean stop.")] = False,
) -> None:
    """Stop one node of a running devnet."""
    from kms.app import devnet

    devnet.stop_node(dir, index, kill=kill)


@devnet_app.command("start-node")
def devnet_start_node(
    dir: Annotated[Path, typer.Option("--dir")], index: Annotated[int, typer.Argument()]
) -> None:
    """(Re)start one node of a running devnet."""
    from kms.app import devnet

    pid = devnet.start_node(dir, index)
    out.print(f"node {index} started (pid {pid})")


@devnet_app.command("add-node")
def devnet_add_node(
    dir: Annotated[Path, typer.Option("--dir")],
    timeout: Annotated[float, typer.Option("--timeout")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A new operator joins: init, start, join request, proposal, approvals, reshare."""
    from kms.app import devnet

    _membership_step(lambda: devnet.add_node(dir, timeout=timeout), "joined", json_out)


@devnet_app.command("remove-node")
def devnet_remove_node(
    dir: Annotated[Path, typer.Option("--dir")],
    index: Annotated[int, typer.Argument()],
    timeout: Annotated[float, typer.Option("--timeout")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The other members remove node INDEX; once the new epoch is certified it is stopped."""
    from kms.app import devnet

    _membership_step(lambda: devnet.remove_node(dir, index, timeout=timeout), "removed", json_out)


def _membership_step(run: Callable[[], dict[str, Any]], done: str, json_out: bool) -> None:
    """Run a devnet membership flow and report its outcome (one JSON line with ``--json``)."""
    from kms.app import devnet

    try:
        res = run()
    except (devnet.MembershipError, KeyError, OSError, ValueError) as exc:
        if json_out:
            _print_json({"ok": False, "error": str(exc)})
            raise typer.Exit(1) from None
        _fail(str(exc), 1)
        return
    if json_out:
        _print_json({"ok": True, **res})
    else:
        out.print(
            f"node {res['index']} {done}: epoch {res['epoch']}, committee {res['committee']}, "
            f"threshold {res['threshold']}"
        )


key_app = typer.Typer(
    help="Keys for a CVM (talks to a devnet with its simulated TEE).", no_args_is_help=True
)
app.add_typer(key_app, name="key")


def _devnet_app(dir: Path, name_or_id: str) -> tuple[dict[str, Any], bytes]:
    from kms.app import devnet

    state = devnet.read_state(dir)
    apps = state.get("apps", {})
    app_hex = apps.get(name_or_id, name_or_id)
    try:
        return state, bytes.fromhex(app_hex)
    except ValueError:
        _fail(f"unknown app {name_or_id!r} (known: {sorted(apps)})", 2)
        raise


@key_app.command("get")
def key_get(
    devnet_dir: Annotated[Path, typer.Option("--devnet", help="The devnet directory.")],
    app_name: Annotated[
        str, typer.Option("--app", help="App alias from devnet.json or app id hex.")
    ],
    purpose: Annotated[str, typer.Option("--purpose")] = "app",
    version: Annotated[int, typer.Option("--version")] = 1,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the secret key material here (mode 0600).")
    ] = None,
    evidence_dir: Annotated[
        Path | None, typer.Option("--evidence-dir", help="Write evidence of wrong partials here.")
    ] = None,
    rogue: Annotated[
        bool,
        typer.Option(
            "--rogue-measurement", help="Present a measurement the policy does not admit."
        ),
    ] = False,
    report: Annotated[
        bool,
        typer.Option(
            "--report-evidence/--keep-evidence",
            help="Disclose evidence of wrong partials to the other nodes (default).",
        ),
    ] = True,
    bundle_file: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="The app's signed policy bundle (encoded), sent with the request: nodes that "
            "have not admitted the app admit it when its policy admits this CVM and the "
            "CVM's RTMR3 event log carries the app id (the devnet's simulated CVM sends no "
            "log, so there the operator admits new apps).",
        ),
    ] = None,
) -> None:
    """Fetch an app key as the devnet's simulated CVM, verified against the pinned master key."""
    import hashlib

    from kms.app import devnet
    from kms.client.core import KeyReleaseError
    from kms.client.http import fetch_keys
    from mpc.ids import ParticipantIndex
    from mpc.tkd import typed_keys

    state, app_id = _devnet_app(devnet_dir, app_name)
    if not state.get("master_public_key"):
        _fail("the devnet has no master public key yet", 2)
    mpk = _pinned_mpk(state["master_public_key"])
    tee = devnet.simulated_tee(devnet_dir)
    meas = devnet.ROGUE_MEASUREMENT if rogue else devnet.DEMO_MEASUREMENT
    urls = {ParticipantIndex(int(n["index"])): n["http_url"] for n in state["nodes"]}
    try:
        res = fetch_keys(
            urls,
            mpk,
            app_id,
            [(purpose, version)],
            lambda rd: tee.quote(rd, **meas),
            bundle=bundle_file.read_bytes() if bundle_file is not None else b"",
        )
    except KeyReleaseError as exc:
        if json_out:
            _print_json({"ok": False, "error": str(exc)})
        else:
            console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from None
    _save_evidence(res.rejected, evidence_dir)
    reported = {}
    if report:
        from kms.client.http import report_evidence

        for r in res.rejected:
            if r.evidence is not None:
                replies = report_evidence(urls, r.evidence)
                reported[int(r.index)] = sorted(i for i, x in replies.items() if x.get("accepted"))
    derived = res.derived[(purpose, version)]
    app_key = derived.app_key()
    keys = typed_keys(app_key)
    doc = {
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
        # node -> the nodes that checked and kept the evidence against it
        doc["evidence_reported"] = {str(k): v for k, v in sorted(reported.items())}
    if out_file is not None:
        secret_doc = {
            **doc,
            "app_key": app_key.secret.data.hex(),
            "aes256": keys.aes256.data.hex(),
            "x25519_private": keys.x25519_private.data.hex(),
            "ed25519_seed": keys.ed25519_seed.data.hex(),
            "secp256k1_private": keys.secp256k1_private.data.hex(),
        }
        try:
            write_secret(out_file, json.dumps(secret_doc))
        except OSError as exc:
            _fail(f"cannot write {out_file}: {exc}", 2)
    if json_out:
        _print_json(doc)
    else:
        for k, v in doc.items():
            out.print(f"{k:18} {v}")


def _save_evidence(rejected: Any, directory: Path | None) -> None:
    """Each wrong partial's evidence as a file: what ``kms evidence verify`` checks."""
    for n, r in enumerate(rejected):
        if r.evidence is None:
            continue
        console.print(f"[yellow]node {int(r.index)} sent a bad partial:[/yellow] {r.reason}")
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"wrong-partial-node{int(r.index)}-{n}.msgpack").write_bytes(
                r.evidence.encode()
            )


evidence_app = typer.Typer(help="Third-party evidence of misbehaviour.", no_args_is_help=True)
app.add_typer(evidence_app, name="evidence")


@evidence_app.command("verify")
def evidence_verify(
    file: Annotated[Path, typer.Argument(metavar="FILE")],
    devnet_dir: Annotated[Path | None, typer.Option("--devnet")] = None,
    mpk_hex: Annotated[
        str | None, typer.Option("--mpk", help="Pinned master public key (hex).")
    ] = None,
    url: Annotated[
        list[str] | None, typer.Option("--url", help="Node URL to fetch the chain from.")
    ] = None,
    chain_file: Annotated[
        Path | None,
        typer.Option("--chain", help="A saved chain (GET /v1/chain body) instead of --url."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a CVM's evidence of a wrong partial against the chain verified from the pinned key.

    Exit 0 when it proves that the named node signed a wrong or undecryptable
    partial, 1 when it proves nothing, 2 on bad usage.
    """
    from kms.app import devnet
    from kms.client.http import chain_epochs_from_bytes, fetch_chain_epochs
    from kms.evidence import verify_wrong_partial
    from kms.protocol import WrongPartialEvidence
    from mpc.cert import check_mpk
    from mpc.errors import InvalidEncoding, InvalidSignature
    from mpc.math import G2
    from mpc.membership import ChainError

    urls = list(url or [])
    if devnet_dir is not None:
        state = devnet.read_state(devnet_dir)
        mpk_hex = mpk_hex or state.get("master_public_key")
        urls = urls or [n["http_url"] for n in state["nodes"]]
    if not mpk_hex or not (urls or chain_file):
        _fail("give --devnet, or --mpk with --url or --chain", 2)
        return
    try:
        ev = WrongPartialEvidence.decode(file.read_bytes())
        mpk = G2.from_bytes(bytes.fromhex(mpk_hex))
        check_mpk(mpk)
        if chain_file is not None:
            states = chain_epochs_from_bytes(chain_file.read_bytes(), mpk)
        else:
            states, _ = fetch_chain_epochs(urls, mpk)
        # The evidence is judged against the epoch its answer names.
        chain = next((st for st in states if st.epoch == ev.response.epoch), states[-1])
    except (OSError, ValueError, ChainError) as exc:
        _fail(f"{type(exc).__name__}: {exc}", 2)
        return
    try:
        proven = verify_wrong_partial(ev, chain)
        doc = {"ok": True, "node": ev.response.index, "epoch": ev.response.epoch, "proves": proven}
    except (InvalidSignature, InvalidEncoding) as exc:
        doc = {"ok": False, "node": ev.response.index, "error": str(exc)}
    _emit(doc, json_out)
    raise typer.Exit(0 if doc["ok"] else 1)


@app.command("encrypt")
def encrypt_cmd(
    in_file: Annotated[Path, typer.Argument(metavar="IN")],
    out_file: Annotated[Path, typer.Argument(metavar="OUT")],
    app_name: Annotated[
        str, typer.Option("--app", help="App alias (needs --devnet) or app id hex.")
    ],
    devnet_dir: Annotated[Path | None, typer.Option("--devnet")] = None,
    mpk_hex: Annotated[
        str | None, typer.Option("--mpk", help="Master public key (hex), instead of a devnet.")
    ] = None,
    inbox: Annotated[
        str,
        typer.Option(
            "--inbox",
            help="The app's inbox: readable only by CVMs whose policy lists purpose ibe.INBOX.",
        ),
    ] = "app",
    version: Annotated[int, typer.Option("--version")] = 1,
) -> None:
    """Encrypt a file to an app's inbox with the master public key alone (no KMS round trip).

    Randomness comes from the operating system (os.urandom).
    """
    import os

    from mpc import ibe
    from mpc.math import G2

    if devnet_dir is not None:
        state, app_id = _devnet_app(devnet_dir, app_name)
        mpk_hex = mpk_hex or state.get("master_public_key")
    else:
        try:
            app_id = bytes.fromhex(app_name)
        except ValueError:
            _fail("without --devnet, --app must be an app id in hex (aliases need --devnet)", 2)
            return
    if not mpk_hex:
        _fail("give --mpk or --devnet", 2)
        return
    try:
        mpk = G2.from_bytes(bytes.fromhex(mpk_hex))
        key_id = ibe.inbox_key_id(app_id, inbox, version)
        data = in_file.read_bytes()
    except (ValueError, OSError) as exc:
        _fail(str(exc), 2)
        return
    out_file.write_bytes(ibe.encrypt(mpk, key_id, data, rng=os.urandom))


@app.command("decrypt")
def decrypt_cmd(
    in_file: Annotated[Path, typer.Argument(metavar="IN")],
    out_file: Annotated[Path, typer.Argument(metavar="OUT")],
    devnet_dir: Annotated[Path, typer.Option("--devnet")],
    app_name: Annotated[str, typer.Option("--app")],
) -> None:
    """Decrypt as the devnet's simulated CVM: fetch the point for the ciphertext's key id, open it.

    The key id (app, purpose, version) is read from the ciphertext's header:
    an inbox (purpose ibe.NAME), or an ordinary purpose for ciphertexts made
    before inboxes existed. The app's policy must list that purpose.
    """
    from kms.app import devnet
    from kms.client.core import KeyReleaseError
    from kms.client.http import fetch_keys
    from mpc import ibe
    from mpc.errors import DecryptionError, InvalidEncoding
    from mpc.ids import ParticipantIndex

    state, app_id = _devnet_app(devnet_dir, app_name)
    mpk = _pinned_mpk(state["master_public_key"])
    try:
        sealed = in_file.read_bytes()
        key_id = ibe.read_header(sealed).key_id
    except (OSError, InvalidEncoding) as exc:
        _fail(f"cannot read {in_file}: {exc}", 2)
        return
    if key_id.app_id != app_id:
        _fail(f"the ciphertext is for app {key_id.app_id.hex()}, not {app_id.hex()}", 1)
    tee = devnet.simulated_tee(devnet_dir)
    urls = {ParticipantIndex(int(n["index"])): n["http_url"] for n in state["nodes"]}
    wanted = (key_id.purpose, key_id.version)
    try:
        res = fetch_keys(
            urls,
            mpk,
            app_id,
            [wanted],
            lambda rd: tee.quote(rd, **devnet.DEMO_MEASUREMENT),
        )
        plain = ibe.decrypt(res.derived[wanted], mpk, sealed)
    except (KeyReleaseError, DecryptionError) as exc:
        _fail(str(exc), 1)
        return
    try:
        write_secret(out_file, plain)
    except OSError as exc:
        _fail(f"cannot write {out_file}: {exc}", 2)


audit_app = typer.Typer(help="A node's hash-chained audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _audit_head_problems(doc: dict[str, Any]) -> list[str]:
    """Problems with a signed audit head (``count``, ``head``, ``identity``, ``signature``)."""
    from mpc.errors import InvalidEncoding, InvalidSignature
    from mpc.sig import VerifyKey

    try:
        key = VerifyKey.from_bytes(bytes.fromhex(doc["identity"]))
        key.verify(
            b"quorum-kms/v1/kms/audit-head",
            int(doc["count"]).to_bytes(8, "big") + bytes.fromhex(doc["head"]),
            bytes.fromhex(doc["signature"]),
        )
    except (InvalidSignature, InvalidEncoding, ValueError, KeyError, TypeError):
        return ["the head is not signed by the node's identity"]
    return []


@audit_app.command("verify")
def audit_verify(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="The node's node.toml: read the whole log over its admin channel."
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="The node's public HTTP URL: check its signed head."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Check a node's audit log: the whole hash chain (--config) and/or its public signed head (--url).

    With ``--config`` the entries come over the node's admin channel (the
    public port does not serve them), the chain is recomputed and checked
    against the signed head, and the node checks its own copy too. With
    ``--url`` the public head's signature is checked; with both, the public
    head must also be a head of the chain read over the admin channel.
    """
    import hashlib

    if config is None and url is None:
        _fail("give --config (the whole chain, over the admin channel) and/or --url (the head)", 2)
        return
    problems: list[str] = []
    public: dict[str, Any] | None = None
    if url is not None:
        try:
            r = httpx.get(url.rstrip("/") + "/v1/audit/head", timeout=10)
            if r.status_code != 200:
                _fail(f"the node could not serve its audit head (HTTP {r.status_code})", 2)
            public = r.json()
            if not isinstance(public, dict):
                raise ValueError("the audit head is not a JSON object")
        except (httpx.HTTPError, ValueError) as exc:
            _fail(f"cannot read the audit head at {url}: {exc}", 2)
            return
        problems += [f"public head: {p}" for p in _audit_head_problems(public)]
    doc: dict[str, Any] = dict(public or {})
    if config is not None:
        entries: list[str] = []
        while True:
            req = {"op": "audit", "start": len(entries), "limit": 1000, "check": not entries}
            page = _admin(config, req, json_out)["audit"]
            if not entries:
                doc = page
            entries += page["entries"]
            if not page["entries"] or len(entries) >= doc["count"]:
                break
        head = bytes(32)
        at_public = head if public is not None and int(public["count"]) == 0 else None
        for n, e in enumerate(entries, start=1):
            head = hashlib.sha256(head + e.encode()).digest()
            if public is not None and n == int(public["count"]):
                at_public = head
        if len(entries) != doc["count"]:
            problems.append(f"{len(entries)} entries for a head over {doc['count']}")
        if head.hex() != doc["head"]:
            problems.append(
                "the entries do not hash to the signed head "
                "(a record was edited, removed or reordered)"
            )
        problems += _audit_head_problems(doc)
        if doc.get("node_check") != "ok":
            problems.append(f"the node's own check: {doc.get('node_check')}")
        if public is not None:
            if public["identity"] != doc["identity"]:
                problems.append("the public head is signed by another identity")
            elif at_public is None or at_public.hex() != public["head"]:
                problems.append("the public head is not a head of the chain")
    result = {
        "ok": not problems,
        "checked": "chain" if config is not None else "head",
        "count": doc["count"],
        "head": doc["head"],
        "identity": doc["identity"],
        "problems": problems,
    }
    if json_out:
        _print_json(result)
    else:
        what = "audit log" if config is not None else "audit head"
        out.print(
            (f"{what} verifies: " if not problems else f"{what} BROKEN: ")
            + f"{doc['count']} records, head {doc['head'][:16]}…"
        )
        for p in problems:
            out.print(f"  - {p}")
    raise typer.Exit(0 if not problems else 1)


app_app = typer.Typer(help="Apps and their owners' signed policies (devnet).", no_args_is_help=True)
policy_app = typer.Typer(help="An app's policy.", no_args_is_help=True)
app.add_typer(app_app, name="app")
app_app.add_typer(policy_app, name="policy")


def _emit(doc: dict[str, Any], json_out: bool) -> None:
    if json_out:
        _print_json(doc)
    else:
        out.print_json(json.dumps(doc))


@app_app.command("create")
def app_create(
    devnet_dir: Annotated[Path, typer.Option("--devnet")],
    name: Annotated[str, typer.Option("--name", help="Alias for the app in devnet.json.")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create an app: a new owner key (its id is derived from it) and a first policy, admitted by
    the devnet's operator at every node (policies directory and a reload)."""
    from kms.app import devnet

    state = devnet.read_state(devnet_dir)
    if name in state.get("apps", {}):
        _fail(f"app {name!r} exists", 2)
    if not state.get("master_public_key"):
        _fail("the devnet has no master public key yet", 2)
    owner = devnet.owner_of(devnet_dir, name)
    report = devnet.admit_app(
        devnet_dir, devnet.demo_policy(owner, state["master_public_key"], version=1)
    )
    state = devnet.read_state(devnet_dir)
    state.setdefault("apps", {})[name] = owner.app_id().hex()
    devnet.write_state(devnet_dir, state)
    _emit({"name": name, "app_id": owner.app_id().hex(), **report}, json_out)


@policy_app.command("show")
def app_policy_show(
    devnet_dir: Annotated[Path, typer.Option("--devnet")],
    app_name: Annotated[str, typer.Option("--app")],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The policy version each node holds for an app."""
    state, app_id = _devnet_app(devnet_dir, app_name)
    nodes = []
    for n in state["nodes"]:
        try:
            r = httpx.get(f"{n['http_url']}/v1/policies/{app_id.hex()}", timeout=5)
            info = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            info = None
        nodes.append({"index": n["index"], "policy": info})
    versions = {n["policy"]["version"] for n in nodes if n["policy"]}
    _emit({"app_id": app_id.hex(), "nodes": nodes, "versions": sorted(versions)}, json_out)


@policy_app.command("push")
def app_policy_push(
    devnet_dir: Annotated[Path, typer.Option("--devnet")],
    app_name: Annotated[str, typer.Option("--app")],
    lifetime: Annotated[
        int, typer.Option("--lifetime", help="Seconds until the new policy expires.")
    ] = 7 * 86400,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Sign the next version (renewing its expiry) and push it to every node.

    Reports the change effective everywhere only once all nodes acknowledge it,
    and otherwise names the nodes that lag.
    """
    from kms.app import devnet

    state, app_id = _devnet_app(devnet_dir, app_name)
    alias = next((k for k, v in state.get("apps", {}).items() if v == app_id.hex()), app_name)
    owner = devnet.owner_of(devnet_dir, alias)
    if owner.app_id() != app_id:
        _fail("no owner key for this app in the devnet", 2)
    held = []
    for n in state["nodes"]:
        try:
            r = httpx.get(f"{n['http_url']}/v1/policies/{app_id.hex()}", timeout=5)
            if r.status_code == 200:
                held.append(int(r.json()["version"]))
        except (httpx.HTTPError, ValueError, KeyError):
            pass
    version = max(held, default=0) + 1
    report = devnet.push_policy(
        state,
        devnet.demo_policy(owner, state["master_public_key"], version=version, lifetime=lifetime),
    )
    _emit({"app_id": app_id.hex(), **report}, json_out)
    raise typer.Exit(0 if report["effective_everywhere"] else 1)


sim_app = typer.Typer(help="The deterministic network simulator.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")


@sim_app.command("run")
def sim_run(
    scenario: Annotated[
        str, typer.Argument(help="A scenario TOML file, or a name in sim/scenarios.")
    ],
    seed: Annotated[int, typer.Option("--seed")] = 0,
    out_dir: Annotated[Path, typer.Option("--out")] = Path("sim-out"),
    node_mode: Annotated[
        bool, typer.Option("--node-mode", help="Also run it on the trio node service and compare.")
    ] = False,
) -> None:
    """Run one scenario from one seed: report.json, plots and a summary table in OUT."""
    from sim.run import main as sim_main
    from sim.scenario import ScenarioError

    try:
        code = sim_main(scenario, seed, out_dir, console=out, node_mode=node_mode)
    except ScenarioError as exc:
        _fail(str(exc), 2)
        return
    raise typer.Exit(code)


@sim_app.command("sweep")
def sim_sweep(
    scenario: Annotated[
        str, typer.Argument(help="A scenario TOML file, or a name in sim/scenarios.")
    ],
    param: Annotated[
        list[str], typer.Option("--param", help="NAME=START:STOP:STEP (STOP included)")
    ],
    seeds: Annotated[int, typer.Option("--seeds")] = 3,
    out_dir: Annotated[Path, typer.Option("--out")] = Path("sim-sweep"),
    dask: Annotated[str | None, typer.Option("--dask", help="Dask scheduler address")] = None,
    workers: Annotated[int | None, typer.Option("--workers")] = None,
) -> None:
    """Run the grid of PARAM values for seeds 0..N-1 and plot each outcome against it."""
    from sim.scenario import ScenarioError
    from sim.sweep import main as sweep_main

    try:
        code = sweep_main(scenario, param, seeds, out_dir, dask=dask, workers=workers, console=out)
    except (ScenarioError, ValueError) as exc:
        _fail(str(exc), 2)
        return
    raise typer.Exit(code)


@app.command("demo")
def demo() -> None:
    """Run the end-to-end demo."""
    from kms.app.demo import main as demo_main

    raise typer.Exit(demo_main())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
