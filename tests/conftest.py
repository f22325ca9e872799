"""Shared test setup: make ``tests/`` importable (``mesh``) from every test directory."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
