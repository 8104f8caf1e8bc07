"""The out-of-kernel re-grade: the grade comes from here, not from the learner's kernel.

nbgrader runs the test cells in the kernel that ran the learner's code, so a solution cell can
patch the checker, hide errors or call the reference. The re-grade takes the learner's code out
of the submitted notebook and runs the lesson's own test cells (hidden tests included, from the
instructor's ``solutions/`` notebook) against it in a fresh interpreter:

- ``python -I`` in an empty folder: extra submitted files (``numpy.py``, ``minibn/``) are never
  copied there and the current folder is not on ``sys.path``;
- the learner's solution cells and the cells they added run in full; the lesson's own code
  cells contribute only their definitions (imports, ``def``, ``class``, constant assignments),
  so the names a solution relies on exist but demos and training runs are skipped;
- per-cell time limit (an alarm), a process time limit, a memory limit, output discarded;
- a network namespace of its own (Linux; as root, or unprivileged through a user namespace): no
  interface is up there, loopback included, so learner code can reach no server;
- after every cell and test the dictionaries of ``numpy`` and ``minibn`` modules are compared with
  a snapshot taken before any learner code ran and restored: a patch is flagged, and a test during
  which something was patched scores 0;
- provenance: each function the lesson asks for must be defined by notebook code, and a call into
  the reference implementation of that same function from learner code, seen by a profile hook
  during the checks, is delegation: that exercise's tests score 0.

``regrade(plan, ...)`` is the parent side; ``python -m minibn.grading.regrade PLAN RESULT`` the child.
"""
from __future__ import annotations

import ast
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from minibn.grading import notebooks as nbs

MEMORY_LIMIT_BYTES = 8 * 2**30
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


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


def names_used(source):
    try:
        tree = ast.parse(nbs.python_source(source))
    except SyntaxError:
        return []
    return sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)})


def match_cells(source_nb, submitted_nb):
    """Pair the submitted cells with the lesson's: by nbgrader grade_id, else by cell id.

    Returns ``{index in submitted: source cell or None}`` for every submitted cell.
    """
    by_gid = {nbs.grade_id(c): c for c in source_nb.cells if nbs.grade_id(c)}
    by_id = {c.get("id"): c for c in source_nb.cells if c.get("id")}
    pairs = {}
    for i, cell in enumerate(submitted_nb.cells):
        src = by_gid.get(nbs.grade_id(cell)) if nbs.grade_id(cell) else None
        pairs[i] = src if src is not None else by_id.get(cell.get("id"))
    return pairs


def build_plan(source_nb, submitted_nb, learner_functions):
    """What the child runs: the learner's code cells, then the lesson's test cells in full."""
    pairs = match_cells(source_nb, submitted_nb)
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
    tests = [{"grade_id": nbs.grade_id(c), "points": float(nbs.meta(c).get("points", 0)),
              "source": nbs.python_source(c.source), "names": names_used(c.source)}
             for c in source_nb.cells if nbs.is_test(c)]
    return {"cells": cells, "tests": tests, "learner_functions": sorted(learner_functions)}


