"""``kms key get``: an app key for a CVM (``kms.client.http``), from node URLs and a pinned
master public key; quoted by configfs-tsm or by a simulated TEE (``kms.app.cvm``).
``--devnet DIR`` takes the URLs, key, TEE and measurement from a devnet."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from kms.app import cvm, owner
from kms.cli.common import console, out, print_json
from kms.cli.tee import die
from kms.client import http as client
from kms.client.core import KeyReleaseError, Rejected
from kms.secretfile import write_secret
from mpc.math import G2

key_app = typer.Typer(help="Keys for a CVM.", no_args_is_help=True)


def say(line: str) -> None:
    out.print(line, highlight=False, markup=False, soft_wrap=True)


def target(o: cvm.Options) -> cvm.Target:
    """The CVM's target (``kms.app.cvm.target``); exits 2 with what is wrong."""
    try:
        return cvm.target(o)
    except (cvm.CVMError, owner.OwnerError) as exc:
        die(str(exc))


def pinned(mpk_hex: str) -> G2:
    try:
        return cvm.pinned_mpk(mpk_hex)
    except cvm.CVMError as exc:
        die(str(exc))


def refused(exc: KeyReleaseError, json_out: bool, left_out: list[str]) -> None:
    """Print a refusal with every node's reason and detail; exits 1."""
    # The client names exceptions by class ("ConnectError: …"); the user needs the text.
    unreachable = [
        re.sub(r"\b[A-Z]\w*(Error|Exception|Timeout): ", "", u)
        for u in (*left_out, *exc.unreachable)
    ]
    if json_out:
        print_json(
            {
                "ok": False,
                "error": str(exc),
                "refusals": {
                    str(i): {"reason": r, "detail": d} for i, (r, d) in sorted(exc.refusals.items())
                },
                "bad_partials": exc.bad_nodes,
                "unreachable": unreachable,
            }
        )
        raise typer.Exit(1)
    lines = ["error: the committee released no key"]
    lines += [f"  node {i} refused: {r}: {d}" for i, (r, d) in sorted(exc.refusals.items())]
    lines += [f"  node {i} sent a bad partial" for i in exc.bad_nodes]
    lines += [f"  unreachable: {u}" for u in unreachable]
    if len(lines) == 1:
        lines.append(f"  {exc}")
    console.print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(1)


UrlsOpt = Annotated[
    list[str] | None, typer.Option("--urls", help="Node URLs, comma-separated (repeatable).")
]
MpkOpt = Annotated[
    str | None, typer.Option("--mpk", help="The committee's master public key (hex), pinned.")
]
TeeOpt = Annotated[
    Path | None,
    typer.Option("--simulated-tee", help="Quote on this simulated TEE (kms tee init)."),
]
MeasurementOpt = Annotated[
    Path | None,
    typer.Option("--measurement", help="With --simulated-tee: the CVM's measurement file."),
]
EventLogOpt = Annotated[
    Path | None,
    typer.Option("--event-log", help="A real CVM's RTMR3 event log (JSON) to send."),
]
DevnetOpt = Annotated[
    Path | None, typer.Option("--devnet", help="Defaults from a devnet directory.")
]


@key_app.command("get")
def key_get(
    app_name: Annotated[
        str, typer.Option("--app", help="The app id (hex; an alias with --devnet).")
    ],
    urls: UrlsOpt = None,
    mpk_hex: MpkOpt = None,
    purpose: Annotated[str, typer.Option("--purpose")] = "app",
    version: Annotated[int, typer.Option("--version")] = 1,
    simulated_tee: TeeOpt = None,
    measurement: MeasurementOpt = None,
    event_log: EventLogOpt = None,
    devnet_dir: DevnetOpt = None,
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
            "--rogue-measurement",
            help="With --devnet: present a measurement the policy does not admit.",
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
            help="The app's signed policy bundle, sent with the request: nodes that have not "
            "admitted the app admit it when its policy admits this CVM and the CVM's RTMR3 "
            "event log carries the app id (a compose-hash measurement on the simulated TEE "
            "sends one).",
        ),
    ] = None,
) -> None:
    """Fetch an app key as a CVM, verified against the pinned master public key."""
    t = target(
        cvm.Options(urls, mpk_hex, app_name, None, simulated_tee, measurement, event_log)
        if devnet_dir is None
        else cvm.Options(
            urls, mpk_hex, app_name, None, simulated_tee, measurement, event_log, devnet_dir, rogue
        )
    )
    bundle = read_bundle(bundle_file)
    try:
        res = client.get_app_key(
            t.urls,
            t.mpk,
            t.app_id,
            purpose,
            version,
            t.quote,
            bundle=bundle,
            report=report,
            event_log=t.event_log,
            transport=owner.HTTP_TRANSPORT,
        )
    except KeyReleaseError as exc:
        refused(exc, json_out, t.left_out)
    save_evidence(res.rejected, evidence_dir)
    show_key(res, t.left_out, out_file, json_out)


def read_bundle(bundle_file: Path | None) -> bytes:
    if bundle_file is None:
        return b""
    try:
        return owner.read_bundle(bundle_file).encode()
    except owner.OwnerError as exc:
        die(str(exc))


def show_key(
    res: client.AppKeyResult, left_out: list[str], out_file: Path | None, json_out: bool
) -> None:
    """Write the secret material (0600) when asked; print the public half."""
    if out_file is not None:
        try:
            write_secret(out_file, json.dumps(res.secret))
        except OSError as exc:
            die(f"cannot write {out_file}: {exc.strerror or exc}")
    if json_out:
        print_json(res.public)
        return
    for k, v in res.public.items():
        say(f"{k:18} {v}")
    for u in left_out:
        say(f"left out: {u}")
    if out_file is not None:
        say(f"{'secret keys':18} written to {out_file} (mode 0600)")


def save_evidence(rejected: tuple[Rejected, ...], directory: Path | None) -> list[str]:
    """Each wrong partial's evidence as a file: what ``kms evidence verify`` checks."""
    written: list[str] = []
    for n, r in enumerate(rejected):
        if r.evidence is None:
            continue
        console.print(
            f"node {int(r.index)} sent a bad partial: {r.reason}", highlight=False, markup=False
        )
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            f = directory / f"wrong-partial-node{int(r.index)}-{n}.msgpack"
            f.write_bytes(r.evidence.encode())
            written.append(str(f))
            console.print(f"evidence written to {f}", highlight=False, markup=False)
    return written
