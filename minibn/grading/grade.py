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

Hidden cases are drawn from an HMAC of a secret and the student id: ``MINIBN_GRADING_SECRET``, or
else a secret created once in ``<course>/.minibn-grading-secret``. Re-running gives the same grades.
Extra submitted files that could shadow a module (``numpy.py``, ``minibn/``) are not given to the
grader, and are flagged.
"""
from __future__ import annotations

import csv
import os
import secrets
import shutil
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from minibn.grading import conventions, gradebook, integrity, nbgrader_cli
from minibn.grading import notebooks as nbs
from minibn.grading import regrade as rg

SECRET_FILE = ".minibn-grading-secret"
CSV_FIELDS = ["student", "assignment", "score", "max_score", "flags", "kernel_score", "needs_manual_grade"]

_CONFIG_EXTRA = '''
# --- added by minibn.grading for this grading run ---
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearHiddenTests, Execute,
                                    GetGrades, IgnorePattern, LimitOutput, SaveAutoGrades)
from minibn.grading.feedback import CapOutputs, HideTestTracebacks
c.Execute.timeout = {timeout}
c.ExecutePreprocessor.timeout = {timeout}
c.OverwriteCells.add_missing_cells = True
c.Autograde.autograde_preprocessors = [Execute, IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                       CapOutputs, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, HideTestTracebacks, CapOutputs,
                                    CSSHTMLHeaderPreprocessor]
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
    if not path.exists():
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def grade(course, *, assignments=None, students=None, workers=None, timeout=60.0, secret=None, fast=True,
          csv_path=None, log=print):
    """Grade every submission in ``course``; returns the list of ``Submission`` results."""
    course = Path(course).resolve()
    pairs = find_submissions(course, assignments, students)
    if not pairs:
        log(f"no submissions under {course / 'submitted'}")
        return []
    secret = secret or grading_secret(course)
    env = nbgrader_cli.nbgrader_env({"MINIBN_GRADING_SECRET": secret, "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("MINIBN_STUDENT_ID", None)
    if fast:
        env.update({"MINIBN_FAST": "1", "MINIBN_STATIC": "1", "MPLBACKEND": "Agg"})
    students = sorted({s for s, _ in pairs})
    workers = max(1, min(workers or os.cpu_count() or 1, len(students)))
    with tempfile.TemporaryDirectory(prefix="minibn-grade-") as work:
        work = Path(work)
        env["JUPYTER_RUNTIME_DIR"] = str(work / "runtime")
        base = _prepare_base(course, work / "base", sorted({a for _, a in pairs}), timeout, env)
        shards = [[p for p in pairs if p[0] in students[k::workers]] for k in range(workers)]
        log(f"grading {len(pairs)} submission(s) of {len(students)} student(s) with {workers} worker(s)")
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda k: _grade_shard(course, base, work / f"shard-{k}", shards[k],
                                                           timeout, env), range(workers)))
        merged = work / "gradebook.db"
        shutil.copy(base / "gradebook.db", merged)
        for k, shard in enumerate(shards):
            gradebook.merge(merged, work / f"shard-{k}" / "gradebook.db", shard)
            for student, assignment in shard:
                for step in ("autograded", "feedback"):
                    _replace_tree(work / f"shard-{k}" / step / student / assignment,
                                  course / step / student / assignment)
        os.replace(merged, course / "gradebook.db")
    subs = [s for shard in results for s in shard]
    for sub in subs:
        _totals(sub, course / "gradebook.db")
    subs.sort(key=lambda s: (s.assignment, s.student))
    csv_path = Path(csv_path) if csv_path else course / "grades.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(s.row() for s in subs)
    flagged = sum(1 for s in subs if s.flags)
    log(f"wrote {csv_path}: {len(subs)} submission(s), {flagged} flagged; feedback in {course / 'feedback'}")
    return subs


def _prepare_base(course, base, assignments, timeout, env):
    base.mkdir(parents=True)
    (base / "nbgrader_config.py").write_text(
        (course / "nbgrader_config.py").read_text() + _CONFIG_EXTRA.format(timeout=float(timeout)))
    for a in assignments:
        if not (course / "solutions" / a).is_dir():
            raise FileNotFoundError(f"submissions for {a!r} but no solutions/{a}/ to grade them against")
        shutil.copytree(course / "solutions" / a, base / "solutions" / a,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "backups"))
    if (course / "gradebook.db").exists():
        shutil.copy(course / "gradebook.db", base / "gradebook.db")
    nbgrader_cli.run(["generate_assignment", "*", "--force"], base, env=env)
    return base


def _grade_shard(course, base, root, pairs, timeout, env):
    if not pairs:
        return []
    root.mkdir()
    shutil.copy(base / "nbgrader_config.py", root / "nbgrader_config.py")
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
    log = nbgrader_cli.run(["autograde", "*", "--force"], root, env=env, check=False)
    results = []
    for student, assignment in pairs:
        sub = Submission(student, assignment)
        if not (root / "autograded" / student / assignment).is_dir():
            why = [line.split("] ", 1)[-1] for line in log.splitlines()
                   if "ERROR" in line and f"'{student}'" in line]
            sub.flags.append(integrity.flag("autograde-error", "nbgrader could not grade this submission"
                                            + (f" ({why[0]})" if why else "") + "; score from the re-grade"))
        for source_path in nbs.notebooks_in(base / "solutions" / assignment):
            _regrade_notebook(sub, course, base, root, source_path, timeout, env)
        results.append(sub)
    nbgrader_cli.run(["generate_feedback", "*", "--force"], root, env=env, check=False)
    return results


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


def _regrade_notebook(sub, course, base, root, source_path, timeout, env):
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
                        env=env, cell_timeout=timeout)
    sub.flags += result["flags"]
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
