"""``python -m kms.cli``: the ``kms`` command line (how the devnet starts its nodes)."""

from kms.cli import main

main()
