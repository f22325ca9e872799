"""`make test` runs the long, guide, sdk and chaos lanes on the files the Makefile lists for
them (so that a lane does not import the whole suite to select its few tests). Those lists
must name exactly the files whose tests carry each lane's mark: a marked test in a file not
listed would never run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LANES = {"long": "LONG_TESTS", "guide": "GUIDE_TESTS", "sdk": "SDK_TESTS", "chaos": "CHAOS_TESTS"}


def _makefile_lists() -> dict[str, set[str]]:
    text = (ROOT / "Makefile").read_text()
    out = {}
    for mark, var in LANES.items():
        m = re.search(rf"^{var}\s*=(.*)$", text, re.MULTILINE)
        assert m, f"the Makefile does not define {var}"
        out[mark] = set(m.group(1).split())
    return out


def _marked_files() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {mark: set() for mark in LANES}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        text = path.read_text()
        for mark in LANES:
            if re.search(rf"\bmark\.{mark}\b", text):
                out[mark].add(path.relative_to(ROOT).as_posix())
    return out


def test_each_lane_lists_exactly_the_files_that_carry_its_mark() -> None:
    listed = _makefile_lists()
    marked = _marked_files()
    for mark in LANES:
        assert marked[mark], f"no test is marked {mark}"
        assert listed[mark] == marked[mark], (mark, listed[mark], marked[mark])


def test_every_lane_is_run_on_its_list() -> None:
    text = (ROOT / "Makefile").read_text()
    for mark, var in LANES.items():
        assert re.search(rf"-m {mark}\b[^\n;&]*\$\({var}\)", text), (mark, var)


def test_the_longest_files_named_for_the_slow_lane_exist_and_are_slow() -> None:
    from lane_order import LONGEST_FILES

    for name in LONGEST_FILES:
        path = ROOT / name
        assert path.is_file(), name
        assert re.search(r"\bmark\.slow\b", path.read_text()), name
