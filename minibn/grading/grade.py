"""Grade a class: ``python -m minibn.grading grade`` (``make grade``).

Reads every submission under ``<course>/submitted/<student>/<lesson>/`` and, in a private work
folder so that nothing half-done reaches the course:

1. generates the lessons into a copy of the course gradebook (nbgrader needs the instructor's
   cells, hidden tests included, in the gradebook to restore what a learner changed);
2. splits the students over ``workers`` shards, each with its own copy of that gradebook, and in
   each shard runs ``nbgrader autograde`` (the in-kernel result: what the learner sees), then the
   out-of-kernel re-grade and the integrity scans of each submission (the grade), writes the
   re-graded scores into the shard's gradebook and generates feedback HTML that shows neither
   hidden tests nor tracebacks through them;
3. merges the shards' submission rows into the course gradebook (nothing lost or duplicated),
   copies ``autograded/`` and ``feedback/`` into the course and writes ``grades.csv``
   (student, assignment, score, max_score, flags, kernel_score, needs_manual_grade).

Every process that runs learner code (nbgrader's kernel, the re-grade's learner side) runs in a
bubblewrap sandbox (``sandbox``); grading refuses to start without one unless
``unsafe_no_sandbox`` is set, and then every grade row says so. Hidden cases are drawn from an
HMAC of a secret and the student id: ``MINIBN_GRADING_SECRET``, or else a secret created once in
``<course>/.minibn-grading-secret`` (mode 0600). Only the re-grade's grader process holds it;
neither nbgrader nor any sandbox does. Re-running gives the same grades. Extra submitted files
that could shadow a module (``numpy.py``, ``minibn/``) are not given to the grader, and are flagged.
"""
from __future__ import annotations

import csv
import os
import re
import sys
import secrets
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from minibn.grading import conventions, gradebook, integrity, nbgrader_cli, sandbox, similarity
from minibn.grading import notebooks as nbs
from minibn.grading import regrade as rg

SECRET_FILE = ".minibn-grading-secret"
CSV_FIELDS = ["student", "assignment", "score", "max_score", "flags", "kernel_score", "needs_manual_grade"]

_CONFIG_EXTRA = '''
# --- added by minibn.grading for this grading run ---
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearHiddenTests, Execute,
                                    GetGrades, IgnorePattern, LimitOutput, SaveAutoGrades)
from minibn.grading.feedback import CapOutputs, ExplainScores, HideTestTracebacks
c.Execute.timeout = {timeout}
c.ExecutePreprocessor.timeout = {timeout}
c.OverwriteCells.add_missing_cells = True
c.Autograde.autograde_preprocessors = [Execute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       CapOutputs, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, HideTestTracebacks, ExplainScores, CapOutputs,
                                    CSSHTMLHeaderPreprocessor]
'''
# nbgrader's kernel in the sandbox: it has no network, so it talks to nbgrader over Unix sockets.
_CONFIG_SANDBOX = '''
c.Execute.kernel_name = {kernel!r}
c.Execute.startup_timeout = 180  # a sandboxed kernel on two busy cores can take a while to start
c.KernelManager.transport = "ipc"
'''


@dataclass
class Submission:
    student: str
    assignment: str
    kernel_score: float = 0.0
    score: float = 0.0
    max_score: float = 0.0
    needs_manual_grade: bool = False
    flags: list = field(default_factory=list)
    tests: dict = field(default_factory=dict)

    def row(self):
        return {"student": self.student, "assignment": self.assignment,
                "score": _num(self.score), "max_score": _num(self.max_score),
                "flags": "; ".join(f"{f['kind']}: {f['detail']}" for f in self.flags),
                "kernel_score": _num(self.kernel_score),
                "needs_manual_grade": "yes" if self.needs_manual_grade else "no"}


def _num(x):
    return f"{float(x):g}"


def find_submissions(course, assignments=None, students=None):
    """(student, assignment) for every ``submitted/<student>/<assignment>/`` holding a notebook."""
    root = Path(course) / "submitted"
    found = []
    for folder in sorted(root.glob("*/*")):
        if folder.is_dir() and any(folder.glob("*.ipynb")):
            if (assignments is None or folder.name in assignments) and (
                    students is None or folder.parent.name in students):
                found.append((folder.parent.name, folder.name))
    return found


