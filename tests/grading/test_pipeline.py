"""The whole grading pipeline on a class of fixture students, through the real nbgrader.

One temporary course holds the fixture lesson 00-mini with a student per integrity case
(tests/fixtures/submissions.py), and lessons 01 and 02 of solutions/ with three students each:
the instructor's notebook (full marks), the untouched release (0) and a buggy one (partial
credit): 01 with the unbiased variance in the forward; 02 with a closed form missing the mean
path and a graph backward returning dgamma and dbeta swapped. A single ``grade()`` run grades
them all with two workers; the tests below read its results, the gradebook, the feedback and
grades.csv.
"""
import csv
import shutil
import sys
from pathlib import Path

import pytest

from minibn.grading import gradebook, grade, release
from minibn.grading import notebooks as nbs
from minibn.grading import regrade as rg

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(FIXTURES))
import submissions  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SECRET = "fixture-secret"
# Students built from the instructor's own notebook (the self-check, and the buggy ones, whose other
# exercises are the instructor's code): exact copies of the solution are expected there.
SELF_CHECK = ("c00-solution", "zz-solution", "zz-ddof1", "zz-backward-bugs")
# A line of the fixture lesson's instructor solution that no learner fixture contains.
INSTRUCTOR_LINE = "var = ((x - np.expand_dims(mean, axes)) ** 2).mean(axis=axes)"
# Per-cell limit: the real lessons import torch inside the sandbox, which takes several seconds
# on a busy 2-core machine (at 15 s one loaded run lost lesson 02's kernel).
TIMEOUT = 30.0
# The round trip covers the two foundation lessons; tests/test_notebooks.py runs every lesson.
REAL_LESSONS = [p.parent.name for p in nbs.notebooks_under(ROOT / "solutions")
                if p.parent.name in ("01-normalize", "02-backward")]

BUGGY_FORWARD = '''def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Forward pass with the unbiased variance (the bug under test)."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, ddof=1, keepdims=True)
    x_hat = (x - mu) / np.sqrt(var + eps)
    return gamma.reshape(shape) * x_hat + beta.reshape(shape), (x, x_hat, mu, var, gamma, beta, eps)
'''


# Integrity cases 6 and 7 on lesson 02.
MISSING_MEAN_PATH = '''def batchnorm_backward(dout, cache):
    """Closed form without the mean path (the bug under test)."""
    axes = (0,) + tuple(range(2, dout.ndim))
    shape = (1, dout.shape[1]) + (1,) * (dout.ndim - 2)
    m = dout.size // dout.shape[1]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * cache.x_hat).sum(axis=axes)
    dx = (cache.gamma * cache.inv_std).reshape(shape) / m * (m * dout - cache.x_hat * dgamma.reshape(shape))
    return dx, dgamma, dbeta
'''

SWAPPED_PARAMS = '''def batchnorm_backward_graph(dout, cache):
    """Right dx, dgamma and dbeta returned swapped (the bug under test)."""
    axes = (0,) + tuple(range(2, dout.ndim))
    shape = (1, dout.shape[1]) + (1,) * (dout.ndim - 2)
    m = dout.size // dout.shape[1]
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * cache.x_hat).sum(axis=axes)
    dx = (cache.gamma * cache.inv_std).reshape(shape) / m * (
        m * dout - dbeta.reshape(shape) - cache.x_hat * dgamma.reshape(shape))
    return dx, dbeta, dgamma
'''

BUGGY = {  # lesson -> (student, {grade_id of a solution cell: buggy source})
    "01-normalize": ("zz-ddof1", {"batchnorm_forward": BUGGY_FORWARD}),
    "02-backward": ("zz-backward-bugs", {"batchnorm_backward": MISSING_MEAN_PATH,
                                         "batchnorm_backward_graph": SWAPPED_PARAMS}),
}


