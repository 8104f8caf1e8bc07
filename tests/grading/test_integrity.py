"""Static scans and the out-of-kernel re-grade's building blocks, without nbgrader (fast)."""
import copy
import inspect
import json
import os
import socket
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from minibn.grading import copies, feedback, integrity, sandbox, similarity, wire
from minibn.grading import notebooks as nbs
from minibn.grading import regrade as rg
from minibn.grading.conventions import learner_functions

ROOT = Path(__file__).resolve().parents[2]
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


def test_build_plan_leaves_out_lesson_imports_no_kept_code_uses():
    """The learner's process skips the lesson's own imports nothing it runs refers to (plotting
    and explorers cost it half a second per submission); an import a learner's function uses
    stays, and the learner's own cells are kept whole, even one that does not parse."""
    source = nbs.read(MINI)
    sub = copy.deepcopy(source)
    setup = next(c for c in sub.cells if c.get("id") == "setup")
    setup.source += "\nimport matplotlib.pyplot as plt\nimport os.path\nfrom math import *"
    solution = next(c for c in sub.cells if c.get("id") == "ex-stats-solution")
    solution.source = solution.source.replace("def channel_stats(x):", "def channel_stats(x):\n    os.getcwd()")
    plan = rg.build_plan(source, sub, learner_functions(source))
    kept = next(c for c in plan["cells"] if c["label"] == "setup")["source"]
    assert "matplotlib" not in kept and "minibn.course" not in kept  # nothing kept uses plt or setup
    assert "import numpy as np" in kept and "BatchNormCache" in kept  # the solutions use both
    assert "import os.path" in kept and "from math import *" in kept

    broken = next(c for c in sub.cells if c.get("id") == "ex-forward-solution")
    broken.source = "def batchnorm_forward(x, gamma, beta, eps=1e-5:\n    return x"
    plan = rg.build_plan(source, sub, learner_functions(source))
    assert next(c for c in plan["cells"] if c["label"] == "ex-forward-solution")["source"].strip() == broken.source


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


def test_a_trace_ipython_printed_on_stderr_is_cut_to_its_last_line():
    # A learner who patches the functions IPython formats exceptions with makes it print the
    # raw trace, through the checks' internals, on stderr instead of as an error output.
    trace = nbformat.v4.new_output(
        "stream", name="stderr",
        text="Unexpected exception formatting exception. Falling back to standard exception\n"
             "Traceback (most recent call last):\n  File \"/x/minibn/checks/_core.py\", line 3\n"
             "AssertionError: var is wrong (hint)\n")
    warning = nbformat.v4.new_output("stream", name="stderr", text="UserWarning: slow\n")
    nb, _ = feedback.HideTestTracebacks().preprocess(_nb_with_outputs([trace, warning]), {})
    assert [o.text for o in nb.cells[0].outputs] == ["AssertionError: var is wrong (hint)\n",
                                                     "UserWarning: slow\n"]


def _scored(outputs, score, points=3):
    nb = _nb_with_outputs(outputs)
    nb.cells[0].metadata.nbgrader.update(score=score, points=points)  # as nbgrader's GetGrades sets them
    return feedback.ExplainScores().preprocess(nb, {})[0].cells[0].outputs


def test_feedback_says_the_score_is_the_regrade_when_the_notebook_run_failed():
    # A learner's notebook ran a test cell before the cell defining a helper its function calls:
    # the run shown failed with a NameError, the re-grade (all solution cells first) passed.
    error = nbformat.v4.new_output("error", ename="NameError", evalue="name '_moments' is not defined",
                                   traceback=["NameError: name '_moments' is not defined"])
    note, shown = _scored([error], 3.0)
    assert shown == error
    assert note.name == "stdout" and note.text.startswith("Score 3 / 3 comes from the re-grade")
    assert "your notebook from top to bottom" in note.text and "failed below and passed there" in note.text
    assert "before the cell that defines" in note.text  # why the two runs differ, and what to fix
    # Any other error: the notebook's run drew a case the re-grade did not.
    wrong = nbformat.v4.new_output("error", ename="AssertionError", evalue="var is wrong", traceback=[])
    note = _scored([wrong], 3.0)[0].text
    assert "met a case your code gets wrong" in note and "before the cell that defines" not in note
    # A trace on stderr (IPython's fallback) is a failure too, and a partial score still differs.
    trace = nbformat.v4.new_output(
        "stream", name="stderr", text="Traceback (most recent call last):\nNameError: name 'f' is not defined\n")
    assert "before the cell that defines" in _scored([trace], 1.5)[0].text


