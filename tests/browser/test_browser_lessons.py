"""The course as a learner meets it: JupyterLab in headless Chromium, one test per lesson notebook.

For each lesson in solutions/ (and the harness's own demo lesson): the solution runs top to bottom
with Run All and shows no error output; every widget renders; every explorer responds (a control
moved redraws its figure); nbgrader's Validate button says "Success" on it in a plain session
started without MINIBN_FAST, as a learner's `make lab` is. The student copy, released by nbgrader,
fails Validate untouched, naming the failing cell, and shows every question above its answer box. Screenshots go to
build/screenshots/. Run alone with ``make browser``.
"""
from __future__ import annotations

import json

import pytest

from labdriver import START_PAGE, NotebookPage, lesson_dirs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

LESSONS = ["00-demo", *(p.name for p in lesson_dirs())]
RUN_ALL_S = 480      # fast mode: 15-55 s per lesson alone; 10x that on a box shared with 8 jobs
VALIDATE_S = 300     # Validate re-runs the whole notebook in a fresh kernel
REDRAW_S = 120       # an explorer may train a small model per redraw


def first_test_cell_line(notebook_path):
    """The first line of the first graded test cell: what a Validate failure must show."""
    nb = json.loads(notebook_path.read_text())
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade") and cell["cell_type"] == "code":
            return "".join(cell["source"]).splitlines()[0]
    raise AssertionError(f"{notebook_path.name} has no graded test cell")


def test_make_lab_opens_the_start_page(browser, lab, context, shots):
    """`make lab` starts `jupyter lab START.ipynb`: the learner's browser lands on the start page."""
    url = lab.browser_open_url()
    assert url and url.split("?")[0].endswith(f"/tree/{START_PAGE}"), url
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector(f".lm-TabBar-tab.lm-mod-current:has-text('{START_PAGE}')", timeout=120_000)
    heading = page.locator(".jp-NotebookPanel .jp-MarkdownOutput h1").first
    heading.wait_for(timeout=60_000)
    assert "Batch Normalization" in heading.inner_text()
    page.screenshot(path=str(shots / "start-page.png"))
    page.close()
    lab.shutdown_kernels(START_PAGE)


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_runs_and_explorers_respond(browser, lab, context, shots, lesson):
    nb = NotebookPage(context, lab, f"solutions/{lesson}/{lesson}.ipynb", shots)
    try:
        nb.run_all(RUN_ALL_S)
        nb.shot(f"{lesson}-solution-run-all")
        errors = nb.error_outputs()
        assert not errors, f"{lesson}: Run All shows error/stderr output:\n" + "\n---\n".join(errors)
        broken = nb.widget_failures()
        assert not broken, f"{lesson}: widgets did not render:\n" + "\n---\n".join(broken)

        explorers = nb.explorers()
        assert explorers.count() >= 1, f"{lesson}: no interactive explorer (minibn.widgets.explore)"
        for i in range(explorers.count()):
            explorer = explorers.nth(i)
            explorer.scroll_into_view_if_needed()
            before = nb.figure_of(explorer)
            assert before, f"{lesson}: explorer {i + 1} shows no figure"
            control = nb.nudge(explorer)
            nb.page.wait_for_function(
                "([el, before]) => { const now = [...el.querySelectorAll('.widget-output img')]"
                ".map(i => i.src).join('|'); return now && now !== before; }",
                arg=[explorer.element_handle(), before], timeout=REDRAW_S * 1000, polling=250)
            nb.page.wait_for_function(
                "() => /\\|\\s*Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText || '')",
                timeout=REDRAW_S * 1000)
            explorer.scroll_into_view_if_needed()
            nb.shot(f"{lesson}-explorer-{i + 1}-after-{control.replace(' ', '-')}")
            errors = nb.error_outputs()
            assert not errors, f"{lesson}: explorer {i + 1} raised after its {control} moved:\n" + "\n".join(errors)

        # Validate on the solution runs once, in the plain session below: the server a learner's
        # `make lab` starts, and the stricter of the two (a second Validate here cost a full run).
        assert not nb.page_errors, f"{lesson}: JavaScript errors: {nb.page_errors}"
    finally:
        nb.close()


def manual_answer_count(notebook_path):
    nb = json.loads(notebook_path.read_text())
    return sum(1 for c in nb["cells"] if c["cell_type"] == "markdown"
               and c.get("metadata", {}).get("nbgrader", {}).get("grade")
               and c["metadata"]["nbgrader"].get("solution"))


@pytest.mark.parametrize("lesson", LESSONS)
def test_student_copy_shows_every_question_and_fails_validate(browser, lab, context, shots, lesson):
    """The released lesson as a learner opens it (one page for both checks: opening a notebook
    starts a kernel): every answer box ("YOUR ANSWER HERE") has the rendered text of its question
    right above it, on the page; and Validate, untouched, fails naming the first check cell."""
    path = f"lessons/{lesson}/{lesson}.ipynb"
    nb = NotebookPage(context, lab, path, shots)
    try:
        cells = nb.cells()
        boxes = [i for i, c in enumerate(cells) if c["markdown"] and "YOUR ANSWER HERE" in c["text"]]
        assert len(boxes) == manual_answer_count(lab.root / path), (
            f"{lesson}: {len(boxes)} answer boxes rendered, the notebook has "
            f"{manual_answer_count(lab.root / path)}")
        for i in boxes:
            question = cells[i - 1] if i else None
            assert question and question["markdown"] and "Question" in question["text"], (
                f"{lesson}: answer box {i} has no question above it; the cell above shows "
                f"{(question or {}).get('text', '')[:200]!r}")
            assert question["height"] > 0 and question["top"] < cells[i]["top"], (
                f"{lesson}: the question above answer box {i} is not visible above it")
        if boxes:
            nb.shot(f"{lesson}-student-view")

        verdict = nb.validate(VALIDATE_S)
        nb.shot(f"{lesson}-student-validate")
        assert "Success!" not in verdict, f"{lesson}: the untouched student copy passes Validate"
        assert "The following cell failed" in verdict, f"{lesson}: {verdict[:3000]}"
        failing = first_test_cell_line(lab.root / path)
        assert failing in verdict, f"{lesson}: Validate does not name the first check cell {failing!r}:\n{verdict[:3000]}"
        assert "NotImplementedError" in verdict, verdict[:3000]
        nb.close_dialog()
    finally:
        nb.close()


@pytest.mark.parametrize("lesson", LESSONS)
def test_validate_in_a_plain_lab_session(browser, plain_lab, context, shots, lesson):
    """Validate as a learner presses it in `make lab` (no MINIBN_FAST in the server): the worked
    solution passes within nbgrader's per-cell time limit, because Validate runs the lesson at the
    grader's size (NBGRADER_EXECUTION), not at the full size of the learner's own runs."""
    nb = NotebookPage(context, plain_lab, f"solutions/{lesson}/{lesson}.ipynb", shots)
    try:
        verdict = nb.validate(VALIDATE_S)
        nb.shot(f"{lesson}-plain-session-validate")
        assert "Success! Your notebook passes all the tests." in verdict, f"{lesson}: {verdict[:3000]}"
        nb.close_dialog()
    finally:
        nb.close()
