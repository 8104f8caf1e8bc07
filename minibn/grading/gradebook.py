"""Reading, correcting and merging nbgrader gradebooks (SQLite), without nbgrader's ORM.

Parallel grading gives each worker its own copy of one base gradebook, so the assignment,
notebook and cell rows carry the same ids everywhere, and nbgrader's submission rows have random
UUID ids: merging a worker's results is a plain copy of its submission rows, after removing
whatever the main gradebook held for the same (student, assignment). One transaction per worker.
"""
from __future__ import annotations

import contextlib
import sqlite3

_SUBMISSION = """
    SELECT sa.id FROM submitted_assignment sa JOIN assignment a ON sa.assignment_id = a.id
    WHERE sa.student_id = ? AND a.name = ?"""


@contextlib.contextmanager
def connect(path):
    con = sqlite3.connect(str(path), timeout=60)
    try:
        with con:
            yield con
    finally:
        con.close()


def cell_grades(path, student, assignment):
    """``{(notebook, cell): {"auto", "manual", "max", "needs_manual"}}`` for one submission."""
    with connect(path) as con:
        rows = con.execute("""
            SELECT nb.name, bc.name, g.auto_score, g.manual_score, gc.max_score, g.needs_manual_grade,
                   g.extra_credit
            FROM grade g
            JOIN submitted_notebook sn ON g.notebook_id = sn.id
            JOIN notebook nb ON sn.notebook_id = nb.id
            JOIN base_cell bc ON g.cell_id = bc.id
            JOIN grade_cells gc ON gc.id = bc.id
            WHERE sn.assignment_id IN (""" + _SUBMISSION + ")", (student, assignment)).fetchall()
    return {(nb, cell): {"auto": auto, "manual": manual, "max": mx, "needs_manual": bool(needs),
                         "extra": extra or 0.0}
            for nb, cell, auto, manual, mx, needs, extra in rows}


def max_score(path, assignment):
    with connect(path) as con:
        (total,) = con.execute("""
            SELECT COALESCE(SUM(gc.max_score), 0) FROM grade_cells gc
            JOIN base_cell bc ON gc.id = bc.id JOIN notebook nb ON bc.notebook_id = nb.id
            JOIN assignment a ON nb.assignment_id = a.id WHERE a.name = ?""", (assignment,)).fetchone()
    return float(total)


def set_auto_scores(path, student, assignment, notebook, scores):
    """Overwrite ``auto_score`` of the named grade cells (manual scores still take precedence)."""
    with connect(path) as con:
        for cell, score in scores.items():
            con.execute("""
                UPDATE grade SET auto_score = ? WHERE id IN (
                    SELECT g.id FROM grade g
                    JOIN submitted_notebook sn ON g.notebook_id = sn.id
                    JOIN notebook nb ON sn.notebook_id = nb.id
                    JOIN base_cell bc ON g.cell_id = bc.id
                    WHERE nb.name = ? AND bc.name = ? AND sn.assignment_id IN (""" + _SUBMISSION + "))",
                        (score, notebook, cell, student, assignment))


def merge(main, worker, pairs):
    """Copy the submissions ``pairs`` [(student, assignment)] from ``worker`` into ``main``."""
    with connect(main) as con:
        con.execute("ATTACH DATABASE ? AS w", (str(worker),))
        for student, assignment in pairs:
            _delete(con, "main", student, assignment)
            con.execute("INSERT OR IGNORE INTO main.student SELECT * FROM w.student WHERE id = ?", (student,))
            ids = [r[0] for r in con.execute(_SUBMISSION.replace("submitted_assignment", "w.submitted_assignment")
                                                 .replace("JOIN assignment", "JOIN w.assignment"),
                                                 (student, assignment))]
            for sa in ids:
                con.execute("INSERT INTO main.submitted_assignment SELECT * FROM w.submitted_assignment WHERE id = ?", (sa,))
                con.execute("INSERT INTO main.submitted_notebook SELECT * FROM w.submitted_notebook "
                            "WHERE assignment_id = ?", (sa,))
                for table in ("grade", "comment"):
                    con.execute(f"INSERT INTO main.{table} SELECT * FROM w.{table} WHERE notebook_id IN "
                                "(SELECT id FROM w.submitted_notebook WHERE assignment_id = ?)", (sa,))
        con.commit()
        con.execute("DETACH DATABASE w")


def _delete(con, schema, student, assignment):
    sql = _SUBMISSION.replace("submitted_assignment", f"{schema}.submitted_assignment").replace(
        "JOIN assignment", f"JOIN {schema}.assignment")
    for (sa,) in con.execute(sql, (student, assignment)).fetchall():
        notebooks = f"SELECT id FROM {schema}.submitted_notebook WHERE assignment_id = ?"
        for table in ("grade", "comment"):
            con.execute(f"DELETE FROM {schema}.{table} WHERE notebook_id IN ({notebooks})", (sa,))
        con.execute(f"DELETE FROM {schema}.submitted_notebook WHERE assignment_id = ?", (sa,))
        con.execute(f"DELETE FROM {schema}.submitted_assignment WHERE id = ?", (sa,))


def row_counts(path):
    """Rows per submission table: the merge test checks nothing is lost or duplicated."""
    with connect(path) as con:
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("student", "submitted_assignment", "submitted_notebook", "grade", "comment")}
