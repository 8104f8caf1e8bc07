"""nbconvert preprocessors the grading run adds to nbgrader's autograde and feedback steps.

- ``HideTestTracebacks``: a failing test cell shows the learner the check's message only. The
  traceback would quote the lines of the hidden-test region and the checker's internals; the
  message (quantity, case, worst index, expected vs received, hint) is what a learner needs.
  A trace IPython fell back to printing on stderr is cut to its last line the same way.
- ``CapOutputs``: nbgrader caps stream output by lines but not rich output; a huge HTML display
  or image would bloat the autograded notebook and the feedback page. Any output larger than
  ``max_bytes`` is replaced by a one-line note.
"""
from __future__ import annotations

import json

import nbformat
from nbconvert.preprocessors import Preprocessor
from traitlets import Bool, Integer

from minibn.grading import notebooks as nbs


class HideTestTracebacks(Preprocessor):
    enabled = Bool(True)

    def preprocess_cell(self, cell, resources, index):
        if nbs.is_test(cell):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
                elif output.get("name") == "stderr" and "Traceback (most recent call last)" in \
                        "".join(output.get("text", "")):
                    # IPython prints the trace as plain stderr when a learner broke its exception
                    # formatting (patched functions): keep only the final exception line.
                    lines = [ln for ln in "".join(output["text"]).splitlines() if ln.strip()]
                    output["text"] = lines[-1] + "\n"
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
