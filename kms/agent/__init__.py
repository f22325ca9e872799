"""The ``kms agent``: obtains a dstack app's root key from the committee and serves the guest API."""
