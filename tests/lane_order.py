"""The order in which ``make test``'s slow lane starts its files (``tests/conftest.py``)."""

LONGEST_FILES = {
    "tests/kms/test_demo.py": 115,
    "tests/kms/keys_net/test_key_release_network.py": 105,
    "tests/kms/devnet/test_lifecycle.py": 102,
    "tests/kms/keys_net/test_live_flood.py": 75,
}
"""The slow lane's longest files and their seconds in ``make test`` (each file runs on one
worker): they start first, longest first, so that the lane does not end with one worker
running the demo alone while the other idles. ``make test`` keeps this order
(``--no-loadscope-reorder``; xdist would otherwise start the files with the most tests)."""
