"""``python -m minibn.grading.release``: deterministic lessons, learners' edits kept, drift named."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minibn.grading import nbgrader_cli, release
from minibn.grading import notebooks as nbs

ROOT = Path(__file__).resolve().parents[2]
MINI = ROOT / "tests" / "fixtures" / "mini-course"

pytestmark = pytest.mark.slow


@pytest.fixture
def course(tmp_path):
    shutil.copytree(MINI / "solutions", tmp_path / "solutions")
    shutil.copy(ROOT / "nbgrader_config.py", tmp_path / "nbgrader_config.py")
    return tmp_path


def _cli(course, *args):
    return subprocess.run([sys.executable, "-m", "minibn.grading.release", "--course", str(course), *args],
                          capture_output=True, text=True, timeout=120)


def test_release_is_deterministic_clean_and_keeps_learner_edits(course):
    first = _cli(course)
    assert first.returncode == 0, first.stderr
    lesson = course / "lessons" / "00-mini" / "00-mini.ipynb"
    generated = lesson.read_bytes()
    nb = nbs.read(lesson)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert [c.id for c in nb.cells] == [c.id for c in nbs.read(MINI / "solutions/00-mini/00-mini.ipynb").cells]
    stub = next(c for c in nb.cells if c.id == "ex-stats-solution").source
    assert "raise NotImplementedError()" in stub and "x.mean" not in stub
    test_cell = next(c for c in nb.cells if c.id == "ex-stats-test").source
    assert "HIDDEN" not in test_cell and "randomized" not in test_cell
    # Nothing of nbgrader's bookkeeping is left behind.
    assert sorted(p.name for p in course.iterdir()) == ["lessons", "nbgrader_config.py", "solutions"]
    manifest = json.loads((course / "lessons" / ".generated.json").read_text())
    assert manifest["sha256"] == {"00-mini/00-mini.ipynb": nbs.sha256(generated)}

    # Integrity case 1: the released stubs pass no test ("no free points").
    env = nbgrader_cli.nbgrader_env({"JUPYTER_RUNTIME_DIR": str(course / ".runtime")})
    out = nbgrader_cli.run(["validate", "--invert", str(lesson)], course, env=env)
    assert "Success! The notebook does not pass any tests." in out
    shutil.rmtree(course / ".runtime", ignore_errors=True)

    # A learner's edit is moved aside, loudly, and the lesson comes back byte-identical.
    edited = generated.replace(b"raise NotImplementedError()", b"return x.mean(0), x.var(0)")
    lesson.write_bytes(edited)
    second = _cli(course)
    assert second.returncode == 0 and "WARNING" in second.stderr and "edited" in second.stderr
    assert lesson.read_bytes() == generated
    backups = list((lesson.parent / "backups").iterdir())
    assert len(backups) == 1 and backups[0].read_bytes() == edited

    # An unedited lesson is simply refreshed: no new backup.
    assert _cli(course).returncode == 0
    assert len(list((lesson.parent / "backups").iterdir())) == 1


def test_one_lesson_is_reset_and_the_others_are_left_alone(course):
    """`make lessons LESSON=a`: lesson a is backed up and refreshed; b keeps the learner's edits."""
    shutil.copytree(course / "solutions" / "00-mini", course / "solutions" / "00-other")
    assert _cli(course).returncode == 0
    mine, other = (course / "lessons" / a / "00-mini.ipynb" for a in ("00-mini", "00-other"))
    generated = mine.read_bytes()
    for lesson in (mine, other):
        lesson.write_bytes(generated.replace(b"raise NotImplementedError()", b"return x.mean(0), x.var(0)"))
    edited = other.read_bytes()

    reset = _cli(course, "00-mini")
    assert reset.returncode == 0, reset.stderr
    assert mine.read_bytes() == generated and len(list((mine.parent / "backups").iterdir())) == 1
    assert other.read_bytes() == edited and not (other.parent / "backups").exists()
    # The untouched lesson's edit is still recognised as the learner's on a later full refresh.
    assert _cli(course).returncode == 0
    assert [p.read_bytes() for p in (other.parent / "backups").iterdir()] == [edited]

    unknown = _cli(course, "99-nope")
    assert unknown.returncode == 2 and "no such lesson: 99-nope" in unknown.stderr


def test_check_names_the_drifted_lesson(course):
    assert _cli(course).returncode == 0
    assert _cli(course, "--check").returncode == 0
    nb = course / "solutions" / "00-mini" / "00-mini.ipynb"
    nb.write_text(nb.read_text().replace("two-exercise lesson", "2-exercise lesson"))
    checked = _cli(course, "--check")
    assert checked.returncode == 1
    assert "lessons/00-mini/00-mini.ipynb" in checked.stderr and "make lessons" in checked.stderr


def test_lessons_match_solutions():
    """The committed lessons/ is exactly what `make lessons` generates from solutions/."""
    drifted = release.drift(ROOT)
    assert not drifted, ("lessons/ is out of date with solutions/: "
                         + ", ".join(f"lessons/{d}" for d in drifted) + "; run `make lessons`")
