"""The agent inside a dstack CVM: TEE facts, measured configuration, the guest API."""
