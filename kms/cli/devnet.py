"""``kms devnet``: a local committee of node processes on loopback (``kms.app.devnet``)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress
from rich.table import Table

from kms.app import devnet
from kms.cli.common import console, fail, out, print_json
from kms.node.lifecycle import exit_now

devnet_app = typer.Typer(
    help="A local committee of node processes on loopback.", no_args_is_help=True
)


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
    if (dir / devnet.STATE_FILE).exists():
        fail(f"{dir} already holds a devnet", 2)
    if detach:
        args = devnet.up_args(
            dir,
            nodes=nodes,
            threshold=threshold,
            delta=delta,
            start_in=start_in,
            window_period=window_period,
            refresh_interval=refresh_interval,
            pccs=pccs,
        )
        _detach(dir, args, detach_timeout)
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
        fail(str(exc), 2)
    _supervise(dir, state, pccs_port, start_in)


def _supervise(dir: Path, state: dict[str, Any], pccs_port: int | None, start_in: float) -> None:
    """Start the PCCS and the nodes, follow the genesis DKG, run until SIGINT/SIGTERM,
    then stop everything and exit 0.

    A node that starts after the genesis DKG's first attempt is over never takes part in
    a genesis attempt; on a loaded machine the nodes can take longer to start than
    ``--start-in``. If one did, the nodes are stopped and the genesis start moved later by
    twice the time they took (at most twice)."""
    server = devnet.start_pccs(dir, pccs_port) if pccs_port is not None else None
    stopping = _stop_on_signals()
    for tries in range(3):
        since = devnet.log_sizes(state)
        spawned = time.monotonic()
        state = devnet.spawn_nodes(dir, state)
        if tries == 2 or not devnet.started_late(state, since, stopping, STARTED_TIMEOUT):
            break
        took = time.monotonic() - spawned
        start_in = max(start_in, 0.0) + 2 * took
        console.print(
            f"[yellow]the nodes took {took:.0f} s to start, past the genesis DKG's first"
            f" attempt: starting them again with the genesis {start_in:.0f} s ahead[/yellow]"
        )
        devnet.move_genesis(dir, state, start_in)
    try:
        mpk = _follow_genesis(dir, stopping, len(state["nodes"]))
        if mpk is not None:
            _show_up(devnet.record_genesis(dir, mpk), state["threshold"], mpk)
            console.print(f"devnet running; state in {dir / devnet.STATE_FILE}. Ctrl-C stops it.")
        devnet.wait_until_stopped(stopping)  # reaps nodes that exit meanwhile
    finally:
        began = time.monotonic()
        devnet.stop_supervised(dir, server)
        console.print(f"devnet stopped in {time.monotonic() - began:.1f} s")
    # Every process is stopped and devnet.json written: skip the interpreter's slow finalisation.
    exit_now(0)


STARTED_TIMEOUT = 120.0
"""How long ``devnet up`` waits for its nodes to start before it follows the genesis."""


def _stop_on_signals() -> Callable[[], bool]:
    """From now on SIGTERM and SIGINT only set a flag: whether one came."""
    stopped = [False]

    def on_signal(signum: int, frame: object) -> None:
        stopped[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return lambda: stopped[0]


def _follow_genesis(dir: Path, stopping: Callable[[], bool], total: int) -> str | None:
    """The genesis DKG's master public key (with a progress bar), or None."""
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("genesis DKG", total=total)
        try:
            return devnet.wait_for_genesis(
                dir, stopping, lambda done: progress.update(task, completed=done)
            )
        except devnet.DevnetError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return None


def _show_up(state: dict[str, Any], threshold: int, mpk: str) -> None:
    t = Table(title=f"devnet: {len(state['nodes'])} nodes, threshold {threshold}")
    for col in ("index", "peer id", "multiaddr", "http", "pid"):
        t.add_column(col)
    for n in state["nodes"]:
        t.add_row(
            str(n["index"]), n["peer_id"][:16] + "…", n["multiaddr"], n["http_url"], str(n["pid"])
        )
    out.print(t)
    out.print(f"master public key {mpk}")


def _detach(dir: Path, args: list[str], timeout: float) -> None:
    """``devnet up --detach``: run ``devnet up`` as a supervisor, return once it serves."""
    try:
        state, pid, log_path = devnet.detach(dir, args, timeout)
    except devnet.DevnetError as exc:
        fail(str(exc), 1)
    t = Table(title=f"devnet: {len(state['nodes'])} nodes, threshold {state['threshold']}")
    for col in ("index", "http", "pid"):
        t.add_column(col)
    for n in state["nodes"]:
        t.add_row(str(n["index"]), n["http_url"], str(n["pid"]))
    out.print(t)
    out.print(f"master public key {state['master_public_key']}", soft_wrap=True)
    out.print(f"state in {dir / devnet.STATE_FILE}", soft_wrap=True)
    out.print(f"supervisor pid {pid}, log {log_path}", soft_wrap=True)
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
    if not (dir / devnet.STATE_FILE).exists():
        fail(f"no devnet in {dir}", 2)
    began = time.monotonic()
    report = devnet.down(dir, timeout)
    report["seconds"] = round(time.monotonic() - began, 2)
    if json_out:
        print_json(report)
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
    devnet.stop_node(dir, index, kill=kill)


@devnet_app.command("start-node")
def devnet_start_node(
    dir: Annotated[Path, typer.Option("--dir")], index: Annotated[int, typer.Argument()]
) -> None:
    """(Re)start one node of a running devnet."""
    pid = devnet.start_node(dir, index)
    out.print(f"node {index} started (pid {pid})")


@devnet_app.command("add-node")
def devnet_add_node(
    dir: Annotated[Path, typer.Option("--dir")],
    timeout: Annotated[float, typer.Option("--timeout")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A new operator joins: init, start, join request, proposal, approvals, reshare."""
    _membership_step(lambda: devnet.add_node(dir, timeout=timeout), "joined", json_out)


@devnet_app.command("remove-node")
def devnet_remove_node(
    dir: Annotated[Path, typer.Option("--dir")],
    index: Annotated[int, typer.Argument()],
    timeout: Annotated[float, typer.Option("--timeout")] = 120.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The other members remove node INDEX; once the new epoch is certified it is stopped."""
    _membership_step(lambda: devnet.remove_node(dir, index, timeout=timeout), "removed", json_out)


def _membership_step(run: Callable[[], dict[str, Any]], done: str, json_out: bool) -> None:
    """Run a devnet membership flow and report its outcome (one JSON line with ``--json``)."""
    try:
        res = run()
    except (devnet.MembershipError, KeyError, OSError, ValueError) as exc:
        if json_out:
            print_json({"ok": False, "error": str(exc)})
            raise typer.Exit(1) from None
        fail(str(exc), 1)
    if json_out:
        print_json({"ok": True, **res})
    else:
        out.print(
            f"node {res['index']} {done}: epoch {res['epoch']}, committee {res['committee']}, "
            f"threshold {res['threshold']}"
        )
