"""The ``kms`` command line: one module per command group, assembled here.

``kms.cli.node`` (``kms node``), ``committee``, ``member``, ``devnet``, ``key``, ``evidence``,
``audit``, ``apps`` (``kms app`` and ``kms app policy``), ``sim``, ``ibe``
(``kms encrypt``, ``kms decrypt``), ``status``, ``demo``, ``agent`` (``kms agent run``)
and ``env`` (``kms env encrypt``); ``kms attest`` is
``kms.attest.cli``. Commands parse options and print; what they do lives in the
module that owns it (``kms.app``, ``kms.client``, ``kms.evidence``, ``kms.store``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from kms.attest.cli import attest_app
from kms.cli.agent import agent_app
from kms.cli.apps import app_app
from kms.cli.audit import audit_app
from kms.cli.cert import cert_app
from kms.cli.chaos import chaos_app
from kms.cli.committee import committee_app
from kms.cli.demo import demo
from kms.cli.devnet import devnet_app
from kms.cli.env import env_app
from kms.cli.evidence import evidence_app
from kms.cli.ibe import decrypt_cmd, encrypt_cmd
from kms.cli.key import key_app
from kms.cli.member import member_app
from kms.cli.node import node_app
from kms.cli.sim import sim_app
from kms.cli.status import status
from kms.cli.tee import tee_app
from kms.node.metrics import build_info

app = typer.Typer(help="quorum-kms: a decentralised key management service.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        info = build_info()
        typer.echo(f"kms {info['version']} (protocol {info['protocol']}, python {info['python']})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version, the wire protocol version and Python's, and exit.",
        ),
    ] = False,
) -> None:
    """quorum-kms: a decentralised key management service."""


app.add_typer(node_app, name="node")
app.add_typer(committee_app, name="committee")
app.add_typer(devnet_app, name="devnet")
app.add_typer(member_app, name="member")
app.add_typer(attest_app, name="attest", help="TDX quote verification (Intel DCAP via dcap-qvl).")
app.command("status")(status)
app.add_typer(key_app, name="key")
app.add_typer(evidence_app, name="evidence")
app.command("encrypt")(encrypt_cmd)
app.command("decrypt")(decrypt_cmd)
app.add_typer(audit_app, name="audit")
app.add_typer(app_app, name="app")
app.add_typer(sim_app, name="sim")
app.command("demo")(demo)
app.add_typer(tee_app, name="tee")
app.add_typer(agent_app, name="agent")
app.add_typer(env_app, name="env")
app.add_typer(cert_app, name="cert")
app.add_typer(chaos_app, name="chaos")


def main() -> None:
    app()


__all__ = ["app", "main"]
