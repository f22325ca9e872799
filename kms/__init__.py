"""quorum-kms: the node, the CVM client, attestation, policies, storage and the CLI."""

__version__ = "0.1.0"
