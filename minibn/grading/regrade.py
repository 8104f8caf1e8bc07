"""The out-of-kernel re-grade: the grade comes from here, not from the learner's kernel.

nbgrader runs the test cells in the kernel that ran the learner's code, so whatever that kernel
reports is the learner's to forge. The re-grade builds a *plan* from the instructor's notebook
and the submission, and hands it to ``minibn.grading.verdict``, a fresh grader process (holding
the secret) that:

- starts the learner's side in the sandbox (``sandbox``: bubblewrap, no network, no course
  files, no secret) and has it run the learner's solution cells and the cells they added in
  full, and of the lesson's own code cells only the definitions (imports, ``def``, ``class``,
  constant assignments), so names a solution relies on exist but demos and training runs are
  skipped;
- runs the lesson's test cells (hidden tests included, from the instructor's ``solutions/``
  notebook) *in the grader*, with each learner function replaced by a proxy that sends the
  call's arguments, as plain data (``wire``), to the sandbox and returns the answer;
- scores 0 a test whose learner function is not the notebook's own, is an exact copy of minibn's
  reference or of the instructor's solution (``copies``), or called the reference.

``regrade(plan, ...)`` is the entry point; ``build_plan`` makes the plan.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from minibn.grading import notebooks as nbs
from minibn.grading import sandbox



# ---------------------------------------------------------------- parent: build the plan, run it

def definitions_only(source):
    """The part of a cell that only defines things: imports, defs, classes, constant assignments."""
    try:
        tree = ast.parse(nbs.python_source(source))
    except SyntaxError:
        return ""
    kept = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef,
                             ast.ClassDef)):
            kept.append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            try:
                ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            kept.append(node)
    return ast.unparse(ast.Module(body=kept, type_ignores=[])) if kept else ""


def _bound_names(node):
    return [a.asname or a.name.split(".")[0] for a in node.names]


def _without_unused_imports(cells):
    """Drop the lesson's own imports that no kept code uses: plotting and explorer modules cost
    the learner's process half a second of CPU per submission, for nothing. A name counts as used
    where any learner cell, or any definition kept from the lesson's cells, refers to it; the
    learner's own cells are never changed (one that does not parse fails when it runs, as it
    would anywhere), and ``import *`` is always kept."""
    used = set()
    for cell in cells:
        try:
            tree = ast.parse(cell["source"])
        except SyntaxError:
            continue
        used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    kept = []
    for cell in cells:
        if not cell["learners"]:
            tree = ast.parse(cell["source"])
            body = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom))
                    or any(a.name == "*" for a in n.names) or set(_bound_names(n)) & used]
            if not body:
                continue
            cell = {**cell, "source": ast.unparse(ast.Module(body=body, type_ignores=[]))}
        kept.append(cell)
    return kept


def names_used(source):
    try:
        tree = ast.parse(nbs.python_source(source))
    except SyntaxError:
        return []
    return sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})


def build_plan(source_nb, submitted_nb, learner_functions):
    """What the child runs: the learner's code cells, then the lesson's test cells in full."""
    pairs = nbs.match_cells(source_nb, submitted_nb)
    cells = []
    for i, cell in enumerate(submitted_nb.cells):
        if cell.cell_type != "code":
            continue
        src = pairs[i]
        if src is not None and nbs.is_test(src) or nbs.is_test(cell):
            continue  # test cells come from the lesson itself, below
        learners = src is None or nbs.is_solution(src)  # a solution cell, or a cell they added
        code = nbs.python_source(cell.source) if learners else definitions_only(cell.source)
        if code.strip():
            cells.append({"label": cell.get("id") or f"cell-{i}", "source": code, "learners": learners})
    cells = _without_unused_imports(cells)
    tests = [{"grade_id": nbs.grade_id(c), "points": float(nbs.meta(c).get("points", 0)),
              "source": nbs.python_source(c.source), "names": names_used(c.source)}
             for c in source_nb.cells if nbs.is_test(c)]
    solutions = [nbs.python_source(c.source) for c in source_nb.cells if nbs.is_solution(c)]
    return {"cells": cells, "tests": tests, "learner_functions": sorted(learner_functions),
            "solution_sources": solutions, "lesson_imports": lesson_imports(source_nb)}


def lesson_imports(source_nb):
    """The import statements of the instructor's own code cells (the names a test may use)."""
    found = []
    for cell in source_nb.cells:
        if cell.cell_type != "code" or nbs.is_test(cell) or nbs.is_solution(cell):
            continue
        try:
            tree = ast.parse(nbs.python_source(cell.source))
        except SyntaxError:
            continue
        found += [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def regrade(plan, *, student, env=None, cell_timeout=60.0, sandboxed=True, self_check=False):
    """Grade ``plan`` in a fresh grader process against a sandboxed learner process.

    Returns ``tests`` (grade_id -> {"passed", "score", "points", "error"}) and ``flags`` (a list
    of {"kind", "detail"}). A test never reached (a crash, the time limit) scores 0 with the
    reason. ``env`` is the grader's environment (it holds the secret; the sandbox never gets it).
    ``self_check``: the submission is the instructor's own notebook, so an exact copy of the
    solution is expected and not zeroed.
    """
    env = dict(os.environ if env is None else env)
    env.update({"MINIBN_STUDENT_ID": student, "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
                "OMP_NUM_THREADS": "1"})
    budget = cell_timeout * (len(plan["cells"]) + 2 * len(plan["tests"])) + 90
    with tempfile.TemporaryDirectory(prefix="minibn-regrade-") as tmp:
        tmp = Path(tmp)
        (tmp / "plan.json").write_text(json.dumps({**plan, "cell_timeout": cell_timeout,
                                                   "unsafe_no_sandbox": not sandboxed, "self_check": self_check}))
        result_path = tmp / "result.json"
        cmd = [sys.executable, "-I", "-m", "minibn.grading.verdict", str(tmp / "plan.json"), str(result_path)]
        crash = None
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, timeout=budget)
            if proc.returncode != 0:
                crash = f"the grader process failed (status {proc.returncode}): {proc.stderr[-2000:]}"
        except subprocess.TimeoutExpired:
            crash = f"the re-grade ran past its {budget:.0f} s limit"
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            result = {"tests": {}, "flags": []}
    for test in plan["tests"]:
        if test["grade_id"] not in result["tests"]:
            result["tests"][test["grade_id"]] = {"passed": False, "score": 0.0, "points": test["points"],
                                                 "error": crash or "not reached"}
    if crash:
        result["flags"].append({"kind": "crash", "detail": crash})
    if not sandboxed:
        result["flags"].append({"kind": "unsafe", "detail": sandbox.UNSAFE_WARNING})
    return result