def test_feedback_says_the_score_is_the_regrade_when_the_notebook_run_passed():
    note, = _scored([], 0.0)
    assert note.text.startswith("Score 0 / 3 comes from the re-grade")
    assert "passed below and failed there" in note.text and "hidden cases" in note.text


def test_feedback_adds_nothing_where_the_two_runs_agree():
    error = nbformat.v4.new_output("error", ename="AssertionError", evalue="var is wrong", traceback=[])
    warning = nbformat.v4.new_output("stream", name="stderr", text="UserWarning: slow\n")
    assert _scored([error], 0.0) == [error]
    assert _scored([warning], 3.0) == [warning]
    nb = _nb_with_outputs([error])  # no score read: a notebook outside the feedback step
    assert feedback.ExplainScores().preprocess(nb, {})[0].cells[0].outputs == [error]


def test_feedback_names_a_score_set_by_hand(monkeypatch):
    seen = []

    def cell_grades(path, student, assignment):
        seen.append((path, student, assignment))
        return {("00-mini", "test_x"): {"manual": 2.0}, ("other", "test_x"): {"manual": None}}

    monkeypatch.setattr(feedback.gradebook, "cell_grades", cell_grades)
    nb = _nb_with_outputs([])
    nb.cells[0].metadata.nbgrader.update(score=2.0, points=3)
    info = {"db_url": "sqlite:////course/gradebook.db", "student": "s1", "assignment": "00-mini",
            "notebook": "00-mini"}
    note, = feedback.ExplainScores().preprocess(nb, {"nbgrader": info})[0].cells[0].outputs
    assert seen == [("/course/gradebook.db", "s1", "00-mini")]
    assert note.text.startswith("Score 2 / 3 was set by the instructor by hand")


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


def test_wire_round_trip_and_validation():
    from minibn.functional import BatchNormCache

    x = np.arange(6.0).reshape(2, 3)[:, ::2]
    value = (x, np.float32(1.5), 2**60, float("nan"), {"eps": 1e-5}, [None, True, "s"],
             BatchNormCache(x, x, x[0], x[0], x[0], x[0], 1e-5))
    back = wire.decode(json.loads(json.dumps(wire.encode(value))))
    assert type(back) is tuple and type(back[0]) is np.ndarray and np.array_equal(back[0], x)
    assert type(back[1]) is np.float32 and back[2] == 2**60 and np.isnan(back[3])
    assert type(back[6]) is BatchNormCache and back[6].eps == 1e-5
    # Anything else arrives as a stand-in that only carries its type's name.
    assert type(wire.decode(wire.encode(x.view(np.matrix)))).__name__ == "matrix"
    assert isinstance(wire.decode(wire.encode(object())), wire.Opaque)
    bad = [{"__nd__": ["<f8", [3], "AAAA"]},  # shape does not match the bytes
           {"__nd__": ["|O", [1], "AAAAAAAAAAA="]},  # object dtype
           {"__nd__": ["<f8", [-1], ""]}, {"__evil__": 1}, {"a": 1, "b": 2}]
    for data in bad:
        with pytest.raises(wire.WireError):
            wire.decode(data)


def test_exact_copies_survive_renamed_files_and_docstrings():
    import minibn.functional as F

    source = inspect.getsource(F.batchnorm_forward).replace('"""', '"""Mine. ', 1)
    namespace = {}
    exec(compile("import numpy as np\n" + source, "<my cell>", "exec"), namespace)
    assert copies.function_fingerprint(namespace["batchnorm_forward"]) == \
        copies.function_fingerprint(F.batchnorm_forward)
    renamed = source.replace("x_hat", "xh")
    assert copies.fingerprints_in_source(renamed, ["batchnorm_forward"])["batchnorm_forward"] != \
        copies.function_fingerprint(F.batchnorm_forward)