def grading_secret(course):
    secret = os.environ.get("MINIBN_GRADING_SECRET")
    if secret:
        return secret
    path = Path(course) / SECRET_FILE
    try:  # created 0600 from the start, never readable by others even for a moment
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def default_workers():
    """The number of grading workers when none is given: one more than the CPUs."""
    return (os.cpu_count() or 1) + 1


def grade(course, *, assignments=None, students=None, workers=None, timeout=60.0, secret=None, fast=True,
          csv_path=None, log=print, unsafe_no_sandbox=False, self_check_students=(), similarity_threshold=0.8):
    """Grade every submission in ``course``; returns the list of ``Submission`` results.

    Raises ``sandbox.SandboxUnavailable`` (saying how to install bubblewrap) when no sandbox can
    be built, unless ``unsafe_no_sandbox``. ``self_check_students``: students whose submission
    is the instructor's own notebook (a self-check), for whom an exact copy of the solution is
    expected and not zeroed. ``similarity.csv`` (next to ``grades.csv``) lists, per submission,
    the most similar other submission or source, for review where it reaches ``similarity_threshold``.
    """
    course = Path(course).resolve()
    pairs = find_submissions(course, assignments, students)
    if not pairs:
        log(f"no submissions under {course / 'submitted'}")
        return []
    sandboxed = not unsafe_no_sandbox
    if sandboxed:
        sandbox.probe()
    else:
        log("WARNING: " + sandbox.UNSAFE_WARNING)
    secret = secret or grading_secret(course)
    env = nbgrader_cli.nbgrader_env({"PYTHONDONTWRITEBYTECODE": "1"})
    for key in [k for k in env if "SECRET" in k.upper() or k == "MINIBN_STUDENT_ID"]:
        del env[key]  # nbgrader and its kernels never see the secret
    verdict_env = {**env, "MINIBN_GRADING_SECRET": secret}
    if fast:
        env.update({"MINIBN_FAST": "1", "MINIBN_STATIC": "1", "MPLBACKEND": "Agg"})
    students = sorted({s for s, _ in pairs})
    # One worker more than CPUs by default: each worker also waits (a kernel starting and shutting
    # down, a learner process answering), and the extra one fills those gaps. Measured on 2 cores,
    # lesson 01: 2.67 s per submission with 3 workers, 3.28 s with 2 (benchmarks/bench_grading.py).
    workers = max(1, min(workers or default_workers(), len(students)))
    with tempfile.TemporaryDirectory(prefix="minibn-grade-") as work:
        work = Path(work)
        env["JUPYTER_RUNTIME_DIR"] = str(work / "runtime")
        if sandboxed:
            sandbox.write_kernelspec(work / "jupyter", env_extra={k: env[k] for k in ("MINIBN_FAST", "MINIBN_STATIC")
                                                                   if k in env})
            env["JUPYTER_PATH"] = str(work / "jupyter") + os.pathsep + env.get("JUPYTER_PATH", "")
        base = _prepare_base(course, work / "base", sorted({a for _, a in pairs}), timeout, env, sandboxed)
        grading = {"env": env, "verdict_env": verdict_env, "timeout": timeout, "sandboxed": sandboxed,
                   "self_check": set(self_check_students), "progress": _Progress(2 * len(pairs), log)}
        shards = [[p for p in pairs if p[0] in students[k::workers]] for k in range(workers)]
        log(f"grading {len(pairs)} submission(s) of {len(students)} student(s) with {workers} worker(s)")
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda k: _grade_shard(course, base, work / f"shard-{k}", shards[k], grading),
                                    range(workers)))
        merged = work / "gradebook.db"
        shutil.copy(base / "gradebook.db", merged)
        for k, shard in enumerate(shards):
            gradebook.merge(merged, work / f"shard-{k}" / "gradebook.db", shard)
            for student, assignment in shard:
                for step in ("autograded", "feedback"):
                    _replace_tree(work / f"shard-{k}" / step / student / assignment,
                                  course / step / student / assignment)
        os.replace(merged, course / "gradebook.db")
        sandbox.sweep_cgroups()  # the nbgrader kernels' (they exec into bwrap and leave no parent to do it)
        csv_path = Path(csv_path) if csv_path else course / "grades.csv"
        best = {}
        for assignment in sorted({a for _, a in pairs}):
            best.update(_similarity(course, base, assignment, [p for p in pairs if p[1] == assignment]))
        flagged = similarity.write_report(csv_path.with_name("similarity.csv"), best, similarity_threshold)
        log(f"similarity: {flagged} submission(s) at or above {similarity_threshold:g}, for review, in "
            f"{csv_path.with_name('similarity.csv')}")
    subs = [s for shard in results for s in shard]
    for sub in subs:
        _totals(sub, course / "gradebook.db")
    subs.sort(key=lambda s: (s.assignment, s.student))
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(s.row() for s in subs)
    flagged = sum(1 for s in subs if s.flags)
    log(f"wrote {csv_path}: {len(subs)} submission(s), {flagged} flagged; feedback in {course / 'feedback'}")
    return subs


