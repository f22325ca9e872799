"""`make test` runs its lanes on the files the Makefile lists for them, so that a lane does
not import the whole suite to select a few tests. Those lists must name exactly the files
whose tests carry each lane's mark (a marked test in a file not listed would never run), and
the compute lane's directories must be the ones ``tests/conftest.py`` marks ``compute``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _compute_dirs() -> tuple[str, ...]:
    """``COMPUTE_DIRS`` as ``tests/conftest.py`` sets it (read, not imported: several test
    directories have a ``conftest`` module)."""
    for node in ast.parse((ROOT / "tests" / "conftest.py").read_text()).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [
            "COMPUTE_DIRS"
        ]:
            value = ast.literal_eval(node.value)
            assert isinstance(value, tuple)
            return value
    raise AssertionError("tests/conftest.py does not set COMPUTE_DIRS")


COMPUTE_DIRS = _compute_dirs()
LANES = {"guide": "GUIDE_TESTS", "sdk": "SDK_TESTS", "chaos": "CHAOS_TESTS"}


def _makefile() -> str:
    return (ROOT / "Makefile").read_text()


def _listed(var: str) -> set[str]:
    m = re.search(rf"^{var}\s*=(.*)$", _makefile(), re.MULTILINE)
    assert m, f"the Makefile does not define {var}"
    return set(m.group(1).split())


def _marked(mark: str) -> set[str]:
    return {
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if re.search(rf"\bmark\.{mark}\b", path.read_text())
    }


def test_each_lane_lists_exactly_the_files_that_carry_its_mark() -> None:
    for mark, var in LANES.items():
        marked = _marked(mark)
        assert marked, f"no test is marked {mark}"
        assert _listed(var) == marked, (mark, _listed(var), marked)


def test_the_compute_lane_runs_the_directories_marked_compute() -> None:
    assert _listed("COMPUTE_TESTS") == {f"tests/{d}" for d in COMPUTE_DIRS}
    # The n = 64 simulation (marked `long`) runs in the compute lane: not in a module that
    # keeps it out with WALL_CLOCK.
    long_files = _marked("long")
    assert long_files
    for f in long_files:
        assert f.split("/")[1] in COMPUTE_DIRS, f
        assert "WALL_CLOCK = True" not in (ROOT / f).read_text(), f


def test_every_lane_is_run_on_its_list() -> None:
    text = _makefile()
    for mark, var in LANES.items():
        assert re.search(rf"-m {mark}\b[^\n;&]*\$\({var}\)", text), (mark, var)
    assert re.search(r'nice -n 19 [^\n;&]*-m "[^"]*\bcompute"[^\n;&]*\$\(COMPUTE_TESTS\)', text)
    assert re.search(r'-m "[^"]*\band not compute"', text)