def test_grading_refuses_without_a_sandbox(tmp_path, monkeypatch, capsys):
    from minibn.grading import __main__ as cli

    (tmp_path / "nbgrader_config.py").write_text("c = get_config()\n")
    (tmp_path / "submitted" / "s" / "00-mini").mkdir(parents=True)
    (tmp_path / "submitted" / "s" / "00-mini" / "00-mini.ipynb").write_text("{}")
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    monkeypatch.setattr(sandbox, "_probed", {})
    assert cli.main(["grade", "--course", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to grade without a sandbox" in err and "apt-get install bubblewrap" in err
    assert "--unsafe-no-sandbox" in err


def test_sandbox_hides_the_course_and_the_secret(tmp_path):
    """Case 23: learner code in the sandbox finds no course file, no secret and no host process."""
    (tmp_path / "secret.txt").write_text("s3cret")
    probe = ("import os\n"
             f"seen = [os.path.exists({str(tmp_path / 'secret.txt')!r}), os.path.exists({str(ROOT / 'solutions')!r}),\n"
             "        any('SECRET' in k for k in os.environ), len([p for p in os.listdir('/proc') if p.isdigit()]) < 10,\n"
             "        os.path.exists(os.path.join(os.path.dirname(__import__('minibn').__file__), 'checks'))]\n")
    check = "assert seen == [False, False, False, True, True], seen\n"
    plan = {"cells": [{"label": "probe", "source": probe, "learners": True}],
            "tests": [{"grade_id": "test_sandbox", "points": 1.0, "source": check, "names": rg.names_used(check)}],
            "learner_functions": []}
    env = {**os.environ, "MINIBN_GRADING_SECRET": "s3cret"}
    result = rg.regrade(plan, student="c23-files", env=env, cell_timeout=20.0)
    assert result["tests"]["test_sandbox"]["passed"], result
    unsafe = rg.regrade(plan, student="c23-files", env=env, cell_timeout=20.0, sandboxed=False)
    assert not unsafe["tests"]["test_sandbox"]["passed"]  # without the sandbox the course is in reach
    assert any(f["kind"] == "unsafe" for f in unsafe["flags"])


def test_similarity_sees_through_renaming_but_not_different_code():
    import minibn.functional as F

    mine = inspect.getsource(F.batchnorm_forward)
    renamed = mine.replace("x_hat", "normalized").replace("mean", "mu").replace("# ", "# my note ")
    other = inspect.getsource(F.batchnorm_backward_graph)
    best = similarity.compare({("a", "l"): renamed, ("b", "l"): other}, {"reference": mine})
    assert best[("a", "l")][0] == "source: reference" and best[("a", "l")][1] > 0.9
    assert best[("b", "l")][1] < 0.5


def test_an_answer_that_is_not_data_is_computed_in_the_sandbox_and_judged_in_the_grader():
    """A function returning a torch module (lesson 07's block) cannot cross as data: its
    exercise's compute half runs next to it in the sandbox, which holds no secret, and the judge
    half in the grader, which the learner's process cannot reach. (tests/grading/test_objects.py
    grades lessons 04, 06 and 07 this way end to end.)"""
    good = ("import os\nimport torch\nfrom torch import nn\n\n"
            "def conv_bn_relu(c_in, c_out):\n"
            "    if os.environ.get('MINIBN_GRADING_SECRET'):\n        return nn.Sequential(nn.ReLU())\n"
            "    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())\n")
    wrong = ("import torch\nfrom torch import nn\nfrom minibn.checks import convnet\n\n"
             "def conv_bn_relu(c_in, c_out):\n    return nn.Sequential(nn.ReLU())\n\n"
             "def _yes(*args, **kwargs):\n    return None\n\n"
             "convnet._block_judge.__code__ = _yes.__code__\n")
    check = ("from minibn.checks.convnet import check_conv_bn_relu, check_conv_bn_relu_randomized\n"
             "check_conv_bn_relu(conv_bn_relu)\ncheck_conv_bn_relu_randomized(conv_bn_relu)\n")
    env = {**os.environ, "MINIBN_GRADING_SECRET": "s3cret"}
    for source, passes in ((good, True), (wrong, False)):
        plan = {"cells": [{"label": "block", "source": source, "learners": True}],
                "tests": [{"grade_id": "t", "points": 1.0, "source": check, "names": rg.names_used(check)}],
                "learner_functions": ["conv_bn_relu"]}
        result = rg.regrade(plan, student="s", env=env, cell_timeout=30.0)
        assert result["tests"]["t"]["passed"] is passes, result
    assert "layers ['relu'], expected ['conv', 'bn', 'relu']" in result["tests"]["t"]["error"]


def test_an_argument_updated_in_place_and_returned_is_the_callers():
    cell = "def update(rm, x):\n    rm += x\n    return rm, rm.copy()\n"
    check = ("import numpy as np\na = np.zeros(3)\nsame, copy = update(a, np.ones(3))\n"
             "assert same is a and a.sum() == 3 and copy is not a\n")
    plan = {"cells": [{"label": "u", "source": cell, "learners": True}],
            "tests": [{"grade_id": "t", "points": 1.0, "source": check, "names": rg.names_used(check)}],
            "learner_functions": ["update"]}
    result = rg.regrade(plan, student="s", cell_timeout=20.0)
    assert result["tests"]["t"]["passed"], result


def test_secret_file_is_created_private(tmp_path, monkeypatch):
    from minibn.grading import grade

    monkeypatch.delenv("MINIBN_GRADING_SECRET", raising=False)
    old = os.umask(0)  # the most permissive umask: the file must still never be readable by others
    try:
        secret = grade.grading_secret(tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / grade.SECRET_FILE).stat().st_mode & 0o777 == 0o600
    assert grade.grading_secret(tmp_path) == secret


def test_module_guard_resets_only_the_patched_module(monkeypatch):
    import types

    from minibn.grading.learner_side import ModuleGuard

    a, b = types.ModuleType("minibn._guard_a"), types.ModuleType("minibn._guard_b")
    a.f = b.g = len
    monkeypatch.setitem(sys.modules, a.__name__, a)
    monkeypatch.setitem(sys.modules, b.__name__, b)
    guard = ModuleGuard()
    a.f = abs  # a patch
    sub = types.ModuleType("minibn._guard_b.sub")
    b.sub = sub  # a submodule imported lazily: not a patch, must survive
    assert guard.restore() == ["minibn._guard_a.f replaced"]
    assert a.f is len and b.sub is sub


FORK_BOMB = '''import os, time

def _bomb():
    n = 0
    while n < 3000:
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
    return n

_N = _bomb()

def forks():
    return _N
'''


def test_a_fork_bomb_is_capped_per_sandbox_and_hurts_no_one_else():
    """RLIMIT_NPROC counts every task of the grading user and never binds root, so each sandbox
    gets a pids cgroup of its own: the bomb stops at its own pids.max while its children live,
    and meanwhile the grader can still fork and another student's re-grade still passes."""
    import threading

    from minibn.grading import sandbox

    if sandbox.pids_cgroup_parent() is None:
        pytest.skip("this machine gives the grader no pids cgroup (cgroup v1 pids or delegated v2)")
    check = ("import subprocess\nassert subprocess.run(['true']).returncode == 0\n"
             "n = forks()\nassert 10 < n < 64, n\n")
    bomb = {"cells": [{"label": "bomb", "source": FORK_BOMB, "learners": True}],
            "tests": [{"grade_id": "t", "points": 1.0, "source": check, "names": rg.names_used(check)}],
            "learner_functions": ["forks"], "processes": 64}
    honest_cell = "def double(x):\n    return 2 * x\n"
    honest_check = "import numpy as np\nassert (double(np.ones(3)) == 2).all()\n"
    honest = {"cells": [{"label": "d", "source": honest_cell, "learners": True}],
              "tests": [{"grade_id": "t", "points": 1.0, "source": honest_check,
                         "names": rg.names_used(honest_check)}],
              "learner_functions": ["double"], "processes": 64}
    other = {}
    neighbour = threading.Thread(target=lambda: other.update(rg.regrade(honest, student="b", cell_timeout=30.0)))
    neighbour.start()
    result = rg.regrade(bomb, student="a", cell_timeout=30.0)
    neighbour.join()
    assert result["tests"]["t"]["passed"], result
    assert other["tests"]["t"]["passed"], other


def test_static_provenance_proves_only_a_plain_def_nothing_rebinds():
    """Where the notebook's text proves the graded name is the learner's own def, the grader
    decides provenance itself; anything that could rebind the name leaves it unproven."""
    from minibn.grading.integrity import static_provenance

    def cells(*sources, learners=True):
        return [{"source": s, "learners": learners} for s in sources]

    plain = "def f(x):\n    return x\n\nclass G:\n    pass\n"
    assert static_provenance(cells(plain), ["f", "G"]) == {"f": True, "G": True}
    assert static_provenance(cells(plain + "G = f\n"), ["f", "G"]) == {"f": True}
    unproven = ["from minibn.functional import f\n", "@wraps\ndef f(x):\n    return x\n",
                plain + "exec('f = 3')\n", plain + "globals()['f'] = 3\n", plain + "f.__code__ = None\n",
                plain + "def h():\n    global f\n    f = 1\n", plain + "import sys\n",
                plain + "for f in range(3):\n    pass\n"]
    for source in unproven:
        assert "f" not in static_provenance(cells(source), ["f", "G"]), source
    # the def must be in a learner cell; the lesson's own cells do not count
    assert static_provenance(cells(plain, learners=False), ["f"]) == {}
