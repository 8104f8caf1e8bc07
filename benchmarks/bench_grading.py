"""Grading throughput: seconds per submission of lesson 01, serial vs parallel.

Grades ``--n`` copies (default 200) of the lesson 01 solution notebook, each as its own student,
three ways in the same run, interleaved over ``--repeats``:

- ``nbgrader``: plain ``nbgrader autograde`` (serial, in-kernel only): the peer;
- ``minibn x1``: ``minibn.grading.grade`` with one worker (autograde in the bubblewrap sandbox +
  the re-grade, its learner side sandboxed and its verdict in a grader process + integrity scans +
  similarity + feedback);
- ``minibn xK``: the same with K workers (default 2; ``make grade`` uses one more than the CPUs,
  3 on 2 cores).

Prints seconds per submission (min over repeats) and each one's ratio to the peer. The fixed
costs (nbgrader start-up, generating the lesson, feedback) are included: they are what an
instructor waits for. While each mode runs, a progress bar with the elapsed time and an ETA goes
to stderr (``make grade``'s own for minibn; for nbgrader, one step per autograded notebook).

    .venv/bin/python benchmarks/bench_grading.py [--n 200] [--workers 2] [--repeats 1]
                                                [--modes peer,x1,parallel]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from minibn.grading import grade, nbgrader_cli

ROOT = Path(__file__).resolve().parents[1]
LESSON = "01-normalize"


def make_course(root, n):
    shutil.copy(ROOT / "nbgrader_config.py", root / "nbgrader_config.py")
    shutil.copytree(ROOT / "solutions" / LESSON, root / "solutions" / LESSON,
                    ignore=shutil.ignore_patterns("backups", ".ipynb_checkpoints"))
    notebook = root / "solutions" / LESSON / f"{LESSON}.ipynb"
    for i in range(n):
        dest = root / "submitted" / f"student{i:03d}" / LESSON
        dest.mkdir(parents=True)
        shutil.copy(notebook, dest / notebook.name)


def _log(label):
    return lambda line, **_: print(f"{label}: {line}", file=sys.stderr, flush=True)


def _watch_autograded(course, n, label, stop):
    """nbgrader prints no progress: count the autograded notebooks as they appear."""
    pairs = [(p.name, LESSON) for p in sorted((course / "submitted").iterdir())]
    grade._count_autograded(course, pairs, grade._Progress(n, _log(label)), stop)


def plain_nbgrader(course):
    env = nbgrader_cli.nbgrader_env({"MINIBN_FAST": "1", "MINIBN_STATIC": "1", "MPLBACKEND": "Agg",
                                     "MINIBN_GRADING_SECRET": "bench"})
    nbgrader_cli.run(["generate_assignment", LESSON, "--force"], course, env=env)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_autograded, daemon=True,
                               args=(course, len(list((course / "submitted").iterdir())), "nbgrader", stop))
    watcher.start()
    try:
        nbgrader_cli.run(["autograde", LESSON, "--force"], course, env=env, check=False)
    finally:
        stop.set()
        watcher.join()


def minibn_grade(course, workers):
    # Every submission is the instructor's notebook: an exact copy of the solution, expected here.
    students = [p.name for p in (course / "submitted").iterdir()]
    grade.grade(course, workers=workers, secret="bench", log=_log(f"minibn x{workers}"),
                self_check_students=students)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="submissions (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel mode (default 2)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--modes", default="peer,x1,parallel",
                        help="which of peer, x1, parallel to run (default all three; without the "
                             "peer there is no ratio, only each mode's time)")
    args = parser.parse_args()
    if not (ROOT / "solutions" / LESSON).is_dir():
        sys.exit(f"solutions/{LESSON} is missing")
    every = {
        "peer": ("nbgrader autograde (peer)", plain_nbgrader),
        "x1": ("minibn grade x1", lambda c: minibn_grade(c, 1)),
        "parallel": (f"minibn grade x{args.workers}", lambda c: minibn_grade(c, args.workers)),
    }
    chosen = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(every))
    if unknown or not chosen:
        sys.exit(f"--modes takes a comma-separated subset of {', '.join(every)}; got {args.modes!r}")
    modes = dict(every[m] for m in every if m in chosen)
    best = {name: float("inf") for name in modes}
    for _ in range(args.repeats):
        for name, run in modes.items():
            with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
                make_course(Path(tmp), args.n)
                start = time.perf_counter()
                run(Path(tmp))
                best[name] = min(best[name], time.perf_counter() - start)
    peer = best.get("nbgrader autograde (peer)")
    print(f"{args.n} submissions of {LESSON}, {os.cpu_count()} CPU(s), min of {args.repeats} repeat(s)")
    print(f"{'mode':<28}{'total s':>9}{'s/submission':>14}{'vs peer':>9}")
    for name, seconds in best.items():
        ratio = f"{seconds / peer:>9.2f}" if peer else f"{'n/a':>9}"
        print(f"{name:<28}{seconds:>9.1f}{seconds / args.n:>14.2f}{ratio}")


if __name__ == "__main__":
    main()
