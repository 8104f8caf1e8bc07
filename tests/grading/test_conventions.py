"""The conventions checker rejects each way a lesson notebook can break the course's rules."""
import copy
from pathlib import Path

import pytest

from minibn.grading import conventions
from minibn.grading import notebooks as nbs

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "mini-course" / "solutions" / "00-mini" / "00-mini.ipynb"


def cell(nb, cell_id):
    return next(c for c in nb.cells if c.id == cell_id)


def _outputs(nb):
    c = cell(nb, "setup")
    c.outputs = [{"output_type": "stream", "name": "stdout", "text": "hi"}]
    c.execution_count = 3


def _random_id(nb):
    cell(nb, "intro").id = "3f2a9c1b"


def _duplicate_id(nb):
    cell(nb, "setup").id = "intro"


def _kernel(nb):
    nb.metadata.kernelspec = {"name": "minibn-venv", "display_name": "x", "language": "python"}


def _schema(nb):
    del cell(nb, "ex-stats-test").metadata.nbgrader["schema_version"]


def _points(nb):
    del cell(nb, "ex-stats-test").metadata.nbgrader["points"]


def _duplicate_grade_id(nb):
    cell(nb, "ex-forward-test").metadata.nbgrader["grade_id"] = "test_channel_stats"


def _no_test(nb):
    nb.cells.remove(cell(nb, "ex-stats-test"))


def _trailing_float(nb):
    cell(nb, "ex-stats-test").source = "from minibn.gradcheck import rel_error\nrel_error(1.0, 1.0)"


def _trailing_value_released(nb):
    c = cell(nb, "ex-stats-test")
    c.source = "err = 0.5\nerr\n### BEGIN HIDDEN TESTS\ncheck_channel_stats(channel_stats)\n### END HIDDEN TESTS"


def _no_markers(nb):
    c = cell(nb, "ex-stats-solution")
    c.source = c.source.replace("### BEGIN SOLUTION", "").replace("### END SOLUTION", "")


def _no_setup(nb):
    cell(nb, "setup").source = "import numpy as np"


def _imports_reference(nb):
    cell(nb, "setup").source += "\nfrom minibn.functional import batchnorm_forward"


BROKEN = {
    _outputs: "outputs not stripped",
    _random_id: "random-looking cell id",
    _duplicate_id: "duplicate cell id",
    _kernel: "kernelspec",
    _schema: "schema_version must be 3",
    _points: "needs points",
    _duplicate_grade_id: "duplicate grade_id",
    _no_test: "no test cell after it",
    _trailing_float: "bare expression",
    _trailing_value_released: "as released, hidden tests removed",
    _no_markers: "BEGIN SOLUTION",
    _no_setup: "first code cell",
    _imports_reference: "which the learner is asked to write",
}


def test_fixture_lesson_is_clean():
    assert conventions.problems(nbs.read(MINI)) == []


@pytest.mark.parametrize("breakage", BROKEN, ids=[f.__name__.strip("_") for f in BROKEN])
def test_rejects(breakage):
    nb = copy.deepcopy(nbs.read(MINI))
    breakage(nb)
    found = conventions.problems(nb)
    assert any(BROKEN[breakage] in p for p in found), found


def test_magics_are_not_syntax_errors():
    nb = copy.deepcopy(nbs.read(MINI))
    cell(nb, "setup").source = "from minibn.course import setup\nFAST = setup()\n%matplotlib inline"
    assert conventions.problems(nb) == []
