"""Running nbgrader's command line from Python, in a course folder of our choosing.

Every call is a fresh ``python -m nbgrader`` process (about 3 s of start-up): nbgrader keeps
global state (its gradebook connection, traitlets config), so in-process calls would leak from
one course folder into the next.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class NbgraderError(RuntimeError):
    pass


def nbgrader_env(extra=None):
    """The environment for nbgrader and the kernels it starts.

    nbgrader runs ``alembic`` (the gradebook migrations) as a program, so the interpreter's own
    ``bin`` goes first on PATH; kernels inherit one math thread (two cores shared by graders).
    """
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run(args, root, env=None, timeout=None, check=True):
    """Run ``nbgrader <args>`` with ``root`` as course directory; return its combined output.

    Raises ``NbgraderError`` with the output's tail when nbgrader exits non-zero, unless
    ``check`` is false (autograde exits 1 when any one submission failed; the caller sorts it out).
    """
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={root}"]
    proc = subprocess.run(cmd, cwd=root, env=env or nbgrader_env(), capture_output=True,
                          text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise NbgraderError(f"`nbgrader {' '.join(args)}` failed in {root} "
                            f"(exit {proc.returncode}):\n{output[-4000:]}")
    return output
