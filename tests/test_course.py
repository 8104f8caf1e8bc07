"""``minibn.course``: every source of randomness a lesson uses is seeded, explicitly, and nbgrader's
Validate runs a lesson at the size the grader runs it."""
import random
import subprocess
import sys

import numpy as np

from minibn.course import fast_mode, setup

CODE = """
import sys
from minibn.course import setup
{call}
print("torch" in sys.modules)
{after}
"""


def _run(call, after=""):
    out = subprocess.run([sys.executable, "-c", CODE.format(call=call, after=after)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_torch_true_imports_and_seeds_torch_with_one_thread():
    after = ("import torch; a = float(torch.rand(1)); setup(3, torch=True); b = float(torch.rand(1)); "
             "setup(4, torch=True); c = float(torch.rand(1)); "
             "print(torch.get_num_threads(), a == b, a != c)")
    assert _run("setup(3, torch=True)", after) == ["True", "1", "True", "True"]


def test_numpy_lessons_do_not_pay_for_torch():
    assert _run("setup(0); setup(0, torch=False)") == ["False"]


def test_numpy_and_python_are_seeded():
    setup(7)
    first = (random.random(), np.random.rand())
    setup(7)
    assert (random.random(), np.random.rand()) == first


def test_validate_and_autograde_run_at_grading_size(monkeypatch):
    """Validate in a plain `make lab` session runs what the grader runs (MINIBN_FAST=1)."""
    monkeypatch.delenv("MINIBN_FAST", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert not fast_mode()
    for mode in ("validate", "autograde"):
        monkeypatch.setenv("NBGRADER_EXECUTION", mode)
        assert fast_mode()
    monkeypatch.setenv("MINIBN_FAST", "0")
    assert not fast_mode()
    monkeypatch.delenv("NBGRADER_EXECUTION")
    monkeypatch.setenv("MINIBN_FAST", "1")
    assert fast_mode()
