"""The fault lab's node program: the real node, with test-only byzantine and broken hooks.

    python -m kms.chaos.nodeproc --config node.toml [--adversary JSON] [--broken NAME]
                                 [--delay-ms MS] [--log-format json|text] [--log-level LEVEL]

Runs the node exactly as ``kms node run`` does (``kms.app.setup.run_node``, the same
composition root), but only for a lab node: ``node.toml`` must have a ``[testing]``
section with ``lab = true`` (which ``kms node run`` and ``kms node check-config`` refuse)
and accept simulated quotes. ``--adversary`` (or ``[testing] adversary``) is a JSON list
``[{"behaviour": NAME, "params": {...}}]`` of ``kms.chaos.byzantine.STRATEGIES``;
``--broken`` (or ``[testing] broken``) one of ``kms.chaos.byzantine.BROKEN``, applied to
this process's code in memory. ``--delay-ms`` holds every frame the node receives for that
many milliseconds (``net.delay.DelayedTransport``): a one-way latency on every link, for labs
without a link proxy. Exit codes as ``kms node run``'s (2: refused to start).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kms.app.config import ConfigError, NodeFileConfig, load
from kms.chaos import byzantine
from kms.node import lifecycle
from kms.node.service import NodeService
from net.delay import DelayedTransport


class LabRefused(Exception):
    """The node program refuses to start: one line saying why."""


def lab_settings(
    config: Path, adversary: str | None, broken: str | None
) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """Check that ``config`` is a lab node's, and return its behaviours and broken build
    (the command line's, else ``[testing]``'s); ``LabRefused`` or ``ConfigError`` if not."""
    cfg = load(config, testing=True)
    testing = cfg.testing
    if testing is None or testing.get("lab") is not True:
        raise LabRefused(
            f"{cfg.path} has no [testing] section with lab = true: the fault lab's node "
            "program runs only lab nodes (use `kms node run` for a real one)"
        )
    if not cfg.accept_simulated_quotes:
        raise LabRefused(
            f"{cfg.path} does not accept simulated quotes: the fault lab's node program runs "
            "only lab (devnet) nodes"
        )
    raw = adversary if adversary is not None else testing.get("adversary")
    try:
        specs = byzantine.parse_adversary(raw) if raw else []
    except ValueError as exc:
        raise LabRefused(f"--adversary: {exc}") from None
    name = broken if broken is not None else testing.get("broken")
    if name is not None and name not in byzantine.BROKEN:
        raise LabRefused(f"--broken: unknown {name!r}; known: {sorted(byzantine.BROKEN)}")
    return specs, name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kms.chaos.nodeproc", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--adversary", default=None, help="JSON list of {behaviour, params}")
    parser.add_argument("--broken", default=None, choices=sorted(byzantine.BROKEN))
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="hold each received frame this long (ms)"
    )
    parser.add_argument("--log-format", default=None, choices=("json", "text"))
    parser.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    import trio

    from kms.app.setup import StartupError, run_node

    if not 0 <= args.delay_ms <= 10_000:
        sys.stderr.write("error: --delay-ms must be between 0 and 10000\n")
        return lifecycle.EXIT_CONFIG

    try:
        lifecycle.die_with_parent_from_env()
    except lifecycle.ParentGone as exc:
        sys.stderr.write(f"error: {exc}\n")
        return lifecycle.EXIT_PARENT_GONE
    try:
        specs, broken = lab_settings(args.config, args.adversary, args.broken)
    except (ConfigError, LabRefused) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return lifecycle.EXIT_CONFIG

    def adapt(cfg: NodeFileConfig, service: NodeService) -> None:
        if args.delay_ms > 0:
            service.transport = DelayedTransport(service.transport, args.delay_ms / 1000)
        if specs:
            byzantine.apply_adversary(service, specs)
            logging.getLogger("quorum_kms.chaos").warning(
                "BYZANTINE LAB NODE",
                extra={"fields": {"behaviours": [name for name, _ in specs]}},
            )
        if broken is not None:
            logging.getLogger("quorum_kms.chaos").warning(
                "BROKEN LAB BUILD", extra={"fields": {"broken": broken}}
            )

    with contextlib.ExitStack() as patches:
        if broken is not None:
            patches.enter_context(byzantine.BROKEN[broken]())
        try:
            trio.run(
                lambda: run_node(
                    args.config, args.log_format, args.log_level, testing=True, adapt=adapt
                )
            )
        except (ConfigError, StartupError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            return lifecycle.EXIT_CONFIG
    lifecycle.exit_now(lifecycle.EXIT_OK)
    return lifecycle.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
