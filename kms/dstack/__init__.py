"""dstack compatibility: the guest API's key derivations, chains and certificates."""
