"""The version of a dstack app root key that an app policy makes current.

A dstack app's root key is the secp256k1 key derived from the committee's
threshold key for purpose :data:`ROOT_PURPOSE` at root version ``v``; the
committee certifies a root public key only for the current ``v``
(``POST /v1/app-key-cert``). The owner moves to a new root by pinning a higher
``min_key_versions`` entry for the purpose in the app policy; a policy that
pins none (or pins ``0``) makes version 1 current.
"""

from __future__ import annotations

from typing import Final

from .policy import AppPolicy

ROOT_PURPOSE: Final = "dstack-app-root"
"""The key-release purpose of a dstack app root key."""


def root_version(policy: AppPolicy) -> int:
    """The current root version of ``policy``'s app: the pinned minimum key version of
    :data:`ROOT_PURPOSE` if the policy pins one, else 1."""
    pins = policy.pins
    pinned = pins.min_key_version(ROOT_PURPOSE) if pins is not None else 0
    return pinned if pinned >= 1 else 1


__all__ = ["ROOT_PURPOSE", "root_version"]