def regrade(plan, *, student, env=None, cell_timeout=60.0):
    """Run ``plan`` in a fresh, isolated interpreter; return the child's result dict.

    The result holds ``tests`` (grade_id -> {"passed", "score", "points", "error"}) and ``flags``
    (a list of {"kind", "detail"}). A test the child never reached (a crash, the process time
    limit) scores 0 with the reason given.
    """
    env = dict(os.environ if env is None else env)
    env.update({"MINIBN_STUDENT_ID": student, "PYTHONDONTWRITEBYTECODE": "1",
                "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})
    budget = cell_timeout * (len(plan["cells"]) + len(plan["tests"])) + 60
    with tempfile.TemporaryDirectory(prefix="minibn-regrade-") as tmp:
        tmp = Path(tmp)
        workdir = tmp / "work"
        workdir.mkdir()
        (tmp / "plan.json").write_text(json.dumps({**plan, "cell_timeout": cell_timeout}))
        result_path = tmp / "result.json"
        cmd = [sys.executable, "-I", "-m", "minibn.grading.regrade", str(tmp / "plan.json"), str(result_path)]
        crash = None
        try:
            proc = subprocess.run(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  timeout=budget, preexec_fn=_limits)
            if proc.returncode != 0:
                crash = f"the re-grade process exited with status {proc.returncode}"
        except subprocess.TimeoutExpired:
            crash = f"the re-grade process ran past its {budget:.0f} s limit"
        except subprocess.SubprocessError as err:
            raise RuntimeError(
                "could not start the re-grade process in a network namespace of its own (Linux "
                "network and user namespaces are needed; grade as root or enable unprivileged user "
                f"namespaces): {err}") from err
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
    return result


def _limits():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    os.setsid()
    _isolate_network()


def _isolate_network():
    """Move this (child) process into a new network namespace, whose only interface is a loopback
    that is down. Root may do that directly; anyone else inside a new user namespace, which keeps
    the process's file permissions as they were."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0 and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare: cannot create a network namespace")


# ---------------------------------------------------------------- child: run the plan

class _CellTimeout(BaseException):
    """Raised by the alarm; a BaseException so a learner's ``except Exception`` cannot swallow it."""


def _reference_files():
    """Files of minibn's reference implementations (not the checks, course or grading code)."""
    import minibn

    root = Path(minibn.__file__).parent
    skip = {"checks", "grading", "widgets", "experiments"}
    return {str(p) for p in root.rglob("*.py")
            if p.relative_to(root).parts[0] not in skip and p.name != "course.py"}


class _ModuleGuard:
    """Snapshot of the namespaces learner code could patch to fool a check, and their restore."""

    # What a check's verdict depends on: numpy, minibn, the builtins, and the seed derivation.
    PREFIXES = ("numpy", "minibn", "builtins", "hmac", "hashlib")

    def __init__(self):
        self.modules = {name: mod for name, mod in list(sys.modules.items())
                        if mod is not None and name.split(".")[0] in self.PREFIXES}
        self.snapshot = {name: dict(vars(mod)) for name, mod in self.modules.items()}
        self.classes = {}
        for name, mod in self.modules.items():
            if name.startswith("minibn"):
                for value in vars(mod).values():
                    if isinstance(value, type) and value.__module__.startswith("minibn"):
                        self.classes[value] = dict(vars(value))
        self.environ = {k: v for k, v in os.environ.items() if k.startswith(("MINIBN_", "NBGRADER"))}

    def restore(self):
        """Undo any change; return a description of each one (empty when nothing changed)."""
        changed = []
        for name, mod in self.modules.items():
            now, then = vars(mod), self.snapshot[name]
            for key in set(now) | set(then):
                if key not in then:
                    value = now[key]
                    if getattr(value, "__name__", None) == f"{name}.{key}":
                        continue  # a submodule imported lazily, not a patch
                    changed.append(f"{name}.{key} added")
                elif now.get(key, _MISSING) is not then[key]:
                    changed.append(f"{name}.{key} replaced")
            if changed:
                now.clear()
                now.update(then)
        for cls, then in self.classes.items():
            for key in set(vars(cls)) | set(then):
                if vars(cls).get(key, _MISSING) is not then.get(key, _MISSING):
                    changed.append(f"{cls.__module__}.{cls.__name__}.{key} replaced")
                    if key in then:
                        setattr(cls, key, then[key])
                    else:
                        delattr(cls, key)
        for key in set(self.environ) | {k for k in os.environ if k.startswith(("MINIBN_", "NBGRADER"))}:
            if os.environ.get(key) != self.environ.get(key):
                changed.append(f"os.environ[{key!r}] changed")
                if key in self.environ:
                    os.environ[key] = self.environ[key]
                else:
                    del os.environ[key]
        return changed


_MISSING = object()


def _child_main(plan_path, result_path):
    import signal

    plan = json.loads(Path(plan_path).read_text())
    timeout = float(plan["cell_timeout"])

    def on_alarm(signum, frame):
        raise _CellTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    # Import everything the checks use before any learner code runs, then take the snapshot.
    import numpy  # noqa: F401
    import numpy.testing  # noqa: F401
    import minibn  # noqa: F401
    import minibn.checks._core  # noqa: F401

    for test in plan["tests"]:
        for node in ast.walk(ast.parse(test["source"])):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minibn"):
                __import__(node.module)
    reference_files = _reference_files()
    guard = _ModuleGuard()
    tag = f"<submission {os.urandom(6).hex()}"
    result = {"tests": {}, "flags": []}
    flags = result["flags"]

    def save():
        Path(result_path).write_text(json.dumps(result))

    def timed(fn):
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            fn()
            return None
        except _CellTimeout:
            return f"timed out after {timeout:g} s"
        except BaseException as err:  # the learner's error, SystemExit included
            return f"{type(err).__name__}: {str(err)[:1000]}"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    for cell in plan["cells"]:
        def run_cell(cell=cell):
            exec(compile(cell["source"], f"{tag} {cell['label']}>", "exec"), namespace)
        timed(run_cell)  # an error here shows up in the tests that need what the cell defines
        changed = guard.restore()
        if changed:
            flags.append({"kind": "tamper", "detail": f"cell {cell['label']} patched "
                          + ", ".join(sorted(changed)[:5])})
    save()

    delegated = {}
    for name in plan["learner_functions"]:
        fn = namespace.get(name)
        for _ in range(10):  # a decorated function (functools.wraps); bounded against cycles
            fn = getattr(fn, "__wrapped__", fn)
        code = getattr(fn, "__code__", None)
        if fn is not None and (code is None or not code.co_filename.startswith(tag)):
            origin = getattr(code, "co_filename", None) or type(fn).__name__
            delegated[name] = f"{name} is not defined by the notebook's code (it comes from {origin})"

    hits = []

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename in reference_files and code.co_name in plan["learner_functions"]:
            caller = frame.f_back
            while caller is not None:
                if caller.f_code.co_filename.startswith(tag):
                    hits.append(code.co_name)
                    return
                caller = caller.f_back

    for test in plan["tests"]:
        gid, points = test["grade_id"], test["points"]
        blocked = sorted(name for name in test["names"] if name in delegated)
        if blocked:
            result["tests"][gid] = {"passed": False, "score": 0.0, "points": points,
                                    "error": "delegation: " + "; ".join(delegated[n] for n in blocked)}
            save()
            continue
        hits.clear()

        def run_test(test=test):
            sys.setprofile(profile)
            try:
                exec(compile(test["source"], f"<test {gid}>", "exec"), namespace)
            finally:
                hooked = sys.getprofile() is profile
                sys.setprofile(None)
                if not hooked:
                    raise RuntimeError("the profile hook was removed during the test")
        error = timed(run_test)
        changed = guard.restore()
        if changed:
            flags.append({"kind": "tamper", "detail": f"during {gid}: " + ", ".join(sorted(changed)[:5])})
            error = error or "a module was patched while the check ran"
        if hits:
            names = sorted(set(hits))
            flags.append({"kind": "delegation",
                          "detail": f"during {gid}: learner code called minibn's reference {', '.join(names)}"})
            error = error or f"delegation: called minibn's reference {', '.join(names)}"
        result["tests"][gid] = {"passed": error is None, "score": points if error is None else 0.0,
                                "points": points, "error": error}
        save()
    for name, why in delegated.items():
        flags.append({"kind": "delegation", "detail": why})
    save()


if __name__ == "__main__":
    _child_main(sys.argv[1], sys.argv[2])
