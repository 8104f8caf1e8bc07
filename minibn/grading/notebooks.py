"""Reading nbgrader notebooks: which cell is what, and the one way minibn writes a notebook.

nbgrader marks cells in ``cell.metadata.nbgrader`` (schema 3): a *solution* cell has
``solution: true`` (the learner writes code there), a *test* cell is a code cell with
``grade: true, solution: false`` (locked, with points), and a *manually graded answer* is a
markdown cell with ``grade: true, solution: true``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

NBFORMAT = 4


def meta(cell):
    """The cell's nbgrader metadata, ``{}`` for an ordinary cell."""
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def grade_id(cell):
    return meta(cell).get("grade_id")


def is_solution(cell):
    """A code cell the learner fills in."""
    return cell.cell_type == "code" and bool(meta(cell).get("solution"))


def is_test(cell):
    """An autograded test cell: code, graded, not a solution."""
    m = meta(cell)
    return cell.cell_type == "code" and bool(m.get("grade")) and not m.get("solution")


def is_manual(cell):
    """A manually graded answer (an inline question)."""
    m = meta(cell)
    return cell.cell_type == "markdown" and bool(m.get("grade")) and bool(m.get("solution"))


def python_source(source):
    """A cell's source as plain Python: IPython magics (``%matplotlib inline``) become calls."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def without_magics(source):
    """A cell's source with IPython magic and shell lines replaced by ``pass`` (for scanning:
    the calls ``python_source`` produces would read as the learner touching ``get_ipython``)."""
    lines = source.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        return ""
    out = []
    for line in lines:
        stripped = line.lstrip()
        out.append(line[: len(line) - len(stripped)] + "pass" if stripped.startswith(("%", "!")) else line)
    return "\n".join(out)


def read(path):
    # nbformat is imported where it is used: importing it costs 1.5 s (jsonschema's format
    # checkers), and the re-grade's grader process, one per submission, reads no notebook.
    import nbformat

    return nbformat.read(str(path), as_version=NBFORMAT)


def strip(nb):
    """Drop outputs and execution counts in place, so committed notebooks diff cleanly."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.get("metadata", {}).pop("execution", None)
    return nb


def dumps(nb):
    """The canonical text of a notebook: nbformat's JSON with a final newline."""
    import nbformat

    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def sha256(data):
    if isinstance(data, str):
        data = data.encode()
    return hashlib.sha256(data).hexdigest()


def notebooks_under(root):
    """``root/<a>/<a>.ipynb`` style notebooks: every notebook one level down, sorted."""
    root = Path(root)
    return sorted(p for p in root.glob("*/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def notebooks_in(folder):
    """The notebooks directly inside ``folder``, sorted."""
    return sorted(Path(folder).glob("*.ipynb"))


def match_cells(source_nb, submitted_nb):
    """Pair the submitted cells with the lesson's: by nbgrader grade_id, else by cell id.

    Returns ``{index in submitted: source cell or None}`` for every submitted cell.
    """
    by_gid = {grade_id(c): c for c in source_nb.cells if grade_id(c)}
    by_id = {c.get("id"): c for c in source_nb.cells if c.get("id")}
    pairs = {}
    for i, cell in enumerate(submitted_nb.cells):
        src = by_gid.get(grade_id(cell)) if grade_id(cell) else None
        pairs[i] = src if src is not None else by_id.get(cell.get("id"))
    return pairs
