"""A dstack app's wallet, with the unmodified dstack SDK: the app's secp256k1 key for
``wallet/main`` and its Ethereum address.

Run it inside the app's container (the SDK finds the guest agent's socket), or beside
``kms agent run`` with ``DSTACK_SIMULATOR_ENDPOINT=/path/to/socket``. It prints one line,
``address 0x…``. ``make demo`` runs it with the SDK's own venv (``.venv-dstack-sdk``).
"""

from __future__ import annotations

from dstack_sdk import DstackClient
from eth_keys import keys

key = DstackClient().get_key("wallet/main", "ethereum").decode_key()
print("address", keys.PrivateKey(key).public_key.to_checksum_address(), flush=True)