def _quiet(*args, **kwargs):
    pass


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    shutil.copy(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
    shutil.copytree(FIXTURES / "mini-course" / "solutions" / "00-mini", course / "solutions" / "00-mini")
    for lesson in REAL_LESSONS:
        shutil.copytree(ROOT / "solutions" / lesson, course / "solutions" / lesson,
                        ignore=shutil.ignore_patterns("backups", ".ipynb_checkpoints"))
    (course / grade.SECRET_FILE).write_text(submissions.SECRET_FILE_TEXT + "\n")  # unused: SECRET is passed
    release.release(course, log=_quiet)
    sol = nbs.read(course / "solutions" / "00-mini" / "00-mini.ipynb")
    rel = nbs.read(course / "lessons" / "00-mini" / "00-mini.ipynb")
    for student in submissions.CASES:
        submissions.write(student, sol, rel, course / "submitted" / student / "00-mini")
    for lesson in REAL_LESSONS:
        for student, folder in (("zz-solution", "solutions"), ("zz-stub", "lessons")):
            dest = course / "submitted" / student / lesson
            shutil.copytree(course / folder / lesson, dest)
        if lesson in BUGGY:
            student, bugs = BUGGY[lesson]
            nb = nbs.read(course / "lessons" / lesson / f"{lesson}.ipynb")
            answer = nbs.read(course / "solutions" / lesson / f"{lesson}.ipynb")
            for cell, solved in zip(nb.cells, answer.cells):
                if nbs.is_solution(cell):
                    cell.source = bugs.get(nbs.grade_id(cell), solved.source)
            dest = course / "submitted" / student / lesson
            dest.mkdir(parents=True)
            (dest / f"{lesson}.ipynb").write_text(nbs.dumps(nb))
    return course


@pytest.fixture(scope="module")
def graded(course):
    results = grade.grade(course, workers=2, timeout=TIMEOUT, secret=SECRET, log=_quiet,
                          self_check_students=SELF_CHECK)
    return {(r.student, r.assignment): r for r in results}


def _flags(result):
    return [f"{f['kind']}: {f['detail']}" for f in result.flags]


@pytest.fixture(scope="module")
def csv_rows(course, graded):
    with open(course / "grades.csv") as fh:
        return {(r["student"], r["assignment"]): r for r in csv.DictReader(fh)}


@pytest.mark.parametrize("student", list(submissions.CASES))
def test_integrity_case(course, graded, csv_rows, student):
    case = submissions.CASES[student]
    result = graded[(student, "00-mini")]
    # grades.csv and the gradebook say the same as the result.
    assert float(csv_rows[(student, "00-mini")]["score"]) == sum(case.scores.values())
    cells = gradebook.cell_grades(course / "gradebook.db", student, "00-mini")
    assert {cell: g["auto"] for (_, cell), g in cells.items() if cell in case.scores} == \
        {gid: float(v) for gid, v in case.scores.items()}
    scores = {gid.split(":")[1]: t["score"] for gid, t in result.tests.items()}
    assert scores == case.scores, f"case {case.cases} ({case.what}): {result.tests}"
    flags = _flags(result)
    for needle in case.flags:
        assert any(needle in f for f in flags), f"no flag containing {needle!r} in {flags}"
    if case.no_flags:
        assert flags == [], f"an honest or merely wrong submission was flagged: {flags}"
    for gid, needle in case.errors.items():
        assert needle in (result.tests[f"00-mini:{gid}"]["error"] or ""), result.tests[f"00-mini:{gid}"]
    kernel = {gid.split(":")[1]: t["kernel_score"] for gid, t in result.tests.items()}
    for gid, expected in case.kernel.items():
        assert kernel[gid] == expected, f"in-kernel score of {gid}: {kernel}"
    # The gradebook holds the re-graded scores, so nbgrader's own reports agree with grades.csv.
    assert result.score == sum(case.scores.values())


def test_every_fixture_student_graded_once(course, graded):
    pairs = grade.find_submissions(course)
    assert sorted(graded) == sorted(pairs)
    counts = gradebook.row_counts(course / "gradebook.db")
    assert counts["submitted_assignment"] == len(pairs)
    assert counts["student"] == len({s for s, _ in pairs})
    cells_per = {a: len([c for nb in nbs.notebooks_in(course / "solutions" / a) for c in nbs.read(nb).cells
                         if nbs.meta(c).get("grade")]) for _, a in pairs}
    assert counts["grade"] == sum(cells_per[a] for _, a in pairs)


def test_grades_csv(course, graded):
    with open(course / "grades.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == grade.CSV_FIELDS
    by_key = {(r["student"], r["assignment"]): r for r in rows}
    assert set(by_key) == set(graded)
    assert by_key[("c02-honest", "00-mini")]["score"] == "5"
    assert by_key[("c02-honest", "00-mini")]["max_score"] == "6"  # q_eps is graded by hand
    assert by_key[("c02-honest", "00-mini")]["needs_manual_grade"] == "yes"
    assert by_key[("c16-checker", "00-mini")]["kernel_score"] == "5"
    assert by_key[("c16-checker", "00-mini")]["score"] == "3"
    assert "delegation" in by_key[("c14-import", "00-mini")]["flags"]


@pytest.mark.parametrize("lesson", REAL_LESSONS)
def test_real_lesson_round_trip(graded, lesson):
    solution, stub = graded[("zz-solution", lesson)], graded[("zz-stub", lesson)]
    assert solution.tests and all(t["score"] == t["points"] > 0 for t in solution.tests.values()), solution.tests
    assert all(t["kernel_score"] == t["points"] for t in solution.tests.values()), solution.tests
    assert solution.flags == []
    assert stub.score == 0 and all(t["kernel_score"] == 0 for t in stub.tests.values())
    if lesson == "01-normalize":
        buggy = {k.split(":")[1]: t for k, t in graded[("zz-ddof1", lesson)].tests.items()}
        assert buggy["test_channel_stats"]["score"] == buggy["test_channel_stats"]["points"]
        assert buggy["test_batchnorm_forward"]["score"] == 0
        assert "m - 1" in buggy["test_batchnorm_forward"]["error"]
    if lesson == "02-backward":
        buggy = {k.split(":")[1]: t for k, t in graded[("zz-backward-bugs", lesson)].tests.items()}
        assert buggy["test_batchnorm_backward"]["score"] == 0
        assert "dx is wrong" in buggy["test_batchnorm_backward"]["error"]
        assert "sum of dx" in buggy["test_batchnorm_backward"]["error"]
        assert buggy["test_batchnorm_backward_graph"]["score"] == 0
        assert "dgamma and dbeta are swapped" in buggy["test_batchnorm_backward_graph"]["error"]
        frozen = buggy["test_batchnorm_backward_frozen_stats"]
        assert frozen["score"] == frozen["points"] > 0


def test_feedback_hides_hidden_tests(course, graded):
    """No feedback page or autograded notebook holds the secret, hidden-test source or instructor
    files (the leak-secret and read-solution fixtures print what they can find)."""
    pages = sorted((course / "feedback").glob("*/*/*.html"))
    crashed = [k for k, r in graded.items() if any(f["kind"] == "autograde-error" for f in r.flags)]
    # A dead kernel costs that student only (s11-huge's 2 GB answer may exhaust its kernel's memory).
    assert ("c28-crash", "00-mini") in crashed and set(crashed) <= {("c28-crash", "00-mini"), ("s11-huge", "00-mini")}, \
        [(k, [f["detail"] for f in graded[k].flags if f["kind"] == "autograde-error"]) for k in crashed]
    assert len(pages) == len(graded) - len(crashed)
    for page in pages + sorted((course / "autograded").glob("*/*/*.ipynb")):
        text = page.read_text()
        secrets_ = [SECRET, submissions.SECRET_FILE_TEXT, "BEGIN HIDDEN TESTS", "_randomized(", "minibn/checks/"]
        if page.parts[-3] not in SELF_CHECK:
            secrets_.append(INSTRUCTOR_LINE)
        if page.suffix == ".ipynb":  # the instructor's copy: hidden tests and tracebacks restored
            secrets_ = [x for x in secrets_ if x not in ("BEGIN HIDDEN TESTS", "_randomized(", "minibn/checks/")]
        for secret_part in secrets_:
            assert secret_part not in text, f"{page} reveals {secret_part!r}"
    leak = (course / "feedback" / "i11-leak-secret" / "00-mini" / "00-mini.html").read_text()
    assert "secret file: None" in leak  # the attack ran, and found nothing to print
    failing = (course / "feedback" / "c03-ddof1" / "00-mini" / "00-mini.html").read_text()
    assert "AssertionError" in failing and "m - 1" in failing  # the check's message does reach the learner


def _test_cell_html(page, grade_id):
    """The part of a feedback page from a graded cell's anchor to the next anchor."""
    html = page.read_text()
    start = html.index(f'<a name="{grade_id}">')
    end = html.find('<a name="', start + 1)
    return html[start:end if end > 0 else None]


def test_feedback_says_which_run_the_score_comes_from(course, graded):
    """Case 41: under "Score: 2.0 / 2.0" the page shows the NameError of the notebook's own run,
    and a note saying the score is the re-grade's and why the runs differ. The reverse (passed in
    the notebook, 0 in the re-grade) is said too; where the runs agree nothing is added."""
    page = lambda student: course / "feedback" / student / "00-mini" / "00-mini.html"  # noqa: E731
    order = _test_cell_html(page("c41-order"), "test_channel_stats")
    assert "Score: 2.0 / 2.0" in order and "NameError" in order
    note = order.index("Score 2 / 2 comes from the re-grade, not from the run shown below")
    assert note < order.index("NameError") and "before the cell that defines" in order
    assert "comes from the re-grade" not in _test_cell_html(page("c41-order"), "test_batchnorm_forward")
    checker = _test_cell_html(page("c16-checker"), "test_channel_stats")
    assert "Score 0 / 2 comes from the re-grade" in checker and "passed below and failed there" in checker
    for agree in ("c02-honest", "c03-ddof1"):
        assert "comes from the re-grade" not in page(agree).read_text()


def test_outputs_capped_and_no_stray_values(course, graded):
    noisy = course / "autograded" / "c22-27-29-extras" / "00-mini" / "00-mini.ipynb"
    assert noisy.stat().st_size < 1_000_000
    honest = nbs.read(course / "autograded" / "c02-warns" / "00-mini" / "00-mini.ipynb")
    for cell in honest.cells:
        if nbs.is_test(cell):
            assert [o.output_type for o in cell.outputs] == [], cell.outputs


def test_regrade_is_deterministic_per_student(course, graded):
    """Case 30: the same notebook re-graded gives the same result; another student other cases."""
    sol = nbs.read(course / "solutions" / "00-mini" / "00-mini.ipynb")
    sub = nbs.read(course / "submitted" / "c11-hardcoded" / "00-mini" / "00-mini.ipynb")
    from minibn.grading.conventions import learner_functions

    plan = rg.build_plan(sol, sub, learner_functions(sol))
    env = {"MINIBN_GRADING_SECRET": SECRET, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    first = rg.regrade(plan, student="c11-hardcoded", env=env, cell_timeout=TIMEOUT)
    again = rg.regrade(plan, student="c11-hardcoded", env=env, cell_timeout=TIMEOUT)
    assert first["tests"] == again["tests"]
    assert first["tests"] == {k.split(":")[1]: {kk: v for kk, v in t.items() if kk != "kernel_score"}
                              for k, t in graded[("c11-hardcoded", "00-mini")].tests.items()}
    other = rg.regrade(plan, student="someone-else", env=env, cell_timeout=TIMEOUT)
    seed = lambda r: r["tests"]["test_channel_stats"]["error"].split("of seed ")[1].split(":")[0]  # noqa: E731
    assert seed(first) != seed(other)


def test_regrading_replaces_rows(course, graded):
    """A second run gives the same grades, one row per submission, and keeps the hand grades."""
    db = course / "gradebook.db"
    before = gradebook.row_counts(db)
    lesson = "00-mini"
    # The instructor has graded c02-honest's inline question by hand in the formgrader.
    with gradebook.connect(db) as con:
        con.execute("UPDATE grade SET manual_score = 1 WHERE id IN (SELECT g.id FROM grade g "
                    "JOIN base_cell bc ON g.cell_id = bc.id JOIN submitted_notebook sn ON g.notebook_id = sn.id "
                    "JOIN submitted_assignment sa ON sn.assignment_id = sa.id "
                    "WHERE bc.name = 'q_eps' AND sa.student_id = 'c02-honest')")
    students = ["c02-honest", "c11-hardcoded", "c16-checker"]
    again = grade.grade(course, assignments=[lesson], students=students, workers=1, timeout=TIMEOUT,
                        secret=SECRET, log=_quiet, csv_path=course / "again.csv")
    assert sorted(r.student for r in again) == students
    assert gradebook.row_counts(db) == before
    hand_graded = {"c02-honest": 1}
    for r in again:
        assert r.score == graded[(r.student, r.assignment)].score + hand_graded.get(r.student, 0), r.student
    assert gradebook.cell_grades(db, "c02-honest", lesson)[("00-mini", "q_eps")]["manual"] == 1
