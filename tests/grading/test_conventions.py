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


def _prompt_in_answer(nb):
    """The 03/04 release bug: the question typed into the manually graded cell itself."""
    question = cell(nb, "q-eps-question")
    answer = cell(nb, "q-eps")
    answer.source = question.source + "\n\n" + answer.source
    nb.cells.remove(question)


def _prompt_in_solution_region(nb):
    c = cell(nb, "ex-stats-solution")
    c.source = c.source.replace("### BEGIN SOLUTION", "### BEGIN SOLUTION\n    # **Question.** why m?")


def _answer_without_question(nb):
    nb.cells.remove(cell(nb, "q-eps-question"))


def _torch_unseeded(nb):
    cell(nb, "setup").source += "\nimport torch"


def _random_before_setup(nb):
    c = cell(nb, "setup")
    c.source = "import numpy as np\nnoise = np.random.rand(3)\n" + c.source


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
    _prompt_in_answer: "sits inside the answer cell",
    _prompt_in_solution_region: "sits inside the solution region",
    _answer_without_question: "answer cell without its question",
    _torch_unseeded: "setup(torch=True)",
    _random_before_setup: "must be the first statement after the imports",
}


def test_a_torch_lesson_that_seeds_torch_is_clean():
    nb = copy.deepcopy(nbs.read(MINI))
    cell(nb, "setup").source = ("from minibn.course import setup\nFAST = setup(torch=True)\n\n"
                                "import numpy as np\nimport torch")
    assert conventions.problems(nb) == []


def test_an_optional_torch_import_inside_a_cell_needs_no_seed():
    """A benchmark that tries torch if installed draws no random numbers from it."""
    nb = copy.deepcopy(nbs.read(MINI))
    cell(nb, "setup").source += "\ntry:\n    import torch\nexcept ImportError:\n    torch = None"
    assert conventions.problems(nb) == []


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


def test_a_prompt_before_the_solution_region_is_fine():
    """Text above ``### BEGIN SOLUTION`` (a docstring) survives the release, so it may ask."""
    nb = copy.deepcopy(nbs.read(MINI))
    c = cell(nb, "ex-stats-solution")
    c.source = c.source.replace("### BEGIN SOLUTION", "# Question: which axes?\n    ### BEGIN SOLUTION")
    assert conventions.problems(nb) == []


ROOT = Path(__file__).resolve().parents[2]
RELEASED = sorted((ROOT / "lessons").glob("*/*.ipynb"))


@pytest.mark.parametrize("path", RELEASED, ids=[p.parent.name for p in RELEASED])
def test_released_lesson_shows_the_question_above_every_answer_box(path):
    """What the student opens: every answer box (cleared to nbgrader's stub) has its question,
    in full, in the markdown cell right above it, the same question the solution asks."""
    released = nbs.read(path)
    assert conventions.question_before_every_answer(released) == []
    solution = nbs.read(ROOT / "solutions" / path.parent.name / path.name)
    asked = {c.id: c.source for c in solution.cells}
    boxes = [i for i, c in enumerate(released.cells) if nbs.is_manual(c)]
    assert boxes or not any(nbs.is_manual(c) for c in solution.cells)
    for i in boxes:
        box, question = released.cells[i], released.cells[i - 1]
        assert "YOUR ANSWER HERE" in box.source, f"{path.name} cell {i}: answer box not cleared"
        assert not conventions.PROMPT.search(box.source), f"{path.name} cell {i}"
        assert question.source == asked[question.id], (
            f"{path.name} cell {i - 1} ({question.id}): the question differs from the solution's")


def test_released_lessons_are_found():
    assert len(RELEASED) >= 8, RELEASED
