"""The course's notebook conventions, checked: what every ``solutions/*/*.ipynb`` must satisfy.

``problems(nb)`` returns human-readable violations (empty when the notebook is fine). The rules
come from nbgrader (schema 3 metadata, unique grade ids, points on graded cells) and from how the
course grades (a test cell right after each solution cell, no trailing value in a test cell, no
import of the reference of a function the learner writes).
"""
from __future__ import annotations

import ast
import re

from minibn.grading import notebooks as nbs

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
_GRADE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# nbformat's generated ids (uuid4().hex[:8], or a whole uuid) change on every rebuild.
_RANDOM_ID = re.compile(r"^[0-9a-f]{8}$|^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
_HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?", re.M | re.S)


def problems(nb):
    """Every convention ``nb`` breaks, as a list of messages naming the cell."""
    out = []
    if (nb.nbformat, nb.get("nbformat_minor", 0)) < (4, 5):
        out.append(f"nbformat {nb.nbformat}.{nb.get('nbformat_minor')}: use 4.5 (cell ids)")
    if dict(nb.metadata.get("kernelspec", {})) != KERNELSPEC:
        out.append(f"kernelspec is {dict(nb.metadata.get('kernelspec', {}))}, expected {KERNELSPEC}")
    out += _ids(nb)
    out += _outputs(nb)
    out += _nbgrader_metadata(nb)
    out += _exercises(nb)
    out += _setup_cell(nb)
    out += _no_reference_imports(nb)
    return out


def _name(i, cell):
    return f"cell {i} ({cell.get('id', 'no id')})"


def _ids(nb):
    out, seen = [], set()
    for i, cell in enumerate(nb.cells):
        cid = cell.get("id")
        if not cid:
            out.append(f"cell {i} has no id")
        elif cid in seen:
            out.append(f"{_name(i, cell)}: duplicate cell id")
        elif _RANDOM_ID.match(cid):
            out.append(f"{_name(i, cell)}: random-looking cell id; use a stable readable one "
                       "(e.g. 'ex-forward-solution')")
        seen.add(cid)
    return out


def _outputs(nb):
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            out.append(f"{_name(i, cell)}: outputs not stripped (outputs [] and execution_count null)")
    return out


def _nbgrader_metadata(nb):
    out, ids = [], set()
    for i, cell in enumerate(nb.cells):
        m = nbs.meta(cell)
        if not m:
            continue
        where = _name(i, cell)
        if m.get("schema_version") != 3:
            out.append(f"{where}: nbgrader schema_version must be 3")
        for key in ("grade", "solution", "locked"):
            if not isinstance(m.get(key), bool):
                out.append(f"{where}: nbgrader metadata needs a boolean '{key}'")
        gid = m.get("grade_id")
        if m.get("grade") or m.get("solution") or m.get("locked"):
            if not isinstance(gid, str) or not _GRADE_ID.match(gid):
                out.append(f"{where}: grade_id {gid!r} must match [A-Za-z0-9_-]+")
            elif gid in ids:
                out.append(f"{where}: duplicate grade_id {gid!r}")
            ids.add(gid)
        if m.get("grade"):
            points = m.get("points")
            if not isinstance(points, (int, float)) or isinstance(points, bool) or points < 0:
                out.append(f"{where}: graded cell needs points >= 0, has {points!r}")
        if nbs.is_test(cell) and not m.get("locked"):
            out.append(f"{where}: test cell must be locked")
        if m.get("grade") and m.get("solution") and cell.cell_type != "markdown":
            out.append(f"{where}: autograded answers are a solution cell plus a test cell, "
                       "not one cell with both flags")
    return out


def _exercises(nb):
    out = []
    cells = nb.cells
    for i, cell in enumerate(cells):
        where = _name(i, cell)
        if nbs.is_solution(cell):
            if "### BEGIN SOLUTION" not in cell.source or "### END SOLUTION" not in cell.source:
                out.append(f"{where}: solution cell without ### BEGIN SOLUTION / ### END SOLUTION")
            following = []
            for later in cells[i + 1:]:
                if nbs.is_solution(later):
                    break
                following.append(later)
            if not any(nbs.is_test(c) for c in following):
                out.append(f"{where}: solution cell has no test cell after it (before the next "
                           "exercise)")
        if nbs.is_test(cell):
            visible = _HIDDEN.sub("", cell.source)
            for label, src in (("", cell.source), (" (as released, hidden tests removed)", visible)):
                problem = _trailing_value(src)
                if problem:
                    out.append(f"{where}: test cell{label} {problem}")
    return out


def _trailing_value(source):
    try:
        tree = ast.parse(nbs.python_source(source))
    except SyntaxError as err:
        return f"is not valid Python ({err.msg}, line {err.lineno})"
    if not tree.body:
        return "is empty"
    last = tree.body[-1]
    if not isinstance(last, ast.Expr):
        return None
    call = last.value
    if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id.startswith("check_"):
        return None  # minibn's checks return None by contract
    return ("ends in a bare expression; nbgrader would read its value as the score "
            "(end with a check_* call or an assignment)")


def _setup_cell(nb):
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or "from minibn.course import setup" not in code[0].source or "setup(" not in code[0].source:
        return ["the first code cell must be `from minibn.course import setup` / `FAST = setup()`"]
    return []


def learner_functions(nb):
    """Names of the functions the learner writes (top-level defs in solution cells)."""
    names = set()
    for cell in nb.cells:
        if nbs.is_solution(cell):
            try:
                tree = ast.parse(nbs.python_source(cell.source))
            except SyntaxError:
                continue
            names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names


def _no_reference_imports(nb):
    written = learner_functions(nb)
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or nbs.is_solution(cell) or nbs.is_test(cell):
            continue
        try:
            tree = ast.parse(nbs.python_source(cell.source))
        except SyntaxError as err:
            out.append(f"{_name(i, cell)}: not valid Python ({err.msg})")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "minibn":
                clash = sorted({a.name for a in node.names} & written)
                if clash:
                    out.append(f"{_name(i, cell)}: imports minibn's {', '.join(clash)}, which the "
                               "learner is asked to write")
    return out
