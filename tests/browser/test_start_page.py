"""START.ipynb, the page `make lab` opens, stays true to the lessons that exist (no browser needed)."""
import json
import re

import pytest

from labdriver import REPO, START_PAGE, lesson_dirs

START = json.loads((REPO / START_PAGE).read_text())
TEXT = "\n".join("".join(c["source"]) for c in START["cells"])


@pytest.mark.parametrize("lesson", [p.name for p in lesson_dirs()])
def test_start_page_lists_each_lesson_with_the_time_the_lesson_states(lesson):
    """Every lesson has a row; where the lesson states its time ("about N minutes"), they agree."""
    row = re.search(rf"^\| \d\d \| `lessons/{re.escape(lesson)}` \|.*\| (\d+) min \|$", TEXT, re.M)
    assert row, f"{START_PAGE} has no course-path row for lessons/{lesson}"
    intro = "".join(json.loads((REPO / "solutions" / lesson / f"{lesson}.ipynb").read_text())["cells"][0]["source"])
    stated = re.search(r"about (\d+) min", intro)
    if stated:
        assert row.group(1) == stated.group(1), f"{START_PAGE} says {row.group(1)} min, {lesson} says {stated.group(1)}"


def test_start_page_is_committed_clean():
    for cell in START["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