class _Progress:
    """One line per step (a submission autograded by nbgrader, then re-graded): count, bar,
    elapsed time and an ETA (thread-safe). The ETA is the rate since the first step, so the
    start-up before it (nbgrader, generating the lessons) does not inflate it."""

    def __init__(self, total, log):
        import threading
        import time

        self.total, self.log, self.done, self.start = total, log, 0, time.monotonic()
        self.lock, self.clock, self.first = threading.Lock(), time.monotonic, None

    def step(self, what):
        with self.lock:
            self.done += 1
            now = self.clock()
            elapsed = now - self.start
            if self.first is None:
                self.first = now
            rate = (now - self.first) / (self.done - 1) if self.done > 1 else elapsed / self.done
            eta = rate * (self.total - self.done)
            bar = "#" * (20 * self.done // self.total)
            self.log(f"[{bar:<20}] {self.done}/{self.total} ({what}), {elapsed:.0f} s, ETA {eta:.0f} s")


def _count_autograded(root, pairs, progress, stop):
    """nbgrader autogrades a shard in one call and says nothing meanwhile: a step per autograded
    notebook as it appears (and, once ``stop`` is set, for those that never will)."""
    seen = set()

    def poll():
        for student, assignment in pairs:
            if (student, assignment) not in seen and any((root / "autograded" / student / assignment).glob("*.ipynb")):
                seen.add((student, assignment))
                progress.step(f"{student}/{assignment} autograded")

    while not stop.wait(1.0):
        poll()
    poll()
    for pair in pairs:
        if pair not in seen:
            progress.step(f"{pair[0]}/{pair[1]} not autograded")


def _prepare_base(course, base, assignments, timeout, env, sandboxed):
    base.mkdir(parents=True)
    extra = _CONFIG_EXTRA.format(timeout=float(timeout))
    if sandboxed:
        extra += _CONFIG_SANDBOX.format(kernel=sandbox.KERNEL_NAME)
    (base / "nbgrader_config.py").write_text((course / "nbgrader_config.py").read_text() + extra)
    for a in assignments:
        if not (course / "solutions" / a).is_dir():
            raise FileNotFoundError(f"submissions for {a!r} but no solutions/{a}/ to grade them against")
        shutil.copytree(course / "solutions" / a, base / "solutions" / a,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "backups"))
    if (course / "gradebook.db").exists():
        shutil.copy(course / "gradebook.db", base / "gradebook.db")
    nbgrader_cli.run(["generate_assignment", "*", "--force"], base, env=env)
    return base


