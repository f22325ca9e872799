"""Transports between KMS nodes: the ``Transport`` protocol, envelopes, libp2p and in-memory."""
