"""``kms committee``: assemble the genesis committee file, apply it to a node, compare digests."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from kms.app.committee import (
    apply,
    assemble,
    digest_of,
    parse_start,
    read_admission_policy,
    read_record,
    write_committee,
)
from kms.app.config import ConfigError
from kms.cli.common import print_json
from kms.cli.node import config_error

committee_app = typer.Typer(
    help="Form a committee: assemble the participant records, apply the result to each node.",
    no_args_is_help=True,
)


def check_times(
    delta: float, window_period: float, window_length: float, refresh_interval: float
) -> None:
    """Exit 2 unless the durations ``assemble`` takes are positive (refresh: or 0)."""
    for name, value in (
        ("--delta", delta),
        ("--window-period", window_period),
        ("--window-length", window_length),
    ):
        if not value > 0:
            config_error(f"{name} must be a positive number of seconds")
    if refresh_interval < 0:
        config_error("--refresh-interval must be 0 (never) or a positive number of seconds")


@committee_app.command("assemble")
def committee_assemble(
    record: Annotated[
        list[Path],
        typer.Option("--record", help="A participant record (`kms node init --json`), repeatable."),
    ],
    threshold: Annotated[int, typer.Option("--threshold", help="t, 2 ≤ t ≤ n.")],
    genesis_start: Annotated[
        str,
        typer.Option(
            "--genesis-start",
            help="Unix seconds, an RFC 3339 time with an offset, or +SECONDS from now.",
        ),
    ],
    out_file: Annotated[Path, typer.Option("--out", help="The committee file to write.")],
    delta: Annotated[float, typer.Option("--delta", help="Δ, seconds.")] = 1.0,
    window_period: Annotated[float, typer.Option("--window-period")] = 60.0,
    window_length: Annotated[float, typer.Option("--window-length")] = 5.0,
    refresh_interval: Annotated[
        float, typer.Option("--refresh-interval", help="Seconds; 0: never.")
    ] = 0.0,
    admission_policy: Annotated[
        Path | None,
        typer.Option(
            "--admission-policy",
            help="The genesis node admission policy (`kms node admission-policy --out`).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Write the [committee] section every member must hold, and the members' addresses."""
    if out_file.exists() and not force:
        config_error(f"{out_file} exists: refusing to overwrite it (give --force)")
    check_times(delta, window_period, window_length, refresh_interval)
    now = time.time()
    try:
        policy = read_admission_policy(admission_policy) if admission_policy is not None else b""
        start = parse_start(genesis_start, now)
        doc, digest = assemble(
            [read_record(r) for r in record],
            threshold=threshold,
            genesis_start=start,
            delta=delta,
            window_period=window_period,
            window_length=window_length,
            refresh_interval=refresh_interval,
            admission_policy=policy,
        )
        write_committee(out_file, doc)
    except ConfigError as exc:
        config_error(str(exc))
    except OSError as exc:
        config_error(f"cannot write {out_file}: {exc.strerror}")
    if json_out:
        print_json({"file": str(out_file), "committee_digest": digest.hex()})
        return
    sys.stdout.write(f"committee digest: {digest.hex()}\n")
    if start <= now:
        sys.stderr.write(
            "warning: --genesis-start is in the past: nodes started now skip the attempts "
            "already over and run the next one\n"
        )
    if not policy:
        sys.stderr.write(
            "warning: no --admission-policy: the committee admits no joining node until an "
            "admission-policy change\n"
        )


@committee_app.command("apply")
def committee_apply(
    config: Annotated[Path, typer.Option("--config", help="This node's node.toml.")],
    committee: Annotated[
        Path, typer.Option("--committee", help="The committee file (`kms committee assemble`).")
    ],
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Replace node.toml's [committee] with the committee file's and write [[peers]] for every
    other member; the file is checked first and left unchanged on an error."""
    try:
        digest = apply(config, committee)
    except ConfigError as exc:
        config_error(str(exc))
    if json_out:
        print_json({"config": str(config), "committee_digest": digest.hex()})
        return
    sys.stdout.write(f"committee digest: {digest.hex()}\n")


@committee_app.command("digest")
def committee_digest_cmd(
    files: Annotated[
        list[Path], typer.Argument(help="node.toml or committee.toml files (one or more).")
    ],
) -> None:
    """Print the committee digest of each file's [committee]; with several files, exit 1
    unless all are equal."""
    digests: list[str] = []
    for f in files:
        try:
            digests.append(digest_of(f).hex())
        except ConfigError as exc:
            config_error(str(exc))
    if len(files) == 1:
        sys.stdout.write(f"committee digest: {digests[0]}\n")
        return
    for f, d in zip(files, digests, strict=True):
        sys.stdout.write(f"{d}  {f}\n")
    if len(set(digests)) != 1:
        sys.stderr.write("error: the committee sections differ\n")
        raise typer.Exit(1)