def _grade_shard(course, base, root, pairs, grading):
    if not pairs:
        return []
    root.mkdir()
    env = dict(grading["env"])
    shutil.copy(base / "nbgrader_config.py", root / "nbgrader_config.py")
    if grading["sandboxed"]:  # this shard's kernels (one at a time) put their sockets here, and only here
        (root / "sockets").mkdir()
        with open(root / "nbgrader_config.py", "a") as fh:
            fh.write(f"c.KernelManager.ip = {str(root / 'sockets' / 'kernel')!r}\n")
    shutil.copy(base / "gradebook.db", root / "gradebook.db")
    (root / "solutions").symlink_to(base / "solutions", target_is_directory=True)
    for student, assignment in pairs:
        src = course / "submitted" / student / assignment
        shadows = set(integrity.shadowing_files(src))
        shutil.copytree(src, root / "submitted" / student / assignment,
                        ignore=lambda d, names: [n for n in names if n in shadows or n + "/" in shadows
                                                 or n == ".ipynb_checkpoints"] if Path(d) == src else [])
        for path in nbs.notebooks_in(root / "submitted" / student / assignment):
            _repair_grade_ids(path, base / "solutions" / assignment / path.name)
    import threading

    stop = threading.Event()
    counter = threading.Thread(target=_count_autograded, args=(root, pairs, grading["progress"], stop), daemon=True)
    counter.start()
    try:
        log = nbgrader_cli.run(["autograde", "*", "--force"], root, env=env, check=False)
    finally:
        stop.set()
        counter.join()
    results = []
    for student, assignment in pairs:
        sub = Submission(student, assignment)
        if not (root / "autograded" / student / assignment).is_dir():
            why = _autograde_error(log, student)
            sub.flags.append(integrity.flag("autograde-error", "nbgrader could not grade this submission"
                                            + (f" ({why})" if why else "") + "; score from the re-grade"))
        for source_path in nbs.notebooks_in(base / "solutions" / assignment):
            _regrade_notebook(sub, course, base, root, source_path, grading)
        if not grading["sandboxed"]:
            sub.flags.append(integrity.flag("unsafe", sandbox.UNSAFE_WARNING))
        results.append(sub)
        grading["progress"].step(f"{student}/{assignment} re-graded")
    nbgrader_cli.run(["generate_feedback", "*", "--force"], root, env=env, check=False)
    return results


def _learners_code(source_nb, nb):
    pairs = nbs.match_cells(source_nb, nb)
    return "\n".join(c.source for i, c in enumerate(nb.cells) if c.cell_type == "code" and not nbs.is_test(c)
                     and (pairs[i] is None or nbs.is_solution(pairs[i])))


def _similarity(course, base, assignment, pairs):
    """Winnowing similarity of the learners' own code for one lesson (see ``similarity``)."""
    import inspect

    import minibn.functional  # noqa: F401  (the reference of lessons 01-03; others if already loaded)

    entries, sources, boilerplate = {}, {}, []
    for source_path in nbs.notebooks_in(base / "solutions" / assignment):
        source_nb = nbs.read(source_path)
        released = nbs.read(base / "lessons" / assignment / source_path.name)
        boilerplate.append(_learners_code(source_nb, released))
        sources[f"instructor's solution {source_path.name}"] = _learners_code(source_nb, source_nb)
        for name in conventions.learner_functions(source_nb):
            for mod in (m for n, m in list(sys.modules.items()) if n.startswith("minibn.") and m is not None
                        and not n.startswith(("minibn.checks", "minibn.grading", "minibn.widgets"))):
                fn = vars(mod).get(name)
                if inspect.isfunction(fn) and fn.__module__ == mod.__name__:
                    sources[f"minibn {mod.__name__}.{name}"] = inspect.getsource(fn)
        for student, _ in pairs:
            path = course / "submitted" / student / assignment / source_path.name
            try:
                entries[(student, assignment)] = entries.get((student, assignment), "") + _learners_code(
                    source_nb, nbs.read(path))
            except Exception:  # missing or unreadable: flagged elsewhere
                continue
    return similarity.compare(entries, sources, "\n".join(boilerplate))


