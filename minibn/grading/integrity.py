"""Static integrity checks on a submission: what the learner's code reaches for, and what changed.

``scan_code`` reads every code cell the learner wrote or edited (solution cells, cells they
added, lesson cells they changed) and flags:

- ``delegation``: importing minibn's reference of a function the lesson asks for, any import of
  minibn followed by that name, or the indirections that hide it (``importlib``, ``__import__``,
  ``sys.modules``, ``inspect.getsource``, ``exec``/``eval``/``compile``). The functions defined in
  such a cell score 0 for their tests.
- ``tamper``: reaching for the checker or the kernel: importing ``minibn.checks`` or ``ctypes``,
  assigning attributes of an imported module (``np.allclose = ...``), ``setattr`` on one,
  ``get_ipython``, ``sys.excepthook``, ``sys.setprofile``/``settrace``, ``builtins``. Flag only:
  the out-of-kernel re-grade decides the score.
- ``grading-mode``: reading ``NBGRADER_EXECUTION`` or minibn's grading variables.

``inspect_submission`` compares the submitted notebook with the lesson: test cells deleted,
renamed, duplicated or edited, a changed kernelspec, and extra files that could shadow a module.
"""
from __future__ import annotations

import ast
from pathlib import Path

from minibn.grading import notebooks as nbs

ALLOWED_MINIBN = ("minibn.course", "minibn.gradcheck", "minibn.widgets")
_COMMON_MODULE_NAMES = {"np", "numpy", "minibn", "torch", "sys", "os", "builtins", "math", "nn", "F"}
_INDIRECT_CALLS = {"__import__", "exec", "eval", "compile"}
_TAMPER_NAMES = {"get_ipython", "ctypes", "builtins", "__builtins__"}
_TAMPER_ATTRS = {"excepthook", "setprofile", "settrace", "set_custom_exc", "showtraceback",
                 "input_transformers_post", "input_transformers_cleanup", "register"}


def flag(kind, detail):
    return {"kind": kind, "detail": detail}


