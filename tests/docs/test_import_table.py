"""docs/design.md's import matrix is what ``tests/import_matrix.py`` generates from ``ROWS``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "import_matrix.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_matrix", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_import_table_is_up_to_date() -> None:
    script = load_script()
    assert not script.outdated(), "out of date: docs/design.md; run: python tests/import_matrix.py"


def test_the_table_has_one_row_per_matrix_row() -> None:
    script = load_script()
    text = script.DESIGN.read_text(encoding="utf-8")
    block = text.split(script.BEGIN, 1)[1].split(script.END, 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert len(rows) == len(script.ROWS)
    assert any("`kms.node.release`" in r and "`kms.store`" in r for r in rows)


def test_check_mode_reports_a_stale_page(tmp_path: Path) -> None:
    script = load_script()
    page = tmp_path / "design.md"
    page.write_text(script.DESIGN.read_text(encoding="utf-8"), encoding="utf-8")
    assert not script.outdated(page)
    page.write_text(
        page.read_text(encoding="utf-8").replace("| `mpc` | `mpc` |", "| `mpc` | anything |"),
        encoding="utf-8",
    )
    assert script.outdated(page)
