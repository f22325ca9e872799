"""The libp2p transport: the only part of the project that imports py-libp2p."""

from net.libp2p.transport import DEFAULT_PROTOCOL, Libp2pTransport, configure_logging

__all__ = ["DEFAULT_PROTOCOL", "Libp2pTransport", "configure_logging"]
