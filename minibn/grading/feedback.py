"""nbconvert preprocessors the grading run adds to nbgrader's autograde and feedback steps.

- ``HideTestTracebacks``: a failing test cell shows the learner the check's message only. The
  traceback would quote the lines of the hidden-test region and the checker's internals; the
  message (quantity, case, worst index, expected vs received, hint) is what a learner needs.
  A trace IPython fell back to printing on stderr is cut to its last line the same way.
- ``ExplainScores``: the page shows the outputs of nbgrader's run of the notebook (top to bottom, in
  the learner's kernel) under each test cell's score, but the score is the re-grade's (all solution
  cells first, then the tests, in a fresh process; see ``regrade``), so the two can disagree: a
  NameError under "Score: 3.0 / 3.0" when a cell ran before the one defining what it calls. Where
  they disagree, a note above the outputs says which run the score comes from and why they differ.
- ``CapOutputs``: nbgrader caps stream output by lines but not rich output; a huge HTML display
  or image would bloat the autograded notebook and the feedback page. Any output larger than
  ``max_bytes`` is replaced by a one-line note.
"""
from __future__ import annotations

import json

import nbformat
from nbconvert.preprocessors import Preprocessor
from traitlets import Bool, Integer

from minibn.grading import gradebook
from minibn.grading import notebooks as nbs


def _is_trace(output):
    """IPython printed a trace as plain stderr (a learner broke its exception formatting)."""
    text = "".join(output.get("text", ""))
    return output.get("name") == "stderr" and "Traceback (most recent call last)" in text


class HideTestTracebacks(Preprocessor):
    enabled = Bool(True)

    def preprocess_cell(self, cell, resources, index):
        if nbs.is_test(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
                elif _is_trace(output):  # keep only the final exception line
                    lines = [ln for ln in "".join(output["text"]).splitlines() if ln.strip()]
                    output["text"] = lines[-1] + "\n"
        return cell, resources


_REGRADE = ("Score {score} comes from the re-grade, not from the run shown below. The re-grade runs "
            "your solution cells and the cells you added first, with the lesson's definitions (not its "
            "demos or training runs), in a fresh process, then the tests, on hidden cases drawn for you; "
            "the run below is your notebook from top to bottom, whose hidden cases are new each time. ")
_NOTES = {
    "order": _REGRADE + (
        "This cell failed below and passed there: a cell ran before the cell that defines a function "
        "or name it uses. Restart the kernel and run all cells to see it, then move the defining cell "
        "above the cell that uses it.\n"),
    "cases": _REGRADE + (
        "This cell failed below and passed there: the run below met a case your code gets wrong (the "
        "message names it; worth fixing), and the re-grade's cases did not.\n"),
    "passed": _REGRADE + (
        "This cell passed below and failed there: code that relies on a value only a demo cell made, "
        "on the order the cells were run in, or on changing the checks passes below and not there. "
        "The re-grade's message for this cell is in the instructor's grade report.\n"),
    "by hand": "Score {score} was set by the instructor by hand; the run shown below is your notebook's.\n",
}
_ORDER_ERRORS = ("NameError", "UnboundLocalError")


def _kernel_failure(cell):
    """How the notebook's run of a test cell failed: "order" (a name not yet defined), "cases"
    (any other error), or None where it passed."""
    outputs = cell.get("outputs", [])
    errors = [o for o in outputs if o.get("output_type") == "error"]
    if errors:
        return "order" if errors[0].get("ename") in _ORDER_ERRORS else "cases"
    traces = ["".join(o["text"]) for o in outputs if _is_trace(o)]
    if traces:
        return "order" if traces[0].rstrip().splitlines()[-1].startswith(_ORDER_ERRORS) else "cases"
    return None


def _graded_by_hand(resources):
    """grade_ids of this notebook's cells whose score an instructor set (it overrides both runs)."""
    info = resources.get("nbgrader") or {}
    url = info.get("db_url") or ""
    if not url.startswith("sqlite:///"):
        return set()
    cells = gradebook.cell_grades(url[len("sqlite:///"):], info["student"], info["assignment"])
    return {cell for (notebook, cell), g in cells.items()
            if notebook == info["notebook"] and g["manual"] is not None}


class ExplainScores(Preprocessor):
    """After ``GetGrades`` (which puts each cell's gradebook score into its metadata)."""
    enabled = Bool(True)

    def preprocess(self, nb, resources):
        self._by_hand = _graded_by_hand(resources)
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        m = nbs.meta(cell)
        if not nbs.is_test(cell) or m.get("score") is None:
            return cell, resources
        score, points, failure = float(m["score"]), float(m.get("points") or 0), _kernel_failure(cell)
        if not (score > 0 if failure else score < points):
            return cell, resources
        kind = "by hand" if nbs.grade_id(cell) in self._by_hand else failure or "passed"
        note = nbformat.v4.new_output("stream", name="stdout",
                                      text=_NOTES[kind].format(score=f"{score:g} / {points:g}"))
        cell.outputs = [note, *cell.get("outputs", [])]
        return cell, resources


class CapOutputs(Preprocessor):
    enabled = Bool(True)
    max_bytes = Integer(200_000, help="largest single output kept, in bytes of JSON").tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        capped = []
        for output in cell.get("outputs", []):
            size = len(json.dumps(output))
            if size > self.max_bytes:
                output = nbformat.v4.new_output(
                    "stream", name="stdout",
                    text=f"[an output of {size} bytes was removed by the grader (limit {self.max_bytes})]\n")
            capped.append(output)
        cell.outputs = capped
        return cell, resources
