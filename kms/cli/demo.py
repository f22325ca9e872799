"""``kms demo``: the end-to-end demo (``kms.app.demo``, also ``make demo``)."""

from __future__ import annotations

import typer

from kms.app.demo import main as demo_main


def demo() -> None:
    """Run the end-to-end demo."""
    raise typer.Exit(demo_main())
