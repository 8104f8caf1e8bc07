"""Every solution notebook follows the course conventions and runs headless, end to end.

The notebooks are found on disk, so a lesson someone adds under solutions/ is covered without
touching this file. The fixture course used by the grading tests is held to the same rules.
"""
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minibn.grading import conventions
from minibn.grading import notebooks as nbs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = nbs.notebooks_under(ROOT / "solutions") + nbs.notebooks_under(
    ROOT / "tests" / "fixtures" / "mini-course" / "solutions")
IDS = [p.relative_to(ROOT).as_posix() for p in NOTEBOOKS]
TIMEOUT_S = 300


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_follows_conventions(path):
    found = conventions.problems(nbs.read(path))
    assert not found, f"{path.relative_to(ROOT)} breaks the notebook conventions:\n  " + "\n  ".join(found)


@pytest.fixture
def headless_env(tmp_path, monkeypatch):
    """Fast, static, one thread, and no writes to the home directory (kernels inherit this)."""
    for var, value in {"MINIBN_FAST": "1", "MINIBN_STATIC": "1", "OMP_NUM_THREADS": "1",
                       "MKL_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}.items():
        monkeypatch.setenv(var, value)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "MPLCONFIGDIR",
                "IPYTHONDIR"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.delenv("MINIBN_GRADING_SECRET", raising=False)
    return tmp_path


# A notebook's re-grade runs in subprocesses, so it is started beside the headless run of the same
# notebook, on the core that run leaves idle (pytest itself is serial); its test reads the result.
_REGRADE_POOL = ThreadPoolExecutor(1)
_REGRADES = {}


def _regrade(path):
    from minibn.grading import regrade as rg

    source = nbs.read(path)
    plan = rg.build_plan(source, source, conventions.learner_functions(source))
    env = {"MINIBN_GRADING_SECRET": "test-secret", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    return rg.regrade(plan, student="self-check", env=env, cell_timeout=120, self_check=True)


def _start_regrade(path):
    if path not in _REGRADES:
        _REGRADES[path] = _REGRADE_POOL.submit(_regrade, path)
    return _REGRADES[path]


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_runs_headless(path, headless_env):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    _start_regrade(path)
    workdir = headless_env / "lesson"
    shutil.copytree(path.parent, workdir, ignore=shutil.ignore_patterns("backups", ".ipynb_checkpoints"))
    nb = nbs.read(workdir / path.name)
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    start = time.monotonic()
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{path.relative_to(ROOT)} raised while running headless:\n{err}")
    elapsed = time.monotonic() - start
    assert elapsed < TIMEOUT_S, f"{path.name} took {elapsed:.0f} s in fast mode"
    for i, cell in enumerate(nb.cells):
        if nbs.is_test(cell):
            stderr = [o.get("text", "") for o in cell.outputs
                      if o.output_type == "stream" and o.name == "stderr"]
            assert not stderr, (f"test cell {cell.get('id')} wrote to stderr, which nbgrader scores "
                                f"0:\n{''.join(stderr)[:2000]}")
            values = [o for o in cell.outputs if o.output_type == "execute_result"]
            assert not values, f"test cell {cell.get('id')} left a value nbgrader would read as the score"
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"cell {i} ({cell.get('id')}) has an error output: {errors[0].get('ename')}"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_solution_scores_full_marks_in_the_regrade(path):
    """The grade is the out-of-process re-grade's, not the notebook's run: there, the instructor's
    own notebook gets every test cell's points. An exercise whose argument is not data (a model,
    a function) only reaches the sandbox through its check's compute/judge halves, and a check
    without them scores 0 here while passing in the notebook."""
    result = _start_regrade(path).result(timeout=280)
    short = {gid: (t["score"], t["points"], (t.get("error") or "")[:300])
             for gid, t in result["tests"].items()}
    assert result["tests"] and all(t["score"] == t["points"] > 0 for t in result["tests"].values()), short
    assert result["flags"] == [], result["flags"]