def scan_code(source, learner_functions, where):
    """Flags for one cell's code; ``where`` names the cell in the messages."""
    try:
        tree = ast.parse(nbs.without_magics(source))
    except SyntaxError:
        return []
    found = []
    module_aliases = set(_COMMON_MODULE_NAMES)  # names a lesson's set-up cell binds to modules
    imports_minibn = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module_aliases.add((alias.asname or alias.name).split(".")[0])
                found += _import_flags(alias.name, [], learner_functions, where)
                imports_minibn |= alias.name.split(".")[0] == "minibn"
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [a.name for a in node.names]
            found += _import_flags(node.module, names, learner_functions, where)
            imports_minibn |= node.module.split(".")[0] == "minibn"
            for alias in node.names:
                if f"{node.module}.{alias.name}".split(".")[0] in ("numpy", "minibn"):
                    module_aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in _INDIRECT_CALLS:
                found.append(flag("delegation", f"{where} calls {node.func.id}()"))
            if node.func.id == "setattr" and node.args and _root(node.args[0]) in module_aliases:
                found.append(flag("tamper", f"{where} uses setattr on module {_root(node.args[0])}"))
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted in ("sys.modules", "inspect.getsource", "inspect.getsourcelines", "importlib.import_module"):
                found.append(flag("delegation", f"{where} uses {dotted}"))
            elif node.attr in _TAMPER_ATTRS and _root(node) in ("sys", "get_ipython", "ip", "shell"):
                found.append(flag("tamper", f"{where} touches {dotted or node.attr}"))
            if imports_minibn and node.attr in learner_functions and isinstance(node.ctx, ast.Load):
                found.append(flag("delegation", f"{where} uses minibn's {node.attr} through an attribute"))
            if isinstance(node.ctx, ast.Store) and _root(node) in module_aliases:
                found.append(flag("tamper", f"{where} assigns {dotted or node.attr} (patches a module)"))
        elif isinstance(node, ast.Name) and node.id in _TAMPER_NAMES:
            found.append(flag("tamper", f"{where} uses {node.id}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                "NBGRADER_EXECUTION" in node.value or "MINIBN_GRADING" in node.value
                or "MINIBN_STUDENT" in node.value):
            found.append(flag("grading-mode", f"{where} reads the grading environment ({node.value!r})"))
    return _unique(found)


def _import_flags(module, names, learner_functions, where):
    top = module.split(".")[0]
    if top in ("importlib", "inspect"):
        return [flag("delegation", f"{where} imports {module}")]
    if top == "ctypes":
        return [flag("tamper", f"{where} imports ctypes")]
    if top != "minibn":
        return []
    if module == "minibn.checks" or module.startswith("minibn.checks.") or "checks" in names:
        return [flag("tamper", f"{where} imports the checker {module}")]
    if module.startswith(ALLOWED_MINIBN):
        return []
    clash = sorted(set(names) & set(learner_functions))
    if clash:
        return [flag("delegation", f"{where} imports minibn's reference {', '.join(clash)} from {module}")]
    return []


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.value if not isinstance(node, ast.Call) else node.func
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _unique(flags):
    seen, out = set(), []
    for f in flags:
        key = (f["kind"], f["detail"])
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def defined_functions(source):
    try:
        tree = ast.parse(nbs.python_source(source))
    except SyntaxError:
        return set()
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def scan_submission(source_nb, submitted_nb, learner_functions):
    """Flags for the learner's code, and the learner functions whose exercise scores 0."""
    pairs = nbs.match_cells(source_nb, submitted_nb)
    flags, zeroed = [], set()
    for i, cell in enumerate(submitted_nb.cells):
        src = pairs[i]
        if cell.cell_type != "code" or nbs.is_test(cell) or (src is not None and nbs.is_test(src)):
            continue
        if src is not None and not nbs.is_solution(src) and src.source == cell.source:
            continue  # the lesson's own code, untouched
        where = f"cell {cell.get('id') or i}"
        found = scan_code(cell.source, learner_functions, where)
        flags += found
        if any(f["kind"] == "delegation" for f in found):
            zeroed |= defined_functions(cell.source) & set(learner_functions)
    return flags, zeroed


def inspect_submission(released_nb, submitted_nb, submission_dir, source_nb=None):
    """Flags for changed test cells, a changed kernelspec and module-shadowing extra files.

    A test cell may read as released or, when the instructor's notebook itself is submitted (the
    pipeline's self-check), as in the source notebook with its hidden tests.
    """
    flags = []
    source_text = {nbs.grade_id(c): c.source for c in (source_nb.cells if source_nb else [])}
    for cell in released_nb.cells:
        gid = nbs.grade_id(cell)
        if not (gid and nbs.meta(cell).get("locked")):
            continue
        copies = [c for c in submitted_nb.cells if nbs.grade_id(c) == gid]
        by_id = [c for c in submitted_nb.cells if cell.get("id") and c.get("id") == cell.get("id")]
        if not copies:
            how = "its nbgrader metadata was stripped or its grade_id changed" if by_id else "it was deleted"
            flags.append(flag("test-cell", f"locked cell {gid}: {how} (restored from the gradebook)"))
            continue
        if len(copies) > 1:
            flags.append(flag("test-cell", f"locked cell {gid} appears {len(copies)} times"))
        c = copies[0]
        m, want = nbs.meta(c), nbs.meta(cell)
        changes = [what for what, changed in (
            ("source", c.source not in (cell.source, source_text.get(gid))),
            ("cell type", c.cell_type != cell.cell_type),
            ("locked flag", m.get("locked") != want.get("locked")),
            ("points", m.get("points") != want.get("points")),
        ) if changed]
        if changes:
            flags.append(flag("test-cell", f"locked cell {gid}: {', '.join(changes)} changed "
                              "(restored from the gradebook)"))
    if dict(submitted_nb.metadata.get("kernelspec", {})) != dict(released_nb.metadata.get("kernelspec", {})):
        flags.append(flag("kernelspec", "kernelspec changed (normalized by autograde)"))
    for path in shadowing_files(submission_dir):
        flags.append(flag("shadowing", f"extra file {path} could shadow a module; not given to the grader"))
    return flags


def shadowing_files(submission_dir):
    """Submitted extras that Python could import instead of a real package (relative paths)."""
    root = Path(submission_dir)
    found = []
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix in (".py", ".pyc", ".so", ".pth"):
            found.append(path.name)
        elif path.is_dir() and ((path / "__init__.py").exists() or any(path.glob("*.py"))):
            found.append(path.name + "/")
    return found


# Anything that can bind a name without naming it in the code: with one of these in a learner
# cell, no graded name is proven to be its ``def``.
_DYNAMIC_NAMES = {"exec", "eval", "compile", "globals", "vars", "locals", "setattr", "delattr",
                  "__import__", "importlib", "get_ipython", "ctypes", "gc", "sys", "inspect",
                  "builtins", "__builtins__", "types"}
_DYNAMIC_ATTRS = {"__dict__", "__code__", "__globals__", "f_globals", "f_locals", "_getframe",
                  "currentframe", "modules", "__setattr__", "__class__"}


def static_provenance(cells, learner_functions):
    """``{name: True}`` for every graded name the notebook's text alone proves is the learner's
    own ``def``/``class``: bound at the top level of a learner cell, without decorators, and bound
    nowhere else (no assignment, import, ``global``, ``del``, loop variable), in cells that use
    nothing that binds names dynamically (``exec``, ``globals()``, ``setattr``, ``sys``,
    ``__code__``, ...). Decided in the grader from the submitted cells (``cells``: the plan's,
    ``{"source", "learners"}``), so no learner process can change it; a name it cannot prove is
    left to the learner process's own report."""
    bound = {name: [] for name in learner_functions}  # name -> how each binding binds it
    dynamic = False
    for cell in cells:
        try:
            tree = ast.parse(cell["source"])
        except SyntaxError:
            dynamic = True
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in bound:
                ok = cell["learners"] and not node.decorator_list
                bound[node.name].append("def" if ok else "other")
        top = {id(n) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                dynamic |= node.id in _DYNAMIC_NAMES and cell["learners"]
                if node.id in bound and isinstance(node.ctx, (ast.Store, ast.Del)):
                    bound[node.id].append("other")
            elif isinstance(node, ast.Attribute):
                dynamic |= node.attr in _DYNAMIC_ATTRS and cell["learners"]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    name = (alias.asname or alias.name).split(".")[0]
                    if name in bound:
                        bound[name].append("other")
                    dynamic |= alias.name.split(".")[0] in _DYNAMIC_NAMES and cell["learners"]
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                for name in node.names:
                    if name in bound:
                        bound[name].append("other")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and \
                    node.name in bound and id(node) not in top:
                bound[node.name].append("other")  # a nested def of the same name: not the top level
    if dynamic:
        return {}
    return {name: True for name, how in bound.items() if how and all(h == "def" for h in how)}
