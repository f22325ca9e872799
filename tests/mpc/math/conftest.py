"""Shared fixtures for the ``mpc.math`` tests.

``ref`` is the py-ecc reference module ``pyecc_ref.py`` next to this file,
loaded by path so that it works under any pytest import mode and without
``__init__.py`` files or ``sys.path`` changes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
_REF_NAME = "_quorum_kms_tests_mpc_math_pyecc_ref"


def _load_ref() -> ModuleType:
    if _REF_NAME in sys.modules:
        return sys.modules[_REF_NAME]
    spec = importlib.util.spec_from_file_location(_REF_NAME, HERE / "pyecc_ref.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_REF_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def ref() -> ModuleType:
    """The py-ecc reference helpers (see ``pyecc_ref.py``)."""
    return _load_ref()
