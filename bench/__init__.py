"""Benchmarks of the BLS12-381 layer and the protocols built on it (``make bench``)."""
