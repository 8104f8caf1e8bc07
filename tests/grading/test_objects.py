"""Answers that are not arrays, judged outside the learner's process (issue 11).

Lesson 04's learner objects are classes (an autograd ``Function``, a module), lesson 07's are
functions that build or take torch modules, lesson 06's return CUDA C source that the checks
compile and run. Their exercises split each case into ``compute`` (in the sandbox, next to the
learner's object) and ``judge`` (in the grader); lesson 06's kernels run in a sandboxed worker of
their own. Each lesson is graded here through the real re-grade (``regrade.regrade``, bubblewrap
included) from its instructor's notebook: the solution keeps full marks, and an attack that
forged the old in-sandbox verdict scores 0. Each attack is first shown to beat the checks when
they run in the learner's own process, as they did before this design.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from minibn.grading import conventions
from minibn.grading import notebooks as nbs
from minibn.grading import regrade as rg

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "objects-secret"

# Every check, comparison and judge function in the learner's process becomes a no-op, in place
# (same objects, so a module snapshot sees nothing). In the old design, where these lessons' test
# cells ran inside the sandbox, that was full marks for wrong code.
NO_OP_CHECKS = '''
import gc as _gc

def _none(*args, **kwargs):
    return None

for _obj in _gc.get_objects():
    if type(_obj) is not type(_none):
        continue
    _name = _obj.__name__
    if type(_obj) is type(_none) and _obj is not _none and (
            _name.startswith(("check", "_check", "assert_", "_judge", "_require")) or _name.endswith(("_judge", "judge"))):
        try:
            _obj.__code__ = _none.__code__
        except ValueError:
            pass
'''

WRONG = {
    "04-conv-torch": '''
import torch
from minibn.checks import conv_torch as _ct  # loaded here so the no-op reaches its functions

class BatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        return x * 0

    @staticmethod
    def backward(ctx, dout):
        return dout * 0, None, None, None

class BatchNorm2d(torch.nn.Module):
    def forward(self, x):
        return x
''',
    "07-convnet": '''
import torch
from minibn.checks import convnet as _cn

def conv_bn_relu(c_in, c_out):
    return torch.nn.Sequential(torch.nn.ReLU())

def evaluate_accuracy(model, x, y, batch_size=256):
    return 1.0

def fold_model(model):
    return model
''',
    "06-gpu-kernels": '''
from minibn.checks import gpu_kernels as _gk
_ZERO = r"""
extern "C" __global__ void %s(const float* x, float* a, float* b, int N, int C, int HW) { }
"""

def bn_stats_k0_source():
    return _ZERO % "bn_stats_k0"

def bn_stats_k1_source():
    return _ZERO % "bn_stats_k1"
''',
}


def _notebooks(lesson):
    sol = nbs.read(ROOT / "solutions" / lesson / f"{lesson}.ipynb")
    stub = nbs.read(ROOT / "lessons" / lesson / f"{lesson}.ipynb")
    return sol, stub


def _grade(lesson, submitted, *, self_check=False):
    sol, _ = _notebooks(lesson)
    plan = rg.build_plan(sol, submitted, conventions.learner_functions(sol))
    env = {**os.environ, "MINIBN_GRADING_SECRET": SECRET}
    return rg.regrade(plan, student="s-objects", env=env, cell_timeout=60.0, self_check=self_check)


def _with_cell(nb, source):
    nb = nbformat.from_dict(nbformat.reader.reads(nbs.dumps(nb)))
    nb.cells.append(nbformat.v4.new_code_cell(source))
    return nb


_ONE_PROCESS = """
import json, sys
from minibn.grading import notebooks as nbs, regrade as rg
sol, stub, attack = nbs.read(sys.argv[1]), nbs.read(sys.argv[2]), open(sys.argv[3]).read()
namespace = {"__name__": "__main__"}
for cell in stub.cells:
    if cell.cell_type == "code" and not nbs.is_test(cell):
        exec(nbs.python_source(cell.source) if nbs.is_solution(cell) else rg.definitions_only(cell.source), namespace)
