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
_SOLUTION_REGION = re.compile(r"### BEGIN SOLUTION.*?### END SOLUTION", re.S)
# A prompt: "**Question.**", "**Question 2 (1 point).**", or a line starting "Question ...".
PROMPT = re.compile(r"\*\*\s*Question\b|^[ \t>#]*Question\b", re.M)


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
    out += _prompts(nb)
    out += question_before_every_answer(nb)
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


def cleared_by_release(cell):
    """The part of a solution or answer cell that nbgrader's release replaces with a stub.

    nbgrader replaces a ``### BEGIN SOLUTION`` / ``### END SOLUTION`` region when the cell has
    one, and otherwise the whole cell (a markdown answer becomes "YOUR ANSWER HERE").
    """
    if not (nbs.is_solution(cell) or nbs.is_manual(cell)):
        return ""
    regions = _SOLUTION_REGION.findall(cell.source)
    return "\n".join(regions) if regions else cell.source


def _prompts(nb):
    """No question text inside what the release clears: the learner would never see it."""
    out = []
    for i, cell in enumerate(nb.cells):
        found = PROMPT.search(cleared_by_release(cell))
        if found:
            kind = "answer cell" if nbs.is_manual(cell) else "solution region"
            out.append(f"{_name(i, cell)}: the prompt {found.group(0).strip()!r} sits inside the "
                       f"{kind}, which the release replaces with a stub; move the question into "
                       "a markdown cell before it")
    return out


def question_before_every_answer(nb):
    """Every manually graded answer cell follows a visible markdown cell that asks the question.

    Holds for a solution notebook and, unchanged, for its released copy (the question cell is an
    ordinary markdown cell, which the release leaves alone).
    """
    out = []
    for i, cell in enumerate(nb.cells):
        if not nbs.is_manual(cell):
            continue
        before = nb.cells[i - 1] if i else None
        if (before is None or before.cell_type != "markdown" or nbs.is_manual(before)
                or not PROMPT.search(before.source)):
            out.append(f"{_name(i, cell)}: answer cell without its question: the cell before it "
                       "must be an ordinary markdown cell with a '**Question ...**' prompt")
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
    """The first code cell seeds everything before anything else runs, torch included if used.

    ``setup()`` must be its first statement after imports (nothing random may run unseeded), and
    a lesson that imports torch at the top level of any cell must say ``setup(torch=True)``:
    seeding torch is explicit, not a side effect of having imported it first.
    """
    code = [c for c in nb.cells if c.cell_type == "code"]
    missing = ["the first code cell must be `from minibn.course import setup` / `FAST = setup()`"]
    if not code:
        return missing
    try:
        body = ast.parse(nbs.python_source(code[0].source)).body
    except SyntaxError:
        return missing
    if not any(isinstance(n, ast.ImportFrom) and n.module == "minibn.course"
               and any(a.name == "setup" and a.asname is None for a in n.names) for n in body):
        return missing
    call = None
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        value = node.value if isinstance(node, (ast.Assign, ast.Expr)) else None
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "setup":
            call = value
        break
    where = _name(nb.cells.index(code[0]), code[0])
    if call is None:
        return [f"{where}: `FAST = setup(...)` must be the first statement after the imports, so "
                "nothing draws random numbers before the seeds are set"]
    torch_flag = next((k.value for k in call.keywords if k.arg == "torch"), None)
    wants_torch = isinstance(torch_flag, ast.Constant) and torch_flag.value is True
    if _imports_torch(nb) and not wants_torch:
        return [f"{where}: this lesson imports torch, so its setup must seed it: "
                "`FAST = setup(torch=True)`"]
    return []


def _imports_torch(nb):
    """Whether a code cell imports torch at its top level (not inside a function or a try)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            body = ast.parse(nbs.python_source(cell.source)).body
        except SyntaxError:
            continue
        for node in body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "torch" for n in names):
                return True
    return False


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
