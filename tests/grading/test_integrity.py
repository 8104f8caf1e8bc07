"""Static scans and the out-of-kernel re-grade's building blocks, without nbgrader (fast)."""
import copy
import socket
from pathlib import Path

import nbformat
import pytest

from minibn.grading import feedback, integrity
from minibn.grading import notebooks as nbs
from minibn.grading import regrade as rg
from minibn.grading.conventions import learner_functions

MINI = Path(__file__).resolve().parents[1] / "fixtures" / "mini-course" / "solutions" / "00-mini" / "00-mini.ipynb"
LEARNER = {"batchnorm_forward", "channel_stats"}


def kinds(source):
    return sorted({f["kind"] for f in integrity.scan_code(source, LEARNER, "cell x")})


HONEST = [
    "def channel_stats(x):\n    axes = (0,) + tuple(range(2, x.ndim))\n    return x.mean(axes), x.var(axes)",
    "from minibn.functional import batchnorm_backward, BatchNormCache\nimport numpy as np",
    "from minibn.gradcheck import numerical_gradient_array, rel_error\n%matplotlib inline",
    "import numpy as np\nout = np.zeros(3)\nout.shape = (3, 1)\nnp.random.seed(0)",
]


@pytest.mark.parametrize("source", HONEST)
def test_honest_code_is_not_flagged(source):
    assert kinds(source) == []


HOSTILE = {
    "from minibn.functional import batchnorm_forward as f": "delegation",
    "from minibn import batchnorm_forward": "delegation",
    "import minibn\ny = minibn.batchnorm_forward": "delegation",
    "import importlib\nm = importlib.import_module('minibn')": "delegation",
    "m = __import__('minibn')": "delegation",
    "import sys\nf = sys.modules['minibn.functional']": "delegation",
    "import inspect, minibn.functional as F\nsrc = inspect.getsource(F)": "delegation",
    "exec('x = 1')": "delegation",
    "import minibn.checks.normalize as c\nc.check_channel_stats = print": "tamper",
    "from minibn import checks": "tamper",
    "np.allclose = lambda *a, **k: True": "tamper",
    "setattr(np, 'abs', abs)": "tamper",
    "get_ipython().showtraceback = None": "tamper",
    "import sys\nsys.excepthook = print": "tamper",
    "import ctypes": "tamper",
    "import os\nif os.environ.get('NBGRADER_EXECUTION'): pass": "grading-mode",
}


@pytest.mark.parametrize("source", list(HOSTILE))
def test_hostile_code_is_flagged(source):
    assert HOSTILE[source] in kinds(source)


def test_scan_submission_zeroes_only_the_delegating_exercise():
    source = nbs.read(MINI)
    sub = copy.deepcopy(source)
    cell = next(c for c in sub.cells if nbs.grade_id(c) == "batchnorm_forward")
    cell.source = "from minibn import batchnorm_forward"
    flags, zeroed = integrity.scan_submission(source, sub, learner_functions(source))
    assert zeroed == set() and [f["kind"] for f in flags] == ["delegation"]  # nothing defined there
    cell.source = "import minibn\ndef batchnorm_forward(x, g, b, eps=1e-5):\n    return minibn.batchnorm_forward(x, g, b, eps)"
    flags, zeroed = integrity.scan_submission(source, sub, learner_functions(source))
    assert zeroed == {"batchnorm_forward"}
    # The lesson's own cells are trusted as they are.
    assert integrity.scan_submission(source, copy.deepcopy(source), learner_functions(source)) == ([], set())


def test_shadowing_files(tmp_path):
    (tmp_path / "00-mini.ipynb").write_text("{}")
    (tmp_path / "data.csv").write_text("1,2")
    (tmp_path / "numpy.py").write_text("")
    (tmp_path / "minibn").mkdir()
    (tmp_path / "minibn" / "__init__.py").write_text("")
    assert integrity.shadowing_files(tmp_path) == ["minibn/", "numpy.py"]


def test_definitions_only_keeps_what_a_solution_can_depend_on():
    src = ("import numpy as np\nEPS = 1e-5\nSHAPE = (2, 3)\nrng = np.random.default_rng(0)\n"
           "def helper(x):\n    return x\nplt.plot([1, 2])\nfor i in range(10**9):\n    pass\n%timeit helper(1)")
    kept = rg.definitions_only(src)
    assert "import numpy as np" in kept and "EPS = 1e-05" in kept and "def helper" in kept
    assert "SHAPE" in kept and "rng" not in kept and "plot" not in kept and "range" not in kept
    assert "timeit" not in kept


def test_build_plan_takes_tests_from_the_lesson_and_code_from_the_learner():
    source = nbs.read(MINI)
    sub = copy.deepcopy(source)
    for c in sub.cells:
        if nbs.is_test(c):
            c.source = "pass"
    plan = rg.build_plan(source, sub, learner_functions(source))
    assert [t["grade_id"] for t in plan["tests"]] == ["test_channel_stats", "test_batchnorm_forward"]
    assert all("_randomized" in t["source"] for t in plan["tests"])
    labels = [c["label"] for c in plan["cells"]]
    assert labels == ["setup", "ex-stats-solution", "ex-forward-solution"]
    assert plan["learner_functions"] == ["batchnorm_forward", "channel_stats"]


def _nb_with_outputs(outputs, test=True):
    cell = nbformat.v4.new_code_cell("check_x(f)")
    if test:
        cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "points": 1,
                                     "grade_id": "test_x", "schema_version": 3}
    cell.outputs = outputs
    nb = nbformat.v4.new_notebook()
    nb.cells = [cell]
    return nb


def test_feedback_keeps_the_message_but_not_the_traceback():
    error = nbformat.v4.new_output("error", ename="AssertionError", evalue="out is wrong (hint)",
                                   traceback=["Traceback", "### BEGIN HIDDEN TESTS", "check_x_randomized(f)"])
    nb = _nb_with_outputs([error])
    nb, _ = feedback.HideTestTracebacks().preprocess(nb, {})
    assert nb.cells[0].outputs[0].traceback == ["AssertionError: out is wrong (hint)"]


def test_huge_outputs_are_capped():
    big = nbformat.v4.new_output("display_data", data={"text/html": "<b>x</b>" * 100_000})
    small = nbformat.v4.new_output("stream", name="stdout", text="ok\n")
    nb, _ = feedback.CapOutputs(max_bytes=10_000).preprocess(_nb_with_outputs([big, small], test=False), {})
    assert nb.cells[0].outputs[1] == small
    assert "removed by the grader" in nb.cells[0].outputs[0].text


def test_regrade_process_has_no_network():
    """Case 23: learner code in the re-grade reaches no server, not even one on loopback."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    reach = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
        "    reached = True\n"
        "except OSError:\n"
        "    reached = False\n"
    )
    check = "assert reached is False, 'the re-grade process reached a server'\n"
    plan = {"cells": [{"label": "reach", "source": reach, "learners": []}],
            "tests": [{"grade_id": "test_network", "points": 1.0, "source": check,
                       "names": sorted(rg.names_used(check))}],
            "learner_functions": []}
    try:
        result = rg.regrade(plan, student="c23-network", cell_timeout=20.0)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    assert result["tests"]["test_network"]["passed"], result