exec(attack, namespace)
passed = []
for cell in sol.cells:
    if nbs.is_test(cell):
        try:
            exec(nbs.python_source(cell.source), namespace)
        except Exception:
            continue
        passed.append(nbs.grade_id(cell))
print(json.dumps(passed))
"""


def _in_one_process(lesson, attack, tmp_path):
    """The old verdict: the lesson's test cells run in the namespace the learner's cells ran in
    (a child process: the attack rewrites the checks of whatever process runs it). Returns the
    test cells that raised nothing."""
    (tmp_path / "attack.py").write_text(attack)
    out = subprocess.run([sys.executable, "-c", _ONE_PROCESS, str(ROOT / "solutions" / lesson / f"{lesson}.ipynb"),
                          str(ROOT / "lessons" / lesson / f"{lesson}.ipynb"), str(tmp_path / "attack.py")],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("lesson", ["04-conv-torch", "07-convnet", "06-gpu-kernels"])
def test_solution_keeps_full_marks_through_compute_and_judge(lesson):
    sol, _ = _notebooks(lesson)
    result = _grade(lesson, sol, self_check=True)
    assert result["tests"] and all(t["score"] == t["points"] > 0 for t in result["tests"].values()), result
    assert result["flags"] == []


@pytest.mark.parametrize("lesson", ["04-conv-torch", "07-convnet", "06-gpu-kernels"])
def test_no_op_checks_in_the_learner_process_score_zero(lesson, tmp_path):
    attack = WRONG[lesson] + NO_OP_CHECKS
    beaten = _in_one_process(lesson, attack, tmp_path)
    assert beaten, "the attack must beat the checks run in the learner's own process"
    _, stub = _notebooks(lesson)
    result = _grade(lesson, _with_cell(stub, attack))
    scores = {gid: t["score"] for gid, t in result["tests"].items()}
    assert set(beaten) <= set(scores) and all(scores[gid] == 0 for gid in beaten), result["tests"]


KERNEL_SEES_THE_GRADER = '''
_K0 = bn_stats_k0_source_solution()
_PROBE = r"""
extern "C" char* getenv(const char*) noexcept;
extern "C" int access(const char*, int) noexcept;
"""

def bn_stats_k0_source():
    # Correct, unless the kernel can see the grader's environment or the course's files.
    return _PROBE + _K0.replace("if (c >= C) return;", (
        "if (c >= C) return;\\n"
        "    if (getenv(\\"MINIBN_GRADING_SECRET\\") || access(\\"%s\\", 0) == 0) { mean[c] = 1e6f; return; }"))
'''


def test_learner_cuda_c_runs_in_a_sandbox_of_its_own():
    """A kernel that breaks itself when it can see the secret or the solutions folder: run by the
    grader it would fail; run by the sandboxed kernel worker it passes."""
    lesson = "06-gpu-kernels"
    sol, stub = _notebooks(lesson)
    solution_k0 = next(c.source for c in sol.cells if nbs.grade_id(c) == "bn_stats_k0_source")
    helper = nbs.python_source(solution_k0).replace("def bn_stats_k0_source", "def bn_stats_k0_source_solution")
    attack = helper + textwrap.dedent(KERNEL_SEES_THE_GRADER).replace("%s", str(ROOT / "solutions"))
    submitted = _with_cell(stub, attack)
    namespace = {}
    exec(attack, namespace)
    from minibn.checks.gpu_kernels import check_thread_per_channel

    os.environ["MINIBN_GRADING_SECRET"] = SECRET
    try:  # the same kernel, run in this (the grader's) process, sees both
        with pytest.raises(AssertionError, match="mean is wrong"):
            check_thread_per_channel(namespace["bn_stats_k0_source"])
    finally:
        del os.environ["MINIBN_GRADING_SECRET"]
    result = _grade(lesson, submitted)
    k0 = result["tests"]["test_bn_stats_k0_source"]
    assert k0["score"] == k0["points"] > 0, k0