def _autograde_error(log, student):
    """nbgrader's reason for failing ``student``: its error line, and the exception under it."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "ERROR" in line and f"'{student}'" in line:
            cause = next((x.strip() for x in lines[i + 1:i + 80] if re.match(r"^\s*[\w.]+(Error|Exception|Interrupt)\b", x)), "")
            return line.split("] ", 1)[-1] + (f": {cause[:300]}" if cause else "")
    return ""


def _repair_grade_ids(path, source_path):
    """Make a tampered notebook gradable: nbgrader 0.9.6's add_missing_cells crashes (KeyError
    'grade_id') on a cell whose grade_id it dropped, as unknown or duplicated. Such cells become
    ordinary cells here, and the gradebook's copy of the real one is added back by nbgrader.
    The learner's original stays untouched under submitted/ for the integrity scan."""
    if not source_path.exists():
        return
    known = {nbs.grade_id(c) for c in nbs.read(source_path).cells if nbs.grade_id(c)}
    try:
        nb = nbs.read(path)
    except Exception:  # unreadable: nbgrader reports it, the re-grade flags it
        return
    seen, changed = set(), False
    for cell in nb.cells:
        gid = nbs.grade_id(cell)
        if "nbgrader" in cell.get("metadata", {}) and (gid not in known or gid in seen):
            del cell.metadata["nbgrader"]
            changed = True
        seen.add(gid)
    if changed:
        path.write_text(nbs.dumps(nb))


def _regrade_notebook(sub, course, base, root, source_path, grading):
    name = source_path.stem
    submitted_path = course / "submitted" / sub.student / sub.assignment / source_path.name
    source_nb = nbs.read(source_path)
    if not submitted_path.exists():
        sub.flags.append(integrity.flag("missing", f"{source_path.name} was not submitted"))
        return
    try:
        submitted_nb = nbs.read(submitted_path)
    except Exception as err:  # nbformat raises several kinds on a damaged file
        sub.flags.append(integrity.flag("unreadable", f"{source_path.name}: {type(err).__name__}"))
        return
    released_nb = nbs.read(base / "lessons" / sub.assignment / source_path.name)
    learner = conventions.learner_functions(source_nb)
    sub.flags += integrity.inspect_submission(released_nb, submitted_nb, submitted_path.parent, source_nb)
    static_flags, zeroed = integrity.scan_submission(source_nb, submitted_nb, learner)
    sub.flags += static_flags
    result = rg.regrade(rg.build_plan(source_nb, submitted_nb, learner), student=sub.student,
                        env=grading["verdict_env"], cell_timeout=grading["timeout"], sandboxed=grading["sandboxed"],
                        self_check=sub.student in grading["self_check"])
    sub.flags += [f for f in result["flags"] if f["kind"] != "unsafe"]
    kernel = gradebook.cell_grades(root / "gradebook.db", sub.student, sub.assignment)
    final = {}
    for test in (c for c in source_nb.cells if nbs.is_test(c)):
        gid = nbs.grade_id(test)
        outcome = result["tests"][gid]
        score = outcome["score"]
        blocked = sorted(zeroed & set(rg.names_used(test.source)))
        if blocked and score:
            score = 0.0
            outcome["error"] = f"delegation in the code of {', '.join(blocked)}"
        final[gid] = score
        in_kernel = (kernel.get((name, gid)) or {}).get("auto") or 0.0
        if in_kernel > score:
            sub.flags.append(integrity.flag(
                "regrade", f"{gid} passed in the notebook but not in the re-grade ({outcome['error']})"))
        sub.tests[f"{name}:{gid}"] = {**outcome, "score": score, "kernel_score": in_kernel}
    gradebook.set_auto_scores(root / "gradebook.db", sub.student, sub.assignment, name, final)


def _totals(sub, db):
    """The grade: re-graded test cells, unless the instructor overrode one by hand, plus manual answers."""
    cells = gradebook.cell_grades(db, sub.student, sub.assignment)
    tests = {tuple(key.split(":", 1)): t["score"] for key, t in sub.tests.items()}
    sub.kernel_score = sum(t["kernel_score"] for t in sub.tests.values())
    sub.score = sum(tests.values())
    for key, c in cells.items():
        if c["manual"] is not None:
            sub.score += c["manual"] - tests.get(key, 0.0)
        sub.score += c["extra"]
    sub.max_score = gradebook.max_score(db, sub.assignment)
    sub.needs_manual_grade = any(c["needs_manual"] and c["manual"] is None for c in cells.values())


def _replace_tree(src, dest):
    if dest.exists():
        shutil.rmtree(dest, onerror=_force_remove)
    if src.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest)


def _force_remove(func, path, _exc):
    # nbgrader writes autograded files read-only (444).
    os.chmod(Path(path).parent, stat.S_IRWXU)
    os.chmod(path, stat.S_IRWXU)
    func(path)
