"""The fault lab's tests on real namespaces: skip without root, fail instead where
``QKMS_REQUIRE_LAB`` says the lab must run (``.ci/run``)."""

from __future__ import annotations

import os

import pytest

from kms.chaos.netlab import LabError, require_root


def need_lab() -> None:
    try:
        require_root()
    except LabError as exc:
        if os.environ.get("QKMS_REQUIRE_LAB", "") not in ("", "0"):
            pytest.fail(f"QKMS_REQUIRE_LAB is set but the lab cannot run: {exc}")
        print(f"skipping the fault lab's network tests: {exc}")
        pytest.skip(str(exc))
