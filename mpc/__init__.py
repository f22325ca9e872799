"""quorum-kms cryptography and sans-I/O protocols.

Nothing in this package performs I/O, reads a clock or draws global
randomness: time and an ``rng`` are passed in by the caller.
"""
